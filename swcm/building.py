"""`swcm build`: an SWCM model directory from an encoder, or a dry-run report of its size."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from .configuration import SWCMConfig, check_encoder_config
from .diagnostics import cut_advice, hidden_state_similarity, sample_pairs
from .io import read_json_object, save_model_dir
from .modeling import SWCMForConditionalGeneration, check_kept_layers, count_parameters
from .tokenization import add_language_tags


def load_encoder_config(path: str | os.PathLike) -> PretrainedConfig:
    """An encoder config from a config.json file or a model directory, validated."""
    if not Path(path).exists() and "/" in os.fspath(path) and not os.fspath(path).endswith(".json"):
        return AutoConfig.from_pretrained(path)  # a hub id, fetched when online
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


_MLM_HEAD_KEYS = ("lm_head.", "cls.")  # XLM-R / RoBERTa, BERT


def checkpoint_has_mlm_head(encoder: str | os.PathLike | None) -> bool:
    """Whether the encoder directory's weights hold a masked-LM head, read from the key names
    of its safetensors files (headers only) or PyTorch file (memory-mapped). False without a
    directory or weights: what `lm_head="auto"` resolves to "tied"."""
    if encoder is None or not Path(encoder).is_dir():
        return False
    folder = Path(encoder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        keys = list(read_json_object(index).get("weight_map", {}))
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(folder / "model.safetensors", framework="pt") as f:
            keys = list(f.keys())
    elif (folder / "pytorch_model.bin").is_file():
        keys = list(torch.load(folder / "pytorch_model.bin", map_location="meta", mmap=True, weights_only=True))
    else:
        return False
    return any(k.startswith(_MLM_HEAD_KEYS) for k in keys)


PAPER_INSERT_EVERY = 3


def choose_insert_every(num_layers: int, insert_every: int | None = None, variant: str = "ws") -> tuple[int, str | None]:
    """X for a decoder over `num_layers` kept encoder layers, and one line to print or None.

    Unset (`None`), X is the paper's 3, unless that would insert no Normal layer (3 layers or
    fewer, e.g. `--encoder-layers 3`): then X = layers - 1 (C C N C for 3), and the line says
    so. A given X that inserts no Normal layer is kept, with a warning line, except for the
    `no-normal` variant, which has none by design."""
    wants_normal = variant != "no-normal" and num_layers > 1
    if insert_every is None:
        if not wants_normal or num_layers > PAPER_INSERT_EVERY:
            return PAPER_INSERT_EVERY, None
        x = num_layers - 1
        return x, (f"--insert-every {x}: the paper's {PAPER_INSERT_EVERY} would insert no Normal layer into a decoder "
                   f"over {num_layers} encoder layers")
    if wants_normal and insert_every >= num_layers:
        return insert_every, (f"warning: --insert-every {insert_every} inserts no Normal layer over {num_layers} encoder "
                              f"layers (the decoder is Custom layers only, as BASE-A); --insert-every {num_layers - 1} "
                              "inserts one")
    return insert_every, None


def dry_run_report(encoder_config: PretrainedConfig, insert_every: int = 3, variant: str = "ws", lm_head: str = "auto",
                   encoder_layers: int | None = None, encoder: str | os.PathLike | None = None) -> dict:
    """Build on the meta device (nothing allocated) and report the plan, head and parameter
    counts. `lm_head="auto"` is resolved from the weights of the `encoder` directory when one
    is given (`checkpoint_has_mlm_head`), else as for a checkpoint without an MLM head."""
    encoder_dict = encoder_config.to_dict()
    if encoder_layers is not None:
        check_kept_layers(encoder_layers, encoder_dict["num_hidden_layers"], str(encoder or "encoder"))
        encoder_dict["num_hidden_layers"] = encoder_layers
    if lm_head == "auto":
        lm_head = "mlm" if checkpoint_has_mlm_head(encoder) else "tied"
    config = SWCMConfig(encoder=encoder_dict, insert_every=insert_every, variant=variant, lm_head=lm_head)
    with torch.device("meta"):
        model = SWCMForConditionalGeneration(config)
    return _report(model)


def _report(model: SWCMForConditionalGeneration) -> dict:
    return {
        "layers": list(model.config.decoder_layer_types),
        "encoder_layers": model.config.encoder.num_hidden_layers,
        "lm_head": model.config.lm_head,
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
    lm_head: str = "auto",
    langs: list[str] | None = None,
    dropout: float | None = None,
    encoder_layers: int | None = None,
) -> dict:
    """Build from `encoder` (its first `encoder_layers` layers; None: all), add language tags
    for `langs`, save model + tokenizer to `out_dir` (`SWCMForConditionalGeneration.from_encoder`).

    The report holds the plan, the head chosen, parameter counts, under
    "hidden_state_similarity" the collapse diagnostic per layer on UDHR sample text, and under
    "advice" a cut to suggest where the encoder's top layers are collapsed, else None
    (`swcm.diagnostics`)."""
    model = SWCMForConditionalGeneration.from_encoder(encoder, insert_every, variant, lm_head, dropout, encoder_layers)
    _, warning = choose_insert_every(model.config.encoder.num_hidden_layers, insert_every, variant)
    if warning:
        print(warning, file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    # Inputs longer than the position table cannot be encoded: make truncation default to it.
    max_positions = model.config.encoder.max_position_embeddings - model.position_offset
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_positions)
    fill_special_tokens(model, tokenizer)
    if langs:
        add_language_tags(model, tokenizer, langs)
    save_model_dir(model, tokenizer, out_dir)
    similarity = hidden_state_similarity(model, tokenizer, sample_pairs())
    return {**_report(model), "hidden_state_similarity": similarity, "advice": cut_advice(similarity["encoder"])}
