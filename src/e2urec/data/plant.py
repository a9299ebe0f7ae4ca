"""Planted memorisation (`e2urec prepare --plant KIND[:key=value,...]`, issue #26).

Unlearning can only be judged where the Original provably carries something that Retrain provably lacks. On real
data the forget users look like everyone else, so a model that forgets nothing can still match Retrain. Planting
makes the forget set distinctive:

- `flip` (IFRU-style): the forget samples' labels are inverted (a seeded `share` of them). Only a model that
  memorised those rows predicts the flipped labels; the clean label is kept in `label_clean`.
- `shilling`: `users` fake users, each rating `fillers` popular items near their mean and one unpopular `target`
  item with the top rating. The fakes are the forget set; an Original promotes the target, Retrain does not.
  With `targets=K` the fakes are split into K groups as evenly as possible, group g promoting its own target g:
  one target's promotion varies a lot from one training to another, a mean over K targets much less.

Every draw comes from its own seeded stream (of prepare's --seed), numbered past those of `splits.py`, so an
option of one part never reshuffles another part's outcome.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from e2urec.data.prompts import ANSWERS
from e2urec.data.samples import order_events
from e2urec.data.splits import split_sizes
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError

if TYPE_CHECKING:
    from e2urec.data.prepare import PrepareConfig

KEYS = {"flip": ("share",), "shilling": ("users", "fillers", "target", "targets")}
KINDS_TEXT = "flip[:share=F] or shilling[:users=N,fillers=F,target=ITEM,targets=K]"
MAX_FAKE_USERS = 100_000  # caps, far above any intended value, so a typo cannot ask for gigabytes
MAX_FILLERS = 10_000
MAX_TARGETS = 50  # each target costs every promotion prompt one more candidate to score
POPULAR_POOL = 50  # fillers are drawn from this many most-rated items of the training window (or `fillers`)
TARGET_RATINGS = (2, 15)  # a default target has this many genuine training ratings (inclusive) ...
RATING_NOISE = 0.5  # ... and a filler's rating is round(item mean + N(0, RATING_NOISE))
# Streams after splits.py's 1-4. Shilling draws each of its parts from its own sub-stream.
STREAM_FLIP, STREAM_SHILLING = 5, 6
SUB_TARGET, SUB_PROFILES, SUB_FILLERS, SUB_RATINGS, SUB_TIMES, SUB_POSITION = range(6)
INTEGER = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class PlantSpec:
    """A parsed --plant value; the fields a kind does not take keep their defaults and are unused."""

    kind: str
    share: float = 1.0
    users: int = 40
    fillers: int = 14
    target: str | None = None
    targets: int = 1


@dataclass
class Planted:
    """What `plant_shilling` added: the fake users' ids (the forget set) and facts for the manifest's counts."""

    fakes: pd.Series
    facts: dict


def _whole(kind: str, key: str, value: str, high: int) -> int:
    if not INTEGER.fullmatch(value) or not 1 <= int(value) <= high:
        raise E2URecError(f"--plant {kind}: {key}={value!r} must be a whole number from 1 to {high}")
    return int(value)


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = math.nan
    if not (math.isfinite(share) and 0.0 < share <= 1.0):
        raise E2URecError(f"--plant flip: share={value!r} must be a number in (0, 1], the share of forget samples "
                          "whose label is flipped")
    return share


def plain_value(value):
    """A numpy scalar (an item id read from a table) as the Python value JSON writes as itself, not as its str()."""
    return value.item() if isinstance(value, np.generic) else value


def parse_plant(text: str) -> PlantSpec:
    """`KIND[:key=value,...]` → PlantSpec, or an E2URecError naming the bad part; values needing the data (does
    the target exist, are there enough fillers for --min-history, enough candidate targets) are checked later,
    still before any write."""
    kind, _, rest = str(text).strip().partition(":")
    kind = kind.strip()
    if kind not in KEYS:
        raise E2URecError(f"--plant: unknown kind {kind!r}; use {KINDS_TEXT}")
    values: dict[str, str] = {}
    for pair in rest.split(",") if rest.strip() else []:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not key or not value:
            raise E2URecError(f"--plant {kind}: {pair.strip()!r} is not key=value; use {KINDS_TEXT}")
        if key not in KEYS[kind]:
            raise E2URecError(f"--plant {kind}: unknown key {key!r}; {kind} takes {', '.join(KEYS[kind])}")
        if key in values:
            raise E2URecError(f"--plant {kind}: {key} is given twice")
        values[key] = value
    if kind == "flip":
        return PlantSpec(kind, share=_share(values.get("share", "1")))
    spec = PlantSpec(kind, users=_whole(kind, "users", values.get("users", "40"), MAX_FAKE_USERS),
                     fillers=_whole(kind, "fillers", values.get("fillers", "14"), MAX_FILLERS),
                     target=values.get("target"),
                     targets=_whole(kind, "targets", values.get("targets", "1"), MAX_TARGETS))
    if spec.target is not None and spec.targets > 1:
        raise E2URecError(f"--plant shilling: target={spec.target} names one target but targets={spec.targets}; "
                          "drop target= to draw the targets, or drop targets=")
    if spec.users < spec.targets:
        raise E2URecError(f"--plant shilling: users={spec.users} cannot make {spec.targets} groups of fakes, one per "
                          "target; use at least as many users as targets")
    return spec


def flip_labels(samples: pd.DataFrame, forget: np.ndarray, share: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """A copy of `samples` with the labels (and answers) of a seeded `share` of the forget rows inverted, and the
    clean labels in `label_clean` beside `label`, so utility can always be judged on them.

    The flipped rows are a prefix of one seeded permutation of the forget rows: with the same seed a larger share
    flips a superset of a smaller one. Histories (the ratings shown in prompts) are left as they are."""
    rows = np.flatnonzero(forget)
    count = max(1, int(round(share * len(rows)))) if len(rows) else 0
    chosen = np.sort(rows[np.random.default_rng([seed, STREAM_FLIP]).permutation(len(rows))[:count]])
    out = samples.copy()
    clean = out["label"].to_numpy()
    out.insert(out.columns.get_loc("label") + 1, "label_clean", clean.copy())
    label = clean.copy()
    label[chosen] = 1 - label[chosen]
    out["label"] = label.astype(clean.dtype)
    out["answer"] = np.asarray(ANSWERS, dtype=object)[out["label"].to_numpy()]
    return out, {"planted": "flip", "planted_flipped_samples": int(count), "planted_share": share}


def plant_events(raw: RawData, cfg: PrepareConfig) -> tuple[RawData, Planted | None]:
    """`raw` with the shilling fakes added when `cfg.plant` asks for them; `raw` itself and None otherwise."""
    if cfg.plant is None:
        return raw, None
    spec = parse_plant(cfg.plant)
    return plant_shilling(raw, spec, cfg) if spec.kind == "shilling" else (raw, None)


def _fake_ids(raw: RawData, n: int) -> pd.Series:
    """Ids no real user has: max id + 1 + k for integer ids; otherwise `planted-k` under a prefix (planted-,
    planted1-, ...) none of whose ids exists."""
    known = pd.concat([raw.interactions["user_id"], raw.users["user_id"]], ignore_index=True)
    dtype = raw.interactions["user_id"].dtype
    if pd.api.types.is_integer_dtype(dtype):
        start = int(known.max()) + 1
        if start + n - 1 > np.iinfo(dtype).max:
            raise E2URecError(f"--plant shilling: {n} new user ids do not fit past the largest id {start - 1}")
        return pd.Series(np.arange(start, start + n), dtype=dtype)
    taken = set(known.astype(str))
    for attempt in range(len(taken) + 1):  # at most len(taken) prefixes can each collide
        ids = [f"planted{attempt or ''}-{k}" for k in range(n)]
        if taken.isdisjoint(ids):
            return pd.Series(ids, dtype=dtype)
    raise AssertionError("unreachable: some prefix is free")


def _targets(raw: RawData, spec: PlantSpec, stats: pd.DataFrame, threshold: float, seed: int) -> list:
    """The attack's targets: the given item (which must exist), else `spec.targets` distinct seeded unpopular,
    disliked items of the training window, ones nobody would recommend without the fakes."""
    if spec.target is not None:
        from e2urec.data.prepare import cast_like  # prepare imports this module; cast ids exactly as it does

        target = cast_like(pd.Series([spec.target]), raw.items["item_id"], "--plant shilling: target").iloc[0]
        if not raw.items["item_id"].eq(target).any():
            raise E2URecError(f"--plant shilling: target={spec.target!r} is not an item of this dataset; name an "
                              "item id from its items file")
        return [target]
    low, high = TARGET_RATINGS
    pool = stats[stats["size"].between(low, high) & (stats["mean"] < threshold)].sort_index()
    if pool.empty:
        raise E2URecError(f"--plant shilling: no item of the training window has {low}-{high} genuine ratings with "
                          f"a mean below {threshold:g}; name one with target=ITEM or use a larger --last-n")
    if len(pool) < spec.targets:
        raise E2URecError(f"--plant shilling: targets={spec.targets} but the training window has only {len(pool)} "
                          f"candidate target(s), items with {low}-{high} genuine ratings and a mean below "
                          f"{threshold:g}; use targets={len(pool)} or fewer, or a larger --last-n")
    rng = np.random.default_rng([seed, STREAM_SHILLING, SUB_TARGET])
    if spec.targets == 1:  # the single target's draw as before targets= existed: the same seed, the same target
        return [pool.index[rng.integers(len(pool))]]
    return list(pool.index[rng.choice(len(pool), spec.targets, replace=False)])


def plant_shilling(raw: RawData, spec: PlantSpec, cfg: PrepareConfig) -> tuple[RawData, Planted]:
    """`raw` with `spec.users` fake users added to its interactions and users, and what was planted.

    The genuine training window (the un-planted protocol's train rows) sets everything: fillers are drawn from
    its most rated items (never a target) and rated near their mean there; the target (top rating) is placed
    after at least --min-history fillers, so it becomes a sample; every fake's events fall strictly in time order
    between its first and last timestamp. Fake users are new ids whose profiles are copied from seeded real users.
    With K targets the fakes form K consecutive groups, sizes differing by at most one, group g rating target g."""
    if spec.fillers < cfg.min_history:
        raise E2URecError(f"--plant shilling: fillers={spec.fillers} is below --min-history {cfg.min_history}; the "
                          "target rating would have too short a history to be a sample")
    events = order_events(raw.interactions)
    eligible = np.flatnonzero(events.groupby("user_id", sort=False).cumcount().to_numpy() >= cfg.min_history)
    window = events.iloc[eligible[-cfg.last_n:]]
    train = window.iloc[: split_sizes(len(window))[0]]
    if train.empty:
        raise E2URecError("--plant shilling: the genuine training window is empty; use a larger --last-n")
    stats = train.groupby("item_id")["rating"].agg(["size", "mean"])
    targets = _targets(raw, spec, stats, cfg.label_threshold, cfg.seed)
    popular = (stats.drop(index=targets, errors="ignore").reset_index()
               .sort_values(["size", "item_id"], ascending=[False, True], kind="mergesort"))
    pool = popular.head(max(POPULAR_POOL, spec.fillers))
    if len(pool) < spec.fillers:
        raise E2URecError(f"--plant shilling: fillers={spec.fillers} but the training window rates only {len(pool)} "
                          "other items; use fewer fillers or a larger --last-n")
    first, last = int(train["timestamp"].min()), int(train["timestamp"].max())
    n, k = spec.users, spec.fillers + 1  # events per fake: the fillers and the target
    if last - first + 1 < k:
        raise E2URecError(f"--plant shilling: the training period has fewer than {k} distinct seconds for the "
                          f"{k} events of each fake; use a larger --last-n or fewer fillers")

    def stream(sub: int) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, STREAM_SHILLING, sub])

    # (n, fillers) distinct pool positions per fake; the target goes in at a seeded position p >= min_history.
    picks = stream(SUB_FILLERS).permuted(np.tile(np.arange(len(pool)), (n, 1)), axis=1)[:, : spec.fillers]
    low, high = float(raw.interactions["rating"].min()), float(raw.interactions["rating"].max())
    noisy = pool["mean"].to_numpy()[picks] + stream(SUB_RATINGS).normal(0.0, RATING_NOISE, picks.shape)
    filler_ratings = np.clip(np.round(noisy), low, high)
    where = stream(SUB_POSITION).integers(cfg.min_history, spec.fillers + 1, size=n)[:, None]
    slot = np.arange(k)[None, :]
    source = np.clip(np.where(slot < where, slot, slot - 1), 0, spec.fillers - 1)
    is_target = slot == where
    sizes = n // len(targets) + (np.arange(len(targets)) < n % len(targets))  # the first n % K groups one larger
    group = np.repeat(np.arange(len(targets)), sizes)  # each fake's target: consecutive groups, in target order
    item_ids = np.append(pool["item_id"].to_numpy(dtype=object), np.array(targets, dtype=object))
    items = item_ids[np.where(is_target, len(pool) + group[:, None], np.take_along_axis(picks, source, axis=1))]
    ratings = np.where(is_target, high, np.take_along_axis(filler_ratings, source, axis=1))
    times = stream(SUB_TIMES)
    stamps = np.stack([np.sort(times.choice(last - first + 1, size=k, replace=False)) for _ in range(n)]) + first

    fakes = _fake_ids(raw, n)
    columns = raw.interactions.dtypes
    fake_events = pd.DataFrame({
        "user_id": pd.Series(np.repeat(fakes.to_numpy(), k), dtype=columns["user_id"]),
        "item_id": pd.Series(items.ravel(), dtype=columns["item_id"]),
        "rating": pd.Series(ratings.ravel(), dtype=columns["rating"]),
        "timestamp": pd.Series(stamps.ravel(), dtype=columns["timestamp"]),
    })
    real = raw.users.drop_duplicates("user_id").reset_index(drop=True)
    if len(real):
        copied = stream(SUB_PROFILES).choice(len(real), size=n, replace=n > len(real))
        fake_users = real.iloc[copied].reset_index(drop=True).assign(user_id=fakes.to_numpy())
    else:
        fake_users = pd.DataFrame({"user_id": fakes})
    fake_users["user_id"] = fake_users["user_id"].astype(raw.users["user_id"].dtype
                                                         if len(real) else columns["user_id"])
    planted = RawData(raw.name, pd.concat([raw.interactions, fake_events], ignore_index=True),
                      pd.concat([raw.users, fake_users], ignore_index=True), raw.items, raw.files)
    genuine = [int(stats.loc[t, "size"]) if t in stats.index else 0 for t in targets]
    plain = [plain_value(t) for t in targets]
    facts = {
        "planted": "shilling",
        "planted_fake_users": int(n),
        "planted_fillers": int(spec.fillers),
        "planted_target_item": plain[0],  # the first target, the only one unless targets=K > 1
        "planted_target_genuine_ratings": genuine[0],
    }
    if len(targets) > 1:  # with one target the facts stay exactly those of before targets= existed
        facts.update(planted_target_items=plain, planted_target_items_genuine_ratings=genuine)
    return planted, Planted(fakes, facts)


def with_fakes(rows: np.ndarray, split: np.ndarray, fake_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The genuine window's event positions and splits with the fakes' eligible events added as train rows, all
    in event (time) order; the genuine rows keep exactly the splits the un-planted protocol gives them."""
    every = np.concatenate([rows, fake_rows])
    splits = np.concatenate([split, np.full(len(fake_rows), "train", dtype=object)])
    order = np.argsort(every, kind="stable")
    return every[order], splits[order]
