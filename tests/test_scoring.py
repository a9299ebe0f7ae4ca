"""The answer position is read the same way whatever the batch, padding, order or adapter wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from e2urec.errors import E2URecError
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.scoring import (
    answer_logits,
    collate,
    encode_prompts,
    p_yes_from_logits,
    score,
)

PROMPTS = [
    "The user is male.\nThe user rated these movies, oldest first (1 to 5 stars):\n"
    '"Heat (1995)" (4 stars)\n"Fargo (1996)" (5 stars)\n"Casino (1995)" (2 stars)\n'
    'Will the user like the movie "Se7en (1995)"? Answer Yes or No.\nAnswer:',
    'Will the user like the movie "Jaws (1975)"? Answer:',
    "The user rated these movies, oldest first (1 to 5 stars):\n\"Toy Story (1995)\" (1 star)\n"
    'Will the user like the movie "Babe (1995)"? Answer Yes or No.\nAnswer:',
    "Answer:",
    'The user is female, aged 25-34.\nWill the user like the movie "Heat (1995)"? Answer Yes or No.\nAnswer:',
]


def test_answer_logits_equals_last_position_of_a_full_forward(tiny: Backbone) -> None:
    batch = collate(tiny, encode_prompts(tiny.tokenizer, PROMPTS))
    with torch.inference_mode():
        kept = answer_logits(tiny.model, batch, "causal")
        full = tiny.model(**batch).logits[:, -1]
    assert kept.shape == (len(PROMPTS), tiny.model.config.vocab_size)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=0)


def test_collate_pads_causal_left_and_seq2seq_right(tiny: Backbone, tiny_t5: Backbone) -> None:
    causal = collate(tiny, [[5, 6, 7], [8]])
    pad = tiny.tokenizer.pad_token_id
    assert causal["input_ids"].tolist() == [[5, 6, 7], [pad, pad, 8]]
    assert causal["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert causal["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    seq2seq = collate(tiny_t5, [[5, 6, 7], [8]])
    pad = tiny_t5.tokenizer.pad_token_id
    assert seq2seq["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert seq2seq["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert seq2seq["decoder_input_ids"].tolist() == [[tiny_t5.model.config.decoder_start_token_id]] * 2


@pytest.mark.parametrize("fixture", ["tiny", "tiny_t5"])
def test_padded_batch_scores_like_each_prompt_alone(fixture: str, request: pytest.FixtureRequest) -> None:
    bb: Backbone = request.getfixturevalue(fixture)
    batched = score(bb, PROMPTS, batch_size=len(PROMPTS))
    alone = np.array([score(bb, [p], batch_size=1)[0] for p in PROMPTS])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    assert np.all((batched > 0) & (batched < 1))


def test_score_returns_input_order_despite_length_sorting(tiny: Backbone) -> None:
    forward = score(tiny, PROMPTS, batch_size=2)
    backward = score(tiny, PROMPTS[::-1], batch_size=2)
    np.testing.assert_allclose(backward, forward[::-1], atol=1e-5, rtol=0)
    assert len(set(np.round(forward, 6))) == len(PROMPTS)  # distinct values, so the order check means something


def test_p_yes_is_the_softmax_over_the_two_answer_logits() -> None:
    logits = torch.zeros(2, 5)
    logits[0, 3] = float(np.log(3.0))  # yes=3, no=1: P(yes) = 3 / (3 + 1)
    logits[1, 1] = 100.0  # a huge "no" logit
    logits[:, 4] = 50.0  # other tokens do not matter
    expected = torch.tensor([0.75, 0.0])
    torch.testing.assert_close(p_yes_from_logits(logits, (1, 3)), expected)
    torch.testing.assert_close(p_yes_from_logits(logits, torch.tensor([1, 3])), expected)


def test_answer_logits_ignores_non_model_keys(tiny: Backbone) -> None:
    batch = collate(tiny, encode_prompts(tiny.tokenizer, PROMPTS[:2]))
    extras = {"target": torch.tensor([1, 0]), "index": torch.arange(2)}
    with torch.inference_mode():
        assert torch.equal(answer_logits(tiny.model, batch, "causal"),
                           answer_logits(tiny.model, {**batch, **extras}, "causal"))


def test_encode_prompts_truncates_from_the_left(tiny: Backbone, tiny_t5: Backbone) -> None:
    full = encode_prompts(tiny.tokenizer, PROMPTS[:1])[0]
    assert encode_prompts(tiny.tokenizer, PROMPTS[:1], max_length=10)[0] == full[-10:]
    assert tiny.tokenizer.truncation_side == "left"
    full_t5 = encode_prompts(tiny_t5.tokenizer, PROMPTS[:1])[0]
    cut = encode_prompts(tiny_t5.tokenizer, PROMPTS[:1], max_length=10)[0]
    assert cut[-1] == tiny_t5.tokenizer.eos_token_id and cut[:-1] == full_t5[-10:-1]
    assert encode_prompts(tiny.tokenizer, []) == []


def test_score_keeps_the_training_mode_and_rejects_bad_input(tiny: Backbone) -> None:
    tiny.model.train()
    try:
        score(tiny, PROMPTS[:2])
        assert tiny.model.training
    finally:
        tiny.model.eval()
    with pytest.raises(E2URecError, match="empty"):
        score(tiny, [])
    with pytest.raises(E2URecError, match="batch_size"):
        score(tiny, PROMPTS, batch_size=0)


def test_works_through_a_peft_lora_wrapper() -> None:
    bb = load_backbone("tiny", seed=0)
    base_scores = score(bb, PROMPTS)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    wrapped = Backbone(get_peft_model(bb.model, config), bb.tokenizer, bb.kind, bb.name, bb.answer_ids)
    # LoRA starts as the identity (B = 0), so the wrapped model must score exactly like the base.
    np.testing.assert_allclose(score(wrapped, PROMPTS), base_scores, atol=1e-6, rtol=0)

    wrapped.model.train()
    batch = collate(wrapped, encode_prompts(wrapped.tokenizer, PROMPTS))
    logits = answer_logits(wrapped.model, batch, wrapped.kind)
    assert logits.shape == (len(PROMPTS), bb.model.config.vocab_size)
    target = torch.full((len(PROMPTS),), wrapped.answer_ids[1])
    torch.nn.functional.cross_entropy(logits, target).backward()
    grads = {n: p.grad for n, p in wrapped.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
