"""A deployed run folder: model versions, each with the data it was trained on, and a `current` pointer.

    RUN/run.json            backbone, E2URec options for requests, forgetting-audit and escalation settings
    RUN/versions/vNNNN/     model/ (full safetensors weights), data/ (prepared folder), version.json,
                            reference.parquet (the last exact model's P(yes) on valid rows: the drift check)
    RUN/current             symlink to versions/vNNNN, replaced atomically (rename of a new symlink)
    RUN/ledger.sqlite       deletion requests (HMAC-SHA256 of the ids under a key kept outside RUN)
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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from e2urec import __version__
from e2urec.checkpoint import load_model, save_model
from e2urec.data.store import load_prepared, load_tables, write_prepared
from e2urec.errors import E2URecError
from e2urec.io import atomic_dir, read_json, sha256_file, write_json_atomic
from e2urec.model.lora import full_weights
from e2urec.ops.audit import AuditConfig, reference_rows, reference_scores
from e2urec.ops.escalation import escalation_plan
from e2urec.ops.keys import KEY_ENV, check_key_file, check_replaceable, create_key, default_key_file, held_if_run
from e2urec.ops.ledger import Ledger, key_id, settled
from e2urec.options import check_lora_rank
from e2urec.scratch import Owner, claim, read_owner, sweep
from e2urec.scratch import log as scratch_log
from e2urec.unlearning.base import REGISTRY

RUN_FILE = "run.json"
VERSION_FILE = "version.json"
REFERENCE_FILE = "reference.parquet"
CURRENT = "current"


def model_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file of a model folder, recorded in version.json and checked whenever a version loads."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


class Run:
    """Paths and the invariants of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / RUN_FILE).is_file():
            raise E2URecError(f"{self.root}: not a run folder (no {RUN_FILE}); create one with `e2urec init`")
        self.config = read_json(self.root / RUN_FILE)
        if not isinstance(self.config, dict):
            raise E2URecError(f"{self.root / RUN_FILE}: damaged (not a JSON object); restore it or `e2urec init` "
                              f"again")

    def key_file(self) -> Path:
        """The ledger key: $E2UREC_KEY_FILE, else the file `init` recorded, else the default place for this run."""
        if os.environ.get(KEY_ENV):
            return Path(os.environ[KEY_ENV]).expanduser()
        recorded = self.config.get("ledger_key") or {}
        if recorded.get("file"):
            return Path(recorded["file"])
        if not self.config.get("run_id"):
            raise E2URecError(f"{self.root}: made by an older e2urec without a ledger key; create it again with "
                              f"`e2urec init`")
        return default_key_file(self.config["run_id"])

    def key(self) -> bytes:
        path = self.key_file()
        try:
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
        except FileNotFoundError as exc:
            raise E2URecError(f"{self.root}: its ledger key file is missing (looked at {KEY_ENV} and where "
                              f"`e2urec init` wrote it); restore it from a backup, or set {KEY_ENV}") from exc
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise E2URecError(f"{self.root}: its ledger key file is unreadable or damaged; restore it from a "
                              f"backup") from exc
        expected = (self.config.get("ledger_key") or {}).get("id")
        if expected and key_id(key) != expected:
            raise E2URecError(f"{self.root}: the ledger key file is not this run's (key id {expected} expected); "
                              f"point {KEY_ENV} at the right one")
        return key

    def ledger(self, keyed: bool = True) -> Ledger:
        """The run's ledger; `keyed=False` opens it for reading records only (no ids can be hashed)."""
        return Ledger(self.ledger_path, self.key() if keyed else None)

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

    @contextlib.contextmanager
    def try_lock(self) -> Iterator[bool]:
        """The lock if nobody holds it (yields True), else yields False at once: a starting service must not wait
        for a long request of another process, whose end sweeps anyway."""
        with open(self.root / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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

    def sweep(self) -> int:
        """Delete every version but the current one, and scratch space; called with the lock held, so no other
        request is running and every scratch folder is this process's or a stopped one's (those are counted and
        reported on stderr, without ids). Scratch whose owner still runs (on another host, where the lock may not
        reach) is left alone. Returns how many orphaned scratch folders were removed."""
        keep = self.current()
        for path in self.versions.iterdir():
            if path.resolve() != keep:
                shutil.rmtree(path, ignore_errors=True)
        orphans = 0
        for folder in sorted(self.work.iterdir()) if self.work.is_dir() else []:
            owner = Owner.parse(read_owner(folder).get("owner"))
            if owner is not None and (owner.is_me() or owner.alive()):
                if owner.is_me():
                    sweep(folder, None)
                continue
            sweep(folder, None)
            orphans += 1
        if orphans:
            scratch_log.warning("e2urec: removed %d scratch folder(s) of an interrupted deletion request, left by a "
                                "stopped process, from %s", orphans, self.work)
        with contextlib.suppress(OSError):
            self.work.rmdir()  # gone when empty; kept while a live owner's scratch is in it
        for stray in self.root.glob(f".{CURRENT}.*"):
            stray.unlink(missing_ok=True)
        return orphans

    def scratch(self, request_id: str) -> Path:
        """A fresh scratch folder for one request (`.work/<request id>`), owned by this process from the start, so
        a later `forget` or service start can tell it from live scratch and sweep it if this process dies."""
        folder = self.work / request_id
        sweep(folder, None)
        return claim(folder, "forget")

    def settle(self, record: dict | None) -> dict | None:
        """A ledger record as recovery will leave it, without writing: a request whose version is current is
        finished (the process died after the swap), one whose process died otherwise is `failed`."""
        if record is None or record["status"] not in ("queued", "running"):
            return record
        with contextlib.suppress(E2URecError, OSError):
            meta = version_meta(self.current())
            if meta.get("request_id") == record["request_id"]:
                return {**record, "status": meta.get("status", "done"), "version": meta["version"],
                        "metrics": meta.get("metrics"), "row_counts": meta.get("counts")}
        return settled(record)

    def records(self) -> list[dict]:
        """Every ledger record as it really stands (`settle`); needs no key, writes nothing."""
        return [self.settle(r) for r in self.ledger(keyed=False).requests()]


def request_config(options: dict, audit: AuditConfig) -> Any:
    """The E2URec config of the run's requests, and a check that every attempt a failed audit may escalate to
    (`audit_retries` stronger attempts, then Retrain) is valid too: a request must not be refused midway."""
    config = REGISTRY["e2urec"].Config.from_options(options)
    for attempt, (name, tried) in enumerate(escalation_plan("e2urec", options, audit), start=2):
        try:
            REGISTRY[name].Config.from_options(tried)
        except E2URecError as exc:
            raise E2URecError(f"init --set: attempt {attempt} after a failed audit (on_unverified="
                              f"{audit.on_unverified}, audit_retries={audit.audit_retries}) would be refused: {exc}; "
                              f"lower that option or audit_retries") from None
    return config


def init_run(root: Path, data: Path, model: Path, options: dict | None = None, overwrite: bool = False,
             key_file: Path | None = None, audit: dict | None = None) -> Path:
    """Create a run from a prepared data folder and a model trained on it (the Original, version v0000), and its
    ledger key (default: `default_key_file`, outside the run folder). `options` are the E2URec options of its
    requests, `audit` the forgetting audit's settings (`AuditConfig`; checked before anything is written)."""
    root = Path(root)
    audit_config = AuditConfig(**(audit or {}))
    audit_settings = audit_config.as_dict()
    request = request_config(options or {}, audit_config)
    check_replaceable(root)  # before the work, not after it
    if key_file is not None:
        check_key_file(key_file, root, (data, model))
    samples, manifest = load_prepared(data)
    tables = load_tables(data)
    backbone, meta = load_model(model)
    check_lora_rank(request.lora_r, backbone.model, f"init --set lora_r={request.lora_r}")
    if meta.get("role") not in (None, "original", "version"):
        raise E2URecError(f"{model}: is a {meta.get('role')!r} model; a run starts from an Original (`e2urec train`)")
    trained_on = meta.get("data", {}).get("samples_sha256")
    if trained_on is not None and trained_on != manifest["samples_sha256"]:
        raise E2URecError(f"{model}: was trained on other data than {data} (samples checksum differs); pass the "
                          f"data folder the model was trained on")
    samples = samples.assign(forget=False)
    # The prepared forget set is not what a run forgets (requests are); its ids must not outlive a request.
    config = {**manifest["config"], "forget_users": None, "forget_interactions": None}
    run_id = uuid.uuid4().hex
    key_path = Path(key_file) if key_file else default_key_file(run_id)
    with held_if_run(root), atomic_dir(root, overwrite=overwrite) as tmp:
        version = tmp / "versions" / "v0000"
        write_prepared(version / "data", samples, tables, {**manifest, "config": config, "parent_samples_sha256":
                                                            manifest["samples_sha256"]})
        backbone = full_weights(backbone)
        save_model(backbone, version / "model",
                   {**meta, "role": "version", "version": "v0000", "backbone": meta.get("backbone", backbone.name)})
        reference = write_reference(version, reference_scores(backbone, reference_rows(samples, audit_config)),
                                    {"version": "v0000", "kind": "original"})
        write_json_atomic(version / VERSION_FILE, {"version": "v0000", "request_id": None, "parent": None,
                                                   "created": time.time(), "reference": reference,
                                                   "model_sha256": model_checksums(version / "model")})
        check_replaceable(root)  # again, under the old run's lock, last: a request may have come meanwhile
        key = create_key(key_path, root, (data, model))
        write_json_atomic(tmp / RUN_FILE, {"e2urec_version": __version__, "created": time.time(), "run_id": run_id,
                                           "ledger_key": {"id": key_id(key),
                                                          "file": str(Path(key_file).expanduser().resolve())
                                                          if key_file else None},
                                           "backbone": meta.get("backbone", backbone.name),
                                           "method": "e2urec", "options": options or {}, "audit": audit_settings,
                                           "source": {"data": str(Path(data).resolve()),
                                                      "model": str(Path(model).resolve())}})
        (tmp / CURRENT).symlink_to(os.path.join("versions", "v0000"))
        Ledger(tmp / "ledger.sqlite", key)
    return root


def model_dir(version: Path) -> Path:
    return version / "model"


def data_dir(version: Path) -> Path:
    return version / "data"


def version_meta(version: Path) -> dict:
    meta = read_json(version / VERSION_FILE)
    if not isinstance(meta, dict) or not isinstance(meta.get("version"), str):
        raise E2URecError(f"{version / VERSION_FILE}: damaged (not a version record); restore the run folder")
    return meta


def write_reference(version: Path, frame: pd.DataFrame, origin: dict) -> dict:
    """Store the last exact model's predictions in a version being built; returns what version.json records."""
    path = version / REFERENCE_FILE
    frame.to_parquet(path, index=False)
    return {**origin, "rows": len(frame), "sha256": sha256_file(path)}


def read_reference(version: Path) -> tuple[pd.DataFrame, dict] | None:
    """The last exact model's predictions a version carries (checked against version.json), or None for a version
    made before the drift check existed."""
    origin = version_meta(version).get("reference")
    if not origin:
        return None
    path = version / REFERENCE_FILE
    if not path.is_file() or sha256_file(path) != origin.get("sha256"):
        raise E2URecError(f"{path}: missing or changed (sha256 differs from {VERSION_FILE}); restore the run folder "
                          f"from a backup")
    return pd.read_parquet(path), origin


def verify_version(version: Path) -> dict:
    """version.json, after checking the weights against the sha256 it records: a truncated or overwritten weight
    file is refused with the file's name instead of failing (or scoring garbage) later."""
    meta = version_meta(version)
    expected = meta.get("model_sha256")
    if expected is None:
        raise E2URecError(f"{version}: its weights carry no checksum (made by an older e2urec); `e2urec init` again")
    folder = model_dir(version)
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise E2URecError(f"{path}: missing or changed (sha256 differs from {VERSION_FILE}); the weights are "
                              f"damaged; restore the run folder from a backup")
    return meta
