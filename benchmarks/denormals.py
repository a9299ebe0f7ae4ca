"""Why the engine flushes subnormal floats on CPU: AdamW on an embedding matrix the size of the tiny backbone's
(49,152 × 128), where many rows get gradients early and then no more (tokens that stop appearing), as in an
Original trained on a long time-ordered protocol. Their first moments decay by 0.9 a step into subnormal range
after several hundred steps, and x86 arithmetic on subnormals is many times slower. Both settings run in one
process, one after the other, on fresh weights; seconds per window of steps and the ratios are printed as JSON.
Usage: python benchmarks/denormals.py [--steps 1250] [--window 250]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import run
from e2urec.bench import machine


def windows(flush: bool, steps: int, window: int) -> list[float]:
    torch.set_flush_denormal(flush)
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(49_152, 128, generator=gen) * 0.02)
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    rows = torch.randint(0, 3_000, (steps, 300), generator=gen)
    rows[:100] = torch.randint(0, 40_000, (100, 300), generator=gen)  # rows seen early only
    seconds, tick = [], time.perf_counter()
    for step in range(steps):
        grad = torch.zeros_like(weight)
        grad[rows[step]] = torch.randn(300, 128, generator=gen) * 1e-3
        weight.grad = grad
        optimizer.step()
        if (step + 1) % window == 0:
            seconds.append(round(time.perf_counter() - tick, 2))
            tick = time.perf_counter()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1250)
    parser.add_argument("--window", type=int, default=250)
    args = parser.parse_args()

    def go() -> dict:
        kept = windows(False, args.steps, args.window)
        flushed = windows(True, args.steps, args.window)
        return {"benchmark": "denormals", "machine": machine(), "steps": args.steps, "window": args.window,
                "seconds_per_window": {"subnormals_kept": kept, "flushed_to_zero": flushed},
                "last_over_first_window": {"subnormals_kept": round(kept[-1] / kept[0], 2),
                                           "flushed_to_zero": round(flushed[-1] / flushed[0], 2)},
                "kept_over_flushed_last_window": round(kept[-1] / flushed[-1], 2),
                "command": f"python benchmarks/denormals.py --steps {args.steps} --window {args.window}"}

    run(go)


if __name__ == "__main__":
    main()
