"""What swcm trains under with several processes: DDP. FSDP and DeepSpeed are refused in one
line, whether asked for by `accelerate launch` or by an accelerator; how long a rank waits for
the others is a setting (SWCM_DIST_TIMEOUT)."""

import json
from datetime import timedelta

import pytest
import torch
from accelerate.utils import DistributedType
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from swcm.building import build_model_dir
from swcm.cli import main as cli
from swcm.distributed import LAUNCH_FLAGS, TIMEOUT_ENV, process_group_kwargs, process_group_timeout, refuse_unsupported_parallelism
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr
from swcm.training import TrainingConfig, train


@pytest.fixture(autouse=True)
def plain_launch(monkeypatch):
    for flag in (*LAUNCH_FLAGS.values(), TIMEOUT_ENV):
        monkeypatch.delenv(flag, raising=False)


@pytest.mark.parametrize("kind", sorted(LAUNCH_FLAGS))
def test_fsdp_and_deepspeed_are_refused_in_one_line(tmp_path, tiny_encoder_dir, monkeypatch, kind):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
    examples = [{"input_ids": ids, "labels": ids} for ids in tokenizer(["a b c", "d e f"])["input_ids"]]
    config = TrainingConfig(out_dir=tmp_path, max_steps=1, batch_size=2, progress=False)
    monkeypatch.setenv(LAUNCH_FLAGS[kind], "true")  # what `accelerate launch` sets when told to use it
    with pytest.raises(ValueError, match=f"^training under {kind} is not supported: [^\n]*use DDP") as refused:
        train(model, tokenizer, examples, config, DataCollatorForSeq2Seq(tokenizer))
    assert len(str(refused.value)) < 400  # the CLI's one line holds all of it
    assert not (tmp_path / "log.jsonl").exists()  # nothing ran
    monkeypatch.setenv(LAUNCH_FLAGS[kind], "false")
    refuse_unsupported_parallelism()
    # An accelerator already set up for it (say, by the caller) is refused as well.
    distributed_type = {"FSDP": DistributedType.FSDP, "DeepSpeed": DistributedType.DEEPSPEED}[kind]
    with pytest.raises(ValueError, match=f"^training under {kind}"):
        refuse_unsupported_parallelism(distributed_type)
    for allowed in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        refuse_unsupported_parallelism(allowed)


def test_the_cli_refuses_fsdp_with_one_line(tmp_path, tiny_encoder_dir, monkeypatch, capsys):
    torch.manual_seed(0)
    build_model_dir(tiny_encoder_dir, tmp_path / "built")
    text = tmp_path / "en.txt"
    text.write_text("".join(u["text"]["en"] + "\n" for u in udhr("train")[:8]), encoding="utf-8")
    monkeypatch.setenv(LAUNCH_FLAGS["FSDP"], "true")
    code = cli(["pretrain", "--model", str(tmp_path / "built"), "--out", str(tmp_path / "out"), "--mono", f"en={text}",
                "--max-steps", "1", "--batch-size", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("swcm pretrain: error: training under FSDP is not supported")
    assert sum("FSDP" in line for line in err) == 1


def test_the_timeout_setting(monkeypatch):
    assert process_group_timeout() is None and process_group_kwargs() == {}  # torch's default
    monkeypatch.setenv(TIMEOUT_ENV, "5400")
    assert process_group_kwargs() == {"timeout": timedelta(hours=1.5)}
    monkeypatch.setenv(TIMEOUT_ENV, " 2.5 ")
    assert process_group_timeout() == timedelta(seconds=2.5)
    monkeypatch.setenv(TIMEOUT_ENV, "")
    assert process_group_timeout() is None
    for bad in ("0", "-60", "ten minutes", "nan", "inf"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"^{TIMEOUT_ENV}="):
            process_group_timeout()


_WAITING_RANKS = """
import json, sys, time
from pathlib import Path

import torch.distributed as dist

from swcm.training import distributed_state

state = distributed_state()  # sets up the process group, as train() does
if state.process_index == 0:
    time.sleep({late})  # the main process busy, say decoding the validation set
else:
    start = time.monotonic()
    try:
        dist.barrier()
        outcome = "met"
    except Exception as err:
        outcome = str(err)
    Path(sys.argv[1]).write_text(json.dumps({{"waited": time.monotonic() - start, "outcome": outcome}}))
"""


def test_a_rank_waits_as_long_as_the_timeout_says(tmp_path, monkeypatch):
    from test_distributed import launch

    late = 15
    script = tmp_path / "ranks.py"
    script.write_text(_WAITING_RANKS.format(late=late), encoding="utf-8")
    monkeypatch.setenv(TIMEOUT_ENV, "3")
    launch(str(script), str(tmp_path / "rank-1.json"))
    rank_1 = json.loads((tmp_path / "rank-1.json").read_text())
    assert rank_1["outcome"] != "met" and "timed out" in rank_1["outcome"].lower()
    assert 2.5 < rank_1["waited"] < late - 5  # the setting's 3 s, not torch's 30 minutes, nor rank 0's arrival
