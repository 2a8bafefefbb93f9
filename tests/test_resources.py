"""The vendored corpora: aligned, complete, and split with no overlap."""

import pytest

from swcm.resources import CORPORA, SPLITS, UDHR_LANGS, udhr


def test_every_unit_is_aligned_across_all_languages():
    for split in SPLITS:
        for unit in udhr(split):
            assert set(unit["text"]) == set(UDHR_LANGS)
            assert all(text.strip() for text in unit["text"].values())


def test_splits_do_not_overlap_by_unit_or_by_text():
    splits = {split: udhr(split) for split in SPLITS}
    assert [len(splits[s]) > 0 for s in SPLITS] == [True, True, True]
    ids = {split: {u["id"] for u in units} for split, units in splits.items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    for lang in UDHR_LANGS:
        texts = {split: {u["text"][lang] for u in units} for split, units in splits.items()}
        assert not texts["train"] & texts["test"], lang
        assert not texts["train"] & texts["valid"], lang
        assert not texts["valid"] & texts["test"], lang
    # a section is split into paragraphs; no paragraph id repeats inside a split either
    for units in splits.values():
        assert len({u["id"] for u in units}) == len(units)


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_every_vendored_corpus_reads_its_splits_in_its_languages(name):
    langs, read = CORPORA[name]
    for split in SPLITS:
        units = read(split)
        assert units and all(set(u["text"]) <= set(langs) and u["id"] for u in units)
    with pytest.raises(ValueError, match=f"unknown {name} split 'dev'"):
        read("dev")
