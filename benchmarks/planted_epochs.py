"""Per-epoch probe for choosing a planted preset's slice and recipe: trains the Original, Retrain and their reseeds
(seed + 1000) on planted data, every epoch kept (keep=last), and after each epoch prints one JSON line: the valid
loss and, for flip data, forget AUC against the planted labels and test AUC; for shilling data, the targets'
promotion (HR@10, mean rank, z over 200 genuine test prompts and 20 controls). A study script: it wraps the
validation-loss hook of `e2urec.training` to score after every epoch. A first line `RUN {...}` gives the command and
commit, for the JSON the lines are kept in. Usage:
python benchmarks/planted_epochs.py OUT PLANT LAST_N EPOCHS SEEDS     e.g.  /tmp/p flip 1200 6 0,1,2
(benchmarks/results/planted-epochs-2026-12-07.json holds the runs docs/planted.md cites.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

import e2urec.training as training
from common import made_by
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import role_rows, rows_for
from e2urec.data.store import load_prepared, load_tables
from e2urec.engine import TrainConfig, make_accelerator
from e2urec.evaluation.planted import is_shilling, promotion
from e2urec.model.scoring import per_sample_p_yes, prompt_set

STATE: dict = {}
plain_valid_loss = training.valid_loss_fn


def scored_valid_loss(backbone, data, batch_size):
    """The engine's valid loss, plus the planted metrics printed after every epoch."""
    base = plain_valid_loss(backbone, data, batch_size)
    sets = {name: (prompt_set(backbone, rows), rows) for name, rows in STATE["rows"].items()}

    def compute(model, accelerator) -> float:
        loss = base(model, accelerator)
        model.eval()
        STATE["epoch"] += 1
        record = {**STATE["tag"], "epoch": STATE["epoch"], "valid_loss": round(loss, 4)}
        if STATE["shilling"]:
            found, _ = promotion(backbone, STATE["samples"], STATE["tables"], STATE["manifest"], prompts=200,
                                 controls=20, seed=STATE["seed"])
            record.update(hr10=found["promotion_hr10"], rank=found["promotion_rank"], z=found["promotion_z"])
        else:
            for name, (data_set, rows) in sets.items():
                record[name] = roc_auc_score(rows["label"], per_sample_p_yes(backbone, data_set, 64, accelerator))
        model.train()
        print("EPOCH", json.dumps(record), flush=True)
        return loss

    return compute


def main() -> None:
    out, plant, last_n, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print("RUN", json.dumps(made_by()), flush=True)
    training.valid_loss_fn = scored_valid_loss
    for seed in (int(s) for s in sys.argv[5].split(",")):
        data = out / f"data-{last_n}-{seed}"
        if not (data / "manifest.json").exists():
            prepare(PrepareConfig(dataset="ml-100k", last_n=last_n, seed=seed, plant=plant), data, overwrite=True)
        samples, manifest = load_prepared(data)
        STATE.update(samples=samples, manifest=manifest, tables=load_tables(data), seed=seed,
                     shilling=is_shilling(manifest),
                     rows={"forget": rows_for(samples, "forget"), "test": rows_for(samples, "test")})
        for role, model_seed in (("original", seed), ("retrain", seed), ("original", seed + 1000),
                                 ("retrain", seed + 1000)):
            STATE.update(tag={"seed": seed, "role": role, "model_seed": model_seed}, epoch=0)
            rows, prompts = role_rows(samples, role)
            recipe = TrainConfig(epochs=epochs, lr=1e-3, batch_size=16, seed=model_seed, keep="last")
            training.fit_rows(samples, manifest, rows, "tiny", recipe, make_accelerator(), None, prompts, desc=role)


if __name__ == "__main__":
    main()
