"""PDE registry: each PDE registers a class with a parameter dataclass and a solver."""

from __future__ import annotations

import importlib

from ups.registry import Registry

PDES: Registry = Registry("pde")

# Modules whose classes register themselves; add new PDE modules here.
_BUILTIN: tuple[str, ...] = (
    "ups.data.pdes.burgers",
)

for _mod in _BUILTIN:
    importlib.import_module(_mod)
