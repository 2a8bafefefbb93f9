"""Batches for the training loop: which examples come next, in what groups, and where a resumed
run picks up; and the `DataLoader` that collates them off the training thread.

The position lives on the main process. `DataCursor` reads the data in global batches, epoch
after epoch, as lists of keys (indices into random-access data, or the examples of a stream
themselves); `RankBatchSampler` hands the `DataLoader` this rank's part of each, remembering the
position after every batch it gave out; workers only look the keys up (`KeyedExamples`: the
example at an index, or a stream's draft finished, e.g. the pretraining stream's DAE noise) and
collate. Batches arrive in the order they were sampled, so the position after the last batch
the loop took (`RankBatchSampler.consumed`) is exact however far the workers have read ahead.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import torch

GROUP_BATCHES = 50  # length grouping sorts this many batches' examples at a time
BUFFER_TOKENS_PER_EXAMPLE = 8  # a stream's token-budget buffer is sized for examples this long


def example_length(example: dict) -> int:
    """The length batches are grouped by: the longer of source and target (on the demo's
    zh → x data this leaves less padding than their sum)."""
    return max(len(example["input_ids"]), len(example.get("labels", ())))


class KeyedExamples(torch.utils.data.Dataset):
    """The examples behind a batch's keys: `examples[key]` for random-access data; for a stream
    the key is the example itself, finished by the stream's `finish` when it has one."""

    def __init__(self, examples: Iterable[dict], random_access: bool, finish: Callable[[dict], dict] | None = None):
        self.examples = examples if random_access else None
        self.finish = finish

    def __getitem__(self, key) -> dict:
        if self.examples is not None:
            return self.examples[key]
        return self.finish(key) if self.finish is not None else key


class DataCursor:
    """Reads `examples` in global batches, epoch after epoch, and resumes at an exact position.

    Random-access data (lists, `datasets.Dataset`) is read in a seeded order per epoch and
    positioned by (epoch, examples consumed). A stream with `state_dict`/`load_state_dict`
    (the pretraining stream, `datasets.IterableDataset`) is positioned by its own state,
    captured after each batch. Any other iterable is re-read and the consumed examples skipped.
    A one-shot iterator ends training when it is exhausted; re-iterable data starts a new
    epoch (calling `set_epoch` when the data has it). A stream with `drafts()` and `finish(draft)`
    (the pretraining stream) is read as drafts, which `finish` completes where the batch is
    collated (in a `DataLoader` worker, with `num_workers`).

    With `group_by_length`, batches hold examples of similar length, so little of a batch is
    padding: random-access data in the order of `_length_grouped_order` (mega-batches of
    `GROUP_BATCHES` batches sorted by length, the epoch's batches shuffled), streams through a
    buffer of `_buffer_size` examples cut by length and yielded in a seeded random order; the
    buffered batches not yet yielded are part of the position. With `max_tokens`, batches are
    cut by padded tokens rather than by count (`_cut_batches`); `size` then only sizes the
    mega-batches and buffers. Random-access data with `epoch_order(seed)` (e.g.
    `swcm.data.sampling.LanguageBalanced`) names the indices each epoch reads, repeats allowed;
    otherwise an epoch reads every index once.
    """

    def __init__(self, examples: Iterable[dict], seed: int, shuffle: bool, group_by_length: bool = False,
                 max_tokens: int | None = None):
        self.examples = examples
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.max_tokens = max_tokens
        self.lengths: list[int] | None = None
        self.pending: list[list] = []
        self.random_access = (
            hasattr(examples, "__len__") and hasattr(examples, "__getitem__")
            and not isinstance(examples, torch.utils.data.IterableDataset)
        )
        self.stateful = hasattr(examples, "state_dict") and hasattr(examples, "load_state_dict")
        finish = getattr(examples, "finish", None) if hasattr(examples, "drafts") else None
        self.lookup = KeyedExamples(examples, self.random_access, finish)
        self.epoch = 0
        self.consumed = 0
        self.stream_state = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "stream": self.stream_state, "pending": list(self.pending)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self.stream_state = state["epoch"], state["consumed"], state["stream"]
        self.pending = list(state.get("pending", []))

    def _epoch_batches(self, size: int) -> list[list[int]]:
        """Random-access data: this epoch's batches, as lists of indices, in reading order."""
        n = len(self.examples)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if (self.group_by_length or self.max_tokens) and self.lengths is None:
            self.lengths = [example_length(self.examples[i]) for i in range(n)]
        epoch_order = getattr(self.examples, "epoch_order", None)  # e.g. languages re-balanced
        order = epoch_order(self.seed + self.epoch) if epoch_order is not None else list(range(n))
        if self.shuffle and self.group_by_length:
            return _length_grouped_order(order, self.lengths, size, generator, self.max_tokens)
        if self.shuffle:
            order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
        return _cut_batches(order, self.lengths, size, self.max_tokens)

    def _buffer_size(self, size: int) -> int:
        """Examples a stream's length-grouping buffer reads: `GROUP_BATCHES` batches of `size`,
        or of a token budget filled by examples of `BUFFER_TOKENS_PER_EXAMPLE` tokens, if more."""
        return GROUP_BATCHES * max(size, (self.max_tokens or 0) // BUFFER_TOKENS_PER_EXAMPLE)

    def _stream(self) -> Iterator[dict]:
        if self.stateful and self.stream_state is not None:
            self.examples.load_state_dict(copy.deepcopy(self.stream_state))
            return self._read()
        return islice(self._read(), self.consumed, None)

    def _read(self) -> Iterator[dict]:
        return self.examples.drafts() if self.lookup.finish is not None else iter(self.examples)

    def keys(self, size: int) -> Iterator[list]:
        """Yield the keys (see `KeyedExamples`) of up to `size` examples at a time (with
        `max_tokens`: of up to that many padded positions); the last batch of an epoch may be
        shorter. `state_dict()` is, after each, the position after that batch."""
        one_shot = iter(self.examples) is self.examples
        buffered = bool(self.group_by_length or self.max_tokens) and not self.random_access
        while True:
            produced = False
            if hasattr(self.examples, "set_epoch"):
                self.examples.set_epoch(self.epoch)
            if self.random_access:
                seen = 0
                for indices in self._epoch_batches(size):
                    seen += len(indices)
                    if seen <= self.consumed:  # read before a resume
                        continue
                    produced = True
                    self.consumed = seen
                    yield indices
            else:
                stream = self._stream()
                while True:
                    while self.pending:  # the rest of a length-grouped buffer (also after a resume)
                        produced = True
                        yield self.pending.pop(0)
                    if not (batch := list(islice(stream, self._buffer_size(size) if buffered else size))):
                        break
                    produced = True
                    self.consumed += len(batch)
                    if self.stateful:
                        self.stream_state = copy.deepcopy(self.examples.state_dict())
                    if buffered:
                        self.pending = _buffered_batches(batch, size, self.seed + self.epoch + self.consumed,
                                                         self.group_by_length, self.max_tokens)
                    else:
                        yield batch
            if one_shot or (not produced and self.consumed == 0):  # empty data: no endless loop
                return
            self.epoch, self.consumed, self.stream_state = self.epoch + 1, 0, None

    def batches(self, size: int) -> Iterator[list[dict]]:
        """`keys(size)` as lists of examples."""
        for keys in self.keys(size):
            yield [self.lookup[key] for key in keys]


def _cut_batches(indices: list[int], lengths: list[int] | None, size: int, max_tokens: int | None) -> list[list[int]]:
    """`indices` cut, in order, into runs of `size`, or with `max_tokens` into the longest runs
    whose padded size (longest member × members) fits in `max_tokens` (one example at least)."""
    if not max_tokens:
        return [indices[i : i + size] for i in range(0, len(indices), size)]
    batches, current, longest = [], [], 0
    for i in indices:
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    return batches + [current] if current else batches


def _length_grouped_order(order: list[int], lengths: list[int], size: int, generator: torch.Generator,
                          max_tokens: int | None = None) -> list[list[int]]:
    """A seeded epoch of batches (lists of indices) of similar length: the indices of `order`
    (an epoch's indices into `lengths`) are shuffled, cut into mega-batches of `GROUP_BATCHES` batches (of `size` examples, or of the
    examples that `max_tokens` holds at the mean length, if more), each sorted by length and cut
    into batches (`_cut_batches`), and the batches of the whole epoch shuffled (as in
    fairseq), so that consecutive steps do not walk from long to short examples, as reading
    sorted mega-batches in order (transformers' grouping) does. The batch holding the longest
    example comes first (a batch too large for memory fails at once); a short last batch of a
    count-cut epoch stays last, so every other batch is full."""
    perm = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
    mega = size * GROUP_BATCHES
    if max_tokens and lengths:  # GROUP_BATCHES batches of the budget's size, whatever batch_size says
        mega = max(mega, GROUP_BATCHES * max_tokens * len(lengths) // sum(lengths))
    batches = []
    for start in range(0, len(perm), mega):
        batches += _cut_batches(sorted(perm[start : start + mega], key=lengths.__getitem__), lengths, size, max_tokens)
    last = [batches.pop()] if not max_tokens and batches and len(batches[-1]) < size else []
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches + last


def _buffered_batches(examples: list[dict], size: int, seed: int, group_by_length: bool,
                      max_tokens: int | None) -> list[list[dict]]:
    """A stream's buffer of `examples` (sorted by length when grouping) cut into batches
    (`_cut_batches`), in a random order (for `seed`)."""
    lengths = [example_length(e) for e in examples]
    order = sorted(range(len(examples)), key=lengths.__getitem__) if group_by_length else list(range(len(examples)))
    batches = _cut_batches(order, lengths, size, max_tokens)
    shuffled = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
    return [[examples[i] for i in batches[b]] for b in shuffled]


class RankBatchSampler(torch.utils.data.Sampler):
    """This rank's keys of each global batch of `cursor`, as a `DataLoader`'s batch sampler.

    Shared data (`world` ranks read the same examples): this rank's strided slice of each global
    batch of `size` (with the cursor's `max_tokens`: of that many positions); a short global batch
    at the end of an epoch is used when every rank gets at least one example, and skipped
    otherwise (all ranks see the same global batch, so they agree). Sharded data (each rank reads
    its own share; `world=1`): whole batches. The `DataLoader` samples ahead of the loop;
    `consumed()`, called for each batch the loop takes, moves `state_dict()` past it.
    """

    def __init__(self, cursor: DataCursor, size: int, world: int = 1, rank: int = 0):
        self.cursor, self.size, self.world, self.rank = cursor, size, world, rank
        self.position = cursor.state_dict()
        self._ahead: deque[dict] = deque()  # the position after each batch sampled and not yet consumed

    def __iter__(self) -> Iterator[list]:
        for keys in self.cursor.keys(self.size):
            if len(keys) < self.world:
                continue
            self._ahead.append(self.cursor.state_dict())
            yield keys[self.rank :: self.world]

    def consumed(self) -> None:
        """The loop took the oldest batch sampled: the position moves past it."""
        self.position = self._ahead.popleft()

    def state_dict(self) -> dict:
        return self.position

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state)
        self.position, self._ahead = self.cursor.state_dict(), deque()


def batch_loader(sampler: RankBatchSampler, collator: Callable[[list[dict]], dict], num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """A `DataLoader` over `sampler`'s batches: `num_workers` processes look the examples up and
    collate them (0: on the calling thread, one batch at a time), two batches ahead per worker,
    into pinned memory with `pin_memory` (for non-blocking copies to a GPU). Its seeds come from
    a generator of its own (`seed`), so that it leaves the global RNG, part of every checkpoint,
    untouched."""
    return torch.utils.data.DataLoader(
        sampler.cursor.lookup, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers,
        pin_memory=pin_memory, prefetch_factor=2 if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
