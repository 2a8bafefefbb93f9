"""`swcm build`: an SWCM model directory from an encoder, or a dry-run report of its size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from .configuration import SWCMConfig, check_encoder_config
from .diagnostics import hidden_state_similarity, sample_pairs
from .io import read_json_object, save_model_dir
from .modeling import SWCMForConditionalGeneration, count_parameters
from .tokenization import add_language_tags


def load_encoder_config(path: str | os.PathLike) -> PretrainedConfig:
    """An encoder config from a config.json file or a model directory, validated."""
    path = Path(path)
    if path.is_dir():
        config = AutoConfig.from_pretrained(path)
    else:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        data = read_json_object(path)
        if "model_type" not in data:
            raise ValueError(f"{path}:1: missing field \"model_type\" (an encoder config.json is expected)")
        # Validate the type before transformers tries to interpret the rest.
        check_encoder_config(SimpleNamespace(model_type=data["model_type"]), str(path))
        config = AutoConfig.for_model(data.pop("model_type"), **data)
    check_encoder_config(config, str(path))
    return config


def dry_run_report(encoder_config: PretrainedConfig, insert_every: int = 3, variant: str = "ws", lm_head: str = "untied") -> dict:
    """Build on the meta device (nothing allocated) and report the plan and parameter counts."""
    config = SWCMConfig(encoder=encoder_config.to_dict(), insert_every=insert_every, variant=variant, lm_head=lm_head)
    with torch.device("meta"):
        model = SWCMForConditionalGeneration(config)
    return _report(model)


def _report(model: SWCMForConditionalGeneration) -> dict:
    return {
        "layers": list(model.config.decoder_layer_types),
        "parameters": count_parameters(model),
        "decoder_parameters": count_parameters(model.decoder),
    }


def fill_special_tokens(model: SWCMForConditionalGeneration, tokenizer) -> None:
    """Take the special ids the encoder's config lacks from its tokenizer, in place.

    BERT-layout configs have no bos/eos ids, which left the decoder without a start token:
    the decoder starts from the tokenizer's BOS or, for BERT tokenizers, its [CLS]; ends at its
    EOS or [SEP]; pads with its pad token."""
    fallbacks = {
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for name, value in fallbacks.items():
        if getattr(model.config, name) is None and value is not None:
            setattr(model.config, name, value)
            setattr(model.generation_config, name, value)
    if model.config.decoder_start_token_id is None:
        model.config.decoder_start_token_id = model.generation_config.decoder_start_token_id = model.config.bos_token_id


def build_model_dir(
    encoder: str | os.PathLike,
    out_dir: str | os.PathLike,
    insert_every: int = 3,
    variant: str = "ws",
    lm_head: str = "untied",
    langs: list[str] | None = None,
    dropout: float | None = None,
) -> dict:
    """Build from `encoder`, add language tags for `langs`, save model + tokenizer to `out_dir`.

    The report holds the plan, parameter counts and, under "hidden_state_similarity", the
    collapse diagnostic per layer on UDHR sample text (`swcm.diagnostics`)."""
    model = SWCMForConditionalGeneration.from_encoder(encoder, insert_every, variant, lm_head, dropout)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    # Inputs longer than the position table cannot be encoded: make truncation default to it.
    max_positions = model.config.encoder.max_position_embeddings - model.position_offset
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_positions)
    fill_special_tokens(model, tokenizer)
    if langs:
        add_language_tags(model, tokenizer, langs)
    save_model_dir(model, tokenizer, out_dir)
    return {**_report(model), "hidden_state_similarity": hidden_state_similarity(model, tokenizer, sample_pairs())}
