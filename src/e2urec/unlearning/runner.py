"""`e2urec unlearn`: run a registered method from an Original and write the unlearned model with its costs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate.utils import extract_model_from_parallel

from e2urec import __version__
from e2urec.data.roles import rows_for, sample_rows
from e2urec.engine import FitResult, count_parameters, make_accelerator
from e2urec.errors import Degenerate, E2URecError
from e2urec.evaluation.metrics import degenerate, max_abs_weight
from e2urec.io import atomic_dir, sha256_file
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.scratch import orphaned, reclaim, sweep
from e2urec.unlearning.base import REGISTRY, Job, Method, MethodConfig

FORGET_DERIVED = "forget-derived scratch (the augmented model, teacher caches, resume checkpoints)"


class PeakMemory:
    """Peak memory of the unlearning itself: CUDA's allocator peak on a GPU, else the process's peak RSS
    (Linux VmHWM, reset at the start through /proc/self/clear_refs so loading before does not count)."""

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            self.bytes = int(torch.cuda.max_memory_allocated())
            return
        self.bytes = 0
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.bytes = int(line.split()[1]) * 1024


def scratch_fingerprint(job: Job, method: str, cfg: MethodConfig) -> str:
    """What an interrupted run's scratch must match to be resumed: the method and its options, the Original (its
    path and meta.json, which a retrained model changes) and the data's checksum. An augmented model or a teacher
    cache of other inputs must never be reused, so anything else is swept."""
    meta = job.original / "meta.json"
    key = {"method": method, "config": asdict(cfg), "original": str(job.original.resolve()),
           "original_meta": sha256_file(meta) if meta.is_file() else None, "data": job.manifest["samples_sha256"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def take_scratch(job: Job, method: str, cfg: MethodConfig) -> bool:
    """Own `job.work` before anything is derived from the forget set there (see `e2urec.scratch`): scratch left by
    a stopped `unlearn` with the same inputs is resumed, other scratch of a stopped process is swept, with the
    half-written output folders it left (`.OUT.tmp-*`); scratch of a live process is refused, nothing changed.
    Returns whether it resumes."""
    stopped = job.work.exists() and orphaned(job.work)
    resumed = reclaim(job.work, "unlearn", scratch_fingerprint(job, method, cfg), FORGET_DERIVED)
    if stopped:
        name, parent = job.out.name, job.out.parent
        for pattern in (f".{name}.tmp-*", f".{name}.old-*", f".{name}.work.claim-*"):
            for half in parent.glob(pattern):
                sweep(half, "a half-written folder")
    return resumed


DEGENERATE_SAMPLES = 256  # forget prompts scored to tell a working model from a degenerate one


def degenerate_result(job: Job, model: Backbone) -> str | None:
    """Why the unlearned model is degenerate (see `e2urec.evaluation.degenerate`), from its P(yes) on a seeded
    sample of the forget prompts and its largest weight; None for a working model."""
    rows = sample_rows(rows_for(job.samples, "forget"), DEGENERATE_SAMPLES, 0, 41)
    p = per_sample_p_yes(model, prompt_set(model, rows), 64, job.accelerator, progress=False)
    return degenerate(p, max_abs_weight(model.model))


def unchanged(instance: Method, result: FitResult) -> str | None:
    """Why an approximate method's result is the Original itself (its stopping rule or utility guard kept the
    starting state, or it found nothing to unlearn), else None: a result that forgot nothing must say so."""
    if instance.family != "approximate" or (result.kept or {}).get("step", 1) != 0:
        return None
    return f"the result is the Original: {result.kept.get('why', 'the starting weights were kept')}"


def without_training_wrappers(model: torch.nn.Module) -> None:
    """Take off the mixed-precision wrapper accelerate puts on the forward of every model it prepares for training
    (bf16 autocast on a GPU), in place: a model kept in memory then scores as the same weights loaded from disk do,
    and whoever scores it chooses the precision."""
    for module in model.modules():
        if "_original_forward" in module.__dict__:
            extract_model_from_parallel(module, keep_fp32_wrapper=False)


def method_class(method: str) -> type[Method]:
    """The registered method of that name; an unknown name is refused before any work."""
    if method not in REGISTRY:
        raise E2URecError(f"unknown method {method!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[method]


class Unlearned(NamedTuple):
    """An unlearning's result in memory: the model, its meta (all but `base`, which depends on where it is
    saved), and the method and job that saving it needs (a sharded system saves per shard)."""

    model: Backbone
    meta: dict
    method: Method
    job: Job


def unlearn_model(method: str, original: Path, data: Path, out: Path, options: dict[str, Any] | None = None,
                  keep_intermediates: bool = False) -> Unlearned:
    """Unlearn the forget set of `data` from `original` with `method` and return the model in memory, unwritten
    (and without training's mixed-precision wrapper, so it scores as the written model would).

    `out` is where the result would go: its scratch folder (`.OUT.work`) sits beside it. The scratch is purged
    before this returns (unless kept), as after any refused, diverged or degenerate run, so nothing derived from
    the forget set outlives the call; whoever keeps the model decides where, if anywhere, it is written."""
    cls = method_class(method)
    out, original = Path(out), Path(original)
    cfg: MethodConfig = cls.Config.from_options(options or {})
    accelerator = make_accelerator()
    job = Job(original, Path(data), out, out.parent / f".{out.name}.work", accelerator, keep_intermediates)
    instance = cls(cfg)
    if accelerator.is_main_process:  # one owner per job: the other processes of a multi-process run wait for it
        take_scratch(job, method, cfg)
    accelerator.wait_for_everyone()
    with PeakMemory() as peak:
        started = time.perf_counter()
        try:
            model, result = instance.run(job)
            broken = degenerate_result(job, model)
            if broken:
                raise Degenerate(f"{method}: the unlearned model is degenerate: {broken}, so every forget metric "
                                 f"would read as perfect forgetting; it was not written. Try a lower learning rate "
                                 f"(or fewer steps)")
        except E2URecError:
            job.purge()  # a refused, diverged or degenerate run leaves nothing derived from the forget set behind
            raise
        seconds = time.perf_counter() - started
    without_training_wrappers(model.model)
    trainable, total = count_parameters(model.model)
    meta = {
        "e2urec_version": __version__,
        "method": method,
        "backbone": job.original_meta.get("backbone"),
        "original": str(original.resolve()),
        "data": {"dir": str(Path(data).resolve()), "samples_sha256": job.manifest["samples_sha256"]},
        "hyperparameters": asdict(cfg),
        "lora": instance.lora_meta(job),
        "unlearn_seconds": round(seconds, 3),
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_bytes": peak.bytes,
        "peak_memory_kind": "cuda_allocated" if torch.cuda.is_available() else "process_rss",
        "steps": result.steps,
        "fit": asdict(result),
        "unchanged": unchanged(instance, result),
        "ignored_options": cfg.ignored_options(set(options or {})),
        "forget_samples": int(job.samples["forget"].sum()),
        **instance.facts,
    }
    accelerator.wait_for_everyone()  # every process is done with the scratch before its owner deletes it
    if accelerator.is_main_process:
        job.purge()
    return Unlearned(model, meta, instance, job)


def unlearn(method: str, original: Path, data: Path, out: Path, options: dict[str, Any] | None = None,
            keep_intermediates: bool = False, overwrite: bool = False) -> dict:
    """Unlearn the forget set of `data` from `original` with `method`; write `out` (atomically) and return its
    meta."""
    method_class(method)
    out = Path(out)
    if out.exists() and not overwrite and (out / "meta.json").is_file():
        raise E2URecError(f"{out}: already holds a model; pass --overwrite to replace it")
    done = unlearn_model(method, original, data, out, options, keep_intermediates)
    meta = done.meta
    base = done.method.base_meta(done.job, out)
    if base is not None:
        meta["base"] = base
    accelerator = done.job.accelerator
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            done.method.save(done.job, done.model, tmp, meta)
    accelerator.wait_for_everyone()
    return meta
