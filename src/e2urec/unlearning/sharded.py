"""SISA and RecEraser as real systems: S shard models trained on disjoint parts of the training data and
aggregated (SISA: mean of logits; RecEraser: user-group shards, attention learned on valid). Forgetting
retrains only the shards that hold forget rows, and RecEraser re-learns its aggregation."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig

from e2urec import __version__
from e2urec.checkpoint import (
    META_FILE,
    ensemble_backbone,
    load_model,
    read_meta,
    save_model,
    write_system,
)
from e2urec.data.roles import prompts_seen_by_original, rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import FitResult, TrainConfig, make_accelerator
from e2urec.errors import Diverged, E2URecError
from e2urec.io import atomic_dir
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.ensemble import AttentionAggregator
from e2urec.model.lora import as_lora_config, lora_to_meta
from e2urec.model.scoring import answer_logits, per_sample, prompt_set
from e2urec.options import SHARD_SYSTEMS
from e2urec.training import fit_rows, make_trainable
from e2urec.unlearning.base import Job, Method, RecipeOverrides, register


class ShardSystem(NamedTuple):
    column: str  # the prepared samples' column that assigns each training row to a shard
    aggregation: str  # how shard predictions are combined: "mean" or a learned "attention"


# One per name of options.SHARD_SYSTEMS (the shard roles `train --role` offers), in that order.
SYSTEMS = dict(zip(SHARD_SYSTEMS, (ShardSystem("sisa_shard", "mean"), ShardSystem("receraser_shard", "attention")),
                   strict=True))


def shard_dir(s: int) -> str:
    return f"shard-{s}"


def shard_ids(samples: pd.DataFrame, system: str) -> list[int]:
    column = SYSTEMS[system].column
    return sorted(int(s) for s in samples.loc[samples["split"] == "train", column].unique() if s >= 0)


def learn_aggregator(shards: list[Backbone], samples: pd.DataFrame, accelerator: Accelerator, seed: int,
                     steps: int = 300) -> AttentionAggregator:
    """Fit RecEraser's attention on the valid split: shard answer logits are computed once, then the small
    aggregator is trained full-batch on the aggregated yes/no cross-entropy."""
    valid = rows_for(samples, "valid")
    answer = list(shards[0].answer_ids)
    features = torch.stack([
        torch.from_numpy(per_sample(b, prompt_set(b, valid), lambda batch, b=b: answer_logits(
            b.model, batch, b.kind)[:, answer], 64, accelerator, desc="aggregator inputs"))
        for b in shards
    ])  # [S, N, 2]
    labels = torch.tensor(valid["label"].to_numpy(dtype="int64"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        aggregator = AttentionAggregator()
    optimizer = torch.optim.Adam(aggregator.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy((aggregator(features) * features).sum(0), labels)
        loss.backward()
        optimizer.step()
    if not (torch.isfinite(loss) and all(torch.isfinite(p).all() for p in aggregator.parameters())):
        raise Diverged(f"RecEraser's aggregator: training on the valid split diverged (loss {float(loss):g}); the "
                       "shards' answer logits are too large or damaged. Check the shard models with e2urec evaluate")
    return aggregator.eval()


def link_tree(source: Path, target: Path) -> None:
    """Reuse an unchanged shard: hard links where the filesystem allows, copies otherwise."""
    shutil.copytree(source, target, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def train_system(data_dir: Path, system: str, backbone_name: str, out: Path, cfg: TrainConfig,
                 lora: LoraConfig | dict | None = None, overwrite: bool = False) -> dict:
    """`e2urec train --role sisa|receraser`: one model per shard on its training rows, then aggregation.

    Finished shards are kept in a work folder beside `out`, so an interrupted run resumes shard by shard.
    """
    out, recipe = Path(out), as_lora_config(lora)
    if out.exists() and not overwrite and (out / META_FILE).is_file():
        raise E2URecError(f"{out}: a trained system is already there; pass --overwrite to replace it")
    accelerator = make_accelerator()
    samples, manifest = load_prepared(data_dir)
    work = out.parent / f".{out.name}.work"
    column = SYSTEMS[system].column
    started = time.perf_counter()
    shards = shard_ids(samples, system)
    trained: list[Backbone] = []
    for s in shards:
        folder = work / shard_dir(s)
        if not (folder / META_FILE).is_file():
            rows = rows_for(samples, "train")
            rows = rows[rows[column] == s]
            backbone, _, facts = fit_rows(samples, manifest, rows, backbone_name, cfg, accelerator, recipe,
                                          prompts_seen_by_original(rows), checkpoint_dir=work / f"resume-{s}",
                                          desc=f"{system} shard {s}")
            if accelerator.is_main_process:
                with atomic_dir(folder, overwrite=True) as tmp:
                    save_model(backbone, tmp, {"role": f"{system}-shard", "shard": s, **facts})
            accelerator.wait_for_everyone()
        trained.append(load_model(folder)[0])
    attention = SYSTEMS[system].aggregation == "attention"
    aggregator = learn_aggregator(trained, samples, accelerator, cfg.seed) if attention else None
    shard_meta = [read_meta(work / shard_dir(s)) for s in shards]
    meta = {
        "e2urec_version": __version__, "role": system, "backbone": backbone_name,
        "lora": None if recipe is None else lora_to_meta(recipe),
        "config": asdict(cfg), "data": {"dir": str(Path(data_dir).resolve()),
                                        "samples_sha256": manifest["samples_sha256"]},
        "shards": len(shards), "train_seconds": round(time.perf_counter() - started, 3),
        "trainable_params": sum(m["trainable_params"] for m in shard_meta),
        "total_params": sum(m["total_params"] for m in shard_meta),
    }
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            for s in shards:
                link_tree(work / shard_dir(s), tmp / shard_dir(s))
            write_system(tmp, [shard_dir(s) for s in shards], SYSTEMS[system].aggregation, aggregator,
                         {**meta, "role": system})
        shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return meta


class ShardRetrain(Method):
    """Retrain exactly the shards whose training rows include forget rows; reuse the others unchanged."""

    Config = RecipeOverrides
    family = "sharded"
    system: str

    def run(self, job: Job) -> tuple[Backbone, FitResult]:
        meta = job.original_meta
        if meta.get("role") != self.system:
            raise E2URecError(f"{job.original}: --method {self.name} needs a {self.system} system trained with "
                              f"`e2urec train --role {self.system}` (this model's role is {meta.get('role')!r})")
        column = SYSTEMS[self.system].column
        train = rows_for(job.samples, "train")
        affected = sorted(int(s) for s in train.loc[train["forget"], column].unique())
        cfg = self.cfg.recipe(meta["config"])
        shards, results, retrained_params, empty = [], [], 0, []
        for s in range(meta["shards"]):
            rows = train[(train[column] == s) & ~train["forget"]]
            if s in affected and rows.empty:
                # Every row of the shard is forgotten: training on nothing leaves the initial model.
                backbone = load_backbone(meta["backbone"], seed=cfg.seed)
                make_trainable(backbone, meta.get("lora"))
                empty.append(s)
            elif s in affected:
                backbone, result, facts = fit_rows(job.samples, job.manifest, rows, meta["backbone"], cfg,
                                                   job.accelerator, meta.get("lora"),
                                                   checkpoint_dir=job.work / f"resume-{s}",
                                                   desc=f"{self.system} shard {s}")
                results.append(result)
                retrained_params += facts["trainable_params"]
            else:
                backbone = load_model(job.original / shard_dir(s))[0]
            shards.append(backbone)
        aggregator = learn_aggregator(shards, job.samples, job.accelerator, cfg.seed) \
            if SYSTEMS[self.system].aggregation == "attention" else None
        system = ensemble_backbone(shards, aggregator)
        self.shards, self.affected, self.aggregator = shards, affected, aggregator
        self.facts = {"retrained_shards": affected, "emptied_shards": empty, "shards": meta["shards"],
                      "trainable_params": retrained_params, "config": asdict(cfg)}
        return system, FitResult(epochs_run=sum(r.epochs_run for r in results), steps=sum(r.steps for r in results),
                                 seconds=sum(r.seconds for r in results), best_valid_loss=None,
                                 history=[h for r in results for h in r.history])

    def save(self, job: Job, backbone: Backbone, folder: Path, meta: dict) -> None:
        for s, shard in enumerate(self.shards):
            if s in self.affected:
                save_model(shard, folder / shard_dir(s), {"role": f"{self.system}-shard", "shard": s,
                                                          "backbone": job.original_meta["backbone"],
                                                          "base": {"backbone": job.original_meta["backbone"],
                                                                   "seed": self.facts["config"]["seed"]},
                                                          "lora": job.original_meta.get("lora")})
            else:
                link_tree(job.original / shard_dir(s), folder / shard_dir(s))
        write_system(folder, [shard_dir(s) for s in range(len(self.shards))], SYSTEMS[self.system].aggregation,
                     self.aggregator, {**meta, "role": self.system, "lora": job.original_meta.get("lora"),
                                       "shards": len(self.shards)})


@register
class Sisa(ShardRetrain):
    """SISA: retrain the random shards holding forget rows; mean of shard logits."""

    name = "sisa"
    system = "sisa"


@register
class RecEraser(ShardRetrain):
    """RecEraser: retrain the user-group shards holding forget rows; re-learn the attention aggregation."""

    name = "receraser"
    system = "receraser"

