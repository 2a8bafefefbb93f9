"""The seq2seq loss's cross-entropy over the labelled positions, without a float32 copy of the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


# Rows of logits upcast to float32 at a time by `token_cross_entropy`: 64 MiB of float32 each.
CROSS_ENTROPY_CHUNK_ELEMENTS = 1 << 24


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The summed cross-entropy of N × V `logits` (any float dtype) against N `targets`, as
    `F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=…)` gives it,
    without holding a float32 copy of `logits`: float32 is computed a chunk of rows at a time.
    The gradient is made in the same pass as the loss (softmax − target distribution, in
    `logits`' dtype, in place of the logits, which are not kept), so that the backward is one
    multiplication: the float32 copy and the softmax are not computed a second time."""
    return _TokenCrossEntropy.apply(logits, targets, label_smoothing)


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits) if logits.requires_grad else None
        vocab = logits.shape[-1]
        for rows in _chunks(logits.shape):
            # a copy even of float32 logits when the gradient is made from it in place
            part, target = logits[rows].to(torch.float32, copy=grad is not None), targets[rows]
            log_z = torch.logsumexp(part, dim=-1, keepdim=True)
            picked = part.gather(1, target[:, None])
            # −log p_target = log Z − x_target; smoothing adds ε·mean_j(−log p_j) = ε·(log Z − mean_j x_j)
            loss = log_z - picked
            if label_smoothing:
                loss = (1.0 - label_smoothing) * loss + label_smoothing * (log_z - part.mean(dim=-1, keepdim=True))
            total += loss.sum()
            if grad is not None:
                # d/dx of the above: p − (1 − ε)·onehot − ε/V
                part.sub_(log_z).exp_()
                if label_smoothing:
                    part.sub_(label_smoothing / vocab)
                part.scatter_add_(1, target[:, None], torch.full_like(picked, label_smoothing - 1.0))
                grad[rows] = part
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None


def _chunks(shape: torch.Size) -> list[slice]:
    step = max(1, CROSS_ENTROPY_CHUNK_ELEMENTS // shape[-1])
    return [slice(start, start + step) for start in range(0, shape[0], step)]
