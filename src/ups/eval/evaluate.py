"""Autoregressive evaluation in physical space: the model, persistence and peers on the same split.

A *rollout function* maps normalised initial fields to a normalised rollout::

    rollout_fn(u0, coords, params, dt, steps) -> [B, steps, N, C]
        u0 [B, N, C] normalised, coords [B, N, d], params [B, P], dt [B]

(``ups.rollout.rollout_fn(model, mode=, max_principle=)`` makes one for any model, a corrected surrogate
too.) ``ups.rollout.collect`` runs it over whole test trajectories (from ``eval.rollout_start``) and
de-normalises; ``evaluate_split`` turns the result into the metric dict of
``ups.eval.metrics.evaluate_rollout`` (through :func:`metrics_of`) for the model and persistence. Every
benchmark scores through this module too, so a benchmark number and an ``ups eval`` number agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ups.config import EvalConfig
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.eval.metrics import evaluate_rollout, persistence_rollout
from ups.rollout import Collected, RolloutFn, collect, rollout_fn


def model_rollout_fn(model: torch.nn.Module, *, max_principle: bool = False) -> RolloutFn:
    """Autoregressive rollout by repeated ``model.predict_next`` (normalised space)."""
    return rollout_fn(model, max_principle=max_principle)


def metrics_of(pred: torch.Tensor, true: torch.Tensor, u0: torch.Tensor, meta: DatasetMetadata,
               eval_cfg: EvalConfig, *, one_step: torch.Tensor | None = None) -> dict:
    """``evaluate_rollout`` with the physical facts taken from the metadata."""
    return evaluate_rollout(
        pred, true, pred_one_step=one_step, u0=u0, boundary=meta.boundary, nonnegative=list(meta.nonnegative),
        Lx=[hi - lo for lo, hi in meta.domain], corr_threshold=eval_cfg.corr_threshold,
        valid_threshold=eval_cfg.valid_threshold, dt=None, frame_dt=meta.dt,
    )


def evaluate_split(rollout_fn: RolloutFn, loader: Iterable[dict], normalizer: Normalizer,
                   meta: DatasetMetadata, eval_cfg: EvalConfig) -> tuple[dict, Collected]:
    """Metrics of the model and of persistence on one split; returns (result dict, fields)."""
    got = collect(rollout_fn, loader, normalizer.denormalize)
    steps = got.true.shape[1]
    persistence = persistence_rollout(got.u0, steps)
    persistence_one = torch.cat([got.u0.unsqueeze(1), got.true[:, :-1]], dim=1)
    result = {
        "metrics": metrics_of(got.pred, got.true, got.u0, meta, eval_cfg, one_step=got.one_step),
        "baselines": {"persistence": metrics_of(persistence, got.true, got.u0, meta, eval_cfg,
                                                one_step=persistence_one)},
        "timing": {"rollout_wall_s": got.wall_s,
                   "per_step_ms": 1000.0 * got.wall_s / max(1, steps * got.true.shape[0])},
    }
    return result, got
