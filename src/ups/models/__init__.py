"""Model registry. A registered model class has a ``config_class`` (a pydantic ``Strict`` model)
and a classmethod ``from_config(meta, params)`` that builds it from the data metadata (the single
source of shapes) and its validated parameters."""

from __future__ import annotations

import importlib

from ups.registry import Registry
from ups.schema import register_check, validate_section

MODELS: Registry = Registry("model")


@register_check("model")
def check_model_config(model_cfg) -> None:
    """``model.name`` is registered and ``model.params`` validate against its ``config_class``
    (stored back as the validated dump). ``model_cfg``: a ``ups.config.ModelConfig``."""
    if model_cfg.name not in MODELS:
        raise ValueError(
            f"model.name='{model_cfg.name}' is not a registered model (allowed: {', '.join(MODELS.names())})"
        )
    cfg_cls = getattr(MODELS.get(model_cfg.name), "config_class", None)
    if cfg_cls is not None:
        model_cfg.__dict__["params"] = validate_section(cfg_cls, model_cfg.params, "model.params").model_dump()

# Modules whose classes register themselves; add new model modules here.
_BUILTIN: tuple[str, ...] = ("ups.models.persistence", "ups.models.upt", "ups.models.baselines")

for _mod in _BUILTIN:
    importlib.import_module(_mod)
