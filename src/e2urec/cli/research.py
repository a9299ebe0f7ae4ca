"""Commands of the research workflow: fetch and prepare data, train, unlearn, evaluate, the bench and demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from e2urec import options as cap
from e2urec.cli.common import (
    BACKBONE_HELP,
    BATCH,
    EPOCHS,
    LORA_ALPHA,
    LORA_RANK,
    LR,
    SAMPLES,
    SEED,
    SPLIT_HELP,
    STEPS,
    TOKENS,
    Dataset,
    Keep,
    PresetName,
    Role,
    Split,
    console,
    friendly,
    log_line,
    method_options,
    not_empty,
    number,
    out_console,
    parse_ids,
    parse_options,
    print_counts,
)
from e2urec.errors import E2URecError
from e2urec.io import guard_output, read_text

if TYPE_CHECKING:
    from e2urec.engine import TrainConfig


@friendly
def data_fetch(
    name: Annotated[str, typer.Argument(help="dataset to fetch (ml-100k)")],
    data_dir: Annotated[Path | None, typer.Option(help="use files from this folder first")] = None,
    refresh: Annotated[bool, typer.Option(help="fetch again even if the cache holds it")] = False,
) -> None:
    """Put a dataset in the cache (E2UREC_CACHE, default ~/.cache/e2urec), verified by sha256."""
    from e2urec.data.sources import fetch

    result = fetch(name, data_dir=data_dir, refresh=refresh)
    origin = "cache (no network used)" if result.from_cache else "fetched now"
    out_console.print(f"{name}: served by [bold]{result.source}[/], {origin} → {result.path}")


@friendly
def prepare(
    dataset: Annotated[Dataset, typer.Option(help="which reader: MovieLens, Goodreads, or any ratings file (csv: "
                                                  "see the csv: options)")],
    out: Annotated[Path, typer.Option(help="output folder (written atomically)")],
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder (or file for ml-1m zip / csv)")] = None,
    last_n: Annotated[int, typer.Option(help="keep the last N samples in time order",
                                        callback=number(1, cap.MAX_ROWS))] = 100_000,
    history: Annotated[int, typer.Option(help="K: history items shown in a prompt",
                                         callback=number(1, cap.MAX_HISTORY))] = 10,
    min_history: Annotated[int, typer.Option(help="M: drop samples with fewer earlier ratings",
                                             callback=number(0, cap.MAX_ROWS))] = 5,
    label_threshold: Annotated[float, typer.Option(help="label 1 when rating > T", callback=number())] = 3.0,
    forget_fraction: Annotated[float | None, typer.Option(help="forget this share of train users")] = None,
    forget_users: Annotated[str | None, typer.Option(help="ids to forget: 1,2,3 or @file")] = None,
    forget_interactions: Annotated[Path | None, typer.Option(help="CSV user_id,item_id[,timestamp]")] = None,
    shards: Annotated[int, typer.Option(help="S: shards for SISA and RecEraser", callback=number(1, cap.MAX_SHARDS))
                      ] = 4,
    holdout_fraction: Annotated[float | None, typer.Option(
        help="hold out this share of the train users not forgotten: nobody trains on their train-period samples, "
             "E2URec's non-members (default 0: the paper's split exactly)", callback=number(0, 1, open_high=True)
    )] = None,
    seed: Annotated[int, typer.Option(help="seed for forget selection and shards", callback=SEED)] = 0,
    plant: Annotated[str | None, typer.Option(
        help="plant what the Original must memorise (default none: the paper's protocol). KIND[:key=value,...]: "
             "flip[:share=F] inverts the labels of a seeded share F in (0,1] (default 1) of the forget samples "
             "(clean labels kept in label_clean); shilling[:users=N,fillers=F,target=ITEM,targets=K] adds N fake "
             "users (default 40) rating F popular items near their mean (default 14, at least --min-history) and "
             "ITEM (default: a seeded unpopular, disliked one; targets=K: K such items, the fakes split into K "
             "groups) with the top rating; the fakes are the forget set, so no --forget-* option goes with it"
    )] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    items: Annotated[Path | None, typer.Option(help="csv: item-title file")] = None,
    user_col: Annotated[str, typer.Option(help="csv: user column")] = "user_id",
    item_col: Annotated[str, typer.Option(help="csv: item column")] = "item_id",
    rating_col: Annotated[str, typer.Option(help="csv: rating column")] = "rating",
    time_col: Annotated[str, typer.Option(help="csv: timestamp column")] = "timestamp",
    title_col: Annotated[str, typer.Option(help="csv: title column of --items")] = "title",
    sep: Annotated[str, typer.Option(help="csv: field separator", callback=not_empty)] = ",",
) -> None:
    """Turn raw ratings into prompt samples with a temporal split, a forget set and shards."""
    from e2urec.data.prepare import PrepareConfig
    from e2urec.data.prepare import prepare as run_prepare

    name = dataset.value
    guard_output(out, "data", [data_dir, items, forget_interactions], overwrite)
    if forget_interactions is not None:
        read_text(forget_interactions, "--forget-interactions")
    reader_options = {}
    if name == "csv":
        reader_options = {"items": str(items) if items else None, "user_col": user_col, "item_col": item_col,
                          "rating_col": rating_col, "time_col": time_col, "title_col": title_col, "sep": sep}
    cfg = PrepareConfig(
        dataset=name,
        data_dir=str(data_dir) if data_dir else None,
        last_n=last_n,
        history=history,
        min_history=min_history,
        label_threshold=label_threshold,
        forget_fraction=forget_fraction,
        forget_users=parse_ids(forget_users, "--forget-users") if forget_users is not None else None,
        forget_interactions=str(forget_interactions) if forget_interactions else None,
        shards=shards,
        seed=seed,
        reader_options=reader_options,
        plant=plant,
        **({} if holdout_fraction is None else {"holdout_fraction": holdout_fraction}),
    )
    manifest = run_prepare(cfg, out, overwrite=overwrite)
    print_counts(f"{name} prepared → {out} (source: {manifest['source']})", manifest["counts"])


def train_config(epochs: int, lr: float, batch_size: int, grad_accum: int, patience: int,
                 max_steps: int | None, max_length: int | None, seed: int, max_grad_norm: float,
                 keep: str) -> TrainConfig:
    from e2urec.engine import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum, patience=patience,
                       max_steps=max_steps, max_length=max_length, seed=seed, max_grad_norm=max_grad_norm,
                       keep=keep)


@friendly
def train(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="model folder to write")],
    role: Annotated[Role, typer.Option(
        help="original: all train rows; retrain: train minus forget; " + ", ".join(cap.SHARD_SYSTEMS)
             + ": a shard system (one model per shard)")] = Role["original"],
    backbone: Annotated[str, typer.Option(help="tiny | tiny-t5 | smollm2-135m | hub id | local path")] = "tiny",
    lora: Annotated[bool, typer.Option(help="train LoRA adapters only (peft) instead of full fine-tuning")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (at most the backbone's hidden width)", callback=LORA_RANK)
                      ] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha", callback=LORA_ALPHA)] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout", callback=number(0, 1, open_high=True))] = 0.05,
    epochs: Annotated[int, typer.Option(help="maximum epochs", callback=EPOCHS)] = 10,
    lr: Annotated[float, typer.Option(help="AdamW learning rate", callback=LR)] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="samples per step (per process)", callback=BATCH)] = 32,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps", callback=BATCH)] = 1,
    patience: Annotated[int, typer.Option(help="stop after this many epochs without a better valid loss",
                                          callback=EPOCHS)] = 3,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many optimizer steps", callback=STEPS)
                         ] = None,
    max_length: Annotated[int | None, typer.Option(help="truncate prompts (from the left) to this many tokens",
                                                   callback=TOKENS)] = None,
    seed: Annotated[int, typer.Option(help="seed for initialisation and data order", callback=SEED)] = 0,
    max_grad_norm: Annotated[float, typer.Option(help="clip gradients to this total L2 norm before each step (0: "
                                                 "off)", callback=number(0, 1e4))] = 1.0,
    keep: Annotated[Keep, typer.Option(help="the epoch whose weights are kept: best (lowest valid loss, early "
                                       "stopping) or last (every epoch runs)")] = Keep["best"],
    overwrite: Annotated[bool, typer.Option(help="replace an existing model folder")] = False,
) -> None:
    """Instruction-tune a backbone: the Original (all train samples) or Retrain (without the forget set)."""
    from e2urec.model.lora import lora_config
    from e2urec.training import train as run_train
    from e2urec.unlearning.sharded import train_system

    role_name = role.value
    guard_output(out, "model", [data], overwrite)
    cfg = train_config(epochs, lr, batch_size, grad_accum, patience, max_steps, max_length, seed, max_grad_norm,
                       keep.value)
    recipe = lora_config(lora_r, lora_alpha, lora_dropout) if lora else None
    if role_name in cap.SHARD_SYSTEMS:
        meta = train_system(data, role_name, backbone, out, cfg, recipe, overwrite=overwrite)
        out_console.print(f"{role_name} system → {out}: {meta['shards']} shards in {meta['train_seconds']:.1f} s")
        return
    meta = run_train(data, role_name, backbone, out, cfg, lora=recipe, overwrite=overwrite)
    valid = meta["valid"]
    out_console.print(
        f"{role_name} → {out}: valid AUC {valid['auc']:.4f}, LogLoss {valid['logloss']:.4f}, "
        f"{meta['fit']['epochs_run']} epochs in {meta['train_seconds']:.1f} s, "
        f"{meta['trainable_params']:,} of {meta['total_params']:,} parameters trained; kept epoch "
        f"{meta['fit']['kept']['epoch']}: {meta['fit']['kept']['why']}"
    )


@friendly
def evaluate(
    model: Annotated[Path, typer.Option(help="model folder written by train or unlearn")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="folder for metrics.json and predictions.parquet")],
    split: Annotated[Split, typer.Option(help=SPLIT_HELP)] = Split["test"],
    reference: Annotated[Path | None, typer.Option(help="Retrain model: adds JSD/L2 to it (and its MIA)")] = None,
    batch_size: Annotated[int, typer.Option(help="prompts per forward pass", callback=BATCH)] = 64,
    max_length: Annotated[int | None, typer.Option(help="truncate prompts to this many tokens", callback=TOKENS)
                          ] = None,
    mia_samples: Annotated[int, typer.Option(help="members sampled for the membership attack", callback=SAMPLES)
                           ] = 1000,
    seed: Annotated[int, typer.Option(help="seed for the attack's samples", callback=SEED)] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing evaluation folder")] = False,
) -> None:
    """Score a split: AUC, accuracy, log-loss; forgetting metrics against a --reference; MIA on forget."""
    from e2urec.evaluation import EvalConfig
    from e2urec.evaluation import evaluate as run_evaluate

    guard_output(out, "evaluation", [model, data, reference], overwrite)
    cfg = EvalConfig(batch_size=batch_size, max_length=max_length, mia_samples=mia_samples, seed=seed)
    metrics = run_evaluate(model, data, split.value, out, cfg, reference=reference)
    shown = ("auc", "acc", "logloss", "within_user_auc", "jsd", "l2", "jsd_yesno", "l2_yesno", "sym_kl", "mia_auc",
             "mia_auc_reference", "n")
    print_counts(f"{split.value} metrics → {out}", {k: metrics[k] if isinstance(metrics[k], int) else
                                                    round(metrics[k], 4) for k in shown if metrics.get(k) is not None})
    if metrics.get("degenerate"):  # its forget metrics would read as perfect forgetting: say so, and fail
        console.print(f"[bold red]degenerate model:[/] {metrics['degenerate']}; these metrics do not measure "
                      "forgetting (recorded as `degenerate` in metrics.json)")
        raise typer.Exit(3)


@friendly
def unlearn(
    method: Annotated[str, typer.Option(help="a registered method (`e2urec methods` lists them with their options)")],
    model: Annotated[Path, typer.Option(help="the Original (or the sisa/receraser system) to unlearn from")],
    data: Annotated[Path, typer.Option(help="prepared data folder; its forget rows are forgotten")],
    out: Annotated[Path, typer.Option(help="folder for the unlearned model")],
    epochs: Annotated[int | None, typer.Option(help="epochs (method default if unset)", callback=EPOCHS)] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (method default if unset)", callback=LR)] = None,
    batch_size: Annotated[int | None, typer.Option(help="batch size (method default if unset)", callback=BATCH)
                          ] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps", callback=STEPS)] = None,
    seed: Annotated[int | None, typer.Option(help="seed", callback=SEED)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="other method option, key=value (see `methods`)")
                    ] = None,
    keep_intermediates: Annotated[bool, typer.Option(help="keep the augmented model and caches")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Unlearn the prepared forget set from a trained model with one registered method."""
    from e2urec.unlearning.base import REGISTRY
    from e2urec.unlearning.runner import unlearn as run_unlearn

    if method not in REGISTRY:
        raise E2URecError(f"unknown method {method!r}; choose one of {', '.join(sorted(REGISTRY))}")
    options = parse_options(set_ or [], REGISTRY[method].Config)
    for key, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("max_steps", max_steps),
                       ("seed", seed)):
        if value is not None:
            options[key] = value
    method_options(method, options, "unlearn")
    guard_output(out, "model", [model, data], overwrite)
    meta = run_unlearn(method, model, data, out, options, keep_intermediates=keep_intermediates,
                       overwrite=overwrite)
    share = meta["trainable_params"] / max(meta["total_params"], 1)
    out_console.print(f"{method} → {out}: {meta['unlearn_seconds']:.1f} s, {meta['steps']} steps, "
                      f"{meta['trainable_params']:,} trainable parameters ({share:.2%})")
    if meta.get("unchanged"):
        console.print(f"[bold yellow]warning:[/] {escape(method)} ended where it started, so nothing was "
                      f"forgotten ({escape(meta['unchanged'])}); its meta.json says so under `unchanged`",
                      highlight=False)


@friendly
def anchor(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    split: Annotated[Split, typer.Option(help=SPLIT_HELP)] = Split["test"],
    out: Annotated[Path | None, typer.Option(help="folder to write metrics.json into (default: print only)")
                   ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """A non-LLM reference on the same split: logistic regression on user and item one-hots."""
    from e2urec.data.store import load_prepared
    from e2urec.evaluation import one_hot_anchor
    from e2urec.io import atomic_dir, write_json_atomic

    if out is not None:
        guard_output(out, "evaluation", [data], overwrite)
    samples, _ = load_prepared(data)
    metrics = one_hot_anchor(samples, split.value)
    if out is not None:
        with atomic_dir(out, overwrite=True) as tmp:
            write_json_atomic(tmp / "metrics.json", {"model": "one-hot logistic regression", "split": split.value,
                                                     **metrics})
    print_counts(f"one-hot logistic regression, {split.value}", {k: v if isinstance(v, int) else round(v, 4)
                                                            for k, v in metrics.items()})


@friendly
def bench(
    out: Annotated[Path, typer.Option(help="run folder (rerun to resume; finished stages are skipped)")],
    dataset: Annotated[Dataset, typer.Option(help="which reader (see `prepare --help`)")] = Dataset["ml-100k"],
    backbone: Annotated[str, typer.Option(help=BACKBONE_HELP)] = "tiny",
    preset: Annotated[PresetName, typer.Option(help="protocol size: demo ≤10 min CPU; planted-flip planted label "
                                                    "flips (docs/planted.md); cpu ~1 h CPU; gpu SmolLM2 on one "
                                                    "GPU; paper the full protocol, GPU")] = PresetName["demo"],
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder (needed for all but ml-100k)")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated seeds (preset default: 0,1,2)")] = None,
    rows: Annotated[str | None, typer.Option(help="comma-separated report rows (default: all; original and "
                                                   "retrain are always in), e.g. e2urec,e2urec-reference,npo")] = None,
    holdout_fraction: Annotated[float | None, typer.Option(
        help="prepare with this share of train users held out (E2URec's non-members; default 0)",
        callback=number(0, 1, open_high=True))] = None,
) -> None:
    """Reproduce the paper's comparison: every method, mean ± std over seeds, report.md with plots."""
    from e2urec.bench import bench as run_bench

    chosen = parse_seeds(seeds) if seeds else None
    guard_output(out, "bench", [data_dir])
    picked = tuple(r.strip() for r in rows.split(",") if r.strip()) if rows else None
    command = " ".join(["e2urec bench", f"--out {out}", f"--dataset {dataset.value}", f"--backbone {backbone}",
                        f"--preset {preset.value}", *([f"--data-dir {data_dir}"] if data_dir else []),
                        *([f"--seeds {seeds}"] if seeds else []), *([f"--rows {rows}"] if rows else []),
                        *([f"--holdout-fraction {holdout_fraction}"] if holdout_fraction is not None else [])])
    results = run_bench(dataset.value, backbone, preset.value, out, data_dir, chosen, log=log_line, rows=picked,
                        holdout_fraction=holdout_fraction, command=command)
    show_results(results, out)


def parse_seeds(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isascii() and part.isdigit() and int(part) < 2**32 for part in parts):
        raise E2URecError(f"--seeds: expected comma-separated integers 0..{2**32 - 1}, e.g. 0,1,2")
    return tuple(int(part) for part in parts)


def show_results(results: dict, out: Path) -> None:
    from e2urec.report import COLUMNS, cell

    table = Table(title=f"{results['config']['preset']} bench, mean ± std over {len(results['per_seed'])} seeds")
    table.add_column("method")
    keys = ["auc", "forget_auc", "jsd", "mia_auc", "unlearn_seconds", "time_vs_retrain"]
    labels = dict((k, label) for k, label, _ in COLUMNS)
    digits = dict((k, d) for k, _, d in COLUMNS)
    for key in keys:
        table.add_column(labels[key], justify="right")
    for row in results["methods"]:
        table.add_row(row["method"], *[cell(row, k, digits[k]) for k in keys])
    out_console.print(table)
    out_console.print(f"report: {out / 'report.md'}")


@friendly
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
) -> None:
    """The main job: the demo bench on real MovieLens-100K with the tiny backbone, offline, in minutes."""
    from e2urec.bench import bench as run_bench

    guard_output(out, "bench", [])
    results = run_bench("ml-100k", "tiny", "demo", out, log=log_line, command=f"e2urec demo --out {out}")
    show_results(results, out)
