"""Unlearning under two processes (DDP over gloo on CPU), against one process with the same global batch.

Real multi-process runs on CPU use torchrun with ACCELERATE_USE_CPU: `accelerate launch --cpu --num_processes 2`
(accelerate 1.15) starts a *single* process unless given an MPI hostfile, so it cannot test sharding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from e2urec.unlearning.runner import unlearn

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# The shared `trained` fixture's forget set holds 14 samples: 7 per process and step, no padding by accelerate.
PER_PROCESS = 7
# A fixed `aug_steps` reads twice the samples on two processes (steps are global batches); the item-contrasted
# teacher adds a second such model whose difference the teacher amplifies, so this comparison uses the plain
# teacher (the contrasted one runs in every single-process contract test); a joint phase (forget_only below 1)
# so the retain stream is split across processes too.
E2UREC = {"stop": "none", "alpha_rule": "fixed", "lora_dropout": 0.0, "aug_steps": 2, "min_steps": 1, "epochs": 3,
          "aug_batch_size": PER_PROCESS, "forget_only": 1 / 3,
          "lora_targets": "attention"}


def launch(args: list[str]) -> None:
    done = subprocess.run(TORCHRUN + args, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def unlearn_both(trained: Path, tmp_path: Path, method: str, options: dict) -> tuple[dict, dict, Path, Path]:
    """The method under 2 processes at PER_PROCESS samples each, and in this process at twice that."""
    two, one = tmp_path / "two", tmp_path / "one"
    sets = [a for k, v in {**options, "batch_size": PER_PROCESS}.items() for a in ("--set", f"{k}={v}")]
    doubled = {k: 2 * v if k.endswith("batch_size") else v for k, v in options.items()}
    launch(["-m", "e2urec", "unlearn", "--method", method, "--model", str(trained / "original"), "--data",
            str(trained / "data"), "--out", str(two), *sets])
    single = unlearn(method, trained / "original", trained / "data", one, {**doubled, "batch_size": 2 * PER_PROCESS})
    return json.loads((two / "meta.json").read_text()), single, two, one


def assert_same_result(two: Path, one: Path) -> None:
    a, b = weights(two), weights(one)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


def test_two_processes_read_every_sample_once_per_epoch(tmp_path: Path) -> None:
    launch([__file__, str(tmp_path)])
    for bucket in ("plain", "bucketed"):
        seen = [json.loads((tmp_path / f"{bucket}-rank{r}.json").read_text()) for r in (0, 1)]
        for epoch in ("0", "1"):
            both = seen[0][epoch] + seen[1][epoch]
            assert sorted(both) == list(range(28)), (bucket, epoch)
            assert not set(seen[0][epoch]) & set(seen[1][epoch])


def test_neggrad_on_two_processes_equals_one_process(trained: Path, tmp_path: Path) -> None:
    meta, single, two, one = unlearn_both(trained, tmp_path, "neggrad", {"epochs": 2})
    assert meta["steps"] == single["steps"] == 2
    assert meta["fit"]["history"][-1]["streams"] == single["fit"]["history"][-1]["streams"]
    assert_same_result(two, one)


def test_e2urec_on_two_processes_equals_one_process(trained: Path, tmp_path: Path) -> None:
    meta, single, two, one = unlearn_both(trained, tmp_path, "e2urec", E2UREC)
    assert meta["schedule"]["total_steps"] == single["schedule"]["total_steps"] == meta["steps"] == single["steps"]
    assert meta["fit"]["history"][-1]["streams"] == ["forget", "retain"]
    # Two trainings (augmented model, then student) in float32 under another reduction order: the adapters agree
    # to about 1% and the answers they give to well within 0.01.
    from e2urec.checkpoint import load_model
    from e2urec.data.roles import rows_for
    from e2urec.data.store import load_prepared
    from e2urec.model.scoring import score

    prompts = rows_for(load_prepared(trained / "data")[0], "forget")["prompt"].tolist()
    p_two, p_one = (score(load_model(folder)[0], prompts) for folder in (two, one))
    assert np.abs(p_two - p_one).max() < 0.01


def _record_epochs(out: Path) -> None:
    """Run under torchrun: train two epochs on 28 prompts of varied length, plain and bucketed, and write which
    sample positions this process read in each epoch."""
    from e2urec.engine import TrainConfig, fit, make_accelerator
    from e2urec.model.backbone import load_backbone
    from e2urec.model.scoring import PromptSet, answer_logits
    from e2urec.speed import Speed

    backbone = load_backbone("tiny")
    backbone.model.requires_grad_(True)
    rng = np.random.default_rng(0)
    data = PromptSet([rng.integers(10, 1000, size=n).tolist() for n in rng.integers(3, 40, size=28)],
                     np.full(28, backbone.answer_ids[1]))

    class Record:
        def __init__(self) -> None:
            self.seen: dict[int, list[int]] = {}
            self.epoch = 0

        def streams(self, epoch: int, step: int) -> tuple[str, ...]:
            self.epoch = epoch
            return ("train",)

        def loss(self, model: torch.nn.Module, batches: dict) -> torch.Tensor:
            batch = batches["train"]
            self.seen.setdefault(self.epoch, []).extend(batch["index"].tolist())
            return F.cross_entropy(answer_logits(model, batch, backbone.kind).float(), batch["target"])

    for name, speed in (("plain", Speed()), ("bucketed", Speed(bucket=True))):
        accelerator = make_accelerator()
        record = Record()
        fit(backbone, record, {"train": data}, TrainConfig(epochs=2, batch_size=PER_PROCESS), accelerator=accelerator,
            speed=speed)
        (out / f"{name}-rank{accelerator.process_index}.json").write_text(json.dumps(record.seen))


if __name__ == "__main__":
    _record_epochs(Path(sys.argv[1]))
