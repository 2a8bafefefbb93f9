"""Fast decoding for SWCM models: a lean greedy / beam-search loop, optionally with int8 weights.

`model.generate()` spends most of a CPU decoding step outside the model's matrix products: in
the generic cache classes, the logits processors, the stopping criteria and the input
preparation of every step. `FastSWCM` wraps a trained model and decodes with nothing per step
but the decoder itself:

- the decoder's weights are laid out once: the self-attention's query/key/value as one matrix,
  the cross-attention's key/value as one;
- the cross-attention keys and values are computed once per batch; the self-attention keys and
  values go into a preallocated cache (grown by doubling, reordered in place for beam search);
- the decoding rules (`forced_bos_token_id`, `no_repeat_ngram_size`, `min_length` /
  `min_new_tokens`, `forced_eos_token_id`, EOS and `max_length` stopping, beam search with
  `length_penalty` and `early_stopping`) are a few tensor operations each, written to give
  exactly what transformers' `generate()` gives: in float32 the outputs are the same token for
  token, batch by batch (tests/test_fast_generation.py).
- `quantize="int8"` replaces every linear layer of the encoder, the decoder and the output head
  by torch's dynamically quantised int8 linear (weights int8 per output channel, activations
  quantised per step; fbgemm / oneDNN kernels), which also makes a batch of one fit in cache.

`FastSWCM` behaves enough like the model it wraps (`config`, `generation_config`, `eval()`,
`parameters()`) that `swcm.generation.generate_sequences` and everything above it take it in
place of the model; `swcm generate --engine fast [--quantize int8]` and `swcm evaluate` do so.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .decoding_rules import _DecodingRules, _may_improve
from .modeling import SWCMForConditionalGeneration

ENGINES = ("transformers", "fast")
QUANTIZE_CHOICES = ("none", "int8")

def check_engine(engine: str, quantize: str | None, device: str, dtype: str) -> None:
    """ValueError, in one line, for an engine / quantisation / device / dtype combination that
    cannot run: int8 needs the fast engine, the CPU and float32 weights."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if _quantization(quantize) == "int8":
        if engine != "fast":
            raise ValueError("int8 quantisation needs the fast engine (--engine fast)")
        if not str(device).startswith("cpu"):
            raise ValueError(f"int8 quantisation runs on the CPU only, not {device}")
        if dtype not in ("auto", "float32"):
            raise ValueError(f"int8 quantisation starts from float32 weights, not {dtype}")


def _quantization(quantize: str | None) -> str | None:
    """None or "int8"; ValueError for anything else ("none" means None)."""
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    return None if quantize == "none" else quantize


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """torch's dynamically quantised Linear (int8 weights per output channel) for these weights."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.float())
        if bias is not None:
            linear.bias.copy_(bias.float())
    linear.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch ≥ 2.10 announces that torch.ao quantisation moves to torchao
        warnings.simplefilter("ignore")
        return DynamicQuantizedLinear.from_float(linear)


def _quantized_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` with every nn.Linear in it in int8 dynamically quantised form."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(module).float(), {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


class _Linear:
    """y = x Wᵀ + b with the weights fixed at construction, in float or int8."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, int8: bool):
        self.weight, self.bias = weight, bias
        # The quantised module's own operator, called directly: its forward() adds checks and a cast per call.
        self.packed = _int8_linear(weight, bias)._packed_params._packed_params if int8 else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)
        return F.linear(x, self.weight, self.bias)


def _joined(linears: list[nn.Linear], int8: bool) -> _Linear:
    """One linear computing several (query, key, value) in one matrix product: the same
    product, with the same concatenated weights, that `SWCMAttention._projections` runs."""
    return _Linear(torch.cat([l.weight for l in linears]).detach(), torch.cat([l.bias for l in linears]).detach(), int8)


class _Sublayer:
    """One post-LN sublayer, h = LayerNorm(h + f(h)), of a decoder layer."""

    def __init__(self, norm: nn.LayerNorm):
        self.norm_shape, self.norm_weight, self.norm_bias, self.eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps

    def residual(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(hidden + out, self.norm_shape, self.norm_weight, self.norm_bias, self.eps)


class _Attention(_Sublayer):
    def __init__(self, attn: nn.Module, norm: nn.LayerNorm, int8: bool):
        super().__init__(norm)
        self.heads, self.head_dim = attn.num_heads, attn.head_dim
        self.output = _Linear(attn.output.weight.detach(), attn.output.bias.detach(), int8)
        self.exact = not int8

    def _attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """softmax(q kᵀ / √d) v for one query position. In float the model's own SDPA call, so
        that the outputs are generate()'s bit for bit; in int8 mode, for many rows, two batched
        matrix products, which run about twice as fast as the CPU's SDPA kernel on one query."""
        if self.exact or query.shape[0] < 8:
            return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=is_causal)
        scores = (query @ keys.transpose(-1, -2)) * self.head_dim**-0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, -float("inf"))
        return torch.softmax(scores, dim=-1) @ values

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(context.transpose(1, 2).reshape(hidden.shape))


class _SelfAttention(_Attention):
    """Masked self-attention over the cached keys/values of the positions so far."""

    def __init__(self, attn: nn.Module, norm: nn.LayerNorm, int8: bool):
        super().__init__(attn, norm, int8)
        self.qkv = _joined([attn.query, attn.key, attn.value], int8)

    def __call__(self, hidden: torch.Tensor, state: "_DecodeState", index: int) -> torch.Tensor:
        query, key, value = (self._split(x) for x in self.qkv(hidden).chunk(3, dim=-1))
        keys, values = state.self_kv[index]
        t = state.length
        keys[:, :, t : t + 1] = key
        values[:, :, t : t + 1] = value
        # The first step attends to itself only; the model runs it as plain causal attention.
        context = self._attend(query, keys[:, :, : t + 1], values[:, :, : t + 1], is_causal=t == 0)
        return self.residual(hidden, self._merge(context, hidden))


class _CrossAttention(_Attention):
    """Attention over the encoder output, whose keys/values are computed once per batch."""

    def __init__(self, attn: nn.Module, norm: nn.LayerNorm, int8: bool):
        super().__init__(attn, norm, int8)
        self.query = _Linear(attn.query.weight.detach(), attn.query.bias.detach(), int8)
        self.kv = _joined([attn.key, attn.value], int8)

    def keys_values(self, encoder_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = (self._split(x).contiguous() for x in self.kv(encoder_hidden).chunk(2, dim=-1))
        return key, value

    def __call__(self, hidden: torch.Tensor, state: "_DecodeState", index: int) -> torch.Tensor:
        key, value = state.cross_kv[index]
        context = self._attend(self._split(self.query(hidden)), key, value, state.cross_mask)
        return self.residual(hidden, self._merge(context, hidden))


class _FeedForward(_Sublayer):
    def __init__(self, ffn: nn.Module, norm: nn.LayerNorm, int8: bool):
        super().__init__(norm)
        self.intermediate = _Linear(ffn.intermediate.weight.detach(), ffn.intermediate.bias.detach(), int8)
        self.act = ffn.act
        self.output = _Linear(ffn.output.weight.detach(), ffn.output.bias.detach(), int8)

    def __call__(self, hidden: torch.Tensor, state: "_DecodeState", index: int) -> torch.Tensor:
        return self.residual(hidden, self.output(self.act(self.intermediate(hidden))))


class _DecodeState:
    """The per-batch state of one decoding run: the cross-attention keys/values of every
    layer, the cross-attention mask, and the self-attention cache (`length` positions filled)."""

    def __init__(self, cross_kv: list, cross_mask: torch.Tensor | None, rows: int, heads: int, head_dim: int,
                 capacity: int, dtype: torch.dtype, device: torch.device):
        self.cross_kv, self.cross_mask = cross_kv, cross_mask
        shape = (rows, heads, capacity, head_dim)
        self.self_kv = [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                        for _ in cross_kv]
        self.length = 0

    def make_room(self) -> None:
        """Double the self-attention cache when the next position would not fit."""
        capacity = self.self_kv[0][0].shape[2]
        if self.length < capacity:
            return
        grown = []
        for pair in self.self_kv:
            new_pair = tuple(x.new_empty(x.shape[0], x.shape[1], 2 * capacity, x.shape[3]) for x in pair)
            for new, old in zip(new_pair, pair):
                new[:, :, :capacity] = old
            grown.append(new_pair)
        self.self_kv = grown

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i of the cache becomes row `rows[i]` (filled positions only)."""
        n = self.length
        for keys, values in self.self_kv:
            keys[:, :, :n] = keys[rows, :, :n]
            values[:, :, :n] = values[rows, :, :n]


class FastSWCM(nn.Module):
    """An SWCM model wrapped for fast decoding: `generate()` takes the model's arguments
    (input_ids, attention_mask, max_new_tokens, num_beams, forced_bos_token_id,
    no_repeat_ngram_size, …) and returns what `model.generate()` returns, the sequences of token
    ids; in float32 the very same ones. Sampling and the rarer processors are not implemented:
    asking for them raises ValueError.

    `quantize="int8"` decodes with int8 weights in every linear layer and the head (CPU only;
    the model must be float32). The wrapped model is not modified; `model.generate()` keeps
    working as before.
    """

    def __init__(self, model: SWCMForConditionalGeneration, quantize: str | None = None):
        super().__init__()
        if not isinstance(model, SWCMForConditionalGeneration):
            raise ValueError(f"the fast engine decodes SWCM models only, not {type(model).__name__}; "
                             "use the transformers engine")
        quantize = _quantization(quantize)
        device = next(model.parameters()).device
        if quantize and (device.type != "cpu" or next(model.parameters()).dtype != torch.float32):
            raise ValueError(f"int8 quantisation needs a float32 model on the CPU, got {model.dtype} on {device}")
        self.model = model.eval()
        self.quantize = quantize
        self.config = model.config
        self.generation_config = model.generation_config
        int8 = quantize == "int8"
        with torch.no_grad():
            self.encoder = _quantized_copy(model.encoder) if int8 else model.encoder
            if type(model.lm_head) is nn.Linear:
                self.head = _Linear(model.lm_head.weight.detach(), model.lm_head.bias.detach(), int8)
            else:  # the MLM head
                self.head = _quantized_copy(model.lm_head) if int8 else model.lm_head
            self.layers = [self._sublayers(layer, int8) for layer in model.decoder.layers]
        first = model.decoder.layers[0].self_attn
        self.heads, self.head_dim = first.num_heads, first.head_dim
        self.eval()  # a decoding engine: no dropout, ever (generate_sequences restores the mode it found)

    @staticmethod
    def _sublayers(layer: nn.Module, int8: bool) -> list:
        kinds = {"self_attn": _SelfAttention, "cross_attn": _CrossAttention}
        return [kinds.get(name, _FeedForward)(getattr(layer, name), getattr(layer, f"{name}_layer_norm"), int8)
                for name in layer.sublayers]

    @property
    def max_target_positions(self) -> int:
        return self.model.max_target_positions

    # --- one decoding step ------------------------------------------------------------------

    def _start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, expand: int, capacity: int) -> _DecodeState:
        """Encode the sources, repeat each `expand` times (beams) and compute every layer's
        cross-attention keys/values."""
        encoded = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if expand > 1:
            encoded = encoded.repeat_interleave(expand, dim=0)
            attention_mask = attention_mask.repeat_interleave(expand, dim=0)
        cross_kv = [next(s for s in layer if isinstance(s, _CrossAttention)).keys_values(encoded) for layer in self.layers]
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        return _DecodeState(cross_kv, mask, encoded.shape[0], self.heads, self.head_dim, capacity, encoded.dtype,
                            encoded.device)

    def _step(self, tokens: torch.Tensor, state: _DecodeState) -> torch.Tensor:
        """Logits (float32, [rows, vocab]) for the next token after `tokens` ([rows]), which sit
        at position `state.length`; fills that position of the cache."""
        state.make_room()
        position = torch.full((tokens.shape[0], 1), state.length + self.model.position_offset, device=tokens.device)
        hidden = self.model.encoder.embeddings(input_ids=tokens[:, None], position_ids=position)
        for index, layer in enumerate(self.layers):
            for sublayer in layer:
                hidden = sublayer(hidden, state, index)
        state.length += 1
        return self.head(hidden)[:, -1].float()

    # --- generate -----------------------------------------------------------------------------

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Greedy or beam-search decoding with generate()'s settings (the model's generation
        config updated with `kwargs`); returns [batch × num_return_sequences, length] token ids,
        padded with the pad token, as `model.generate()` does."""
        rules = _DecodingRules(self.generation_config, kwargs, self.max_target_positions, input_ids.device)
        if attention_mask is None:
            attention_mask = rules.attention_mask(input_ids)
        with torch.inference_mode():  # cheaper per operation than no_grad
            search = self._greedy if rules.num_beams == 1 else self._beam_search
            sequences = search(input_ids, attention_mask, rules)
        return sequences.clone()  # a normal tensor again, usable outside inference mode

    def _greedy(self, input_ids, attention_mask, rules: "_DecodingRules") -> torch.Tensor:
        rows = input_ids.shape[0]
        state = self._start(input_ids, attention_mask, 1, min(rules.max_length, 64))
        tokens = torch.full((rows, rules.max_length), rules.pad, dtype=torch.long, device=input_ids.device)
        tokens[:, 0] = rules.start
        unfinished = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        length = 1
        while True:
            scores = rules.process(self._step(tokens[:, length - 1], state), tokens[:, :length])
            next_tokens = torch.where(unfinished, scores.argmax(dim=-1), rules.pad)
            tokens[:, length] = next_tokens
            length += 1
            unfinished &= ~torch.isin(next_tokens, rules.eos)
            if length >= rules.max_length or not bool(unfinished.any()):
                return tokens[:, :length]

    def _beam_search(self, input_ids, attention_mask, rules: "_DecodingRules") -> torch.Tensor:
        """transformers' vectorised beam search (GenerationMixin._beam_search), step for step:
        keep the best 2 × beams continuations, move those ending the sequence into the finished
        hypotheses (scored with the length penalty), continue with the best unfinished ones."""
        batch, beams, max_length, device = input_ids.shape[0], rules.num_beams, rules.max_length, input_ids.device
        state = self._start(input_ids, attention_mask, beams, min(max_length, 64))
        keep = max(2, 1 + len(rules.eos)) * beams
        top_beams = torch.arange(keep, device=device) < beams
        batch_offset = torch.arange(batch, device=device)[:, None] * beams
        running = torch.full((batch, beams, max_length), rules.beam_fill, dtype=torch.long, device=device)
        running[:, :, 0] = rules.start
        finished = running.clone()
        running_scores = torch.zeros((batch, beams), device=device)
        running_scores[:, 1:] = -1e9
        finished_scores = torch.full((batch, beams), -1e9, device=device)
        finished_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
        is_finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
        can_improve = torch.ones((batch, 1), dtype=torch.bool, device=device)
        length = 1
        while True:
            flat = running[:, :, :length].reshape(batch * beams, length)
            logits = self._step(flat[:, -1], state)
            log_probs = rules.process(F.log_softmax(logits, dim=-1), flat)
            vocab = log_probs.shape[-1]
            log_probs = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)

            # The top `keep` continuations over all beams of each source.
            top_scores, top_indices = torch.topk(log_probs, k=keep)
            from_beam = top_indices // vocab
            candidates = running.gather(1, from_beam[:, :, None].expand(-1, -1, max_length)).clone()
            candidates[:, :, length] = top_indices % vocab
            ends = torch.isin(candidates[:, :, length], rules.eos) | (length + 1 >= max_length)

            # Continue with the best `beams` that did not end.
            continuing = top_scores + ends.float() * -1e9
            chosen = torch.topk(continuing, k=beams)[1]
            running = candidates.gather(1, chosen[:, :, None].expand(-1, -1, max_length))
            running_scores = continuing.gather(1, chosen)
            cache_rows = (from_beam + batch_offset).gather(1, chosen).flatten()

            # Among the first `beams` candidates, the ones that ended join the finished hypotheses.
            just_finished = ends & top_beams[None, :]
            scores = top_scores / (length ** rules.length_penalty)
            scores += (is_finished.all(dim=-1, keepdim=True) & (rules.early_stopping is True)).float() * -1e9
            scores += (~can_improve).float() * -1e9
            scores += (~just_finished) * -1e9
            merged_scores = torch.cat((finished_scores, scores), dim=1)
            best = torch.topk(merged_scores, k=beams)[1]
            finished = torch.cat((finished, candidates), dim=1).gather(1, best[:, :, None].expand(-1, -1, max_length))
            finished_scores = merged_scores.gather(1, best)
            candidate_lengths = torch.full_like(top_scores, length, dtype=torch.long)
            finished_lengths = torch.cat((finished_lengths, candidate_lengths), dim=1).gather(1, best)
            is_finished = torch.cat((is_finished, just_finished), dim=1).gather(1, best)

            state.reorder(cache_rows)
            length += 1
            can_improve = can_improve & _may_improve(running_scores, finished_scores, is_finished, length, rules)
            stop = (not bool(can_improve.any()) or (bool(is_finished.all()) and rules.early_stopping is True)
                    or bool(ends.all()))
            if stop:
                break
        returned = rules.num_return_sequences
        out_length = 1 + int(finished_lengths[:, :returned].max())
        return finished[:, :returned, :out_length].reshape(batch * returned, out_length)
