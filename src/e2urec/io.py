"""Small filesystem helpers: checksums and all-or-nothing writes, so nothing on disk is ever half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2urec.errors import E2URecError


def cache_dir() -> Path:
    """Root of everything e2urec downloads or builds once (`E2UREC_CACHE`, default `~/.cache/e2urec`)."""
    root = Path(os.environ.get("E2UREC_CACHE", Path.home() / ".cache" / "e2urec")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_safe(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None: JSON has no such numbers, and a bare `NaN` in a
    file makes it unreadable to strict parsers (the value was not measurable, which null says)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON next to `path` and rename it into place: readers see the old file or the new, never half.
    Strict JSON: non-finite floats are written as null (`json_safe`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(json_safe(data), fh, indent=2, sort_keys=True, default=str, allow_nan=False)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; manifests and metrics are for others to read too
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise E2URecError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise E2URecError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `out` only if the block finishes without error.

    On failure the temporary directory is removed and an existing `out` is left exactly as it was.
    """
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise E2URecError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise E2URecError(f"{out}: cannot write there ({exc.strerror}); choose a writable place") from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_text(path: str | Path, what: str) -> str:
    """A user-given text file, which must be UTF-8: a folder, a binary file or another encoding (latin-1, UTF-16)
    is a clear error naming the option and the file, never a traceback or a silent misreading."""
    path = Path(path)
    if path.is_dir():
        raise E2URecError(f"{what} {path}: is a folder; give a text file")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a leading byte-order mark (as Excel writes) is not text
    except FileNotFoundError as exc:
        raise E2URecError(f"{what} {path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise E2URecError(f"{what} {path}: not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
                          ) from exc
    except OSError as exc:
        raise E2URecError(f"{what} {path}: cannot read it ({exc.strerror})") from exc
    if "\x00" in text:
        raise E2URecError(f"{what} {path}: holds NUL bytes, so it is binary, not text; give a UTF-8 text file")
    return text


# What each kind of folder e2urec writes holds, checked in this order (a run holds data and models below it).
KIND_MARKERS: dict[str, tuple[str, ...]] = {
    "run": ("run.json", "ledger.sqlite"),
    "bench": ("results.json",),
    "evaluation": ("metrics.json",),
    "model": ("meta.json", "system.json"),
    "data": ("manifest.json", "samples.parquet"),
}


def artifact_kind(path: Path) -> str | None:
    """The kind of artifact a folder is (run, bench, evaluation, model, data), by its marker files; else None."""
    if not path.is_dir():
        return None
    for kind, markers in KIND_MARKERS.items():
        if any((path / marker).exists() for marker in markers):
            return kind
    return "bench" if any(p.is_dir() for p in path.glob("seed-*")) else None


def enclosing_artifact(path: Path) -> tuple[str, Path] | None:
    """(kind, folder) of the nearest e2urec artifact folder above `path` (not `path` itself), or None."""
    for parent in path.parents:
        kind = artifact_kind(parent)
        if kind is not None:
            return kind, parent
    return None


def guard_output(out: str | Path, kind: str, inputs: list[str | Path | None], overwrite: bool = False,
                 option: str = "--out") -> None:
    """Refuse (before any work) an output folder whose writing could destroy something: one that is an input,
    contains one or lies inside one; one inside another artifact (a run's version, a model folder); an
    existing artifact of another kind, or a non-empty folder that is no artifact, `--overwrite` or not; an
    artifact of the same kind without `--overwrite` (a bench folder resumes instead); an unwritable place."""
    given = Path(out)
    target = given.expanduser().resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser().resolve()
        relation = ("is" if target == source else "contains" if source.is_relative_to(target)
                    else "lies inside" if target.is_relative_to(source) else None)
        if relation:
            raise E2URecError(f"{option} {given}: {relation} the input {item}; writing there would destroy it. "
                              f"Choose another {option} (nothing was changed)")
    enclosing = enclosing_artifact(target)
    if enclosing is not None:
        raise E2URecError(f"{option} {given}: lies inside the {enclosing[0]} folder {enclosing[1]}; writing there "
                          f"would damage it. Choose a folder outside it (nothing was changed)")
    if target.exists():
        existing = artifact_kind(target)
        if not target.is_dir():
            raise E2URecError(f"{option} {given}: is a file, not a folder; choose another {option} (nothing was "
                              "changed)")
        if existing is None and any(target.iterdir()):
            raise E2URecError(f"{option} {given}: a non-empty folder that e2urec did not write; --overwrite replaces "
                              f"only an e2urec {kind} folder. Choose an empty or new folder (nothing was changed)")
        if existing is not None and existing != kind:
            raise E2URecError(f"{option} {given}: holds a {existing}, not a {kind}; --overwrite replaces only a "
                              f"{kind}. Choose another {option} (nothing was changed)")
        if existing == kind and not overwrite and kind != "bench":
            raise E2URecError(f"{option} {given}: already holds a {kind}; pass --overwrite to replace it")
    existing_parent = next(p for p in target.parents if p.exists())
    if not existing_parent.is_dir():
        raise E2URecError(f"{option} {given}: {existing_parent} is a file, so no folder can be made below it")
    if not os.access(existing_parent, os.W_OK | os.X_OK):
        raise E2URecError(f"{option} {given}: cannot write in {existing_parent} (permission denied); choose a "
                          f"writable place")
