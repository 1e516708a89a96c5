"""Model registry. A registered model class has a ``config_class`` (a pydantic ``Strict`` model)
and a classmethod ``from_config(meta, params)`` that builds it from the data metadata (the single
source of shapes) and its validated parameters."""

from __future__ import annotations

import importlib

from ups.registry import Registry

MODELS: Registry = Registry("model")

# Modules whose classes register themselves; add new model modules here.
_BUILTIN: tuple[str, ...] = ("ups.models.persistence", "ups.models.upt")

for _mod in _BUILTIN:
    importlib.import_module(_mod)
