"""The shared-weights encoder-decoder (XLM-SWCM), read top to bottom.

encoder   the user's pretrained XLM-R/RoBERTa/BERT model, unchanged
embeddings  the encoder's embedding module (word + positions + LayerNorm), used by the
            decoder too: the same parameters, not a copy
decoder   Custom layers, each a copy of one encoder layer (masked self-attention, FFN_a,
          cross-attention, FFN_b), interleaved every `insert_every` layers with randomly
          initialised Normal layers (self-attention, cross-attention, FFN)
lm_head   Linear(H, V) with bias: untied and random (paper), tied, or the encoder's MLM head

The sublayers, attention and FFN, are in `swcm.sublayers`: attention runs through
`torch.nn.functional.scaled_dot_product_attention`; during generation the self-attention
keys/values are cached step by step and the cross-attention keys/values are computed once, in
a transformers `EncoderDecoderCache`. The loss's cross-entropy is `swcm.loss.token_cross_entropy`.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.bart.modeling_bart import shift_tokens_right  # labels → decoder inputs, as BART

from .configuration import LM_HEADS, SWCMConfig, check_encoder_config
from .loss import token_cross_entropy
from .sublayers import FeedForward, SWCMAttention, _copy_weights


class _PostLNDecoderLayer(GradientCheckpointingLayer):
    """Runs named sublayers in order, each as LayerNorm(x + dropout(sublayer(x))) — the
    encoder's post-LN placement."""

    sublayers: tuple[str, ...] = ()

    def __init__(self, config: SWCMConfig, layer_idx: int):
        super().__init__()
        enc = config.encoder
        self.dropout = nn.Dropout(enc.hidden_dropout_prob)
        for name in self.sublayers:
            if name.endswith("attn"):
                module = SWCMAttention(config, layer_idx, is_cross_attention=name == "cross_attn")
            else:
                module = FeedForward(config)
            self.add_module(name, module)
            self.add_module(f"{name}_layer_norm", nn.LayerNorm(enc.hidden_size, eps=enc.layer_norm_eps))

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        self_attention_mask: torch.Tensor | None = None,
        cross_attention_mask: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        cache_position: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        for name in self.sublayers:
            module = getattr(self, name)
            if name == "self_attn":
                out = module(hidden_states, None, self_attention_mask, past_key_values, cache_position, is_causal=causal)
            elif name == "cross_attn":
                out = module(hidden_states, encoder_hidden_states, cross_attention_mask, past_key_values)
            else:
                out = module(hidden_states)
            hidden_states = getattr(self, f"{name}_layer_norm")(hidden_states + self.dropout(out))
        return hidden_states


class CustomDecoderLayer(_PostLNDecoderLayer):
    """The weight-shared layer: masked self-attention, FFN_a, cross-attention, FFN_b, all
    initialised from one encoder layer (both attentions from its self-attention, both FFNs
    from its FFN)."""

    sublayers = ("self_attn", "ffn_a", "cross_attn", "ffn_b")

    def copy_from_encoder_layer(self, layer: nn.Module) -> None:
        """Copy the weights of a BERT-layout encoder layer into independent parameters."""
        for attn in (self.self_attn, self.cross_attn):
            attn.copy_from(layer.attention.self, layer.attention.output.dense)
        for ffn in (self.ffn_a, self.ffn_b):
            ffn.copy_from(layer.intermediate.dense, layer.output.dense)
        for name in ("self_attn", "cross_attn"):
            _copy_weights((getattr(self, f"{name}_layer_norm"), layer.attention.output.LayerNorm))
        for name in ("ffn_a", "ffn_b"):
            _copy_weights((getattr(self, f"{name}_layer_norm"), layer.output.LayerNorm))


class NormalDecoderLayer(_PostLNDecoderLayer):
    """A standard Transformer decoder layer, randomly initialised."""

    sublayers = ("self_attn", "cross_attn", "ffn")


class SWCMDecoder(nn.Module):
    """The interleaved stack of Custom and Normal layers; embeddings are applied by the caller."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        kinds = {"custom": CustomDecoderLayer, "normal": NormalDecoderLayer}
        self.layers = nn.ModuleList(kinds[kind](config, i) for i, kind in enumerate(config.decoder_layer_types))

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        decoder_attention_mask: torch.Tensor | None,
        past_key_values: EncoderDecoderCache | None,
        cache_position: torch.Tensor,
    ) -> torch.Tensor:
        # Keys so far, from shapes (no host-device sync): cached ones plus these positions.
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        causal = decoder_attention_mask is None and past == 0
        self_mask = None if causal else _causal_mask(cache_position, decoder_attention_mask, past + hidden_states.shape[1])
        # The source mask is passed as it is, even when it hides nothing: asking would be a
        # host-device sync in every forward (and a torch.compile graph break).
        cross_mask = encoder_attention_mask[:, None, None, :].bool() if encoder_attention_mask is not None else None
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                encoder_hidden_states,
                self_attention_mask=self_mask,
                cross_attention_mask=cross_mask,
                past_key_values=past_key_values,
                cache_position=cache_position,
                causal=causal,
            )
        return hidden_states


def _causal_mask(cache_position: torch.Tensor, padding_mask: torch.Tensor | None, num_keys: int) -> torch.Tensor | None:
    """Boolean SDPA mask (True = attend) for queries at `cache_position` over the `num_keys`
    keys so far."""
    if padding_mask is None and cache_position.numel() == 1:
        return None  # one new token attends to every cached one
    keys = torch.arange(num_keys, device=cache_position.device)
    mask = (keys[None, :] <= cache_position[:, None])[None, None]
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, None, -num_keys:].bool()
        # A fully masked row would give NaN; let it attend everywhere (its output is ignored).
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask


_LAYER_KEY = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")


def check_kept_layers(layers: int, total: int, where: str = "encoder") -> None:
    """ValueError naming `where` unless an encoder of `total` layers can keep its first `layers`."""
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
        raise ValueError(f"{where}: cannot keep {layers} of its {total} layers")


def first_layers_state(state: dict[str, torch.Tensor], layers: int, total: int, where: str = "encoder") -> dict[str, torch.Tensor]:
    """An encoder's (or masked LM's) state dict without the tensors of its layers `layers` and
    above: what an encoder cut to its first `layers` of `total` layers holds. Embeddings and any
    masked-LM head stay. ValueError naming `where` unless 1 <= layers <= total."""
    check_kept_layers(layers, total, where)
    return {k: v for k, v in state.items() if (m := _LAYER_KEY.search(k)) is None or int(m.group(2)) < layers}


class MLMHead(nn.Module):
    """The encoder's masked-LM head layout: dense → activation → LayerNorm → Linear(H, V)."""

    def __init__(self, config: SWCMConfig):
        super().__init__()
        enc = config.encoder
        self.dense = nn.Linear(enc.hidden_size, enc.hidden_size)
        self.act = ACT2FN[enc.hidden_act]
        self.layer_norm = nn.LayerNorm(enc.hidden_size, eps=enc.layer_norm_eps)
        self.decoder = nn.Linear(enc.hidden_size, enc.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(x))))

    @torch.no_grad()
    def copy_from_masked_lm(self, masked_lm: PreTrainedModel) -> None:
        if hasattr(masked_lm, "lm_head"):  # XLM-R / RoBERTa
            head = masked_lm.lm_head
            dense, norm, decoder, bias = head.dense, head.layer_norm, head.decoder, head.bias
        else:  # BERT
            head = masked_lm.cls.predictions
            dense, norm = head.transform.dense, head.transform.LayerNorm
            decoder, bias = head.decoder, head.bias
        _copy_weights((self.dense, dense), (self.layer_norm, norm))
        self.decoder.weight.copy_(decoder.weight)
        self.decoder.bias.copy_(bias)


class SWCMPreTrainedModel(PreTrainedModel):
    config_class = SWCMConfig
    base_model_prefix = "swcm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CustomDecoderLayer", "NormalDecoderLayer", "XLMRobertaLayer", "RobertaLayer", "BertLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class SWCMForConditionalGeneration(SWCMPreTrainedModel, GenerationMixin):
    """Encoder-decoder whose decoder is built from the encoder's own layers (XLM-SWCM)."""

    # {tied parameter: its source}, the form transformers 5 reads (4.x iterates the keys). Tying
    # happens only with lm_head="tied" (config.tie_word_embeddings), where lm_head is a Linear.
    _tied_weights_keys = {"lm_head.weight": "encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: SWCMConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder, add_pooling_layer=False)
        self.decoder = SWCMDecoder(config)
        if config.lm_head == "mlm":
            self.lm_head = MLMHead(config)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        # RoBERTa-family positions start after the padding index; BERT's start at 0.
        padding_idx = getattr(self.encoder.embeddings, "padding_idx", None)
        self.position_offset = padding_idx + 1 if padding_idx is not None else 0
        self.post_init()
        # transformers' default max_length (20 tokens) would cut plain generate() and pipeline()
        # short; the real limit is the decoder's position table.
        if self.generation_config is not None and self.generation_config.max_length == GenerationConfig().max_length:
            self.generation_config.max_length = self.max_target_positions

    @property
    def max_target_positions(self) -> int:
        """Decoder positions the (shared) position table holds: the start token and at most
        this many − 1 generated or target tokens."""
        return self.config.encoder.max_position_embeddings - self.position_offset

    # --- building from an encoder -------------------------------------------------------

    @classmethod
    def from_encoder(
        cls,
        encoder: str | os.PathLike | PreTrainedModel,
        insert_every: int = 3,
        variant: str = "ws",
        lm_head: str = "auto",
        dropout: float | None = None,
        encoder_layers: int | None = None,
    ) -> "SWCMForConditionalGeneration":
        """Build an SWCM model from a pretrained encoder (a local directory, hub id or model).

        The encoder's weights are loaded unchanged (as fp32, whatever dtype they are stored in:
        the model is built in fp32); every Custom layer is copied from its source encoder layer
        (not for `variant="random"`); Normal layers are random.
        `lm_head`: "auto" copies the checkpoint's masked-LM head where it has one and ties the
        head to the word embeddings where it has none (what measured best for `ws`,
        docs/ws-on-e5.md); "untied" is the paper's random head; "tied"; "mlm" copies the
        masked-LM head and fails with a one-line error when the checkpoint has none. The
        model's config holds the head chosen. `encoder_layers` keeps only the encoder's first N
        layers (None: all), before the decoder is planned. `dropout` replaces the encoder
        config's hidden and attention dropout for the whole model (None: keep the encoder's).
        """
        if lm_head not in (*LM_HEADS, "auto"):
            raise ValueError(f"unknown lm_head {lm_head!r}; expected one of auto, {', '.join(LM_HEADS)}")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        masked_lm = None
        if isinstance(encoder, PreTrainedModel):
            where = type(encoder).__name__
            check_encoder_config(encoder.config, where)
            if hasattr(encoder, "lm_head") or hasattr(encoder, "cls"):
                masked_lm, encoder = encoder, encoder.base_model
            encoder_model = encoder
        else:
            where = str(encoder)
            check_encoder_config(AutoConfig.from_pretrained(encoder), where)
            if lm_head in ("mlm", "auto"):
                masked_lm, info = AutoModelForMaskedLM.from_pretrained(encoder, output_loading_info=True)
                encoder_model = masked_lm.base_model
                if any(k.startswith(("lm_head", "cls.")) for k in info["missing_keys"]):
                    masked_lm = None  # a head made up by transformers, not the checkpoint's
            else:
                encoder_model = AutoModel.from_pretrained(encoder, add_pooling_layer=False)
        if lm_head == "mlm" and masked_lm is None:
            raise ValueError(f"{where}: lm_head='mlm' needs a masked-LM head, but the checkpoint has none")
        if lm_head == "auto":
            lm_head = "mlm" if masked_lm is not None else "tied"

        encoder_config = encoder_model.config.to_dict()
        # Built in fp32 whatever the encoder is stored in: these are the weights training updates
        # (the copies below convert). The encoder's part of the config keeps no dtype of its own,
        # which would override the model's: the whole model loads in the dtype asked for.
        encoder_config.pop("dtype", None)
        state = {k: v for k, v in encoder_model.state_dict().items() if not k.startswith("pooler.")}
        if encoder_layers is not None:
            state = first_layers_state(state, encoder_layers, encoder_config["num_hidden_layers"], where)
            encoder_config["num_hidden_layers"] = encoder_layers
        if dropout is not None:
            encoder_config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        config = SWCMConfig(encoder=encoder_config, insert_every=insert_every, variant=variant, lm_head=lm_head)
        model = cls(config)
        model.encoder.load_state_dict(state)
        for layer, source in zip(model.decoder.layers, config.decoder_layer_sources):
            if source is not None:
                layer.copy_from_encoder_layer(encoder_model.encoder.layer[source])
        if lm_head == "mlm":
            model.lm_head.copy_from_masked_lm(masked_lm)
        model.tie_weights()
        return model

    # --- Hugging Face plumbing -----------------------------------------------------------

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder if isinstance(self.lm_head, MLMHead) else self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        if isinstance(self.lm_head, MLMHead):
            self.lm_head.decoder = value
        else:
            self.lm_head = value

    def get_encoder(self) -> PreTrainedModel:
        return self.encoder

    def get_decoder(self) -> SWCMDecoder:
        return self.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    # --- forward -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | tuple | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        skip_logits: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Standard seq2seq forward. `labels` (−100 = ignored) give the mean cross-entropy
        loss and, when `decoder_input_ids` is absent, are shifted right behind
        `decoder_start_token_id` to make it. Two loss keywords: `label_smoothing` (ε, default 0)
        and `num_items_in_batch` (passed by transformers' Trainer), which makes the loss the token
        sum divided by it instead of the mean; neither is a named parameter, since the Trainer
        takes every parameter whose name holds "label" for a label column. `cache` is
        transformers 5's name for `past_key_values` (generate() passes it so).

        With labels the head runs on the labelled positions for the loss; `skip_logits=True`
        (Liger-Kernel's name, which transformers' Trainer passes too) leaves out the other
        positions and the B×T×V logits (`logits` is then None), as a training step that reads
        only the loss wants. By default logits are returned, except in transformers' Trainer's
        training step (training mode and `num_items_in_batch` given), which reads only the loss."""
        if cache is not None:
            past_key_values = cache
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        encoder_hidden_states = encoder_outputs.last_hidden_state

        if use_cache is None:
            use_cache = self.config.use_cache and labels is None and not self.training
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        elif isinstance(past_key_values, tuple):
            past_key_values = EncoderDecoderCache.from_legacy_cache(past_key_values)
        if not use_cache:
            past_key_values = None
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past + decoder_input_ids.shape[1] > self.max_target_positions:  # host ints: no device sync
            raise ValueError(
                f"decoder length {past + decoder_input_ids.shape[1]} exceeds the position table "
                f"({self.max_target_positions}); shorten the targets or max_new_tokens"
            )
        if cache_position is None:
            cache_position = torch.arange(past, past + decoder_input_ids.shape[1], device=decoder_input_ids.device)

        # The decoder reads tokens through the encoder's own embedding module.
        position_ids = (cache_position + self.position_offset).unsqueeze(0).expand(decoder_input_ids.shape[0], -1)
        hidden_states = self.encoder.embeddings(input_ids=decoder_input_ids, position_ids=position_ids)
        hidden_states = self.decoder(
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            decoder_attention_mask,
            past_key_values,
            cache_position,
        )
        num_items_in_batch = kwargs.get("num_items_in_batch")
        if skip_logits is None:
            skip_logits = self.training and num_items_in_batch is not None
        loss = None
        if labels is None:
            logits = None if skip_logits else self.lm_head(hidden_states)
        else:
            labelled = labels != -100
            positions = labelled.nonzero(as_tuple=True)  # N of them: the loss's one host-device sync
            rows = self.lm_head(hidden_states[positions])  # the labelled positions' logits, N × V
            # transformers' Trainer under gradient accumulation normalises by the target tokens
            # of the whole optimizer step, not by this micro-batch's.
            loss = token_cross_entropy(rows, labels[positions], kwargs.get("label_smoothing", 0.0)) / (
                num_items_in_batch if num_items_in_batch is not None else rows.shape[0]
            )
            logits = None
            if not skip_logits:  # built from the same rows: the loss has the same bits either way
                rest = (~labelled).nonzero(as_tuple=True)
                logits = rows.new_empty(*labels.shape, rows.shape[-1])
                logits = logits.index_put(positions, rows).index_put(rest, self.lm_head(hidden_states[rest]))
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            encoder_last_hidden_state=encoder_hidden_states,
            **{_CACHE_FIELD: past_key_values},
        )


# The output field holding the cache: `cache` in transformers 5 (which warns on the old name),
# `past_key_values` in 4.x.
_CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())
