"""Load test of `e2urec serve` over loopback: N concurrent clients post /score for a bounded time.

The service runs as its own process (`python -m e2urec serve`, as deployed), so clients and server do not share
an interpreter lock. Two phases of `--seconds` each: one pair per request, then `--batch` pairs per request.
Each client holds one keep-alive connection and sends its next request as soon as the last one is answered.
Reports per phase p50/p95/p99 latency (ms), requests/s, pairs/s and errors; without `--run` a tiny run is built
first (tiny backbone, last 300 ML-100K samples).

Prints one JSON object. Usage: python benchmarks/serve_load.py [--run RUN] [--clients 8] [--seconds 10] [--batch 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import run as run_benchmark
from e2urec.bench import machine
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.store import load_tables
from e2urec.engine import TrainConfig
from e2urec.ops.run import Run, init_run
from e2urec.training import train


def build_run(root: Path) -> Path:
    """The same tiny run the service tests use: enough to load and score, built in about 20 s on a CPU."""
    prepare(PrepareConfig("ml-100k", last_n=300), root / "data")
    train(root / "data", "original", "tiny", root / "original",
          TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3))
    return init_run(root / "run", root / "data", root / "original")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: Path, port: int, max_pairs: int, log: Path) -> subprocess.Popen:
    """`e2urec serve` in a child process logging to `log` (an access line per request would flood stderr);
    returns once /health answers."""
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "e2urec", "serve", "--run", str(run), "--port", str(port),
                                   "--max-pairs", str(max_pairs)], stdout=out, stderr=out,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"e2urec serve exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("e2urec serve did not answer /health within 120 s")


def client(port: int, bodies: list[bytes], deadline: float, latencies: list[float], errors: list[str]) -> None:
    """Post bodies in turn on one keep-alive connection until `deadline`; record each answered request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            conn.request("POST", "/score", bodies[i % len(bodies)], {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
            else:
                latencies.append(time.perf_counter() - started)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i += 1
    conn.close()


def phase(port: int, users: list, items: list, per_request: int, clients: int, seconds: float, seed: int) -> dict:
    """`clients` threads for `seconds`, each request carrying `per_request` random (known user, item) pairs."""
    rng = np.random.default_rng(seed)
    bodies = [[json.dumps({"pairs": [{"user_id": users[rng.integers(len(users))],
                                      "item_id": items[rng.integers(len(items))]} for _ in range(per_request)]}
                          ).encode() for _ in range(64)] for _ in range(clients)]
    client(port, bodies[0][:2], time.perf_counter() + 0.5, [], [])  # warm-up (first-call allocations)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(port, bodies[c], started + seconds, latencies[c], errors[c]))
               for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array([v for part in latencies for v in part]) * 1000
    failures = [e for part in errors for e in part]
    return {"pairs_per_request": per_request, "clients": clients, "seconds": round(wall, 2),
            "requests": int(len(ms)), "errors": len(failures), "error_kinds": sorted(set(failures)),
            "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)} if len(ms) else None,
            "requests_per_second": round(len(ms) / wall, 2), "pairs_per_second": round(len(ms) * per_request / wall, 2)}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="a run folder (`e2urec init`); default: build a tiny one")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--batch", type=int, default=16, help="pairs per request in the batch phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build_run(Path(tmp))
        tables = load_tables(Run(run).current() / "data")
        users = tables["events"]["user_id"].unique().tolist()
        items = tables["items"]["item_id"].unique().tolist()
        port = free_port()
        server = start_server(run, port, max(args.batch, 1), Path(tmp) / "server.log")
        try:
            phases = [phase(port, users, items, n, args.clients, args.seconds, seed)
                      for seed, n in enumerate((1, args.batch))]
        finally:
            server.terminate()
            server.wait(timeout=60)
    return {"machine": machine(), "run": str(args.run or "tiny run built for this benchmark"),
            "server": "e2urec serve (uvicorn, one process), loopback", "phases": phases}


if __name__ == "__main__":
    run_benchmark(main)
