"""The demo's parts on a tiny real encoder and the vendored LibreOffice corpus: keeping an
encoder's bottom layers, a corpus limited to some targets, and the ws-vs-random report."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
import torch
from transformers import AutoModel, AutoTokenizer

from swcm.encoders.layers import keep_bottom_layers
from swcm.experiments import (comparison_table, examples_markdown, load_experiment, per_variant, plot_validation_curves,
                              prepare_vendored_data, run_experiment, source_following,
                              source_following_markdown, verdict)
from swcm.records import read_records
from swcm.resources import libreoffice


def test_bottom_layers_compute_what_the_full_encoder_computes_there(tiny_encoder_dir, tmp_path):
    out = keep_bottom_layers(tiny_encoder_dir, 2, tmp_path / "two")
    full, cut = AutoModel.from_pretrained(tiny_encoder_dir).eval(), AutoModel.from_pretrained(out).eval()
    assert cut.config.num_hidden_layers == 2 and len(cut.encoder.layer) == 2
    batch = AutoTokenizer.from_pretrained(out)(["Бәрі тең құқылы.", "人人生而自由"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = full(**batch, output_hidden_states=True).hidden_states[2]
        assert torch.allclose(cut(**batch).last_hidden_state, expected, atol=1e-6)
    try:
        keep_bottom_layers(tiny_encoder_dir, 5, tmp_path / "five")
    except ValueError as err:
        assert "cannot keep 5 of its 4 layers" in str(err)
    else:
        raise AssertionError("keeping more layers than the encoder has must fail")


def test_vendored_corpus_limited_to_targets(tmp_path):
    data = prepare_vendored_data("libreoffice", tmp_path, targets=["ug", "mn"])
    assert data["langs"] == ["zh", "ug", "mn"]
    assert [spec.partition("=")[0] for spec in data["mono"]] == ["zh", "ug", "mn"]
    assert [spec.partition("=")[0] for spec in data["parallel"]] == ["zh-ug", "zh-mn"]
    langs = {json.loads(line)["tgt_lang"] for line in open(data["train"], encoding="utf-8")}
    assert langs == {"ug", "mn"} and len(data["test"]) == 2


def test_ws_beside_random_report(tiny_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SWCM_RECORDS_DIR", str(tmp_path / "records"))
    path = tmp_path / "demo.yaml"
    path.write_text(
        f"name: tiny-demo\nencoder: {tiny_encoder_dir}\nencoder_layers: 2\n"
        "data: {corpus: libreoffice, targets: [kk]}\n"
        "pretrain: {lm_head: {ws: tied, random: untied}, max_steps: 3, log_every: 1, batch_size: 8, lr: {ws: 2.0e-3, random: 1.0e-3},"
        " max_source_length: 24, max_target_length: 24}\n"
        "finetune: {max_steps: 4, batch_size: 8, lr: 1.0e-3, eval_every: 2, metric: loss, max_valid_examples: 8,"
        " max_source_length: 24, max_target_length: 24}\n"
        "generate: {max_new_tokens: 3, max_source_length: 24}\n"
        "grid:\n  variant: [ws, random]\n"
    )
    outcome = run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    assert outcome["encoder"].endswith("-2-layers")
    built = {v: json.loads((tmp_path / "out" / "pretrain" / f"{v}-x3-daemt-s0" / "built" / "config.json").read_text())
             for v in ("ws", "random")}
    assert (built["ws"]["lm_head"], built["random"]["lm_head"]) == ("tied", "untied")
    first_lr = {v: json.loads((tmp_path / "out" / "pretrain" / f"{v}-x3-daemt-s0" / "log.jsonl").read_text().splitlines()[0])["lr"]
                for v in ("ws", "random")}
    assert first_lr["ws"] == pytest.approx(2 * first_lr["random"])
    table = comparison_table(outcome["results"])
    assert "chrF++ (ws)" in table and "BLEU (random)" in table
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["kk", "mean"]
    rows = {r["spec"]["variant"]: r["rows"][0] for r in outcome["results"]}
    gap = rows["ws"]["chrf"] - rows["random"]["chrf"]
    line = verdict(outcome["results"])
    assert ("no clear difference" in line) == (abs(gap) < 0.5) and ("did not help" in line) == (gap <= -0.5)
    examples = examples_markdown(outcome["results"], per_lang=10)
    assert examples.startswith("### kk (distinct test predictions: ws ")
    assert examples.count("\n| ") == 11  # header + ten examples
    assert plot_validation_curves(outcome["results"], tmp_path / "v.png")
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    finetune_log = [json.loads(line) for line in open(outcome["results"][0]["logs"]["finetune"], encoding="utf-8")]
    assert [r["step"] for r in finetune_log if "eval_chrf" in r] == [2, 4]  # the chrF++ curve's points
    following = source_following_markdown(outcome["results"])
    assert following.startswith("## Does the output follow its source?")
    assert following.strip().splitlines()[-1].startswith("| kk | ")

    # the run's record (benchmarks/records/demo.jsonl in a checkout; here the tests' records directory)
    from swcm.experiments.demo import append_demo_record
    from swcm.records import read_records

    append_demo_record(outcome["results"], 12.3, fresh=True)
    figures = read_records("demo")[-1]["figures"]
    assert figures["seconds"] == 12 and figures["fresh"] is True
    assert figures["chrf"] == {v: {"kk": round(rows[v]["chrf"], 2)} for v in ("ws", "random")}
    assert 0 < figures["distinct"]["ws"]["kk"] <= 1
    assert set(figures["chrf_other_references"]) == {"ws", "random"} and figures["chrf_other_references"]["ws"]["kk"] >= 0
    assert read_records("demo")[-1]["precision"] in ("no", "bf16")

    for result in outcome["results"]:  # each model carries its card: languages, data, scores, limits
        card = ModelCard.load(Path(result["model"]) / "README.md")
        assert "kk" in card.data.language and card.data.datasets == ["LibreOffice UI strings (vendored in swcm; MPL-2.0)"]
        [chrf] = [r for r in card.data.eval_results if r.metric_type == "chrf"]
        assert chrf.metric_value == pytest.approx(result["rows"][0]["chrf"], abs=1e-4) and chrf.dataset_config == "kk"
        assert f"`{result['spec']['variant']}`" in card.text and "## Limits" in card.text


def test_source_following_tells_a_translation_from_text_unrelated_to_its_source():
    pairs = [(unit["text"]["zh"], unit["text"]["kk"]) for unit in libreoffice("train")[100:300]
             if {"zh", "kk"} <= set(unit["text"])][:30]
    records = [{"src": src, "tgt": tgt} for src, tgt in pairs]
    translating = source_following([{**r, "prediction": r["tgt"]} for r in records])
    assert translating["own"] == pytest.approx(100.0) and translating["other"] < 40 and translating["distinct"] > 0.9
    # Fluent Kazakh of the corpus, but each output another string's translation.
    unrelated = source_following([{**r, "prediction": records[(i + 7) % len(records)]["tgt"]} for i, r in enumerate(records)])
    assert abs(unrelated["own"] - unrelated["other"]) < 10 and unrelated["own"] < 40


def test_verdict_says_where_neither_variant_translates():
    def run(variant, scores):
        return {"spec": {"variant": variant}, "rows": [{"lang": lang, "chrf": c} for lang, c in scores.items()]}

    results = [run("ws", {"kk": 15.6, "dz": 2.9}), run("random", {"kk": 7.6, "dz": 5.7})]
    line = verdict(results)
    assert "ws ahead on kk, behind or level on dz" in line
    assert "Neither variant reaches chrF++ 10 on dz" in line
    results = [run("ws", {"kk": 15.6, "dz": 12.0}), run("random", {"kk": 7.6, "dz": 5.7})]
    assert "Neither variant" not in verdict(results)


def test_settings_per_variant():
    section = {"lm_head": {"ws": "tied", "random": "untied"}, "lr": {"ws": 1e-3}, "max_steps": 5}
    assert per_variant(section, "ws") == {"lm_head": "tied", "lr": 1e-3, "max_steps": 5}
    assert per_variant(section, "random") == {"lm_head": "untied", "max_steps": 5}


def test_experiment_adapts_its_encoder_to_the_tibetan_script(tiny_encoder_dir, tmp_path):
    """An adapt section extends the encoder with pieces learnt from the vendored dz and bo text and
    continues MLM; `adapted: [true, false]` runs on both encoders, and the report says how the
    adapted tokenizer covers held-out Tibetan-script text."""
    from swcm.experiments import adaptation_markdown

    path = tmp_path / "tibetan.yaml"
    path.write_text(
        f"name: tiny-tibetan\nencoder: {tiny_encoder_dir}\nencoder_layers: 2\n"
        "adapt: {langs: [dz, bo], extend_vocab: 300, max_steps: 2, batch_size: 4, max_length: 32}\n"
        "data: {corpus: [libreoffice, libreoffice-help], targets: [dz], task: sum}\n"
        "pretrain: {max_steps: 2, batch_size: 4, max_source_length: 24, max_target_length: 16}\n"
        "finetune: {max_steps: 2, batch_size: 4, lr: 1.0e-3, max_source_length: 24, max_target_length: 16}\n"
        "generate: {max_new_tokens: 3, max_source_length: 24}\n"
        "grid:\n  variant: [ws]\n  adapted: [true, false]\n"
    )
    config = load_experiment(path)
    outcome = run_experiment(config, tmp_path / "out", progress=False)
    adapted, plain = outcome["encoders"]["True"], outcome["encoders"]["False"]
    assert plain == outcome["encoder"] and adapted != plain
    runs = {r["spec"]["adapted"]: r for r in outcome["results"]}
    assert set(runs) == {True, False}
    sizes = {flag: len(AutoTokenizer.from_pretrained(tmp_path / "out" / "pretrain" / f"ws-x3-daemt-s0-{name}" / "built"))
             for flag, name in ((True, "adapted"), (False, "plain"))}
    assert sizes[True] > sizes[False]
    report = json.loads((tmp_path / "out" / f"{plain.rsplit('/', 1)[1]}-adapted" / "adapt.json").read_text())
    assert report["scored_on"] == "valid" and set(report["before"]) == {"dz", "bo"}
    assert report["after"]["dz"]["unk_rate"] <= report["before"]["dz"]["unk_rate"]
    assert set(report["mlm_valid_loss"]) == {"original_tokenizer", "extended_untrained", "adapted"}
    table = adaptation_markdown(tmp_path / "out" / f"{plain.rsplit('/', 1)[1]}-adapted" / "adapt.json")
    assert "| dz |" in table and "| bo |" in table
    md = (tmp_path / "out" / "report.md").read_text()
    assert "adapted encoder" in md and "plain encoder" in md
    assert all(row["lang"] == "dz" for r in outcome["results"] for row in r["rows"])
    # A grid that asks for the adapted encoder without saying how to adapt it is refused.
    path.write_text(path.read_text().replace("adapt: {langs: [dz, bo], extend_vocab: 300, max_steps: 2, batch_size: 4, max_length: 32}\n", ""))
    with pytest.raises(ValueError, match="grid.adapted needs an adapt section"):
        load_experiment(path)
