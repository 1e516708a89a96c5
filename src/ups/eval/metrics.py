"""Metrics in physical space, implemented from their published definitions.

All functions take de-normalised rollouts ``pred`` and ``true`` shaped ``[B, T, *spatial, C]`` (the
input frames already dropped) and return Python floats unless stated otherwise.
"""

from __future__ import annotations

import torch


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a [B, T, *spatial, C] tensor."""
    return tuple(range(2, x.ndim - 1))


def nrmse_per_sample(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """PDEBench nRMSE per sample, frame and channel.

    pred, true: [B, T, *spatial, C] -> [B, T, C] = sqrt(mean_x (p - y)^2) / sqrt(mean_x y^2).
    """
    dims = _spatial_dims(true)
    err = (pred - true).double().pow(2).mean(dim=dims).sqrt()
    ref = true.double().pow(2).mean(dim=dims).sqrt()
    return err / ref.clamp_min(eps)


def nrmse(pred: torch.Tensor, true: torch.Tensor) -> float:
    """PDEBench nRMSE: the per-(sample, frame, channel) values averaged. pred, true: [B, T, *spatial, C]."""
    return float(nrmse_per_sample(pred, true).mean())


def nrmse_per_step(pred: torch.Tensor, true: torch.Tensor) -> list[float]:
    """nRMSE of each rollout step (averaged over samples and channels). pred, true: [B, T, *spatial, C]."""
    return nrmse_per_sample(pred, true).mean(dim=(0, 2)).tolist()
