"""Data for pretraining and fine-tuning: readers with validation, DAE noise, language-balanced
sampling, the pretraining example stream and task formats. Batches are padded by transformers'
`DataCollatorForSeq2Seq` (labels padded with −100)."""

from .examples import ExampleEncoder, pair_separator
from .noise import (
    NoiseConfig, add_noise, protected_ids, sentence_end_ids, sentence_permutation, text_infilling, token_deletion,
)
from .pretraining import PretrainingStream
from .readers import (
    BadRecord, Problems, Source, TextPair, parse_source_spec, read_records, read_task, read_task_records, streaming_dataset,
)
from .sampling import ObjectiveSampler, language_sampling_probs

__all__ = [
    "BadRecord", "ExampleEncoder", "NoiseConfig", "ObjectiveSampler", "PretrainingStream", "Problems",
    "Source", "TextPair", "add_noise", "language_sampling_probs", "pair_separator",
    "parse_source_spec", "protected_ids", "read_records", "read_task", "read_task_records", "sentence_end_ids",
    "sentence_permutation", "streaming_dataset", "text_infilling", "token_deletion",
]
