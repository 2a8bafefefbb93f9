"""Data for pretraining and fine-tuning: readers with validation, DAE noise, language-balanced
sampling, the pretraining example stream and task formats; batching with an exact, resumable
position (`batching`). Batches are padded by transformers' `DataCollatorForSeq2Seq` (labels
padded with −100)."""

from .batching import DataCursor, RankBatchSampler, batch_loader
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
    "BadRecord", "DataCursor", "ExampleEncoder", "NoiseConfig", "ObjectiveSampler", "PretrainingStream", "Problems",
    "RankBatchSampler", "Source", "TextPair", "add_noise", "batch_loader", "language_sampling_probs", "pair_separator",
    "parse_source_spec", "protected_ids", "read_records", "read_task", "read_task_records", "sentence_end_ids",
    "sentence_permutation", "streaming_dataset", "text_infilling", "token_deletion",
]
