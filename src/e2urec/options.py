"""The one parser and validator of user-set options: a method's `--set key=value`, a run's audit settings
(`init --set`), the numeric limits the command line checks its own options against, and the names its
fixed-value options offer as choices.

An option is a dataclass field made with `option()`: its annotation is its type (`int`, `float`, `bool`, `str`,
or `X | None` when "unset" means something) and its metadata its help text, range and choices. From that one
declaration come the parsing of `key=value` text, the check of a config built from code or read back from a
run.json, and the range `e2urec methods` shows — so the three cannot disagree. Every limit has an upper bound:
a value nobody would choose on purpose (a batch of 10^20 samples, a LoRA rank of 10^11) must stop here with a
message, not in an allocator or a sampler with a traceback.

This module imports nothing of e2urec but its errors, so every layer may use it.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from e2urec.errors import E2URecError

# The names the command line offers as choices. They live here, not beside the code that acts on them, so that
# the CLI lists them (and refuses anything else at parse time) without importing pandas or torch; that code
# imports them from here, so the two cannot differ.
KEEP = ("best", "last")  # TrainConfig.keep: which epoch's weights a run keeps
DATASETS = ("ml-100k", "ml-1m", "goodreads", "csv")  # the readers of e2urec.data.readers, in this order
SPLITS = ("train", "valid", "test", "holdout", "forget", "retain")  # e2urec.data.roles.rows_for
ROLES = ("original", "retrain")  # what one model trains on (e2urec.data.roles.role_rows)
SHARD_SYSTEMS = ("sisa", "receraser")  # one model per shard (e2urec.unlearning.sharded.SYSTEMS, in this order)

# Upper bounds, far above any intended value and far below what would exhaust memory or overflow an index.
MAX_SEED = 2**32 - 1  # numpy seeds take 0..2**32-1
MAX_EPOCHS = 2**16
MAX_STEPS = 2**20  # optimiser steps; also step counts such as min_steps and check_every
MAX_BATCH = 2**16  # samples per step (and gradient-accumulation steps)
MAX_LORA_RANK = 4096  # and never above the backbone's hidden width, checked where the backbone is loaded
MAX_LORA_ALPHA = 2**16
MAX_TOKENS = 2**20  # prompt lengths
MAX_SAMPLES = 10_000_000  # "at most this many" sample counts
MAX_LR = 1000.0  # AdamW learning rates (10 already diverges; tests force divergence with it)
MAX_WEIGHT = 1e4  # loss weights, temperatures and margins
MAX_ROWS = 10**9  # rows of a dataset kept
MAX_HISTORY = 100  # items shown in a prompt: (events × K) index arrays; 100 titles already fill ~2,000 tokens
MAX_SHARDS = 1024  # one model is trained per shard

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: "1.5", "1e3", "0x10" and "١٢" are refused
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
KINDS = (bool, int, float, str)


def option(default: Any, help: str, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None, open_low: bool = False, open_high: bool = False,
           advanced: bool = False) -> Any:
    """A config field with its help text and the range it is checked against (`e2urec methods` shows both);
    `advanced` options are listed only by `e2urec methods NAME`."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                            "open_low": open_low, "open_high": open_high, "advanced": advanced})


@dataclass(frozen=True)
class Spec:
    """What one option accepts, read from its field's annotation and `option()` metadata."""

    name: str
    kind: type | None  # bool, int, float or str; None: an annotation this module does not type-check
    nullable: bool
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        """The accepted values in words, for help and for error messages: `a whole number in [1, 4096]`."""
        if self.kind is bool:
            text = "true or false (yes/no, 1/0)"
        elif self.choices:
            text = "one of " + " | ".join(self.choices)
        elif self.kind is str:
            text = "text"
        else:
            text = ("a whole number" if self.kind is int else "a number") + self.range_text()
        return text + (" or none" if self.nullable else "")

    def range_text(self) -> str:
        low = None if self.low is None else f"{'(' if self.open_low else '['}{shown(self.low)}"
        high = None if self.high is None else f"{shown(self.high)}{')' if self.open_high else ']'}"
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" {'>' if self.open_low else '≥'} {shown(self.low)}"
        if high:
            return f" {'<' if self.open_high else '≤'} {shown(self.high)}"
        return ""

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable (None: it is): of the field's type, finite, in range, a known choice."""
        if value is None:
            return None if self.nullable else "must be set (this option has no unset value)"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind is str:
            if not isinstance(value, str):
                return "must be text"
            return None if not self.choices or value in self.choices else "is not a known choice"
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            return "must be a whole number"
        if self.kind is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            return "must be a number"
        if self.kind is None:
            return None
        if not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return f"must be {'>' if self.open_low else '≥'} {shown(self.low)}"
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return f"must be {'<' if self.open_high else '≤'} {shown(self.high)}"
        return None

    def parse(self, raw: str) -> Any:
        """`raw` as this option's type; raises ValueError with the reason (checked for range by the caller)."""
        text = raw.strip()
        if text.lower() == "none" and (self.nullable or self.kind is not str):
            if not self.nullable:
                raise ValueError("none is not accepted (this option has no unset value)")
            return None
        if self.kind is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError("not a valid bool")
            return text.lower() in TRUE
        if self.kind is int:
            if not INTEGER.fullmatch(text):
                raise ValueError("not a valid int")
            if len(text) > 30:  # int() itself refuses over 4,300 digits, with a message about Python
                raise ValueError("out of range")
            return int(text)
        if self.kind is float:
            if not DECIMAL.fullmatch(text) and text.lstrip("+-").lower() not in ("nan", "inf", "infinity"):
                raise ValueError("not a valid float")
            return float(text)  # nan, inf and overflows to inf are refused by problem(), as not finite
        return raw


def shown(bound: float) -> str:
    """A bound as people write it: 4294967295 and 10000, not 4.29497e+09 and 1e+04; 0.001 stays 0.001."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _spec(name: str, hint: Any, meta: Mapping[str, Any]) -> Spec:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    kind = kinds[0] if len(kinds) == 1 and kinds[0] in KINDS else None
    return Spec(name, kind, type(None) in args, meta.get("low"), meta.get("high"), bool(meta.get("open_low")),
                bool(meta.get("open_high")), meta.get("choices"))



@functools.cache
def specs(cls: type) -> dict[str, Spec]:
    """Every field of the dataclass `cls` as a Spec (cached: a class's fields do not change)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _spec(f.name, hints.get(f.name, Any), f.metadata) for f in fields(cls)}


def check_fields(config: Any) -> None:
    """Refuse a field of the wrong type, none where the type has no None, a non-finite number, a value outside
    its range or an unknown choice — for configs built from `--set`, from code and from a run.json alike."""
    for name, spec in specs(type(config)).items():
        value = getattr(config, name)
        found = spec.problem(value)
        if found:
            raise E2URecError(f"{type(config).__name__}: {name}={value!r} {found} (give {spec.describe()})")


def parse_options(pairs: Iterable[str] | Mapping[str, str], cls: type, where: str = "--set") -> dict[str, Any]:
    """`key=value` texts (or a key → text mapping) typed and checked by the fields of `cls`, each value alone;
    the config built from them checks the whole. `where` names the flag in messages (`init --set`)."""
    known = specs(cls)
    items = pairs.items() if isinstance(pairs, Mapping) else (_split(pair, known, where) for pair in pairs)
    options: dict[str, Any] = {}
    for key, raw in items:
        key = key.strip().replace("-", "_")
        if key not in known:
            raise E2URecError(f"{where} {key}: unknown option; known: {', '.join(sorted(known))}")
        spec = known[key]
        try:
            value = spec.parse(raw)
        except ValueError as exc:
            raise E2URecError(f"{where} {key}={raw!r}: {exc}; give {spec.describe()}") from None
        found = spec.problem(value)
        if found:
            raise E2URecError(f"{where} {key}={raw!r}: {found}; give {spec.describe()}")
        options[key] = value
    return options


def _split(pair: str, known: Mapping[str, Spec], where: str) -> tuple[str, str]:
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise E2URecError(f"{where} {pair!r}: expected key=value with key one of {', '.join(sorted(known))}")
    return key, raw


def hidden_width(model: Any) -> int | None:
    """A transformers model's hidden width (hidden_size, d_model or n_embd of its text config), if it has one."""
    config = getattr(model, "config", None)
    if config is not None and callable(getattr(config, "get_text_config", None)):
        config = config.get_text_config()
    for name in ("hidden_size", "d_model", "n_embd", "dim"):
        width = getattr(config, name, None)
        if isinstance(width, int) and width > 0:
            return width
    return None


def check_lora_rank(rank: int, model: Any, where: str) -> None:
    """Refuse a LoRA rank above the backbone's hidden width before peft allocates the adapters: such a rank adds
    no capacity (the update's rank is bounded by the width), only memory — r×vocabulary per adapted embedding."""
    width = hidden_width(model)
    if width is not None and rank > width:
        raise E2URecError(f"{where}: LoRA rank {rank} exceeds this backbone's hidden width {width}; a larger rank "
                          f"adds memory, not capacity. Give a rank of at most {width} (`train --lora-r`, "
                          f"`--set lora_r=`)")
