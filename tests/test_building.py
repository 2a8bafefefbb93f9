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
    assert torch.isfinite(loss) and model.lm_head.weight.grad is not None
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
