"""Language-balanced sampling: the formula, and empirical frequencies of the objective sampler."""

from collections import Counter

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from swcm.data.batching import DataCursor
from swcm.data.sampling import LanguageBalanced, ObjectiveSampler, balanced_epoch, language_sampling_probs, stratified_sample

# data sizes shaped like the paper's: Chinese far ahead of the minority languages
COUNTS = {"zh": 1_000_000, "bo": 60_000, "ug": 30_000, "kk": 10_000, "mn": 2_000}


def test_probs_follow_the_formula():
    total = sum(COUNTS.values())
    expected = {k: (n / total) ** 0.3 for k, n in COUNTS.items()}
    norm = sum(expected.values())
    probs = language_sampling_probs(COUNTS, alpha=0.3)
    assert list(probs) == list(COUNTS)
    for lang in COUNTS:
        assert probs[lang] == pytest.approx(expected[lang] / norm, rel=1e-12)
    assert sum(probs.values()) == pytest.approx(1.0)
    # α < 1 moves mass from the big language to the small ones
    assert probs["zh"] < COUNTS["zh"] / total and probs["mn"] > COUNTS["mn"] / total


def test_alpha_extremes_and_empty_languages():
    assert language_sampling_probs({"a": 3, "b": 1}, alpha=1.0) == pytest.approx({"a": 0.75, "b": 0.25})
    assert language_sampling_probs({"a": 3, "b": 1}, alpha=0.0) == pytest.approx({"a": 0.5, "b": 0.5})
    assert language_sampling_probs({"a": 3, "b": 0}, alpha=0.3) == {"a": 1.0, "b": 0.0}
    small = [language_sampling_probs(COUNTS, alpha)["mn"] for alpha in (1.0, 0.7, 0.3, 0.0)]
    assert small == sorted(small)
    with pytest.raises(ValueError):
        language_sampling_probs({"a": 0})
    with pytest.raises(ValueError):
        language_sampling_probs({"a": 1}, alpha=-1)


def assert_frequencies(draws, expected):
    """Each frequency within 4.5 binomial standard deviations of its probability (and nothing else drawn)."""
    n = len(draws)
    seen = Counter(draws)
    assert set(seen) <= {k for k, p in expected.items() if p > 0}
    for key, p in expected.items():
        assert abs(seen[key] / n - p) <= 4.5 * np.sqrt(p * (1 - p) / n), (key, seen[key] / n, p)


def test_sampler_frequencies_match_the_formula():
    mt_counts = {("bo", "zh"): 2000, ("ug", "zh"): 2000, ("kk", "zh"): 500}
    sampler = ObjectiveSampler({"dae": COUNTS, "mt": mt_counts}, {"dae": 0.8, "mt": 0.2}, alpha=0.3)
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(40_000)]
    dae, mt = language_sampling_probs(COUNTS, 0.3), language_sampling_probs(mt_counts, 0.3)
    expected = {**{("dae", k): 0.8 * p for k, p in dae.items()}, **{("mt", k): 0.2 * p for k, p in mt.items()}}
    assert sampler.probs == pytest.approx(expected)
    assert_frequencies(draws, expected)
    assert Counter(o for o, _ in draws)["mt"] / len(draws) == pytest.approx(0.2, abs=0.01)


def test_sampler_skips_what_has_no_data():
    # no parallel data: everything is DAE; a language with no text is never drawn
    sampler = ObjectiveSampler({"dae": {"zh": 50, "bo": 0, "kk": 5}, "mt": {}}, {"dae": 0.5, "mt": 0.5}, alpha=0.5)
    rng = np.random.default_rng(1)
    draws = [sampler.draw(rng) for _ in range(20_000)]
    p = language_sampling_probs({"zh": 50, "kk": 5}, 0.5)
    assert_frequencies(draws, {("dae", "zh"): p["zh"], ("dae", "kk"): p["kk"]})
    with pytest.raises(ValueError):
        ObjectiveSampler({"dae": {}, "mt": {("bo", "zh"): 3}}, {"dae": 1.0, "mt": 0.0})


def test_sampler_is_deterministic_for_a_seed():
    sampler = ObjectiveSampler({"dae": COUNTS}, {"dae": 1.0})
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    assert [sampler.draw(rng1) for _ in range(200)] == [sampler.draw(rng2) for _ in range(200)]


# --- stratified subsets (validation's max_valid_examples, Figure 4's train_size) -------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["zh", "bo", "ug", "kk", "mn"]), max_size=60), st.integers(0, 70), st.integers(0, 2**32))
def test_stratified_sample_keeps_each_language_share(langs, n, seed):
    records = list(enumerate(langs))
    sample = stratified_sample(records, n, seed, key=lambda r: r[1])
    assert sample == stratified_sample(records, n, seed, key=lambda r: r[1])  # the seed decides
    assert len(sample) == min(n, len(records))
    assert sample == sorted(set(sample))  # distinct records, in file order
    total, drawn = Counter(langs), Counter(lang for _, lang in sample)
    for lang, count in total.items():  # each language within one record of its exact share
        assert abs(drawn[lang] - len(sample) * count / len(records)) < 1


def test_stratified_sample_of_a_file_sorted_by_language_is_not_its_head():
    records = [(i, lang) for lang in ("zh", "bo", "ug") for i in range(100)]  # sorted by language
    sample = stratified_sample(records, 30, seed=0, key=lambda r: r[1])
    assert Counter(lang for _, lang in sample) == {"zh": 10, "bo": 10, "ug": 10}
    assert sample != records[:30] and {i for i, _ in sample} != set(range(10))
    assert stratified_sample(records, 30, seed=1, key=lambda r: r[1]) != sample
    assert stratified_sample(records, None, seed=0, key=lambda r: r[1]) == records


# A fine-tuning set shaped like the demo's: one language far ahead, one far behind.
LANG_OF = ["kk"] * 145 + ["ug"] * 65 + ["dz"] * 44


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_balanced_epoch_gives_each_language_its_quota(alpha):
    order = balanced_epoch(LANG_OF, alpha, seed=1)
    assert len(order) == len(LANG_OF) and all(0 <= i < len(LANG_OF) for i in order)
    got = Counter(LANG_OF[i] for i in order)
    probs = language_sampling_probs(Counter(LANG_OF), alpha)
    for lang, p in probs.items():
        assert abs(got[lang] - p * len(LANG_OF)) < 1  # whole numbers by largest remainder
    if alpha == 1.0:
        assert sorted(order) == list(range(len(LANG_OF)))  # every record once
    if alpha == 0.0:
        assert got == {"kk": 85, "ug": 85, "dz": 84}


def test_balanced_epoch_repeats_an_upsampled_language_evenly_and_varies_with_the_seed():
    order = balanced_epoch(LANG_OF, 0.0, seed=2)
    uses = Counter(i for i in order if LANG_OF[i] == "dz")
    assert set(uses.values()) <= {1, 2} and len(uses) == 44  # 84 of 44 records: each once, 40 twice
    kept = {i for i in order if LANG_OF[i] == "kk"}
    assert len(kept) == 85  # a down-sampled language: no repeats, a part left out...
    assert balanced_epoch(LANG_OF, 0.0, seed=2) == order
    assert {i for i in balanced_epoch(LANG_OF, 0.0, seed=3) if LANG_OF[i] == "kk"} != kept  # ...another one each epoch


def test_a_cursor_reads_balanced_epochs_and_resumes_inside_one():
    examples = [{"input_ids": [5] * (3 + i % 7), "labels": [6] * (2 + i % 5)} for i in range(len(LANG_OF))]
    data = LanguageBalanced(examples, LANG_OF, alpha=0.0)
    cursor = DataCursor(data, seed=4, shuffle=True, group_by_length=True, max_tokens=40)
    keys = cursor.keys(8)
    first_epoch, epoch = [], 0
    while cursor.epoch == epoch:
        batch = next(keys)
        if cursor.epoch != epoch:
            break
        first_epoch.append(batch)
        if len(first_epoch) == 5:
            state = cursor.state_dict()
    read = Counter(LANG_OF[i] for batch in first_epoch for i in batch)
    assert read == {"kk": 85, "ug": 85, "dz": 84}
    resumed = DataCursor(data, seed=4, shuffle=True, group_by_length=True, max_tokens=40)
    resumed.load_state_dict(state)
    rest = resumed.keys(8)
    assert [next(rest) for _ in range(len(first_epoch) - 5)] == first_epoch[5:]
    with pytest.raises(ValueError, match="3 examples but 2 languages"):
        LanguageBalanced(examples[:3], ["kk", "ug"], 0.5)
