"""Turn per-seed bench results into report.md, results.json, results.csv and two plots.

Every number is a mean ± std over seeds: on CPU-sized slices one seed moves AUC by several points, so a
single run cannot rank methods.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from e2urec.io import write_json_atomic  # noqa: E402

COLUMNS = [
    ("auc", "test AUC", 4), ("logloss", "test LogLoss", 4),
    ("forget_auc", "forget AUC", 4), ("forget_within_user_auc", "forget AUC within user", 3),
    ("forget_logloss", "forget LogLoss", 4), ("closure_auc", "gap closure (AUC)", 2),
    ("closure_logloss", "gap closure (LogLoss)", 2), ("ks_forget_quality", "KS forget quality ↑", ".2g"),
    ("jsd", "JSD ↓", 4), ("sym_kl", "sym. KL (paper's \"JSD\") ↓", 4), ("jsd_yesno", "JSD yes/no ↓", 5),
    ("jsd_yesno_others", "JSD yes/no, others' test ↓", 5), ("jsd_yesno_excess", "JSD yes/no, forget − others ↓", 5),
    ("mia_auc", "MIA AUC", 3), ("unlearn_seconds", "whole run s", 1), ("loop_seconds", "training loop s", 1),
    ("time_vs_retrain", "× Retrain time (whole run)", 3),
]
# Shown only when the bench's data is planted with shilling fakes (or a row reports promotion): the attack target's
# hit rate at 10 among it and the control items on genuine test prompts, and the share of its gap closed.
PROMOTION_COLUMNS = [("promotion_hr10", "promotion HR@10", 3), ("closure_promotion", "gap closure (promotion)", 2)]


def shilling(config: dict, rows: list[dict]) -> bool:
    """Whether the bench's data holds shilling fakes: its plant option says so, or a row reports promotion."""
    plant = str(config.get("plant") or "").partition(":")[0].strip()
    return plant == "shilling" or any(r.get("promotion_hr10") is not None for r in rows)


POWER_GOAL = 5.0  # a testbed ranks methods where the Original–Retrain gap is this many reseed floors, every seed


def power(per_seed: dict[int, dict[str, dict]], metric: str) -> dict | None:
    """Per seed: the Original–Retrain gap on `metric`, the reseed floor (the larger of |reseeded Original −
    Original| and |reseeded Retrain − Retrain|: what a second training moves by chance) and their ratio. A
    comparison of methods means something only where the ratio is large (POWER_GOAL); `min_ratio` is over the
    seeds with a nonzero floor. None when a seed lacks a reseeded row."""
    seeds = {}
    for seed, rows in per_seed.items():
        values = {row: (rows.get(row) or {}).get(metric) for row in
                  ("original", "retrain", "original-reseed", "retrain-reseed")}
        if any(v is None for v in values.values()):
            return None
        gap = abs(values["original"] - values["retrain"])
        floor = max(abs(values["original-reseed"] - values["original"]),
                    abs(values["retrain-reseed"] - values["retrain"]))
        seeds[str(seed)] = {"gap": gap, "floor": floor, "ratio": gap / floor if floor > 0 else None}
    ratios = [v["ratio"] for v in seeds.values() if v["ratio"] is not None]
    return {"metric": metric, "per_seed": seeds, "min_ratio": min(ratios) if ratios else None,
            # every seed's gap at least POWER_GOAL floors (a zero floor under a nonzero gap counts as enough)
            "powered": all(v["gap"] > 0 and (v["ratio"] is None or v["ratio"] >= POWER_GOAL) for v in seeds.values())}


def summarise(per_seed: dict[int, dict[str, dict]]) -> list[dict]:
    """One row per method: mean and std (over seeds) of every numeric metric."""
    methods = list(next(iter(per_seed.values())))
    rows = []
    for method in methods:
        row: dict = {"method": method, "seeds": len(per_seed)}
        keys = per_seed[next(iter(per_seed))][method].keys()
        for key in keys:
            values = [per_seed[s][method].get(key) for s in per_seed]
            if key == "failed":  # why a method gave no model on some seed: the messages, not a mean
                row[key] = "; ".join(f"seed {s}: {v}" for s, v in zip(per_seed, values, strict=True) if v) or None
                continue
            if any(v is None for v in values):
                row[key], row[f"{key}_std"] = None, None
                continue
            row[key] = float(np.mean(values))
            row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        if row.get("trainable_params") and row.get("total_params"):
            row["trainable_share"] = row["trainable_params"] / row["total_params"]
        rows.append(row)
    return rows


def cell(row: dict, key: str, digits: int | str) -> str:
    """`value ± std` (the std only over several seeds); `digits`: decimals, or a format spec such as ".2g" for
    values spanning orders of magnitude (p-values)."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    spec = digits if isinstance(digits, str) else f".{digits}f"
    std = row.get(f"{key}_std") or 0.0
    return f"{value:{spec}} ± {std:{spec}}" if row["seeds"] > 1 else f"{value:{spec}}"


def markdown_table(rows: list[dict], shown: list[tuple] | None = None) -> str:
    """One line per method over the `shown` columns (default COLUMNS), and the trainable parameters."""
    shown = COLUMNS if shown is None else shown
    header = ["method", *[label for _, label, _ in shown], "trainable params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        share = row.get("trainable_share")
        params = f"{row['trainable_params']:,.0f} ({share:.2%})" if share is not None else "—"
        lines.append("| " + " | ".join([row["method"], *[cell(row, k, d) for k, _, d in shown], params]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> list[str]:
    """Utility vs forgetting (test AUC against JSD to Retrain) and unlearning time per method."""
    frame = pd.DataFrame(rows).set_index("method")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, r in frame.iterrows():
        ax.errorbar(r["jsd"], r["auc"], xerr=r.get("jsd_std") or 0, yerr=r.get("auc_std") or 0, fmt="o",
                    capsize=3, label=method)
    ax.set_xlabel("JSD to Retrain on the forget set (lower = closer to exact unlearning)")
    ax.set_ylabel("test AUC (utility)")
    ax.set_title("utility vs forgetting")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "utility_vs_forgetting.png", dpi=120)
    plt.close(fig)
    timed = frame[frame["unlearn_seconds"].notna()]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(timed.index, timed["unlearn_seconds"], yerr=timed["unlearn_seconds_std"].fillna(0), capsize=3)
    ax.set_yscale("log")
    ax.set_ylabel("unlearning wall time (s, log scale)")
    ax.set_title("time per method")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out / "time_per_method.png", dpi=120)
    plt.close(fig)
    return ["utility_vs_forgetting.png", "time_per_method.png"]


PROMOTION_TEXT = (
    "Promotion (shilling-planted data): on genuine test users' prompts the candidate item is swapped for the "
    "attack's target and for seeded control items; promotion HR@10 is the share of prompts ranking the target "
    "within the top 10 of them (results.json also has its mean rank and per-prompt z-score against the controls); "
    "gap closure (promotion) = (Original − method) / (Original − Retrain) on that hit rate.")


def unchanged_seeds(per_seed: dict[int, dict[str, dict]]) -> dict[str, list[str]]:
    """{method: seeds on which its unlearning ended where it started}."""
    found: dict[str, list[str]] = {}
    for seed, rows in per_seed.items():
        for method, values in rows.items():
            if values.get("unchanged"):
                found.setdefault(method, []).append(str(seed))
    return found


def power_text(powered: dict) -> str:
    seeds = ", ".join(f"seed {seed}: gap {v['gap']:.3f}, floor {v['floor']:.3f}"
                      + (f" ({v['ratio']:.1f}×)" if v["ratio"] is not None else " (floor 0)")
                      for seed, v in powered["per_seed"].items())
    return (f"Power on {powered['metric']} (Original–Retrain gap against the reseed floor, the larger move of a "
            f"second Original or Retrain): {seeds}; "
            + ("enough to rank methods" if powered["powered"] else f"below the {POWER_GOAL:g}× goal on some seed")
            + ". Differences between methods smaller than the floor are noise.")


def write_report(out: Path, per_seed: dict[int, dict[str, dict]], config: dict, machine: dict) -> dict:
    rows = summarise(per_seed)
    plots = plot(rows, out)
    retrain = next(r for r in rows if r["method"] == "retrain")
    # Rows measured on the forget set only (the forgetting teacher) are kept apart, so every per-seed row holds
    # the full set of metrics that tools reading results.json expect.
    # The planted signal: the targets' promotion on shilling data, else forget AUC (against the labels the models
    # trained on: the flipped ones on flip data); shilling data also gets the promotion columns.
    promoted = shilling(config, rows)
    powered = power(per_seed, "promotion_hr10" if promoted else "forget_auc")
    results = {"methods": rows, "config": config, "machine": machine, "power": powered,
               "per_seed": {str(k): {m: v for m, v in r.items() if "auc" in v} for k, r in per_seed.items()},
               "forget_only_per_seed": {str(k): {m: v for m, v in r.items() if "auc" not in v}
                                        for k, r in per_seed.items()}}
    write_json_atomic(out / "results.json", results)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    text = [
        f"# e2urec bench: {config['dataset']}, backbone {config['backbone']}, preset {config['preset']}",
        "",
        f"Mean ± std over seeds {list(per_seed)}. Forget-set metrics compare each model with the Retrain model "
        "(exact unlearning): JSD/L2 over the full-vocabulary answer distribution (JSD yes/no: the two answer "
        "tokens only). JSD yes/no, others' test: the same distance on test samples of users nobody forgot, which "
        "neither model trained on: how far two trainings differ anyway; forget − others is what remains specific "
        "to the forget set (about 0 for an exact unlearning). MIA AUC near Retrain's means the forget set looks "
        "unseen. The Original row is the gap to "
        "close; gap closure = (Original − method) / (Original − Retrain) per seed, on forget AUC and on forget "
        "log-loss (1 = like Retrain, 0 = nothing forgotten, > 1 = beyond Retrain). Within-user AUC averages the "
        "AUC inside each forgotten user with both labels (pooled AUC also reflects users' base rates). The "
        "teacher row is E2URec's forgetting teacher itself on the forget set. Sym. KL is ½KL(p‖q) + ½KL(q‖p), "
        "what the paper's code reports as \"JSD\". Times: whole run (ours: augmented model, teacher caches, "
        "checks and validation included) and training loop only (the reference's accounting); × Retrain time "
        "uses the whole run. KS forget quality: the p-value of a two-sample Kolmogorov–Smirnov test between the "
        "method's and Retrain's P(yes) on the forget set (TOFU's forget quality; high = indistinguishable from "
        "Retrain).",
        *(["", PROMOTION_TEXT] if promoted else []),
        "",
        markdown_table(rows, COLUMNS + PROMOTION_COLUMNS if promoted else COLUMNS),
        "",
        *([power_text(powered), ""] if powered else []),
        f"Retrain's own MIA AUC on the forget set (the value to match): {cell(retrain, 'mia_auc_retrain', 3)}",
        "",
        *[f"**{r['method']} failed** (its row is empty): {r['failed']}\n" for r in rows if r.get("failed")],
        *[f"**{method} ended where it started** (its result is the Original: nothing forgotten) on seed(s) "
          f"{', '.join(seeds)}\n" for method, seeds in unchanged_seeds(per_seed).items()],
        *[f"![{p}]({p})" for p in plots],
        "",
        f"Machine: {machine}",
    ]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return results
