"""The decoder's copied layers compute what the encoder's layers compute.

A Custom layer given the encoder layer's own input (and a full, non-causal mask) must reproduce
that layer's self-attention sublayer (attention.output, after its LayerNorm) and FFN_a its FFN
sublayer; the decoder's embeddings (positions, token types) must be those the encoder saw in
pretraining. Checked for a BERT-layout encoder (positions from 0, two token types) and an
XLM-R-layout one (positions after padding_idx + 1), both tiny and random.
"""

import pytest
import torch
from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

from swcm.modeling import SWCMForConditionalGeneration

SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=40)


def _bert():
    return BertModel(BertConfig(**SHAPE, type_vocab_size=2, pad_token_id=0, hidden_act="gelu"), add_pooling_layer=False)


def _xlmr():
    return XLMRobertaModel(XLMRobertaConfig(**SHAPE, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                           add_pooling_layer=False)


@pytest.fixture(params=["bert", "xlm-roberta"])
def built(request):
    torch.manual_seed(0)
    encoder = {"bert": _bert, "xlm-roberta": _xlmr}[request.param]()
    # Non-trivial token-type rows and biases, so that a mismatch cannot hide behind zeros.
    with torch.no_grad():
        encoder.embeddings.token_type_embeddings.weight.normal_(0, 0.5)
        for layer in encoder.encoder.layer:
            for module in layer.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                    module.bias.normal_(0, 0.2)
    model = SWCMForConditionalGeneration.from_encoder(encoder, insert_every=2).eval()
    return encoder.eval(), model


def _ids(encoder, batch=2, length=9):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, encoder.config.vocab_size, (batch, length), generator=generator)
    return ids


@torch.no_grad()
def test_custom_layers_reproduce_their_encoder_layer(built):
    encoder, model = built
    ids = _ids(encoder)
    states = encoder(input_ids=ids, output_hidden_states=True).hidden_states
    full = torch.ones(ids.shape[0], 1, ids.shape[1], ids.shape[1], dtype=torch.bool)  # non-causal, no padding
    checked = 0
    for layer, source in zip(model.decoder.layers, model.config.decoder_layer_sources):
        if source is None:
            continue
        theirs = encoder.encoder.layer[source]
        x = states[source]
        attention_out = theirs.attention(x)[0]
        mine = layer.self_attn_layer_norm(x + layer.self_attn(x, None, full))
        torch.testing.assert_close(mine, attention_out, rtol=1e-5, atol=1e-5)
        ffn_out = theirs.output(theirs.intermediate(attention_out), attention_out)
        mine_ffn = layer.ffn_a_layer_norm(attention_out + layer.ffn_a(attention_out))
        torch.testing.assert_close(mine_ffn, ffn_out, rtol=1e-5, atol=1e-5)
        # The whole encoder layer, chained through the decoder's two sublayers.
        torch.testing.assert_close(mine_ffn, states[source + 1], rtol=1e-5, atol=1e-5)
        # Cross-attention and FFN_b hold the same weights.
        torch.testing.assert_close(layer.cross_attn(x, x, None), layer.self_attn(x, None, full))
        torch.testing.assert_close(layer.ffn_b(x), layer.ffn_a(x))
        checked += 1
    assert checked == encoder.config.num_hidden_layers


@torch.no_grad()
def test_padding_masks_agree(built):
    encoder, model = built
    ids = _ids(encoder)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    ids[0, -3:] = encoder.config.pad_token_id
    x = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[0]
    # The additive mask BERT's attention takes (get_extended_attention_mask is gone in transformers 5).
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    theirs = encoder.encoder.layer[0].attention(x, attention_mask=additive)[0]
    key_mask = mask[:, None, None, :].bool()
    mine = model.decoder.layers[0].self_attn_layer_norm(x + model.decoder.layers[0].self_attn(x, None, key_mask))
    torch.testing.assert_close(mine[mask.bool()], theirs[mask.bool()], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_decoder_embeddings_are_the_encoders_pretraining_embeddings(built):
    """Positions (BERT from 0, XLM-R from padding_idx + 1) and token type 0 match what the
    encoder computes for the same tokens, both for a whole sequence and step by step."""
    encoder, model = built
    ids = _ids(encoder)
    seen_in_pretraining = encoder.embeddings(input_ids=ids)
    if encoder.config.model_type == "bert":
        # BERT's single-segment input: token type 0, positions 0..n-1.
        explicit = encoder.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids),
                                      position_ids=torch.arange(ids.shape[1])[None])
        torch.testing.assert_close(explicit, seen_in_pretraining)
        assert model.position_offset == 0
    else:
        assert model.position_offset == encoder.config.pad_token_id + 1
    # The decoder's own call, as in SWCMForConditionalGeneration.forward.
    positions = (torch.arange(ids.shape[1]) + model.position_offset)[None].expand(ids.shape[0], -1)
    decoder_view = model.encoder.embeddings(input_ids=ids, position_ids=positions)
    torch.testing.assert_close(decoder_view, seen_in_pretraining)
    # One step at a time (generation): position t, token type 0.
    for t in range(ids.shape[1]):
        step = model.encoder.embeddings(input_ids=ids[:, t : t + 1], position_ids=positions[:, t : t + 1])
        torch.testing.assert_close(step, seen_in_pretraining[:, t : t + 1])


@torch.no_grad()
def test_full_forward_uses_the_copied_encoder(built):
    """The model's encoder is the given encoder, unchanged: same outputs."""
    encoder, model = built
    ids = _ids(encoder)
    out = model(input_ids=ids, decoder_input_ids=ids[:, :4], use_cache=False)
    torch.testing.assert_close(out.encoder_last_hidden_state, encoder(input_ids=ids).last_hidden_state)
