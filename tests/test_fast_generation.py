"""The fast decoding path (`swcm.fast_generation.FastSWCM`) against `model.generate()`, on tiny
real SWCM models: in float32 the same token ids, greedy and beam search, with the forced
language tag, no_repeat_ngram_size, minimum lengths and padded batches; int8 decodes too."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from swcm.cli import main
from swcm.fast_generation import FastSWCM
from swcm.generation import generate_sequences, load_generator
from swcm.io import save_model_dir
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr
from swcm.tokenization import add_language_tags, language_tag

LANGS = ["zh", "ug", "kk", "mn", "en"]


@pytest.fixture(scope="module")
def trained(tiny_encoder_dir, teach_to_echo):
    """A tiny SWCM model (decoder C C N C C) taught for a few steps to echo UDHR sentences, so
    that it ends its outputs with </s> at different lengths, as a real model does."""
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(str(tiny_encoder_dir), insert_every=2, lm_head="tied")
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    add_language_tags(model, tokenizer, LANGS)
    teach_to_echo(model, tokenizer, LANGS, steps=40)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def mlm_head(tiny_encoder_dir):
    """An untrained tiny SWCM model with the encoder's masked-LM head (the default X = 3)."""
    torch.manual_seed(1)
    model = SWCMForConditionalGeneration.from_encoder(str(tiny_encoder_dir), lm_head="mlm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    add_language_tags(model, tokenizer, LANGS)
    return model.eval(), tokenizer


def batches(tokenizer, size=4):
    """Padded batches of UDHR sentences in several languages, each with a target tag."""
    texts = [u["text"][lang] for u in udhr("test")[:3] for lang in LANGS]
    out = []
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i : i + size], return_tensors="pt", padding=True, truncation=True, max_length=24)
        enc.pop("token_type_ids", None)
        tag = tokenizer.convert_tokens_to_ids(language_tag(LANGS[(i // size) % len(LANGS)]))
        out.append((dict(enc), tag))
    return out


OPTIONS = {
    "greedy": {},
    "greedy-ngram-min": {"no_repeat_ngram_size": 2, "min_new_tokens": 3},
    "beam": {"num_beams": 3},
    "beam-ngram-penalty-return": {"num_beams": 3, "no_repeat_ngram_size": 2, "length_penalty": 1.3,
                                  "num_return_sequences": 2},
    "beam-early-stopping": {"num_beams": 4, "early_stopping": True, "length_penalty": 0.7},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("which", ["trained", "mlm_head"])
def test_fp32_outputs_are_generate_s_token_for_token(which, options, request):
    model, tokenizer = request.getfixturevalue(which)
    fast = FastSWCM(model)
    for enc, tag in batches(tokenizer):
        kwargs = {"forced_bos_token_id": tag, "max_new_tokens": 12, **options}
        expected = model.generate(**enc, **kwargs)
        got = fast.generate(**enc, **kwargs)
        assert got.tolist() == expected.tolist()
        assert (got[:, 1] == tag).all()


def test_the_self_attention_cache_grows_past_its_first_size(trained):
    model, tokenizer = trained
    enc, tag = batches(tokenizer, size=2)[0]
    kwargs = {"forced_bos_token_id": tag, "min_new_tokens": 70, "max_new_tokens": 70}
    for options in ({}, {"num_beams": 2}):
        got = FastSWCM(model).generate(**enc, **kwargs, **options)
        assert got.shape[1] == 71
        assert got.tolist() == model.generate(**enc, **kwargs, **options).tolist()


def test_generate_sequences_takes_the_fast_engine_in_place_of_the_model(trained):
    model, tokenizer = trained
    sources = [u["text"]["en"] for u in udhr("test")[:6]]
    targets = ["zh", "ug", "kk", "mn", "zh", "ug"]
    options = {"batch_size": 4, "max_new_tokens": 10, "num_beams": 2, "progress": False}
    fast = FastSWCM(model)
    assert generate_sequences(fast, tokenizer, sources, targets, **options) == generate_sequences(
        model, tokenizer, sources, targets, **options)
    assert not model.training and not fast.training


def test_int8_decodes_with_the_forced_tag(trained):
    model, tokenizer = trained
    int8 = FastSWCM(model, quantize="int8")
    for options in ({}, {"num_beams": 3, "no_repeat_ngram_size": 2}):
        for enc, tag in batches(tokenizer)[:2]:
            out = int8.generate(**enc, forced_bos_token_id=tag, max_new_tokens=12, **options)
            assert out.shape[0] == enc["input_ids"].shape[0] and 2 < out.shape[1] <= 13
            assert (out[:, 0] == model.config.decoder_start_token_id).all() and (out[:, 1] == tag).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is left as it was


def test_what_the_fast_engine_cannot_do_is_one_clear_error(trained, tmp_path):
    model, tokenizer = trained
    enc, tag = batches(tokenizer)[0]
    with pytest.raises(ValueError, match="do_sample"):
        FastSWCM(model).generate(**enc, do_sample=True)
    with pytest.raises(ValueError, match="num_return_sequences"):
        FastSWCM(model).generate(**enc, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="quantize"):
        FastSWCM(model, quantize="int4")
    with pytest.raises(ValueError, match="position table"):
        FastSWCM(model).generate(**enc, max_new_tokens=10_000)


def test_cli_generate_with_the_fast_engine(trained, tmp_path, capsys):
    model, tokenizer = trained
    model_dir = save_model_dir(model, tokenizer, tmp_path / "model")
    records = [{"src": u["text"]["zh"], "tgt": u["text"]["ug"], "src_lang": "zh", "tgt_lang": "ug"}
               for u in udhr("test")[:5]]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    common = ["generate", "--model", str(model_dir), "--input", str(src), "--max-new-tokens", "8", "--num-beams", "2",
              "--no-progress", "--device", "cpu", "--dtype", "float32"]
    predictions = {}
    for name, flags in {"transformers": [], "fast": ["--engine", "fast"],
                        "int8": ["--engine", "fast", "--quantize", "int8"]}.items():
        out = tmp_path / f"{name}.jsonl"
        assert main([*common, "--output", str(out), *flags]) == 0
        predictions[name] = [json.loads(line)["prediction"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert predictions["fast"] == predictions["transformers"]
    assert len(predictions["int8"]) == len(records)
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "x.jsonl"), "--quantize", "int8"]) == 2
    assert "--quantize int8 needs --engine fast" in capsys.readouterr().err
    assert main([*common, "--output", str(tmp_path / "x.jsonl"), "--engine", "fast", "--do-sample"]) == 2
    assert "sampling needs --engine transformers" in capsys.readouterr().err


def test_load_generator_wraps_swcm_models_only_for_the_fast_engine(trained, tmp_path):
    model, tokenizer = trained
    model_dir = save_model_dir(model, tokenizer, tmp_path / "model")
    fast, _ = load_generator(model_dir, "cpu", "float32", engine="fast")
    assert isinstance(fast, FastSWCM) and fast.quantize is None
    plain, _ = load_generator(model_dir, "cpu", "float32")
    assert isinstance(plain, SWCMForConditionalGeneration)
    with pytest.raises(ValueError, match="needs the fast engine"):
        load_generator(model_dir, "cpu", "float32", quantize="int8")
