"""`e2urec prepare`: raw files → prompt samples with splits, forget flags and shards, written atomically.

Output contract (read by every later stage): `samples.parquet` (one row per sample) and `manifest.json`
(config, counts, checksums of inputs and of samples.parquet).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec import __version__
from e2urec.data.plant import Planted, flip_labels, parse_plant, plant_events, with_fakes
from e2urec.data.prompts import ANSWERS, build_prompts, profile_text
from e2urec.data.readers import ITEM_NOUN, read_dataset
from e2urec.data.samples import gather_lists, history_index, order_events
from e2urec.data.splits import (
    choose_forget_users,
    choose_holdout_users,
    receraser_shards,
    sisa_shards,
    temporal_split,
)
from e2urec.data.store import MANIFEST_FILE, SAMPLES_FILE, write_prepared
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError, UnknownIds
from e2urec.io import sha256_file
from e2urec.options import MAX_HISTORY, MAX_ROWS, MAX_SEED, MAX_SHARDS

# Off by default: on the demo and `cpu` slices (3 and 9 held-out users) the held-out level was no closer to
# Retrain's than the later-period pools (docs/studies.md, "Which non-members").
HOLDOUT_FRACTION = 0.0
INTEGER = re.compile(r"-?[0-9]{1,20}")  # digits only: no exponent, fraction, separator or sign games
__all__ = ["MANIFEST_FILE", "SAMPLES_FILE", "PrepareConfig", "build_samples", "prepare"]


@dataclass
class PrepareConfig:
    """The paper's data protocol, its values the defaults: the last 100k samples, K=10 history (at least M=5),
    rating > 3 is a like, a 60/20/20 time split, 20% of train users forgotten, 4 SISA/RecEraser shards.

    One option beyond it: `holdout_fraction` of the train users not forgotten are held out (split "holdout"): no
    model trains on their training-period samples, which makes them what the forgotten users are to Retrain, the
    non-members E2URec calibrates and stops on. 0 (the default) keeps the paper's split exactly.

    `plant` (`e2urec.data.plant`, default none: the paper's protocol untouched) plants what the Original must
    memorise and Retrain cannot know: flipped forget labels, or shilling fake users who are then the forget set."""

    dataset: str
    data_dir: str | None = None
    last_n: int = 100_000
    history: int = 10
    min_history: int = 5
    label_threshold: float = 3.0
    forget_fraction: float | None = None
    forget_users: list[str] | None = None
    forget_interactions: str | None = None
    shards: int = 4
    holdout_fraction: float = HOLDOUT_FRACTION
    seed: int = 0
    reader_options: dict = field(default_factory=dict)
    plant: str | None = None

    def __post_init__(self) -> None:
        spec = parse_plant(self.plant) if self.plant is not None else None
        chosen = [self.forget_fraction is not None, self.forget_users is not None,
                  self.forget_interactions is not None]
        if spec is not None and spec.kind == "shilling":
            if any(chosen):  # the fakes and only they are forgotten, so no default forget fraction either
                raise E2URecError("--plant shilling makes the fake users the forget set; drop --forget-fraction, "
                                  "--forget-users and --forget-interactions")
        elif sum(chosen) > 1:
            raise E2URecError("give only one of --forget-fraction, --forget-users, --forget-interactions")
        elif sum(chosen) == 0:
            self.forget_fraction = 0.2
        if self.forget_fraction is not None and not 0.0 < self.forget_fraction < 1.0:
            raise E2URecError(f"--forget-fraction must be strictly between 0 and 1, got {self.forget_fraction}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise E2URecError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.forget_users is not None and not self.forget_users:
            raise E2URecError("--forget-users is empty: name at least one user id")
        # Upper bounds too: --history sizes (events × K) index arrays, so a typo of a few digits would ask for
        # hundreds of GiB before failing; the caps are far above any intended value (e2urec.options).
        bounds = (("--last-n", self.last_n, 1, MAX_ROWS), ("--history", self.history, 1, MAX_HISTORY),
                  ("--min-history", self.min_history, 0, MAX_ROWS), ("--shards", self.shards, 1, MAX_SHARDS),
                  ("--seed", self.seed, 0, MAX_SEED))
        for name, value, low, high in bounds:
            if value < low:
                raise E2URecError(f"{name} must be at least {low}, got {value}")
            if value > high:
                raise E2URecError(f"{name} must be at most {high}, got {value}")
        if spec is not None and spec.kind == "shilling" and spec.fillers < self.min_history:
            raise E2URecError(f"--plant shilling: fillers={spec.fillers} is below --min-history {self.min_history}; "
                              "the target rating would have too short a history to be a sample")


def cast_like(values: pd.Series, like: pd.Series, what: str) -> pd.Series:
    """Cast user-given ids to the dataset's id type, exactly: "42" matches the integer id 42, while "1e2", "13.0",
    and values outside the type's range are refused rather than coerced into another (or a wrapped) id."""
    if pd.api.types.is_integer_dtype(like):
        info = np.iinfo(like.dtype)
        text = values.astype(str).str.strip()
        numbers = [int(t) if INTEGER.fullmatch(t) else None for t in text]
        bad = sum(n is None or not info.min <= n <= info.max for n in numbers)
        if bad:
            noun = "values" if "timestamp" in what else "ids"
            raise E2URecError(f"{what}: {bad} of {len(numbers)} {noun} are not integers in this dataset's range "
                              f"({info.min}..{info.max}); write them as plain digits (1e2 and 13.0 are refused)")
        return pd.Series(numbers, index=values.index, dtype=like.dtype)
    return values.astype(str).str.strip()


def cast_known(values, like: pd.Series, what: str, known: pd.Series | pd.Index | None = None
               ) -> tuple[pd.Series, list]:
    """User-given ids cast like `like`, and those not among `known` (default: `like`), sorted and distinct."""
    ids = cast_like(pd.Series(list(values), dtype=object), like, what)
    return ids, sorted(ids[~ids.isin(like if known is None else known)].unique().tolist())


def read_interactions(path: Path) -> pd.DataFrame:
    """A CSV of interactions (user_id, item_id[, timestamp]) as strings, checked for shape."""
    try:
        wanted = pd.read_csv(path, dtype=str, encoding="utf-8-sig")  # a leading byte-order mark is not a column name
    except FileNotFoundError as exc:
        raise E2URecError(f"{path}: interactions file not found") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise E2URecError(f"{path}: cannot parse as CSV ({exc})") from exc
    keys = [c for c in ("user_id", "item_id", "timestamp") if c in wanted.columns]
    if keys[:2] != ["user_id", "item_id"]:
        raise E2URecError(
            f"{path}: needs columns user_id,item_id (optionally timestamp); found {list(wanted.columns)}"
        )
    if wanted.empty:
        raise E2URecError(f"{path}: no interactions listed; the forget set would be empty")
    if wanted[keys].isna().any().any():
        raise E2URecError(f"{path}: a row lacks a value in {keys}")
    return wanted[keys]


def match_interactions(wanted: pd.DataFrame, events: pd.DataFrame, where: str) -> np.ndarray:
    """Mask of the events named in `wanted` (user_id, item_id[, timestamp]); unknown ones are an error."""
    wanted = wanted.copy()
    keys = list(wanted.columns)
    for key in keys:
        wanted[key] = cast_like(wanted[key], events[key], f"{where} column {key}")
    marked = events[keys].reset_index().merge(wanted[keys].drop_duplicates(), on=keys, how="inner")
    found = wanted.merge(events[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    missing = found[found["_merge"] == "left_only"]
    if len(missing):
        rows = [tuple(r) for r in missing[keys].itertuples(index=False)][:20]
        raise UnknownIds(where, interactions=rows)
    mask = np.zeros(len(events), dtype=bool)
    mask[marked["index"].to_numpy()] = True
    return mask


class PromptRenderer:
    """Renders prompts for target events from history positions into one ordered events table."""

    def __init__(self, events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, noun: str):
        self.titles = items.drop_duplicates("item_id").set_index("item_id")["title"]
        self.profiles = profile_text(users.drop_duplicates("user_id").reset_index(drop=True))
        self.noun = noun
        self.item_ids = events["item_id"].to_numpy()
        self.event_titles = events["item_id"].map(self.titles).to_numpy()
        self.event_ratings = events["rating"].to_numpy()

    def __call__(self, index: np.ndarray, targets: pd.DataFrame) -> tuple[list[str], list[list], list[list]]:
        """Prompts, history item ids and history ratings for `targets` (user_id, item_id) given their
        (n, k) history positions."""
        hist_items = gather_lists(index, self.item_ids)
        hist_ratings = gather_lists(index, self.event_ratings)
        prompts = build_prompts(targets["user_id"].map(self.profiles).fillna("").to_numpy(),
                                gather_lists(index, self.event_titles), hist_ratings,
                                targets["item_id"].map(self.titles).to_numpy(), self.noun)
        return prompts, hist_items, hist_ratings


class SampleBuilder:
    """The one sample builder: a sample is an event shown with its user's last `history` earlier events that are
    not hidden. `prepare` builds every sample with it and a deletion request rebuilds the samples it touches with
    it (hiding the deleted events), so a rebuilt prompt is exactly what prepare writes from the same events."""

    def __init__(self, events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, dataset: str,
                 history: int, min_history: int) -> None:
        self.history, self.min_history = history, min_history
        self.codes = pd.factorize(events["user_id"])[0]
        self.render = PromptRenderer(events, items, users, ITEM_NOUN.get(dataset, "item"))
        self._all: tuple[np.ndarray, np.ndarray] | None = None

    def histories(self, hidden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`history_index` over the events not `hidden`; with nothing hidden it is computed once and kept."""
        if hidden is not None:
            return history_index(self.codes, ~hidden, self.history)
        if self._all is None:
            self._all = history_index(self.codes, np.ones(len(self.codes), dtype=bool), self.history)
        return self._all

    def build(self, samples: pd.DataFrame, rows: np.ndarray, hidden: np.ndarray | None = None
              ) -> tuple[pd.DataFrame, np.ndarray]:
        """A copy of `samples` (the events at positions `rows`) with prompt, history_item_ids and history_ratings,
        and a mask of those with at least `min_history` earlier events (a shorter history makes no sample)."""
        built = samples.copy()
        if not len(rows):  # nothing to render; the columns keep their dtypes
            return built, np.zeros(0, dtype=bool)
        index, count = self.histories(hidden)
        built["prompt"], built["history_item_ids"], built["history_ratings"] = self.render(index[rows], samples)
        return built, count[rows] >= self.min_history


def build_samples(raw: RawData, cfg: PrepareConfig, planted: Planted | None = None) -> tuple[pd.DataFrame, dict]:
    """The whole protocol on tidy tables; returns the samples table and facts for the manifest.

    With `--plant shilling` the fakes are added to `raw` here, unless `planted` says `raw` holds them already
    (`prepare` adds them first: the tables it writes must hold them too). The genuine window and its splits are
    chosen among the genuine events alone, so they are exactly the un-planted protocol's."""
    if planted is None:
        raw, planted = plant_events(raw, cfg)
    events = order_events(raw.interactions)
    fake = (events["user_id"].isin(planted.fakes).to_numpy() if planted is not None
            else np.zeros(len(events), dtype=bool))
    forgotten = (
        match_interactions(read_interactions(Path(cfg.forget_interactions)), events, cfg.forget_interactions)
        if cfg.forget_interactions is not None
        else np.zeros(len(events), dtype=bool)
    )
    builder = SampleBuilder(events, raw.items, raw.users, cfg.dataset, cfg.history, cfg.min_history)
    long_enough = builder.histories()[1] >= cfg.min_history
    eligible = np.flatnonzero(long_enough & ~fake)
    if len(eligible) == 0:
        raise E2URecError(
            f"no rating has at least {cfg.min_history} earlier ratings of the same user; lower --min-history"
        )
    rows = eligible[-cfg.last_n:]
    split = temporal_split(len(rows))
    if planted is not None:
        rows, split = with_fakes(rows, split, np.flatnonzero(long_enough & fake))
    samples = events.iloc[rows].reset_index(drop=True)
    samples.insert(0, "sample_id", np.arange(len(samples), dtype=np.int64))
    samples["label"] = (samples["rating"] > cfg.label_threshold).astype(np.int8)
    samples["answer"] = np.asarray(ANSWERS, dtype=object)[samples["label"].to_numpy()]
    samples["split"] = split
    is_train = (samples["split"] == "train").to_numpy()

    facts: dict = {}
    if planted is not None:  # shilling: the fakes, all of their samples train rows, are the forget set
        forget = samples["user_id"].isin(planted.fakes).to_numpy()
        facts.update(planted.facts, planted_fake_samples=int(forget.sum()))
    elif cfg.forget_interactions is not None:
        forget = forgotten[rows] & is_train
        facts["forget_interactions_requested"] = int(forgotten.sum())
        facts["forget_interactions_history_only"] = int(forgotten.sum() - forget.sum())
    else:
        train_users = samples.loc[is_train, "user_id"]
        if cfg.forget_users is not None:
            wanted, unknown = cast_known(cfg.forget_users, events["user_id"], "--forget-users")
            if unknown:
                raise UnknownIds("--forget-users", users=unknown)
            wanted = wanted.unique()
            untrained = sorted(set(wanted.tolist()) - set(train_users.tolist()))
            if untrained:
                raise E2URecError(
                    f"--forget-users: {len(untrained)} users have no training samples, nothing to forget: "
                    f"{untrained[:20]}"
                )
            chosen = np.sort(wanted)
        else:
            chosen = choose_forget_users(train_users.to_numpy(), cfg.forget_fraction, cfg.seed)
        forget = is_train & samples["user_id"].isin(chosen).to_numpy()
    if not forget.any():
        raise E2URecError("the forget set is empty: no training sample matches the forget request")
    samples["forget"] = forget
    spec = parse_plant(cfg.plant) if cfg.plant is not None else None
    if spec is not None and spec.kind == "flip":  # after the forget set is chosen, before anything reads labels
        samples, flipped = flip_labels(samples, forget, spec.share, cfg.seed)
        facts.update(flipped)
    touched = samples.loc[forget, "user_id"].unique()
    # A share of the genuine train users: shilling fakes are forgotten, so they are never held out nor counted.
    genuine = is_train if planted is None else is_train & ~forget
    held = choose_holdout_users(samples.loc[genuine, "user_id"].to_numpy(), touched, cfg.holdout_fraction, cfg.seed)
    holdout = is_train & samples["user_id"].isin(held).to_numpy()
    samples.loc[holdout, "split"] = "holdout"
    is_train = is_train & ~holdout

    sisa = np.full(len(samples), -1, dtype=np.int16)
    sisa[is_train] = sisa_shards(int(is_train.sum()), cfg.shards, cfg.seed)
    samples["sisa_shard"] = sisa
    train = samples[is_train]
    groups = receraser_shards(train["user_id"].to_numpy(), train["item_id"].to_numpy(),
                              train["rating"].to_numpy(), cfg.shards, cfg.seed)
    receraser = np.full(len(samples), -1, dtype=np.int16)
    receraser[is_train] = train["user_id"].map(groups).to_numpy()
    samples["receraser_shard"] = receraser

    original, _ = builder.build(samples, rows)
    if forgotten.any():  # the Original saw the forgotten events; the prompts served from now on do not show them
        samples, _ = builder.build(samples, rows, hidden=forgotten)
        differs = np.array([a != b for a, b in zip(samples["prompt"], original["prompt"], strict=True)])
        prompt_original = pd.Series(original["prompt"].tolist(), dtype=object).where(differs, None)
        facts["prompts_rebuilt"] = int(differs.sum())
    else:
        samples = original
        prompt_original = pd.Series([None] * len(samples), dtype=object)
    samples.insert(samples.columns.get_loc("prompt") + 1, "prompt_original", prompt_original)
    return samples, facts


def summarise(samples: pd.DataFrame) -> dict:
    """Counts for the manifest and the printed summary."""
    split = samples["split"]
    counts = {
        "users": int(samples["user_id"].nunique()),
        "items": int(samples["item_id"].nunique()),
        "samples": int(len(samples)),
        **{f"{s}_samples": int((split == s).sum()) for s in ("train", "valid", "test", "holdout")},
        "train_users": int(samples.loc[split == "train", "user_id"].nunique()),
        "holdout_users": int(samples.loc[split == "holdout", "user_id"].nunique()),
        "forget_users": int(samples.loc[samples["forget"], "user_id"].nunique()),
        "forget_samples": int(samples["forget"].sum()),
        "retain_samples": int(((split == "train") & ~samples["forget"]).sum()),
        "positive_rate": round(float(samples["label"].mean()), 4),
    }
    return counts


def prepare(cfg: PrepareConfig, out: str | Path, overwrite: bool = False) -> dict:
    """Run the protocol and write `out/` atomically; an existing `out` survives any failure untouched."""
    from e2urec.data.sources import FETCHABLE, fetch

    out = Path(out)
    if cfg.data_dir is None and cfg.dataset in FETCHABLE:
        source = fetch(cfg.dataset)
        data_path, served_by = source.path, source.source
    elif cfg.data_dir is None:
        raise E2URecError(f"dataset {cfg.dataset!r} needs --data-dir pointing at its files")
    else:
        data_path, served_by = Path(cfg.data_dir), "data-dir"
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise E2URecError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
    raw, planted = plant_events(read_dataset(cfg.dataset, data_path, **cfg.reader_options), cfg)
    samples, facts = build_samples(raw, cfg, planted)
    manifest = {
        "e2urec_version": __version__,
        "config": asdict(cfg),
        "source": served_by,
        "counts": {**summarise(samples), **facts},
        "inputs_sha256": {str(p.name): sha256_file(p) for p in raw.files},
    }
    tables = {"events": order_events(raw.interactions), "items": raw.items.drop_duplicates("item_id"),
              "users": raw.users.drop_duplicates("user_id")}
    return write_prepared(out, samples, tables, manifest, overwrite=overwrite)
