"""Metrics for the planted signal (issue #26): KS forget quality, the shilling target's promotion on genuine test
prompts, and both carried into bench rows and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from e2urec.bench import APPROXIMATE, EXACT, PRESETS, run_seed
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared, load_tables
from e2urec.errors import E2URecError
from e2urec.evaluation import (
    EvalConfig,
    evaluate,
    ks_forget_quality,
    planted,
    planted_row,
    promotion_prompts,
    promotion_scores,
)
from e2urec.evaluation.planted import PROMOTION_FILE, PROMOTION_KEYS, promotion
from e2urec.report import write_report

PROMPTS, CONTROLS = 40, 20
EVALS = EvalConfig(batch_size=32, mia_samples=30, promotion_prompts=PROMPTS, controls=CONTROLS)


def test_ks_forget_quality_by_hand() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.2, 0.8, 200)
    same = ks_forget_quality(p, p.copy())
    assert same == {"ks_forget_quality": pytest.approx(1.0), "ks_stat": 0.0}
    shifted = ks_forget_quality(p, np.clip(p + 0.2, 0, 1))
    assert shifted["ks_forget_quality"] < 1e-6 and shifted["ks_stat"] > 0.3
    slightly = ks_forget_quality(p, rng.uniform(0.2, 0.8, 150))  # the same distribution, another draw
    assert slightly["ks_forget_quality"] > shifted["ks_forget_quality"]
    for bad in (np.array([]), np.array([0.5, np.nan]), np.ones((2, 2))):
        with pytest.raises(E2URecError, match="KS forget quality"):
            ks_forget_quality(bad, p)


def test_promotion_scores_by_hand() -> None:
    controls = np.linspace(0.1, 0.5, 20)
    p = np.stack([np.r_[0.9, controls],                    # above every control: rank 1
                  np.r_[0.0, controls],                    # below every control: rank 21
                  np.r_[controls[10], controls],           # ties the 11th control, 9 above it: rank 10.5
                  np.r_[controls[11], controls]])          # 8 above, one tie: rank 9.5
    metrics, rank, z = promotion_scores(p)
    assert rank.tolist() == [1.0, 21.0, 10.5, 9.5]
    assert metrics["promotion_hr10"] == pytest.approx(0.5) and metrics["promotion_rank"] == pytest.approx(10.5)
    expected = (p[:, 0] - controls.mean()) / controls.std(ddof=1)
    np.testing.assert_allclose(z, expected)
    assert metrics["promotion_z"] == pytest.approx(expected.mean())
    flat = np.r_[0.7, np.full(20, 0.4)]  # controls all tied: no z for that prompt, the others still count
    metrics, _, z = promotion_scores(np.stack([flat, p[0]]))
    assert np.isnan(z[0]) and metrics["promotion_z"] == pytest.approx(expected[0])
    assert promotion_scores(flat[None])[0]["promotion_z"] is None
    for bad in (np.ones((0, 21)), np.ones((3, 2)), np.ones(21), np.r_[np.nan, controls][None]):
        with pytest.raises(E2URecError, match="promotion"):
            promotion_scores(bad)


def test_promotion_scores_with_two_targets_by_hand() -> None:
    """Each target is ranked against the controls alone (never against the other target); the metrics are the
    means over the targets of each target's hit rate, mean rank and mean z-score."""
    controls = np.linspace(0.1, 0.5, 20)
    p = np.stack([np.r_[0.9, controls[11], controls],          # target 0 rank 1, target 1 rank 9.5 (one tie)
                  np.r_[0.0, 0.95, controls],                  # 21 and 1
                  np.r_[controls[10], 0.9, controls]])         # 10.5 (target 1 above it does not count) and 1
    metrics, rank, z = promotion_scores(p, targets=2)
    assert rank.tolist() == [1.0, 9.5, 21.0, 1.0, 10.5, 1.0]  # per (prompt, target), prompt-major
    expected = (p[:, :2] - controls.mean()) / controls.std(ddof=1)
    np.testing.assert_allclose(z, expected.ravel())
    each = metrics["promotion_per_target"]
    assert each[0] == {"hr10": pytest.approx(1 / 3), "rank": pytest.approx(32.5 / 3),
                       "z": pytest.approx(expected[:, 0].mean())}
    assert each[1] == {"hr10": 1.0, "rank": pytest.approx(11.5 / 3), "z": pytest.approx(expected[:, 1].mean())}
    assert metrics["promotion_hr10"] == pytest.approx((1 / 3 + 1) / 2)
    assert metrics["promotion_rank"] == pytest.approx((32.5 / 3 + 11.5 / 3) / 2)
    assert metrics["promotion_z"] == pytest.approx(expected.mean())
    alone, rank0, z0 = promotion_scores(p[:, [0, *range(2, 22)]])  # target 0 scored alone: the same numbers
    assert rank0.tolist() == rank[::2].tolist() and "promotion_per_target" not in alone
    assert alone == {"promotion_hr10": each[0]["hr10"], "promotion_rank": each[0]["rank"],
                     "promotion_z": pytest.approx(each[0]["z"])}  # (the mean of the controls may differ by an ulp)
    flat = promotion_scores(np.r_[0.7, 0.2, np.full(20, 0.4)][None], targets=2)[0]
    assert flat["promotion_z"] is None and [e["z"] for e in flat["promotion_per_target"]] == [None, None]
    for bad, targets in ((p[:, :3], 2), (p, 0), (p, True)):
        with pytest.raises(E2URecError, match="promotion"):
            promotion_scores(bad, targets=targets)


@pytest.mark.parametrize("options", [{"controls": 1}, {"controls": 0}, {"promotion_prompts": 0},
                                     {"promotion_prompts": 2.5}, {"controls": True}, {"controls": 10**6}])
def test_bad_promotion_options_are_refused(options: dict) -> None:
    with pytest.raises(E2URecError, match="controls|promotion_prompts"):
        EvalConfig(**options)


@pytest.fixture(scope="module")
def shilled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shilling-planted ML-100K slice (10 fakes) and a tiny Original trained on it for 3 steps."""
    from e2urec.data.prepare import PrepareConfig, prepare
    from e2urec.data.sources import fetch
    from e2urec.engine import TrainConfig
    from e2urec.training import train

    root = tmp_path_factory.mktemp("shilled")
    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=2000, seed=0,
                          plant="shilling:users=10"), root / "data")
    train(root / "data", "original", "tiny", root / "original",
          TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3))
    return root


@pytest.fixture(scope="module")
def promoted(shilled: Path) -> dict:
    return evaluate(shilled / "original", shilled / "data", "test", shilled / "eval-test", EVALS)


def test_promotion_on_a_shilling_slice(shilled: Path, promoted: dict) -> None:
    samples, manifest = load_prepared(shilled / "data")
    counts = manifest["counts"]
    assert set(PROMOTION_KEYS) <= promoted.keys()
    assert 0.0 <= promoted["promotion_hr10"] <= 1.0 and 1.0 <= promoted["promotion_rank"] <= 1 + CONTROLS
    assert np.isfinite(promoted["promotion_z"])
    assert promoted["promotion_n"] == PROMPTS and promoted["promotion_target_item"] == counts["planted_target_item"]
    controls = promoted["promotion_control_items"]
    assert len(set(controls)) == CONTROLS and counts["planted_target_item"] not in controls
    assert set(controls) <= set(samples["item_id"])
    written = json.loads((shilled / "eval-test" / "metrics.json").read_text())
    assert written["promotion_hr10"] == promoted["promotion_hr10"] and written["promotion_control_items"] == controls
    per_prompt = pd.read_parquet(shilled / "eval-test" / PROMOTION_FILE)
    assert len(per_prompt) == PROMPTS and per_prompt["rank"].between(1, 1 + CONTROLS).all()
    assert (per_prompt["rank"] <= 10).mean() == pytest.approx(promoted["promotion_hr10"])
    # Genuine test users only: every prompt is a test sample, none of a fake (the forget users).
    test = rows_for(samples, "test").set_index("sample_id")
    assert per_prompt["sample_id"].isin(test.index).all()
    assert not per_prompt["user_id"].isin(rows_for(samples, "forget")["user_id"]).any()
    assert (test.loc[per_prompt["sample_id"], "user_id"].to_numpy() == per_prompt["user_id"].to_numpy()).all()


def test_promotion_prompts_only_swap_the_candidate(shilled: Path) -> None:
    samples, manifest = load_prepared(shilled / "data")
    tables = load_tables(shilled / "data")
    built = promotion_prompts(samples, tables, manifest, prompts=5, controls=CONTROLS, seed=0)
    titles = tables["items"].set_index("item_id")["title"]
    assert len(built.prompts) == 5 * (1 + CONTROLS)
    for k, stored in enumerate(built.rows["prompt"]):
        head = stored[: stored.rindex("Will the user like")]
        for j, item in enumerate([built.target, *built.controls]):
            prompt = built.prompts[k * (1 + CONTROLS) + j]
            assert prompt == f'{head}Will the user like the movie "{titles[item]}"? Answer Yes or No.\nAnswer:'
    again = promotion_prompts(samples, tables, manifest, prompts=5, controls=CONTROLS, seed=0)
    assert again.prompts == built.prompts  # seeded: the same prompts and controls
    other = promotion_prompts(samples, tables, manifest, prompts=5, controls=CONTROLS, seed=1)
    assert list(other.controls) != list(built.controls)


def test_promotion_is_deterministic(shilled: Path, promoted: dict) -> None:
    again = evaluate(shilled / "original", shilled / "data", "test", shilled / "eval-test-again", EVALS)
    assert {k: v for k, v in again.items() if k != "model"} == {k: v for k, v in promoted.items() if k != "model"}
    pd.testing.assert_frame_equal(pd.read_parquet(shilled / "eval-test" / PROMOTION_FILE),
                                  pd.read_parquet(shilled / "eval-test-again" / PROMOTION_FILE))


def test_forget_evaluation_with_a_reference_reports_ks(shilled: Path) -> None:
    cfg = EvalConfig(batch_size=32, mia_samples=30, reference_mia=False)
    metrics = evaluate(shilled / "original", shilled / "data", "forget", shilled / "eval-forget", cfg,
                       reference=shilled / "original")
    assert metrics["ks_forget_quality"] == pytest.approx(1.0) and metrics["ks_stat"] == 0.0  # itself as reference
    assert not set(PROMOTION_KEYS) & metrics.keys()  # promotion is a test-split metric
    alone = evaluate(shilled / "original", shilled / "data", "forget", shilled / "eval-forget-alone", cfg)
    assert "ks_forget_quality" not in alone


def test_unplanted_test_evaluation_has_no_promotion(shilled: Path, tmp_path: Path) -> None:
    from e2urec.data.prepare import PrepareConfig, prepare
    from e2urec.data.sources import fetch

    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=300), tmp_path / "data")
    metrics = evaluate(shilled / "original", tmp_path / "data", "test", tmp_path / "eval", EVALS)
    assert not set(PROMOTION_KEYS) & metrics.keys() and "promotion_n" not in metrics
    assert not (tmp_path / "eval" / PROMOTION_FILE).exists()
    samples, manifest = load_prepared(tmp_path / "data")
    with pytest.raises(E2URecError, match="not planted with shilling"):
        promotion_prompts(samples, load_tables(tmp_path / "data"), manifest)


@pytest.fixture(scope="module")
def two_targets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shilling slice with two targets, 5 fakes each (--last-n 4000: 2000 offers only one candidate target)."""
    from e2urec.data.prepare import PrepareConfig, prepare
    from e2urec.data.sources import fetch

    out = tmp_path_factory.mktemp("two-targets") / "data"
    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=4000, seed=0,
                          plant="shilling:users=10,targets=2"), out)
    return out


def test_promotion_with_two_targets_by_hand(two_targets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`promotion` on a P(yes) matrix made by hand (the model's scoring patched out): targets first, then the
    controls, on every prompt; one frame row per (prompt, target); the metrics are means over the targets."""
    samples, manifest = load_prepared(two_targets)
    tables = load_tables(two_targets)
    targets = manifest["counts"]["planted_target_items"]
    controls = np.linspace(0.1, 0.5, CONTROLS)
    p = np.stack([np.r_[0.9 if k % 2 == 0 else 0.0, controls[11], controls] for k in range(5)])
    seen = []
    monkeypatch.setattr(planted, "encode_prompts", lambda tokenizer, prompts, max_length: prompts)
    monkeypatch.setattr(planted, "PromptSet", lambda encoded: encoded)
    monkeypatch.setattr(planted, "per_sample_p_yes", lambda backbone, data, *args: seen.extend(data) or p.ravel())
    metrics, frame = promotion(SimpleNamespace(tokenizer=None), samples, tables, manifest, prompts=5,
                               controls=CONTROLS)
    assert len(seen) == 5 * (2 + CONTROLS)  # prompts × (targets + controls)
    titles = tables["items"].set_index("item_id")["title"]
    for k in range(5):
        for j, item in enumerate([*targets, *metrics["promotion_control_items"]]):
            assert f'like the movie "{titles[item]}"?' in seen[k * (2 + CONTROLS) + j]
    assert not set(targets) & set(metrics["promotion_control_items"])
    assert metrics["promotion_target_items"] == targets and metrics["promotion_target_item"] == targets[0]
    # Target 0: ranks 1, 21, 1, 21, 1; target 1 (ties the 12th control, 8 above it): 9.5 on every prompt.
    assert metrics["promotion_per_target"] == [
        {"item": targets[0], "hr10": 0.6, "rank": 9.0, "z": pytest.approx((0.9 * 3 / 5 - controls.mean())
                                                                          / controls.std(ddof=1))},
        {"item": targets[1], "hr10": 1.0, "rank": 9.5, "z": pytest.approx((controls[11] - controls.mean())
                                                                          / controls.std(ddof=1))}]
    assert metrics["promotion_hr10"] == pytest.approx(0.8) and metrics["promotion_rank"] == pytest.approx(9.25)
    assert json.loads(json.dumps(metrics)) == metrics  # plain JSON types
    assert list(frame.columns) == ["sample_id", "user_id", "target_item", "p_target", "p_controls_mean", "rank", "z"]
    assert frame["target_item"].tolist() == targets * 5 and frame["sample_id"].nunique() == 5
    assert frame["rank"].tolist() == [1.0, 9.5, 21.0, 9.5, 1.0, 9.5, 21.0, 9.5, 1.0, 9.5]
    assert frame["p_target"].tolist() == p[:, :2].ravel().tolist()
    np.testing.assert_allclose(frame["p_controls_mean"], controls.mean())


def test_promotion_with_two_targets_on_a_model(shilled: Path, two_targets: Path, tmp_path: Path) -> None:
    """The evaluation of a real model on two-target data: the per-prompt file holds both targets' rows, and the
    reported hit rate is the mean of the per-target ones it gives."""
    metrics = evaluate(shilled / "original", two_targets, "test", tmp_path / "eval", EVALS)
    targets = load_prepared(two_targets)[1]["counts"]["planted_target_items"]
    per_prompt = pd.read_parquet(tmp_path / "eval" / PROMOTION_FILE)
    assert len(per_prompt) == 2 * PROMPTS and per_prompt["target_item"].tolist() == targets * PROMPTS
    hits = (per_prompt["rank"] <= 10).groupby(per_prompt["target_item"]).mean()
    assert [e["hr10"] for e in metrics["promotion_per_target"]] == pytest.approx(hits.reindex(targets).tolist())
    assert metrics["promotion_hr10"] == pytest.approx(hits.mean())
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["promotion_per_target"] == metrics["promotion_per_target"]


def test_planted_row_carries_the_metrics_or_none() -> None:
    assert planted_row({"auc": 0.7}, {"auc": 0.6}) == {"ks_forget_quality": None, "promotion_hr10": None,
                                                        "promotion_rank": None, "promotion_z": None}
    test = {"promotion_hr10": 0.9, "promotion_rank": 3.5, "promotion_z": 1.2, "promotion_n": 40}
    assert planted_row(test, {"ks_forget_quality": 0.04}) == {"ks_forget_quality": 0.04, "promotion_hr10": 0.9,
                                                              "promotion_rank": 3.5, "promotion_z": 1.2}


class NoStages:
    """A bench `stage` that runs nothing: the test writes each stage's outputs itself."""

    def log(self, line: str) -> None:
        pass

    def __call__(self, *args, **kwargs) -> None:
        pass


def fake_run(root: Path, shilled: Path, rows: tuple[str, ...], hr10: dict[str, float] | None) -> dict:
    """`run_seed` over stage outputs written by hand (meta.json copied from a real model, metrics, predictions):
    the row building and the closures without training or evaluating anything."""
    root.mkdir(parents=True)
    (root / "data").symlink_to(shilled / "data", target_is_directory=True)
    test_ids = rows_for(load_prepared(shilled / "data")[0], "test")["sample_id"].to_numpy()
    for k, row in enumerate(rows):
        (root / row).mkdir(parents=True)
        shutil.copy(shilled / "original" / "meta.json", root / row / "meta.json")
        test = {"auc": 0.7, "acc": 0.6, "logloss": 0.6}
        if hr10 is not None:
            test.update(promotion_hr10=hr10[row], promotion_rank=10.0 - k, promotion_z=0.5 * k)
        forget = {"auc": 0.8 - 0.1 * k, "logloss": 0.5, "within_user_auc": 0.6, "jsd": 0.01, "l2": 0.1,
                  "jsd_yesno": 0.001, "l2_yesno": 0.01, "sym_kl": 0.02, "mia_auc": 0.5, "ks_forget_quality": 0.1 * k}
        for split, metrics in (("test", test), ("forget", forget)):
            folder = root / "eval" / f"{row}-{split}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(metrics))
            pd.DataFrame({"sample_id": test_ids, "p_yes": np.full(len(test_ids), 0.5)}).to_parquet(
                folder / "predictions.parquet")
    return run_seed(root, "ml-100k", None, "tiny", PRESETS["demo"], 0, NoStages(), rows)


def test_bench_rows_carry_planted_metrics_and_promotion_closure(shilled: Path, tmp_path: Path) -> None:
    method = APPROXIMATE[0]
    rows = ("original", EXACT, method)
    results = fake_run(tmp_path / "shilling", shilled, rows, {"original": 0.9, EXACT: 0.5, method: 0.6})
    assert results[method]["ks_forget_quality"] == pytest.approx(0.2)
    assert results[method]["promotion_hr10"] == 0.6 and results[method]["promotion_rank"] == 8.0
    assert results[method]["promotion_z"] == pytest.approx(1.0)
    assert results[method]["closure_promotion"] == pytest.approx(0.75)  # (0.9 − 0.6) / (0.9 − 0.5)
    assert results["original"]["closure_promotion"] == 0.0 and results[EXACT]["closure_promotion"] == 1.0
    config = {"dataset": "ml-100k", "backbone": "tiny", "preset": "custom", "plant": "shilling:users=10"}
    write_report(tmp_path / "shilling", {0: results}, config, {})
    report = (tmp_path / "shilling" / "report.md").read_text()
    assert "KS forget quality" in report and "promotion HR@10" in report and "gap closure (promotion)" in report
    assert "| 0.75 |" in report

    plain = fake_run(tmp_path / "plain", shilled, rows, None)
    for values in plain.values():
        assert values["promotion_hr10"] is None and values["closure_promotion"] is None
        assert "ks_forget_quality" in values
    write_report(tmp_path / "plain", {0: plain}, {**config, "plant": None}, {})
    report = (tmp_path / "plain" / "report.md").read_text()
    assert "KS forget quality" in report and "promotion HR@10" not in report
