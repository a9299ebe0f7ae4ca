"""`import e2urec` gives the documented entry points, each the function the CLI command of the same name runs,
without importing the heavy libraries until one is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import e2urec


def test_every_documented_entry_point_resolves_to_the_real_function() -> None:
    from e2urec.data.prepare import PrepareConfig, prepare
    from e2urec.engine import TrainConfig
    from e2urec.evaluation import EvalConfig, evaluate
    from e2urec.ops.forget import forget
    from e2urec.ops.request import read_request
    from e2urec.ops.run import init_run
    from e2urec.training import train
    from e2urec.unlearning.runner import unlearn

    expected = {"prepare": prepare, "PrepareConfig": PrepareConfig, "train": train, "TrainConfig": TrainConfig,
                "unlearn": unlearn, "evaluate": evaluate, "EvalConfig": EvalConfig,
                "init_run": init_run, "forget": forget, "read_request": read_request}
    assert set(e2urec.__all__) == {"__version__", *expected}
    for name, obj in expected.items():
        assert getattr(e2urec, name) is obj, name
        assert obj.__doc__, f"{name} has no docstring"
        assert name in e2urec.__doc__, f"{name} is not documented in the package docstring"
    from e2urec.bench import bench

    assert bench.__doc__ and "e2urec.bench.bench(" in e2urec.__doc__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        e2urec.nope  # noqa: B018


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, e2urec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
