"""The seq2seq loss's cross-entropy over the labelled positions, without a float32 copy of the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# Rows of logits upcast to float32 at a time by `token_cross_entropy`: 64 MiB of float32 each.
CROSS_ENTROPY_CHUNK_ELEMENTS = 1 << 24


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The summed cross-entropy of N × V `logits` (any float dtype) against N `targets`, as
    `F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=…)` gives it,
    without holding a float32 copy of `logits`: float32 is computed a chunk of rows at a time,
    in the forward and again in the backward, and only `logits` itself is kept for the gradient."""
    return _TokenCrossEntropy.apply(logits, targets, label_smoothing)


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        ctx.save_for_backward(logits, targets)
        ctx.label_smoothing = label_smoothing
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for rows in _chunks(logits.shape):
            total += F.cross_entropy(logits[rows].float(), targets[rows], reduction="sum", label_smoothing=label_smoothing)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        logits, targets = ctx.saved_tensors
        smoothing, vocab = ctx.label_smoothing, logits.shape[-1]
        chunks = _chunks(logits.shape)
        grad = None if len(chunks) == 1 else torch.empty_like(logits)
        for rows in chunks:
            # d/dlogits of (1 − ε)·(−log p_target) + ε·mean_j(−log p_j) = p − (1 − ε)·onehot − ε/V
            part = torch.softmax(logits[rows].float(), dim=-1)
            if smoothing:
                part.sub_(smoothing / vocab)
            part[torch.arange(part.shape[0], device=part.device), targets[rows]] -= 1.0 - smoothing
            part.mul_(grad_total)
            if grad is None:
                grad = part.to(logits.dtype)  # one chunk: no second N × V buffer when dtypes agree
            else:
                grad[rows] = part
        return grad, None, None


def _chunks(shape: torch.Size) -> list[slice]:
    step = max(1, CROSS_ENTROPY_CHUNK_ELEMENTS // shape[-1])
    return [slice(start, start + step) for start in range(0, shape[0], step)]
