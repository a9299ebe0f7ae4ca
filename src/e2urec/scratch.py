"""Scratch folders that hold forget-derived data (an `unlearn`'s augmented model, teacher caches and
resume checkpoints; a deletion request's rebuilt job data) and the process that owns each of them.

A process killed with `kill -9` (or a power loss) cannot delete its scratch, and that scratch holds what a request
asked to forget. So every scratch folder records its owner in `.owner.json`: host, pid and the pid's start time
from /proc (a pid is reused after its process dies; the start time is not), the command and a fingerprint of its
inputs. The next e2urec command that touches the place finds the owner dead and sweeps the folder, saying so on
stderr; a rerun of the *same* command with the *same* fingerprint resumes from it instead (the engine's
per-epoch checkpoints live there). A folder whose owner still runs is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from e2urec.errors import E2URecError
from e2urec.io import write_json_atomic

OWNER_FILE = ".owner.json"
log = logging.getLogger("e2urec.scratch")  # unconfigured, Python's last-resort handler prints it to stderr
PROC = Path("/proc")


def _boot_id() -> str:
    """This boot's id (8 hex characters): a start time in clock ticks repeats after a reboot."""
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "noboot"


def process_start(pid: int) -> str | None:
    """When process `pid` started, as `<boot id>-<clock ticks since boot>` (field 22 of /proc/PID/stat); None when
    no such process exists. The command name in the stat line may hold spaces or ")", so fields are counted from
    the last ")"."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return f"{_boot_id()}-{fields[19]}" if len(fields) > 19 else None


def _has_proc() -> bool:
    return (PROC / "self" / "stat").is_file()


@dataclass(frozen=True)
class Owner:
    """A process, told apart from a later one that reuses its pid. `start` is None for a record made before start
    times were kept (or where /proc is missing): then the pid alone decides."""

    host: str
    pid: int
    start: str | None = None

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()) if _has_proc() else None)

    def token(self) -> str:
        """`host:pid@start` (or `host:pid`): what the ledger and owner files store."""
        return f"{self.host}:{self.pid}" + (f"@{self.start}" if self.start else "")

    @classmethod
    def parse(cls, token: str | None) -> Owner | None:
        """The owner a token names; None for a missing or malformed one."""
        host, _, rest = (token or "").rpartition(":")
        pid, _, start = rest.partition("@")
        if not host or not pid.isdigit():
            return None
        return cls(host, int(pid), start or None)

    def is_me(self) -> bool:
        return self == Owner.me() or (self.start is None and (self.host, self.pid) == (socket.gethostname(),
                                                                                      os.getpid()))

    def alive(self) -> bool:
        """Whether this process still runs. One on another host cannot be checked and counts as alive (its
        scratch is left alone); on this host a pid that exists but started at another time is a reused pid."""
        if self.host != socket.gethostname():
            return True
        if not _has_proc():  # no /proc (not Linux): the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        started = process_start(self.pid)
        return started is not None and (self.start is None or started == self.start)


def owner_alive(token: str | None) -> bool:
    """Whether the process a stored owner token names still runs; a malformed token names nobody alive."""
    owner = Owner.parse(token)
    return owner is not None and owner.alive()


def read_owner(folder: Path) -> dict:
    """The owner record of a scratch folder; {} when it has none or it is unreadable (an older e2urec, or a
    process killed between making the folder and writing the record)."""
    try:
        record = json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def claim(folder: Path, command: str, fingerprint: str | None = None) -> Path:
    """Make `folder` (new, or adopt an existing one) and record this process as its owner. A new folder appears
    with its owner record already inside (made in a temporary sibling, then renamed), so no other process ever
    sees it ownerless and sweeps it as an orphan."""
    folder = Path(folder)
    record = {"owner": Owner.me().token(), "command": command, "fingerprint": fingerprint, "claimed": time.time()}
    if folder.is_dir():
        write_json_atomic(folder / OWNER_FILE, record)
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.claim-", dir=folder.parent))
    except OSError as exc:
        raise E2URecError(f"{folder}: cannot make scratch space there ({exc.strerror}); choose a writable place"
                          ) from exc
    try:
        write_json_atomic(tmp / OWNER_FILE, record)
        os.rename(tmp, folder)
    except OSError:  # made meanwhile by someone else: adopt it only if nobody alive owns it
        shutil.rmtree(tmp, ignore_errors=True)
        if not orphaned(folder):
            raise E2URecError(f"{folder}: scratch space in use by another e2urec process; wait for it to finish "
                              f"(nothing was changed)") from None
        write_json_atomic(folder / OWNER_FILE, record)
    return folder


def orphaned(folder: Path) -> bool:
    """True when nobody alive owns `folder`: its owner died, or it has no owner record at all."""
    owner = Owner.parse(read_owner(folder).get("owner"))
    return owner is None or (not owner.is_me() and not owner.alive())


def reclaim(folder: Path, command: str, fingerprint: str, what: str) -> bool:
    """Take over `folder` before `command` uses it as scratch. Returns True when it resumes from what an
    interrupted run of the same command and fingerprint left there, False when it starts empty. Scratch of a
    stopped process with another command or fingerprint is swept (and stderr says so, naming `what`, never an id);
    scratch whose owner still runs is refused, since sweeping it would break that run."""
    folder = Path(folder)
    if not folder.exists():
        claim(folder, command, fingerprint)
        return False
    record = read_owner(folder)
    owner = Owner.parse(record.get("owner"))
    if owner is not None and not owner.is_me() and owner.alive():
        raise E2URecError(f"{folder}: scratch space of another e2urec process that is still running (pid "
                          f"{owner.pid}, {record.get('command', 'unknown command')}); wait for it to finish or stop "
                          f"it, or choose another output (nothing was changed)")
    stranger = owner is None or not owner.is_me()
    if record.get("command") == command and record.get("fingerprint") == fingerprint and folder.is_dir():
        if stranger:
            log.warning("e2urec: resuming from %s, left by an interrupted %s (process %s, no longer running)",
                        folder, command, owner.pid if owner else "unknown")
        claim(folder, command, fingerprint)
        return True
    sweep(folder, what if stranger else None)
    claim(folder, command, fingerprint)
    return False


def sweep(folder: Path, what: str | None) -> None:
    """Delete a scratch folder (or a file in its place); with `what`, say on stderr that an orphan was removed."""
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            folder.unlink()
    if what:
        log.warning("e2urec: removed %s left by a stopped process: %s", what, folder)
