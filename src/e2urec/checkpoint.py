"""Model directories: `save_pretrained` output (safetensors) or a PEFT adapter, plus meta.json.

Nothing is pickled, and a directory holding a pickle-format weight file is refused rather than loaded:
unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from e2urec.errors import E2URecError, NonFinite
from e2urec.io import read_json, sha256_file, write_json_atomic
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.ensemble import AttentionAggregator, ShardEnsemble
from e2urec.model.lora import lora_from_meta, lora_to_meta

META_FILE = "meta.json"
SYSTEM_FILE = "system.json"
AGGREGATOR_FILE = "aggregator.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


# meta.json's format: 1 adds the `format` field itself; files without it (format 0) read the same way.
META_FORMAT = 1


@dataclass
class ModelMeta:
    """meta.json, the one record every model folder carries: what loading needs (backbone, `base`, `lora`)
    typed and checked, and everything a command measured (role or method, data, recipe, costs) in `facts`.
    Written by `write_meta` and read by `read_meta`, nowhere else."""

    backbone: str | None = None
    kind: str | None = None
    # What the saved weights start from: {"model": path relative to the folder} for an adapter on another
    # model, {"backbone": name, "seed": n} for an adapter on a fresh backbone; None for full weights.
    base: dict | None = None
    lora: LoraConfig | None = None  # the LoRA recipe a model trained from scratch used; JSON via lora_to_meta
    facts: dict[str, Any] = field(default_factory=dict)
    format: int = META_FORMAT

    @classmethod
    def from_dict(cls, raw: dict, where: Path | str = "meta.json") -> ModelMeta:
        raw = dict(raw)
        version = raw.pop("format", 0)
        if not isinstance(version, int) or version > META_FORMAT:
            raise E2URecError(f"{where}: meta.json format {version!r} is newer than this e2urec reads "
                              f"({META_FORMAT}); upgrade e2urec")
        base, lora = raw.pop("base", None), raw.pop("lora", None)
        if base is not None and not (isinstance(base, dict) and ("model" in base or "backbone" in base)):
            raise E2URecError(f"{where}: `base` must name a model folder or a backbone, got {base!r}")
        if isinstance(lora, LoraConfig):
            lora_to_meta(lora, where)  # refused here, before anything is written, if meta.json cannot hold it
        elif lora is not None:
            lora = lora_from_meta(lora, where)
        return cls(backbone=raw.pop("backbone", None), kind=raw.pop("kind", None), base=base, lora=lora,
                   facts=raw, format=version)

    def to_dict(self) -> dict:
        """The JSON object, flat as it always was: the typed fields, then the facts."""
        lora = lora_to_meta(self.lora) if self.lora is not None else None
        typed = {"format": META_FORMAT, "kind": self.kind, "backbone": self.backbone, "lora": lora}
        return {**typed, **({"base": self.base} if self.base is not None else {}), **self.facts}


def write_meta(folder: Path, meta: dict, kind: str | None = None) -> dict:
    """Check `meta` against ModelMeta and write it as `folder/meta.json` (atomically); returns what was written."""
    record = ModelMeta.from_dict({**meta, **({"kind": kind} if kind else {})}, folder / META_FILE).to_dict()
    write_json_atomic(folder / META_FILE, record)
    return record


def read_meta(folder: Path) -> dict:
    """`folder/meta.json` as a dict, checked (old files without a format read as format 0)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise E2URecError(f"{folder}: no {META_FILE}; not a model directory written by e2urec")
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise E2URecError(f"{path}: not a meta.json written by e2urec")
    return ModelMeta.from_dict(raw, path).to_dict()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


WEIGHTS_KEY = "weights_sha256"


def weight_checksums(folder: Path) -> dict[str, str]:
    """sha256 of each weight file of a model folder (its top-level *.safetensors)."""
    return {p.name: sha256_file(p) for p in sorted(Path(folder).glob("*.safetensors"))}


def verify_weights(folder: Path, meta: dict) -> None:
    """Refuse weight files that differ from what meta.json recorded when they were written (a flipped block, a
    truncated copy, a swapped file): their scores would be silently wrong. Folders written before the record
    existed are read as they are."""
    recorded = meta.get(WEIGHTS_KEY)
    if recorded is None:
        return
    found = weight_checksums(folder)
    for name in sorted(set(recorded) | set(found)):
        if found.get(name) != recorded.get(name):
            what = ("is missing" if name not in found else "was not written with this model" if name not in recorded
                    else "does not match the sha256 meta.json recorded when it was written")
            raise E2URecError(f"{folder / name}: {what}; the file was changed or damaged. Restore the folder from a "
                              "copy or retrain the model")


def save_model(backbone: Backbone, folder: Path, meta: dict) -> None:
    """Write weights (adapter only, for a PEFT model), tokenizer and meta.json (with the weights' sha256) into
    `folder`."""
    model = unwrap(backbone.model)
    model.save_pretrained(folder, safe_serialization=True)
    backbone.tokenizer.save_pretrained(folder)
    write_meta(folder, {**meta, WEIGHTS_KEY: weight_checksums(folder)}, kind=backbone.kind)


def refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise E2URecError(
            f"{folder}: holds pickle-format weights {pickles}; e2urec loads safetensors only, because "
            f"unpickling can run arbitrary code. Re-save the model with save_pretrained(safe_serialization=True)"
        )


def base_reference(folder: Path, base_dir: Path) -> str:
    """How an adapter names its base model: a path relative to the adapter, so a run folder can move."""
    return os.path.relpath(base_dir.resolve(), folder.resolve())


def load_model(folder: str | Path, trainable: bool = False) -> tuple[Backbone, dict]:
    """Load a model directory written by e2urec (full weights or adapter over a base), with its meta."""
    folder = Path(folder)
    if not folder.is_dir():
        raise E2URecError(f"{folder}: model directory not found")
    refuse_pickles(folder)
    meta = read_meta(folder)
    verify_weights(folder, meta)
    if (folder / SYSTEM_FILE).is_file():
        system = _load_system(folder)
        system.origin = str(folder)
        return system, meta
    if (folder / "adapter_config.json").is_file():
        base = meta.get("base") or {}
        if "model" in base:
            backbone, _ = load_model((folder / base["model"]).resolve())
        else:
            backbone = load_backbone(base.get("backbone", meta.get("backbone")), seed=base.get("seed", 0))
        try:
            backbone.model = PeftModel.from_pretrained(backbone.model, folder, is_trainable=trainable)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise E2URecError(f"{folder}: cannot load the adapter ({exc})") from exc
    else:
        try:
            backbone = load_backbone(str(folder))
        except SafetensorError as exc:
            raise E2URecError(f"{folder}: the weights file is corrupt or truncated ({exc}); retrain or restore "
                              f"it") from exc
        backbone.name = meta.get("backbone", backbone.name)
    backbone.origin = str(folder)
    check_finite(backbone.model, str(folder))
    return backbone, meta


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged or damaged model), naming the tensors: no score of such a
    model means anything, and an unused NaN entry would otherwise pass unnoticed until it spread."""
    with torch.no_grad():
        bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFinite(f"{where}: {len(bad)} weight tensors hold NaN or infinity (first: {bad[0]}); the model "
                        "diverged or the file was damaged. Retrain it or restore it from a copy")


def ensemble_backbone(shards: list[Backbone], aggregator: AttentionAggregator | None) -> Backbone:
    """A shard system as one model: the shards' answer logits combined (mean, or the learned attention)."""
    first = shards[0]
    ensemble = ShardEnsemble([s.model for s in shards], first.answer_ids, aggregator)
    return Backbone(ensemble, first.tokenizer, first.kind, first.name, first.answer_ids)


def write_system(folder: Path, shard_dirs: list[str], aggregation: str, aggregator: AttentionAggregator | None,
                 meta: dict) -> None:
    """A shard system folder: the shards' folders (already in place), system.json, the learned aggregator's
    weights (safetensors) and meta.json. `_load_system` reads exactly this."""
    write_json_atomic(folder / SYSTEM_FILE, {"shards": shard_dirs, "aggregator": aggregation,
                                             **({"type": meta["role"]} if "role" in meta else {})})
    if aggregator is not None:
        save_file({k: v.contiguous() for k, v in aggregator.state_dict().items()}, str(folder / AGGREGATOR_FILE))
    write_meta(folder, {**meta, WEIGHTS_KEY: weight_checksums(folder)})


def _load_system(folder: Path) -> Backbone:
    """A shard system folder written by `write_system`."""
    system = read_json(folder / SYSTEM_FILE)
    shards = [load_model(folder / name)[0] for name in system["shards"]]
    aggregator = None
    if system["aggregator"] == "attention":
        aggregator = AttentionAggregator(system.get("hidden", 16))
        try:
            aggregator.load_state_dict(load_file(folder / AGGREGATOR_FILE))
        except (OSError, RuntimeError, SafetensorError) as exc:
            raise E2URecError(f"{folder / AGGREGATOR_FILE}: cannot load the aggregator ({exc})") from exc
    return ensemble_backbone(shards, aggregator)
