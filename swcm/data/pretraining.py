"""The pretraining example stream: DAE on monolingual text and MT on parallel pairs, mixed.

Each example starts with a draw of (objective, language) from `ObjectiveSampler`: the
objective by the DAE / MT mix, the language by p_i ∝ q_i^α, q_i its share of that objective's
tokens (records are counted in tokens of the model's tokenizer, both sides of a pair). Then:

- DAE, language L: the next chunk of L's next document (documents longer than the maximum
  length are cut into chunks, at a sentence end when one is near) → input = the chunk noised
  by `add_noise`, labels = [tag(L)] + the chunk + </s>. The noise has a seed of its own, drawn
  with the example: the stream hands out drafts (`drafts()`), the chunk still clean, and
  `finish` (a `DaeNoise`) noises them, in a `DataLoader` worker when training has workers.
- MT, language pair {A, B}: each pair read gives two examples, on consecutive draws of the
  pair: A → B (labels start with tag(B)), then B → A (tag(A)). With zh–x pairs these are the
  paper's zh→x and x→zh directions.

Every (objective, language) stream reads its own files lazily (`swcm.data.readers.RecordStream`),
so corpora of many GB are fine, and restarts (a new epoch) when exhausted. Ranks read disjoint
records (every world_size-th record of a stream, never whole files, so each rank sees every
file in its proportion). `state_dict()` captures every stream's position (file, byte offset),
the chunks and reverse directions still pending, and the random generator, so that a stream
restored with `load_state_dict()` yields exactly the examples the original would have yielded
next, seeking to its position without reading the corpus before it. The state holds only plain
Python values (it loads with `torch.load(weights_only=True)`) and stays small: pending
documents are kept as text, their token ids are recomputed on restore.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Collection, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .census_cache import census_key, read_census, write_census
from .examples import ExampleEncoder, special_tokens_around
from .noise import NoiseConfig, add_noise, protected_ids, sentence_end_ids
from .readers import Problems, RecordStream, Source, census, parse_source_spec
from .sampling import ObjectiveSampler


class _RecordStream:
    """One (objective, language) stream: records from a `RecordStream`, cycling forever.

    `pending` holds records already read but not yet used up (DAE documents whose chunks are
    still to come, from chunk number `chunk` of the first; the reverse MT direction); it is part
    of the position. `cache` holds their tokenised chunks: derived data, recomputed after a
    restore, so that the position stays small and cheap to copy after every batch.
    """

    def __init__(self, records: RecordStream, name: str):
        self.records, self.name = records, name
        self._start = records.state_dict()  # the position at the start of an epoch
        self._position = self._start  # where a new iterator starts
        self._iterator: Iterator[dict] | None = None
        self.epoch, self.read = 0, 0
        self.pending: list = []
        self.chunk = 0
        self.cache: list[list[list[int]]] = []

    def next_record(self) -> dict:
        while True:
            if self._iterator is None:
                self.records.load_state_dict(self._position)
                self._iterator = iter(self.records)
            try:
                record = next(self._iterator)
            except StopIteration:
                if self.read == 0:
                    raise ValueError(f"{self.name}: no records to read on this rank") from None
                self.epoch, self.read, self._position, self._iterator = self.epoch + 1, 0, self._start, None
                continue
            self.read += 1
            return record

    def state_dict(self) -> dict:
        position = self._position if self._iterator is None else self.records.state_dict()
        return {"data": copy.deepcopy(position), "epoch": self.epoch, "read": self.read,
                "pending": copy.deepcopy(self.pending), "chunk": self.chunk}

    def load_state_dict(self, state: dict) -> None:
        self._position, self._iterator = copy.deepcopy(state["data"]), None
        self.epoch, self.read = state["epoch"], state["read"]
        self.pending, self.chunk, self.cache = copy.deepcopy(state["pending"]), state["chunk"], []


# DAE documents are read and tokenised this many at a time: one batched call to a fast
# tokenizer encodes them in parallel (Rust threads), well ahead of the model.
_READ_AHEAD = 8
NOISE_SEED = "noise_seed"  # the key of a DAE draft's noise seed


class DaeNoise:
    """Finishes a stream's drafts: a DAE draft's source noised by `add_noise` with a generator
    of its own seed, so that a draft gives the same example wherever and whenever it is finished
    (any other example passes unchanged). Small and picklable, for `DataLoader` workers."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, noise: NoiseConfig, sentence_ends: dict[str, frozenset[int]],
                 max_source_ids: int):
        self.noise, self.sentence_ends, self.max_source_ids = noise, sentence_ends, max_source_ids
        self.mask_id, self.special_ids = tokenizer.mask_token_id, protected_ids(tokenizer)
        prefix, suffix = special_tokens_around(tokenizer)
        self.prefix, self.suffix = len(prefix), len(suffix)

    def __call__(self, draft: dict) -> dict[str, list[int]]:
        if NOISE_SEED not in draft:
            return draft
        ids, end = draft["input_ids"], len(draft["input_ids"]) - self.suffix
        noised = add_noise(
            ids[self.prefix : end], self.noise, np.random.default_rng(draft[NOISE_SEED]), mask_id=self.mask_id,
            sentence_end_ids=self.sentence_ends[draft["lang"]], special_ids=self.special_ids,
            max_length=self.max_source_ids,
        )
        return {"input_ids": [*ids[: self.prefix], *noised, *ids[end:]], "labels": draft["labels"]}


def _stream_name(objective: str, key: tuple[str, ...]) -> str:
    return f"{objective}:{'+'.join(key)}"


class PretrainingStream(torch.utils.data.IterableDataset):
    """An endless stream of pretraining examples `{"input_ids", "labels"}` (see the module doc).

    tokenizer: the model's tokenizer, with a language tag for every language of the data and a
        mask token. mono / parallel: sources as `Source`s or spec strings ("bo=bo.txt",
        "mono.jsonl", "zh-bo=pairs.tsv", "pairs.jsonl"; see `swcm.data.readers`).
    noise: the DAE noise. alpha: the language sampling exponent. mt_fraction: the share of MT
        examples (0 without parallel data, 1 without monolingual data).
    max_source_length / max_target_length: in tokens, special tokens included.
    seed: the sampling and noise seed (combined with `rank`). rank / world_size: this process's
        share of the data. langs: the allowed language codes (all when None).
    on_bad_record: "error" raises on the first bad record, "skip" drops bad records; all of
        them are counted once, up front, in `problems` (a `Problems`; report `problems.summary()`).
    census_cache: a file where the census below is kept and from which it is read back when
        the files and the tokenizer are unchanged (`swcm.data.census_cache`); None: not kept.

    Reading (and tokenising) every record once at construction (the census) gives the exact
    per-language token counts that the sampling needs (`counts`: {objective: {stream key:
    tokens}}) and surfaces bad records before training starts. After that, documents are
    read and tokenised a few at a time, as examples are drawn.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mono: Sequence[Source | str] = (),
        parallel: Sequence[Source | str] = (),
        *,
        noise: NoiseConfig | None = None,
        alpha: float = 0.3,
        mt_fraction: float = 0.1,
        max_source_length: int = 512,
        max_target_length: int = 512,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        langs: Collection[str] | None = None,
        on_bad_record: str = "error",
        census_cache: str | os.PathLike | None = None,
    ):
        if not 0.0 <= mt_fraction <= 1.0:
            raise ValueError(f"mt_fraction must be in [0, 1], got {mt_fraction}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.noise = noise or NoiseConfig()
        self.encoder = ExampleEncoder(tokenizer, max_source_length, max_target_length)
        if tokenizer.mask_token_id is None and self.noise.mask_ratio > 0:
            raise ValueError("the tokenizer has no mask token, which text infilling needs")
        # A DAE chunk is both the target and (noised) the source: it must fit either way.
        self.chunk_length = min(self.encoder.max_source_ids, self.encoder.max_target_ids)

        sources = {
            "dae": [s if isinstance(s, Source) else parse_source_spec(s, "mono", langs) for s in mono],
            "mt": [s if isinstance(s, Source) else parse_source_spec(s, "parallel", langs) for s in parallel],
        }
        for objective, kind in (("dae", "mono"), ("mt", "parallel")):
            wrong = [s.spec for s in sources[objective] if s.kind != kind]
            if wrong:
                raise ValueError(f"not {kind} sources: {', '.join(wrong)}")
        self.problems = Problems()
        # q_i counts tokens (both sides of a pair for MT), not records: documents differ in
        # length by orders of magnitude between corpora (MC2), and a language's share of the
        # data is its share of what the model reads.
        cache_key = census_key(sources, tokenizer, langs, on_bad_record) if census_cache is not None else None
        found = read_census(census_cache, cache_key, sources, self.problems) if census_cache is not None else None
        fresh = found is None
        if fresh:
            found = {o: census(s, langs=langs, on_bad_record=on_bad_record, problems=self.problems,
                               measure=self._token_counts) for o, s in sources.items()}
        self.counts = {o: {key: sum(files.values()) for key, files in f.items()} for o, f in found.items()}
        if not any(self.counts.values()):
            named = ", ".join(s.spec for s in sources["dae"] + sources["mt"])
            raise ValueError(f"no pretraining data in {named}: give monolingual and/or parallel sources with valid records")
        self.sampler = ObjectiveSampler(self.counts, {"dae": 1.0 - mt_fraction, "mt": mt_fraction}, alpha)

        missing = []
        for lang in sorted({lang for (_, key) in self.sampler.probs for lang in key}):
            try:
                self.encoder.tag_id(lang)
            except ValueError:
                missing.append(lang)
        if missing:
            raise ValueError(f"the tokenizer has no language tag for {', '.join(missing)}; "
                             "build the model with these languages (swcm build --langs)")

        self._sentence_ends = {
            key[0]: sentence_end_ids(tokenizer, key[0]) for (objective, key) in self.sampler.probs if objective == "dae"
        }
        self.finish = DaeNoise(tokenizer, self.noise, self._sentence_ends, self.encoder.max_source_ids)
        self._streams: dict[tuple[str, tuple[str, ...]], _RecordStream] = {}
        for objective, key in self.sampler.probs:
            records = RecordStream(list(found[objective][key]), langs=langs, on_bad_record=on_bad_record, key=key,
                                   rank=rank, world_size=world_size)
            self._streams[objective, key] = _RecordStream(records, _stream_name(objective, key))
        self._rng = np.random.default_rng([seed, rank])
        self.examples = 0  # produced so far
        if fresh and census_cache is not None:  # only now: a refused run leaves no file behind
            write_census(census_cache, cache_key, sources, found, self.problems)

    def _token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.encoder.token_ids(texts)]

    @property
    def probabilities(self) -> dict[str, float]:
        """The sampling probability of every stream, e.g. {"dae:bo": 0.31, "mt:bo+zh": 0.02}."""
        return {_stream_name(o, key): p for (o, key), p in self.sampler.probs.items()}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        return map(self.finish, self.drafts())

    def drafts(self) -> Iterator[dict]:
        """The examples to come, DAE sources not yet noised (`next_draft`); `finish` completes
        them, where batches are collated (in `DataLoader` workers, with `swcm.training`)."""
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("PretrainingStream keeps its position in the main process: read it there, "
                               "and finish its drafts in the workers (swcm.data.batching)")
        while True:
            yield self.next_draft()

    def next_example(self) -> dict[str, list[int]]:
        """Draw (objective, language) and produce that stream's next example."""
        return self.finish(self.next_draft())

    def next_draft(self) -> dict:
        """Draw (objective, language) and take that stream's next example, DAE noise still to
        apply: a DAE draft holds the clean source, its noise seed (drawn here, so the position
        decides it) and its language."""
        objective, key = self.sampler.draw(self._rng)
        stream = self._streams[objective, key]
        example = self._dae(stream, key[0]) if objective == "dae" else self._mt(stream)
        self.examples += 1
        return example

    def _dae(self, stream: _RecordStream, lang: str) -> dict[str, list[int]]:
        if not stream.pending:
            stream.pending, stream.chunk = [stream.next_record()["text"] for _ in range(_READ_AHEAD)], 0
        if not stream.cache:
            ends = self._sentence_ends[lang]
            stream.cache = [self._chunks(ids, ends) for ids in self.encoder.token_ids(stream.pending)]
        chunks = stream.cache[0]
        chunk = chunks[stream.chunk]
        stream.chunk += 1
        if stream.chunk == len(chunks):
            del stream.pending[0], stream.cache[0]
            stream.chunk = 0
        # The chunk fits both limits (`chunk_length`): as a source it is framed, never cut.
        draft = self.encoder.example(chunk, chunk, lang)
        return {**draft, NOISE_SEED: int(self._rng.integers(2**63)), "lang": lang}

    def _chunks(self, ids: list[int], ends: frozenset[int]) -> list[list[int]]:
        """Cut a document into pieces of at most `chunk_length` tokens, after a sentence end in
        the second half of the window when there is one (a hard cut otherwise)."""
        chunks, start, size = [], 0, self.chunk_length
        while len(ids) - start > size:
            cut = start + size
            for i in range(start + size - 1, start + size // 2 - 1, -1):
                if ids[i] in ends:
                    cut = i + 1
                    break
            chunks.append(ids[start:cut])
            start = cut
        chunks.append(ids[start:])
        return chunks

    def _mt(self, stream: _RecordStream) -> dict[str, list[int]]:
        if stream.pending:
            src, tgt, tgt_lang = stream.pending.pop()
        else:
            r = stream.next_record()
            src, tgt, tgt_lang = r["src"], r["tgt"], r["tgt_lang"]
            stream.pending = [[r["tgt"], r["src"], r["src_lang"]]]  # the reverse direction, next time
        return self.encoder.encode(src, tgt, tgt_lang)

    def state_dict(self) -> dict:
        """The position: every stream's data position and pending work, the RNG, the count."""
        return {
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "streams": {stream.name: stream.state_dict() for stream in self._streams.values()},
            "examples": self.examples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()` of a stream over the same data and settings."""
        names = {stream.name for stream in self._streams.values()}
        if set(state["streams"]) != names:
            raise ValueError(f"the saved data position is for streams {sorted(state['streams'])}, "
                             f"but this data has {sorted(names)}")
        for stream in self._streams.values():
            stream.load_state_dict(state["streams"][stream.name])
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.examples = state["examples"]
