"""The precision a run computes in: chosen by the hardware, overridden by a flag or accelerate's
configuration, printed and logged."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from swcm.encoders.tiny_encoder import train_tiny_encoder
from swcm.generation import load_generator
from swcm.modeling import SWCMForConditionalGeneration
from swcm.precision import (
    ACCELERATE_ENV,
    BF16_MIN_SPEEDUP,
    auto_mixed_precision,
    choose_mixed_precision,
    matmul_gflops,
    resolve_dtype,
    resolve_mixed_precision,
)
from swcm.resources import udhr
from swcm.training import TrainingConfig, train


@pytest.fixture(autouse=True)
def no_accelerate_configuration(monkeypatch):
    monkeypatch.delenv(ACCELERATE_ENV, raising=False)


# --- the decision ------------------------------------------------------------------------


def test_cpu_with_fast_bf16_gets_bf16():
    # An Intel Xeon with AMX, as measured here: bf16 690-805 GFLOP/s, fp32 192-198.
    choice = choose_mixed_precision("cpu", bf16_gflops=750.0, fp32_gflops=195.0)
    assert choice.mixed_precision == "bf16" and choice.dtype == torch.bfloat16
    assert "750" in choice.reason and "195" in choice.reason


def test_cpu_with_slow_bf16_gets_fp32():
    # An AMD EPYC without AVX512-BF16: bf16 emulated at ~1 GFLOP/s against 150-170 in fp32.
    choice = choose_mixed_precision("cpu", bf16_gflops=1.0, fp32_gflops=160.0)
    assert choice.mixed_precision == "no" and choice.dtype == torch.float32
    # Barely faster is not enough: autocast's casts would eat the gain.
    assert choose_mixed_precision("cpu", bf16_gflops=1.2 * 160, fp32_gflops=160.0).mixed_precision == "no"
    assert choose_mixed_precision("cpu", bf16_gflops=BF16_MIN_SPEEDUP * 160, fp32_gflops=160.0).mixed_precision == "bf16"


def test_devices_without_bf16_get_fp32_and_gpus_with_it_bf16():
    assert choose_mixed_precision("cpu", bf16_supported=False).mixed_precision == "no"
    assert choose_mixed_precision("cuda", bf16_supported=False).mixed_precision == "no"  # e.g. a V100: fp16 on request only
    assert choose_mixed_precision("cuda", bf16_supported=True).mixed_precision == "bf16"
    with pytest.raises(ValueError, match="matmul rates"):
        choose_mixed_precision("cpu")


def test_the_probe_measures_this_machine():
    fp32 = matmul_gflops(torch.float32, size=64, budget_s=0.01)
    assert fp32 > 0
    choice = auto_mixed_precision("cpu")
    assert choice.mixed_precision in ("no", "bf16") and "cpu" in choice.reason.lower()
    assert auto_mixed_precision("cpu") is choice  # measured once per process


def test_a_flag_wins_over_accelerate_configuration_which_wins_over_the_hardware(monkeypatch):
    hardware = auto_mixed_precision("cpu").mixed_precision
    assert resolve_mixed_precision("auto", "cpu").mixed_precision == hardware
    other = "no" if hardware == "bf16" else "bf16"
    monkeypatch.setenv(ACCELERATE_ENV, other)
    assert resolve_mixed_precision("auto", "cpu") == (other, f"accelerate configuration ({ACCELERATE_ENV})")
    assert resolve_mixed_precision(hardware, "cpu").mixed_precision == hardware
    assert resolve_dtype("auto", "cpu") == {"no": torch.float32, "bf16": torch.bfloat16}[other]
    assert resolve_dtype("float32", "cpu") == torch.float32
    monkeypatch.setenv(ACCELERATE_ENV, "int8")
    with pytest.raises(ValueError, match=ACCELERATE_ENV):
        resolve_mixed_precision("auto", "cpu")
    with pytest.raises(ValueError, match="mixed precision"):
        resolve_mixed_precision("fp8")


# --- where it is used --------------------------------------------------------------------


def _examples(tokenizer, n=8):
    texts = [unit["text"]["en"] for unit in udhr("train")[:n]]
    ids = tokenizer(texts, truncation=True, max_length=24)["input_ids"]
    return [{"input_ids": x, "labels": x} for x in ids]


def _collate(tokenizer):
    def pad(examples):
        n = max(len(e["input_ids"]) for e in examples)
        ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (n - len(e["input_ids"])) for e in examples])
        labels = ids.masked_fill(ids == tokenizer.pad_token_id, -100)
        return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(), "labels": labels}

    return pad


@pytest.mark.parametrize("configured, flag, expected", [("bf16", "auto", "bf16"), ("no", "auto", "no"), ("bf16", "no", "no")])
def test_training_follows_accelerate_configuration_unless_a_flag_is_given(
    tmp_path, tiny_encoder_dir, monkeypatch, capfd, configured, flag, expected
):
    monkeypatch.setenv(ACCELERATE_ENV, configured)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    config = TrainingConfig(out_dir=tmp_path, max_steps=2, batch_size=4, log_every=1, progress=False, mixed_precision=flag)
    result = train(model, tokenizer, _examples(tokenizer), config, _collate(tokenizer))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["mixed_precision"] for r in records] == [expected, expected]
    assert f"mixed precision: {expected}" in capfd.readouterr().err
    assert result.step == 2


def test_training_default_is_the_hardware_choice(tmp_path, tiny_encoder_dir, capfd):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    config = TrainingConfig(out_dir=tmp_path, max_steps=1, batch_size=4, progress=False)
    assert config.mixed_precision == "auto"
    train(model, tokenizer, _examples(tokenizer), config, _collate(tokenizer))
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    hardware = auto_mixed_precision("cpu")
    assert record["mixed_precision"] == hardware.mixed_precision
    assert hardware.reason in capfd.readouterr().err


def test_stand_in_encoder_trains_in_the_precision_asked_for(tmp_path):
    texts = [t for unit in udhr("train")[:20] for t in unit["text"].values()]
    tiny = dict(steps=2, hidden=32, layers=1, heads=2, vocab_size=1000, batch_size=4, max_length=32, progress=False)
    fp32 = train_tiny_encoder(texts, tmp_path / "fp32", mixed_precision="no", **tiny)
    bf16 = train_tiny_encoder(texts, tmp_path / "bf16", mixed_precision="bf16", **tiny)
    auto = train_tiny_encoder(texts, tmp_path / "auto", **tiny)
    record = {name: json.loads((d / "tiny_encoder.json").read_text()) for name, d in
              [("fp32", fp32), ("bf16", bf16), ("auto", auto)]}
    assert record["fp32"]["mixed_precision"] == "no" and record["bf16"]["mixed_precision"] == "bf16"
    assert record["auto"]["mixed_precision"] == auto_mixed_precision("cpu").mixed_precision
    # Autocast was really on for bf16 and off for fp32: the first losses differ, slightly.
    first = {name: r["loss"]["first"] for name, r in record.items()}
    assert first["fp32"] != first["bf16"] and first["fp32"] == pytest.approx(first["bf16"], rel=0.02)
    with pytest.raises(ValueError, match="mixed_precision"):
        train_tiny_encoder(texts, tmp_path / "bad", mixed_precision="fp8", **tiny)


def test_generation_loads_in_the_dtype_asked_for(tmp_path, tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for dtype, expected in [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                            ("auto", auto_mixed_precision("cpu").dtype)]:
        model, _ = load_generator(tmp_path, "cpu", dtype)
        assert {p.dtype for p in model.parameters()} == {expected}
