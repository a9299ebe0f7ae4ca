"""A run's ledger key and what keeps a run's deletions permanent: where a key may be created (a new 0600 file
outside every e2urec artifact) and the refusal to replace a run whose ledger holds requests.

The key makes the ledger's id hashes (HMAC-SHA256) untestable without it, so it must not travel with the folders
e2urec writes: those are copied, shared, published and replaced as wholes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from e2urec.errors import E2URecError
from e2urec.io import cache_dir, enclosing_artifact
from e2urec.ops.ledger import FINAL

RUN_FILE = "run.json"
KEY_ENV = "E2UREC_KEY_FILE"


def default_key_file(run_id: str) -> Path:
    """Where `init` puts a run's ledger key unless told otherwise: the e2urec cache, outside every run folder."""
    return cache_dir() / "keys" / f"{run_id}.key"


def check_key_file(path: Path, run_root: Path, inputs: tuple[Path, ...] = ()) -> Path:
    """Where a new key may go: a new file outside the run folder (beside the ledger it would unlock nothing) and
    outside every e2urec artifact (data, model, run, evaluation, bench folder, or any folder below one) and the
    inputs of `init`: artifacts are copied, shared, published and replaced as wholes, and the key would travel
    with them (or be deleted by an `--overwrite`). Nothing is written by this check."""
    path = Path(path).expanduser().resolve()
    if path.is_relative_to(Path(run_root).expanduser().resolve()):
        raise E2URecError(f"--key-file: {path} lies inside the run folder; the key must be kept apart from the "
                          f"ledger, or the ledger's hashes can be reversed (nothing was changed)")
    for item in inputs:
        if path.is_relative_to(Path(item).expanduser().resolve()):
            raise E2URecError(f"--key-file: {path} lies inside the input {item}; keep the key outside every e2urec "
                              f"folder, e.g. leave --key-file out (E2UREC_CACHE/keys/) (nothing was changed)")
    enclosing = enclosing_artifact(path)
    if enclosing is not None:
        raise E2URecError(f"--key-file: {path} lies inside the {enclosing[0]} folder {enclosing[1]}; artifacts are "
                          f"copied, shared and replaced as wholes, so the key must live outside every e2urec folder, "
                          f"e.g. leave --key-file out (E2UREC_CACHE/keys/) (nothing was changed)")
    if path.is_dir():
        raise E2URecError(f"--key-file: {path} is a folder; name a new file (nothing was changed)")
    if path.exists():
        raise E2URecError(f"--key-file: {path} exists already; name a new file (keys are never reused)")
    return path


RETIRE = ("A run's deletions are permanent: to retire it on purpose, stop its service, move or delete the folder "
          "by hand (knowingly: the data you would start again from still holds every user it forgot), then run "
          "`e2urec init` (docs/security.md: retiring a run)")


def check_replaceable(root: Path) -> None:
    """Refuse to replace a run whose ledger holds any request: a new run from the same data and Original would
    serve every user it forgot again, and wipe the record that they asked. A ledger that cannot be read is
    refused too (whether it holds requests is unknown). Reads only; nothing on disk changes."""
    path = Path(root) / "ledger.sqlite"
    if not path.exists() and not path.is_symlink():
        return
    try:
        db = sqlite3.connect(path, timeout=60)
        try:
            total, honoured = db.execute("SELECT COUNT(*), COALESCE(SUM(status IN (?, ?)), 0) FROM requests",
                                         FINAL).fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise E2URecError(f"{root}: its ledger cannot be read ({exc}), so it may hold honoured deletion requests; "
                              f"`init --overwrite` is refused (nothing was changed). {RETIRE}") from exc
        return
    except sqlite3.DatabaseError as exc:
        raise E2URecError(f"{root}: its ledger cannot be read ({exc}), so it may hold honoured deletion requests; "
                          f"`init --overwrite` is refused (nothing was changed). {RETIRE}") from exc
    if total:
        raise E2URecError(f"{root}: its ledger holds {total} deletion requests ({honoured} honoured); replacing it "
                          f"would bring the forgotten users back, so `init --overwrite` is refused (nothing was "
                          f"changed). {RETIRE}")


@contextlib.contextmanager
def held_if_run(root: Path) -> Iterator[None]:
    """The lock of an existing run folder while it is being replaced, so no request of it runs meanwhile."""
    lock = Path(root) / ".lock"
    if not (Path(root) / RUN_FILE).is_file() or not lock.is_file():
        yield
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def create_key(path: Path, run_root: Path, inputs: tuple[Path, ...] = ()) -> bytes:
    """A fresh 32-byte ledger key in a new file readable by its owner only (0600, never overwritten)."""
    path = check_key_file(path, run_root, inputs)
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise E2URecError(f"--key-file: {path} exists already; name a new file (keys are never reused)") from exc
    except OSError as exc:
        raise E2URecError(f"--key-file: cannot create {path} ({exc.strerror})") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    return key
