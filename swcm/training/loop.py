"""The training loop: `train()`, and `Run`, the one object that holds a run's state."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn
from tqdm.auto import tqdm

from ..data.batching import DataCursor, RankBatchSampler, batch_loader
from ..precision import PrecisionChoice, training_attention
from .checkpoint import (
    CHECKPOINT_NAME, TrainerState, checkpoint_dirs, clear_interrupted_saves, latest_checkpoint, load_model_weights, restore,
    rewrite_log, save_checkpoint, save_model,
)
from .averaging import average_models
from .config import TrainingConfig, TrainingResult
from ..distributed import refuse_unsupported_parallelism
from .distributed import distributed_state, make_accelerator
from .optim import adamw, lr_scheduler, parameter_groups
from .precision_probe import step_probe
from .tracking import tracked_settings
from .scheduled_sampling import teacher_forcing_ratio, training_loss


class Run:
    """One training run: the prepared model, optimizer and schedule, the data position
    (`sampler`), where the run stands (`state`, what a checkpoint restores), the sums of the
    current logging window and the `result` so far."""

    def __init__(self, config: TrainingConfig, accelerator: Accelerator, precision: PrecisionChoice, model: nn.Module,
                 tokenizer, sampler: RankBatchSampler, evaluate: Callable[[nn.Module], dict] | None,
                 loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None):
        self.config, self.accelerator, self.precision, self.tokenizer = config, accelerator, precision, tokenizer
        self.out = Path(config.out_dir)
        # The optimizer is built on the prepared model: its parameters on their device (fused AdamW
        # wants them there), wrapped or sharded as they will train.
        self.model = accelerator.prepare(model)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.optimizer = accelerator.prepare(adamw(parameter_groups(self.unwrapped, config.weight_decay), config.lr))
        self.scheduler = lr_scheduler(self.optimizer, config)  # stepped once per optimizer step, on every rank
        self.sampler, self.evaluate, self.loss_fn = sampler, evaluate, loss_fn
        self.state = TrainerState()
        self.result = TrainingResult(step=0, final_dir=self.out / "final")
        self.last_evaluated = self.last_saved = None
        device = accelerator.device
        self.loss_sum = torch.zeros((), device=device)
        self.tokens = torch.zeros((), dtype=torch.long, device=device)
        self.target_tokens = torch.zeros((), dtype=torch.long, device=device)  # summed over ranks
        self.padding = torch.zeros(2, dtype=torch.long, device=device)  # padded positions, all positions
        self.window_time = 0.0

    def start(self, resume_from: Path | None, settings: dict | None = None) -> None:
        """Restore the checkpoint `resume_from` (None: a fresh start), then open the log and the
        trackers, which get the loop's settings and `settings` (the recipe's)."""
        if resume_from is not None:
            restore(self, resume_from)
        self.result.step = self.state.step
        if self.state.best_step is not None:
            self.result.best_dir, self.result.best_metric, self.result.best_step = (
                self.out / "best", self.state.best_metric, self.state.best_step)
        if self.accelerator.is_main_process:
            if resume_from is None:
                (self.out / "log.jsonl").write_text("", encoding="utf-8")
            else:
                rewrite_log(self.out / "log.jsonl", self.state.step)
        if self.accelerator.log_with:
            self.accelerator.init_trackers("swcm", config=tracked_settings(asdict(self.config), settings or {}))

    def batches(self, loader: torch.utils.data.DataLoader) -> Iterator[dict]:
        """The loader's batches on this process's device, the data position moved past each."""
        for batch in loader:
            self.sampler.consumed()
            yield {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def all_have_data(self, have_data: bool) -> bool:
        """Whether every rank has a whole step's data (`have_data` here)."""
        if self.sampler.world == 1 and self.accelerator.num_processes > 1:  # sharded data
            # Ranks reading their own shards may run out at different steps: stop together.
            flag = torch.tensor(int(have_data), device=self.accelerator.device)
            return self.accelerator.reduce(flag, "sum").item() == self.accelerator.num_processes
        return have_data

    def teacher_forcing(self) -> float:
        config = self.config
        if config.scheduled_sampling is None:
            return 1.0
        return teacher_forcing_ratio(self.state.step, config.max_steps, config.scheduled_sampling, config.ss_floor, config.ss_k)

    def optimizer_step(self, micro_batches: list[dict], ratio: float) -> torch.Tensor | None:
        """One optimizer step over `micro_batches`; returns the gradient norm before clipping.

        The step's loss is the mean over every target token of all its micro-batches on all
        ranks, so that W processes × `grad_accum` micro-batches of B train as one batch of
        W·`grad_accum`·B would. Each micro-batch's summed loss is divided by the step's token
        count, times what the averaging undoes: DDP averages gradients over the W ranks, and
        accelerator.backward divides by `grad_accum`.
        """
        accelerator, config = self.accelerator, self.config
        counts = [(batch["labels"] != -100).sum() for batch in micro_batches]
        step_tokens = torch.stack(counts).sum()
        if accelerator.num_processes > 1:
            step_tokens = accelerator.reduce(step_tokens, "sum")
        scale = accelerator.num_processes * config.grad_accum / step_tokens.clamp(min=1)
        for batch, count in zip(micro_batches, counts):
            # accelerate's accumulate() skips the gradient all-reduce on all but the last
            # micro-batch (DDP).
            with accelerator.accumulate(self.model):
                with training_attention(accelerator.device, self.precision.dtype):
                    if self.loss_fn is None:
                        loss, _ = training_loss(self.model, batch, ratio, config.label_smoothing, self.unwrapped)
                    else:
                        loss = self.loss_fn(self.model, batch)
                # the mean over the micro-batch's target tokens, as a sum; a micro-batch without
                # any (possible in adapt's MLM windows) has a NaN mean and adds nothing: zero loss,
                # zero gradient (it still runs, so that DDP's ranks stay in step)
                loss = torch.where(count > 0, loss * count, 0.0)
                accelerator.backward(loss * scale)
            self.loss_sum += loss.detach()
            self.tokens += batch["attention_mask"].sum() + count
            self.padding += _padding(batch, seq2seq=self.loss_fn is None)
        self.target_tokens += step_tokens
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with the optimizer steps")
        grad_norm = None
        if config.max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the schedule waits too
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return grad_norm

    def log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.result.history.append(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def log_window(self, ratio: float, grad_norm: torch.Tensor | None) -> dict:
        """Log the window's loss (token-weighted over the window and every rank), speed and
        padding share, and start a new window; returns the record."""
        reduce, device = self.accelerator.reduce, self.accelerator.device
        seconds = reduce(torch.tensor(self.window_time, device=device), "mean").item()
        padded, positions = reduce(self.padding, "sum").tolist()
        record = {"step": self.state.step, "loss": (reduce(self.loss_sum, "sum") / self.target_tokens.clamp(min=1)).item(),
                  "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": reduce(self.tokens, "sum").item() / max(seconds, 1e-9),
                  "padding_share": padded / max(positions, 1), "epoch": self.sampler.state_dict()["epoch"],
                  "mixed_precision": self.precision.mixed_precision}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if self.config.scheduled_sampling is not None:
            record["teacher_forcing_ratio"] = ratio
        self.log(record)
        for total in (self.loss_sum, self.tokens, self.target_tokens, self.padding):
            total.zero_()
        self.window_time = 0.0
        return record

    def evaluation(self) -> dict:
        """The evaluate hook's metrics of the model as it stands, the same on every process."""
        # A hook that shares its work out (`across_processes`, e.g. fine-tuning's validation hook)
        # runs on every process and returns the same metrics on each; any other runs on the main
        # process while the others wait for its metrics, as long as SWCM_DIST_TIMEOUT allows.
        everywhere = getattr(self.evaluate, "across_processes", False)
        metrics = [None]
        if everywhere or self.accelerator.is_main_process:
            self.unwrapped.eval()
            with torch.no_grad():
                metrics = [dict(self.evaluate(self.unwrapped))]
            self.unwrapped.train()
        if not everywhere:
            broadcast_object_list(metrics)
        return metrics[0]

    def evaluate_and_keep_best(self) -> bool:
        """Evaluate, keep the best model in OUT/best; True when early stopping says stop."""
        config, state = self.config, self.state
        metrics = self.evaluation()
        if config.metric not in metrics:
            raise ValueError(f"the evaluate hook returned {sorted(metrics)}, without the metric {config.metric!r}")
        self.log({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}})
        self.last_evaluated = state.step
        value = float(metrics[config.metric])
        better = state.best_metric is None or (value > state.best_metric if config.greater_is_better else value < state.best_metric)
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            save_model(self, self.out / "best")
            self.result.best_dir, self.result.best_metric, self.result.best_step = self.out / "best", value, state.step
        else:
            state.evals_without_improvement += 1
        return config.patience is not None and state.evals_without_improvement >= config.patience

    def save_checkpoint(self) -> None:
        save_checkpoint(self)
        self.last_saved = self.state.step

    def write_averaged(self) -> None:
        """OUT/averaged from the last `average_last` checkpoints (fewer when training stopped
        before it wrote them all), scored by the evaluate hook in the precision of the run's
        evaluations; the model then gets its final weights back. Collective."""
        directory, result = self.out / "averaged", self.result
        checkpoints = checkpoint_dirs(self.out)[-self.config.average_last:]
        if self.accelerator.is_main_process:
            if len(checkpoints) < self.config.average_last:
                print(f"average_last {self.config.average_last}: training stopped at step {self.state.step} with "
                      f"{len(checkpoints)} checkpoint(s); OUT/averaged averages those", file=sys.stderr)
            average_models(checkpoints, directory)
        self.accelerator.wait_for_everyone()
        result.averaged_dir = directory
        result.averaged_steps = [int(CHECKPOINT_NAME.match(p.name).group(1)) for p in checkpoints]
        if self.evaluate is not None:
            load_model_weights(self.unwrapped, directory)
            result.averaged_metrics = self.evaluation()
            load_model_weights(self.unwrapped, result.final_dir)


def _padding(batch: dict, seq2seq: bool) -> torch.Tensor:
    """(padded positions, all positions) of a batch: source positions the attention mask rules
    out, and for seq2seq batches target positions labelled −100."""
    padded, total = (batch["attention_mask"] == 0).sum(), batch["attention_mask"].numel()
    if seq2seq:
        padded, total = padded + (batch["labels"] == -100).sum(), total + batch["labels"].numel()
    return torch.stack([padded, torch.as_tensor(total, device=padded.device)])


def train(
    model: nn.Module,
    tokenizer,
    examples: Iterable[dict],
    config: TrainingConfig,
    collator: Callable[[list[dict]], dict],
    evaluate: Callable[[nn.Module], dict] | None = None,
    *,
    sharded: bool = False,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    settings: dict | None = None,
) -> TrainingResult:
    """Train `model` in place on `examples` for `config.max_steps` optimizer steps; its weights
    are made fp32 first (master weights, whatever they were stored in).

    `examples` yields token-level examples; `collator` pads a list of them into a batch with
    `input_ids`, `attention_mask` and `labels` (−100 padding). `evaluate(model) -> dict`, when
    given, runs every `eval_every` steps and at the end (model in eval mode, no gradient): on
    the main process, or on every process when the hook's `across_processes` attribute is true
    (it then shares the work out and returns the same metrics on each); its `config.metric` entry selects OUT/best and drives early stopping.
    With `config.resume` the run continues from the latest complete checkpoint in OUT (or
    starts fresh when there is none); without it, an OUT that already holds checkpoints is an
    error. Training also ends early when one-shot data runs out. Returns a `TrainingResult`;
    the final weights are in OUT/final (model + tokenizer); with `config.average_last`, the mean
    of the last checkpoints is in OUT/averaged, and the hook's scores of it in the result.

    Under several processes, by default every rank reads the same `examples` and keeps its
    slice of each global batch. `sharded=True` says that `examples` is already this process's
    own share (e.g. a `PretrainingStream` built with this rank and world size): each rank then
    uses all of its examples, and its own data position is checkpointed.

    `loss_fn(model, batch) -> loss` replaces the seq2seq loss for models of another kind (e.g.
    a masked LM, whose batches carry their own `labels`); scheduled sampling does not apply.

    The trackers of `config.report_to` (`swcm.training.tracking`) get the loop's settings and
    `settings` (the recipe's own, e.g. fine-tuning's), then every record of log.jsonl.
    """
    out = Path(config.out_dir)
    resume_from = latest_checkpoint(out) if config.resume else None
    if not config.resume and checkpoint_dirs(out):
        raise ValueError(f"{out} already holds checkpoints; resume them or choose another output directory")
    if evaluate is not None and config.eval_every is None and config.patience is not None:
        raise ValueError("patience needs eval_every")
    refuse_unsupported_parallelism()
    if config.average_last is not None and hasattr(model, "peft_config"):
        raise ValueError("average_last: a LoRA run's checkpoints hold adapters, whose two factors do not average "
                         "into the average of their updates; average merged models (swcm merge) instead")
    model.float()  # fp32 master weights, whatever dtype they were stored in; autocast computes in `precision`
    # "auto" on a CPU with bf16 instructions: the faster precision of this model's own step on this
    # run's first batches (measured once per machine and shape, then cached).
    # One process only: ranks probing apart could choose differently. Not on a one-shot iterator,
    # whose examples the probe would take from the run.
    one_shot = iter(examples) is examples
    probe = (step_probe(model, examples, config, collator, loss_fn)
             if distributed_state().num_processes == 1 and not one_shot else None)
    accelerator, precision = make_accelerator(config, probe)
    refuse_unsupported_parallelism(accelerator.distributed_type)
    accelerator.print(f"mixed precision: {precision.mixed_precision} ({precision.reason})", file=sys.stderr)
    accelerator.gradient_accumulation_steps = config.grad_accum  # for accumulate()
    set_seed(config.seed, device_specific=True)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        clear_interrupted_saves(out)
    if resume_from is not None:
        load_model_weights(model, resume_from)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    world, rank = (1, 0) if sharded else (accelerator.num_processes, accelerator.process_index)
    # Global batches of batch_size × world examples (with max_tokens: max_tokens × world positions).
    cursor = DataCursor(examples, config.seed, config.shuffle, config.group_by_length, config.max_tokens and config.max_tokens * world)
    run = Run(config, accelerator, precision, model, tokenizer, RankBatchSampler(cursor, config.batch_size * world, world, rank),
              evaluate, loss_fn)
    run.start(resume_from, settings)
    state, result = run.state, run.result
    loader = batch_loader(run.sampler, collator, config.num_workers, pin_memory=accelerator.device.type == "cuda",
                          seed=config.seed)
    batches = run.batches(loader)
    bar = tqdm(total=config.max_steps, initial=state.step, desc="train", unit="step",
               disable=not (config.progress and accelerator.is_main_process))
    run.model.train()
    while state.step < config.max_steps:
        started = time.perf_counter()
        ratio = run.teacher_forcing()
        micro_batches = list(islice(batches, config.grad_accum))
        if not run.all_have_data(len(micro_batches) == config.grad_accum):
            result.data_exhausted = True
            break
        grad_norm = run.optimizer_step(micro_batches, ratio)
        run.window_time += time.perf_counter() - started
        bar.update(1)
        at_end = state.step == config.max_steps
        if state.step % config.log_every == 0 or at_end:
            record = run.log_window(ratio, grad_norm)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        stop = False
        if evaluate is not None and (at_end or (config.eval_every is not None and state.step % config.eval_every == 0)):
            stop = run.evaluate_and_keep_best()
        if state.step % config.save_every == 0 or at_end or stop:
            run.save_checkpoint()
        if stop:
            result.stopped_early = True
            break
    bar.close()
    batches.close()  # ends the loader's workers

    if result.data_exhausted and state.step > 0:
        # One-shot data ran out before max_steps: finish as at the last step.
        if evaluate is not None and run.last_evaluated != state.step:
            run.evaluate_and_keep_best()
        if run.last_saved != state.step:
            run.save_checkpoint()
    save_model(run, result.final_dir)
    if config.average_last is not None and state.step > 0:
        run.write_averaged()
    result.step = state.step
    for tracker in accelerator.trackers:
        # Not accelerator.end_training(): it also destroys the process group, and a launched
        # process may train again (pretrain, then fine-tune).
        tracker.finish()
    # Hand the caller its model as it came: no mixed-precision forward wrapper, no checkpointing.
    accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    if config.gradient_checkpointing:
        run.unwrapped.gradient_checkpointing_disable()
    return result
