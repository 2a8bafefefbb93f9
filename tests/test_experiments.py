"""Experiment files, grids and the aggregation into the paper's tables (no training here)."""

import math

import pytest

from swcm.experiments import (
    RunSpec, aggregate, expand_grid, figure4_series, finetune_settings, load_experiment, mean_std, plot_figure4, pretrain_settings,
    render_tables,
)


def _result(variant, x, objectives, size, seed, scores):
    spec = RunSpec(variant, x, objectives, size, seed)
    return {"spec": spec.__dict__, "rows": [{"lang": lang, "rougeL_f": v} for lang, v in scores.items()]}


def test_grid_expands_every_combination_with_stable_ids():
    runs = expand_grid({"variant": ["ws", "random"], "insert_every": [1, 3], "seed": [0, 1]})
    assert len(runs) == 8
    assert len({r.run_id for r in runs}) == 8
    assert runs[0] == RunSpec("ws", 1, "dae+mt", None, 0)
    assert RunSpec("ws", 3, "dae+mt", 500, 2).run_id == "ws-x3-daemt-n500-s2"
    # runs differing only in train size share the pretrained model
    assert RunSpec("ws", 3, "dae", 10, 0).pretrain_id == RunSpec("ws", 3, "dae", 20, 0).pretrain_id


def test_mean_std():
    assert mean_std([2.0]) == (2.0, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(s, 1.0)


def test_aggregate_and_tables():
    results = [
        _result("ws", 3, "dae+mt", None, 0, {"bo": 10.0, "ug": 20.0}),
        _result("ws", 3, "dae+mt", None, 1, {"bo": 14.0, "ug": 22.0}),
        _result("random", 3, "dae+mt", None, 0, {"bo": 5.0, "ug": 6.0}),
        _result("ws", 3, "dae", None, 0, {"bo": 8.0, "ug": 9.0}),
        _result("no-normal", 3, "dae+mt", None, 0, {"bo": 7.0, "ug": 7.0}),
    ]
    agg = aggregate(results)
    ws = agg[("ws", 3, "dae+mt", None)]
    assert ws["bo"][:2] == (12.0, mean_std([10.0, 14.0])[1]) and ws["bo"][2] == 2
    assert ws["avg"][0] == pytest.approx(16.5)
    md = render_tables(agg)
    assert "Table 3" in md and "Table 4" in md and "Table 5" in md
    assert "12.00 ± 2.83" in md
    assert "w/o MT" in md and "BASE-A" in md


def test_tables_of_a_grid_mixing_all_pairs_and_fewer():
    # train_size null (all pairs) beside numbers, as in configs/figure4-e5.yaml
    results = [_result(variant, 3, "dae+mt", size, 0, {"ug": 10.0 + (size or 0) / 1000})
               for variant in ("ws", "random") for size in (None, 3000)]
    md = render_tables(aggregate(results))
    table4 = md.split("Table 4")[1].split("All settings")[0]
    assert table4.index("n=3000") < table4.index("n=all")
    assert md.count("| ws / 3 / dae+mt / all |") == 1


def test_figure4_needs_two_values_of_x(tmp_path):
    one = aggregate([_result("ws", 3, "dae+mt", 10, 0, {"bo": 1.0})])
    assert plot_figure4(one, tmp_path / "f.png") is False
    many = aggregate([
        _result("ws", x, "dae+mt", size, 0, {"bo": float(x + (size or 0) / 10)})
        for x in (1, 2, 3) for size in (10, 20)
    ])
    assert plot_figure4(many, tmp_path / "f.png") is True
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure4_draws_one_line_per_objective_mix_and_size(tmp_path):
    results = [_result("ws", x, objectives, 10, 0, {"bo": float(x) + (5 if objectives == "dae" else 0)})
               for x in (1, 3) for objectives in ("dae+mt", "dae")]
    results.append(_result("random", 1, "dae", 10, 0, {"bo": 99.0}))  # another variant: not in the figure
    series = figure4_series(aggregate(results))
    assert series == {("dae+mt", 10): [(1, 1.0, 0.0), (3, 3.0, 0.0)], ("dae", 10): [(1, 6.0, 0.0), (3, 8.0, 0.0)]}
    assert plot_figure4(aggregate(results), tmp_path / "f.png") is True


def test_experiment_files_are_validated(tmp_path):
    good = tmp_path / "exp.yaml"
    good.write_text("name: t\nencoder: tiny-udhr\ndata: udhr\ngrid:\n  variant: [ws, random]\n  seed: [0]\n")
    config = load_experiment(good)
    assert config.name == "t" and config.grid["variant"] == ["ws", "random"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nencoder: x\ndata: udhr\ngrid:\n  variant: [ws\n")
    with pytest.raises(ValueError, match=r"bad.yaml:\d+: malformed YAML"):
        load_experiment(bad)
    axis = tmp_path / "axis.yaml"
    axis.write_text("encoder: x\ndata: udhr\ngrid:\n  colour: [red]\n")
    with pytest.raises(ValueError, match="unknown grid axis 'colour'"):
        load_experiment(axis)
    objective = tmp_path / "obj.yaml"
    objective.write_text("encoder: x\ndata: udhr\ngrid:\n  objectives: [dae, cloze]\n")
    with pytest.raises(ValueError, match="unknown 'cloze'"):
        load_experiment(objective)


def test_data_paths_are_resolved_against_the_experiment_file(tmp_path):
    path = tmp_path / "sub" / "exp.yaml"
    path.parent.mkdir()
    path.write_text("encoder: /models/cino\ndata:\n  mono: [bo=mc2/bo.txt, zh=/data/zh.txt, mono.jsonl]\n"
                    "  parallel: [zh-bo=/data/zh-bo.tsv]\n  task: mt\n  train: mt/train.jsonl\n")
    config = load_experiment(path)
    base = str(path.parent.resolve())
    assert config.data["mono"] == [f"bo={base}/mc2/bo.txt", "zh=/data/zh.txt", f"{base}/mono.jsonl"]
    assert config.data["parallel"] == ["zh-bo=/data/zh-bo.tsv"]
    assert config.data["train"] == f"{base}/mt/train.jsonl" and config.data["task"] == "mt"
    assert config.encoder == "/models/cino"


@pytest.mark.parametrize("section, line", [
    ("pretrain: {max_steps: 10, mask_ration: 0.3}", "pretrain.mask_ration"),
    ("finetune:\n  lr: 1.0e-4\n  eval_evry: 50", "finetune.eval_evry"),
    ("generate: {num_beams: 4, no_repeat_ngram: 3}", "generate.no_repeat_ngram"),
    ("data:\n  mono: [bo=bo.txt]\n  tests: [t.jsonl]", "data.tests"),
])
def test_unknown_keys_are_an_error_naming_file_line_and_key(tmp_path, section, line):
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: t\nencoder: tiny-udhr\n{section}\n" + ("data: udhr\n" if "data" not in section else ""))
    text_line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if line.split(".")[1] + ":" in text)
    with pytest.raises(ValueError, match=rf"^{path}:{text_line}: unknown key {line} \(known: .*\)$"):
        load_experiment(path)


def test_every_shipped_experiment_file_is_valid():
    from pathlib import Path

    import swcm

    files = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))
    files.append(Path(swcm.__file__).parent / "resources" / "demo.yaml")
    assert len(files) >= 6
    for path in files:
        load_experiment(path)


def test_settings_reach_pretraining_and_validation_decodes_as_the_test(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "encoder: tiny-udhr\ndata: udhr\n"
        "pretrain: {max_steps: 5, mask_ratio: 0.2, poisson_lambda: 2.0, permute_sentences: false, alpha: 0.5}\n"
        "finetune: {max_source_length: 64, max_valid_examples: 20}\n"
        "generate: {num_beams: 3, max_new_tokens: 40, no_repeat_ngram_size: 2, batch_size: 4, max_source_length: 96}\n")
    config = load_experiment(path)
    data = {"mono": ["bo=bo.txt"], "parallel": ["zh-bo=p.tsv"], "task": "mt", "langs": ["zh", "bo"]}
    pre = pretrain_settings(RunSpec(objectives="dae"), config, data)
    assert (pre.noise.mask_ratio, pre.noise.poisson_lambda, pre.noise.permute_sentences) == (0.2, 2.0, False)
    assert pre.alpha == 0.5 and pre.parallel == () and pre.langs == ["zh", "bo"]
    fine = finetune_settings(config, data)
    assert fine.max_source_length == 64 and fine.max_valid_examples == 20
    assert fine.generation == {"num_beams": 3, "max_new_tokens": 40, "no_repeat_ngram_size": 2}
    assert fine.valid_batch_size == 4  # validation batches as the test's, not the training batch_size


def test_report_names_its_data():
    from swcm.experiments.report import describe_data

    assert describe_data({"corpus": "libreoffice", "targets": ["ug", "dz"]}) == \
        "`libreoffice` (vendored, swcm/resources/; zh → ug, dz)"
    text = describe_data({"mono": ["se=/d/se.txt"], "parallel": ["en-se=/d/en-se.tsv"], "task": "mt",
                          "train": "/d/train.jsonl", "test": ["/d/test.jsonl"]})
    assert "mono `se=/d/se.txt`" in text and "train `/d/train.jsonl`" in text and "task mt" in text
    assert "see config" not in text
