"""The optimiser and the learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from .config import TrainingConfig


# transformers' Trainer leaves out of weight decay the parameters inside LayerNorms and those whose
# names say bias or norm (`Trainer.get_decay_parameter_names`, transformers 5): its rule, applied
# with the helper it uses, so that a start-up does not import the Trainer (~0.4 s) for it.
NO_DECAY_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as transformers' Trainer makes them: weight decay on weight matrices and
    embeddings, none on biases and LayerNorms (`NO_DECAY_NAME_PATTERNS`)."""
    decay = set(get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_NAME_PATTERNS)))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over `groups`, fused (one kernel for all parameters instead of a loop over
    tensors) where this torch has the kernel for the parameters' device — CUDA, and the CPU
    from torch 2.4 — else torch's default implementation."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except RuntimeError:  # "`fused=True` requires all the params to be … of supported devices"
        return torch.optim.AdamW(groups, lr=lr)


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig):
    """`config.schedule` after `config.warmup_steps` of linear warm-up, over `config.max_steps`
    (transformers' schedulers); stepped once per optimizer step."""
    name = "constant_with_warmup" if config.schedule == "constant" else config.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)
