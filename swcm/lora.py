"""LoRA through peft: the adapters `swcm finetune --lora` trains, saving them alone, and merging.

An SWCM model has three kinds of weights under fine-tuning. The encoder's layers and the Custom
decoder layers, which weight sharing initialised from the encoder, are pretrained: LoRA adapts
their linear projections (`LoraSettings.lora_targets`, by name, as peft matches them: a module
named T or ending in ".T"). The Normal decoder layers started random and saw only pretraining:
they are trained in full beside the adapters (`lora_full`), as may be the shared embeddings and the
output head. Attention routes through an adapter's own forward once its projections are wrapped
(`swcm.sublayers.SWCMAttention._projections`).

A LoRA run's checkpoints, OUT/best and OUT/final are adapter directories (peft's
adapter_config.json and adapter_model.safetensors, the tokenizer and the generation config):
megabytes instead of the whole model. `load_merged` (what `generate`, `evaluate`, the fast engine
and `serve` use for such a directory, through `swcm.generation.load_generator`) and `swcm merge`
(which writes the merged weights as an ordinary model directory) fold them into the base model
that adapter_config.json names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Linear layers of the encoder layers (BERT's names) and of the decoder's layers (SWCM's).
DEFAULT_TARGETS = "query,key,value,output,dense,intermediate"
FULL_CHOICES = ("normal", "embeddings", "head")


@dataclass
class LoraSettings:
    """LoRA for fine-tuning (off unless `lora`): adapters of rank `lora_r`, scaled by
    `lora_alpha` / `lora_r`, with `lora_dropout` on their input, on the linear layers named in
    `lora_targets` (comma-separated, matched as peft matches names; only layers of the encoder's
    and the decoder's layers, never the head); `lora_full` names what trains in full beside them:
    normal (the Normal decoder layers), embeddings (the shared word embeddings), head,
    comma-separated, or none. A head tied to the word embeddings trains with them or not at all,
    and stays tied (peft's `ensure_weight_tying`)."""

    lora: bool = False
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = DEFAULT_TARGETS
    lora_full: str = "normal"

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.targets:
            raise ValueError("lora_targets: no module names")
        unknown = [name for name in self.full if name not in FULL_CHOICES]
        if unknown:
            raise ValueError(f"lora_full: unknown {unknown[0]!r}; expected {', '.join(FULL_CHOICES)} (comma-separated) or none")

    @property
    def targets(self) -> list[str]:
        return _names(self.lora_targets)

    @property
    def full(self) -> list[str]:
        return [] if self.lora_full.strip().lower() == "none" else _names(self.lora_full)


def _names(text) -> list[str]:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return list(dict.fromkeys(item.strip() for item in items if str(item).strip()))


def full_modules(model: nn.Module, settings: LoraSettings) -> list[str]:
    """The names of the modules `settings.lora_full` trains in full, in `model` (an SWCM model)."""
    names = []
    for what in settings.full:
        if what == "normal":
            names += [f"decoder.layers.{i}" for i, kind in enumerate(model.config.decoder_layer_types) if kind == "normal"]
        elif what == "embeddings":
            names.append("encoder.embeddings.word_embeddings")
        elif what == "head":
            names.append("lm_head")
    return names


def target_modules(model: nn.Module, settings: LoraSettings, full: list[str]) -> list[str]:
    """The full names of the linear layers LoRA adapts: those matching `settings.targets` inside
    the encoder's and decoder's layers, outside the modules trained in full. ValueError naming a
    target that matches nothing."""
    inside = ("encoder.encoder.layer.", "decoder.layers.")
    chosen, matched = [], set()
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or not name.startswith(inside):
            continue
        if any(name == f or name.startswith(f + ".") for f in full):
            continue
        hits = [t for t in settings.targets if name == t or name.endswith("." + t)]
        if hits:
            chosen.append(name)
            matched.update(hits)
    unmatched = [t for t in settings.targets if t not in matched]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith(inside)})
        raise ValueError(f"--lora-targets: {unmatched[0]!r} names no linear layer of the encoder's or decoder's layers "
                         f"outside --lora-full (their names end in: {', '.join(leaves)})")
    return chosen


def apply_lora(model: nn.Module, settings: LoraSettings, base_dir: str | os.PathLike):
    """`model` wrapped by peft with fresh LoRA adapters (`settings`), every other weight frozen
    but the modules trained in full; `base_dir`, the model's directory, is recorded in the
    adapter's config as its base. Returns the `PeftModel`."""
    from peft import LoraConfig, get_peft_model

    full = full_modules(model, settings)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if tied and ("lm_head" in full) != ("encoder.embeddings.word_embeddings" in full):
        raise ValueError("--lora-full: this model's head is tied to its word embeddings; train both "
                         "(--lora-full normal,embeddings,head) or neither")
    config = LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=target_modules(model, settings, full), modules_to_save=full or None, bias="none",
        ensure_weight_tying=tied and "lm_head" in full,
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(Path(base_dir).resolve())
    return peft_model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) of `model`, tied ones counted once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a peft adapter directory (adapter_config.json)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | os.PathLike) -> str:
    """The base model directory an adapter directory's config names (ValueError naming the file)."""
    from .io import read_json_object

    config_file = Path(path) / ADAPTER_CONFIG
    base = read_json_object(config_file).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{config_file}: no base_model_name_or_path, so the base model is unknown")
    return base


def load_merged(adapter_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, base_dir: str | os.PathLike | None = None):
    """The base model (`base_dir`, default: the one adapter_config.json names) with the adapter in
    `adapter_dir` merged into its weights: an ordinary `SWCMForConditionalGeneration` (no peft
    wrapper), with the adapter directory's generation config. Merging is done in float32, then
    the model is cast to `dtype`."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    from .io import check_model_dir, check_safetensors

    from . import modeling  # noqa: F401  (registers SWCM with the Auto classes)

    adapter_dir = Path(adapter_dir)
    base = str(base_dir) if base_dir is not None else adapter_base(adapter_dir)
    check_model_dir(base, tokenizer=False)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{adapter_dir / ADAPTER_WEIGHTS}: missing; an adapter directory holds its weights there")
    check_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    model = AutoModelForSeq2SeqLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if (adapter_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    return model.to(dtype)


def adapter_summary(adapter_dir: str | os.PathLike) -> dict:
    """What an adapter directory's config says: rank, alpha, dropout, targets, fully trained modules, base."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return {"r": config.get("r"), "lora_alpha": config.get("lora_alpha"), "lora_dropout": config.get("lora_dropout"),
            "target_modules": sorted(config.get("target_modules") or []), "modules_to_save": config.get("modules_to_save") or [],
            "base_model": config.get("base_model_name_or_path")}
