"""Fetching ML-100K: source order, checksums, and a second call that touches no network."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.data import sources
from e2urec.errors import E2URecError

runner = CliRunner()


@pytest.fixture(scope="module")
def real_files() -> Path:
    """ML-100K from the user's cache (fetched once), before any test isolates the cache."""
    return sources.fetch("ml-100k").path


@pytest.fixture()
def isolated_cache(real_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(str(args[:1]))
        raise OSError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    return calls


def test_data_dir_first_then_cache_without_network(
    real_files: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _refuse_network(monkeypatch)
    first = sources.fetch("ml-100k", data_dir=real_files)
    assert first.source == "data-dir" and not first.from_cache
    second = sources.fetch("ml-100k")
    assert second.from_cache and second.source == "data-dir"
    assert calls == []
    result = runner.invoke(app, ["data", "fetch", "ml-100k"])
    assert result.exit_code == 0 and "cache (no network used)" in result.output


def test_falls_back_to_the_recbole_wheel_with_pinned_checksums(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []

    def no_zip(url: str, timeout: float) -> None:
        tried.append(url)
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", no_zip)
    fetched = sources.fetch("ml-100k")
    assert tried == [sources.ML100K_ZIP_URL]
    assert fetched.source == "recbole-wheel"
    assert sorted(p.name for p in fetched.path.glob("ml-100k.*")) == sorted(sources.RECBOLE_SHA256)


def test_corrupt_cache_is_refused(real_files: Path, isolated_cache: Path) -> None:
    fetched = sources.fetch("ml-100k", data_dir=real_files)
    victim = next(fetched.path.glob("*.inter")) if any(fetched.path.glob("*.inter")) else fetched.path / "u.data"
    victim.write_text("tampered\n")
    with pytest.raises(E2URecError, match="checksum changed"):
        sources.fetch("ml-100k")


def test_all_sources_failing_says_what_to_do(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_network(monkeypatch)
    with pytest.raises(E2URecError, match="--data-dir"):
        sources.fetch("ml-100k")


def test_unfetchable_dataset_needs_data_dir(isolated_cache: Path) -> None:
    result = runner.invoke(app, ["data", "fetch", "ml-1m"])
    assert result.exit_code == 2 and "--data-dir" in result.output
