"""The LoRA recipe in one place: where adapters go (named targets), the config that carries r/alpha/dropout from a
method or the CLI to the model, its meta.json record, attaching adapters to a backbone and merging them back.

Training, checkpoints and run versions all use LoRA; keeping the recipe here means a target name, its peft
`target_modules` and the record meta.json keeps of it cannot drift apart between those callers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from e2urec.errors import E2URecError
from e2urec.model.backbone import Backbone
from e2urec.options import check_lora_rank

# Where LoRA adapters go, by the names methods, the CLI and meta.json use. The input embedding's module name
# depends on the model, so "all-linear+embeddings" holds placeholders that `add_lora` resolves.
LORA_TARGETS = ("attention", "all-linear", "all-linear+embeddings")
ALL_LINEAR, INPUT_EMBEDDINGS = "<all-linear>", "<input-embeddings>"
LORA_META_KEYS = ("r", "alpha", "dropout", "targets")


def _target_modules(targets: str) -> str | list[str] | None:
    """peft `target_modules` for a named choice: attention → peft's per-architecture default (q/v projections);
    all-linear → peft's shorthand; +embeddings → every linear layer but the head, and the input embedding."""
    return {"attention": None, "all-linear": "all-linear",
            "all-linear+embeddings": [ALL_LINEAR, INPUT_EMBEDDINGS]}[targets]


def lora_config(r: int, alpha: int, dropout: float, targets: str = "attention") -> LoraConfig:
    """The one object that carries LoRA settings from a method or the CLI to the model (task type and model-
    dependent module names are filled in by `add_lora`)."""
    if targets not in LORA_TARGETS:
        raise E2URecError(f"unknown LoRA targets {targets!r}; choose one of {', '.join(LORA_TARGETS)}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_target_modules(targets))


def lora_to_meta(config: LoraConfig, where: Path | str = "meta.json") -> dict:
    """meta.json's `lora`: plain JSON with the keys older files have (r, alpha, dropout, targets). A config with
    settings that record cannot hold is refused, so what is read back is what was trained."""
    targets = next((t for t in LORA_TARGETS if _modules(config.target_modules) == _modules(_target_modules(t))),
                   None)
    if targets is None:
        raise E2URecError(f"{where}: meta.json records LoRA targets by name ({', '.join(LORA_TARGETS)}); "
                          f"target_modules {config.target_modules!r} is none of them")
    record = {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": targets}
    expected = lora_config(**record).to_dict()
    differ = sorted(k for k, v in replace(config, task_type=None).to_dict().items() if expected.get(k) != v)
    if differ:
        raise E2URecError(f"{where}: meta.json cannot record this LoraConfig's {', '.join(differ)}; build it with "
                          f"e2urec.model.lora.lora_config")
    return record


def _modules(target_modules: object) -> object:
    """`target_modules` compared as peft reads them: a list and a set of the same names are the same."""
    return frozenset(target_modules) if isinstance(target_modules, list | set | frozenset) else target_modules


def lora_from_meta(record: Any, where: Path | str = "meta.json") -> LoraConfig:
    """The LoraConfig that meta.json's `lora` records; files from before `targets` was recorded mean attention."""
    if not (isinstance(record, dict) and {"r", "alpha", "dropout"} <= set(record) <= set(LORA_META_KEYS)):
        raise E2URecError(f"{where}: `lora` must give r, alpha and dropout (and optionally targets), got {record!r}")
    r, alpha, dropout = record["r"], record["alpha"], record["dropout"]
    if not (_positive_int(r) and _positive_int(alpha) and isinstance(dropout, int | float)
            and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise E2URecError(f"{where}: `lora` needs whole r, alpha ≥ 1 and 0 ≤ dropout < 1, got {record!r}")
    try:
        return lora_config(r, alpha, dropout, record.get("targets", "attention"))
    except E2URecError as exc:
        raise E2URecError(f"{where}: `lora`: {exc}") from exc


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def as_lora_config(lora: LoraConfig | dict | None) -> LoraConfig | None:
    """A LoRA recipe as a LoraConfig: a dict is meta.json's record (what Retrain and the shard systems reuse
    from the Original's meta)."""
    return lora_from_meta(lora) if isinstance(lora, dict) else lora


def resolve_target_modules(model: torch.nn.Module, target_modules: str | set[str] | None) -> str | list[str] | None:
    """`target_modules` with lora_config's placeholders replaced by this model's module names: every linear
    layer but the output head, and the input embedding. Anything else is left for peft to read."""
    if not isinstance(target_modules, set | frozenset) or not target_modules & {ALL_LINEAR, INPUT_EMBEDDINGS}:
        return target_modules
    names = set(target_modules) - {ALL_LINEAR, INPUT_EMBEDDINGS}
    if ALL_LINEAR in target_modules:
        head = model.get_output_embeddings()
        names |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and m is not head}
    if INPUT_EMBEDDINGS in target_modules:
        embedding = model.get_input_embeddings()
        names |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is embedding}
    return sorted(names)


def add_lora(backbone: Backbone, config: LoraConfig) -> None:
    """Freeze the backbone and insert LoRA modules as `config` says. peft completes (mutates) the config it is
    given, so it gets a copy with the task type and this model's module names filled in."""
    check_lora_rank(config.r, backbone.model, backbone.name)  # before peft allocates r × width per adapter
    task_type = config.task_type or ("SEQ_2_SEQ_LM" if backbone.kind == "seq2seq" else "CAUSAL_LM")
    config = replace(config, task_type=task_type,
                     target_modules=resolve_target_modules(backbone.model, config.target_modules))
    backbone.model = get_peft_model(backbone.model, config)


def full_weights(backbone: Backbone) -> Backbone:
    """Fold a LoRA adapter into its base so a version is one self-contained model (requests stack by merging).

    An adapter on an input embedding that the output head shares (tied weights, as in the tiny backbone and
    SmolLM2) changed only the input side while it trained and was audited; merged into the shared matrix it
    would move the head too, and with it every answer (P(yes) shifted by up to 0.005 with a random adapter; after
    three real requests the non-members' loss had risen from 0.61 to 0.69). So the head gets its own copy of the
    weights first and the served version is the model that was audited, untied."""
    model = backbone.model
    if not hasattr(model, "merge_and_unload"):
        return backbone
    base = model.get_base_model()
    head, embedding = base.get_output_embeddings(), base.get_input_embeddings()
    embedding_weight = getattr(getattr(embedding, "base_layer", embedding), "weight", None)
    if head is not None and embedding_weight is not None and head.weight is embedding_weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
        if getattr(base.config, "get_text_config", None):
            base.config.get_text_config().tie_word_embeddings = False
    backbone.model = model.merge_and_unload()
    return backbone
