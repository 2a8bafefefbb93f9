"""Readers: source specs, validation with one-line file:line errors, skip counts, task formats."""

import gzip
import json

import pytest
from datasets.distributed import split_dataset_by_node
from transformers import AutoTokenizer

from swcm.data.examples import pair_separator
from swcm.data.readers import (
    BadRecord, Problems, TextPair, census, is_language_code, parse_source_spec, read_records, read_task,
    streaming_dataset,
)
from swcm.resources import udhr

UNITS = udhr("train")


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path, records):
    return write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records])


@pytest.fixture
def corpus(tmp_path):
    """Monolingual and parallel UDHR files in every supported layout."""
    (tmp_path / "mono").mkdir()
    for lang in ("bo", "ug"):
        write_lines(tmp_path / "mono" / f"{lang}.txt", [u["text"][lang] for u in UNITS[:10]])
    write_jsonl(tmp_path / "mixed.jsonl", [{"text": u["text"][lang], "lang": lang} for u in UNITS[:5] for lang in ("kk", "mn")])
    write_lines(tmp_path / "zh-bo.tsv", [u["text"]["zh"] + "\t" + u["text"]["bo"] for u in UNITS[:8]])
    write_jsonl(tmp_path / "pairs.jsonl", [
        {"src": u["text"]["zh"], "tgt": u["text"]["ug"], "src_lang": "zh", "tgt_lang": "ug"} for u in UNITS[:6]
    ])
    return tmp_path


def test_specs(corpus):
    bo = parse_source_spec(f"bo={corpus}/mono/bo.txt", "mono")
    assert (bo.format, bo.langs, bo.files) == ("text", ("bo",), (f"{corpus}/mono/bo.txt",))
    assert parse_source_spec(f"{corpus}/mixed.jsonl", "mono").format == "jsonl"
    assert parse_source_spec(f"zh-bo={corpus}/zh-bo.tsv", "parallel").langs == ("zh", "bo")
    assert parse_source_spec(f"{corpus}/pairs.jsonl", "parallel").langs is None
    # globs and directories: every matching file, sorted
    assert len(parse_source_spec(f"xx={corpus}/mono/*.txt", "mono").files) == 2
    assert [f.rsplit("/", 1)[1] for f in parse_source_spec(f"xx={corpus}/mono", "mono").files] == ["bo.txt", "ug.txt"]
    # codes with subtags; a split that only works one way
    assert parse_source_spec(f"zh-Hans-bo={corpus}/zh-bo.tsv", "parallel").langs == ("zh-Hans", "bo")
    assert parse_source_spec(f"kk_Arab-zh={corpus}/zh-bo.tsv", "parallel").langs == ("kk_Arab", "zh")
    assert parse_source_spec(f"en-US-zh={corpus}/zh-bo.tsv", "parallel", langs=["en-US", "zh"]).langs == ("en-US", "zh")


@pytest.mark.parametrize("spec, kind, message", [
    ("b!=PATH/mono/bo.txt", "mono", 'b!=PATH/mono/bo.txt: bad language code "b!"'),
    ("fr=PATH/mono/bo.txt", "mono", 'fr=PATH/mono/bo.txt: language "fr" is not in the allowed languages (zh, bo)'),
    ("en-US-zh=PATH/zh-bo.tsv", "parallel", 'language pair "en-US-zh" is ambiguous; write it as en-US_zh or en_US-zh'),
    ("zh-zh=PATH/zh-bo.tsv", "parallel", 'source and target language are both "zh"'),
    ("bo=PATH/nothing.txt", "mono", "PATH/nothing.txt: no such file or directory"),
    ("bo=PATH/*.nothing", "mono", "PATH/*.nothing: no files match"),
])
def test_bad_specs(corpus, spec, kind, message):
    langs = ["zh", "bo"] if spec.startswith("fr=") else None
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        parse_source_spec(spec.replace("PATH", str(corpus)), kind, langs)
    assert message.replace("PATH", str(corpus)) in str(err.value) and "\n" not in str(err.value)


def test_language_codes():
    for good in ("zh", "bo", "yue", "zh-Hans", "kk_Arab", "zh-Hant-TW", "sr-Latn-RS"):
        assert is_language_code(good)
    for bad in ("", "z", "zh-", "Hans", "z h", "zh--x", "中文", "__zh__", "toolonglanguage"):
        assert not is_language_code(bad)


def test_records_in_every_layout(corpus):
    mono = [parse_source_spec(f"bo={corpus}/mono/bo.txt", "mono"), parse_source_spec(f"{corpus}/mixed.jsonl", "mono")]
    records = [r for s in mono for r in read_records(s)]
    assert records[0] == {"text": UNITS[0]["text"]["bo"], "lang": "bo"}
    assert records[10] == {"text": UNITS[0]["text"]["kk"], "lang": "kk"} and len(records) == 20
    tsv = list(read_records(parse_source_spec(f"zh-bo={corpus}/zh-bo.tsv", "parallel")))
    assert tsv[3] == {"src": UNITS[3]["text"]["zh"], "tgt": UNITS[3]["text"]["bo"], "src_lang": "zh", "tgt_lang": "bo"}
    jsonl = list(read_records(parse_source_spec(f"{corpus}/pairs.jsonl", "parallel")))
    assert jsonl[5]["tgt"] == UNITS[5]["text"]["ug"] and len(jsonl) == 6


def test_compressed_files(tmp_path):
    with gzip.open(tmp_path / "bo.txt.gz", "wt", encoding="utf-8") as f:
        f.write("".join(u["text"]["bo"] + "\n" for u in UNITS[:4]))
    records = list(read_records(parse_source_spec(f"bo={tmp_path}/bo.txt.gz", "mono")))
    assert [r["text"] for r in records] == [u["text"]["bo"] for u in UNITS[:4]]


BAD_MONO = [  # (line as written, expected problem) — every kind of bad record
    ('{"text": "ཀ་ཁ།", "lang": "bo"', 'malformed JSON (Expecting \',\' delimiter at column 30)'),
    ('["not", "an", "object"]', "expected a JSON object, found list"),
    ('{"lang": "bo"}', 'missing field "text"'),
    ('{"text": 5, "lang": "bo"}', 'field "text" must be a string, found int'),
    ('{"text": "  ", "lang": "bo"}', 'empty "text"'),
    ('{"text": "ཀ།", "lang": "b0"}', 'bad language code "b0" in field "lang"'),
    ('{"text": "hello", "lang": "fr"}', 'language "fr" is not in the allowed languages (bo, zh) in field "lang"'),
]


def test_each_bad_record_is_one_line_naming_file_and_line(tmp_path):
    good = json.dumps({"text": UNITS[2]["text"]["bo"], "lang": "bo"}, ensure_ascii=False)
    for line, problem in BAD_MONO:
        path = write_lines(tmp_path / "bad.jsonl", [good, "", line, good])
        with pytest.raises(BadRecord) as err:
            list(read_records(parse_source_spec(str(path), "mono"), langs=["bo", "zh"]))
        assert str(err.value) == f"{path}:3: {problem}"


def test_non_utf8_and_empty_lines_in_plain_text(tmp_path):
    path = tmp_path / "bo.txt"
    path.write_bytes("ཀ་ཁ།\n".encode() + b"caf\xe9\n" + b"\n")
    source = parse_source_spec(f"bo={path}", "mono")
    with pytest.raises(BadRecord, match=rf"^{path}:2: not valid UTF-8 \(byte 0xe9 at byte 4 of the line\)$"):
        list(read_records(source))
    problems = Problems()
    assert [r["text"] for r in read_records(source, on_bad_record="skip", problems=problems)] == ["ཀ་ཁ།"]
    assert problems.counts == {"not UTF-8": 1, "empty text": 1}
    assert problems.summary() == f"skipped 2 bad records: 1 not UTF-8 (first at {path}:2), 1 empty text (first at {path}:3)"


def test_bad_parallel_records(tmp_path):
    tsv = write_lines(tmp_path / "p.tsv", ["源\tཀ།", "only one column", "a\tb\tc", "\tཀ།"])
    problems = Problems()
    records = list(read_records(parse_source_spec(f"zh-bo={tsv}", "parallel"), on_bad_record="skip", problems=problems))
    assert len(records) == 1 and problems.counts == {"malformed TSV": 2, "empty text": 1}
    with pytest.raises(BadRecord, match=r"p.tsv:2: expected 2 tab-separated columns \(source, target\), found 1$"):
        list(read_records(parse_source_spec(f"zh-bo={tsv}", "parallel")))
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"src": "a", "tgt": "b", "src_lang": "zh", "tgt_lang": "zh"},
                                               {"src": "a", "tgt": "b", "src_lang": "zh"}])
    problems = Problems()
    assert not list(read_records(parse_source_spec(str(jsonl), "parallel"), on_bad_record="skip", problems=problems))
    assert problems.counts == {"same language": 1, "missing field": 1}
    assert problems.first["missing field"] == f"{jsonl}:2"


def test_census_counts_valid_records_per_stream(corpus):
    sources = [parse_source_spec(f"{corpus}/mixed.jsonl", "mono"), parse_source_spec(f"bo={corpus}/mono", "mono")]
    found = census(sources)
    assert {key: sum(files.values()) for key, files in found.items()} == {("kk",): 5, ("mn",): 5, ("bo",): 20}
    assert {path for _, path in found["bo",]} == {f"{corpus}/mono/bo.txt", f"{corpus}/mono/ug.txt"}
    pair_sources = [parse_source_spec(f"zh-bo={corpus}/zh-bo.tsv", "parallel"), parse_source_spec(f"{corpus}/pairs.jsonl", "parallel")]
    pairs = census(pair_sources)
    assert {key: sum(f.values()) for key, f in pairs.items()} == {("bo", "zh"): 8, ("ug", "zh"): 6}
    # measured: the sizes of the texts, both sides of a pair, in batches of any size
    calls = []
    measure = lambda texts: calls.append(len(texts)) or [len(t) for t in texts]  # noqa: E731
    sizes = census(sources, measure=measure, batch_size=3)
    assert {key: sum(f.values()) for key, f in sizes.items()} == {
        ("kk",): sum(len(u["text"]["kk"]) for u in UNITS[:5]), ("mn",): sum(len(u["text"]["mn"]) for u in UNITS[:5]),
        ("bo",): sum(len(u["text"][lang]) for u in UNITS[:10] for lang in ("bo", "ug"))}
    assert max(calls) == 3
    sizes = census(pair_sources, measure=measure, batch_size=5)
    assert sum(sizes["bo", "zh"].values()) == sum(len(u["text"]["zh"]) + len(u["text"]["bo"]) for u in UNITS[:8])


def test_streaming_dataset_shards_by_record_across_ranks(corpus):
    """Ranks take every world_size-th record, never whole files: with a large and a small file
    (20 and 4 records), whole-file shards would give one rank only the small file, replayed."""
    write_lines(corpus / "mono" / "ug.txt", [u["text"]["ug"] for u in UNITS[:4]])
    source = parse_source_spec(f"xx={corpus}/mono", "mono")
    everything = list(read_records(source))
    assert len(everything) == 14
    dataset = streaming_dataset([source])
    assert dataset.n_shards == 1 and list(dataset) == everything
    ranks = [list(split_dataset_by_node(dataset, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == everything[0::2] and ranks[1] == everything[1::2]
    small = {r["text"] for r in everything[10:]}
    assert [sum(r["text"] in small for r in rank) for rank in ranks] == [2, 2]  # each its share of each file
    # one language's stream out of a mixed file
    mixed = streaming_dataset([parse_source_spec(f"{corpus}/mixed.jsonl", "mono")], key=("mn",))
    assert [r["text"] for r in mixed] == [u["text"]["mn"] for u in UNITS[:5]]


# --- task formats ------------------------------------------------------------------------


def test_summarisation_and_translation_tasks(tmp_path):
    sums = write_jsonl(tmp_path / "sum.jsonl", [{"article": u["text"]["bo"], "title": u["text"]["bo"][:8]} for u in UNITS[:3]])
    pairs = list(read_task(str(sums), "sum", fields={"document": "article", "summary": "title"}, lang="bo"))
    assert pairs[0] == TextPair(UNITS[0]["text"]["bo"], UNITS[0]["text"]["bo"][:8], "bo", "bo")
    with pytest.raises(BadRecord, match=rf'^{sums}:1: missing field "lang"$'):
        list(read_task(str(sums), "sum", fields={"document": "article", "summary": "title"}))
    with pytest.raises(ValueError, match="unknown field"):
        read_task(str(sums), "sum", fields={"article": "document"})
    mt = write_jsonl(tmp_path / "mt.jsonl", [{"src": u["text"]["zh"], "tgt": u["text"]["kk"], "src_lang": "zh", "tgt_lang": "kk"}
                                             for u in UNITS[:2]])
    assert list(read_task(str(mt), "mt"))[1] == TextPair(UNITS[1]["text"]["zh"], UNITS[1]["text"]["kk"], "zh", "kk")
    with pytest.raises(BadRecord, match=r'language "kk" is not in the allowed languages \(zh, bo\) in field "tgt_lang"'):
        list(read_task(str(mt), "mt", langs=["zh", "bo"]))


def test_reading_comprehension_source_is_the_tokenizers_pair_encoding(tmp_path, tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    assert pair_separator(tokenizer) == "</s></s>"
    question, context, answer = UNITS[5]["text"]["zh"][:10], UNITS[6]["text"]["zh"], UNITS[6]["text"]["zh"][:6]
    path = write_jsonl(tmp_path / "mrc.jsonl", [
        {"question": question, "context": context, "answer": answer, "lang": "zh"},
        {"question": question, "context": "", "answer": answer, "lang": "zh"},
    ])
    problems = Problems()
    (record,) = read_task(str(path), "mrc", on_bad_record="skip", problems=problems)
    assert record.source_text == question + "</s></s>" + context and record.target_text == answer
    assert tokenizer(record.source_text)["input_ids"] == tokenizer(question, context)["input_ids"]
    assert problems.summary() == f'skipped 1 bad record: 1 empty text (first at {path}:2)'
