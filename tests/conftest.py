"""Shared test setup: no test may reach the Hugging Face hub, and tiny backbones are built once."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub, which reads it at import

import pytest  # noqa: E402

from e2urec.model.backbone import Backbone, load_backbone  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    """The seeded tiny causal backbone; shared, so tests must not modify it (load a fresh one to mutate)."""
    return load_backbone("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_t5() -> Backbone:
    """The seeded tiny seq2seq backbone; shared, so tests must not modify it."""
    return load_backbone("tiny-t5", seed=0)
