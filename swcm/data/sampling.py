"""Language-balanced sampling (XLM, XLM-R, mBART): pretraining's DAE / MT mixture, and epochs of
task records re-balanced across languages for fine-tuning."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def language_sampling_probs(counts: Mapping[Hashable, int], alpha: float = 0.3) -> dict:
    """Sampling probabilities p_i ∝ q_i^α, where q_i = n_i / Σ_j n_j is language i's share.

    `counts` maps a language (or any key, e.g. a language pair) to its amount of data
    (pretraining counts tokens; adaptation counts token windows).
    α = 1 samples in proportion to the data, α = 0 uniformly; α < 1 up-samples the
    low-resource languages. Keys with a count of 0 get probability 0. Returns {key: p_i}
    in the order of `counts`; ValueError when there is no data at all.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"counts must be >= 0, got {dict(counts)}")
    total = sum(counts.values())
    if total == 0:
        raise ValueError("no data to sample from: every count is 0")
    weights = {k: (n / total) ** alpha if n > 0 else 0.0 for k, n in counts.items()}
    norm = sum(weights.values())
    return {k: w / norm for k, w in weights.items()}


def stratified_sample(records: Sequence[T], n: int | None, seed: int, key: Callable[[T], Hashable]) -> list[T]:
    """`n` of `records` drawn at random with `seed`, each stratum (e.g. language, by `key`)
    keeping its share: stratum i gets n·n_i/N rounded by largest remainder (ties to the
    larger stratum, then the first met), its records drawn uniformly without replacement.

    The drawn records keep their order in `records`. All of them when `n` is None or at least
    len(records). The same records, seed and n give the same sample.
    """
    if n is None or n >= len(records):
        return list(records)
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    strata = _strata([key(record) for record in records])
    counts = _apportion({k: len(idx) / len(records) for k, idx in strata.items()}, n)
    rng = np.random.default_rng(seed)
    chosen = [i for k, idx in strata.items() for i in rng.choice(idx, size=counts[k], replace=False).tolist()]
    return [records[i] for i in sorted(chosen)]


def _strata(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """The positions of each key, keys in the order first met."""
    strata: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        strata.setdefault(k, []).append(i)
    return strata


def _apportion(shares: Mapping[Hashable, float], n: int) -> dict[Hashable, int]:
    """`n` split by `shares` (summing to 1) in whole numbers, by largest remainder (ties to the
    larger share, then the first met)."""
    quotas = {k: n * share for k, share in shares.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    by_remainder = sorted(shares, key=lambda k: (-(quotas[k] - counts[k]), -shares[k]))
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def balanced_epoch(keys: Sequence[Hashable], alpha: float, seed: int) -> list[int]:
    """One epoch of positions in `keys` (as many as there are keys), languages re-balanced:
    language i (`keys[j]` is item j's language) gets len(keys)·p_i of them, p_i ∝ q_i^α
    (`language_sampling_probs` over the items per language; whole numbers by largest
    remainder), drawn as successive random passes over its items, so an up-sampled language
    repeats each item before any twice and a down-sampled one leaves out a different part in
    every epoch (seed). α = 1 keeps every item once."""
    strata = _strata(keys)
    probs = language_sampling_probs({k: len(idx) for k, idx in strata.items()}, alpha)
    quotas = _apportion(probs, len(keys))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for k, idx in strata.items():
        passes = -(-quotas[k] // len(idx))
        order += [idx[i] for _ in range(passes) for i in rng.permutation(len(idx)).tolist()][: quotas[k]]
    return order


class LanguageBalanced(torch.utils.data.Dataset):
    """`examples` read in epochs re-balanced across languages (`balanced_epoch`): random access
    as the list itself, and `epoch_order(seed)`, the positions one epoch reads (in no
    particular order: the reader shuffles and groups them), which `swcm.data.batching.DataCursor`
    asks data for when it has it. `langs[i]` is example i's language."""

    def __init__(self, examples: Sequence[dict], langs: Sequence[Hashable], alpha: float):
        if len(examples) != len(langs):
            raise ValueError(f"{len(examples)} examples but {len(langs)} languages")
        self.examples, self.langs, self.alpha = examples, list(langs), alpha
        self.probs = language_sampling_probs(Counter(self.langs), alpha)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    def epoch_order(self, seed: int) -> list[int]:
        return balanced_epoch(self.langs, self.alpha, seed)


class ObjectiveSampler:
    """Draws (objective, language) pairs for pretraining.

    The objective is drawn by `objective_weights` (e.g. {"dae": 0.9, "mt": 0.1}), then the
    language within it by `language_sampling_probs(counts[objective], alpha)`. An objective
    with no data is never drawn (the weights of the others are renormalised); so is a language
    with no data for an objective. One uniform number from the generator per draw.
    """

    def __init__(self, counts: Mapping[str, Mapping[Hashable, int]], objective_weights: Mapping[str, float], alpha: float = 0.3):
        if any(w < 0 for w in objective_weights.values()):
            raise ValueError(f"objective weights must be >= 0, got {dict(objective_weights)}")
        unknown = set(objective_weights) - set(counts)
        if unknown:
            raise ValueError(f"objective weights for objectives without counts: {sorted(unknown)}")
        available = {o: w for o, w in objective_weights.items() if w > 0 and sum(counts[o].values()) > 0}
        if not available:
            raise ValueError("nothing to sample: no objective with a positive weight has data")
        norm = sum(available.values())
        self.probs: dict[tuple[str, Hashable], float] = {}
        for objective, weight in available.items():
            for key, p in language_sampling_probs(counts[objective], alpha).items():
                if p > 0:
                    self.probs[(objective, key)] = weight / norm * p
        self._keys = list(self.probs)
        self._cumulative = np.cumsum(list(self.probs.values())).tolist()

    def draw(self, rng: np.random.Generator) -> tuple[str, Hashable]:
        """One (objective, language) pair."""
        i = bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        return self._keys[min(i, len(self._keys) - 1)]
