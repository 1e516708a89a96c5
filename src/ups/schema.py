"""The ground floor of every config: the ``Strict`` base, one-line validation errors, section checks.

Nothing here knows a model, a stage or a file format. A layer that owns a registry (``ups.models``
for ``model:``, ``ups.training`` for ``stages:``) validates its part of an experiment config by
registering a *section check* with :func:`register_check`; :func:`run_checks` runs it while the config
is validated, so every error keeps the one-line form of :func:`format_validation_error`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ups.errors import ConfigError

# The packages that register section checks. They are loaded by name when a check runs (as a plugin
# registry loads its modules), never imported by this layer: config stays below models and training.
CHECK_OWNERS: tuple[str, ...] = ("ups.models", "ups.training")
_CHECKS: dict[str, list[Callable[[Any], None]]] = {}


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def register_check(section: str) -> Callable:
    """Decorator: ``fn(section_value)`` validates ``section`` (raise ``ValueError`` or ``ConfigError``)."""

    def deco(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        _CHECKS.setdefault(section, []).append(fn)
        return fn

    return deco


def run_checks(section: str, value: Any) -> None:
    """Run every check registered for ``section`` on ``value`` (loading the owners first)."""
    for owner in CHECK_OWNERS:
        importlib.import_module(owner)
    for fn in _CHECKS.get(section, ()):
        fn(value)


def validate_section(cls: type[BaseModel], data: Any, prefix: str) -> BaseModel:
    """``cls.model_validate(data)``; an error becomes a one-line :class:`ConfigError` under ``prefix``."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, cls, prefix)) from None


def _allowed_keys(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that holds the last element of ``loc``."""
    current: Any = cls
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        sub = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sub:
            return []
        current = sub[0]
    return sorted(getattr(current, "model_fields", {}))


def format_validation_error(err: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """One line for the first error: key, value, what is allowed."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or prefix or "config"
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(cls, loc)
        return f"config error: unknown key '{key}' (allowed: {', '.join(allowed) or 'none'})"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"].startswith("value_error"):
        return f"config error: {key}: {msg}"
    value = e.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"config error: {key}={shown}: {msg}"
