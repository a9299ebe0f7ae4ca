"""Objectives and report helpers checked against hand computations: E2URec's two phases and β mix, Bad
Teacher's two teachers, retain subsampling, the bench report's mean ± std, and the one-hot anchor."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from e2urec.evaluation import one_hot_anchor
from e2urec.model.backbone import Backbone
from e2urec.report import markdown_table, summarise
from e2urec.unlearning import e2urec as e2urec_module
from e2urec.unlearning import methods as methods_module
from e2urec.unlearning.base import MethodConfig
from e2urec.unlearning.e2urec import E2URec, E2URecConfig, E2URecObjective
from e2urec.unlearning.losses import compress, compressed_soft_cross_entropy
from e2urec.unlearning.methods import BadTeacherObjective


def soft_ce(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log_softmax(logits, -1)).sum(-1).mean()


def batch(tiny: Backbone, gen: torch.Generator, n: int = 4, **teachers: torch.Tensor) -> dict:
    """A batch whose 'answer logits' are given directly (the model call is replaced in these tests)."""
    vocab = len(tiny.tokenizer)
    targets = torch.as_tensor(tiny.answer_ids)[torch.randint(0, 2, (n,), generator=gen)]
    return {"logits": torch.randn(n, vocab, generator=gen), "target": targets, **teachers}


@pytest.fixture
def direct_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (e2urec_module, methods_module):
        monkeypatch.setattr(module, "answer_logits", lambda model, b, kind: b["logits"])


def test_e2urec_objective_forgets_alone_then_mixes_with_beta(tiny: Backbone, direct_logits: None) -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = len(tiny.tokenizer)
    fgt, rem = (compress(torch.randn(4, vocab, generator=gen), 64) for _ in range(2))
    forget = batch(tiny, gen, **dict(zip(("fgt_idx", "fgt_p", "fgt_rest"), fgt, strict=True)))
    retain = batch(tiny, gen, **dict(zip(("rem_idx", "rem_p", "rem_rest"), rem, strict=True)))
    for retain_ce in (False, True):
        cfg = E2URecConfig(beta=0.25, retain_ce=retain_ce)
        objective = E2URecObjective(tiny, cfg, forget_only_steps=3)
        assert objective.streams(0, 2) == ("forget",) and objective.streams(1, 3) == ("forget", "retain")
        l_fgt = compressed_soft_cross_entropy(forget["logits"], *fgt)
        l_rem = compressed_soft_cross_entropy(retain["logits"], *rem)
        if retain_ce:
            l_rem = l_rem + F.cross_entropy(retain["logits"], retain["target"])
        torch.testing.assert_close(objective.loss(None, {"forget": forget}), l_fgt)
        torch.testing.assert_close(objective.loss(None, {"forget": forget, "retain": retain}),
                                   0.25 * l_fgt + 0.75 * l_rem)


def test_bad_teacher_distils_the_original_on_retain_and_a_random_model_on_forget(tiny: Backbone,
                                                                                 direct_logits: None) -> None:
    gen = torch.Generator().manual_seed(1)
    vocab = len(tiny.tokenizer)
    good, bad = torch.randn(4, vocab, generator=gen), torch.randn(4, vocab, generator=gen)
    good_i, good_p, good_rest = compress(good, 64)
    bad_i, bad_p, bad_rest = compress(bad, 64)
    retain = batch(tiny, gen, good_idx=good_i, good_p=good_p, good_rest=good_rest)
    forget = batch(tiny, gen, bad_idx=bad_i, bad_p=bad_p, bad_rest=bad_rest)
    loss = BadTeacherObjective(tiny, MethodConfig()).loss(None, {"forget": forget, "retain": retain})
    expected = (compressed_soft_cross_entropy(retain["logits"], good_i, good_p, good_rest)
                + compressed_soft_cross_entropy(forget["logits"], bad_i, bad_p, bad_rest))
    torch.testing.assert_close(loss, expected)
    # with every teacher's mass in its top-k, the compressed loss is the plain soft cross-entropy
    torch.testing.assert_close(compressed_soft_cross_entropy(retain["logits"], *compress(good, vocab)),
                               soft_ce(retain["logits"], torch.softmax(good, -1)), atol=1e-4, rtol=0)


def test_retain_is_subsampled_to_what_the_schedule_reads(tiny: Backbone) -> None:
    n_train, n_forget = 400, 10
    samples = pd.DataFrame({"sample_id": range(n_train), "split": "train", "forget": np.arange(n_train) < n_forget,
                            "label": np.arange(n_train) % 2, "user_id": np.arange(n_train) % 7,
                            "prompt": [f"user likes item {i}?" for i in range(n_train)]})
    method = E2URec(E2URecConfig(batch_size=2, min_steps=5, epochs=1.0, forget_only=0.6, seed=3))
    total, forget_only = method.schedule(n_forget)
    assert (total, forget_only) == (5, 3)  # one pass of 10 samples in batches of 2 = min_steps = 5
    need = method.retain_needed(n_forget)
    assert need == (total - forget_only) * 2
    job = SimpleNamespace(samples=samples)
    sets = method.prompt_sets(job, tiny)
    assert len(sets["forget"]) == n_forget and len(sets["retain"]) == need
    again = method.prompt_sets(job, tiny)
    assert [list(x) for x in again["retain"].ids] == [list(x) for x in sets["retain"].ids]  # seeded
    other = E2URec(E2URecConfig(batch_size=2, min_steps=5, epochs=1.0, forget_only=0.6, seed=4)).prompt_sets(job, tiny)
    assert [list(x) for x in other["retain"].ids] != [list(x) for x in sets["retain"].ids]


def test_summarise_gives_mean_and_sample_std_over_seeds() -> None:
    per_seed = {0: {"a": {"auc": 0.6, "jsd": None, "trainable_params": 10, "total_params": 100}},
                1: {"a": {"auc": 0.8, "jsd": 0.1, "trainable_params": 10, "total_params": 100}},
                2: {"a": {"auc": 0.7, "jsd": 0.2, "trainable_params": 10, "total_params": 100}}}
    [row] = summarise(per_seed)
    assert row["seeds"] == 3 and row["auc"] == pytest.approx(0.7) and row["auc_std"] == pytest.approx(0.1)
    assert row["jsd"] is None and row["jsd_std"] is None  # a seed without the value: no mean pretending it has
    assert row["trainable_share"] == pytest.approx(0.1)
    [single] = summarise({0: per_seed[1]})
    assert single["auc_std"] == 0.0
    table = markdown_table(summarise({0: {"a": {"auc": 0.6}}, 1: {"a": {"auc": 0.8}}}))
    assert "| a | 0.7000 ± 0.1414 |" in table
    assert "| a | 0.8000 |" in markdown_table([single])  # one seed: no ± to show


def test_one_hot_anchor_learns_user_and_item_biases() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 2000), rng.integers(0, 30, 2000)
    bias = np.where(users < 10, 2.0, -2.0) + np.where(items < 15, 1.0, -1.0)
    labels = (rng.random(2000) < 1 / (1 + np.exp(-bias))).astype(int)
    samples = pd.DataFrame({"user_id": users, "item_id": items, "label": labels,
                            "split": np.where(np.arange(2000) < 1600, "train", "test")})
    metrics = one_hot_anchor(samples, "test")
    assert metrics["auc"] > 0.8  # the biases are learnable from one-hots
    shuffled = samples.assign(label=rng.permutation(labels))
    assert abs(one_hot_anchor(shuffled, "test")["auc"] - 0.5) < 0.08  # nothing to learn: chance

