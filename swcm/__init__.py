"""swcm: shared-weights encoder-decoders for low-resource text generation (XLM-SWCM).

Importing the package registers the model with the transformers Auto classes, so that
`AutoConfig`, `AutoModelForSeq2SeqLM` and (under transformers 4.x, which still has it)
`pipeline("text2text-generation")` resolve a saved SWCM directory.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration import SWCMConfig, decoder_layer_plan
from .modeling import CustomDecoderLayer, NormalDecoderLayer, SWCMForConditionalGeneration

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
