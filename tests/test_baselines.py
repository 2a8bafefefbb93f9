"""Baselines through the same harness: tiny random NLLB, M2M-100, mBART-50, mT5 and Marian models,
with SentencePiece tokenizers trained here on UDHR text, evaluated by `swcm evaluate` /
`swcm generate` beside SWCM, each told the languages by its family's convention."""

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import transformers
from transformers import (
    AutoTokenizer,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
)
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as NLLB_CODES

from swcm.cli import main as cli
from swcm.languages import DEFAULT_CODES, LanguageConvention, language_convention, read_language_codes
from swcm.resources import udhr

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
TEXTS = [t for unit in udhr("train") for t in unit["text"].values()]


def _sentencepiece(t5_layout: bool) -> bytes:
    """A unigram model on UDHR text: fairseq's layout (<unk> <s> </s>) or T5's (<pad> </s> <unk>)."""
    ids = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1) if t5_layout else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=model, model_type="unigram", vocab_size=800, hard_vocab_limit=False,
        character_coverage=1.0, max_sentence_length=1 << 16, minloglevel=2, **ids,
    )
    return model.getvalue()


def _tokenizer_files(family: str, fairseq: bytes, t5: bytes) -> tuple[str, dict, dict, dict]:
    """(tokenizer class, files, tokenizer_config entries, extra load arguments) of a family."""
    sp = spm.SentencePieceProcessor(model_proto=fairseq)
    pieces = [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())]
    if family == "nllb":
        # transformers 5 builds the NLLB tokenizer from the vocabulary alone: the codes come as extra special tokens.
        extra = {"extra_special_tokens": NLLB_CODES} if TRANSFORMERS_5 else {}
        return "NllbTokenizer", {"sentencepiece.bpe.model": fairseq}, {"src_lang": "zho_Hans"}, extra
    if family == "m2m100":
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{p: i + 4 for i, p in enumerate(pieces)}}
        return "M2M100Tokenizer", {"sentencepiece.bpe.model": fairseq, "vocab.json": json.dumps(vocab)}, {"src_lang": "zh"}, {}
    if family == "mbart50":
        return "MBart50Tokenizer", {"sentencepiece.bpe.model": fairseq}, {"src_lang": "zh_CN"}, {}
    if family == "mt5":
        return "T5Tokenizer", {"spiece.model": t5}, {"extra_ids": 0, "legacy": False}, {}
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2, **{p: i + 3 for i, p in enumerate(pieces)}}
    return "MarianTokenizer", {"source.spm": fairseq, "target.spm": fairseq, "vocab.json": json.dumps(vocab)}, {}, {}


def _model(family: str, tokenizer, vocab_size: int):
    torch.manual_seed(0)
    small = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128, vocab_size=vocab_size)
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if family in ("nllb", "m2m100"):
        return M2M100ForConditionalGeneration(M2M100Config(**small, **ids, bos_token_id=0, decoder_start_token_id=2))
    if family == "mbart50":
        return MBartForConditionalGeneration(MBartConfig(**small, **ids, bos_token_id=0, decoder_start_token_id=2))
    if family == "marian":
        return MarianMTModel(MarianConfig(**small, **ids, decoder_start_token_id=tokenizer.pad_token_id))
    return MT5ForConditionalGeneration(MT5Config(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                 num_decoder_layers=1, num_heads=2, decoder_start_token_id=0, **ids))


FAMILIES = ["nllb", "m2m100", "mbart50", "mt5", "marian"]


@pytest.fixture(scope="module")
def sentencepiece_models():
    return _sentencepiece(t5_layout=False), _sentencepiece(t5_layout=True)


@pytest.fixture(scope="module")
def baseline_dirs(sentencepiece_models, tmp_path_factory):
    """{family: a saved model directory}, each a tiny random model with its family's tokenizer."""
    root = tmp_path_factory.mktemp("baselines")
    dirs = {}
    for family in FAMILIES:
        cls, files, config, extra = _tokenizer_files(family, *sentencepiece_models)
        raw = root / f"{family}-files"
        raw.mkdir()
        for name, data in files.items():
            (raw / name).write_bytes(data) if isinstance(data, bytes) else (raw / name).write_text(data, encoding="utf-8")
        (raw / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, **config}), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(raw, **extra)
        specials = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
        lang_ids = list(getattr(tokenizer, "lang_token_to_id", {}).values())  # M2M-100's codes sit past the vocabulary
        vocab_size = 1 + max(len(tokenizer) - 1, *tokenizer.get_vocab().values(), *specials, *lang_ids)
        out = root / family
        _model(family, tokenizer, vocab_size).save_pretrained(out)
        tokenizer.save_pretrained(out)
        dirs[family] = out
    return dirs


def _mt_file(path: Path, directions: list[tuple[str, str]]) -> Path:
    units = udhr("test")[:2]
    with open(path, "w", encoding="utf-8") as f:
        for src, tgt in directions:
            for unit in units:
                record = {"src": unit["text"][src][:80], "tgt": unit["text"][tgt][:80], "src_lang": src, "tgt_lang": tgt}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _starts_with(prediction: str, code: str) -> bool:
    """Whether a prediction decoded with its special tokens starts with `code` after the start token."""
    return prediction.removeprefix("</s>").removeprefix("<pad>").removeprefix("<s>").strip().startswith(code)


# The languages each family is tested on, and the token its convention forces for each target.
CASES = {
    "nllb": ([("zh", "bo"), ("zh", "ug"), ("bo", "zh")], {"bo": "bod_Tibt", "ug": "uig_Arab", "zh": "zho_Hans"}),
    "m2m100": ([("zh", "kk"), ("kk", "zh")], {"kk": "__kk__", "zh": "__zh__"}),
    "mbart50": ([("zh", "kk"), ("zh", "mn")], {"kk": "kk_KZ", "mn": "mn_MN"}),
    "mt5": ([("zh", "bo"), ("zh", "ug")], {}),
    "marian": ([("zh", "bo")], {}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_scores_a_baseline_beside_swcm(family, baseline_dirs, tmp_path, capsys):
    directions, forced = CASES[family]
    test = _mt_file(tmp_path / "test.mt.jsonl", directions)
    out = tmp_path / "eval"
    extra = ["--source-prefix", ">>{code}<< "] if family == "marian" else []
    assert cli(["evaluate", "--model", str(baseline_dirs[family]), "--task", "mt", "--test", str(test), "--out", str(out),
                "--max-new-tokens", "4", "--max-source-length", "48", "--no-progress", *extra]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [row["lang"] for row in results["rows"]] == list(dict.fromkeys(tgt for _, tgt in directions))
    assert all(row["n"] == 2 and 0 <= row["rougeL_f"] <= 100 and 0 <= row["script_rate"] <= 100 for row in results["rows"])
    assert results["languages"]["family"] == ("prefix" if family in ("mt5", "marian") else family)
    assert results["languages"]["source_prefix"] == (">>{code}<< " if family == "marian" else None)
    assert "| language |" in capsys.readouterr().out

    # With special tokens kept, every output starts with the target's code (forced first token).
    preds = tmp_path / "preds.jsonl"
    assert cli(["generate", "--model", str(baseline_dirs[family]), "--input", str(test), "--output", str(preds),
                "--max-new-tokens", "3", "--keep-special-tokens", "--no-progress", *extra]) == 0
    for line in preds.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if forced:
            assert _starts_with(record["prediction"], forced[record["tgt_lang"]]), record
        else:
            assert not any(code in record["prediction"] for code in ("bod_Tibt", "__bo__", "uig_Arab"))


@pytest.mark.parametrize("family", ["nllb", "m2m100", "mbart50"])
def test_the_source_is_marked_with_its_language_code(family, baseline_dirs):
    from swcm.generation import load_generator

    model, tokenizer = load_generator(baseline_dirs[family], "cpu")
    languages = language_convention(model, tokenizer)
    assert languages.family == family
    languages.set_source_language(tokenizer, "kk")
    code = {"nllb": "kaz_Cyrl", "m2m100": "__kk__", "mbart50": "kk_KZ"}[family]
    ids = tokenizer("Барлық адамдар")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids(code) and ids[-1] == tokenizer.eos_token_id


def test_a_user_language_code_map_overrides_the_defaults(baseline_dirs, tmp_path):
    test = _mt_file(tmp_path / "test.jsonl", [("zh", "kk")])
    codes = tmp_path / "codes.tsv"
    codes.write_text("# NLLB has no Arabic-script Kazakh; try the Uyghur code\nkk\tuig_Arab\n", encoding="utf-8")
    assert read_language_codes(codes) == {"kk": "uig_Arab"}
    preds = tmp_path / "preds.jsonl"
    assert cli(["generate", "--model", str(baseline_dirs["nllb"]), "--input", str(test), "--output", str(preds),
                "--lang-codes", str(codes), "--max-new-tokens", "2", "--keep-special-tokens", "--no-progress"]) == 0
    assert all(_starts_with(json.loads(line)["prediction"], "uig_Arab") for line in preds.read_text(encoding="utf-8").splitlines())
    # --lang-code wins over the file; a JSON file works as well
    (tmp_path / "codes.json").write_text(json.dumps({"kk": "uig_Arab"}), encoding="utf-8")
    assert cli(["generate", "--model", str(baseline_dirs["nllb"]), "--input", str(test), "--output", str(preds),
                "--lang-codes", str(tmp_path / "codes.json"), "--lang-code", "kk=khk_Cyrl", "--max-new-tokens", "2",
                "--keep-special-tokens", "--no-progress"]) == 0
    assert _starts_with(json.loads(preds.read_text(encoding="utf-8").splitlines()[0])["prediction"], "khk_Cyrl")


def test_a_language_the_baseline_lacks_is_one_line_naming_the_record(baseline_dirs, tmp_path, capsys):
    test = _mt_file(tmp_path / "test.jsonl", [("zh", "kk"), ("zh", "bo")])  # mBART-50 has no Tibetan
    preds = tmp_path / "preds.jsonl"
    args = ["generate", "--model", str(baseline_dirs["mbart50"]), "--input", str(test), "--output", str(preds), "--no-progress"]
    assert cli(args) == 2
    # (the last line: transformers 5 draws a weight-loading progress bar above it)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"swcm generate: error: {test}:3: no mbart50 language code for 'bo'; give one with --lang-code bo=CODE"
    assert not preds.exists()
    assert cli([*args, "--lang-code", "bo=xx_XX"]) == 2  # a code the tokenizer does not have
    assert "the model has no language code xx_XX (for 'bo')" in capsys.readouterr().err
    assert cli([*args, "--lang-code", "bo"]) == 2
    assert "--lang-code 'bo': expected LANG=CODE" in capsys.readouterr().err


def test_conventions_by_hand():
    nllb = LanguageConvention("nllb", DEFAULT_CODES["nllb"])
    assert [nllb.code(lang) for lang in ("zh", "bo", "ug", "kk", "mn", "en")] == [
        "zho_Hans", "bod_Tibt", "uig_Arab", "kaz_Cyrl", "khk_Cyrl", "eng_Latn"]
    prefix = LanguageConvention("prefix", {"bo": "bod"}, source_prefix=">>{code}<< ")
    assert prefix.source_text("ཀ", "bo") == ">>bod<< ཀ" and prefix.source_text("a", "zh") == ">>zh<< a"
    assert LanguageConvention("prefix").source_text("a", "bo") == "a"
    with pytest.raises(ValueError, match="unknown model family"):
        LanguageConvention("gpt")
