"""swcm: shared-weights encoder-decoders for low-resource text generation (XLM-SWCM).

Importing the package registers the model with the transformers Auto classes, so that
`AutoConfig`, `AutoModelForSeq2SeqLM` and (under transformers 4.x, which still has it)
`pipeline("text2text-generation")` resolve a saved SWCM directory.
"""

import os
import sys

# OpenMP threads that sleep when idle instead of spinning (libgomp spins ~300,000 rounds first by
# default). On a CPU shared with other processes the spinning threads take the cores that the
# busy thread needs, and every one of a step's parallel ops waits at its barrier for a thread the
# kernel has set aside: measured on a 2-core AMD EPYC at load 3-4, a bf16 training step ran
# 3-6x slower by medians with torch's 2 threads spinning than sleeping (benchmarks/train.py
# --omp-wait). libgomp reads the setting once, when torch loads it: only before the first
# `import torch`, and never over the user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT.
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM  # noqa: E402

from .configuration import SWCMConfig, decoder_layer_plan  # noqa: E402
from .modeling import CustomDecoderLayer, NormalDecoderLayer, SWCMForConditionalGeneration  # noqa: E402

__version__ = "0.1.0"

AutoConfig.register(SWCMConfig.model_type, SWCMConfig, exist_ok=True)
AutoModel.register(SWCMConfig, SWCMForConditionalGeneration, exist_ok=True)
AutoModelForSeq2SeqLM.register(SWCMConfig, SWCMForConditionalGeneration, exist_ok=True)

__all__ = [
    "SWCMConfig",
    "SWCMForConditionalGeneration",
    "CustomDecoderLayer",
    "NormalDecoderLayer",
    "decoder_layer_plan",
]
