"""The sublayers of SWCM's decoder layers, with BERT's parameter names so that each copies from
an encoder layer: multi-head attention (masked self-attention or cross-attention; SDPA, and
transformers' `EncoderDecoderCache` during generation) and the feed-forward block. The layers
that compose them, in the paper's order, are in `swcm.modeling`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import EncoderDecoderCache

from .configuration import SWCMConfig


@torch.no_grad()
def _copy_weights(*pairs: tuple[nn.Module, nn.Module]) -> None:
    """Copy the weight and bias of each (ours, the encoder's) pair of Linear / LayerNorm modules."""
    for mine, theirs in pairs:
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(theirs.bias)


class SWCMAttention(nn.Module):
    """Multi-head attention with BERT's parameter names (query, key, value, output)."""

    def __init__(self, config: SWCMConfig, layer_idx: int, is_cross_attention: bool):
        super().__init__()
        enc = config.encoder
        self.num_heads = enc.num_attention_heads
        self.head_dim = enc.hidden_size // enc.num_attention_heads
        self.dropout = enc.attention_probs_dropout_prob
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.query = nn.Linear(enc.hidden_size, enc.hidden_size)
        self.key = nn.Linear(enc.hidden_size, enc.hidden_size)
        self.value = nn.Linear(enc.hidden_size, enc.hidden_size)
        self.output = nn.Linear(enc.hidden_size, enc.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _projections(self, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """The named projections of `x`, as heads, computed by one matrix product (one larger
        GEMM runs faster than several small ones; the parameters stay separate, BERT's)."""
        linears = [getattr(self, name) for name in names]
        if any(type(linear) is not nn.Linear for linear in linears):  # adapters (LoRA, …): their own forward
            return [self._heads(linear(x)) for linear in linears]
        weight = torch.cat([linear.weight for linear in linears])
        bias = torch.cat([linear.bias for linear in linears])
        return [self._heads(part) for part in F.linear(x, weight, bias).chunk(len(names), dim=-1)]

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        cache_position: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """`is_causal`: plain causal self-attention over exactly these positions (no cache, no
        padding), which SDPA runs without a mask tensor — its fastest kernels."""
        if self.is_cross_attention:
            query = self._heads(self.query(hidden_states))
            cache = past_key_values.cross_attention_cache if past_key_values is not None else None
            if cache is not None and past_key_values.is_updated.get(self.layer_idx):
                # The encoder output does not change during generation: reuse its keys/values.
                key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
            else:
                key, value = self._projections(key_value_states, "key", "value")
                if cache is not None:
                    key, value = cache.update(key, value, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
        else:
            query, key, value = self._projections(hidden_states, "query", "key", "value")
            if past_key_values is not None:
                key, value = past_key_values.self_attention_cache.update(
                    key, value, self.layer_idx, {"cache_position": cache_position}
                )
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and attention_mask is None,
        )
        context = context.transpose(1, 2).reshape(hidden_states.shape)
        return self.output(context)

    def copy_from(self, bert_self_attention: nn.Module, bert_output_dense: nn.Linear) -> None:
        _copy_weights(
            (self.query, bert_self_attention.query),
            (self.key, bert_self_attention.key),
            (self.value, bert_self_attention.value),
            (self.output, bert_output_dense),
        )


class FeedForward(nn.Module):
    """BERT's FFN: intermediate.dense → activation → output.dense."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        enc = config.encoder
        self.intermediate = nn.Linear(enc.hidden_size, enc.intermediate_size)
        self.act = ACT2FN[enc.hidden_act]
        self.output = nn.Linear(enc.intermediate_size, enc.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.intermediate(x)))

    def copy_from(self, intermediate_dense: nn.Linear, output_dense: nn.Linear) -> None:
        _copy_weights((self.intermediate, intermediate_dense), (self.output, output_dense))
