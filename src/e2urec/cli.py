"""The `e2urec` command line. Every command turns E2URecError into one clear message and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from e2urec.errors import E2URecError

if TYPE_CHECKING:
    from e2urec.engine import TrainConfig

app = typer.Typer(
    name="e2urec",
    help="LLM-based recommendation that can forget: prepare data, train, unlearn, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Fetch real datasets into the cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)
out_console = Console()


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report E2URecError as `error: ...` on stderr with exit code 2 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except E2URecError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_ids(text: str) -> list[str]:
    """`1,2,3` or `@file` (one id per line or comma-separated)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise E2URecError(f"{path}: id file not found")
        text = path.read_text().replace("\n", ",")
    return [part.strip() for part in text.split(",") if part.strip()]


def print_counts(title: str, counts: dict) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out_console.print(table)


@data_app.command("fetch")
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


@app.command()
@friendly
def prepare(
    dataset: Annotated[str, typer.Option(help="ml-100k | ml-1m | goodreads | csv")],
    out: Annotated[Path, typer.Option(help="output folder (written atomically)")],
    data_dir: Annotated[Path | None, typer.Option(help="dataset folder (or file for ml-1m zip / csv)")] = None,
    last_n: Annotated[int, typer.Option(help="keep the last N samples in time order")] = 100_000,
    history: Annotated[int, typer.Option(help="K: history items shown in a prompt")] = 10,
    min_history: Annotated[int, typer.Option(help="M: drop samples with fewer earlier ratings")] = 5,
    label_threshold: Annotated[float, typer.Option(help="label 1 when rating > T")] = 3.0,
    forget_fraction: Annotated[float | None, typer.Option(help="forget this share of train users")] = None,
    forget_users: Annotated[str | None, typer.Option(help="ids to forget: 1,2,3 or @file")] = None,
    forget_interactions: Annotated[Path | None, typer.Option(help="CSV user_id,item_id[,timestamp]")] = None,
    shards: Annotated[int, typer.Option(help="S: shards for SISA and RecEraser")] = 4,
    seed: Annotated[int, typer.Option(help="seed for forget selection and shards")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    items: Annotated[Path | None, typer.Option(help="csv: item-title file")] = None,
    user_col: Annotated[str, typer.Option(help="csv: user column")] = "user_id",
    item_col: Annotated[str, typer.Option(help="csv: item column")] = "item_id",
    rating_col: Annotated[str, typer.Option(help="csv: rating column")] = "rating",
    time_col: Annotated[str, typer.Option(help="csv: timestamp column")] = "timestamp",
    title_col: Annotated[str, typer.Option(help="csv: title column of --items")] = "title",
    sep: Annotated[str, typer.Option(help="csv: field separator")] = ",",
) -> None:
    """Turn raw ratings into prompt samples with a temporal split, a forget set and shards."""
    from e2urec.data.prepare import PrepareConfig
    from e2urec.data.prepare import prepare as run_prepare

    reader_options = {}
    if dataset == "csv":
        reader_options = {"items": str(items) if items else None, "user_col": user_col, "item_col": item_col,
                          "rating_col": rating_col, "time_col": time_col, "title_col": title_col, "sep": sep}
    cfg = PrepareConfig(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        last_n=last_n,
        history=history,
        min_history=min_history,
        label_threshold=label_threshold,
        forget_fraction=forget_fraction,
        forget_users=parse_ids(forget_users) if forget_users is not None else None,
        forget_interactions=str(forget_interactions) if forget_interactions else None,
        shards=shards,
        seed=seed,
        reader_options=reader_options,
    )
    manifest = run_prepare(cfg, out, overwrite=overwrite)
    print_counts(f"{dataset} prepared → {out} (source: {manifest['source']})", manifest["counts"])


def train_config(epochs: int, lr: float, batch_size: int, grad_accum: int, patience: int,
                 max_steps: int | None, max_length: int | None, seed: int) -> TrainConfig:
    from e2urec.engine import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum, patience=patience,
                       max_steps=max_steps, max_length=max_length, seed=seed)


@app.command()
@friendly
def train(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="model folder to write")],
    role: Annotated[str, typer.Option(help="original (all train rows) | retrain (train minus forget)")] = "original",
    backbone: Annotated[str, typer.Option(help="tiny | tiny-t5 | smollm2-135m | hub id | local path")] = "tiny",
    lora: Annotated[bool, typer.Option(help="train LoRA adapters only (peft) instead of full fine-tuning")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout")] = 0.05,
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 10,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="samples per step (per process)")] = 32,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps")] = 1,
    patience: Annotated[int, typer.Option(help="stop after this many epochs without a better valid loss")] = 3,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many optimizer steps")] = None,
    max_length: Annotated[int | None, typer.Option(help="truncate prompts (from the left) to this many tokens")] = None,
    seed: Annotated[int, typer.Option(help="seed for initialisation and data order")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model folder")] = False,
) -> None:
    """Instruction-tune a backbone: the Original (all train samples) or Retrain (without the forget set)."""
    from e2urec.training import train as run_train

    cfg = train_config(epochs, lr, batch_size, grad_accum, patience, max_steps, max_length, seed)
    meta = run_train(data, role, backbone, out, cfg, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
                     lora_dropout=lora_dropout, overwrite=overwrite)
    valid = meta["valid"]
    out_console.print(
        f"{role} → {out}: valid AUC {valid['auc']:.4f}, LogLoss {valid['logloss']:.4f}, "
        f"{meta['fit']['epochs_run']} epochs in {meta['train_seconds']:.1f} s, "
        f"{meta['trainable_params']:,} of {meta['total_params']:,} parameters trained"
    )


@app.command()
@friendly
def evaluate(
    model: Annotated[Path, typer.Option(help="model folder written by train or unlearn")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="folder for metrics.json and predictions.parquet")],
    split: Annotated[str, typer.Option(help="test | valid | forget | retain | train")] = "test",
    batch_size: Annotated[int, typer.Option(help="prompts per forward pass")] = 64,
    max_length: Annotated[int | None, typer.Option(help="truncate prompts to this many tokens")] = None,
) -> None:
    """Score a split: P(yes) per sample, AUC, accuracy and log-loss."""
    from e2urec.training import evaluate as run_evaluate

    metrics = run_evaluate(model, data, split, out, batch_size=batch_size, max_length=max_length)
    print_counts(f"{split} metrics → {out}", {k: v if isinstance(v, int) else round(v, 4)
                                              for k, v in metrics.items() if k in ("auc", "acc", "logloss", "n")})
