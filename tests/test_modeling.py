"""The shared-weights model on a tiny real XLM-R encoder and a tokenizer trained on UDHR text."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
from transformers.pipelines import SUPPORTED_TASKS

import swcm
from swcm import SWCMForConditionalGeneration, decoder_layer_plan
from swcm.cli import main as cli
from swcm.modeling import CustomDecoderLayer, NormalDecoderLayer
from swcm.resources import udhr
from swcm.tokenization import add_language_tags, language_tag, language_tag_id
from swcm.training import training_loss

LANGS = ["zh", "bo", "ug", "kk", "mn", "en"]


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return AutoModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return AutoTokenizer.from_pretrained(tiny_encoder_dir)


@pytest.fixture(scope="module")
def ws_model(tiny_encoder_dir):
    torch.manual_seed(0)
    return SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=3).eval()


def _batch(tokenizer, lang_a="bo", lang_b="zh", n=3):
    units = udhr("test")[:n]
    texts = [u["text"][lang_a] for u in units[:-1]] + [units[-1]["text"][lang_b][:20]]
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_custom_layers_equal_their_source_encoder_layer(ws_model, encoder):
    plan = decoder_layer_plan(encoder.config.num_hidden_layers, 3, "ws")
    assert list(zip(ws_model.config.decoder_layer_types, ws_model.config.decoder_layer_sources)) == plan
    for layer, (kind, source) in zip(ws_model.decoder.layers, plan):
        if kind != "custom":
            continue
        src = encoder.encoder.layer[source]
        for attn in (layer.self_attn, layer.cross_attn):
            assert torch.equal(attn.query.weight, src.attention.self.query.weight)
            assert torch.equal(attn.key.weight, src.attention.self.key.weight)
            assert torch.equal(attn.value.bias, src.attention.self.value.bias)
            assert torch.equal(attn.output.weight, src.attention.output.dense.weight)
        for norm in (layer.self_attn_layer_norm, layer.cross_attn_layer_norm):
            assert torch.equal(norm.weight, src.attention.output.LayerNorm.weight)
        for ffn in (layer.ffn_a, layer.ffn_b):
            assert torch.equal(ffn.intermediate.weight, src.intermediate.dense.weight)
            assert torch.equal(ffn.output.bias, src.output.dense.bias)
        for norm in (layer.ffn_a_layer_norm, layer.ffn_b_layer_norm):
            assert torch.equal(norm.bias, src.output.LayerNorm.bias)
    # the encoder itself is loaded unchanged
    assert _same(ws_model.encoder, encoder)


def test_copies_are_independent_parameters(tiny_encoder_dir, tokenizer):
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).train()
    layer0 = model.decoder.layers[0]
    enc0 = model.encoder.encoder.layer[0]
    assert layer0.self_attn.query.weight.data_ptr() != enc0.attention.self.query.weight.data_ptr()
    assert layer0.cross_attn.query.weight.data_ptr() != layer0.self_attn.query.weight.data_ptr()
    before_enc = enc0.attention.self.query.weight.detach().clone()
    before_dec = layer0.self_attn.query.weight.detach().clone()
    # Only the decoder copy is optimised: it moves, the encoder's source weight does not.
    opt = torch.optim.SGD([layer0.self_attn.query.weight], lr=1.0)
    batch = _batch(tokenizer)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert enc0.attention.self.query.weight.grad is not None  # both receive gradients...
    opt.step()
    assert not torch.equal(layer0.self_attn.query.weight, before_dec)
    assert torch.equal(enc0.attention.self.query.weight, before_enc)  # ...but are separate tensors
    assert torch.equal(layer0.cross_attn.query.weight, before_dec)


def test_embeddings_are_one_module_shared_by_encoder_and_decoder(ws_model, tokenizer):
    emb = ws_model.encoder.embeddings.word_embeddings
    assert ws_model.get_input_embeddings() is emb
    # no second copy anywhere in the model
    n_embedding_params = sum(p.numel() for n, p in ws_model.named_parameters() if p is emb.weight)
    assert n_embedding_params == emb.weight.numel()
    # perturbing the shared table changes the decoder's output too
    batch = _batch(tokenizer)
    dec_in = batch["input_ids"][:, :5]
    with torch.no_grad():
        enc_out = ws_model.get_encoder()(**batch)
        before = ws_model(encoder_outputs=enc_out, attention_mask=batch["attention_mask"], decoder_input_ids=dec_in).logits
        saved = emb.weight[dec_in[0, 1]].clone()
        emb.weight[dec_in[0, 1]] += 1.0
        after = ws_model(encoder_outputs=enc_out, attention_mask=batch["attention_mask"], decoder_input_ids=dec_in).logits
        emb.weight[dec_in[0, 1]] = saved
    assert not torch.allclose(before, after)


def test_normal_layers_are_random_and_random_variant_copies_nothing(tiny_encoder_dir, encoder):
    torch.manual_seed(0)
    ws = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=2)
    normals = [layer for layer in ws.decoder.layers if isinstance(layer, NormalDecoderLayer)]
    assert normals
    enc_weights = [layer.attention.self.query.weight for layer in encoder.encoder.layer]
    for layer in normals:
        w = layer.self_attn.query.weight
        assert not any(torch.equal(w, e) for e in enc_weights)
        std = ws.config.initializer_range
        assert abs(w.std().item() - std) < 0.3 * std  # normal(0, initializer_range)
        assert torch.equal(layer.ffn_layer_norm.weight, torch.ones_like(layer.ffn_layer_norm.weight))

    rnd = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=2, variant="random")
    assert rnd.config.decoder_layer_types == ws.config.decoder_layer_types
    assert all(source is None for source in rnd.config.decoder_layer_sources)
    for layer in rnd.decoder.layers:
        for attn in (layer.self_attn, layer.cross_attn):
            assert not any(torch.equal(attn.query.weight, e) for e in enc_weights)
    assert _same(rnd.encoder, encoder)


def test_no_normal_and_duplicate_plans(tiny_encoder_dir, encoder):
    L = encoder.config.num_hidden_layers  # 4
    base_a = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=2, variant="no-normal")
    assert base_a.config.decoder_layer_types == ["custom"] * L
    assert all(isinstance(layer, CustomDecoderLayer) for layer in base_a.decoder.layers)

    base_b = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=2, variant="duplicate")
    ws = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=2)
    assert len(base_b.decoder.layers) == len(ws.decoder.layers) == L + 1
    assert base_b.config.decoder_layer_sources == [0, 1, 1, 2, 3]
    # the inserted layer duplicates the preceding encoder layer, as an independent copy
    dup, prev = base_b.decoder.layers[2], base_b.decoder.layers[1]
    assert isinstance(dup, CustomDecoderLayer) and _same(dup, prev)
    assert dup.ffn_a.intermediate.weight.data_ptr() != prev.ffn_a.intermediate.weight.data_ptr()


@pytest.mark.parametrize("L", [1, 4, 12])
def test_plan_follows_the_formula_for_every_x(L):
    for x in range(1, L + 2):
        plan = decoder_layer_plan(L, x, "ws")
        expected = []
        for i in range(L):
            expected.append(("custom", i))
            if (i + 1) % x == 0 and i + 1 < L:
                expected.append(("normal", None))
        assert plan == expected
        assert len(plan) == L + (L - 1) // x
    assert "".join(k[0][0] for k in decoder_layer_plan(12, 3)) == "cccncccncccnccc"


def test_bad_encoders_and_x_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="insert_every"):
        decoder_layer_plan(12, 0)
    cfg = tmp_path / "gpt2.json"
    cfg.write_text(json.dumps({"model_type": "gpt2"}))
    from swcm.building import load_encoder_config

    with pytest.raises(ValueError, match="found model_type 'gpt2'"):
        load_encoder_config(cfg)


def test_dry_run_reports_the_published_size(tmp_path, capsys):
    cfg = tmp_path / "cino.json"
    cfg.write_text(json.dumps({
        "model_type": "xlm-roberta", "vocab_size": 135135, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1,
    }))
    assert cli(["build", "--encoder-config", str(cfg), "--dry-run", "--json", "--lm-head", "untied"]) == 0  # the paper's head
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] == ["custom"] * 3 + ["normal"] + ["custom"] * 3 + ["normal"] + ["custom"] * 3 + ["normal"] + ["custom"] * 3
    assert abs(report["parameters"] - 491.6e6) <= 0.002 * 491.6e6
    assert 0 < report["decoder_parameters"] < report["parameters"]
    # The default head, auto, is tied for a config alone (no checkpoint to copy an MLM head from).
    assert cli(["build", "--encoder-config", str(cfg), "--dry-run", "--json"]) == 0
    tied = json.loads(capsys.readouterr().out)
    assert tied["lm_head"] == "tied" and tied["parameters"] == report["parameters"] - 135135 * 768
    assert cli(["build", "--encoder-config", str(cfg), "--dry-run", "--json", "--insert-every", "0"]) == 2
    assert "insert_every" in capsys.readouterr().err


def test_cached_generation_equals_uncached_greedy_batched_with_padding(ws_model, tokenizer):
    batch = _batch(tokenizer)
    assert (batch["attention_mask"] == 0).any()  # really padded
    kwargs = dict(max_new_tokens=12, do_sample=False, num_beams=1, min_new_tokens=12)
    cached = ws_model.generate(**batch, use_cache=True, **kwargs)
    uncached = ws_model.generate(**batch, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    # and both equal a hand-written greedy loop over full decoder re-runs
    dec = torch.full((batch["input_ids"].shape[0], 1), ws_model.config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(12):
            logits = ws_model(**batch, decoder_input_ids=dec, use_cache=False).logits[:, -1]
            logits[:, ws_model.config.eos_token_id] = -float("inf")  # min_new_tokens
            dec = torch.cat([dec, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, dec)


def test_beam_search_and_sampling(ws_model, tokenizer):
    batch = _batch(tokenizer)
    out = ws_model.generate(**batch, max_new_tokens=8, num_beams=3, num_return_sequences=2,
                            length_penalty=0.7, no_repeat_ngram_size=2)
    assert out.shape[0] == 2 * batch["input_ids"].shape[0]
    for row in out.tolist():
        bigrams = [tuple(row[i:i + 2]) for i in range(len(row) - 1) if ws_model.config.pad_token_id not in row[i:i + 2]]
        assert len(bigrams) == len(set(bigrams))
    torch.manual_seed(0)
    sampled = ws_model.generate(**batch, max_new_tokens=8, do_sample=True, top_k=20)
    assert sampled.shape[0] == batch["input_ids"].shape[0]


def test_save_load_identical_logits_from_safetensors(ws_model, tokenizer, tmp_path):
    ws_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SWCMForConditionalGeneration)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "swcm"
    batch = _batch(tokenizer)
    dec = batch["input_ids"][:, :6]
    with torch.no_grad():
        a = ws_model(**batch, decoder_input_ids=dec).logits
        b = loaded(**batch, decoder_input_ids=dec).logits
    assert torch.equal(a, b)
    assert loaded.get_input_embeddings() is loaded.encoder.embeddings.word_embeddings


def test_loss_backpropagates_to_every_trainable_parameter(tiny_encoder_dir, tokenizer):
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).train()
    batch = _batch(tokenizer)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    out = model(**batch, labels=labels)
    # −100 positions are ignored: the loss equals the mean over real tokens
    logits = out.logits.float()
    keep = labels != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.loss, manual)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # token types beyond 0 and unused vocabulary rows legitimately get no gradient; whole tensors must
    assert missing == []


@pytest.mark.parametrize("head", ["tied", "mlm"])
def test_lm_head_options(tiny_encoder_dir, tmp_path, head):
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, lm_head=head)
    if head == "tied":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        from transformers import AutoModelForMaskedLM

        mlm = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir)
        assert torch.equal(model.lm_head.dense.weight, mlm.lm_head.dense.weight)
        assert torch.equal(model.lm_head.decoder.bias, mlm.lm_head.bias)
    model.save_pretrained(tmp_path)
    loaded = SWCMForConditionalGeneration.from_pretrained(tmp_path)
    if head == "tied":
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert _same(loaded, model)


def test_mlm_head_missing_is_a_clear_error(tiny_encoder_dir, tmp_path):
    AutoModel.from_pretrained(tiny_encoder_dir).save_pretrained(tmp_path)  # bare encoder, no MLM head
    with pytest.raises(ValueError, match="has none"):
        SWCMForConditionalGeneration.from_encoder(tmp_path, lm_head="mlm")


def test_language_tags_resize_and_force_the_first_token(tiny_encoder_dir, tmp_path):
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, lm_head="untied").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    old_rows = model.get_input_embeddings().weight.detach().clone()
    ids = add_language_tags(model, tokenizer, LANGS)
    assert len(set(ids.values())) == len(LANGS)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == old_rows.shape[0] + len(LANGS)
    assert model.lm_head.weight.shape[0] == model.lm_head.bias.shape[0] == len(tokenizer)
    assert model.config.vocab_size == len(tokenizer) and model.config.language_tags == ids
    # The tags start distinct and as far apart as ordinary tokens, inside the cloud of rows,
    # both as embeddings and as LM-head rows (weight and bias): a target-language signal from
    # the first step. (mean resizing made them one point: 8e-6 apart against 0.2.)
    tag_ids = list(ids.values())
    old_head = torch.cat([model.lm_head.weight[: old_rows.shape[0]], model.lm_head.bias[: old_rows.shape[0], None]], 1)
    new_head = torch.cat([model.lm_head.weight[tag_ids], model.lm_head.bias[tag_ids, None]], 1)
    assert not torch.equal(model.lm_head.weight[tag_ids[0]], model.get_input_embeddings().weight[tag_ids[0]])
    for old, new in ((old_rows, model.get_input_embeddings().weight[tag_ids]), (old_head, new_head)):
        old, new = old.detach(), new.detach()
        ordinary = torch.pdist(old[torch.randperm(old.shape[0], generator=torch.Generator().manual_seed(0))[:200]])
        tags = torch.pdist(new)
        assert tags.min() > 0.5 * ordinary.median() and tags.max() < 2 * ordinary.max()
        assert 0.5 < tags.median() / ordinary.median() < 2
        spread = (old - old.mean(0)).norm(dim=-1)
        assert ((new - old.mean(0)).norm(dim=-1) < 2 * spread.max()).all()
    # adding again is a no-op; the tag is one token
    assert add_language_tags(model, tokenizer, ["bo"]) == {"bo": ids["bo"]}
    assert tokenizer.convert_ids_to_tokens(tokenizer(language_tag("bo"), add_special_tokens=False)["input_ids"]) == ["__bo__"]
    # the forced first token is the target tag
    batch = tokenizer([udhr("test")[0]["text"]["zh"]], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, forced_bos_token_id=language_tag_id(tokenizer, "ug"))
    assert out[0, 1].item() == ids["ug"]
    with pytest.raises(ValueError, match="no language tag"):
        language_tag_id(tokenizer, "xx")


@pytest.fixture(scope="module")
def built_dir(tiny_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "model"
    assert cli(["build", "--encoder", str(tiny_encoder_dir), "--out", str(out), "--insert-every", "2",
                "--variant", "ws", "--langs", "zh,bo"]) == 0
    return out


def test_build_cli_and_auto_classes(built_dir):
    assert {"config.json", "model.safetensors"} <= {p.name for p in built_dir.iterdir()}
    config = AutoConfig.from_pretrained(built_dir)
    assert config.insert_every == 2 and config.variant == "ws" and set(config.language_tags) == {"zh", "bo"}
    model = AutoModelForSeq2SeqLM.from_pretrained(built_dir)
    tokenizer = AutoTokenizer.from_pretrained(built_dir)
    assert type(model) is SWCMForConditionalGeneration
    # a class name both transformers majors load (5 would write its own, TokenizersBackend)
    assert json.loads((built_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    batch = tokenizer([udhr("test")[0]["text"]["bo"]], return_tensors="pt", truncation=True)
    out = model.generate(**batch, max_new_tokens=5, forced_bos_token_id=config.language_tags["zh"])
    assert out[0, 1].item() == config.language_tags["zh"]
    assert swcm.__version__


@pytest.mark.skipif("text2text-generation" not in SUPPORTED_TASKS,
                    reason="this transformers has no text2text-generation pipeline (removed in 5.0)")
def test_text2text_generation_pipeline(built_dir):
    config = AutoConfig.from_pretrained(built_dir)
    gen = pipeline("text2text-generation", model=str(built_dir), device="cpu")
    result = gen(udhr("test")[0]["text"]["bo"], max_new_tokens=5, truncation=True, forced_bos_token_id=config.language_tags["zh"])
    assert isinstance(result[0]["generated_text"], str)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_encoder_dir, tokenizer):
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).train()
    batch = _batch(tokenizer)
    torch.manual_seed(1)  # the same dropout masks in both passes (recomputation preserves RNG state)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.decoder.layers)
    torch.manual_seed(1)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[n], atol=1e-5), n


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_the_label_positions_loss_equals_cross_entropy_over_the_full_logits(tiny_encoder_dir, tokenizer, label_smoothing):
    """The training path (head on the labelled positions only, `skip_logits=True`) gives the
    loss and gradients of `F.cross_entropy` over the full float32 logits with −100 ignored, as
    the model computed it before; the default path returns those full logits too."""
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, dropout=0.0).train()
    batch = _batch(tokenizer)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)

    def gradients(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits = model(**batch, decoder_input_ids=decoder_input_ids).logits  # no labels: the head on every position
    reference = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=label_smoothing
    )
    expected = gradients(reference)
    cheap = model(**batch, labels=labels, label_smoothing=label_smoothing, skip_logits=True)
    assert cheap.logits is None
    assert cheap.loss.item() == pytest.approx(reference.item(), rel=1e-6)
    got = gradients(cheap.loss)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)

    full = model(**batch, labels=labels, label_smoothing=label_smoothing)  # as transformers' users call it
    assert full.loss.item() == cheap.loss.item()  # the same rows, the same bits
    torch.testing.assert_close(full.logits, logits, rtol=1e-5, atol=1e-5)
    # transformers' Trainer passes num_items_in_batch in its training step, which reads only the
    # loss, and in evaluation (eval mode), which reads the logits too
    items = 2 * int((labels != -100).sum())
    step = model(**batch, labels=labels, label_smoothing=label_smoothing, num_items_in_batch=items)
    assert step.logits is None and step.loss.item() == pytest.approx(cheap.loss.item() / 2, rel=1e-6)
    with torch.no_grad():
        evaluation = model.eval()(**batch, labels=labels, label_smoothing=label_smoothing, num_items_in_batch=items)
    assert evaluation.logits.shape == logits.shape


def test_the_training_step_under_bf16_autocast_matches_the_full_logits_path(tiny_encoder_dir, tokenizer):
    """Under bf16 autocast, as accelerate trains on a CPU: the training loss (head on the labelled
    positions, `token_cross_entropy`'s one-pass gradient) and its gradients agree with
    `F.cross_entropy` over the full logits, upcast to float32, of the same autocast forward."""
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, dropout=0.0).train()
    batch = _batch(tokenizer)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100

    def gradients(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**batch, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)).logits
        assert logits.dtype == torch.bfloat16
        reference = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    expected = gradients(reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = training_loss(model, {**batch, "labels": labels})[0]
    got = gradients(loss)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=1e-3)
    assert got.keys() == expected.keys()
    for name in expected:  # bf16 products: the rounding of 8 mantissa bits, not a different gradient
        torch.testing.assert_close(got[name], expected[name], rtol=0.05, atol=2e-3, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_cross_entropy_in_chunks_equals_torchs(dtype, monkeypatch):
    """`token_cross_entropy`, a few rows at a time (no float32 copy of all the logits kept), sums
    what `F.cross_entropy` on the float32 logits sums, with its gradient in the logits' dtype."""
    from swcm import loss, modeling

    monkeypatch.setattr(loss, "CROSS_ENTROPY_CHUNK_ELEMENTS", 3 * 50)  # 3 rows of 50 at a time: 4 chunks
    torch.manual_seed(0)
    logits = (4 * torch.randn(11, 50)).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (11,))
    for smoothing in (0.0, 0.2):
        expected = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=smoothing)
        (expected_grad,) = torch.autograd.grad(3 * expected, logits)
        got = modeling.token_cross_entropy(logits, targets, smoothing)
        (grad,) = torch.autograd.grad(3 * got, logits)
        assert got.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(grad, expected_grad)
    empty = modeling.token_cross_entropy(logits[:0], targets[:0])
    assert empty.item() == 0.0
