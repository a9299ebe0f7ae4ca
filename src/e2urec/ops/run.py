"""A deployed run folder: model versions, each with the data it was trained on, and a `current` pointer.

    RUN/run.json            backbone, E2URec options for requests, evaluation settings
    RUN/versions/vNNNN/     model/ (full safetensors weights), data/ (prepared folder), version.json
    RUN/current             symlink to versions/vNNNN, replaced atomically (rename of a new symlink)
    RUN/ledger.sqlite       deletion requests (salted hashes only)
    RUN/.lock               held while a request changes the run: requests are serialised across processes

Every version is complete before `current` points at it, so a reader sees the old version or the new one.
Superseded versions are deleted after the swap: their weights and data still hold what was forgotten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from e2urec import __version__
from e2urec.checkpoint import load_model, save_model
from e2urec.data.store import load_prepared, load_tables, write_prepared
from e2urec.errors import E2URecError
from e2urec.io import atomic_dir, read_json, write_json_atomic
from e2urec.model.backbone import Backbone

RUN_FILE = "run.json"
VERSION_FILE = "version.json"
CURRENT = "current"


def full_weights(backbone: Backbone) -> Backbone:
    """Fold a LoRA adapter into its base so a version is one self-contained model (requests stack by merging)."""
    if hasattr(backbone.model, "merge_and_unload"):
        backbone.model = backbone.model.merge_and_unload()
    return backbone


class Run:
    """Paths and the invariants of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / RUN_FILE).is_file():
            raise E2URecError(f"{self.root}: not a run folder (no {RUN_FILE}); create one with `e2urec init`")
        self.config = read_json(self.root / RUN_FILE)

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def work(self) -> Path:
        return self.root / ".work"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    def current(self) -> Path:
        """The folder of the current version, resolved once (a swap later does not move what a caller holds)."""
        link = self.root / CURRENT
        if not link.is_symlink():
            raise E2URecError(f"{link}: missing; the run folder is damaged (restore it or `e2urec init` again)")
        target = link.resolve()
        if not (target / VERSION_FILE).is_file():
            raise E2URecError(f"{link} → {target}: not a complete version; the run folder is damaged")
        return target

    def set_current(self, version: Path) -> None:
        """Point `current` at `version` atomically: a new symlink renamed over the old one."""
        tmp = self.root / f".{CURRENT}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(version, self.root))
        os.replace(tmp, self.root / CURRENT)

    def next_version(self) -> Path:
        names = [p.name for p in self.versions.iterdir() if p.name.startswith("v") and p.name[1:].isdigit()]
        number = max((int(n[1:]) for n in names), default=-1) + 1
        return self.versions / f"v{number:04d}"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across threads and processes; released by the OS if the holder dies (kill -9 included)."""
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def sweep(self) -> None:
        """Delete every version but the current one, and scratch space; called with the lock held."""
        keep = self.current()
        for path in self.versions.iterdir():
            if path.resolve() != keep:
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        for stray in self.root.glob(f".{CURRENT}.*"):
            stray.unlink(missing_ok=True)


def init_run(root: Path, data: Path, model: Path, options: dict | None = None, overwrite: bool = False) -> Path:
    """Create a run from a prepared data folder and a model trained on it (the Original, version v0000)."""
    samples, manifest = load_prepared(data)
    tables = load_tables(data)
    backbone, meta = load_model(model)
    if meta.get("role") not in (None, "original", "version"):
        raise E2URecError(f"{model}: is a {meta.get('role')!r} model; a run starts from an Original (`e2urec train`)")
    trained_on = meta.get("data", {}).get("samples_sha256")
    if trained_on is not None and trained_on != manifest["samples_sha256"]:
        raise E2URecError(f"{model}: was trained on other data than {data} (samples checksum differs); pass the "
                          f"data folder the model was trained on")
    samples = samples.assign(forget=False)
    with atomic_dir(root, overwrite=overwrite) as tmp:
        version = tmp / "versions" / "v0000"
        write_prepared(version / "data", samples, tables, {**manifest, "parent_samples_sha256":
                                                            manifest["samples_sha256"]})
        save_model(full_weights(backbone), version / "model",
                   {**meta, "role": "version", "version": "v0000", "backbone": meta.get("backbone", backbone.name)})
        write_json_atomic(version / VERSION_FILE, {"version": "v0000", "request_id": None, "parent": None,
                                                   "created": time.time()})
        write_json_atomic(tmp / RUN_FILE, {"e2urec_version": __version__, "created": time.time(),
                                           "backbone": meta.get("backbone", backbone.name),
                                           "method": "e2urec", "options": options or {},
                                           "source": {"data": str(Path(data).resolve()),
                                                      "model": str(Path(model).resolve())}})
        (tmp / CURRENT).symlink_to(os.path.join("versions", "v0000"))
    return root


def model_dir(version: Path) -> Path:
    return version / "model"


def data_dir(version: Path) -> Path:
    return version / "data"


def version_meta(version: Path) -> dict:
    return read_json(version / VERSION_FILE)
