"""A deletion request's data: the prepared samples and tables without the deleted events, and the training prompts
that showed them (what the model must unlearn).

Pure data work on the prepared format, like `prepare`: which events go is the caller's to say (a mask over the
events table), so the data layer needs nothing of requests, ledgers or models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from e2urec.data.prepare import SampleBuilder

KEY = ["user_id", "item_id", "timestamp"]  # what identifies an event, in the events table and in the samples


def rebuild(samples: pd.DataFrame, tables: dict[str, pd.DataFrame], mask: np.ndarray, config: dict, *,
            whole_users: bool) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """The retained data and the training prompts to forget, once the events `mask` marks are deleted.

    `whole_users`: the request names users, so their rows of the users table go too. `config` is the prepared
    folder's manifest config (dataset, history, min_history). Returns (samples, tables, forget_rows, counts).
    Forget rows are every training prompt the current model saw that shows a forgotten event: the deleted samples
    themselves and the old text of prompts whose history contained one. Affected users' remaining samples get
    their history rebuilt from retained events; a sample left with fewer than `min_history` earlier events is
    dropped, as prepare would have.
    """
    events = tables["events"]
    kept = events[~mask].reset_index(drop=True)
    gone = events.loc[mask, KEY]
    users = tables["users"]
    if whole_users:
        users = users[~users["user_id"].isin(gone["user_id"])].reset_index(drop=True)
    affected = samples["user_id"].isin(gone["user_id"].unique()).to_numpy()
    deleted = samples[KEY].merge(gone.drop_duplicates(), on=KEY, how="left", indicator=True)["_merge"].eq("both")
    deleted = deleted.to_numpy()

    # The affected users' other samples, rebuilt as prepare builds them, with the deleted events hidden.
    old = samples[affected & ~deleted]
    positions = old[KEY].merge(events[KEY].reset_index(), on=KEY, how="left")["index"].to_numpy()
    builder = SampleBuilder(events, tables["items"], users, config["dataset"], int(config["history"]),
                            int(config["min_history"]))
    redo, eligible = builder.build(old, positions, hidden=mask)
    changed = (old["prompt"].to_numpy() != redo["prompt"].to_numpy()) | ~eligible
    dropped = redo[~eligible]
    redo = redo[eligible]

    in_train = (samples["split"] == "train").to_numpy()
    forget_rows = pd.concat([samples[deleted & in_train], old[changed & (old["split"] == "train").to_numpy()]])
    retained = pd.concat([samples[~affected], redo]).sort_values("sample_id").reset_index(drop=True)
    retained["prompt_original"] = None
    counts = {
        "events_deleted": int(mask.sum()),
        "samples_deleted": int(deleted.sum()),
        "samples_dropped_short_history": int(len(dropped)),
        "prompts_rebuilt": int(changed.sum() - len(dropped)),
        "forget_prompts": int(len(forget_rows)),
        **{f"{split}_samples_removed": int(((samples["split"] == split).to_numpy() & deleted).sum()
                                           + (dropped["split"] == split).sum())
           for split in ("train", "valid", "test", "holdout")},
    }
    return retained, {**tables, "events": kept, "users": users}, forget_rows, counts


def job_samples(retained: pd.DataFrame, forget_rows: pd.DataFrame) -> pd.DataFrame:
    """Samples for the unlearning job: the retained data, plus the forget prompts flagged `forget` (old texts
    get fresh sample ids, since their rebuilt versions keep theirs)."""
    forget_rows = forget_rows.assign(split="train", forget=True)
    forget_rows["sample_id"] = np.arange(len(forget_rows)) + int(retained["sample_id"].max()) + 1
    return pd.concat([retained.assign(forget=False), forget_rows], ignore_index=True)
