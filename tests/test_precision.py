"""The precision a run computes in: chosen by the hardware, overridden by a flag or accelerate's
configuration, printed and logged."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, XLMRobertaForMaskedLM

from swcm.encoders.tiny_encoder import train_tiny_encoder
from swcm.finetuning import FinetuneSettings, finetune
from swcm.generation import load_generator
from swcm.io import save_model_dir
from swcm.modeling import SWCMForConditionalGeneration
from swcm.precision import (
    ACCELERATE_ENV,
    BF16_MIN_SPEEDUP,
    auto_mixed_precision,
    choose_by_step_probe,
    choose_by_step_times,
    choose_mixed_precision,
    cpu_has_bf16_instructions,
    matmul_gflops,
    resolve_dtype,
    resolve_mixed_precision,
    step_probe_file,
    step_probe_key,
)
from swcm.pretraining import PretrainSettings, pretrain
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


def test_devices_without_bf16_get_fp32():
    assert choose_mixed_precision("cpu", bf16_supported=False).mixed_precision == "no"
    assert choose_mixed_precision("mps", bf16_supported=False).mixed_precision == "no"
    assert choose_mixed_precision("xpu", bf16_supported=True).mixed_precision == "bf16"
    with pytest.raises(ValueError, match="matmul rates"):
        choose_mixed_precision("cpu")


@pytest.mark.parametrize("gpu, capability, expected", [
    ("NVIDIA H100 80GB HBM3", (9, 0), "bf16"),
    ("NVIDIA L4", (8, 9), "bf16"),
    ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16"),
    ("Tesla T4", (7, 5), "fp16"),  # the free Colab GPU: bf16 would be emulated
    ("Tesla V100-SXM2-16GB", (7, 0), "fp16"),
    ("Tesla P100-PCIE-16GB", (6, 0), "no"),  # no tensor cores
])
def test_gpus_get_bf16_only_where_it_is_native(gpu, capability, expected):
    choice = choose_mixed_precision("cuda", compute_capability=capability, device_name=gpu)
    assert choice.mixed_precision == expected
    assert f"{gpu}, compute capability {capability[0]}.{capability[1]}" in choice.reason
    assert choice.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[expected]
    # whatever torch would accept: the capability alone decides
    assert choose_mixed_precision("cuda", bf16_supported=True, compute_capability=capability).mixed_precision == expected
    with pytest.raises(ValueError, match="compute capability"):
        choose_mixed_precision("cuda", bf16_supported=True)


@pytest.mark.cuda
def test_this_gpu_gets_the_choice_for_its_capability():
    choice = auto_mixed_precision("cuda")
    assert choice == choose_mixed_precision("cuda", compute_capability=torch.cuda.get_device_capability(),
                                            device_name=torch.cuda.get_device_name())
    assert resolve_dtype("auto", "cuda") == choice.dtype


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


def test_the_step_probe_takes_the_faster_precision_and_caches_it(tmp_path):
    assert choose_by_step_times(0.4, 0.5, "here").mixed_precision == "bf16"
    assert choose_by_step_times(0.6, 0.5, "here").mixed_precision == "no"
    calls = []

    def time_step(dtype):  # a step whose bf16 takes 2 "seconds" and fp32 3
        calls.append(dtype)
        return {torch.bfloat16: 2.0, torch.float32: 3.0}[dtype]

    cache = tmp_path / "probe.json"
    choice = choose_by_step_probe(time_step, "shape A", cache)
    assert choice.mixed_precision == "bf16" and "2.000 s in bf16 vs 3.000 s in fp32" in choice.reason
    assert str(cache) in choice.reason
    assert calls.count(torch.bfloat16) == calls.count(torch.float32) == 3  # a warm-up and two timed passes each
    entry = json.loads(cache.read_text())[step_probe_key("shape A")]
    assert (entry["bf16_s"], entry["fp32_s"]) == (2.0, 3.0)
    # Cached: not measured again; another shape is measured, and both stay in the file.
    assert choose_by_step_probe(time_step, "shape A", cache).mixed_precision == "bf16" and len(calls) == 6
    assert "measured before" in choose_by_step_probe(time_step, "shape A", cache).reason
    slow_bf16 = choose_by_step_probe(lambda dtype: {torch.bfloat16: 5.0, torch.float32: 1.0}[dtype], "shape B", cache)
    assert slow_bf16.mixed_precision == "no"
    assert set(json.loads(cache.read_text())) == {step_probe_key("shape A"), step_probe_key("shape B")}
    cache.write_text("not json")  # measured over, and rewritten
    assert choose_by_step_probe(time_step, "shape A", cache).mixed_precision == "bf16" and len(calls) == 12
    assert step_probe_key("shape A") in json.loads(cache.read_text())


def _log_precisions(out):
    return [json.loads(line)["mixed_precision"] for line in (out / "log.jsonl").read_text().splitlines()
            if "mixed_precision" in line]


@pytest.mark.skipif(not cpu_has_bf16_instructions(), reason="this CPU runs bf16 emulated: fp32 without a probe")
def test_training_auto_times_its_own_step_once_per_machine_and_shape(tmp_path, tiny_encoder_dir, monkeypatch, capfd):
    monkeypatch.setenv("SWCM_CACHE", str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    config = TrainingConfig(out_dir=tmp_path / "first", max_steps=1, batch_size=4, progress=False)
    assert config.mixed_precision == "auto"
    train(model, tokenizer, _examples(tokenizer), config, _collate(tokenizer))
    probes = json.loads(step_probe_file().read_text())
    (key, entry), = probes.items()
    assert "SWCMForConditionalGeneration" in key and "4 examples" in key
    measured = "bf16" if entry["bf16_s"] < entry["fp32_s"] else "no"
    err = capfd.readouterr().err
    assert f"mixed precision: {measured} (step probe: " in err and str(step_probe_file()) in err
    assert _log_precisions(tmp_path / "first") == [measured]
    # The next run of this shape reads the verdict: rewrite it, and the run follows the file.
    other = "no" if measured == "bf16" else "bf16"
    entry.update(bf16_s=1.0, fp32_s=2.0) if other == "bf16" else entry.update(bf16_s=2.0, fp32_s=1.0)
    step_probe_file().write_text(json.dumps(probes))
    train(model, tokenizer, _examples(tokenizer), dataclasses.replace(config, out_dir=tmp_path / "second"),
          _collate(tokenizer))
    assert f"mixed precision: {other} (step probe: " in capfd.readouterr().err
    assert _log_precisions(tmp_path / "second") == [other]


def test_an_explicit_precision_skips_the_step_probe(tmp_path, tiny_encoder_dir, monkeypatch, capfd):
    monkeypatch.setenv("SWCM_CACHE", str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    config = TrainingConfig(out_dir=tmp_path / "run", max_steps=1, batch_size=4, progress=False, mixed_precision="no")
    train(model, tokenizer, _examples(tokenizer), config, _collate(tokenizer))
    assert not step_probe_file().exists()
    assert "mixed precision: no (asked for)" in capfd.readouterr().err


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


# --- trainable weights are fp32, whatever the checkpoint's dtype ---------------------------


def stored_dtypes(directory) -> set[str]:
    """The dtypes in a directory's model.safetensors, as safetensors names them ("F32", "BF16")."""
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return {f.get_slice(key).get_dtype() for key in f.keys()}


def assert_trained_in_fp32(out, step):
    assert stored_dtypes(out / "final") == {"F32"}
    optimizer = torch.load(out / "checkpoints" / f"step-{step}" / "optimizer.pt", weights_only=True)
    moments = {v.dtype for state in optimizer["state"].values() for k, v in state.items() if k.startswith("exp_avg")}
    assert moments == {torch.float32}


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_encoder_dir, tmp_path_factory):
    """An SWCM model saved in bf16 (safetensors), as a half-precision checkpoint is."""
    out = tmp_path_factory.mktemp("bf16") / "model"
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).to(torch.bfloat16)
    save_model_dir(model, AutoTokenizer.from_pretrained(tiny_encoder_dir), out)
    assert stored_dtypes(out) == {"BF16"}
    # what transformers 5 loads by default ("auto": the stored dtype)
    assert {p.dtype for p in AutoModelForSeq2SeqLM.from_pretrained(out, dtype="auto").parameters()} == {torch.bfloat16}
    return out


def test_a_model_built_from_a_bf16_encoder_is_fp32(tmp_path, tiny_encoder_dir):
    encoder = XLMRobertaForMaskedLM.from_pretrained(tiny_encoder_dir).to(torch.bfloat16)
    encoder.save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(tmp_path)
    assert stored_dtypes(tmp_path) == {"BF16"}
    for source in (tmp_path, encoder):  # a directory, or a model in memory
        model = SWCMForConditionalGeneration.from_encoder(source)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        embeddings = encoder.base_model.embeddings.word_embeddings.weight
        assert torch.equal(model.get_input_embeddings().weight, embeddings.float())  # the encoder's values, exactly
        # the config it carries builds fp32 too (its encoder part does not keep the encoder's bf16)
        assert {p.dtype for p in SWCMForConditionalGeneration(model.config).parameters()} == {torch.float32}


def test_pretraining_a_bf16_checkpoint_trains_fp32_weights(tmp_path, bf16_model_dir):
    text = tmp_path / "en.txt"
    text.write_text("".join(u["text"]["en"] + "\n" for u in udhr("train")[:20]), encoding="utf-8")
    (tmp_path / "out").mkdir()  # as `swcm pretrain` makes it: the census is kept there from the start
    config = TrainingConfig(out_dir=tmp_path / "out", max_steps=2, batch_size=2, save_every=2, progress=False)
    settings = PretrainSettings(mono=[f"en={text}"], max_source_length=32, max_target_length=32)
    assert pretrain(bf16_model_dir, config, settings).step == 2
    assert_trained_in_fp32(tmp_path / "out", 2)


def test_finetuning_a_bf16_checkpoint_trains_fp32_weights(tmp_path, bf16_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"src": u["text"]["zh"][:40], "tgt": u["text"]["bo"][:60], "src_lang": "zh",
                                        "tgt_lang": "bo"}, ensure_ascii=False) + "\n" for u in udhr("train")[:8]),
                    encoding="utf-8")
    config = TrainingConfig(out_dir=tmp_path / "out", max_steps=2, batch_size=4, save_every=2, progress=False)
    settings = FinetuneSettings(task="mt", max_source_length=32, max_target_length=32)
    assert finetune(bf16_model_dir, data, None, config, settings).step == 2
    assert_trained_in_fp32(tmp_path / "out", 2)


def test_the_training_loop_trains_a_bf16_model_in_fp32(tmp_path, bf16_model_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(bf16_model_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(bf16_model_dir)
    before = model.get_input_embeddings().weight.detach().float().clone()
    config = TrainingConfig(out_dir=tmp_path, max_steps=2, batch_size=4, lr=1e-3, progress=False)
    train(model, tokenizer, _examples(tokenizer), config, _collate(tokenizer))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    after = model.get_input_embeddings().weight.detach()
    # trained: steps of about lr (1e-3), which bf16's 8-bit mantissa could not hold for most weights
    assert not torch.equal(after, before)
    assert after.to(torch.bfloat16).float().ne(after).float().mean() > 0.5


@pytest.mark.cuda
def test_training_on_this_gpu_in_its_precision(tmp_path, bf16_model_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(bf16_model_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(bf16_model_dir)
    config = TrainingConfig(out_dir=tmp_path, max_steps=3, batch_size=4, log_every=1, save_every=3, progress=False)
    result = train(model, tokenizer, _examples(tokenizer), config, _collate(tokenizer))
    choice = auto_mixed_precision("cuda")
    assert [r["mixed_precision"] for r in result.history] == [choice.mixed_precision] * 3
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert {(p.dtype, p.device.type) for p in model.parameters()} == {(torch.float32, "cuda")}
    # fp16 (a T4 or V100) trains with a loss scaler, whose state the checkpoint keeps
    assert (tmp_path / "checkpoints" / "step-3" / "scaler.pt").exists() == (choice.mixed_precision == "fp16")
