"""A reproducible hostile-user probe (the kinds of checks of issue #31): bad CLI inputs and HTTP requests against a
small real workspace, each with its exit code or status, whether a traceback showed, what changed on disk, its time.

Workspace (a temporary folder, made with the real CLI): ML-100K's last 600 samples; a tiny Original (3 steps); a run
with quick options that honoured one request; an evaluation; damaged copies of the Original (NaN tensor, 4 KB
XOR-flipped at the head or middle, 4 KB of 0xFF, truncated, planted pickle) and of the run; bad input files. CLI
cases run `python -m e2urec` (HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1, timeout); HTTP cases a real `e2urec serve` on
loopback with a write and a read token. `refuse`: exit 2 (HTTP: the 4xx listed), not a byte changed in the workspace
(HTTP: the run); `ok`: exit 0 (may write its --out); `same`: exit 0, nothing changed; `either`: 0 or 2, nothing
changed. Files compare by sha256 (cached by inode, size, mtime, ctime); `__pycache__`/`.cache` are left out. Writes
the JSON, then exits 1 on any traceback, 5xx, wrong acceptance, change on disk or unexpected exit code. Usage:
python benchmarks/hostile_probe.py [--out benchmarks/results/hostile-probe-DATE.json] [--calls N] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from common import made_by

REPO = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("E2UREC_API_", "E2UREC_KEY_FILE"))},
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SKIP, UNKNOWN = {"__pycache__", ".cache"}, 987654  # caches not compared; an id in no data (never to be echoed)
HASHES: dict[str, tuple[tuple, str]] = {}


def cli(args: list[str], timeout: float = 180) -> tuple[int | None, str, float]:
    """One `python -m e2urec` process: (exit code or None on timeout, stdout+stderr, seconds)."""
    start, code = time.perf_counter(), None
    try:
        done = subprocess.run([sys.executable, "-m", "e2urec", *args], env=ENV, capture_output=True, timeout=timeout,
                              cwd=REPO)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
    return code, out.decode("utf-8", "replace"), time.perf_counter() - start


def must(command: str) -> None:
    code, out, _ = cli(shlex.split(command), timeout=900)
    if code != 0:
        sys.exit(f"setup step failed: e2urec {command}\n{out[-3000:]}")


def digest(path: Path) -> str:
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    if HASHES.get(str(path), ((),))[0] != key:
        with open(path, "rb") as f:
            HASHES[str(path)] = (key, f"{st.st_mode:o}:{hashlib.file_digest(f, 'sha256').hexdigest()}")
    return HASHES[str(path)][1]


def tree(root: Path) -> dict[str, str]:
    """Every path under root: files by mode and sha256, links by target, folders by name (caches left out)."""
    seen: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP]
        for name in dirs + files:
            path = Path(folder) / name
            seen[str(path.relative_to(root))] = ("-> " + os.readlink(path) if path.is_symlink()
                                                 else "dir" if path.is_dir() else digest(path))
    return seen


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def damage(path: Path, offset: int, fill: bytes | None) -> None:
    """4 KB at `offset`: XOR-flipped (fill None) or overwritten with `fill`."""
    data = bytearray(path.read_bytes())
    data[offset:offset + 4096] = bytes(b ^ 0xFF for b in data[offset:offset + 4096]) if fill is None else fill * 4096
    path.write_bytes(bytes(data))


def setup(ws: Path) -> dict[str, str]:
    """The workspace (see the module's docstring); returns the placeholders the cases use."""
    import pandas as pd
    from safetensors.torch import load_file, save_file

    D, M, R = ws / "data", ws / "original", ws / "run"
    must(f"prepare --dataset ml-100k --last-n 600 --out {D}")
    must(f"train --data {D} --out {M} --epochs 1 --max-steps 3")
    must(f"init --run {R} --data {D} --model {M} --key-file {ws}/run.key --set max_steps=2 --set batch_size=8 "
         "--set aug_steps=2 --set on_unverified=keep")
    samples, events = pd.read_parquet(D / "samples.parquet"), pd.read_parquet(D / "events.parquet")
    train = samples.loc[samples["split"] == "train", "user_id"].value_counts()
    gone, kept = str(train.index[-1]), str(train.index[0])
    must(f"forget --run {R} --users {gone}")
    must(f"evaluate --model {M} --data {D} --out {ws}/eval")
    row = events[events["user_id"] == int(kept)].iloc[-1]
    item, ts, weights = str(int(row["item_id"])), str(int(row["timestamp"])), M / "model.safetensors"
    size = weights.stat().st_size
    for name in ("nan", "flip-head", "flip-mid", "ff-mid", "truncated", "pickled"):
        shutil.copytree(M, ws / f"model-{name}")
    tensors = load_file(ws / "model-nan" / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.dtype.is_floating_point and v.ndim == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(ws / "model-nan" / "model.safetensors"), metadata={"format": "pt"})
    for name, offset, fill in (("flip-head", 0, None), ("flip-mid", size // 2, None), ("ff-mid", size // 2, b"\xff")):
        damage(ws / f"model-{name}" / "model.safetensors", offset, fill)
    (ws / "model-truncated" / "model.safetensors").write_bytes(weights.read_bytes()[:size // 3])
    (ws / "model-pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04\x95planted pickle.")
    shutil.copytree(R, ws / "run-damaged", symlinks=True)
    damage(ws / "run-damaged" / "current" / "model" / "model.safetensors", size // 2, None)
    csv = "user_id,item_id,rating,timestamp\n" + "".join(f"{u},{i},4,{880000000 + 60 * (u * 7 + i)}\n"
                                                          for u in range(1, 9) for i in range(1, 13))
    files = {
        "utf16.txt": f"{gone}\n".encode("utf-16"), "latin1.txt": "42,caf\xe9\n".encode("latin-1"),
        "binary.bin": bytes(range(256)), "nul.txt": b"42\x00\n", "bom-gone.txt": f"\ufeff{gone}\n".encode(),
        "bom-unknown.txt": f"\ufeff{UNKNOWN}\n".encode(), "empty.txt": b"",
        "ts-decimal.csv": f"user_id,item_id,timestamp\n{kept},{item},{ts}.5\n".encode(),
        "ts-text.csv": f"user_id,item_id,timestamp\n{kept},{item},yesterday\n".encode(),
        "ts-exp.csv": f"user_id,item_id,timestamp\n{kept},{item},8.8e8\n".encode(),
        "ts-bom.csv": f"\ufeffuser_id,item_id,timestamp\n{UNKNOWN},{item},{ts}\n".encode(),
        "cols.csv": f"user,item\n{kept},{item}\n".encode(), "header-only.csv": b"user_id,item_id\n",
        "unknown.csv": f"user_id,item_id\n{kept},{UNKNOWN}\n".encode(),
        "utf16.csv": f"user_id,item_id\n{kept},{item}\n".encode("utf-16"),
        "ratings-ts-decimal.csv": csv.replace(",4,88", ",4,8.8", 1).encode(),
        "ratings-ts-text.csv": csv.replace(",4,88", ",4,noon88", 1).encode(), "plainfile": b"not a folder\n",
        "foreign/notes.txt": b"someone else's files\n",  # a non-empty folder e2urec did not write
    }
    (ws / "folder").mkdir(), (ws / "foreign").mkdir()
    for name, data in files.items():
        (ws / name).write_bytes(data)
    return {"W": str(ws), "D": str(D), "M": str(M), "R": str(R), "E": str(ws / "eval"), "G": gone, "K": kept,
            "I": item, "T": ts, "U": str(UNKNOWN)}


UL = "unlearn --method e2urec --model {M} --data {D} --out {N}"
INIT, TR, EV, FG = ("init --run {N} --data {D} --model {M}", "train --data {D} --out {N}",
                    "evaluate --model {M} --data {D} --out {N}", "forget --run {R}")
PREP, SRV = "prepare --dataset ml-100k --out {N}", "serve --run {R} --port 18765"


def each(template: str, needle: str, *values: str) -> list[tuple[str, str, str]]:
    """A refusal per value, `{v}` in the template replaced by it; a needle `{v}` is the option the value names."""
    return [(template.replace("{v}", v), "refuse", needle if needle != "{v}" else v.split("=")[0] if "=" in v else
             ([w for w in v.split() if w.startswith("--")] or [v])[-1]) for v in values]


CLI_CASES: list[tuple[str, str, str]] = [  # (argv template, expectation, text the output should hold)
    # `none` for options that have no unset value; booleans that are not booleans
    *each(f"{UL} --set {{v}}=none", "{v}", "epochs", "lr", "batch_size", "lora_r", "profile", "alpha_rule", "alpha",
          "retain_ce", "seed"),
    ("unlearn --method neggrad --model {M} --data {D} --out {N} --set gamma=none", "refuse", "gamma"),
    *each(f"{INIT} --key-file {{W}}/k-none.key --set {{v}}=none", "{v}", "on_unverified", "audit_tolerance",
          "epochs", "alpha", "audit_retries"),
    *each(f"{UL} --set retain_ce={{v}}", "retain_ce", "maybe", "2", "TRUE!"),
    *each(f"{INIT} --key-file {{W}}/k-bool.key --set retain_ce={{v}}", "retain_ce", "maybe", "nope"),
    # numbers: upper bounds, non-finite, not numbers, and a learning rate that diverges
    *each(f"{PREP} {{v}}", "{v}", "--history 99999999999", "--last-n 99999999999999", "--shards 99999999",
          "--forget-fraction 0"),
    *each(f"{TR} {{v}}", "{v}", "--batch-size 99999999999999999999", "--lora --lora-r 99999999999",
          "--lora --lora-r 4097", "--epochs 99999999999", "--max-steps 9999999999999", "--lr 1e309", "--lr abc",
          "--epochs 1.5"),
    *each(f"{UL} --set {{v}}", "{v}", "lora_r=99999999999", "batch_size=99999999999999999999", "alpha=1e400",
          "lr=-1", "profile=bogus"),
    (f"{UL} --seed 4294967296", "refuse", "--seed"), (f"{TR} --lr 1000 --epochs 1", "refuse", "diverged"),
    *each(f"{INIT} --key-file {{W}}/k-set.key --set {{v}}", "{v}", "lora_r=99999999999", "audit_tolerance=0.5",
          "audit_samples=99999999999", "on_unverified=bogus"),
    *each(f"{EV} {{v}}", "{v}", "--mia-samples 99999999999", "--batch-size -5"),
    # unknown choices
    (f"{TR} --role bogus", "refuse", "bogus"), (f"{EV} --split bogus", "refuse", "bogus"),
    ("bench --out {N} --preset bogus", "refuse", "bogus"), ("prepare --dataset bogus --out {N}", "refuse", "bogus"),
    ("unlearn --method bogus --model {M} --data {D} --out {N}", "refuse", "unknown method"),
    (f"{TR} --backbone no-such-backbone", "refuse", "no-such-backbone"),
    # init: a run with honoured requests is never replaced; the key never goes inside an e2urec folder
    ("init --run {R} --data {D} --model {M} --overwrite --key-file {W}/k-ow.key", "refuse", "deletion requests"),
    ("init --run {R} --data {D} --model {M} --overwrite", "refuse", "deletion requests"),
    *each(f"{INIT} --key-file {{v}}", "--key-file", "{D}/ledger.key", "{M}/ledger.key", "{E}/ledger.key",
          "{R}/versions/ledger.key", "{W}/run.key", "{W}/folder"),
    # ids and id files (missing, UTF-16, latin-1, binary, NUL, a folder, empty, a BOM)
    *each(f"{FG} --users {{v}}", "", "{U}", "1e2", "99999999999999999999999", "' , ,'", "@{W}/missing.txt",
          "@{W}/utf16.txt", "@{W}/latin1.txt", "@{W}/binary.bin", "@{W}/nul.txt", "@{W}/folder", "@{W}/empty.txt",
          "@{W}/bom-unknown.txt"),
    (f"{FG} --users @{{W}}/bom-gone.txt", "either", ""),
    # interaction files: non-integer timestamps, a BOM, wrong columns, no rows, unknown ids, UTF-16, missing
    *each(f"{FG} --interactions {{W}}/{{v}}", "", "ts-decimal.csv", "ts-text.csv", "ts-exp.csv", "ts-bom.csv",
          "cols.csv", "header-only.csv", "unknown.csv", "utf16.csv", "missing.csv"),
    (f"{FG} --users {{G}} --interactions {{W}}/unknown.csv", "refuse", "exactly one"), (f"{FG}", "refuse", "one"),
    ("forget --run {D} --users {G}", "refuse", "not a run"), ("forget --run {W}/run-damaged --users {K}", "refuse", ""),
    *each("prepare --dataset csv --out {N} --data-dir {W}/{v}", "", "ratings-ts-text.csv", "utf16.csv", "binary.bin",
          "folder"),
    (f"{PREP} --last-n 600 --forget-interactions {{W}}/ts-decimal.csv", "refuse", ""),
    # the service's own options
    *each(f"{SRV} {{v}}", "", "--token-file {W}/utf16.txt", "--token-file {W}/latin1.txt", "--host 0.0.0.0",
          "--port 65536"),
    ("serve --run {D}", "refuse", "not a run"), ("ledger --run {D}", "refuse", "not a run"),
    # damaged models: NaN tensor, 4 KB of 0xFF, 4 KB flipped in the header, truncated, a planted pickle
    *each("evaluate --model {W}/model-{v} --data {D} --out {N}", "", "nan", "ff-mid", "flip-head", "truncated",
          "pickled"),
    ("evaluate --model {W}/model-flip-mid --data {D} --out {N}", "refuse", ""),  # finite garbage, a damaged file
    # wrong kinds of --out: an input, inside one, another kind of artifact, a run, a file, unwritable, foreign
    *each("train --data {D} --out {v}", "--out", "{D}", "{D}/original", "{M}", "{R} --overwrite",
          "{R}/current/model --overwrite", "{W}/plainfile"),
    *each("evaluate --model {M} --data {D} --out {v}", "--out", "{M} --overwrite", "{E}", "/proc/e2urec-probe",
          "{W}/plainfile/eval"),
    *each("unlearn --method e2urec --model {M} --data {D} --out {v} --overwrite", "--out", "{M}", "{R}/versions"),
    *each("prepare --dataset ml-100k --out {v}", "--out", "{E} --overwrite", "{W}/foreign"),
    *each("init --data {D} --model {M} --run {v}", "--run", "{D} --overwrite", "{M}/run"),
    *each("bench --out {v}", "--out", "{R}", "{D}/bench"),
    # valid controls
    ("methods", "same", "e2urec"), ("ledger --run {R}", "same", "done"), ("ledger --run {R} --exact", "same", "done"),
    (f"{FG} --users {{G}}", "same", "nothing to do"), (f"{EV} --split test", "ok", "metrics"),
    (f"{TR} --epochs 1 --max-steps 1 --lr 0.0005", "ok", "original"), (f"{PREP} --last-n 600", "ok", "prepared"),
    ("prepare --dataset csv --out {N} --data-dir {W}/ratings-ts-decimal.csv", "ok", "prepared"),  # 8.8 s: floored
    (f"{INIT} --key-file {{W}}/k-ok.key --set on_unverified=keep --set retain_ce=no", "ok", "run ready"),
]


def run_cli(ph: dict[str, str], root: Path) -> list[dict]:
    rows, ws = [], Path(ph["W"])
    for index, (template, expect, needle) in enumerate(CLI_CASES):
        before = tree(ws)
        code, out, seconds = cli(shlex.split(template.format(**ph, N=f"{ph['W']}/new-{index:03d}")))
        changed = [c for c in changes(before, tree(ws)) if expect != "ok" or not c.startswith((f"new-{index:03d}",
                                                                                                "k-ok.key"))]
        allowed = {"refuse": {2}, "ok": {0}, "same": {0}, "either": {0, 2}}[expect]
        rows.append(record({"kind": "cli", "case": template, "expect": expect, "exit_code": code, "changed": changed,
                            "seconds": round(seconds, 2), "message_ok": needle.lower() in out.lower()},
                           code, allowed, expect == "refuse", out, root))
        print(f"[{index + 1}/{len(CLI_CASES)}] {rows[-1]['result']:<16} {code} {seconds:5.1f}s  {template}")
    return rows


def record(row: dict, code: int | None, allowed: set[int], refusal: bool, out: str, root: Path) -> dict:
    """The row with its result: traceback-or-5xx > wrongly-accepted > changed-on-disk > unexpected-code > ok."""
    row.update(refusal=refusal, traceback="Traceback" in out, id_echoed=str(UNKNOWN) in out,
               output_tail=" ".join(out.replace(str(root), "$TMP").split())[-300:])
    accepted = code == 0 or (code is not None and 200 <= code < 300)
    row["result"] = ("traceback-or-5xx" if row["traceback"] or (code or 0) >= 500 else
                     "wrongly-accepted" if refusal and accepted else "changed-on-disk" if row["changed"] else
                     "unexpected-code" if code not in allowed else "ok")
    return row


def http_cases(ph: dict[str, str]) -> list[tuple]:
    """(auth, request, body, allowed statuses): auth w(rite), r(ead), - (none) or a wrong kind; a dict or list body
    is sent as JSON, (bytes, content type) as is."""
    k, g, i, t, u = (int(ph[x]) for x in ("K", "G", "I", "T", "U"))
    pair, forget, js = {"user_id": k, "item_id": i}, {"user_ids": [k]}, "application/json"
    F, S, J = "POST /forget", "POST /score", "GET /jobs/{job}"
    return [
        ("-", "GET /health", None, {200}), ("w", S, pair, {200}), ("r", S, {"pairs": [pair, pair]}, {200}),
        ("r", J, None, {200}), ("w", F, {"user_ids": [g]}, {200}),  # g: forgotten already (no-op)
        # authentication: none, wrong, no scheme, Basic, empty, in the query, read token, foreign Host
        ("-", F, forget, {401}), ("bad", F, forget, {401}), ("raw", F, forget, {401}), ("basic", F, forget, {401}),
        ("empty", F, forget, {401}), ("-", F + "?access_token={write}", forget, {401}), ("r", F, forget, {403}),
        ("evil", F, forget, {400}), ("-", S, pair, {401}), ("bad", S, pair, {401}), ("-", J, None, {401}),
        ("-", "GET /openapi.json", None, {401}), ("bad", J, None, {401}),
        # /forget bodies: both kinds, string ids and timestamps, decimal timestamp, empty, extra field, unknown id
        ("w", F, {"user_ids": [k], "interactions": [pair]}, {422}), ("w", F, {"user_ids": [str(k)]}, {422}),
        ("w", F, {"interactions": [{"user_id": str(k), "item_id": i}]}, {422}),
        ("w", F, {"interactions": [{**pair, "timestamp": str(t)}]}, {422}),
        ("w", F, {"interactions": [{**pair, "timestamp": t + 0.5}]}, {422}), ("w", F, {}, {422}),
        ("w", F, {"user_ids": []}, {422}), ("w", F, {"user_ids": [k], "why": "x"}, {422}),
        ("w", F, {"user_ids": [u]}, {404}), ("w", F, {"user_ids": [1e2]}, {422}),
        # /score bodies: malformed, form, UTF-16, latin-1, ids not integers, missing or extra fields, too many, too big
        ("w", S, (b'{"user_id": 1,', js), {422}), ("w", S, (json.dumps(pair).encode("utf-16"), js), {422}),
        ("w", S, (b"user_id=1&item_id=2", "application/x-www-form-urlencoded"), {422}),
        ("w", S, ('{"user_id": "\xe9", "item_id": 2}'.encode("latin-1"), js), {422}),
        ("w", S, {"user_id": "1e2", "item_id": i}, {422}), ("w", S, {"user_id": 1.5, "item_id": i}, {422}),
        ("w", S, {"user_id": True, "item_id": i}, {422}), ("w", S, {"user_id": k}, {422}),
        ("w", S, {**pair, "x": 1}, {422}), ("w", S, {"pairs": []}, {422}), ("w", S, [pair], {422}),
        ("w", S, {"pairs": [pair] * 51}, {413}), ("w", S, (b'{"user_id": 1' + b" " * 1_100_000 + b"}", js), {413}),
        ("w", S, {"user_id": u, "item_id": i}, {404}), ("w", S, {"user_id": 10**40, "item_id": i}, {404}),
        ("w", "GET /jobs/no-such-job", None, {404}), ("w", "PUT /score", pair, {405}),
        ("w", "DELETE /forget", None, {405}),
    ]


def run_http(ph: dict[str, str], aux: Path, root: Path, calls: int) -> tuple[list[dict], dict]:
    """The HTTP cases against a real `e2urec serve` (write and read tokens, --max-pairs 50), then `calls`
    concurrent valid /score calls; returns the rows and what the server logged meanwhile."""
    run, log, rows = Path(ph["R"]), aux / "serve.log", []
    write, read = hashlib.sha256(b"probe-write").hexdigest(), hashlib.sha256(b"probe-read").hexdigest()
    (aux / "write.token").write_text(write + "\n"), (aux / "read.token").write_text(read + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "e2urec", "serve", "--run", str(run), "--port", str(port),
                                 "--token-file", str(aux / "write.token"), "--read-token-file",
                                 str(aux / "read.token"), "--max-pairs", "50"], stdout=sink, stderr=subprocess.STDOUT,
                                env=ENV, cwd=REPO)
    auth = {"w": f"Bearer {write}", "r": f"Bearer {read}", "bad": "Bearer wrong-token-0123456789abcdef",
            "raw": write, "basic": "Basic " + write, "empty": "Bearer", "evil": f"Bearer {write}"}
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("serve did not start:\n" + log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=60) as client:
            job = client.get("/health").json()["honours"][-1]
            for who, request, body, allowed in http_cases(ph):
                method, path = request.split(" ")
                headers = {"Authorization": auth[who]} if who in auth else {}
                headers.update({"Host": "evil.example"} if who == "evil" else {})
                headers.update({"content-type": body[1]} if isinstance(body, tuple) else {})
                kwargs = {"content": body[0]} if isinstance(body, tuple) else {} if body is None else {"json": body}
                before, mark, start = tree(run), log.stat().st_size, time.perf_counter()
                response = client.request(method, path.format(job=job, write=write), headers=headers, **kwargs)
                seconds, logged = time.perf_counter() - start, b"Traceback" in log.read_bytes()[mark:]
                raw = f"{body[0][:40]!r}... as {body[1]}" if isinstance(body, tuple) else body
                shown = "" if body is None else json.dumps(raw)[:100]
                name = f"{request.replace('{write}', 'WRITE-TOKEN')} auth={who} {shown}"
                rows.append(record({"kind": "http", "case": name.strip(), "expect": sorted(allowed), "status":
                                    response.status_code, "seconds": round(seconds, 3), "changed":
                                    changes(before, tree(run))}, response.status_code, allowed, min(allowed) >= 400,
                                   response.text + "Traceback" * logged, root))
                print(f"[http] {rows[-1]['result']:<16} {response.status_code}  {name}", flush=True)
            pair, before, mark, start = {"user_id": int(ph["K"]), "item_id": int(ph["I"])}, tree(run), \
                log.stat().st_size, time.perf_counter()  # concurrent valid /score calls
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: client.post("/score", json=pair, headers={
                    "Authorization": auth["w"]}).status_code, range(calls)))
            bad, seconds = [c for c in codes if c != 200] or [200], round(time.perf_counter() - start, 2)
            rows.append(record({"kind": "http", "case": f"{calls} concurrent valid /score calls (8 threads)",
                                "expect": [200], "status": bad[0], "non_200": len(codes) - codes.count(200),
                                "changed": changes(before, tree(run)), "seconds": seconds},
                               bad[0], {200}, False, "Traceback" * (b"Traceback" in log.read_bytes()[mark:]), root))
    finally:
        proc.terminate()  # the one process this probe started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    served = log.read_text(errors="replace")
    return rows, {"traceback": "Traceback" in served, "lines": len(served.splitlines()),
                  "status_5xx_lines": sum('HTTP/1.1" 5' in line for line in served.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path,
                        default=REPO / f"benchmarks/results/hostile-probe-{datetime.date.today().isoformat()}.json")
    parser.add_argument("--calls", type=int, default=5000, help="concurrent valid /score calls")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace (its path is printed)")
    args = parser.parse_args()
    made = made_by()  # command, commit and dirty flag, as the probe starts
    root, started = Path(tempfile.mkdtemp(prefix="hostile-probe-")), time.perf_counter()
    try:
        (root / "ws").mkdir(), (root / "aux").mkdir()
        ph = setup(root / "ws")
        setup_seconds = time.perf_counter() - started
        print(f"workspace ready in {setup_seconds:.0f} s: {root}", flush=True)
        rows = run_cli(ph, root)
        http_rows, server = run_http(ph, root / "aux", root, args.calls)
        rows += http_rows
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    cli_rows = [r for r in rows if r["kind"] == "cli"]
    summary = {"cases": len(rows), "cli_cases": len(cli_rows), "http_cases": len(rows) - len(cli_rows),
        "refusal_cases": sum(r["refusal"] for r in rows), "tracebacks": sum(r["traceback"] for r in rows),
        "wrongly_accepted": sum(r["result"] == "wrongly-accepted" for r in rows),
        "refused_with_a_change_on_disk": sum(bool(r["refusal"] and r["changed"]) for r in rows),
        "controls_with_an_unexpected_change": sum(bool(not r["refusal"] and r["changed"]) for r in rows),
        "unexpected_code": sum(r["result"] == "unexpected-code" for r in rows), "server_log": server,
        "http_5xx": sum(isinstance(r.get("status"), int) and r["status"] >= 500 for r in rows),
        "messages_without_the_expected_text": [r["case"] for r in cli_rows if not r["message_ok"]],
        "unknown_id_echoed": [r["case"] for r in rows if r["id_echoed"]],
        "failures": [{k: r.get(k) for k in ("kind", "case", "result", "exit_code", "status", "changed", "output_tail")}
                     for r in rows if r["result"] != "ok"]}
    report = {**made, "date": datetime.date.today().isoformat(), "python": sys.version.split()[0],
              "setup_seconds": round(setup_seconds, 1), "seconds": round(time.perf_counter() - started, 1),
              "summary": summary, "rows": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
    print(*("FAIL " + json.dumps(failure) for failure in summary["failures"]), sep="\n")
    sys.exit(1 if summary["failures"] or server["traceback"] or server["status_5xx_lines"] else 0)


if __name__ == "__main__":
    main()
