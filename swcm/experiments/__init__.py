"""Ablation grids → the paper's tables and Figure 4, on any data.

An experiment is a YAML file: an encoder, data, pretraining and fine-tuning settings, and a
grid over `variant` (ws / random / no-normal / duplicate), `insert_every` (X), `objectives`
(dae+mt, dae, mt, none), `train_size` (fine-tuning examples; null = all) and `seed`. Every
grid point is one run: build → pretrain → fine-tune → evaluate, written under
`OUT/runs/<run id>/`. A run whose `result.json` exists is not redone, and stages inside a run
resume from their checkpoints, so a half-finished grid is continued by running it again.
`OUT/settings.json` records everything but the grid; a re-run with other settings is refused
(its stages would be reused as if they had been made with them), while a grown grid is fine.
Pretraining does not depend on the fine-tuning set size, so runs that differ only in
`train_size` share one pretrained model.

Results are aggregated over seeds (mean ± std) into tables shaped like the paper's
Tables 3–5, a Figure-4 plot (ROUGE-L against X, one line per data size) and learning curves
(validation chrF++ and loss against step, the seeds of a setting as a band).

The package follows the workflow: `grid` (the experiment file, its grid points and run ids, each
stage's settings), `corpora` (the vendored data and the encoder, prepared once and cached),
`runner` (the stages of every grid point, resumed), `report` (tables and plots) and `demo`.
"""

from .grid import (
    GRID_KEYS, OBJECTIVES, DATA_KEYS, PRETRAIN_KEYS, FINETUNE_KEYS, GENERATE_KEYS, ADAPT_KEYS, section_keys,
    RunSpec, ExperimentConfig, load_experiment, expand_grid, per_variant, pretrain_settings, finetune_settings,
)
from .corpora import (
    UDHR, TINY_UDHR, E5_SMALL, PIVOT, prepare_encoder, vendored_monolingual, adapt_prepared_encoder,
    prepare_udhr_data, prepare_vendored_data, vendored_names,
)
from .runner import (
    run_one, SETTINGS_FILE, experiment_settings, settings_changes, check_experiment_settings, run_experiment,
)
from .report import (
    mean_std, aggregate, setting_order, render_tables, figure4_series, plot_figure4, write_json, plot_curves,
    seed_bands, plot_learning_curves, write_report,
)
from .demo import (
    DEMO_METRICS, demo_config, comparison_table, distinct_share, examples_markdown, plot_validation_curves, verdict,
    source_following, source_following_markdown, run_demo, append_demo_record, adaptation_markdown,
)

__all__ = [
    "GRID_KEYS", "OBJECTIVES", "DATA_KEYS", "PRETRAIN_KEYS", "FINETUNE_KEYS", "GENERATE_KEYS", "ADAPT_KEYS",
    "section_keys", "RunSpec", "ExperimentConfig", "load_experiment", "expand_grid", "per_variant",
    "pretrain_settings", "finetune_settings", "UDHR", "TINY_UDHR", "E5_SMALL", "PIVOT", "prepare_encoder",
    "vendored_monolingual", "adapt_prepared_encoder", "prepare_udhr_data", "prepare_vendored_data",
    "vendored_names", "run_one", "SETTINGS_FILE", "experiment_settings", "settings_changes",
    "check_experiment_settings", "run_experiment", "mean_std", "aggregate", "setting_order", "render_tables",
    "figure4_series", "plot_figure4", "write_json", "plot_curves", "seed_bands", "plot_learning_curves",
    "write_report", "DEMO_METRICS", "demo_config",
    "comparison_table", "distinct_share", "examples_markdown", "plot_validation_curves", "verdict", "run_demo",
    "source_following", "source_following_markdown", "append_demo_record", "adaptation_markdown",
]
