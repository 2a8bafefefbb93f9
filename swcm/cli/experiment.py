"""Experiments: an ablation grid from a YAML file (swcm experiment), and the demo (swcm demo)."""

from __future__ import annotations

from .flags import add_overwrite


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="run an ablation grid (paper Tables 3-5, Figure 4) from a YAML file")
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--out", help="output directory (default: runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overwrite(p)
    p.set_defaults(func=_experiment)


def _experiment(args) -> int:
    from ..distributed import is_main_process
    from ..experiments import load_experiment, run_experiment
    from ..io import output_directory

    config = load_experiment(args.config)
    out = args.out or f"runs/{config.name}"
    with output_directory(out, "experiment", args.overwrite):
        outcome = run_experiment(config, out, progress=not args.no_progress)
    if not is_main_process():  # under accelerate launch: the main process reports
        return 0
    print(open(outcome["report"], encoding="utf-8").read())
    print(f"report: {outcome['report']}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole method on multilingual-e5-small and LibreOffice UI strings: ws beside random")
    p.add_argument("--out", default="swcm-demo", help="output directory (re-runs reuse finished stages)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overwrite(p)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from ..distributed import is_main_process
    from ..experiments import run_demo
    from ..io import output_directory

    with output_directory(args.out, "experiment", args.overwrite):
        table = run_demo(args.out, progress=not args.no_progress)
    if not is_main_process():
        return 0
    print(table)
    print(f"report with examples and validation loss and chrF++ curves: {args.out}/report.md")
    return 0


# Its subcommands, in workflow order.
SUBCOMMANDS = [_add_experiment, _add_demo]
