"""`swcm generate` and `swcm evaluate` end to end on real UDHR text with a tiny built SWCM model."""

import json
import os

import pytest
import torch
from transformers import AutoTokenizer

from swcm.cli import main
from swcm.data.examples import pair_separator
from swcm.data.readers import read_task
from swcm.metrics import score
from swcm.generation import generate_sequences, generate_texts, load_generator, read_task_inputs
from swcm.io import atomic_text_file, save_model_dir
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr
from swcm.tokenization import add_language_tags, language_tag

LANGS = ["zh", "bo", "ug", "kk", "mn", "en"]
# cpu, float32: compared with in-process runs and fixed thresholds, the same on every machine
FAST = ["--max-new-tokens", "6", "--no-progress", "--device", "cpu", "--dtype", "float32"]


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory, teach_to_echo):
    """A tiny SWCM model taught for a few steps to echo the start of UDHR sentences in every
    language, so that what it generates depends on its input (a random one says the same
    thing whatever it reads, and could not tell a mixed-up order)."""
    torch.manual_seed(0)  # the Normal layers' initialisation too: the same model whichever tests ran before
    model = SWCMForConditionalGeneration.from_encoder(str(tiny_encoder_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    add_language_tags(model, tokenizer, LANGS)
    teach_to_echo(model, tokenizer, LANGS, steps=60)
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("swcm") / "model")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mt_records(targets=None):
    """Translation records of the UDHR test split; source languages cycle through LANGS and
    target languages through `targets` (default: the next language of LANGS)."""
    records = []
    for i, unit in enumerate(udhr("test")):
        src_lang = LANGS[i % len(LANGS)]
        tgt_lang = targets[i % len(targets)] if targets else LANGS[(i + 1) % len(LANGS)]
        records.append({"id": unit["id"], "src": unit["text"][src_lang], "tgt": unit["text"][tgt_lang],
                        "src_lang": src_lang, "tgt_lang": tgt_lang, "note": i})
    return records


BEAM = {"num_beams": 3, "length_penalty": 1.2, "no_repeat_ngram_size": 2, "num_return_sequences": 2}


@pytest.mark.parametrize("options", [{}, BEAM], ids=["greedy", "beam"])
def test_generate_keeps_records_order_and_forces_the_target_tag(model_dir, tmp_path, capsys, options):
    records = mt_records()
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert main(["generate", "--model", str(model_dir), "--input", str(src), "--output", str(out),
                 "--keep-special-tokens", "--batch-size", "4", *FAST, *flags]) == 0
    assert f"wrote {len(records)} predictions" in capsys.readouterr().out
    got = read_jsonl(out)
    assert [r["id"] for r in got] == [r["id"] for r in records]
    model, tokenizer = load_generator(model_dir, "cpu", "float32")
    for record, result in zip(records, got):
        assert {k: v for k, v in result.items() if k not in ("prediction", "predictions")} == record
        # The decoder starts from <s>; the target language's tag must be the first generated token.
        assert result["prediction"].startswith("<s>" + language_tag(record["tgt_lang"]))
        # Batched, sorted and grouped by language, each record still gets its own output.
        alone = generate_sequences(model, tokenizer, [record["src"]], record["tgt_lang"], max_new_tokens=6,
                                   progress=False, skip_special_tokens=False, **options)[0]
        assert result["prediction"] == alone[0]
        if options:
            assert result["predictions"] == alone and len(alone) == 2
    assert len({r["prediction"] for r in got}) > 3  # the outputs do depend on the input


def test_generate_sampling_is_seeded_and_sampling_flags_need_do_sample(model_dir, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", mt_records(["mn"]))
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        assert main(["generate", "--model", str(model_dir), "--input", str(src), "--output", str(out), *FAST,
                     "--do-sample", "--top-k", "50", "--top-p", "0.95", "--temperature", "1.5", "--seed", "3"]) == 0
        runs.append([r["prediction"] for r in read_jsonl(out)])
    assert runs[0] == runs[1]
    assert main(["generate", "--model", str(model_dir), "--input", str(src), "--output", str(tmp_path / "c.jsonl"),
                 "--top-k", "5"]) == 2
    assert "need --do-sample" in capsys.readouterr().err


def test_generate_bad_line_is_one_line_error_and_leaves_output_untouched(model_dir, tmp_path, capsys):
    records = mt_records(["bo"])
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines[2] = '{"src": "人人", "tgt_lang": "bo"'  # truncated JSON on line 3
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    older = '{"src": "older", "prediction": "an older result"}\n'  # an earlier output: generate may replace it
    out.write_text(older, encoding="utf-8")
    assert main(["generate", "--model", str(model_dir), "--input", str(src), "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"swcm generate: error: {src}:3: malformed JSON") and "\n" not in err
    assert out.read_text(encoding="utf-8") == older
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left

    # --on-bad-record skip: the bad record is left out and counted, the others are generated.
    assert main(["generate", "--model", str(model_dir), "--input", str(src), "--output", str(out), *FAST,
                 "--on-bad-record", "skip"]) == 0
    assert f"{src}: skipped 1 bad record: 1 malformed JSON (first at {src}:3)" in capsys.readouterr().err
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for i, r in enumerate(records) if i != 2]

    out.write_text(older, encoding="utf-8")
    lines[2] = json.dumps({"src": "人人", "tgt_lang": "xx"})  # a language the model has no tag for
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["generate", "--model", str(model_dir), "--input", str(src), "--output", str(out), *FAST]) == 2
    assert f"{src}:3: the model has no language tag __xx__ for 'xx'; it has __zh__, __bo__" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == older


def test_task_sources_match_training_and_languages_fall_back(model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sep = pair_separator(tokenizer)
    units = udhr("test")[:3]
    mrc = write_jsonl(tmp_path / "mrc.jsonl", [
        {"q": u["text"]["kk"][:20], "context": u["text"]["kk"], "answer": u["text"]["kk"][:10], "lang": "kk"} for u in units
    ])
    trained = list(read_task(str(mrc), "mrc", fields={"question": "q"}, separator=sep))
    inputs = read_task_inputs(mrc, "mrc", fields={"question": "q"}, separator=sep, require_reference=True)
    assert [i.source_text for i in inputs] == [p.source_text for p in trained]
    # The joined text encodes exactly as the tokenizer's own (question, context) pair.
    q, c = units[0]["text"]["kk"][:20], units[0]["text"]["kk"]
    assert tokenizer(inputs[0].source_text)["input_ids"] == tokenizer(q, c)["input_ids"]
    assert [i.reference for i in inputs] == [p.target_text for p in trained]

    # Without --task each record's task comes from its fields; without a language field,
    # --tgt-lang; without a reference, generation still works.
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"document": units[0]["text"]["ug"]}, {"src": units[1]["text"]["zh"]}])
    got = read_task_inputs(mixed, tgt_lang="ug")
    assert [(i.task, i.target_lang, i.reference) for i in got] == [("sum", "ug", None), ("mt", "ug", None)]
    with pytest.raises(ValueError, match=r'mixed.jsonl:1: missing field "lang"'):
        read_task_inputs(mixed)
    with pytest.raises(ValueError, match=r'mixed.jsonl:1: missing field "summary"'):
        read_task_inputs(mixed, tgt_lang="ug", require_reference=True)
    both = write_jsonl(tmp_path / "both.jsonl", [{"document": "a", "src": "b", "lang": "bo", "tgt_lang": "bo"}])
    with pytest.raises(ValueError, match=r"both.jsonl:1: fields of several tasks \(sum, mt\); name the task with --task"):
        read_task_inputs(both)


def test_generate_texts_is_the_first_of_each_source_s_sequences(model_dir):
    model, tokenizer = load_generator(model_dir, "cpu", "float32")
    sources = [u["text"][lang] for u, lang in zip(udhr("test"), LANGS)]
    beams = generate_sequences(model, tokenizer, sources, "mn", batch_size=4, max_new_tokens=6, progress=False,
                               num_beams=3, num_return_sequences=3)
    assert [len(b) for b in beams] == [3] * len(sources)
    best = generate_texts(model, tokenizer, sources, "mn", batch_size=4, max_new_tokens=6, progress=False, num_beams=3)
    assert best == [b[0] for b in beams]


def test_atomic_text_file_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_text_file(path) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert path.read_text(encoding="utf-8") == "old\n" and len(list(tmp_path.iterdir())) == 1
    with atomic_text_file(path) as f:
        f.write("new\n")
    assert path.read_text(encoding="utf-8") == "new\n" and len(list(tmp_path.iterdir())) == 1
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one


def sum_records(lang):
    """Summarisation records whose summary is the document itself (what the test model learnt)."""
    return [{"id": u["id"], "document": u["text"][lang], "summary": u["text"][lang], "lang": lang} for u in udhr("test")]


def test_evaluate_two_files_two_languages_gives_a_row_per_language(model_dir, tmp_path, capsys):
    zh = write_jsonl(tmp_path / "test.zh.jsonl", sum_records("zh"))
    kk = write_jsonl(tmp_path / "test.kk.jsonl", sum_records("kk")[:5])
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model_dir), "--task", "sum", "--test", str(zh), "--test", str(kk),
                 "--out", str(out), "--transfer-from", "zh", "--num-beams", "2", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "Cross-lingual transfer (summarisation): fine-tuned on zh, evaluated on kk" in printed
    assert ("| language | ROUGE-L F | ROUGE-L P | ROUGE-L R | chrF++ | BLEU | spBLEU | script-aware chrF++ "
            "| script-aware BLEU | script rate | n |") in printed
    assert "\n| zh |" in printed and "\n| kk |" in printed

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["transfer_from"] == "zh" and results["task"] == "sum"
    assert results["generation"]["num_beams"] == 2
    assert [(r["lang"], r["script"], r["n"]) for r in results["rows"]] == [("zh", "Han", 9), ("kk", "Cyrillic", 5)]
    assert (out / "results.md").read_text(encoding="utf-8") in printed
    for lang, n in (("zh", 9), ("kk", 5)):
        predicted = read_jsonl(out / "predictions" / f"test.{lang}.jsonl")
        assert len(predicted) == n and all(r["lang"] == lang and r["prediction"] for r in predicted)
        # The rows are the metrics of the written predictions; the model echoes its input,
        # so the output is in the right script and precise, if short.
        row = next(r for r in results["rows"] if r["lang"] == lang)
        expected = score([r["prediction"] for r in predicted], [r["summary"] for r in predicted], lang)
        assert row["rougeL_f"] == pytest.approx(expected["rougeL"]["f"]) and row["chrf"] == pytest.approx(expected["chrf"])
        assert row["script_rate"] == pytest.approx(expected["script_rate"])
        assert row["signatures"] == expected["signatures"]  # sacrebleu's, e.g. "nrefs:1|...|tok:zh|..."
        assert "nw:2" in row["signatures"]["chrf"] and f"tok:{'zh' if lang == 'zh' else '13a'}|" in row["signatures"]["bleu"]
        assert row["rougeL_p"] > 20 and row["script_rate"] > 60


def test_evaluate_needs_references(model_dir, tmp_path, capsys):
    records = [{k: v for k, v in r.items() if k != "tgt"} for r in mt_records(["bo"])]
    src = write_jsonl(tmp_path / "test.jsonl", records)
    assert main(["evaluate", "--model", str(model_dir), "--task", "mt", "--test", str(src), "--out",
                 str(tmp_path / "eval"), *FAST]) == 2
    assert f'{src}:1: missing field "tgt"' in capsys.readouterr().err


def test_lengths_are_bounded_by_the_position_table(model_dir):
    """The decoder shares the encoder's 128-position table: a long request is capped to it,
    plain generate() uses the whole table instead of transformers' 20 tokens, and a decoder
    input past the table is a clear error, not an IndexError (or a device assert on CUDA)."""
    model, tokenizer = load_generator(model_dir, device="cpu")
    limit = model.max_target_positions
    assert limit == 128
    assert json.loads((model_dir / "generation_config.json").read_text())["max_length"] == limit
    assert model.generation_config.max_length == limit

    eos = tokenizer.eos_token_id
    [[long]] = generate_sequences(model, tokenizer, [udhr("test")[0]["text"]["bo"]], "bo", max_new_tokens=1000,
                                  min_new_tokens=1000, skip_special_tokens=False, progress=False)
    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) > 100  # it ran to the table's end
    source = tokenizer(udhr("test")[0]["text"]["bo"], return_tensors="pt", truncation=True)
    # plain generate(), no length given, end-of-sequence suppressed: the table's length, not 20
    out = model.generate(**source, suppress_tokens=[eos], forced_bos_token_id=tokenizer.convert_tokens_to_ids("__bo__"))
    assert out.shape[1] == limit

    with pytest.raises(ValueError, match="position table"):
        model(**source, decoder_input_ids=torch.full((1, limit + 1), tokenizer.pad_token_id))


def test_finetuning_targets_are_capped_to_the_position_table(model_dir):
    from swcm.finetuning import FinetuneSettings, encode_records
    from swcm.data.readers import TextPair

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = " ".join(u["text"]["en"] for u in udhr("train"))
    record = TextPair(source_text=text, target_text=text, source_lang="en", target_lang="en")
    [example] = encode_records(tokenizer, [record], FinetuneSettings(max_source_length=1000, max_target_length=1000))
    assert len(example["input_ids"]) == len(example["labels"]) == 128


def test_generating_from_a_saved_model_warns_nothing(model_dir, caplog):
    """A saved model's generation config holds max_length (the decoder's positions); asking for
    max_new_tokens on top of it made transformers warn at every batch. Long sources are cut to
    the encoder's limit without the tokenizer's over-length notice."""
    import logging

    model, tokenizer = load_generator(model_dir, "cpu", "float32")
    assert model.generation_config.max_length is not None
    sources = ["ཀ་ཁ་ག " * 200, "人人生而自由"]
    library = logging.getLogger("transformers")  # does not propagate to the root logger caplog listens on
    library.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            out = generate_texts(model, tokenizer, sources, "bo", batch_size=2, max_new_tokens=5, progress=False)
    finally:
        library.removeHandler(caplog.handler)
    assert len(out) == 2
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("transformers")]
