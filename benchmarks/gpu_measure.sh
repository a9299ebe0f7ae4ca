#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md, on a machine with one GPU and the SmolLM2 weights and data in the cache
# (E2UREC_CACHE). Two stages, each under ten minutes:
#   speed: engine vs plain loop, evaluation speed and torch.compile, on a random model of SmolLM2-135M's shape
#          (≈ 3-4 min; speed does not depend on the weights)
#   bench: `e2urec bench --preset gpu` with the real SmolLM2-135M under a time limit, then the results file
# `all` does both in one run where the weights are already there (about 12 min);
# `summary` rebuilds the results file from whatever is there. Everything lands in $OUT:
# gpu-<date>.json (device, library versions, samples/s, MFU, per-method seconds and metrics), the benchmark
# JSONs, the bench's stage JSONs and report, logs. Copy gpu-<date>.json to benchmarks/results/ here.
set -uo pipefail
mode=${1:-all}
OUT=${OUT:-/tmp/e2/out}
E2=${E2:-/tmp/e2}
keep=$E2/results  # survives between the two calls while the machine is warm
bench_dir=$E2/bench
BENCH_LIMIT=${BENCH_LIMIT:-500}  # seconds; the call's own limit is 600
BENCH_ROWS=${BENCH_ROWS:-}  # e.g. e2urec,neggrad: the bench's --rows (default: every row)
# Overridable for a CPU smoke test (tests/test_gpu_paths.py): backbone and sizes of the speed benchmarks.
SPEED_BACKBONE=${SPEED_BACKBONE:-smollm2-shape}
TRAIN_ARGS=${TRAIN_ARGS:---batch-sizes 32,64 --steps 40 --warmup 10}
EVAL_ARGS=${EVAL_ARGS:---prompts 2590 --batch-sizes 64,256}
COMPILE=${COMPILE:-1}
py=${PYTHON:-python3}
mkdir -p "$OUT" "$keep"
log() { echo "[$(date -u +%T)] $*" | tee -a "$OUT/gpu.log"; }

speed() {
  log "speed benchmarks on $($py -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
  timeout 100 $py benchmarks/gpu_train.py --backbone "$SPEED_BACKBONE" $TRAIN_ARGS \
    > "$keep/gpu_train.json" 2> "$OUT/gpu_train.err"
  log "gpu_train exit $?"
  timeout 80 $py benchmarks/gpu_eval.py --backbone "$SPEED_BACKBONE" $EVAL_ARGS \
    > "$keep/gpu_eval.json" 2> "$OUT/gpu_eval.err"
  log "gpu_eval exit $?"
  cp "$keep"/*.json "$OUT"/ 2>/dev/null
  summarise -1
  [[ $COMPILE == 1 ]] || return 0
  # Last, as it may not finish in time: torch.compile's first steps compile the model (dynamic shapes).
  timeout 100 $py benchmarks/gpu_train.py --backbone "$SPEED_BACKBONE" --batch-sizes 64 --steps 40 --warmup 10 \
    --compile > "$keep/gpu_train_compile.json" 2> "$OUT/gpu_train_compile.err"
  log "gpu_train --compile exit $?"
  cp "$keep"/*.json "$OUT"/ 2>/dev/null
  summarise -1
}

copy_bench() {  # every finished stage's JSON and the report, without weights
  (cd "$bench_dir" 2>/dev/null && find . \( -name '*.json' -o -name '*.md' -o -name '*.csv' \) \
    -exec cp --parents {} "$OUT/bench/" \;) 2>/dev/null
}

bench() {
  mkdir -p "$OUT/bench"
  local cmd=($py -m e2urec bench --dataset ml-100k --preset gpu --out "$bench_dir" ${BENCH_ROWS:+--rows "$BENCH_ROWS"})
  if ! $py -c "import matplotlib" 2>/dev/null; then  # the report's plots need it; the stages do not
    log "matplotlib is missing: the bench's stages run without its report; gpu-<date>.json is built from them"
    cmd=($py -c "from pathlib import Path; from e2urec.bench import PRESETS, Stages, run_seed
from e2urec.bench import ROWS
rows = tuple(r for r in ROWS if r in {'original', 'retrain', *'$BENCH_ROWS'.split(',')}) if '$BENCH_ROWS' else ROWS
p = PRESETS['gpu']; run_seed(Path('$bench_dir') / 'seed-0', 'ml-100k', None, p.backbone, p, 0, Stages(print), rows)")
  fi
  log "bench --preset gpu (limit ${BENCH_LIMIT} s)"
  (while sleep 20; do copy_bench; done) & copier=$!
  started=$(date +%s)
  timeout "$BENCH_LIMIT" "${cmd[@]}" > "$OUT/bench.log" 2>&1
  status=$?
  echo $(( $(date +%s) - started )) > "$keep/bench_seconds"; echo "$status" > "$keep/bench_status"
  kill "$copier" 2>/dev/null; copy_bench
  log "bench exit $status after $(cat "$keep/bench_seconds") s"
  summarise "$status"
}

summarise() {  # gpu-<date>.json from whatever finished, with the command (settings included) and commit
  BENCH_STATUS=$1 KEEP=$keep BENCH_DIR=$bench_dir OUT=$OUT MODE=$mode SPEED_BACKBONE=$SPEED_BACKBONE \
    TRAIN_ARGS=$TRAIN_ARGS EVAL_ARGS=$EVAL_ARGS COMPILE=$COMPILE BENCH_LIMIT=$BENCH_LIMIT BENCH_ROWS=$BENCH_ROWS \
    $py - <<'PY'
import datetime, importlib.metadata as md, json, os, re, shlex
from pathlib import Path

import torch

from e2urec.bench import provenance

keep, bench, out = Path(os.environ["KEEP"]), Path(os.environ["BENCH_DIR"]), Path(os.environ["OUT"])
def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
versions = {}
for name in ("torch", "transformers", "peft", "accelerate", "numpy", "pandas"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
results = load(bench / "results.json")
rows = {}
for meta in sorted(bench.glob("seed-0/*/meta.json")):
    row = meta.parent.name
    m = load(meta) or {}
    rows[row] = {"unlearn_seconds": m.get("unlearn_seconds"), "train_seconds": m.get("train_seconds"),
                 "peak_memory_bytes": m.get("peak_memory_bytes"), "steps": m.get("steps"),
                 "test": load(bench / "seed-0/eval" / f"{row}-test/metrics.json"),
                 "forget": load(bench / "seed-0/eval" / f"{row}-forget/metrics.json")}
log = (out / "bench.log").read_text(errors="replace") if (out / "bench.log").is_file() else ""
stages = [{"stage": s.strip(), "seconds": float(t)} for s, t in re.findall(r"^(.+?): done in ([0-9.]+) s", log, re.M)]
train, evaluation, compiled = (load(keep / f"{name}.json") for name in ("gpu_train", "gpu_eval", "gpu_train_compile"))
settings = ("SPEED_BACKBONE", "TRAIN_ARGS", "EVAL_ARGS", "COMPILE", "BENCH_LIMIT", "BENCH_ROWS")
made = provenance(" ".join([*(f"{k}={shlex.quote(os.environ[k])}" for k in settings if os.environ.get(k)),
                            "bash benchmarks/gpu_measure.sh", os.environ["MODE"]]))
report = {
    "command": made["command"], "commit": made["commit"], "dirty": made["dirty"],
    "date": datetime.date.today().isoformat(),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "versions": versions,
    "bench": {"preset": "gpu", "exit_status": int(os.environ["BENCH_STATUS"]),  # -1: not run yet
              "wall_seconds": float((keep / "bench_seconds").read_text()) if (keep / "bench_seconds").is_file()
              else None,
              "config": (results or {}).get("config"), "methods": (results or {}).get("methods"),
              "rows": rows, "stages": stages},
    "train_speed": train and {k: train[k] for k in ("backbone", "tokens_per_prompt", "peak_bf16_flops", "rows")},
    "train_speed_compile": compiled and compiled["rows"],
    "eval_speed": evaluation and {k: evaluation[k] for k in ("backbone", "prompts", "rows")},
}
path = out / f"gpu-{report['date']}.json"
path.write_text(json.dumps(report, indent=2))
print(f"wrote {path}")
PY
}

case "$mode" in
  speed) speed ;;
  bench) bench ;;
  all) speed; bench ;;
  summary) summarise "$(cat "$keep/bench_status" 2>/dev/null || echo -1)" ;;  # rebuild from what is there
  *) echo "usage: $0 [speed|bench|all|summary]"; exit 2 ;;
esac
