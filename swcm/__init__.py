"""swcm: shared-weights encoder-decoders for low-resource text generation (XLM-SWCM)."""

__version__ = "0.1.0"
