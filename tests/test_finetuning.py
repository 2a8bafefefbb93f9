"""Fine-tuning through the shared loop, on real UDHR translation pairs and a tiny model."""

import json

import pytest
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from swcm import SWCMForConditionalGeneration
from swcm.cli import main as cli
from swcm.generation import generate_texts
from swcm.io import save_model_dir
from swcm.metrics import rouge_l
from swcm.resources import udhr

TARGETS = ["bo", "ug"]


def write_mt(path, split, targets=TARGETS, limit=None):
    with open(path, "w", encoding="utf-8") as f:
        for unit in udhr(split)[:limit]:
            for tgt in targets:
                f.write(json.dumps({"src": unit["text"]["zh"][:60], "tgt": unit["text"][tgt][:80],
                                    "src_lang": "zh", "tgt_lang": tgt}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    save_model_dir(model, AutoTokenizer.from_pretrained(tiny_encoder_dir), out)
    return out


def test_finetune_translation_learns_and_keeps_the_best(model_dir, tmp_path, capsys):
    train = write_mt(tmp_path / "train.jsonl", "train", limit=16)
    valid = write_mt(tmp_path / "valid.jsonl", "valid", limit=3)
    out = tmp_path / "ft"
    code = cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--valid", str(valid),
                "--out", str(out), "--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--eval-every", "15",
                "--max-new-tokens", "8", "--log-every", "5", "--no-progress", "--max-target-length", "32"])
    assert code == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    evals = [r for r in log if "eval_rougeL_f" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]  # it generalises to unseen pairs
    best_step = max(evals, key=lambda r: (r["eval_rougeL_f"], -r["step"]))["step"]
    # The logged validation ROUGE-L is that of the best model's own outputs on the valid file,
    # generated as long as the targets it was trained on (one length for both).
    best = AutoModelForSeq2SeqLM.from_pretrained(out / "best").eval()
    assert best.generation_config.max_length == 32 + 1
    tokenizer = AutoTokenizer.from_pretrained(out / "best")
    records = [json.loads(line) for line in valid.read_text(encoding="utf-8").splitlines()]
    by_lang = {}
    for r, p in zip(records, generate_texts(best, tokenizer, [r["src"] for r in records], [r["tgt_lang"] for r in records],
                                            max_new_tokens=8, progress=False)):
        by_lang.setdefault(r["tgt_lang"], ([], []))
        by_lang[r["tgt_lang"]][0].append(p)
        by_lang[r["tgt_lang"]][1].append(r["tgt"])
    rouge = sum(rouge_l(p, ref)["f"] for p, ref in by_lang.values()) / len(by_lang)
    logged = next(r for r in evals if r["step"] == best_step)["eval_rougeL_f"]
    assert rouge == pytest.approx(logged, abs=1e-9)
    err = capsys.readouterr().err
    assert "warning: training data (--max-source-length 128, --max-target-length 32): ug: 0 of 16 sources and 7 targets" in err
    for name in ("best", "final"):
        model = AutoModelForSeq2SeqLM.from_pretrained(out / name)
        tokenizer = AutoTokenizer.from_pretrained(out / name)
        assert set(model.config.language_tags) == set(TARGETS)
        assert len(tokenizer) == model.get_input_embeddings().num_embeddings


def test_finetune_may_keep_the_best_by_chrf(model_dir, tmp_path, capsys):
    """--metric chrf: OUT/best is the evaluation with the highest sacrebleu chrF++ (raw text,
    averaged over languages) of validation decoding."""
    from sacrebleu.metrics import CHRF

    train = write_mt(tmp_path / "train.jsonl", "train", limit=8)
    valid = write_mt(tmp_path / "valid.jsonl", "valid", limit=3)
    out = tmp_path / "ft"
    assert cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--valid", str(valid),
                "--out", str(out), "--max-steps", "20", "--batch-size", "8", "--lr", "3e-3", "--eval-every", "10",
                "--max-new-tokens", "8", "--no-progress", "--metric", "chrf", "--max-target-length", "32"]) == 0
    evals = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval_chrf" in r]
    best = max(evals, key=lambda r: (r["eval_chrf"], -r["step"]))
    assert f"best chrf {best['eval_chrf']:.4g} at step {best['step']}" in capsys.readouterr().out
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(out / "best").eval(), AutoTokenizer.from_pretrained(out / "best")
    records = [json.loads(line) for line in valid.read_text(encoding="utf-8").splitlines()]
    predictions = generate_texts(model, tokenizer, [r["src"] for r in records], [r["tgt_lang"] for r in records],
                                 max_new_tokens=8, batch_size=8, progress=False)  # batched as validation was
    chrf = [CHRF(word_order=2).corpus_score([p for p, r in zip(predictions, records) if r["tgt_lang"] == lang],
                                            [[r["tgt"] for r in records if r["tgt_lang"] == lang]]).score for lang in TARGETS]
    assert best["eval_chrf"] == pytest.approx(sum(chrf) / len(chrf), abs=1e-9)


def test_finetune_rejects_bad_records_with_file_and_line(model_dir, tmp_path, capsys):
    train = write_mt(tmp_path / "train.jsonl", "train", limit=2)
    with open(train, "a", encoding="utf-8") as f:
        f.write('{"src": "人人", "tgt": "", "src_lang": "zh", "tgt_lang": "bo"}\n')
    code = cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train),
                "--out", str(tmp_path / "ft"), "--max-steps", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("swcm finetune: error:") and f"{train}:5:" in err and "\n" not in err
    # with --on-bad-record skip it trains and reports what it skipped
    code = cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--on-bad-record", "skip",
                "--out", str(tmp_path / "ft2"), "--max-steps", "2", "--batch-size", "2", "--no-progress"])
    assert code == 0
    assert "skipped 1 bad record" in capsys.readouterr().err


def test_subsets_are_drawn_by_language_with_the_seed(model_dir, tmp_path, capsys):
    """--train-size and --max-valid on files sorted by language take every language's share,
    drawn with the run's seed, not the first N records (which would be one language)."""
    def sorted_by_language(path, split):
        write_mt(tmp_path / "bo.jsonl", split, ["bo"], limit=8)
        write_mt(tmp_path / "ug.jsonl", split, ["ug"], limit=8)
        path.write_text((tmp_path / "bo.jsonl").read_text() + (tmp_path / "ug.jsonl").read_text(), encoding="utf-8")
        return path

    train, valid = sorted_by_language(tmp_path / "train.jsonl", "train"), sorted_by_language(tmp_path / "valid.jsonl", "valid")
    args = ["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--valid", str(valid),
            "--train-size", "6", "--max-valid", "4", "--max-steps", "1", "--batch-size", "2", "--no-progress"]
    assert cli([*args, "--out", str(tmp_path / "ft"), "--seed", "3"]) == 0
    err = capsys.readouterr().err
    assert f"{train} (--train-size): 6 of 16 records, drawn with seed 3: bo 3, ug 3" in err
    assert f"{valid} (--max-valid): 4 of 16 records, drawn with seed 3: bo 2, ug 2" in err


def test_alpha_rebalances_the_languages_of_the_training_records(model_dir, tmp_path, capsys):
    """--alpha below 1 samples the languages of the training file with p ∝ q^alpha (said on
    stderr); a negative one is refused in one line."""
    write_mt(tmp_path / "bo.jsonl", "train", ["bo"], limit=12)
    write_mt(tmp_path / "ug.jsonl", "train", ["ug"], limit=3)
    train = tmp_path / "train.jsonl"
    train.write_text((tmp_path / "bo.jsonl").read_text() + (tmp_path / "ug.jsonl").read_text(), encoding="utf-8")
    args = ["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train),
            "--max-steps", "2", "--batch-size", "2", "--no-progress"]
    assert cli([*args, "--out", str(tmp_path / "ft"), "--alpha", "0"]) == 0
    assert "training data sampled by language with alpha 0: bo 50.0%, ug 50.0%" in capsys.readouterr().err
    assert cli([*args, "--out", str(tmp_path / "ft1")]) == 0
    assert "sampled by language" not in capsys.readouterr().err  # the default reads each record once
    assert cli([*args, "--out", str(tmp_path / "ft2"), "--alpha", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "alpha must be >= 0, got -1" in err and "\n" not in err
