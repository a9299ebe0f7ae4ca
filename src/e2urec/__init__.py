"""e2urec: LLM-based recommendation that can forget (E2URec unlearning and its baselines).

The Python entry points, each what the CLI command of the same name runs (docs/cli.md):

- `prepare(PrepareConfig(...), out)`: raw data → samples and prompts (`PrepareConfig` names the dataset, slice,
  forget set, shards and planted memorisation).
- `train(data, role, backbone, out, TrainConfig(...))`: the Original (`role="original"`) or a Retrain.
- `unlearn(method, original, data, out, options)`: one unlearning method on a trained model.
- `evaluate(model, data, split, out, EvalConfig(...))`: utility, forgetting and planted-signal metrics.
- `e2urec.bench.bench(dataset, backbone, preset, out)`: the whole comparison over seeds, with its report (a
  module of its own: `import e2urec.bench` makes `e2urec.bench` that module, so it is not a name here).
- `init_run(root, data, model, options)` and `forget(root, read_request(users=[...]))`: a deployed run that takes
  deletion requests, each audited and recorded in the run's ledger.

They are imported on first use, so `import e2urec` (and the CLI's start) stays light.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "prepare": "e2urec.data.prepare", "PrepareConfig": "e2urec.data.prepare",
    "train": "e2urec.training", "TrainConfig": "e2urec.engine",
    "unlearn": "e2urec.unlearning.runner",
    "evaluate": "e2urec.evaluation", "EvalConfig": "e2urec.evaluation",
    "init_run": "e2urec.ops.run", "forget": "e2urec.ops.forget", "read_request": "e2urec.ops.request",
}
__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'e2urec' has no attribute {name!r}")
