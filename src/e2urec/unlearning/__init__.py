"""Unlearning methods, each registered by name; importing this package registers them all."""

from e2urec.unlearning import e2urec, methods, npo, run, sharded  # noqa: F401  (registration side effects)
from e2urec.unlearning.base import REGISTRY

METHODS = tuple(sorted(REGISTRY))
