"""Shared test setup: no test may reach the Hugging Face hub, tiny backbones are built once, and dataset
fixtures are written at test time (MovieLens files may not be redistributed)."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub, which reads it at import
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, no contention
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from e2urec.model.backbone import Backbone, load_backbone  # noqa: E402

TRAINED_FIXTURES = {"trained", "workspace"}
# Modules whose tests train models themselves (the engine, the bench, several processes, the GPU paths on CPU).
TRAINING_MODULES = {"test_bench.py", "test_gpu_paths.py", "test_training.py", "test_unlearn_multiprocess.py"}


# The slowest files, slowest first (measured on 2 cores; a few seconds or more each). Under `--dist loadfile` a file
# runs whole on one worker, and xdist by default starts the files with the most tests first, which left the
# slowest files (a few tests each: the bench, several processes) to start last and run alone at the end. Starting
# them first instead lets the quick files fill in the end on both workers.
SLOWEST_FIRST = ("test_forget.py", "test_bench.py", "test_contract.py", "test_training.py",
                 "test_unlearn_multiprocess.py", "test_unlearning.py", "test_audit.py", "test_gpu_paths.py",
                 "test_serve.py", "test_abuse.py", "test_guard.py")


def pytest_configure(config: pytest.Config) -> None:
    """Files reach the xdist workers in collection order (see SLOWEST_FIRST), not by their number of tests."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need or train a model are `integration` tests (`make test-fast` leaves them out); the slowest
    files are collected first (a stable sort: the order within a file and among the other files is kept)."""
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in TRAINING_MODULES:
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    """The seeded tiny causal backbone; shared, so tests must not modify it (load a fresh one to mutate)."""
    return load_backbone("tiny", seed=0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared slice of real ML-100K (last 300 samples) and a tiny Original trained on it for 3 steps:
    `data/` and `original/` under the returned folder. Shared, so tests must not modify them."""
    from e2urec.data.prepare import PrepareConfig, prepare
    from e2urec.data.sources import fetch
    from e2urec.engine import TrainConfig
    from e2urec.training import train

    root = tmp_path_factory.mktemp("trained")
    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=300), root / "data")
    train(root / "data", "original", "tiny", root / "original",
          TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3))
    return root


@pytest.fixture(scope="module")
def workspace(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module's own folder holding links to the shared `data/` and `original/` of `trained`: outputs go
    beside them without touching the shared fixture or another module's outputs."""
    root = tmp_path_factory.mktemp("workspace")
    for name in ("data", "original"):
        (root / name).symlink_to(trained / name, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def tiny_t5() -> Backbone:
    """The seeded tiny seq2seq backbone; shared, so tests must not modify it."""
    return load_backbone("tiny-t5", seed=0)


# MovieLens files may not be redistributed, so the ML-1M fixture is written at test time in the real format
# (`::`-separated, ISO-8859-1) from invented users, titles and ratings. 8 users × 12 ratings; user 1 is a
# K-12 student (code 10), user 5 a writer (20), user 8 "other" (0); item 73 has a non-ASCII Latin-1 title.
ML1M_TITLES = {
    1: "Paper Lanterns (1995)::Animation|Children's", 2: "Harbour Lights (1995)::Adventure",
    3: "Two Old Neighbours (1995)::Comedy|Romance", 6: "Night Shift (1995)::Action|Crime",
    10: "Silver Key, The (1995)::Thriller", 11: "Mayor of Elm Street, The (1995)::Comedy|Drama",
    32: "Clockwork Garden (1995)::Sci-Fi", 47: "Seventh Door (1995)::Crime", 50: "Usual Strangers, The (1995)::Crime",
    73: "Été indien, L' (1995)::Drama|Musical", 110: "Highland Oath (1995)::Action|War",
    260: "Orbit Nine: Part IV - The Long Return (1977)::Sci-Fi", 296: "Diner at Midnight (1994)::Crime|Drama",
    318: "Stone Walls (1994)::Drama", 356: "Running Bench (1994)::Comedy", 527: "Ledger of Names (1993)::Drama|War",
    593: "Quiet Meadow, The (1991)::Thriller", 1193: "Ward Seven (1975)::Drama",
    2355: "Ant Parade, An (1998)::Animation", 3408: "Water Case (2000)::Drama",
}  # fmt: skip
ML1M_USERS = [(1, "F", 1, 10), (2, "M", 56, 16), (3, "M", 25, 15), (4, "M", 45, 7), (5, "M", 25, 20), (6, "F", 50, 9),
              (7, "M", 35, 1), (8, "M", 25, 0)]  # fmt: skip


def write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = [6, *(i for i in ML1M_TITLES if i != 6)]
    ratings = []
    for user, *_ in ML1M_USERS:
        for k in range(12):
            item = items[(user * 5 + k) % len(items)] if (user, k) != (1, 0) else 6
            stamp = 970_000_000 + user * 100_000 + 60 * (k if k != 5 else 4)  # ratings 4 and 5 share a second
            ratings.append(f"{user}::{item}::{(user * 7 + k * 3) % 5 + 1}::{stamp}\n")
    (folder / "ratings.dat").write_bytes("".join(ratings).encode("iso-8859-1"))
    (folder / "users.dat").write_bytes("".join(f"{u}::{g}::{a}::{o}::{10000 + u}\n" for u, g, a, o in ML1M_USERS)
                                       .encode("iso-8859-1"))
    (folder / "movies.dat").write_bytes("".join(f"{i}::{t}\n" for i, t in ML1M_TITLES.items()).encode("iso-8859-1"))
    return folder


@pytest.fixture(scope="session")
def ml1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding users.dat, movies.dat and ratings.dat in MovieLens-1M's own format."""
    return write_ml1m(tmp_path_factory.mktemp("fixtures") / "ml-1m")
