"""`prepare --plant` on real ML-100K: flipped forget labels and shilling fake users, each checked against the
un-planted run with the same arguments (which must itself stay exactly the paper's protocol)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.data.plant import TARGET_RATINGS, parse_plant, plant_events
from e2urec.data.prepare import PrepareConfig, build_samples, prepare
from e2urec.data.readers import read_dataset
from e2urec.data.rebuild import rebuild
from e2urec.data.sources import fetch
from e2urec.data.store import load_prepared, load_tables
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError
from e2urec.ops.request import match, read_request

runner = CliRunner()
LAST_N, SEED = 2000, 3
# The columns of samples.parquet before planting existed: an un-planted run must not gain any.
COLUMNS = ["sample_id", "user_id", "item_id", "rating", "timestamp", "label", "answer", "split", "forget",
           "sisa_shard", "receraser_shard", "prompt", "prompt_original", "history_item_ids", "history_ratings"]
GENUINE = ["user_id", "item_id", "rating", "timestamp", "label", "answer", "split", "prompt", "history_item_ids",
           "history_ratings"]


@pytest.fixture(scope="module")
def ml100k() -> Path:
    return fetch("ml-100k").path


@pytest.fixture(scope="module")
def raw(ml100k: Path) -> RawData:
    return read_dataset("ml-100k", ml100k)


def config(ml100k: Path, **kwargs) -> PrepareConfig:
    return PrepareConfig("ml-100k", data_dir=str(ml100k), **{"last_n": LAST_N, "seed": SEED, **kwargs})


@pytest.fixture(scope="module")
def plain(ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    out = tmp_path_factory.mktemp("plain") / "data"
    prepare(config(ml100k), out)
    return load_prepared(out)


@pytest.fixture(scope="module")
def shilled(ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shilling") / "data"
    prepare(config(ml100k, plant="shilling"), out)
    return out


def test_no_plant_leaves_the_protocol_untouched(ml100k: Path, plain: tuple[pd.DataFrame, dict],
                                                tmp_path: Path) -> None:
    samples, manifest = plain
    assert list(samples.columns) == COLUMNS
    assert manifest["config"]["plant"] is None and not any(k.startswith("planted") for k in manifest["counts"])
    result = runner.invoke(app, ["prepare", "--dataset", "ml-100k", "--data-dir", str(ml100k), "--last-n",
                                 str(LAST_N), "--seed", str(SEED), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    explicit = prepare(config(ml100k, plant=None), tmp_path / "none")
    _, cli = load_prepared(tmp_path / "cli")
    assert manifest["samples_sha256"] == cli["samples_sha256"] == explicit["samples_sha256"]
    assert manifest["tables_sha256"] == explicit["tables_sha256"]


def test_flip_inverts_exactly_the_forget_samples_and_keeps_the_clean_label(
        ml100k: Path, plain: tuple[pd.DataFrame, dict], tmp_path: Path) -> None:
    before, _ = plain
    manifest = prepare(config(ml100k, plant="flip"), tmp_path / "flip")
    after, _ = load_prepared(tmp_path / "flip")
    assert list(after.columns) == [*COLUMNS[:6], "label_clean", *COLUMNS[6:]]
    forget = after["forget"].to_numpy()
    assert forget.tolist() == before["forget"].tolist()  # forget users chosen as without planting
    assert after["label_clean"].tolist() == before["label"].tolist()
    assert (after.loc[forget, "label"] == 1 - after.loc[forget, "label_clean"]).all()
    assert (after.loc[~forget, "label"] == after.loc[~forget, "label_clean"]).all()
    assert (after["answer"] == np.where(after["label"] == 1, "Yes", "No")).all()
    same = [c for c in COLUMNS if c not in ("label", "answer")]  # prompts and histories stay untouched
    pd.testing.assert_frame_equal(after[same], before[same])
    assert manifest["counts"]["planted"] == "flip"
    assert manifest["counts"]["planted_flipped_samples"] == forget.sum()
    assert manifest["config"]["plant"] == "flip"


def test_flip_share_is_a_seeded_subset_growing_with_the_share(raw: RawData, ml100k: Path) -> None:
    def flipped(share: float, seed: int = SEED) -> set[int]:
        samples, facts = build_samples(raw, config(ml100k, plant=f"flip:share={share}", seed=seed))
        rows = samples.loc[samples["label"] != samples["label_clean"], "sample_id"]
        assert facts["planted_flipped_samples"] == len(rows)
        assert set(rows) <= set(samples.loc[samples["forget"], "sample_id"])
        return set(rows)

    small, large = flipped(0.3), flipped(0.6)
    forget = build_samples(raw, config(ml100k, plant="flip:share=0.3"))[0]["forget"].sum()
    assert len(small) == round(0.3 * forget) and len(large) == round(0.6 * forget)
    assert small < large and flipped(0.3) == small
    assert flipped(0.3, seed=SEED + 1) != small  # another seed, another subset (and other forget users)


def test_shilling_adds_fake_users_as_the_forget_set_and_leaves_the_genuine_rows_alone(
        shilled: Path, plain: tuple[pd.DataFrame, dict]) -> None:
    samples, manifest = load_prepared(shilled)
    before, _ = plain
    counts = manifest["counts"]
    genuine_ids = before["user_id"].max()
    fake = samples["user_id"] > 943  # ML-100K's largest user id
    assert genuine_ids <= 943 and samples.loc[fake, "user_id"].nunique() == 40
    assert counts["planted"] == "shilling" and counts["planted_fake_users"] == 40 and counts["planted_fillers"] == 14
    assert counts["planted_fake_samples"] == fake.sum() == 40 * (14 + 1 - 5)
    assert (samples.loc[fake, "split"] == "train").all()
    assert samples["forget"].tolist() == fake.tolist()  # all the fakes and only they
    assert counts["forget_users"] == 40 and manifest["config"]["forget_fraction"] is None
    assert (samples["sample_id"] == np.arange(len(samples))).all()
    assert samples["timestamp"].is_monotonic_increasing  # interleaved in time order
    genuine = samples.loc[~fake, GENUINE].reset_index(drop=True)
    pd.testing.assert_frame_equal(genuine, before[GENUINE])  # the same rows, splits and prompts


def test_shilling_fakes_rate_the_target_top_inside_the_training_period(
        shilled: Path, plain: tuple[pd.DataFrame, dict]) -> None:
    samples, manifest = load_prepared(shilled)
    before, _ = plain
    tables = load_tables(shilled)
    events, users = tables["events"], tables["users"]
    target = manifest["counts"]["planted_target_item"]
    fakes = events[events["user_id"] > 943]
    assert len(fakes) == 40 * 15 and len(events) == 100_000 + 40 * 15
    on_target = fakes[fakes["item_id"] == target]
    assert len(on_target) == 40 and (on_target["rating"] == events["rating"].max()).all()
    assert on_target["user_id"].nunique() == 40
    assert (fakes.groupby("user_id")["item_id"].nunique() == 15).all()
    assert set(fakes["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert fakes.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing and t.is_unique).all()
    train = before[before["split"] == "train"]
    assert fakes["timestamp"].between(train["timestamp"].min(), train["timestamp"].max()).all()
    # The target is a sample of every fake (at least --min-history fillers before it) and a default target is
    # unpopular and disliked in the genuine training window.
    rated = samples[(samples["item_id"] == target) & samples["forget"]]
    assert rated["user_id"].nunique() == 40
    genuine = train.loc[train["item_id"] == target, "rating"]
    assert TARGET_RATINGS[0] <= len(genuine) <= TARGET_RATINGS[1] and genuine.mean() < 3
    assert manifest["counts"]["planted_target_genuine_ratings"] == len(genuine)
    # Profiles are copied from real users; the users table holds the fakes, with ids nobody had.
    profile = ["gender", "age", "occupation"]
    real = set(map(tuple, users.loc[users["user_id"] <= 943, profile].to_numpy().tolist()))
    copied = users[users["user_id"] > 943]
    assert sorted(copied["user_id"]) == list(range(944, 984))
    assert set(map(tuple, copied[profile].to_numpy().tolist())) <= real


def test_later_fake_prompts_show_the_planted_ratings(shilled: Path) -> None:
    samples, manifest = load_prepared(shilled)
    events = load_tables(shilled)["events"]
    target = manifest["counts"]["planted_target_item"]
    for user, rows in samples[samples["forget"]].groupby("user_id"):
        own = events[events["user_id"] == user].reset_index(drop=True)
        for _, row in rows.iterrows():
            at = int(own.index[own["item_id"] == row["item_id"]][0])
            earlier = own.iloc[max(0, at - 10):at]
            assert list(row["history_item_ids"]) == earlier["item_id"].tolist()
            assert list(row["history_ratings"]) == earlier["rating"].tolist()
        after_target = rows[rows["timestamp"] > own.loc[own["item_id"] == target, "timestamp"].iloc[0]]
        for history, stars in zip(after_target["history_item_ids"], after_target["history_ratings"], strict=True):
            if target in list(history):  # still among the last K
                assert stars[list(history).index(target)] == 5.0
    assert any(target in list(h) for h in samples.loc[samples["forget"], "history_item_ids"])


def test_a_deletion_request_rebuilds_from_the_planted_tables(shilled: Path) -> None:
    samples, manifest = load_prepared(shilled)
    tables = load_tables(shilled)
    fake = int(samples.loc[samples["forget"], "user_id"].iloc[0])
    mask = match(tables["events"], read_request(users=[str(fake)]))
    retained, new_tables, forget_rows, counts = rebuild(samples, tables, mask, manifest["config"], whole_users=True)
    assert len(forget_rows) == 10 and counts["events_deleted"] == 15
    assert fake not in set(retained["user_id"]) and fake not in set(new_tables["users"]["user_id"])


def test_shilling_options_and_determinism(raw: RawData, ml100k: Path) -> None:
    cfg = config(ml100k, plant="shilling:users=5,fillers=8,target=1", min_history=3)
    samples, facts = build_samples(raw, cfg)
    assert facts["planted_target_item"] == 1 and facts["planted_fake_users"] == 5
    assert facts["planted_fake_samples"] == samples["forget"].sum() == 5 * (8 + 1 - 3)
    again, _ = build_samples(raw, cfg)
    pd.testing.assert_frame_equal(samples, again)
    planted, info = plant_events(raw, cfg)
    fillers = planted.interactions[planted.interactions["user_id"].isin(info.fakes)]
    assert len(fillers) == 5 * 9 and (fillers.loc[fillers["item_id"] == 1, "rating"] == 5.0).all()
    other, _ = build_samples(raw, config(ml100k, plant="shilling:users=5,fillers=8,target=1", min_history=3,
                                         seed=SEED + 1))
    assert other.loc[other["forget"], "item_id"].tolist() != samples.loc[samples["forget"], "item_id"].tolist()


def test_shilling_targets_split_the_fakes_into_one_group_per_target(raw: RawData, ml100k: Path) -> None:
    cfg = config(ml100k, plant="shilling:users=10,fillers=8,targets=3", last_n=4000)  # 8 candidate targets
    planted, info = plant_events(raw, cfg)
    facts = info.facts
    targets = facts["planted_target_items"]
    assert len(set(targets)) == 3 and facts["planted_target_item"] == targets[0]
    events = planted.interactions[planted.interactions["user_id"].isin(info.fakes)]
    on_target = events[events["item_id"].isin(targets)]
    assert (on_target["rating"] == 5.0).all() and on_target["user_id"].is_unique  # one target per fake
    assert on_target["user_id"].tolist() == info.fakes.tolist()  # every fake, in order
    group = on_target["item_id"].map({t: g for g, t in enumerate(targets)}).tolist()
    assert group == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # consecutive groups in target order, sizes differing by ≤ 1
    assert len(events) == 10 * 9 and (events.groupby("user_id")["item_id"].nunique() == 9).all()
    samples, built = build_samples(raw, cfg)
    assert built["planted_target_items"] == targets and samples["forget"].sum() == 10 * (9 - 5)
    genuine = samples[samples["split"].isin(["train", "holdout"]) & ~samples["forget"]]
    counts = [int((genuine["item_id"] == t).sum()) for t in targets]
    assert facts["planted_target_items_genuine_ratings"] == counts
    assert facts["planted_target_genuine_ratings"] == counts[0]
    assert all(TARGET_RATINGS[0] <= c <= TARGET_RATINGS[1] and genuine.loc[genuine["item_id"] == t, "rating"].mean() < 3
               for t, c in zip(targets, counts, strict=True))
    rated = samples[samples["forget"] & samples["item_id"].isin(targets)]  # each target a sample of its own fakes
    assert rated.groupby("item_id")["user_id"].nunique().reindex(targets).tolist() == [4, 3, 3]
    assert build_samples(raw, cfg)[1] == built  # seeded
    planted, even = plant_events(raw, config(ml100k, plant="shilling:users=6,fillers=8,targets=2", last_n=4000))
    rated = planted.interactions[planted.interactions["item_id"].isin(even.facts["planted_target_items"])
                                 & planted.interactions["user_id"].isin(even.fakes)]
    assert rated.groupby("item_id").size().tolist() == [3, 3]  # an even split


def test_shilling_fillers_never_include_a_target(raw: RawData, ml100k: Path) -> None:
    """A popular item named as the target is dropped from the filler pool: only its own top ratings are planted."""
    popular = int(raw.interactions["item_id"].value_counts().index[0])
    planted, info = plant_events(raw, config(ml100k, plant=f"shilling:users=30,fillers=40,target={popular}"))
    events = planted.interactions[planted.interactions["user_id"].isin(info.fakes)]
    on_target = events[events["item_id"] == popular]
    assert len(on_target) == 30 and (on_target["rating"] == 5.0).all()


def test_shilling_holds_out_a_share_of_the_genuine_train_users_only(raw: RawData, ml100k: Path) -> None:
    samples, _ = build_samples(raw, config(ml100k, plant="shilling", holdout_fraction=0.2))
    held = samples.loc[samples["split"] == "holdout", "user_id"].unique()
    genuine = samples.loc[samples["split"].isin(["train", "holdout"]) & ~samples["forget"], "user_id"].nunique()
    assert len(held) == round(0.2 * genuine) and not set(held) & set(samples.loc[samples["forget"], "user_id"])
    assert (samples.loc[samples["forget"], "split"] == "train").all()


def test_same_seed_same_checksum(ml100k: Path, shilled: Path, tmp_path: Path) -> None:
    _, first = load_prepared(shilled)
    again = prepare(config(ml100k, plant="shilling"), tmp_path / "again")
    assert again["samples_sha256"] == first["samples_sha256"] and again["tables_sha256"] == first["tables_sha256"]
    # targets=1, the default said out loud, plants exactly the same data and the same facts.
    one = prepare(config(ml100k, plant="shilling:targets=1"), tmp_path / "one")
    assert one["samples_sha256"] == first["samples_sha256"] and one["tables_sha256"] == first["tables_sha256"]
    assert one["counts"] == first["counts"] and "planted_target_items" not in one["counts"]
    flips = [prepare(config(ml100k, plant="flip:share=0.5"), tmp_path / f"flip{i}")["samples_sha256"]
             for i in range(2)]
    assert flips[0] == flips[1]


def test_string_ids_get_fresh_prefixed_fake_ids(raw: RawData, ml100k: Path) -> None:
    """String user ids: fakes are planted-k, or under another prefix when a real user is called planted-0."""
    inter = raw.interactions.assign(user_id=raw.interactions["user_id"].astype(str))
    inter.loc[inter["user_id"] == "1", "user_id"] = "planted-0"
    users = raw.users.assign(user_id=raw.users["user_id"].astype(str).replace({"1": "planted-0"}))
    text = RawData("ml-100k", inter, users, raw.items, raw.files)
    planted, info = plant_events(text, config(ml100k, plant="shilling:users=3"))
    assert info.fakes.tolist() == ["planted1-0", "planted1-1", "planted1-2"]
    assert planted.users["user_id"].is_unique and planted.users["user_id"].dtype == users["user_id"].dtype


@pytest.mark.parametrize("spec, message", [
    ("bogus", "unknown kind 'bogus'"),
    ("", "unknown kind ''"),
    ("flip:users=3", "unknown key 'users'"),
    ("flip:share", "is not key=value"),
    ("flip:share=0", "must be a number in (0, 1]"),
    ("flip:share=1.5", "must be a number in (0, 1]"),
    ("flip:share=nan", "must be a number in (0, 1]"),
    ("shilling:users=0", "whole number from 1"),
    ("shilling:users=-3", "whole number from 1"),
    ("shilling:users=2.5", "whole number from 1"),
    ("shilling:users=4,users=5", "given twice"),
    ("shilling:fillers=3", "below --min-history 5"),
    ("shilling:targets=0", "targets='0' must be a whole number from 1 to 50"),
    ("shilling:targets=51", "whole number from 1 to 50"),
    ("shilling:users=2,targets=3", "users=2 cannot make 3 groups of fakes"),
    ("shilling:target=1,targets=2", "target=1 names one target but targets=2"),
])
def test_bad_spec_is_refused_before_any_work(spec: str, message: str) -> None:
    with pytest.raises(E2URecError) as info:
        PrepareConfig("ml-100k", plant=spec)
    assert message in str(info.value)


@pytest.mark.parametrize("args, message", [
    (["--plant", "bogus"], "unknown kind"),
    (["--plant", "flip:share=0"], "(0, 1]"),
    (["--plant", "shilling:users=0"], "whole number from 1"),
    (["--plant", "shilling:fillers=2"], "below --min-history"),
    (["--plant", "shilling:target=99999"], "not an item of this dataset"),
    (["--plant", "shilling:target=1e2"], "plain digits"),
    (["--plant", "shilling", "--forget-fraction", "0.1"], "makes the fake users the forget set"),
    (["--plant", "shilling", "--forget-users", "1"], "makes the fake users the forget set"),
    (["--plant", "shilling", "--last-n", "300"], "no item of the training window"),
    (["--plant", "shilling:users=50,targets=50"], "targets=50 but the training window has only"),
    (["--plant", "shilling:users=3,targets=4"], "cannot make 4 groups"),
])
def test_bad_plant_is_one_clear_error_and_nothing_is_written(
        ml100k: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    base = ["prepare", "--dataset", "ml-100k", "--data-dir", str(ml100k), "--out", str(out)]
    result = runner.invoke(app, base + (args if "--last-n" in args else [*args, "--last-n", str(LAST_N)]))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_parse_plant_defaults() -> None:
    assert parse_plant("flip").share == 1.0
    spec = parse_plant(" shilling : users=7 , target=abc ")
    assert (spec.kind, spec.users, spec.fillers, spec.target, spec.targets) == ("shilling", 7, 14, "abc", 1)
    assert parse_plant("shilling:targets=4").targets == 4
