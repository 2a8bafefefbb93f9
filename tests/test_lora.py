"""LoRA through peft on a tiny real model: train, save the adapter alone, resume, merge, generate,
evaluate and the fast engine on the adapter directory."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402

from swcm import SWCMForConditionalGeneration  # noqa: E402
from swcm.cli import main as cli  # noqa: E402
from swcm.generation import generate_texts, load_generator  # noqa: E402
from swcm.io import save_model_dir  # noqa: E402
from swcm.lora import LoraSettings, apply_lora, parameter_counts, target_modules  # noqa: E402
from swcm.tokenization import add_language_tags  # noqa: E402

from test_finetuning import TARGETS, write_mt  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory):
    """A built model with tags for the data's languages (LoRA keeps the vocabulary as it is)."""
    out = tmp_path_factory.mktemp("built")
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    add_language_tags(model, tokenizer, ["zh", *TARGETS])
    save_model_dir(model, tokenizer, out)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_mt(folder / "train.jsonl", "train", limit=12), write_mt(folder / "valid.jsonl", "valid", limit=2)


def lora_finetune(model_dir, data, out, *extra, steps=8):
    train, valid = data
    return cli(["finetune", "--task", "mt", "--model", str(model_dir), "--train", str(train), "--valid", str(valid),
                "--out", str(out), "--max-steps", str(steps), "--batch-size", "8", "--lr", "5e-3", "--eval-every", "4",
                "--max-new-tokens", "6", "--log-every", "2", "--no-progress", "--max-target-length", "32",
                "--report-to", "none", "--lora", "--lora-r", "4", *extra])


@pytest.fixture(scope="module")
def trained(model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "ft"
    assert lora_finetune(model_dir, data, out, "--save-every", "4", "--keep-last", "3") == 0
    return out


def test_adapters_on_the_projections_normal_layers_in_full(model_dir):
    model = SWCMForConditionalGeneration.from_pretrained(model_dir)
    normal = [i for i, kind in enumerate(model.config.decoder_layer_types) if kind == "normal"]
    assert normal  # 4 encoder layers, a Normal layer after every 3 Custom ones
    names = target_modules(model, LoraSettings(lora=True), [f"decoder.layers.{i}" for i in normal])
    assert "encoder.encoder.layer.0.attention.self.query" in names and "encoder.encoder.layer.3.output.dense" in names
    assert "decoder.layers.0.cross_attn.output" in names and "decoder.layers.0.ffn_b.intermediate" in names
    assert not [n for n in names if n.startswith(f"decoder.layers.{normal[0]}.") or n.startswith("lm_head")]
    only_attention = target_modules(model, LoraSettings(lora=True, lora_targets="self.query,self.value"), [])
    assert only_attention == [f"encoder.encoder.layer.{i}.attention.self.{p}" for i in range(4) for p in ("query", "value")]
    peft_model = apply_lora(model, LoraSettings(lora=True, lora_r=4), model_dir)  # wraps `model` in place
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or f"decoder.layers.{normal[0]}." in n for n in trainable)
    assert any(f"decoder.layers.{normal[0]}.modules_to_save" in n for n in trainable)
    count, total = parameter_counts(peft_model)
    assert 0 < count < total / 2


def test_finetune_lora_trains_and_saves_the_adapter_alone(trained, model_dir):
    log = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    for folder in (trained / "final", trained / "best", trained / "checkpoints" / "step-4"):
        files = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
        assert "model.safetensors" not in files
    adapter = load_file(trained / "final" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter)
    assert "base_model.model.decoder.layers.3.ffn.intermediate.weight" in adapter  # the Normal layer, whole
    base_size = (model_dir / "model.safetensors").stat().st_size
    assert (trained / "final" / "adapter_model.safetensors").stat().st_size < base_size / 2
    config = json.loads((trained / "final" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(model_dir.resolve())


def test_resume_mid_run_ends_with_the_same_adapter(trained, model_dir, data, tmp_path):
    out = tmp_path / "ft"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "checkpoints" / "step-8")  # the run "died" after step 4's checkpoint
    shutil.rmtree(out / "final")
    assert lora_finetune(model_dir, data, out, "--save-every", "4", "--keep-last", "3", "--resume") == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2, 4, 6, 8]
    resumed, straight = (load_file(d / "final" / "adapter_model.safetensors") for d in (out, trained))
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], msg=key, rtol=0, atol=1e-6)


def test_merged_weights_compute_what_base_plus_adapter_computes(trained, model_dir, tmp_path, capsys):
    merged_dir = tmp_path / "merged"
    assert cli(["merge", str(trained / "final"), "--out", str(merged_dir)]) == 0
    merged = AutoModelForSeq2SeqLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    wrapped = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(model_dir), str(trained / "final")).eval()
    base = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    batch = {"input_ids": torch.tensor([[0, 15, 27, 99, 2]]), "decoder_input_ids": torch.tensor([[0, 7, 8]])}
    with torch.no_grad():
        want, got, before = (m(**batch).logits for m in (wrapped, merged, base))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, before, atol=1e-3)  # the adapter changed what it computes
    assert (merged_dir / "README.md").is_file()


def test_generate_evaluate_and_fast_engine_load_the_adapter(trained, tmp_path, data):
    sources = ["人人生而自由", "在尊严和权利上一律平等"]
    outputs = {}
    for engine in ("transformers", "fast"):
        model, tokenizer = load_generator(trained / "best", device="cpu", dtype="float32", engine=engine)
        outputs[engine] = generate_texts(model, tokenizer, sources, ["bo", "ug"], max_new_tokens=6, progress=False)
    assert outputs["fast"] == outputs["transformers"]
    merged_dir = tmp_path / "merged"
    assert cli(["merge", str(trained / "best"), "--out", str(merged_dir)]) == 0
    model, tokenizer = load_generator(merged_dir, device="cpu", dtype="float32")
    assert generate_texts(model, tokenizer, sources, ["bo", "ug"], max_new_tokens=6, progress=False) == outputs["transformers"]
    _, valid = data
    assert cli(["evaluate", "--model", str(trained / "best"), "--task", "mt", "--test", str(valid), "--out",
                str(tmp_path / "eval"), "--max-new-tokens", "6", "--no-progress", "--dtype", "float32"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {row["lang"] for row in results["rows"]} == set(TARGETS)


def test_bad_lora_input_is_one_line(model_dir, data, tmp_path, tiny_encoder_dir, capsys):
    assert lora_finetune(model_dir, data, tmp_path / "a", "--lora-targets", "query,q_proj") == 2
    assert "--lora-targets: 'q_proj' names no linear layer" in capsys.readouterr().err
    assert lora_finetune(model_dir, data, tmp_path / "b", "--lora-full", "normal,everything") == 2
    assert "lora_full: unknown 'everything'" in capsys.readouterr().err
    untagged = tmp_path / "untagged"  # a model without tags for the data's languages
    save_model_dir(SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir), AutoTokenizer.from_pretrained(tiny_encoder_dir), untagged)
    assert lora_finetune(untagged, data, tmp_path / "c") == 2
    assert "has no language tag for bo, ug" in capsys.readouterr().err
    assert cli(["merge", str(model_dir), "--out", str(tmp_path / "m")]) == 2
    assert "no adapter_config.json, so not a LoRA adapter directory" in capsys.readouterr().err


def test_experiment_file_keys_fine_tune_with_lora_and_report(tiny_encoder_dir, tmp_path):
    from huggingface_hub import ModelCard

    from swcm.experiments import load_experiment, run_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(
        f"name: tiny-lora\nencoder: {tiny_encoder_dir}\ndata: udhr\n"
        "finetune: {max_steps: 2, batch_size: 8, eval_every: 2, max_valid_examples: 4, max_source_length: 48,"
        " max_target_length: 32, lora: true, lora_r: 2, lora_targets: 'query,value', report_to: tensorboard}\n"
        "generate: {max_new_tokens: 3, max_source_length: 48}\n"
        "grid:\n  objectives: [none]\n  train_size: [16]\n"
    )
    [result] = run_experiment(load_experiment(path), tmp_path / "out", progress=False)["results"]
    model = tmp_path / "out" / "runs" / "ws-x3-none-n16-s0" / "finetune" / "best"
    assert result["model"] == str(model) and result["rows"]
    config = json.loads((model / "adapter_config.json").read_text())
    assert config["r"] == 2 and not (model / "model.safetensors").exists()
    assert list((model.parent / "tensorboard").glob("events.out.tfevents.*"))
    card = ModelCard.load(model / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags and "rank 2" in card.text
    assert len([r for r in card.data.eval_results if r.metric_type == "chrf"]) == len(result["rows"])


def test_tied_embeddings_and_head_train_in_full_and_stay_tied(tiny_encoder_dir):
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, lm_head="tied")
    before = model.get_input_embeddings().weight.detach().clone()
    with pytest.raises(ValueError, match="tied to its word embeddings"):
        apply_lora(SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, lm_head="tied"),
                   LoraSettings(lora=True, lora_full="normal,head"), tiny_encoder_dir)
    peft_model = apply_lora(model, LoraSettings(lora=True, lora_full="normal,embeddings,head"), tiny_encoder_dir)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    batch = {"input_ids": torch.tensor([[0, 15, 27, 99, 2]]), "decoder_input_ids": torch.tensor([[0, 7, 8]]),
             "labels": torch.tensor([[7, 8, 2]])}
    peft_model(**batch).loss.backward()
    optimizer.step()
    merged = peft_model.merge_and_unload()
    embeddings, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert torch.equal(head, embeddings) and not torch.equal(embeddings, before)
