"""Model cards: written by finetune and `swcm card`, parsed by huggingface_hub, metadata round-trips.

The Hub's own `ModelCard.validate` asks the Hub to check the metadata (a network call); here the
check is local: the card parses with `huggingface_hub.ModelCard`, its metadata block loads into
`ModelCardData` (model-index included, as `EvalResult`s) and writes back the same.
"""

import json
import shutil

import pytest
from huggingface_hub import ModelCard, ModelCardData

from swcm.cli import main as cli
from swcm.model_card import TRANSLATES_CHRF, known_limits

from test_finetuning import write_mt


@pytest.fixture(scope="module")
def evaluated(tiny_encoder_dir, tmp_path_factory):
    """An encoder laid out as a Hub snapshot with its card (licence apache-2.0), an SWCM model built
    from it, fine-tuned a few steps and evaluated."""
    root = tmp_path_factory.mktemp("card")
    encoder = root / "hub" / "models--org--tiny-xlmr" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_encoder_dir, encoder)
    (encoder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [zh, bo]\n---\n\n# tiny\n", encoding="utf-8")
    assert cli(["build", "--encoder", str(encoder), "--out", str(root / "built"), "--langs", "zh,bo,ug"]) == 0
    train, valid = write_mt(root / "train.jsonl", "train", limit=8), write_mt(root / "valid.jsonl", "valid", limit=2)
    out = root / "ft"
    assert cli(["finetune", "--task", "mt", "--model", str(root / "built"), "--train", str(train), "--valid", str(valid),
                "--out", str(out), "--max-steps", "4", "--batch-size", "8", "--eval-every", "2", "--max-new-tokens", "4",
                "--no-progress", "--report-to", "none", "--max-target-length", "32"]) == 0
    assert cli(["evaluate", "--model", str(out / "best"), "--task", "mt", "--test", str(valid), "--out", str(root / "eval"),
                "--max-new-tokens", "4", "--no-progress"]) == 0
    return root


def test_finetune_writes_a_card_without_scores(evaluated):
    card = ModelCard.load(evaluated / "ft" / "final" / "README.md")
    assert card.data.base_model == "org/tiny-xlmr" and card.data.license == "apache-2.0"
    assert card.data.language == ["bo", "ug", "zh"] and card.data.pipeline_tag == "translation"
    assert card.data.datasets == ["train.jsonl"] and not card.data.eval_results
    assert "Not evaluated on a test set yet" in card.text and "4 steps, lr 0.0005" in card.text
    record = json.loads((evaluated / "ft" / "final" / "finetune.json").read_text())
    assert record["steps"] == 4 and record["langs"] == ["bo", "ug"] and record["training"]["max_steps"] == 4


def test_card_takes_the_scores_and_round_trips(evaluated, capsys):
    model = evaluated / "ft" / "best"
    assert cli(["card", str(model), "--results", str(evaluated / "eval" / "results.json")]) == 0
    assert "scores from" in capsys.readouterr().out
    card = ModelCard.load(model / "README.md")
    rows = {row["lang"]: row for row in json.loads((evaluated / "eval" / "results.json").read_text())["rows"]}
    found = {(r.task_name, r.metric_type): r for r in card.data.eval_results}
    for lang, row in rows.items():
        chrf = found[("Translation → " + lang, "chrf")]
        assert chrf.metric_name == "chrF++" and chrf.metric_value == pytest.approx(row["chrf"], abs=1e-4)
        assert chrf.metric_args == {"signature": row["signatures"]["chrf"]}
        assert found[("Translation → " + lang, "bleu")].metric_value == pytest.approx(row["bleu"], abs=1e-4)
        assert (f"does not translate into {lang} yet" in card.text) == (row["chrf"] < TRANSLATES_CHRF)
    # the metadata round-trips: parsed into ModelCardData (model-index as EvalResults) and written back the same
    metadata = card.data.to_dict()
    again = ModelCardData(**{k: v for k, v in metadata.items() if k != "model-index"},
                          eval_results=card.data.eval_results, model_name=card.data.model_name)
    assert again.to_dict() == metadata
    assert ModelCard(str(card)).data.to_dict() == metadata
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["type"] == "chrf"


def test_card_errors_are_one_line(evaluated, tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text("{not json", encoding="utf-8")
    assert cli(["card", str(evaluated / "ft" / "best"), "--results", str(bad)]) == 2
    assert f"{bad}:1: malformed JSON" in capsys.readouterr().err
    assert cli(["card", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_limits_follow_the_scores():
    rows = [{"lang": "ug", "chrf": 17.2, "script_rate": 98.0, "script": "Arabic"},  # scores 0-100, as evaluate writes them
            {"lang": "dz", "chrf": 3.1, "script_rate": 97.0, "script": "Tibetan"},
            {"lang": "kk", "chrf": 12.0, "script_rate": 30.0, "script": "Cyrillic"}]
    limits = " ".join(known_limits(rows, {"finetune": {"max_source_length": 32, "max_target_length": 32}}))
    assert "does not translate into dz yet: chrF++ 3.1" in limits and "into ug" not in limits and "into kk" not in limits
    assert "Most of its kk output (70 %) is not in the Cyrillic script" in limits
    assert "sources of at most 32 tokens" in limits
    assert "no test scores" in " ".join(known_limits([], {}))
