"""Curricula for loss weights (from the seeds): the inverse-loss weight ramp of the operator stage."""

from __future__ import annotations

from ups.errors import ConfigError


def inverse_loss_weight(epoch: float, *, base: float, warmup: int, max_weight: float) -> float:
    """Weight of an inverse loss at ``epoch`` (0-based).

    ``0`` for ``epoch < warmup``; ``base * (epoch - warmup) / warmup`` for ``warmup <= epoch < 2 * warmup``;
    ``base`` afterwards; always capped at ``max_weight``. ``warmup == 0`` gives ``base`` (capped) from
    the first epoch.
    """
    if warmup < 0 or base < 0 or max_weight < 0 or epoch < 0:
        raise ConfigError(
            f"curriculum: epoch={epoch}, base={base}, warmup={warmup}, max_weight={max_weight} "
            "must all be >= 0"
        )
    if warmup == 0 or epoch >= 2 * warmup:
        weight = base
    elif epoch < warmup:
        weight = 0.0
    else:
        weight = base * (epoch - warmup) / warmup
    return float(min(weight, max_weight))
