"""What makes training fast must not change what it computes: the mask-free causal path, the
fused projections, the attention kernels, length-grouped batches."""

import contextlib
import copy
from itertools import islice

import pytest
import torch
from transformers import AutoTokenizer

from swcm.data.batching import GROUP_BATCHES, DataCursor, example_length
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import libreoffice, udhr
from swcm.training import TrainingConfig, train


@pytest.fixture(scope="module")
def model(tiny_encoder_dir):
    torch.manual_seed(0)
    return SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).eval()


def _batch(tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    texts = [unit["text"][lang] for unit in udhr("train")[:2] for lang in ("zh", "bo", "en")]
    enc = tokenizer(texts, truncation=True, max_length=40, padding=True, return_tensors="pt")
    labels = tokenizer(texts[::-1], truncation=True, max_length=30, padding="max_length", return_tensors="pt")["input_ids"]
    return enc, labels


def test_causal_self_attention_without_a_mask_matches_the_masked_path(model, tiny_encoder_dir):
    enc, labels = _batch(tiny_encoder_dir)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    with torch.no_grad():
        fast = model(**enc, decoder_input_ids=decoder_input_ids, use_cache=False).logits
        # An all-ones decoder mask takes the explicit boolean-mask path.
        masked = model(**enc, decoder_input_ids=decoder_input_ids, decoder_attention_mask=torch.ones_like(labels),
                       use_cache=False).logits
        # Step by step with the cache: every position sees only what precedes it.
        cached = model(**enc, decoder_input_ids=decoder_input_ids[:, :10], use_cache=True)
        step = model(**enc, decoder_input_ids=decoder_input_ids[:, 10:11], past_key_values=cached.past_key_values,
                     use_cache=True).logits
    torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step[:, 0], fast[:, 10], rtol=1e-4, atol=1e-5)
    # Causality: a later decoder token leaves earlier logits unchanged.
    changed = decoder_input_ids.clone()
    changed[:, 20] = 5
    with torch.no_grad():
        other = model(**enc, decoder_input_ids=changed, use_cache=False).logits
    torch.testing.assert_close(other[:, :20], fast[:, :20])
    assert not torch.allclose(other[:, 20:], fast[:, 20:])


def test_fused_projections_equal_the_separate_linears(model):
    attention = model.decoder.layers[0].self_attn
    x = torch.randn(2, 7, model.config.hidden_size)
    query, key, value = attention._projections(x, "query", "key", "value")
    for got, linear in zip((query, key, value), (attention.query, attention.key, attention.value)):
        torch.testing.assert_close(got, attention._heads(linear(x)))


def test_the_training_attention_kernels_compute_the_same_loss_and_gradients(tiny_encoder_dir):
    """Under bf16 autocast on a CPU, the training loop's attention kernels (SDPA's math kernel,
    chosen for speed) give the loss and gradients of SDPA's own choice (the flash kernel), padded
    sources and all, to bf16's rounding."""
    from swcm.precision import training_attention
    from swcm.training import training_loss

    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, dropout=0.0).train()
    enc, labels = _batch(tiny_encoder_dir)
    labels = labels.masked_fill(labels == model.config.pad_token_id, -100)
    batch = {**enc, "labels": labels}
    assert (enc["attention_mask"] == 0).any()  # padded sources take the masked path

    def loss_and_gradients(kernels):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), kernels:
            loss = training_loss(model, batch)[0]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_gradients(training_attention("cpu", torch.bfloat16))
    reference, expected = loss_and_gradients(contextlib.nullcontext())
    assert loss == pytest.approx(reference, rel=1e-3)
    assert grads.keys() == expected.keys()
    for name in expected:  # bf16 products: the rounding of 8 mantissa bits, not a different gradient
        torch.testing.assert_close(grads[name], expected[name], rtol=0.05, atol=2e-3, msg=name)


def test_training_attention_takes_the_math_kernel_for_bf16_on_a_cpu_only():
    from swcm.precision import training_attention

    with training_attention("cpu", torch.bfloat16):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()  # put back on leaving
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        with training_attention(device, dtype):
            assert torch.backends.cuda.flash_sdp_enabled()


# --- length-grouped batches ----------------------------------------------------------------

def _libreoffice_examples(tokenizer, n=300):
    """Real LibreOffice UI strings zh → en/ug: lengths from a few tokens to a few dozen."""
    units = [u for u in libreoffice("train") if "zh" in u["text"]][:n]
    examples = []
    for i, unit in enumerate(units):
        tgt = "en" if i % 2 else next((lang for lang in ("ug", "kk", "mn") if lang in unit["text"]), "en")
        src = tokenizer(unit["text"]["zh"], truncation=True, max_length=64)["input_ids"]
        labels = tokenizer(unit["text"][tgt], truncation=True, max_length=64)["input_ids"]
        examples.append({"input_ids": src, "labels": labels})
    return examples


def _padding_share(batches):
    padded = total = 0
    for batch in batches:
        for key in ("input_ids", "labels"):
            longest = max(len(e[key]) for e in batch)
            padded += sum(longest - len(e[key]) for e in batch)
            total += longest * len(batch)
    return padded / total


class _Stream:
    """A re-iterable stream without random access (as a reader of a large file would be)."""

    def __init__(self, examples):
        self.examples = examples

    def __iter__(self):
        return iter(self.examples)


def _assert_each_example_once_and_exact_resume(examples, epoch_batches, cursor_factory, after=7):
    """`epoch_batches` hold every example once, and a cursor stopped after `after` batches and
    restored from its state reads the same batches on."""
    key = lambda e: (tuple(e["input_ids"]), tuple(e["labels"]))  # noqa: E731
    assert sorted(map(key, (e for b in epoch_batches for e in b))) == sorted(map(key, examples))
    cursor = cursor_factory()
    batches = cursor.batches(8)
    head = [next(batches) for _ in range(after)]
    resumed = cursor_factory()
    resumed.load_state_dict(copy.deepcopy(cursor.state_dict()))
    assert head + list(islice(resumed.batches(8), len(epoch_batches) - after)) == epoch_batches


@pytest.mark.parametrize("budget", [None, 96])
@pytest.mark.parametrize("kind", ["list", "stream"])
def test_length_grouping_cuts_padding_reads_every_example_once_and_resumes_exactly(tiny_encoder_dir, kind, budget):
    """Batches of 8 examples, or with a token budget as many as fit in `budget` positions."""
    examples = _libreoffice_examples(AutoTokenizer.from_pretrained(tiny_encoder_dir))
    data = examples if kind == "list" else _Stream(examples)
    cursor = lambda group: DataCursor(data, seed=3, shuffle=True, group_by_length=group, max_tokens=budget)  # noqa: E731

    def first_epoch(group):
        batches, seen = [], 0
        for batch in cursor(group).batches(8):
            batches.append(batch)
            seen += len(batch)
            if seen == len(examples):
                return batches

    plain, grouped = first_epoch(False), first_epoch(True)
    assert _padding_share(grouped) < 0.5 * _padding_share(plain)
    # the batch order is random, not the order of lengths
    assert [len(b[0]["input_ids"]) for b in grouped] != sorted(len(b[0]["input_ids"]) for b in grouped)
    if budget:
        assert all(len(b) == 1 or max(map(example_length, b)) * len(b) <= budget for b in grouped)
        sizes = {len(b) for b in grouped}
        assert min(sizes) < 8 < max(sizes)  # many short examples to a batch, few long ones
    _assert_each_example_once_and_exact_resume(examples, grouped, lambda: cursor(True))


def test_length_grouped_steps_do_not_walk_from_long_to_short(tiny_encoder_dir):
    """Mega-batches sorted by length and read in order (transformers' grouping) make the
    steps within each mega-batch run from the longest examples to the shortest, which slowed
    fine-tuning on the demo's data; the batches of an epoch come in a random order instead, the
    longest first, every batch full but the last."""
    examples = _libreoffice_examples(AutoTokenizer.from_pretrained(tiny_encoder_dir), n=1600)
    size = 8
    cursor = DataCursor(examples, seed=0, shuffle=True, group_by_length=True)
    batches = list(islice(cursor.batches(size), -(-len(examples) // size)))
    assert len(batches) > 3 * GROUP_BATCHES // 2  # more than one mega-batch
    assert all(len(b) == size for b in batches[:-1])
    lengths = [max(map(example_length, b)) for b in batches]
    assert lengths[0] == max(lengths)
    positions = torch.arange(len(lengths), dtype=torch.float)
    for window in range(0, len(lengths) - GROUP_BATCHES + 1, GROUP_BATCHES):  # rank correlation of step and length
        ranks = torch.tensor(lengths[window : window + GROUP_BATCHES], dtype=torch.float).argsort().argsort().float()
        corr = torch.corrcoef(torch.stack([positions[:GROUP_BATCHES], ranks]))[0, 1]
        assert abs(corr) < 0.5


def test_training_logs_the_padding_share(tmp_path, tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    examples = _libreoffice_examples(tokenizer, n=120)

    def collate(batch):
        n, m = max(len(e["input_ids"]) for e in batch), max(len(e["labels"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (n - len(e["input_ids"])) for e in batch])
        return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(),
                "labels": torch.tensor([e["labels"] + [-100] * (m - len(e["labels"])) for e in batch])}

    shares = {}
    for group in (False, True):
        torch.manual_seed(0)
        model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)
        config = TrainingConfig(out_dir=tmp_path / str(group), max_steps=6, batch_size=8, log_every=3, progress=False,
                                group_by_length=group, mixed_precision="no")
        result = train(model, tokenizer, examples, config, collate)
        assert [r["step"] for r in result.history] == [3, 6]
        shares[group] = sum(r["padding_share"] for r in result.history) / 2
        assert all(0 <= r["padding_share"] < 1 for r in result.history)
    assert shares[True] < shares[False]
