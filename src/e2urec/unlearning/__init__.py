"""Unlearning methods. Every module of this package is imported here, so a method registers itself (`@register`)
by living in a file of its own in this folder: nothing else needs to name it."""

import importlib
import pkgutil

from e2urec.unlearning.base import REGISTRY

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

METHODS = tuple(REGISTRY)
