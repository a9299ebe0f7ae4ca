"""The data protocol on real ML-100K, checked against an independent plain-pandas recomputation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.rebuild import KEY, rebuild
from e2urec.data.samples import history_index
from e2urec.data.sources import fetch
from e2urec.data.store import load_prepared, load_tables
from e2urec.ops.request import match, read_request

runner = CliRunner()


@pytest.fixture(scope="module")
def ml100k() -> Path:
    return fetch("ml-100k").path


@pytest.fixture(scope="module")
def prepared(ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    out = tmp_path_factory.mktemp("prep") / "ml100k"
    prepare(PrepareConfig("ml-100k", data_dir=str(ml100k)), out)
    return load_prepared(out)


def raw_ratings(folder: Path) -> pd.DataFrame:
    """Read the raw files with plain pandas, independently of e2urec's readers."""
    if (folder / "u.data").is_file():
        return pd.read_csv(folder / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    frame = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def test_counts_match_an_independent_recomputation(ml100k: Path, prepared: tuple[pd.DataFrame, dict]) -> None:
    samples, manifest = prepared
    raw = raw_ratings(ml100k).sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    raw["earlier"] = raw.groupby("user_id").cumcount()
    expected = raw[raw["earlier"] >= 5].tail(100_000).reset_index(drop=True)
    n = len(expected)
    n_train, n_valid = int(n * 0.6), int(n * 0.2)
    expected["split"] = ["train"] * n_train + ["valid"] * n_valid + ["test"] * (n - n_train - n_valid)

    assert len(samples) == n
    for column in ("user_id", "item_id", "timestamp", "rating"):
        assert samples[column].tolist() == expected[column].tolist(), column
    assert samples["label"].tolist() == (expected["rating"] > 3).astype(int).tolist()
    assert set(samples["answer"]) == {"Yes", "No"}
    assert (samples["answer"] == np.where(samples["label"] == 1, "Yes", "No")).all()

    train_users = expected.loc[expected["split"] == "train", "user_id"].unique()
    forget_users = samples.loc[samples["forget"], "user_id"].unique()
    assert len(forget_users) == round(0.2 * len(train_users))
    assert set(forget_users) <= set(train_users)
    assert samples["split"].tolist() == expected["split"].tolist()  # no users held out by default
    expected_forget = (expected["split"] == "train") & expected["user_id"].isin(forget_users)
    assert samples["forget"].tolist() == expected_forget.tolist()
    counts = manifest["counts"]
    assert counts["samples"] == n and counts["train_samples"] == n_train and counts["valid_samples"] == n_valid
    assert counts["holdout_samples"] == 0
    assert counts["forget_samples"] == int(expected_forget.sum())
    assert counts["forget_users"] == len(forget_users)


def test_histories_are_the_last_k_earlier_ratings(ml100k: Path, prepared: tuple[pd.DataFrame, dict]) -> None:
    samples, _ = prepared
    raw = raw_ratings(ml100k).sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    by_user = {u: g for u, g in raw.groupby("user_id", sort=False)}
    for row in samples.sample(200, random_state=0).itertuples():
        user_rows = by_user[row.user_id]
        position = user_rows.index.get_loc(
            user_rows.index[(user_rows["item_id"] == row.item_id).to_numpy()][0]
        )
        earlier = user_rows.iloc[max(0, position - 10):position]
        assert list(row.history_item_ids) == earlier["item_id"].tolist()
        assert list(row.history_ratings) == earlier["rating"].astype(float).tolist()
        assert row.prompt.endswith("Answer:")


def test_manifest_and_shards(prepared: tuple[pd.DataFrame, dict]) -> None:
    samples, manifest = prepared
    assert manifest["config"]["history"] == 10 and manifest["config"]["shards"] == 4
    assert set(manifest["inputs_sha256"]) and all(len(h) == 64 for h in manifest["inputs_sha256"].values())
    train = samples[samples["split"] == "train"]
    assert set(train["sisa_shard"]) == {0, 1, 2, 3}
    assert (samples.loc[samples["split"] != "train", "sisa_shard"] == -1).all()
    per_user = train.groupby("user_id")["receraser_shard"].nunique()
    assert (per_user == 1).all(), "RecEraser shards group whole users"
    rows_per_shard = train.groupby("receraser_shard").size()
    heaviest_user = train.groupby("user_id").size().max()
    assert set(rows_per_shard.index) == {0, 1, 2, 3}
    assert rows_per_shard.max() <= len(train) / 4 + heaviest_user, "shards hold similar amounts of data"


def test_same_seed_same_output_other_seed_other_forget_set(ml100k: Path, tmp_path: Path) -> None:
    a = prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=3000, seed=7), tmp_path / "a")
    b = prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=3000, seed=7), tmp_path / "b")
    c = prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=3000, seed=8), tmp_path / "c")
    assert a["samples_sha256"] == b["samples_sha256"]
    forget_a = load_prepared(tmp_path / "a")[0].query("forget")["user_id"].unique()
    forget_c = load_prepared(tmp_path / "c")[0].query("forget")["user_id"].unique()
    assert set(forget_a) != set(forget_c)
    assert c["counts"]["samples"] == 3000


def test_forgotten_interaction_leaves_every_later_history(ml100k: Path, tmp_path: Path) -> None:
    base = prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=5000), tmp_path / "base")
    samples = load_prepared(tmp_path / "base")[0]
    assert base["counts"]["samples"] == 5000
    train = samples[samples["split"] == "train"]
    # A train interaction of a user with many later samples, so several later prompts showed it.
    busiest = train["user_id"].value_counts().index[0]
    target = train[train["user_id"] == busiest].iloc[0]
    request = tmp_path / "forget.csv"
    pd.DataFrame({"user_id": [target.user_id], "item_id": [target.item_id]}).to_csv(request, index=False)
    prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=5000, forget_interactions=str(request)),
            tmp_path / "forgot")
    after, manifest = load_prepared(tmp_path / "forgot")
    assert after["forget"].sum() == 1
    assert after.loc[after["forget"], "item_id"].item() == target.item_id
    later = after[(after["user_id"] == busiest) & (after["timestamp"] >= target.timestamp)
                  & (after["sample_id"] != target.sample_id)]
    shown_before = later[[target.item_id in h for h in samples.loc[later.index, "history_item_ids"]]]
    assert len(shown_before) > 0, "the test needs prompts that showed the interaction"
    for row in later.itertuples():
        assert target.item_id not in list(row.history_item_ids)
    # Those prompts were rebuilt; the Original's view is kept separately.
    assert shown_before["prompt_original"].notna().all()
    assert (shown_before["prompt"] != shown_before["prompt_original"]).all()
    assert manifest["counts"]["prompts_rebuilt"] == len(shown_before)
    untouched = after[after["user_id"] != busiest]
    assert untouched["prompt_original"].isna().all()
    assert (untouched["prompt"] == samples.loc[untouched.index, "prompt"]).all()


def test_a_deletion_request_rebuilds_prompts_as_prepare_builds_them(ml100k: Path, tmp_path: Path) -> None:
    """One sample builder (issue 14): the prompts a deletion request rebuilds are exactly those prepare writes when
    the same interactions are forgotten, and the old texts it forgets are prepare's `prompt_original`."""
    prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=2000), tmp_path / "base")
    samples, manifest = load_prepared(tmp_path / "base")
    train = samples[samples["split"] == "train"]
    gone = train[train["user_id"] == train["user_id"].value_counts().index[0]].iloc[:2][KEY]
    gone.to_csv(tmp_path / "gone.csv", index=False)
    prepare(PrepareConfig("ml-100k", data_dir=str(ml100k), last_n=2000,
                          forget_interactions=str(tmp_path / "gone.csv")), tmp_path / "forgot")
    forgot = load_prepared(tmp_path / "forgot")[0].set_index("sample_id")
    tables = load_tables(tmp_path / "base")
    mask = match(tables["events"], read_request(interactions=gone.astype(str)))
    retained, _, forget_rows, counts = rebuild(samples, tables, mask, manifest["config"], whole_users=False)
    assert counts["prompts_rebuilt"] > 0 and counts["samples_dropped_short_history"] == 0
    assert len(retained) == len(samples) - len(gone)
    expected = forgot.loc[retained["sample_id"]]
    assert retained["prompt"].tolist() == expected["prompt"].tolist()
    for column in ("history_item_ids", "history_ratings"):
        assert [list(v) for v in retained[column]] == [list(v) for v in expected[column]], column
    shown = forgot[forgot["forget"] | (forgot["prompt_original"].notna() & (forgot["split"] == "train"))]
    assert sorted(forget_rows["sample_id"]) == sorted(shown.index)
    assert forget_rows.set_index("sample_id")["prompt"].to_dict() == \
        shown["prompt_original"].fillna(shown["prompt"]).to_dict()


def test_history_index_skips_invisible_events() -> None:
    users = np.array([1, 2, 1, 1, 2, 1])
    visible = np.array([True, True, False, True, True, True])
    index, count = history_index(users, visible, 2)
    assert index.tolist() == [[-1, -1], [-1, -1], [-1, 0], [-1, 0], [-1, 1], [0, 3]]
    assert count.tolist() == [0, 0, 1, 1, 1, 2]


def test_cli_prepare_prints_summary(ml100k: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--dataset", "ml-100k", "--data-dir", str(ml100k),
                                 "--last-n", "2000", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "forget samples" in result.output and "2,000" in result.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 2000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope"], "'nope' is not one of"),
        (["--forget-fraction", "1.5"], "strictly between 0 and 1"),
        (["--forget-fraction", "0"], "strictly between 0 and 1"),
        (["--holdout-fraction", "1"], "out of range"),
        (["--holdout-fraction", "0.9"], "leaving nothing to retain"),
        (["--holdout-fraction", "-0.1"], "out of range"),
        (["--forget-users", "999999,888888"], "2 users not in the data"),
        (["--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_bad_input_is_one_clear_error_and_out_is_untouched(
    ml100k: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a data folder: the only kind --overwrite may replace
    (out / "keep.txt").write_text("precious")
    base = ["prepare", "--out", str(out), "--overwrite", "--last-n", "2000"]
    if "--dataset" not in args:
        base += ["--dataset", "ml-100k"]
    if "--data-dir" not in args:
        base += ["--data-dir", str(ml100k)]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json"]
    assert (out / "keep.txt").read_text() == "precious"


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t100\n1\t2\tfive\t101\n")
    (folder / "u.user").write_text("1|24|M|technician|10001\n")
    (folder / "u.item").write_text("1|A (1995)|x||u|" + "|".join("0" * 19) + "\n2|B (1995)|x||u|"
                                   + "|".join("0" * 19) + "\n")
    result = runner.invoke(app, ["prepare", "--dataset", "ml-100k", "--data-dir", str(folder),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{folder / 'u.data'}:2" in result.output
    assert not (tmp_path / "o").exists()


def test_empty_and_unknown_forget_interactions(ml100k: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id,item_id\n")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("user_id,item_id\n1,1\n999999,5\n")
    for request, message in ((empty, "empty"), (unknown, "1 interactions not in the data")):
        result = runner.invoke(app, ["prepare", "--dataset", "ml-100k", "--data-dir", str(ml100k),
                                     "--forget-interactions", str(request), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "o").exists()


def test_user_with_no_training_rows_cannot_be_forgotten(ml100k: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--dataset", "ml-100k", "--data-dir", str(ml100k), "--last-n",
                                 "2000", "--forget-users", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no training samples" in result.output


def test_held_out_users_are_unforgotten_train_users_whose_train_rows_nobody_trains_on(ml100k: Path) -> None:
    """--holdout-fraction 0.2: a fifth of the train users, none of them forgotten, lose their train-period rows
    to the "holdout" split (and to no shard); the forget set is exactly the one without holding out."""
    from e2urec.data.prepare import build_samples, summarise
    from e2urec.data.readers import read_dataset

    raw = read_dataset("ml-100k", ml100k)
    paper, _ = build_samples(raw, PrepareConfig("ml-100k", last_n=3000, seed=5))
    held, _ = build_samples(raw, PrepareConfig("ml-100k", last_n=3000, seed=5, holdout_fraction=0.2))
    assert "holdout" not in set(paper["split"])
    assert paper["forget"].tolist() == held["forget"].tolist()
    moved = paper["split"] != held["split"]
    assert set(paper.loc[moved, "split"]) == {"train"} and set(held.loc[moved, "split"]) == {"holdout"}
    train_users = paper.loc[paper["split"] == "train", "user_id"].unique()
    users = held.loc[moved, "user_id"].unique()
    assert len(users) == round(0.2 * len(train_users)) and not set(users) & set(held.loc[held["forget"], "user_id"])
    assert (paper.loc[paper["user_id"].isin(users) & (paper["split"] == "train")].index == held.index[moved]).all()
    assert (held.loc[moved, "sisa_shard"] == -1).all() and (held.loc[moved, "receraser_shard"] == -1).all()
    counts = summarise(held)
    assert counts["holdout_samples"] == moved.sum() and counts["holdout_users"] == len(users)
    assert counts["train_samples"] == (paper["split"] == "train").sum() - moved.sum()


def test_a_larger_forget_fraction_forgets_a_superset() -> None:
    from e2urec.data.splits import choose_forget_users

    users = np.arange(200)
    small, large = (set(choose_forget_users(users, f, seed=3).tolist()) for f in (0.05, 0.4))
    assert len(small) == 10 and len(large) == 80 and small < large
    assert set(choose_forget_users(users, 0.05, seed=4).tolist()) != small
