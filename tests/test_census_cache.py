"""Fast starts on large corpora: the census kept beside the run and read back, and record streams
that resume by seeking, on real UDHR text and the tiny tokenizer."""

import gzip
import json
import os

import pytest
from datasets.distributed import split_dataset_by_node
from transformers import AutoModelForMaskedLM, AutoTokenizer

from swcm.data import PretrainingStream
from swcm.data.census_cache import cached_languages
from swcm.data.readers import BadRecord, RecordStream, parse_source_spec, read_records, streaming_dataset
from swcm.pretraining import PretrainSettings, data_languages
from swcm.resources import udhr
from swcm.tokenization import add_language_tags

UNITS = udhr("train")
LANGS = ("bo", "ug", "kk", "mn", "zh")


def counting_tokenizer(model_dir):
    """The tiny tokenizer, as a subclass of its own class that counts the texts it tokenises."""
    base = type(AutoTokenizer.from_pretrained(model_dir))

    class Counting(base):
        texts = 0

        def __call__(self, text=None, *args, **kwargs):
            type(self).texts += len(text) if isinstance(text, list) else 1
            return super().__call__(text, *args, **kwargs)

    tokenizer = Counting.from_pretrained(model_dir)
    add_language_tags(AutoModelForMaskedLM.from_pretrained(model_dir), tokenizer, LANGS)
    return tokenizer


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "bo.txt").write_text("".join(u["text"]["bo"] + "\n" for u in UNITS[:30]), encoding="utf-8")
    (tmp_path / "mono.jsonl").write_text("".join(
        json.dumps({"text": u["text"][lang], "lang": lang}, ensure_ascii=False) + "\n" for u in UNITS[:15] for lang in ("kk", "mn")
    ) + '{"text": "", "lang": "kk"}\n', encoding="utf-8")  # one bad record, skipped
    (tmp_path / "zh-ug.tsv").write_text("".join(f"{u['text']['zh']}\t{u['text']['ug']}\n" for u in UNITS[:10]), encoding="utf-8")
    return tmp_path


def make_stream(tokenizer, corpus, cache, **kwargs):
    return PretrainingStream(
        tokenizer, [f"bo={corpus}/bo.txt", f"{corpus}/mono.jsonl"], [f"zh-ug={corpus}/zh-ug.tsv"],
        mt_fraction=0.3, max_source_length=48, max_target_length=48, seed=3, on_bad_record="skip",
        census_cache=cache, **kwargs,
    )


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_census_is_kept_and_read_back_without_tokenising_the_corpus(tiny_encoder_dir, corpus, tmp_path):
    tokenizer = counting_tokenizer(tiny_encoder_dir)
    cache = tmp_path / "run" / "census.json"
    cache.parent.mkdir()
    first = make_stream(tokenizer, corpus, cache)
    assert cache.is_file() and type(tokenizer).texts >= 30 + 30 + 20  # every record, both sides of a pair
    type(tokenizer).texts = 0
    again = make_stream(tokenizer, corpus, cache)
    # no record tokenised (the corpus has 80 texts): the counts came from the file; the stream
    # only tokenises a few fixed strings of its own (sentence ends)
    assert type(tokenizer).texts < 5
    assert again.counts == first.counts and again.probabilities == first.probabilities
    assert again.problems.summary() == first.problems.summary() != "no bad records"
    assert take(again, 40) == take(make_stream(tokenizer, corpus, None), 40)  # the same examples as without a cache
    # the languages of the JSONL source, from the file too (before the tags are added, any tokenizer)
    settings = PretrainSettings(mono=[f"bo={corpus}/bo.txt", f"{corpus}/mono.jsonl"],
                                parallel=[f"zh-ug={corpus}/zh-ug.tsv"], on_bad_record="skip")
    assert data_languages(settings, cache) == data_languages(settings) == ["bo", "kk", "mn", "ug", "zh"]


def test_census_is_recomputed_when_a_file_or_the_tokenizer_changes(tiny_encoder_dir, corpus, tmp_path):
    tokenizer = counting_tokenizer(tiny_encoder_dir)
    cache = tmp_path / "census.json"
    before = make_stream(tokenizer, corpus, cache).counts
    with open(corpus / "bo.txt", "a", encoding="utf-8") as f:
        f.write(UNITS[40]["text"]["bo"] + "\n")
    type(tokenizer).texts = 0
    after = make_stream(tokenizer, corpus, cache).counts
    assert type(tokenizer).texts > 20 and after["dae"][("bo",)] > before["dae"][("bo",)]
    assert after == make_stream(tokenizer, corpus, None).counts
    # same size, same content length, only the modification time differs: recomputed too
    os.utime(corpus / "zh-ug.tsv", ns=(0, 0))
    type(tokenizer).texts = 0
    make_stream(tokenizer, corpus, cache)
    assert type(tokenizer).texts > 20
    # another tokenizer (one more special token) over the same files: recomputed
    type(tokenizer).texts = 0
    add_language_tags(AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir), tokenizer, ["en"])
    make_stream(tokenizer, corpus, cache)
    assert type(tokenizer).texts > 20
    # other allowed languages: the file is not for these settings
    sources = {"dae": [parse_source_spec(f"{corpus}/mono.jsonl", "mono")], "mt": []}
    assert cached_languages(cache, sources, None, "skip") is None


@pytest.mark.parametrize("world_size", [1, 3])
def test_record_stream_shares_records_as_split_dataset_by_node(corpus, world_size):
    """Rank r takes every world_size-th valid record of its stream, as datasets' split does."""
    sources = [parse_source_spec(f"{corpus}/mono.jsonl", "mono"), parse_source_spec(f"kk={corpus}/bo.txt", "mono")]
    files = [(s, f) for s in sources for f in s.files]
    for rank in range(world_size):
        ours = list(RecordStream(files, on_bad_record="skip", key=("kk",), rank=rank, world_size=world_size))
        theirs = list(split_dataset_by_node(streaming_dataset(files, on_bad_record="skip", key=("kk",)),
                                            rank=rank, world_size=world_size))
        assert ours == theirs and len(ours) >= 45 // world_size


def test_record_stream_resumes_by_seeking_without_reading_what_came_before(corpus, tmp_path):
    """A restored position reads on from its byte offset: the lines before it may even be
    overwritten with garbage (same length, so offsets stay valid) and are never read."""
    path = tmp_path / "kk.txt.gz"
    lines = [u["text"]["kk"] for u in UNITS[:20]]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    plain = tmp_path / "kk.txt"
    plain.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    for file in (plain, path):
        source = parse_source_spec(f"kk={file}", "mono")
        stream = RecordStream([(source, str(file))], rank=1, world_size=2)
        it = iter(stream)
        head = [next(it) for _ in range(4)]
        state = stream.state_dict()
        rest = list(it)
        assert [r["text"] for r in head + rest] == lines[1::2]
        assert state["line"] == 8 and state["skip"] == 1
        if file == plain:  # garbage over the first 8 lines: resuming never meets it
            prefix = state["offset"]
            file.write_bytes(b"\xff" * (prefix - 1) + b"\n" + file.read_bytes()[prefix:])
            with pytest.raises(BadRecord):
                list(read_records(source))
        resumed = RecordStream([(source, str(file))], rank=1, world_size=2)
        resumed.load_state_dict(state)
        assert list(resumed) == rest
