"""Training: one generic trainer (``trainer``) and the stages that plug into it (``stage``)."""

from __future__ import annotations

import importlib

# Modules whose stages register themselves in ``ups.training.stage.STAGES``; add new ones here.
_BUILTIN: tuple[str, ...] = (
    "ups.training.stages.operator",
    "ups.training.stages.diff_residual",
    "ups.training.stages.consistency_distill",
    "ups.training.stages.steady_prior",
    "ups.training.stages.baseline",
)

for _mod in _BUILTIN:
    importlib.import_module(_mod)
