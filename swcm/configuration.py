"""SWCMConfig: an XLM-R/RoBERTa/BERT encoder config plus the plan of the shared-weights decoder."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

# Encoders whose layers have the post-LayerNorm BERT layout the decoder is built from:
# encoder.layer[i].attention.self.{query,key,value}, attention.output.{dense,LayerNorm},
# intermediate.dense, output.{dense,LayerNorm}.
SUPPORTED_ENCODER_TYPES = ("xlm-roberta", "roberta", "bert", "camembert")
VARIANTS = ("ws", "random", "no-normal", "duplicate")
LM_HEADS = ("untied", "tied", "mlm")


def decoder_layer_plan(num_encoder_layers: int, insert_every: int = 3, variant: str = "ws") -> list[tuple[str, int | None]]:
    """The decoder's layers as (kind, source encoder layer) pairs, kind "custom" or "normal".

    For i in 0..L-1 a Custom layer built from encoder layer i is appended; after every
    `insert_every`-th one (but not after the last) one more layer is inserted: a random
    Normal layer (`ws`, `random`), nothing (`no-normal`), or a second Custom layer copied
    from the same encoder layer i (`duplicate`). `random` keeps the plan of `ws` but
    copies nothing, so every source is None.
    """
    if isinstance(insert_every, bool) or not isinstance(insert_every, int) or insert_every <= 0:
        raise ValueError(f"insert_every must be a positive integer, got {insert_every!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    copied = variant != "random"
    plan: list[tuple[str, int | None]] = []
    for i in range(num_encoder_layers):
        plan.append(("custom", i if copied else None))
        if (i + 1) % insert_every == 0 and i + 1 < num_encoder_layers:
            if variant == "duplicate":
                plan.append(("custom", i))
            elif variant != "no-normal":
                plan.append(("normal", None))
    return plan


def check_encoder_config(config: PretrainedConfig, where: str = "encoder") -> None:
    """Raise a one-line ValueError unless `config` describes a post-LN XLM-R/RoBERTa/BERT encoder."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ENCODER_TYPES:
        raise ValueError(
            f"{where}: found model_type {model_type!r}; swcm builds from encoders with the "
            f"XLM-R/RoBERTa/BERT layout ({', '.join(SUPPORTED_ENCODER_TYPES)})"
        )
    if getattr(config, "is_decoder", False):
        raise ValueError(f"{where}: found a decoder config (is_decoder=True); an encoder is needed")


class SWCMConfig(PretrainedConfig):
    """Configuration of an SWCM encoder-decoder.

    Args:
        encoder: the encoder's config (a PretrainedConfig or its dict, with `model_type`).
        insert_every: X, a Normal layer after every X Custom layers (paper default 3).
        variant: "ws" (the paper's model), "random", "no-normal" (BASE-A), "duplicate" (BASE-B).
        lm_head: "untied" (random Linear with bias, paper default), "tied" (weight shared with
            the word embeddings) or "mlm" (the encoder's MLM head, copied).
        decoder_layer_types / decoder_layer_sources: the plan; derived from the above when absent.
        language_tags: {language code: token id} of the language tags added to the vocabulary.
    """

    model_type = "swcm"
    sub_configs = {"encoder": AutoConfig}
    is_composition = False

    def __init__(
        self,
        encoder: PretrainedConfig | dict | None = None,
        insert_every: int = 3,
        variant: str = "ws",
        lm_head: str = "untied",
        decoder_layer_types: list[str] | None = None,
        decoder_layer_sources: list[int | None] | None = None,
        language_tags: dict[str, int] | None = None,
        **kwargs,
    ):
        if encoder is None:
            encoder = AutoConfig.for_model("xlm-roberta")
        elif isinstance(encoder, dict):
            encoder = dict(encoder)
            encoder = AutoConfig.for_model(encoder.pop("model_type", "xlm-roberta"), **encoder)
        check_encoder_config(encoder)
        if lm_head not in LM_HEADS:
            raise ValueError(f"unknown lm_head {lm_head!r}; expected one of {', '.join(LM_HEADS)}")
        self.encoder = encoder
        self.insert_every = insert_every
        self.variant = variant
        self.lm_head = lm_head
        if decoder_layer_types is None:
            plan = decoder_layer_plan(encoder.num_hidden_layers, insert_every, variant)
            decoder_layer_types = [kind for kind, _ in plan]
            decoder_layer_sources = [source for _, source in plan]
        self.decoder_layer_types = list(decoder_layer_types)
        self.decoder_layer_sources = list(decoder_layer_sources or [None] * len(decoder_layer_types))
        self.language_tags = dict(language_tags or {})
        # Special tokens follow the encoder's tokenizer; the decoder starts from <s> (BOS).
        kwargs.setdefault("pad_token_id", encoder.pad_token_id)
        kwargs.setdefault("bos_token_id", encoder.bos_token_id)
        kwargs.setdefault("eos_token_id", encoder.eos_token_id)
        kwargs.setdefault("decoder_start_token_id", kwargs["bos_token_id"])
        use_cache = kwargs.pop("use_cache", True)
        kwargs["is_encoder_decoder"] = True
        kwargs["tie_word_embeddings"] = lm_head == "tied"
        super().__init__(**kwargs)
        # Set after the base class: transformers 5 drops generation parameters (use_cache among
        # them) from the keyword arguments of a config, but the model reads it from here.
        self.use_cache = use_cache

    # The encoder's shape is the model's shape; one place holds it.
    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        self.encoder.vocab_size = value

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    @property
    def num_attention_heads(self) -> int:
        return self.encoder.num_attention_heads

    @property
    def num_hidden_layers(self) -> int:
        return len(self.decoder_layer_types)

    @property
    def initializer_range(self) -> float:
        return self.encoder.initializer_range

    def get_text_config(self, *args, **kwargs) -> "SWCMConfig":
        # The whole model is one text model; vocab resizing and tying act on this config.
        return self

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["encoder"] = self.encoder.to_dict()
        return out
