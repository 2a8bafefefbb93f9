"""An SWCM model under transformers' own `Seq2SeqTrainer`: training with gradient accumulation
and `predict_with_generate`, on real UDHR text and a tiny model built in the test."""

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from swcm.data import ExampleEncoder
from swcm.modeling import SWCMForConditionalGeneration
from swcm.resources import udhr
from swcm.tokenization import add_language_tags, language_tag_id

LANGS = ["zh", "bo", "ug"]


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return AutoTokenizer.from_pretrained(tiny_encoder_dir)


def build(tiny_encoder_dir, tokenizer):
    """A dropout-free SWCM model (so that a step's loss does not depend on how it is split)."""
    encoder = AutoModelForMaskedLM.from_pretrained(tiny_encoder_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = SWCMForConditionalGeneration.from_encoder(encoder)
    add_language_tags(model, tokenizer, LANGS)
    return model


def copy_examples(tokenizer, split, n):
    """Copy each sentence into its own language; targets of very different lengths."""
    encoder = ExampleEncoder(tokenizer, 48, 48)
    return [encoder.encode(u["text"][lang], u["text"][lang], lang) for u in udhr(split)[:n] for lang in LANGS]


def arguments(out, **settings):
    return Seq2SeqTrainingArguments(
        output_dir=str(out), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        lr_scheduler_type="constant", weight_decay=0.0, seed=0, dataloader_num_workers=0, disable_tqdm=True,
        **settings,
    )


def test_trainer_loss_with_gradient_accumulation_is_the_token_mean(tiny_encoder_dir, tokenizer, tmp_path):
    """One optimizer step over the whole data in 4 micro-batches logs the mean token loss of the
    data: the model normalises by the step's token count (`num_items_in_batch`) instead of
    leaving the Trainer to add up four means."""
    model = build(tiny_encoder_dir, tokenizer)
    examples = copy_examples(tokenizer, "train", 4)  # 12 examples: 4 micro-batches of 3
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    with torch.no_grad():
        expected = model.eval()(**collator(examples)).loss.item()
    trainer = Seq2SeqTrainer(
        model=model, args=arguments(tmp_path, per_device_train_batch_size=3, gradient_accumulation_steps=4,
                                    max_steps=1, learning_rate=1e-3),
        train_dataset=examples, data_collator=collator,
    )
    trainer.train()
    logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 1
    assert logged[0] == pytest.approx(expected, rel=1e-3)  # not 4 × it


def test_trainer_trains_and_predicts_with_generate(tiny_encoder_dir, tokenizer, tmp_path):
    model = build(tiny_encoder_dir, tokenizer)
    train = copy_examples(tokenizer, "train", 8)
    valid = copy_examples(tokenizer, "valid", 2)
    trainer = Seq2SeqTrainer(
        model=model, args=arguments(tmp_path, per_device_train_batch_size=8, per_device_eval_batch_size=6,
                                    max_steps=30, learning_rate=3e-3, predict_with_generate=True),
        train_dataset=train, eval_dataset=valid, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    )
    before = trainer.evaluate(eval_dataset=valid, max_new_tokens=4)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(eval_dataset=valid, max_new_tokens=4)["eval_loss"]
    assert after < before - 1.0, (before, after)

    bo = [e for e in valid if e["labels"][0] == language_tag_id(tokenizer, "bo")]
    out = trainer.predict(bo, max_new_tokens=6, forced_bos_token_id=language_tag_id(tokenizer, "bo"))
    predictions = np.where(out.predictions == -100, tokenizer.pad_token_id, out.predictions)
    assert predictions.shape[0] == len(bo)
    assert ((predictions != tokenizer.pad_token_id).sum(-1) <= 2 + 6).all()  # start, tag, at most 6 new (with </s>)
    assert (predictions[:, 0] == model.config.decoder_start_token_id).all()
    assert (predictions[:, 1] == language_tag_id(tokenizer, "bo")).all()  # the forced tag, then generated text
    # generated after the tag: the copy's first token, as the trained model learned it
    assert predictions[:, 2].tolist() == [e["labels"][1] for e in bo]
    assert "test_loss" in out.metrics
