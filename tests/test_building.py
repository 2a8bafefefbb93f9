"""`swcm build` on checkpoints whose config lacks special token ids."""

import json

import torch
from transformers import AutoTokenizer

from swcm.building import build_model_dir
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr


def test_bert_checkpoint_without_bos_gets_the_tokenizers_cls_as_decoder_start(tiny_bert_dir, tmp_path):
    # transformers 5 writes the unset field as null, 4.x leaves it out
    assert json.loads((tiny_bert_dir / "config.json").read_text(encoding="utf-8")).get("bos_token_id") is None
    build_model_dir(tiny_bert_dir, tmp_path / "built", insert_every=2, langs=["zh", "en"])
    model = SWCMForConditionalGeneration.from_pretrained(tmp_path / "built").train()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "built")
    assert model.config.decoder_start_token_id == model.config.bos_token_id == tokenizer.cls_token_id
    assert model.config.eos_token_id == tokenizer.sep_token_id
    assert model.generation_config.decoder_start_token_id == tokenizer.cls_token_id

    unit = udhr("valid")[0]["text"]
    batch = tokenizer([unit["zh"][:60]], return_tensors="pt")
    labels = tokenizer([unit["en"][:60]], return_tensors="pt")["input_ids"]
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and model.get_output_embeddings().weight.grad is not None
    generated = model.eval().generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated[0, 0].item() == tokenizer.cls_token_id


def test_dropout_replaces_the_encoders_in_every_module_and_the_saved_config(tiny_encoder_dir, tmp_path):
    build_model_dir(tiny_encoder_dir, tmp_path / "m", variant="ws", dropout=0.0)
    model = SWCMForConditionalGeneration.from_pretrained(tmp_path / "m").train()
    assert model.config.encoder.hidden_dropout_prob == model.config.encoder.attention_probs_dropout_prob == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():  # no dropout: two training-mode passes agree
        first, second = (model(input_ids=ids, labels=ids).logits for _ in range(2))
    assert torch.equal(first, second)
    default = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir).train()
    assert any(m.p > 0 for m in default.modules() if isinstance(m, torch.nn.Dropout))
    with torch.no_grad():
        assert not torch.equal(*(default(input_ids=ids, labels=ids).logits for _ in range(2)))


# --- the defaults: lm_head "auto", --encoder-layers, the advice to cut -----------------------


def test_auto_head_is_the_checkpoints_mlm_head_or_else_tied(tiny_encoder_dir, tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM

    model = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir)  # the default: auto
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir)
    assert model.config.lm_head == "mlm" and torch.equal(model.lm_head.dense.weight, mlm.lm_head.dense.weight)
    AutoModel.from_pretrained(tiny_encoder_dir).save_pretrained(tmp_path / "bare")  # no MLM head
    bare = SWCMForConditionalGeneration.from_encoder(tmp_path / "bare")
    assert bare.config.lm_head == "tied"
    assert bare.get_output_embeddings().weight is bare.get_input_embeddings().weight
    # the paper's random head is one flag away
    assert SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, lm_head="untied").config.lm_head == "untied"


def test_encoder_layers_keeps_the_first_n(tiny_encoder_dir, tmp_path, capsys):
    from swcm.cli import main as cli
    from swcm.encoders.layers import keep_bottom_layers

    full = SWCMForConditionalGeneration.from_encoder(tiny_encoder_dir, insert_every=1)
    assert cli(["build", "--encoder", str(tiny_encoder_dir), "--out", str(tmp_path / "two"), "--encoder-layers", "2",
                "--insert-every", "1"]) == 0
    assert "2 encoder layers, decoder plan C N C, head mlm" in capsys.readouterr().out
    two = SWCMForConditionalGeneration.from_pretrained(tmp_path / "two")
    assert two.config.encoder.num_hidden_layers == 2 and two.config.decoder_layer_sources == [0, None, 1]
    kept = two.state_dict()
    for name, tensor in full.encoder.state_dict().items():
        if ".layer.2." not in name and ".layer.3." not in name:
            assert torch.equal(kept[f"encoder.{name}"], tensor), name
    # the same cut as an experiment's encoder_layers (an encoder directory cut on disk)
    cut = SWCMForConditionalGeneration.from_encoder(keep_bottom_layers(tiny_encoder_dir, 2, tmp_path / "cut"), insert_every=1)
    assert all(torch.equal(v, kept[k]) for k, v in cut.state_dict().items() if not k.startswith("decoder.layers.1."))

    assert cli(["build", "--encoder", str(tiny_encoder_dir), "--dry-run", "--json", "--encoder-layers", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    # X unset over 3 kept layers: 2, so that the decoder keeps a Normal layer (the paper's 3 would insert none)
    assert report["encoder_layers"] == 3 and report["lm_head"] == "mlm" and report["layers"] == ["custom", "custom", "normal", "custom"]
    assert cli(["build", "--encoder", str(tiny_encoder_dir), "--out", str(tmp_path / "five"), "--encoder-layers", "5"]) == 2
    assert "cannot keep 5 of its 4 layers" in capsys.readouterr().err


def test_build_advises_a_cut_when_the_top_layers_are_collapsed(tiny_encoder_dir, tmp_path, capsys):
    """A real encoder whose top layer maps every token to one vector (its last LayerNorm's
    weight zeroed, a constant bias): build says which layers and what to keep."""
    from transformers import AutoModelForMaskedLM

    from swcm.cli import main as cli
    from swcm.diagnostics import collapsed_top, cut_advice

    assert cli(["build", "--encoder", str(tiny_encoder_dir), "--out", str(tmp_path / "as-is")]) == 0
    assert "collapsed (" not in capsys.readouterr().out  # random layers: spread out, no advice

    model = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir)
    with torch.no_grad():
        norm = model.roberta.encoder.layer[3].output.LayerNorm
        norm.weight.zero_()
        norm.bias.copy_(torch.linspace(-1, 1, norm.bias.numel()))
    model.save_pretrained(tmp_path / "collapsed")
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(tmp_path / "collapsed")
    assert cli(["build", "--encoder", str(tmp_path / "collapsed"), "--out", str(tmp_path / "built")]) == 0
    out = capsys.readouterr().out
    assert "encoder layer 4 is collapsed (mean cosine 1.00 > 0.7)" in out and "consider --encoder-layers 3" in out

    assert collapsed_top([0.1, 0.2, 0.3]) is None and collapsed_top([0.1, 0.8, 0.95]) == 1 and collapsed_top([0.9, 0.95]) == 0
    assert cut_advice([0.1, 0.2, 0.75, 0.9]).startswith("encoder layers 3–4 are collapsed (mean cosine 0.75–0.90 > 0.7)")
    assert "swcm adapt" in cut_advice([0.9, 0.95]) and cut_advice([0.1, 0.5]) is None


def test_insert_every_keeps_a_normal_layer_over_a_cut_encoder():
    from swcm.building import choose_insert_every
    from swcm.configuration import decoder_layer_plan

    assert choose_insert_every(12) == (3, None)  # the paper's X
    x, note = choose_insert_every(3)  # `--encoder-layers 3`, X unset: C C N C, said in one line
    assert x == 2 and "no Normal layer" in note
    assert [kind for kind, _ in decoder_layer_plan(3, x)].count("normal") == 1
    x, warning = choose_insert_every(3, 3)  # given: kept, with a warning naming the fix
    assert x == 3 and warning.startswith("warning:") and "--insert-every 2" in warning
    assert choose_insert_every(3, 3, "no-normal") == (3, None)  # BASE-A has none by design
    assert choose_insert_every(1) == (3, None)  # one layer: nothing to insert between
