"""DAE noise: property tests on synthetic id sequences, then checks on real tokenised UDHR text."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from swcm.data.noise import (
    NoiseConfig, add_noise, sentence_end_chars, sentence_end_ids, sentence_permutation, text_infilling, token_deletion,
    truncate,
)
from swcm.resources import udhr

BOS, PAD, EOS, MASK = 0, 1, 2, 3
SPECIAL = frozenset({BOS, PAD, EOS})
ENDS = frozenset({7, 8})  # sentence-end ids; content ids are unique and >= 100, so each is traceable


@st.composite
def documents(draw, min_tokens=0, max_tokens=300):
    """(ids, sentences): sentences of unique content ids, each closed by an end id (the last maybe not)."""
    n = draw(st.integers(min_tokens, max_tokens))
    content = list(range(100, 100 + n))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=12)))
    bounds = [0, *cuts, n]
    sentences = [content[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    closed = draw(st.booleans())
    sentences = [s + [draw(st.sampled_from(sorted(ENDS)))] if i < len(sentences) - 1 or closed else s
                 for i, s in enumerate(sentences)]
    return [t for s in sentences for t in s], sentences


def without_masks(ids):
    return [t for t in ids if t != MASK]


def is_subsequence(sub, seq):
    it = iter(seq)
    return all(t in it for t in sub)


@settings(max_examples=150, deadline=None)
@given(st.integers(200, 1000), st.floats(0.05, 0.9), st.floats(0.5, 8), st.integers(0, 2**32))
def test_text_infilling_covers_the_target_share_and_keeps_order(n, ratio, lam, seed):
    ids = list(range(100, 100 + n))
    out = text_infilling(ids, MASK, ratio, lam, np.random.default_rng(seed))
    kept = without_masks(out)
    assert len(ids) - len(kept) == round(len(ids) * ratio)  # exact coverage: |masked/n - ratio| <= 1/(2n)
    assert is_subsequence(kept, ids)
    # every masked stretch is replaced by at least one mask token, never left as a gap
    positions = [t - 100 for t in kept]
    gaps = sum(1 for a, b in zip([-1, *positions], [*positions, len(ids)]) if b - a > 1)
    assert out.count(MASK) >= gaps


@settings(max_examples=150, deadline=None)
@given(documents(max_tokens=200), st.floats(0, 1), st.floats(0.2, 6), st.integers(0, 2**32))
def test_special_tokens_are_never_masked(doc, ratio, lam, seed):
    ids, _ = doc
    rng = np.random.default_rng(seed)
    # specials at the ends and in the middle
    ids = [BOS, *ids[: len(ids) // 2], PAD, *ids[len(ids) // 2 :], EOS]
    out = text_infilling(ids, MASK, ratio, lam, rng, SPECIAL)
    assert [t for t in out if t in SPECIAL] == [BOS, PAD, EOS]
    assert out[0] == BOS and out[-1] == EOS
    content = [t for t in ids if t not in SPECIAL]
    assert len(content) - len([t for t in out if t not in SPECIAL and t != MASK]) == round(len(content) * ratio)


def test_zero_length_spans_insert_masks():
    # λ tiny: nearly every span is empty, so masks are inserted and almost nothing is removed
    ids = list(range(100, 400))
    out = text_infilling(ids, MASK, 0.2, 0.05, np.random.default_rng(0))
    assert len(without_masks(out)) == 240
    assert out.count(MASK) > 200  # ~60 tokens covered by short spans, hundreds of empty ones
    assert len(out) > len(ids)


def test_span_lengths_follow_the_poisson_mean():
    # 35 % of 2000 tokens in spans of mean 3.5: about 200 spans, so about 200 mask tokens
    rng = np.random.default_rng(0)
    masks = [text_infilling(list(range(100, 2100)), MASK, 0.35, 3.5, rng).count(MASK) for _ in range(20)]
    assert 180 < np.mean(masks) < 220
    masks_long = [text_infilling(list(range(100, 2100)), MASK, 0.35, 10.0, rng).count(MASK) for _ in range(20)]
    assert 60 < np.mean(masks_long) < 80


@settings(max_examples=150, deadline=None)
@given(documents(max_tokens=200), st.integers(0, 2**32))
def test_sentence_permutation_is_a_permutation_of_whole_sentences(doc, seed):
    ids, sentences = doc
    out = sentence_permutation([BOS, *ids, EOS], ENDS, np.random.default_rng(seed), SPECIAL)
    assert sorted(out) == sorted([BOS, *ids, EOS])
    assert out[0] == BOS and out[-1] == EOS
    # the output is the original sentences, each intact, in some order (each starts with a unique id)
    by_first = {sentence[0]: sentence for sentence in sentences}
    body, p, seen = out[1:-1], 0, []
    while p < len(body):
        sentence = by_first[body[p]]
        assert body[p : p + len(sentence)] == sentence
        seen.append(body[p])
        p += len(sentence)
    assert sorted(seen) == sorted(by_first)


def test_sentence_permutation_shuffles():
    sentences = [[100 + 10 * i, 101 + 10 * i, 7] for i in range(8)]
    ids = [t for s in sentences for t in s]
    outs = {tuple(sentence_permutation(ids, ENDS, np.random.default_rng(seed))) for seed in range(10)}
    assert len(outs) > 5


@settings(max_examples=150, deadline=None)
@given(documents(max_tokens=200), st.floats(0, 0.95), st.integers(0, 2**32))
def test_token_deletion(doc, ratio, seed):
    ids, _ = doc
    ids = [BOS, *ids, EOS]
    out = token_deletion(ids, ratio, np.random.default_rng(seed), SPECIAL)
    assert len(ids) - len(out) == round((len(ids) - 2) * ratio)
    assert out[0] == BOS and out[-1] == EOS and is_subsequence(out, ids)


noise_configs = st.builds(
    NoiseConfig, mask_ratio=st.floats(0, 1), poisson_lambda=st.floats(0.1, 8),
    permute_sentences=st.booleans(), deletion_ratio=st.floats(0, 0.9),
)


@settings(max_examples=200, deadline=None)
@given(documents(max_tokens=300), noise_configs, st.integers(1, 400), st.integers(0, 2**32))
def test_add_noise_properties(doc, config, max_length, seed):
    ids, sentences = doc
    out = add_noise(ids, config, np.random.default_rng(seed), mask_id=MASK, sentence_end_ids=ENDS,
                    special_ids=SPECIAL, max_length=max_length)
    assert len(out) <= max_length
    assert out == add_noise(ids, config, np.random.default_rng(seed), mask_id=MASK, sentence_end_ids=ENDS,
                            special_ids=SPECIAL, max_length=max_length)  # same seed, same output
    # kept tokens keep their order within their sentence
    where = {t: (i, j) for i, s in enumerate(sentences) for j, t in enumerate(s) if t >= 100}
    for i in range(len(sentences)):
        order = [where[t][1] for t in out if t >= 100 and where[t][0] == i]
        assert order == sorted(order)
    # without deletion and truncation, the masked share is exact and nothing else is lost
    if config.deletion_ratio == 0 and len(out) < max_length:
        assert len(ids) - len(without_masks(out)) == round(len(ids) * config.mask_ratio)


def test_add_noise_is_permutation_then_infilling_with_one_generator():
    ids = [t for i in range(10) for t in (100 + 3 * i, 101 + 3 * i, 7)]
    config = NoiseConfig(deletion_ratio=0.1)
    rng = np.random.default_rng(3)
    expected = token_deletion(
        text_infilling(sentence_permutation(ids, ENDS, rng), MASK, 0.35, 3.5, rng), 0.1, rng, {MASK},
    )
    assert add_noise(ids, config, 3, mask_id=MASK, sentence_end_ids=ENDS) == expected
    assert add_noise(ids, config, 4, mask_id=MASK, sentence_end_ids=ENDS) != expected


def test_truncate_keeps_trailing_specials():
    assert truncate([BOS, 100, 101, 102, EOS], 3, SPECIAL) == [BOS, 100, EOS]
    assert truncate([100, 101], 5, SPECIAL) == [100, 101]
    assert truncate([100, EOS, EOS], 1, SPECIAL) == [EOS]


@pytest.mark.parametrize("bad", [dict(mask_ratio=1.5), dict(poisson_lambda=0), dict(deletion_ratio=1.0)])
def test_noise_config_rejects_bad_ratios(bad):
    with pytest.raises(ValueError):
        NoiseConfig(**bad)


# --- real tokenizer, real text ------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return AutoTokenizer.from_pretrained(tiny_encoder_dir)


def test_sentence_ends_by_language():
    assert sentence_end_chars("zh") == "。！？"
    assert "།" in sentence_end_chars("bo") and "." not in sentence_end_chars("bo")
    assert "؟" in sentence_end_chars("ug") and "᠃" in sentence_end_chars("mn")
    assert sentence_end_chars("zh-Hans") == sentence_end_chars("zh") and sentence_end_chars("kk_Arab") == sentence_end_chars("kk")
    for mark in "。།؟᠃.":
        assert mark in sentence_end_chars("xx-unknown")


@pytest.mark.parametrize("lang", ["zh", "bo", "ug", "kk", "mn", "en"])
def test_sentence_end_ids_end_real_sentences(tokenizer, lang):
    ends = sentence_end_ids(tokenizer, lang)
    assert ends and not ends & set(tokenizer.all_special_ids)
    for piece in tokenizer.convert_ids_to_tokens(sorted(ends)):
        assert piece[-1] in sentence_end_chars(lang)
    # a UDHR article: its last token, the closing mark, is found as a sentence end
    text = next(u["text"][lang] for u in udhr("train") if u["id"] == "article-03.1")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[-1] in ends


def test_noise_on_real_text_is_lossless_where_kept(tokenizer):
    text = " ".join(u["text"]["bo"] for u in udhr("train")[:12])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = sentence_end_ids(tokenizer, "bo")
    assert sum(t in ends for t in ids) >= 4  # several sentences to permute
    special = set(tokenizer.all_special_ids)
    out = add_noise(ids, NoiseConfig(), 0, mask_id=tokenizer.mask_token_id, sentence_end_ids=ends, special_ids=special)
    kept = [t for t in out if t != tokenizer.mask_token_id]
    assert abs((len(ids) - len(kept)) / len(ids) - 0.35) < 1 / len(ids)
    assert set(kept) <= set(ids)
    # with masking off, the noised text is the same sentences in another order
    shuffled = add_noise(ids, NoiseConfig(mask_ratio=0), 0, mask_id=tokenizer.mask_token_id, sentence_end_ids=ends)
    assert sorted(shuffled) == sorted(ids) and shuffled != ids
