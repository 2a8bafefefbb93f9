"""Keeping an encoder's bottom layers: a smaller encoder that `swcm build` takes.

Sentence encoders (e5, LaBSE) collapse token information in their top layers, and a decoder
built by weight sharing copies that collapse (`swcm build` prints the diagnostic). Their
bottom layers keep distinct token states, cost a fraction of the time, and on
multilingual-e5-small a 4-layer `ws` model learns faster than a 12-layer one (docs/ws-on-e5.md).
`swcm build --encoder-layers N` cuts in memory with the same `first_layers_state`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..io import atomic_directory
from ..modeling import first_layers_state

WEIGHTS_FILE = "model.safetensors"


def keep_bottom_layers(encoder: str | os.PathLike, layers: int, out_dir: str | os.PathLike) -> Path:
    """Write to `out_dir` a copy of the encoder directory `encoder` with only its first `layers`
    transformer layers (embeddings, tokenizer and any masked-LM head unchanged). Returns `out_dir`."""
    src, out = Path(encoder), Path(out_dir)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    total = config.get("num_hidden_layers")
    if not isinstance(total, int):
        raise ValueError(f"{src}/config.json: no num_hidden_layers")
    if not (src / WEIGHTS_FILE).is_file():
        raise ValueError(f"{src}: no {WEIGHTS_FILE}; keeping layers reads single-file safetensors checkpoints")
    kept = first_layers_state(load_file(src / WEIGHTS_FILE), layers, total, str(src))
    with atomic_directory(out) as tmp:
        for path in src.iterdir():
            if path.is_file() and path.name not in (WEIGHTS_FILE, "config.json"):
                shutil.copyfile(path, tmp / path.name)
        save_file(kept, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}, indent=2) + "\n", encoding="utf-8")
    return out
