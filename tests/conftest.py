"""Shared fixtures: one torch thread, and a tiny real XLM-R encoder with a SentencePiece tokenizer
trained on UDHR text."""

import os

import pytest
import torch
from transformers import DataCollatorForSeq2Seq, XLMRobertaConfig, XLMRobertaForMaskedLM

from swcm.data.examples import ExampleEncoder
from swcm.resources import udhr
from swcm.encoders.tiny_encoder import train_tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: without one they are skipped (benchmarks/gpu_check.sh
    runs them where there is one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def records_elsewhere(tmp_path_factory):
    """Measurements that code under test appends (`swcm.records`) go to a temporary directory,
    never into the checkout's benchmarks/records, which the docs render."""
    saved = os.environ.get("SWCM_RECORDS_DIR")
    os.environ["SWCM_RECORDS_DIR"] = str(tmp_path_factory.mktemp("records"))
    yield
    if saved is None:
        os.environ.pop("SWCM_RECORDS_DIR", None)
    else:
        os.environ["SWCM_RECORDS_DIR"] = saved


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs torch on one thread: the models are tiny, so intra-op threads only
    contend with each other (and, on a shared machine, with every other process), which made
    training and generation tests up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A directory with a random 4-layer XLM-R masked LM (hidden 32) and its tokenizer.

    The tokenizer is trained on every language of the UDHR train split; byte fallback makes it
    lossless on the valid and test splits too. Loadable by AutoTokenizer / AutoModel /
    AutoModelForMaskedLM.
    """
    out = tmp_path_factory.mktemp("tiny-encoder")
    texts = (t for unit in udhr("train") for t in unit["text"].values())
    tokenizer = train_tokenizer(texts, out, vocab_size=1000, model_max_length=128)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    XLMRobertaForMaskedLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A random 2-layer BERT masked LM (hidden 32) with a WordPiece tokenizer trained on every
    language of the UDHR train split. Its config, like BERT's, has no bos/eos token ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    texts = [t for unit in udhr("train") for t in unit["text"].values()]
    backend.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")), ("[CLS]", backend.token_to_id("[CLS]")))
    tokenizer = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]", do_lower_case=False, model_max_length=126)
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    assert config.bos_token_id is None and getattr(config, "eos_token_id", None) is None
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def teach_to_echo():
    """A function that trains an SWCM model in place, `steps` AdamW steps at lr 1e-2 on one batch,
    to echo the start of the UDHR test sentences in `langs` (source = target, the language's tag
    forced), so that what a tiny model generates depends on its input and ends with </s>."""

    def teach(model, tokenizer, langs, steps):
        encoder = ExampleEncoder(tokenizer, max_source_length=16, max_target_length=8)
        batch = DataCollatorForSeq2Seq(tokenizer)([encoder.encode(u["text"][lang], u["text"][lang], lang)
                                                   for u in udhr("test") for lang in langs])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model

    return teach


SERVE_TARGETS = ["ug", "kk", "mn", "bo"]  # the demo's zh → ug, kk, mn, dz, with UDHR's Tibetan for Dzongkha


@pytest.fixture(scope="session")
def demo_shaped_runs(tiny_encoder_dir, tmp_path_factory):
    """Two tiny models shaped as the demo's, `ws` and `random`, each built from the tiny encoder,
    fine-tuned for a few steps on UDHR zh → ug, kk, mn, bo (and evaluated on its test split) by
    swcm's own recipes, and laid out as the demo lays out a run: RUN/finetune/best (the model),
    RUN/finetune/log.jsonl (validation scores), RUN/eval/results.json (test scores).
    Returns {variant: RUN/finetune/best}."""
    import json

    from swcm.building import build_model_dir
    from swcm.evaluating import evaluate_model
    from swcm.finetuning import FinetuneSettings, finetune
    from swcm.training import TrainingConfig

    root = tmp_path_factory.mktemp("demo-shaped")
    files = {}
    for split in ("train", "valid", "test"):
        records = [{"src": unit["text"]["zh"], "tgt": unit["text"][lang], "src_lang": "zh", "tgt_lang": lang}
                   for unit in udhr(split) for lang in SERVE_TARGETS]
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    runs = {}
    for variant in ("ws", "random"):
        torch.manual_seed(0)
        built = root / variant / "built"
        build_model_dir(tiny_encoder_dir, built, insert_every=2, variant=variant, langs=["zh", *SERVE_TARGETS])
        run = root / f"{variant}-x2-dae+mt-seed0"
        # 160 steps: both variants then write each target in its script (100 are too few for random)
        config = TrainingConfig(out_dir=run / "finetune", max_steps=160, batch_size=64, lr=1e-2, weight_decay=0.0,
                                mixed_precision="no", eval_every=160, save_every=160, log_every=40, metric="loss",
                                progress=False)
        settings = FinetuneSettings(max_source_length=16, max_target_length=8, max_valid_examples=16)
        finetune(built, files["train"], files["valid"], config, settings)
        evaluate_model(run / "finetune" / "best", "mt", [files["test"]], run / "eval", device="cpu", dtype="float32",
                       engine="fast", progress=False, max_new_tokens=8)
        runs[variant] = run / "finetune" / "best"
    return runs


@pytest.fixture(scope="session")
def start_server():
    """A function that starts `swcm serve ARGS --port 0` in a subprocess and returns (process,
    base URL) once it listens; every server it started is stopped at the end of the session."""
    import re
    import subprocess
    import sys

    started = []

    def start(*args, env=None):
        process = subprocess.Popen([sys.executable, "-m", "swcm.cli", "serve", *map(str, args), "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **(env or {})})
        started.append(process)
        line = process.stdout.readline()  # "serving … on http://127.0.0.1:PORT …", once the models are loaded
        found = re.search(r"http://[\w.\[\]:]+:\d+", line)
        if found is None:
            process.kill()
            raise RuntimeError(f"swcm serve did not start: {line!r} {process.stderr.read()}")
        return process, found.group(0)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
