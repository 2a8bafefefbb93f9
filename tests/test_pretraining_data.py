"""The pretraining stream, example format and collator, on real UDHR text and the tiny tokenizer."""

import copy
import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from swcm.data import ExampleEncoder, NoiseConfig, PretrainingStream, protected_ids, sentence_end_ids
from swcm.data.readers import BadRecord
from swcm.resources import udhr
from swcm.tokenization import add_language_tags, language_tag_id

LANGS = ("zh", "bo", "ug", "kk", "mn", "en")
UNITS = udhr("train")


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    add_language_tags(AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir), tokenizer, LANGS)
    return tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Plain text for bo, ug (long documents: four articles a line); JSONL for kk, mn; zh–x pairs."""
    root = tmp_path_factory.mktemp("corpus")
    for lang in ("bo", "ug"):
        docs = [" ".join(u["text"][lang] for u in UNITS[i : i + 4]) for i in range(0, 40, 4)]
        (root / f"{lang}.txt").write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    (root / "mono.jsonl").write_text("".join(
        json.dumps({"text": u["text"][lang], "lang": lang}, ensure_ascii=False) + "\n" for u in UNITS[:20] for lang in ("kk", "mn")
    ), encoding="utf-8")
    (root / "zh-bo.tsv").write_text("".join(f"{u['text']['zh']}\t{u['text']['bo']}\n" for u in UNITS[:12]), encoding="utf-8")
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"src": u["text"]["ug"], "tgt": u["text"]["zh"], "src_lang": "ug", "tgt_lang": "zh"}, ensure_ascii=False) + "\n"
        for u in UNITS[:12]
    ), encoding="utf-8")
    return root


def make_stream(tokenizer, corpus, **kwargs):
    settings = dict(
        mono=[f"bo={corpus}/bo.txt", f"ug={corpus}/ug.txt", f"{corpus}/mono.jsonl"],
        parallel=[f"zh-bo={corpus}/zh-bo.tsv", f"{corpus}/pairs.jsonl"],
        mt_fraction=0.3, max_source_length=64, max_target_length=64, seed=1,
    )
    return PretrainingStream(tokenizer, **{**settings, **kwargs})


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def content(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_example_format(tokenizer):
    encoder = ExampleEncoder(tokenizer, max_source_length=16, max_target_length=12)
    src, tgt = UNITS[2]["text"]["zh"], UNITS[2]["text"]["bo"]
    ex = encoder.encode(src, tgt, "bo")
    # the tokenizer's own format and truncation, closing </s> kept; a cut target ends at the limit, without </s>
    assert ex["input_ids"] == tokenizer(src, truncation=True, max_length=16)["input_ids"]
    assert ex["labels"] == [language_tag_id(tokenizer, "bo"), *content(tokenizer, tgt)[:11]]
    short = encoder.encode("第一条", "1 бап", "kk")
    assert short["input_ids"] == tokenizer("第一条")["input_ids"]
    assert short["labels"][1:] == tokenizer("1 бап")["input_ids"][1:]
    with pytest.raises(ValueError, match="__fr__"):
        encoder.encode("a", "b", "fr")


class Classifier:
    """Tells a stream's examples apart: MT when (source, target, tag) is a direction of a pair, DAE otherwise."""

    def __init__(self, tokenizer, corpus, max_ids=62):
        self.tags = {language_tag_id(tokenizer, lang): lang for lang in LANGS}
        pairs = [(u["text"]["zh"], "zh", u["text"]["bo"], "bo") for u in UNITS[:12]]
        pairs += [(u["text"]["ug"], "ug", u["text"]["zh"], "zh") for u in UNITS[:12]]
        self.directions = set()
        for a, la, b, lb in pairs:
            a, b = tuple(content(tokenizer, a)[:max_ids]), tuple(content(tokenizer, b)[:max_ids])
            self.directions |= {(a, b, lb), (b, a, la)}

    def __call__(self, ex):
        lang = self.tags[ex["labels"][0]]
        direction = (tuple(ex["input_ids"][1:-1]), tuple(ex["labels"][1:-1]), lang)
        return ("mt" if direction in self.directions else "dae"), lang


def test_dae_and_mt_examples(tokenizer, corpus):
    stream = make_stream(tokenizer, corpus)
    classify = Classifier(tokenizer, corpus)
    docs = {lang: [content(tokenizer, line) for line in (corpus / f"{lang}.txt").read_text().splitlines()] for lang in ("bo", "ug")}
    docs |= {lang: [content(tokenizer, u["text"][lang]) for u in UNITS[:20]] for lang in ("kk", "mn")}
    seen = Counter()
    for ex in take(stream, 400):
        ids, labels = ex["input_ids"], ex["labels"]
        assert len(ids) <= 64 and len(labels) <= 64
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert labels[-1] == tokenizer.eos_token_id or len(labels) == 64  # a cut (MT) target has no </s>
        objective, lang = classify(ex)
        seen[objective, lang] += 1
        if objective == "dae":  # the target is a chunk of a document in the tag's language, 35 % of it masked
            target, source = labels[1:-1], ids[1:-1]
            assert any(target == doc[i : i + len(target)] for doc in docs[lang] for i in range(len(doc)))
            assert len(target) - sum(1 for t in source if t != tokenizer.mask_token_id) == round(0.35 * len(target))
    # every language gets DAE; MT targets both zh and the minority languages
    assert {lang for (o, lang) in seen if o == "dae"} == {"bo", "ug", "kk", "mn"}
    assert {lang for (o, lang) in seen if o == "mt"} == {"bo", "ug", "zh"}


def test_unk_is_noised_like_text(tokenizer, tmp_path):
    """A document half <unk> (English text from a corpus made with another vocabulary, each
    word followed by as many "<unk>" as it has pieces) gets 35 % of its tokens masked."""
    docs = [" ".join(w + "<unk>" * len(tokenizer.tokenize(w)) for w in unit["text"]["en"].split()) for unit in UNITS[:20]]
    (tmp_path / "en.txt").write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    stream = make_stream(tokenizer, tmp_path, mono=[f"en={tmp_path}/en.txt"], parallel=[], mt_fraction=0.0,
                         noise=NoiseConfig(permute_sentences=False), max_source_length=128, max_target_length=128)
    unk, mask = tokenizer.unk_token_id, tokenizer.mask_token_id
    covered = total = unks = 0
    for ex in take(stream, 40):
        target, source = ex["labels"][1:-1], ex["input_ids"][1:-1]
        total += len(target)
        unks += target.count(unk)
        covered += len(target) - sum(1 for t in source if t != mask)
        assert len(target) - sum(1 for t in source if t != mask) == round(0.35 * len(target))
    assert 0.45 < unks / total < 0.55 and 0.34 < covered / total < 0.36
    # The framing specials stay protected; <unk> and <mask> are text.
    assert protected_ids(tokenizer) == frozenset(tokenizer.all_special_ids) - {unk, mask}
    assert {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
            language_tag_id(tokenizer, "en")} <= protected_ids(tokenizer)


def test_documents_longer_than_the_limit_are_cut_into_chunks(tokenizer, corpus):
    stream = make_stream(tokenizer, corpus, mono=[f"bo={corpus}/bo.txt"], parallel=[], max_source_length=40, max_target_length=40)
    first_doc = content(tokenizer, (corpus / "bo.txt").read_text().splitlines()[0])
    assert len(first_doc) > 3 * 38
    pieces, got = [], 0
    for ex in take(stream, 30):
        pieces.append(ex["labels"][1:-1])
        got += len(pieces[-1])
        if got >= len(first_doc):
            break
    assert sum(pieces, []) == first_doc and all(len(p) <= 38 for p in pieces)
    # a cut lands after a sentence end when the second half of the window has one
    ends = sentence_end_ids(tokenizer, "bo")
    assert len(pieces) >= 4 and sum(p[-1] in ends for p in pieces) >= 2
    for p in pieces[:-1]:
        assert p[-1] in ends or (len(p) == 38 and not set(p[19:]) & ends)


def test_both_mt_directions_from_each_pair(tokenizer, corpus):
    stream = make_stream(tokenizer, corpus, mono=[], parallel=[f"zh-bo={corpus}/zh-bo.tsv"], mt_fraction=1.0)
    zh, bo = language_tag_id(tokenizer, "zh"), language_tag_id(tokenizer, "bo")
    examples = take(stream, 30)
    for i in range(0, 30, 2):  # one pair per two examples: zh→bo, then bo→zh
        unit = UNITS[(i // 2) % 12]
        assert examples[i]["labels"][0] == bo and examples[i + 1]["labels"][0] == zh
        assert examples[i]["input_ids"] == tokenizer(unit["text"]["zh"], truncation=True, max_length=64)["input_ids"]
        assert examples[i + 1]["input_ids"] == tokenizer(unit["text"]["bo"], truncation=True, max_length=64)["input_ids"]
    assert stream.state_dict()["streams"]["mt:bo+zh"]["epoch"] == 1  # 15 pairs read from 12: cycled


def tokens(tokenizer, texts):
    """How many tokens `texts` hold together (no special tokens; blank lines hold none)."""
    return sum(len(tokenizer(t.strip(), add_special_tokens=False)["input_ids"]) for t in texts)


def test_languages_are_sampled_by_the_formula(tokenizer, corpus):
    stream = make_stream(tokenizer, corpus, alpha=0.3, mt_fraction=0.25)
    # q_i is a share of tokens, not of records: bo and ug have 10 records of four articles,
    # kk and mn 20 of one; by records kk would weigh twice bo, by tokens it weighs half.
    mono = {lang: tokens(tokenizer, (corpus / f"{lang}.txt").read_text().splitlines()) for lang in ("bo", "ug")}
    mono |= {lang: tokens(tokenizer, [u["text"][lang] for u in UNITS[:20]]) for lang in ("kk", "mn")}
    pairs = {(x, "zh"): tokens(tokenizer, [u["text"][side] for u in UNITS[:12] for side in (x, "zh")]) for x in ("bo", "ug")}
    assert stream.counts == {"dae": {(lang,): n for lang, n in mono.items()}, "mt": pairs}
    assert mono["kk"] < 0.7 * mono["bo"]
    shares = np.array([mono[lang] for lang in ("bo", "ug", "kk", "mn")]) / sum(mono.values())
    p = shares**0.3 / (shares**0.3).sum()
    mt = np.array([pairs["bo", "zh"], pairs["ug", "zh"]]) / sum(pairs.values())
    mt = mt**0.3 / (mt**0.3).sum()
    expected = {"dae:bo": 0.75 * p[0], "dae:ug": 0.75 * p[1], "dae:kk": 0.75 * p[2], "dae:mn": 0.75 * p[3],
                "mt:bo+zh": 0.25 * mt[0], "mt:ug+zh": 0.25 * mt[1]}
    assert stream.probabilities == pytest.approx(expected)
    classify = Classifier(tokenizer, corpus)
    n = 2000
    drawn = Counter()
    for ex in take(stream, n):
        objective, lang = classify(ex)
        drawn["dae:" + lang if objective == "dae" else "mt"] += 1
    expected_drawn = {**{k: v for k, v in expected.items() if k.startswith("dae")}, "mt": 0.25}
    for key, q in expected_drawn.items():
        assert abs(drawn[key] / n - q) < 4.5 * np.sqrt(q * (1 - q) / n), (key, drawn[key] / n, q)


def test_resume_gives_exactly_the_next_examples(tokenizer, corpus):
    settings = dict(noise=NoiseConfig(deletion_ratio=0.1), max_source_length=40, max_target_length=40)
    reference = take(make_stream(tokenizer, corpus, **settings), 400)
    for stop in (1, 97, 300):
        stream = make_stream(tokenizer, corpus, **settings)
        assert take(stream, stop) == reference[:stop]
        buffer = io.BytesIO()
        torch.save(stream.state_dict(), buffer)  # through a checkpoint file, as training saves it
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        resumed = make_stream(tokenizer, corpus, **settings)
        resumed.load_state_dict(copy.deepcopy(state))
        assert resumed.state_dict() == state
        assert take(resumed, 400 - stop) == reference[stop:]
    # the run covers pending chunks, pending reverse directions and several epochs
    assert sum(s["epoch"] >= 1 for s in state["streams"].values()) >= 3
    assert any(s["pending"] for s in state["streams"].values())
    with pytest.raises(ValueError, match="saved data position"):
        make_stream(tokenizer, corpus, parallel=[]).load_state_dict(state)


def test_ranks_read_different_records(tokenizer, corpus):
    docs = {tuple(content(tokenizer, u["text"][lang])) for u in UNITS[:20] for lang in ("kk", "mn")}

    def documents_read(rank):  # whole documents: no chunking, no noise
        stream = make_stream(tokenizer, corpus, mono=[f"{corpus}/mono.jsonl"], parallel=[], rank=rank, world_size=2,
                             noise=NoiseConfig(mask_ratio=0, permute_sentences=False), max_source_length=1024, max_target_length=1024)
        return {tuple(ex["labels"][1:-1]) for ex in take(stream, 200)}

    rank0, rank1 = documents_read(0), documents_read(1)
    assert len(docs) == 40 and rank0 | rank1 == docs and not rank0 & rank1
    assert len(rank0) == len(rank1) == 20


def test_bad_records_fail_fast_or_are_counted(tokenizer, corpus, tmp_path):
    bad = tmp_path / "bo.txt"
    bad.write_text((corpus / "bo.txt").read_text() + "\n" + UNITS[0]["text"]["bo"] + "\n", encoding="utf-8")
    with pytest.raises(BadRecord, match=rf"^{bad}:11: empty text$"):
        make_stream(tokenizer, corpus, mono=[f"bo={bad}"])
    stream = make_stream(tokenizer, corpus, mono=[f"bo={bad}"], on_bad_record="skip")
    assert stream.counts["dae"] == {("bo",): tokens(tokenizer, bad.read_text().splitlines())}  # the blank line skipped
    assert stream.problems.counts == {"empty text": 1}
    # an empty file adds nothing (and is not tokenised: a fast tokenizer fails on no texts)
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    stream = make_stream(tokenizer, corpus, mono=[f"bo={bad}", f"bo={tmp_path}/empty.txt"], on_bad_record="skip")
    assert stream.counts["dae"] == {("bo",): tokens(tokenizer, bad.read_text().splitlines())}
    assert len(take(stream, 50)) == 50


def test_languages_need_tags_and_data(tokenizer, corpus, tmp_path):
    (tmp_path / "fr.txt").write_text("Tous les êtres humains naissent libres.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no language tag for fr"):
        make_stream(tokenizer, corpus, mono=[f"fr={tmp_path}/fr.txt"])
    with pytest.raises(ValueError, match=r"not in the allowed languages"):
        make_stream(tokenizer, corpus, langs=["bo", "zh"])
    # mono data only: no MT even when asked for; parallel only: no DAE
    assert set(make_stream(tokenizer, corpus, parallel=[]).probabilities) == {"dae:bo", "dae:ug", "dae:kk", "dae:mn"}
    assert set(make_stream(tokenizer, corpus, mono=[]).probabilities) == {"mt:bo+zh", "mt:ug+zh"}


def test_truncation_is_counted_per_language_and_a_cut_target_has_no_eos(tokenizer):
    """Examples cut to the length limits are counted per target language (and reported, as a
    warning above 1 %); a cut target ends at the limit without </s>, a whole one with it."""
    from swcm.data.examples import truncation_report

    encoder = ExampleEncoder(tokenizer, max_source_length=24, max_target_length=16)
    units = udhr("train")
    short = [encoder.encode("人人", u["text"]["bo"][:4], "bo") for u in units[:50]]
    length = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    articles = [u for u in units if length(u["text"]["zh"]) > 30 and length(u["text"]["ug"]) > 30][:3]
    assert len(articles) == 3
    long = [encoder.encode(u["text"]["zh"], u["text"]["ug"], "ug") for u in articles]
    assert all(e["labels"][-1] == tokenizer.eos_token_id for e in short)
    assert all(len(e["labels"]) == 16 and e["labels"][-1] != tokenizer.eos_token_id for e in long)
    assert all(len(e["input_ids"]) == 24 and e["input_ids"][-1] == tokenizer.eos_token_id for e in long)
    assert encoder.truncation == {"bo": [50, 0, 0, 0], "ug": [3, 3, 3, 3]}

    encoder.encode(articles[0]["text"]["zh"], "་", "bo")  # 1 of 51 bo examples cut: above 1 %
    lines = truncation_report(encoder.truncation, "training data")
    assert lines == ["warning: training data: bo: 1 of 51 sources and 0 targets cut to the length limits (2.0%)",
                     "warning: training data: ug: 3 of 3 sources and 3 targets cut to the length limits (100.0%)"]
    encoder.truncation["bo"] = [1000, 5, 0, 5]
    assert truncation_report(encoder.truncation, "x")[0] == "x: bo: 5 of 1000 sources and 0 targets cut to the length limits (0.5%)"
