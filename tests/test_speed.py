"""What makes training fast must not change what it computes: the mask-free causal path, the
fused projections, length-grouped batches."""

import pytest
import torch
from transformers import AutoTokenizer

from swcm.modeling import SWCMForConditionalGeneration


@pytest.fixture(scope="module")
def model(tiny_encoder_dir):
    torch.manual_seed(0)
    return SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).eval()


def _batch(tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    from swcm.resources import udhr

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
