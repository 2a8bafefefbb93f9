"""LoRA against full fine-tuning on the demo's data: chrF++, trainable parameters, peak memory, step time.

Fine-tunes one pretrained model (the demo's ws model: `swcm demo` leaves it in
swcm-demo/pretrain/ws-x2-daemt-s0-adapted/final) on the demo's zh → ug, kk, mn, dz training split
with the demo's fine-tuning settings (batches of 768 padded tokens grouped by length, 32-token
sources and targets, warm-up 20 steps, the validation loss picking OUT/best on 120 validation
records), `--steps` steps each: in full, and with LoRA at each of `--ranks` (alpha = 2 × rank,
dropout 0.05, every attention and FFN projection of encoder and Custom layers, the Normal layers
in full), for each of `--seeds`. Each run is a process of its own, so that its peak resident
memory (getrusage) is its own; the best model is then decoded greedily (the demo's generation
settings) on the first `--test-per-lang` records of each test file and scored with sacrebleu's
chrF++, per language and averaged over languages.

Step time is the training loop's wall time (`swcm.training.train`, after the data are read) less
the time spent in validation, over the steps (it includes the two or three saves). On a shared machine it is noisy: the runs alternate methods
within each seed so that load drifts hit all alike, but compare them loosely.

Runs already finished in OUT are reused (the script resumes); the table is printed and appended
as a record (`swcm.records.append_record("lora", ...)`).

    python benchmarks/lora.py --pretrained swcm-demo/pretrain/ws-x2-daemt-s0-adapted/final \\
        --data swcm-demo/data/mt --out runs/lora --steps 150 --seeds 0,1 --ranks 8,32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_one(args) -> None:
    """One fine-tuning run (in this process): writes OUT/<run>/bench.json."""
    import swcm.finetuning as finetuning
    from swcm.finetuning import FinetuneSettings, finetune
    from swcm.lora import LoraSettings, parameter_counts
    from swcm.training import TrainingConfig

    out = Path(args.out) / run_name(args.method, args.seed)
    method = args.method
    lora = LoraSettings() if method == "full" else LoraSettings(lora=True, lora_r=int(method[1:]), lora_alpha=2.0 * int(method[1:]))
    validation_seconds = []
    make_hook = finetuning.validation_hook

    def timed_hook(*hook_args, **hook_kwargs):  # the real hook, its calls timed
        evaluate = make_hook(*hook_args, **hook_kwargs)

        def timed(model):
            started = time.perf_counter()
            try:
                return evaluate(model)
            finally:
                validation_seconds.append(time.perf_counter() - started)

        timed.across_processes = evaluate.across_processes
        return timed

    finetuning.validation_hook = timed_hook
    counts = {}
    apply_lora = finetuning.apply_lora

    def counted(model, *rest):
        wrapped = apply_lora(model, *rest)
        counts["trainable"], counts["total"] = parameter_counts(wrapped)
        return wrapped

    finetuning.apply_lora = counted
    loop_seconds = []
    train = finetuning.train

    def timed_train(*train_args, **train_kwargs):  # the training loop alone, without reading the data
        started = time.perf_counter()
        try:
            return train(*train_args, **train_kwargs)
        finally:
            loop_seconds.append(time.perf_counter() - started)

    finetuning.train = timed_train
    config = TrainingConfig(out_dir=out / "finetune", max_steps=args.steps, max_tokens=768, lr=args.lr, warmup_steps=20,
                            eval_every=args.steps // 2, metric="loss", seed=args.seed, log_every=10, save_every=10_000,
                            progress=False, report_to="none")
    settings = FinetuneSettings(task="mt", max_source_length=32, max_target_length=32, max_valid_examples=120,
                                valid_batch_size=64, generation={"num_beams": 1, "max_new_tokens": 40, "no_repeat_ngram_size": 3})
    data = Path(args.data)
    started = time.perf_counter()
    result = finetune(args.pretrained, data / "train.jsonl", data / "valid.jsonl", config, settings, lora=lora)
    wall = time.perf_counter() - started
    if not counts:  # full fine-tuning: every parameter trains
        from swcm import SWCMForConditionalGeneration

        counts["trainable"], counts["total"] = parameter_counts(SWCMForConditionalGeneration.from_pretrained(args.pretrained))
    bench = {"method": method, "seed": args.seed, "steps": result.step, "wall_s": wall,
             "loop_s": loop_seconds[0], "validation_s": sum(validation_seconds),
             "step_s": (loop_seconds[0] - sum(validation_seconds)) / max(result.step, 1),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **counts,
             "best_step": result.best_step, "best_valid_loss": result.best_metric, "model": str(result.best_dir)}
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n", encoding="utf-8")


def run_eval(args) -> None:
    """Decode and score the test subset with a run's best model: OUT/<run>/eval/results.json."""
    from swcm.evaluating import evaluate_model

    out = Path(args.out) / run_name(args.method, args.seed)
    bench = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    tests = sorted((Path(args.out) / "test").glob("test.*.jsonl"))
    evaluate_model(bench["model"], "mt", tests, out / "eval", batch_size=64, num_beams=1, max_new_tokens=40,
                   no_repeat_ngram_size=3, max_source_length=32, progress=False, dtype="float32")


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def test_subset(data: Path, out: Path, per_lang: int) -> None:
    (out / "test").mkdir(parents=True, exist_ok=True)
    for path in sorted(data.glob("test.*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()[:per_lang]
        (out / "test" / path.name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a pretrained SWCM model directory (the demo's ws model)")
    parser.add_argument("--data", required=True, help="the demo's data/mt directory (train, valid, test.LANG JSONL)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--ranks", default="8,32")
    parser.add_argument("--lr", type=float, default=1e-3, help="for every method (the demo's for ws)")
    parser.add_argument("--test-per-lang", type=int, default=100)
    parser.add_argument("--one", dest="method", help=argparse.SUPPRESS)
    parser.add_argument("--eval", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="print the table without appending a record")
    args = parser.parse_args()
    if args.method:
        (run_eval if args.eval else run_one)(args)
        return
    out = Path(args.out)
    test_subset(Path(args.data), out, args.test_per_lang)
    methods = ["full"] + [f"r{rank}" for rank in args.ranks.split(",")]
    common = ["--pretrained", args.pretrained, "--data", args.data, "--out", args.out, "--steps", str(args.steps),
              "--lr", str(args.lr)]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in methods:
            run = out / run_name(method, seed)
            for stage, done in (([], run / "bench.json"), (["--eval"], run / "eval" / "results.json")):
                if not done.is_file():
                    print(f"{run.name}: {'evaluating' if stage else 'fine-tuning'}", file=sys.stderr, flush=True)
                    subprocess.run([sys.executable, __file__, *common, "--one", method, "--seed", str(seed), *stage], check=True)
    figures = summarise(out, methods, [int(s) for s in args.seeds.split(",")], args)
    print(table(figures))
    if not args.no_record:
        from swcm.records import append_record

        append_record("lora", figures, precision=figures["precision"])


def summarise(out: Path, methods: list[str], seeds: list[int], args) -> dict:
    rows = {}
    precision = None
    for method in methods:
        runs = []
        for seed in seeds:
            run = out / run_name(method, seed)
            bench = json.loads((run / "bench.json").read_text(encoding="utf-8"))
            results = json.loads((run / "eval" / "results.json").read_text(encoding="utf-8"))
            chrf = {row["lang"]: row["chrf"] for row in results["rows"]}
            log = [json.loads(line) for line in (run / "finetune" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
            precision = next((r["mixed_precision"] for r in log if "mixed_precision" in r), precision)
            runs.append({**bench, "chrf": chrf, "chrf_mean": statistics.mean(chrf.values())})
        rows[method] = {
            "seeds": seeds, "trainable": runs[0]["trainable"], "total": runs[0]["total"],
            "chrf_mean": [r["chrf_mean"] for r in runs],
            "chrf_by_lang": {lang: [r["chrf"][lang] for r in runs] for lang in runs[0]["chrf"]},
            "best_valid_loss": [r["best_valid_loss"] for r in runs],
            "peak_rss_mb": [r["peak_rss_mb"] for r in runs], "step_s": [r["step_s"] for r in runs],
        }
    return {"pretrained": args.pretrained, "steps": args.steps, "lr": args.lr, "test_per_lang": args.test_per_lang,
            "precision": precision, "methods": rows}


def table(figures: dict) -> str:
    def spread(values, fmt="{:.2f}"):
        return " / ".join(fmt.format(v) for v in values)

    langs = list(next(iter(figures["methods"].values()))["chrf_by_lang"])
    head = ["method", "trainable parameters", "chrF++ mean (per seed)", *[f"chrF++ {lang}" for lang in langs],
            "best valid loss", "peak RSS MB", "s/step"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method, row in figures["methods"].items():
        name = "full" if method == "full" else f"LoRA r={method[1:]}"
        cells = [name, f"{row['trainable']:,} ({row['trainable'] / row['total']:.1%})", spread(row["chrf_mean"]),
                 *[spread(row["chrf_by_lang"][lang]) for lang in langs], spread(row["best_valid_loss"], "{:.3f}"),
                 spread(row["peak_rss_mb"], "{:.0f}"), spread(row["step_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
