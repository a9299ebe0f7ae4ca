"""The bench's protocol sizes: how much data, how long the models train, how many seeds. Plain data, kept out of
`e2urec.bench` (which imports torch) so that `e2urec bench --preset` offers their names as its choices without
loading a model library; `e2urec.bench.PRESETS` is this same dict."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Preset:
    """A protocol size: how much data, how long the models train, how many seeds."""

    last_n: int
    seeds: tuple[int, ...]
    train: dict
    method_options: dict = field(default_factory=dict)
    mia_samples: int = 1000
    max_length: int | None = None
    backbone: str | None = None  # the preset's own backbone, used instead of bench's `backbone` argument
    eval_batch_size: int = 64
    skip_rows: tuple[str, ...] = ()  # rows left out unless asked for with `rows`
    holdout_fraction: float = 0.0  # prepare's held-out users (E2URec's non-members); 0: the paper's split
    plant: str | None = None  # prepare's planted memorisation (`--plant`); None: the paper's protocol untouched
    promotion_prompts: int = 1000  # shilling: genuine test prompts the targets' promotion is scored on, per row


PRESETS: dict[str, Preset] = {
    # ≤ 10 min on 2 CPU cores with the tiny backbone: a recent slice of ML-100K, three seeds. RecEraser is left
    # out: its learned aggregation is unstable on ~180 samples per shard (test AUC 0.46 ± 0.23 measured here).
    "demo": Preset(last_n=1200, seeds=(0, 1, 2), train={"epochs": 2, "lr": 1e-3, "batch_size": 16},
                   method_options={"e2urec-reference": {"aug_steps": 20}}, mia_samples=200,
                   skip_rows=("receraser", "retrain-reseed")),
    # Planted memorisation (issue #26): the demo slice and recipe, the forget users' train labels flipped. Every
    # epoch runs (keep=last): a clean validation set calls the epochs that learn the planted rows worse, so early
    # stopping would select against the plant. Power and what was tried: docs/planted.md. RecEraser is left out
    # as in the demo: test AUC 0.459 ± 0.230 measured here (its aggregation on ~180 samples per shard).
    "planted-flip": Preset(last_n=1200, seeds=(0, 1, 2),
                           train={"epochs": 2, "lr": 1e-3, "batch_size": 16, "keep": "last"},
                           method_options={"e2urec-reference": {"aug_steps": 20}}, mia_samples=200,
                           skip_rows=("receraser",), plant="flip"),
    # About an hour here (estimated from the demo's per-sample cost, not yet timed end to end): a larger slice,
    # three epochs (the tiny Original's valid loss is best at epoch 2-3 at this lr).
    "cpu": Preset(last_n=5_000, seeds=(0, 1, 2), train={"epochs": 3, "lr": 1e-3, "batch_size": 16},
                  method_options={"e2urec-reference": {"aug_steps": 50}}, mia_samples=500),
    # The paper's protocol in full (last 100,000 samples) and its Original recipe; meant for a GPU.
    "paper": Preset(last_n=100_000, seeds=(0, 1, 2), train={"epochs": 10, "lr": 5e-4, "batch_size": 32},
                    mia_samples=2000),
    # One GPU, ≤ 8 min end to end with evaluation: the real SmolLM2-135M (full fine-tune, the paper's batch 32),
    # one seed, every method. The slice is sized from the 2026-11-26 H200 run (Original ≈ 188 samples/s before
    # the engine's GPU features; see docs/gpu.md), not the full 100,000-sample protocol.
    "gpu": Preset(last_n=10_000, seeds=(0,), train={"epochs": 2, "lr": 1e-4, "batch_size": 32, "eval_batch_size": 256},
                  mia_samples=1000, backbone="smollm2-135m", eval_batch_size=256),
}
