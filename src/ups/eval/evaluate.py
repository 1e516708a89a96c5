"""Autoregressive evaluation in physical space: the model, persistence and peers on the same split.

A *rollout function* maps normalised initial fields to a normalised rollout::

    rollout_fn(u0, coords, params, dt, steps) -> [B, steps, N, C]
        u0 [B, N, C] normalised, coords [B, N, d], params [B, P], dt [B]

(``Simulator.rollout_fn(...)`` provides one for a trained run, with or without its corrector;
``model_rollout_fn(model)`` makes one from any model with ``predict_next``.) ``collect`` runs it over
whole test trajectories (from ``eval.rollout_start``), de-normalises, and ``evaluate_split`` turns the
result into the metric dict of ``ups.eval.metrics.evaluate_rollout`` for the model and persistence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ups.config import EvalConfig
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.eval.metrics import evaluate_rollout, persistence_rollout

RolloutFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def model_rollout_fn(model: torch.nn.Module) -> RolloutFn:
    """Autoregressive rollout by repeated ``model.predict_next`` (normalised space)."""
    from ups.eval.rollout import rollout_grid

    def rollout(u0, coords, params, dt, steps):
        return rollout_grid(model, u0, coords, params, dt, steps)

    return rollout


@dataclass
class Collected:
    """De-normalised fields of one split, all [B, T, *spatial, C] (input frame dropped) but ``u0``."""

    pred: torch.Tensor
    one_step: torch.Tensor
    true: torch.Tensor
    u0: torch.Tensor  # [B, *spatial, C]
    wall_s: float


def _flat(x: torch.Tensor, n_lead: int) -> torch.Tensor:
    """[*lead, *spatial, C] -> [*lead, N, C]."""
    return x.reshape(*x.shape[:n_lead], -1, x.shape[-1])


def collect(rollout_fn: RolloutFn, loader: Iterable[dict], normalizer: Normalizer) -> Collected:
    """Roll out every batch of whole trajectories ``u [B, W, *spatial, C]`` from its first frame."""
    preds, ones, trues, u0s, wall = [], [], [], [], 0.0
    for batch in loader:
        u = batch["u"]
        b, w, spatial = u.shape[0], u.shape[1], u.shape[2:-1]
        coords, params, dt = _flat(batch["coords"], 1), batch["params"], batch["dt"]
        start = time.perf_counter()
        pred = rollout_fn(_flat(u[:, 0], 1), coords, params, dt, w - 1)
        wall += time.perf_counter() - start
        # teacher-forced one step: every true frame but the last as an initial condition
        reps = [x.repeat_interleave(w - 1, dim=0) for x in (coords, params, dt)]
        one = rollout_fn(_flat(u[:, :-1], 2).reshape(b * (w - 1), -1, u.shape[-1]), *reps, 1)[:, 0]
        shape = (b, w - 1, *spatial, u.shape[-1])
        preds.append(normalizer.denormalize(pred.reshape(shape)))
        ones.append(normalizer.denormalize(one.reshape(shape)))
        trues.append(normalizer.denormalize(u[:, 1:]))
        u0s.append(normalizer.denormalize(u[:, 0]))
    cat = lambda xs: torch.cat(xs).float()  # noqa: E731
    return Collected(cat(preds), cat(ones), cat(trues), cat(u0s), wall)


def metrics_of(pred: torch.Tensor, true: torch.Tensor, u0: torch.Tensor, meta: DatasetMetadata,
               cfg: EvalConfig, *, one_step: torch.Tensor | None = None) -> dict:
    """``evaluate_rollout`` with the physical facts taken from the metadata."""
    return evaluate_rollout(
        pred, true, pred_one_step=one_step, u0=u0, boundary=meta.boundary, nonnegative=list(meta.nonnegative),
        Lx=[hi - lo for lo, hi in meta.domain], corr_threshold=cfg.corr_threshold,
        valid_threshold=cfg.valid_threshold, dt=None, frame_dt=meta.dt,
    )


def evaluate_split(rollout_fn: RolloutFn, loader: Iterable[dict], normalizer: Normalizer,
                   meta: DatasetMetadata, cfg: EvalConfig) -> tuple[dict, Collected]:
    """Metrics of the model and of persistence on one split; returns (result dict, fields)."""
    got = collect(rollout_fn, loader, normalizer)
    steps = got.true.shape[1]
    persistence = persistence_rollout(got.u0, steps)
    persistence_one = torch.cat([got.u0.unsqueeze(1), got.true[:, :-1]], dim=1)
    result = {
        "metrics": metrics_of(got.pred, got.true, got.u0, meta, cfg, one_step=got.one_step),
        "baselines": {"persistence": metrics_of(persistence, got.true, got.u0, meta, cfg,
                                                one_step=persistence_one)},
        "timing": {"rollout_wall_s": got.wall_s,
                   "per_step_ms": 1000.0 * got.wall_s / max(1, steps * got.true.shape[0])},
    }
    return result, got
