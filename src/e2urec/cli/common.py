"""What every `e2urec` command shares: one clear message and exit code 2 for E2URecError, parse-time checks
of numbers (each with an upper bound from `e2urec.options`) and ids, choices built from the library's own names,
tables, and `--set key=value` options typed and listed by a config's fields through `e2urec.options`, the one
option parser."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from e2urec import options as cap
from e2urec.errors import E2URecError
from e2urec.io import read_text
from e2urec.presets import PRESETS

console = Console(stderr=True, soft_wrap=True)


out_console = Console(soft_wrap=True)


def log_line(line: str) -> None:
    """A progress line as written: "[seed 0] original: done" is text, not rich markup to be swallowed."""
    out_console.print(escape(line), highlight=False)


def friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report E2URecError as `error: ...` on stderr with exit code 2 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except E2URecError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_ids(text: str, what: str = "--users") -> list[str]:
    """`1,2,3` or `@file` (UTF-8, one id per line or comma-separated)."""
    if text.startswith("@"):
        text = read_text(Path(text[1:]), what).replace("\n", ",")
    return [part.strip() for part in text.split(",") if part.strip()]


def number(low: float | None = None, high: float | None = None, open_low: bool = False,
           open_high: bool = False) -> Callable[[Any], Any]:
    """A parse-time check for a numeric option (finite, within bounds), so bad values stop before any work."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if low is not None and (value < low or (open_low and value == low)):
            raise typer.BadParameter(f"{value} is out of range: must be {'>' if open_low else '>='} "
                                     f"{cap.shown(low)}")
        if high is not None and (value > high or (open_high and value == high)):
            raise typer.BadParameter(f"{value} is out of range: must be {'<' if open_high else '<='} "
                                     f"{cap.shown(high)}")
        return value

    return check


def not_empty(value: str) -> str:
    if not value:
        raise typer.BadParameter("must not be empty")
    return value


POSITIVE, NATURAL, SEED = number(1), number(0), number(0, cap.MAX_SEED)  # seeds: numpy takes 0..2**32-1
# Upper bounds far above any intended value: a typo of a few digits stops here, not in an allocator.
EPOCHS, STEPS, BATCH = number(1, cap.MAX_EPOCHS), number(1, cap.MAX_STEPS), number(1, cap.MAX_BATCH)
LORA_RANK, LORA_ALPHA = number(1, cap.MAX_LORA_RANK), number(1, cap.MAX_LORA_ALPHA)
TOKENS, SAMPLES, LR = number(1, cap.MAX_TOKENS), number(1, cap.MAX_SAMPLES), number(0, cap.MAX_LR, open_low=True)


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """Fixed values as the Enum typer turns into a choice: `--help` lists them and any other value stops at parse
    time with typer's own message and exit code 2. Members are str; pass `.value` on, the plain string the library
    expects."""
    return Enum(name, {value: value for value in values}, type=str)


# Each built from the one tuple or dict the library itself checks against.
Keep = choices("Keep", cap.KEEP)  # train --keep
Dataset = choices("Dataset", cap.DATASETS)  # prepare --dataset, bench --dataset
Split = choices("Split", cap.SPLITS)  # evaluate --split, anchor --split
Role = choices("Role", (*cap.ROLES, *cap.SHARD_SYSTEMS))  # train --role
PresetName = choices("PresetName", PRESETS)  # bench --preset
SPLIT_HELP = ("split to score (forget, retain: the train split's forgotten and kept rows; holdout: the held-out "
              "users' train-period rows, `prepare --holdout-fraction`)")
# The presets that bring their own backbone are named in `bench --backbone`'s help; `bench` says so when it swaps.
BACKBONE_HELP = "tiny | tiny-t5 | smollm2-135m | hub id | local path" + "".join(
    f"; preset {name} uses {preset.backbone} instead" for name, preset in PRESETS.items() if preset.backbone)


def print_counts(title: str, counts: dict) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out_console.print(table)


def print_fields(config_cls: type, group: Iterable[dataclasses.Field]) -> None:
    """One line per option, `name=default  help  [what it accepts]`, read from the fields' `option()` metadata, so
    a method's options and a run's audit settings are listed alike and never apart from the code that checks them."""
    specs = cap.specs(config_cls)
    for f in group:
        help_text = f"  {f.metadata['help']}" if f.metadata.get("help") else ""
        out_console.print(f"  {f.name}={f.default}{help_text}  [{specs[f.name].describe()}]", highlight=False,
                          markup=False)


def parse_options(pairs: list[str], config_cls: type, where: str = "--set") -> dict[str, Any]:
    """`key=value` pairs typed and checked by the fields of a method's config (`e2urec.options.parse_options`:
    `none` only where a field's type allows it, true/false for booleans, whole numbers for int fields)."""
    return cap.parse_options(pairs, config_cls, where)


def method_options(method: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """`options` checked by the method's own config (ranges, known keys, contradictions) now, before any work is
    done; options the chosen settings do not read are warned about."""
    from e2urec.unlearning.base import REGISTRY

    try:
        cfg = REGISTRY[method].Config.from_options(options)
    except E2URecError as exc:
        raise E2URecError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise E2URecError(f"{where}: invalid {method} option ({exc})") from None
    for key, why in cfg.ignored_options(set(options)).items():
        console.print(f"[bold yellow]warning:[/] {escape(key)} is given but not used: {escape(why)}", highlight=False)
    return options
