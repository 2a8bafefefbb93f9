"""Batches through `DataLoader` workers: the same batches as on the training thread, and an
exact resume, whatever the workers have read ahead."""

import copy
import itertools
import shutil

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from swcm.data import PretrainingStream
from swcm.data.batching import DataCursor, RankBatchSampler, batch_loader
from swcm.resources import udhr
from swcm.training import TrainingConfig, train
from test_training import LANGS, build_model, copy_examples, max_diff, params


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    build_model(tiny_encoder_dir, tok)  # adds the language tags to `tok`
    return tok


@pytest.fixture(scope="module")
def mono(tmp_path_factory):
    """UDHR train text, one plain-text file per language, as `--mono` specs."""
    root = tmp_path_factory.mktemp("mono")
    for lang in LANGS:
        (root / f"{lang}.txt").write_text("".join(u["text"][lang] + "\n" for u in udhr("train")), encoding="utf-8")
    return [f"{lang}={root / f'{lang}.txt'}" for lang in LANGS]


def stream(tokenizer, mono):
    return PretrainingStream(tokenizer, mono, max_source_length=48, max_target_length=48, seed=3)


def loaded(data, tokenizer, workers, batches=12, world=1, rank=0, max_tokens=None):
    """The first `batches` collated batches of `data` through a loader with `workers` workers,
    and the data position after them."""
    cursor = DataCursor(data, seed=0, shuffle=True, group_by_length=True, max_tokens=max_tokens)
    sampler = RankBatchSampler(cursor, 4 * world, world, rank)
    out = []
    for batch in batch_loader(sampler, DataCollatorForSeq2Seq(tokenizer), num_workers=workers):
        sampler.consumed()
        out.append({k: v for k, v in batch.items()})
        if len(out) == batches:
            return out, sampler.state_dict()


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("kind", ["list", "stream"])
def test_two_workers_give_the_batches_of_the_training_thread(tokenizer, mono, kind):
    """A list (fine-tuning: the slice of rank 1 of 2) and the pretraining stream (its DAE noise
    applied in the workers, batches cut by a token budget from a length-grouped buffer)."""
    def data():
        return copy_examples(tokenizer) if kind == "list" else stream(tokenizer, mono)

    settings = dict(world=2, rank=1) if kind == "list" else dict(max_tokens=160)
    here, position = loaded(data(), tokenizer, 0, **settings)
    there, position_there = loaded(data(), tokenizer, 2, **settings)
    assert_same_batches(here, there)
    assert position == position_there  # not where the workers had read ahead to
    if kind == "stream":  # the noise was applied: masked sources, clean targets
        assert all((b["input_ids"] == tokenizer.mask_token_id).any() for b in there)
        assert not any((b["labels"] == tokenizer.mask_token_id).any() for b in there)


def test_training_with_two_workers_resumes_exactly(tmp_path, tiny_encoder_dir, tokenizer, mono):
    """Pretraining on the stream with 2 workers ends with the weights of the run on the training
    thread, and so does a run stopped after step 3's checkpoint and resumed."""
    settings = dict(max_steps=6, batch_size=4, max_tokens=160, lr=1e-3, save_every=3, log_every=3,
                    scheduled_sampling="linear", progress=False, mixed_precision="no")
    weights = {}
    for workers in (0, 2):
        model = build_model(tiny_encoder_dir, tokenizer)
        config = TrainingConfig(out_dir=tmp_path / str(workers), num_workers=workers, **settings)
        train(model, tokenizer, stream(tokenizer, mono), config, DataCollatorForSeq2Seq(tokenizer), sharded=True)
        weights[workers] = params(model)
    assert max_diff(weights[0], weights[2]) == 0

    shutil.rmtree(tmp_path / "2" / "checkpoints" / "step-6")
    shutil.rmtree(tmp_path / "2" / "final")
    model = build_model(tiny_encoder_dir, tokenizer, seed=1)
    config = TrainingConfig(out_dir=tmp_path / "2", num_workers=2, resume=True, **settings)
    result = train(model, tokenizer, stream(tokenizer, mono), config, DataCollatorForSeq2Seq(tokenizer), sharded=True)
    assert result.step == 6 and [r["step"] for r in result.history] == [6]
    assert max_diff(params(model), weights[2]) <= 1e-6


def test_the_precision_probe_reads_the_first_batches_and_puts_the_stream_back(tokenizer, mono):
    """`--mixed-precision auto` times the run's first batches on a CPU: read through a cursor of
    their own, so that the run then reads the very same examples from the very same position."""
    from swcm.training.precision_probe import probe_batches

    data = stream(tokenizer, mono)
    config = TrainingConfig(out_dir="unused", batch_size=4, max_tokens=256)
    collate = DataCollatorForSeq2Seq(tokenizer)
    before = copy.deepcopy(data.state_dict())
    probed = probe_batches(data, config, collate)
    assert len(probed) == 2 and data.state_dict() == before
    cursor = DataCursor(data, seed=config.seed, shuffle=config.shuffle, group_by_length=True, max_tokens=256)
    first = [collate(batch) for batch in itertools.islice(cursor.batches(4), 2)]
    for got, expected in zip(probed, first):
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
