"""PDE registry: each PDE registers a class with a parameter dataclass and a solver."""

from __future__ import annotations

import importlib

from ups.registry import Registry

PDES: Registry = Registry("pde")

# Modules whose classes register themselves; add new PDE modules here.
_BUILTIN: tuple[str, ...] = (
    "ups.data.pdes.burgers",
    "ups.data.pdes.advection",
    "ups.data.pdes.forced_diffusion",
    "ups.data.pdes.ks",
    "ups.data.pdes.diffusion_reaction",
    "ups.data.pdes.ns2d",
)

for _mod in _BUILTIN:
    importlib.import_module(_mod)


def has_maximum_principle(name: str) -> bool:
    """Whether solutions of PDE ``name`` stay within the range of their initial state."""
    return name in PDES and bool(getattr(PDES.get(name), "maximum_principle", False))
