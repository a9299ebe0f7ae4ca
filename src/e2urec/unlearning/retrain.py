"""Retrain: exact unlearning, the baseline every approximate method is measured against."""

from __future__ import annotations

from pathlib import Path

from e2urec.data.roles import role_rows
from e2urec.engine import FitResult
from e2urec.model.backbone import Backbone
from e2urec.training import fit_rows
from e2urec.unlearning.base import Job, Method, RecipeOverrides, register


@register
class Retrain(Method):
    """Exact unlearning: the Original's own recipe (backbone, LoRA or not, optimiser) on the retain set only."""

    name = "retrain"
    Config = RecipeOverrides
    family = "exact"

    def run(self, job: Job) -> tuple[Backbone, FitResult]:
        meta = job.original_meta
        cfg = self.cfg.recipe(meta["config"])
        rows, _ = role_rows(job.samples, "retrain")
        backbone, result, _ = fit_rows(job.samples, job.manifest, rows, meta["backbone"], cfg, job.accelerator,
                                       meta.get("lora"), checkpoint_dir=job.work / "resume", desc="retrain")
        return backbone, result

    def lora_meta(self, job: Job) -> dict | None:
        return job.original_meta.get("lora")

    def base_meta(self, job: Job, out: Path) -> dict | None:
        """A fresh backbone, like the Original's: what a LoRA Retrain's adapter sits on."""
        seed = self.cfg.seed if self.cfg.seed is not None else job.original_meta["config"]["seed"]
        return {"backbone": job.original_meta["backbone"], "seed": seed}
