"""Test-time compute (TTC): per-sample best-of-K rollouts scored by a physics reward.

At every rollout step the stochastic corrector proposes ``K`` corrected latents for each sample
(``corrector.refine(z_pred, cond, generator=g)``); each is decoded by the model's *own trained*
decoder into physical space and scored by

    reward = -( w_c * conservation + w_n * negativity + w_s * smoothness + w_r * residual )

- conservation: |mean_x u_k - mean_x u_prev| / mean_x |u_prev|   (drift of the spatial integral)
- negativity:   mean relu(-u_k) over channels declared non-negative
- smoothness:   share of spectral energy in the upper half of the wavenumbers (1D: last axis)
- residual:     mean squared residual of the PDE over the step, when the PDE registers one

The best candidate is kept **per sample** (never one choice for a whole batch). With ``horizon > 1``
each candidate is scored by the summed reward of a deterministic look-ahead of ``horizon - 1``
further steps from it. Every decoder evaluation is counted, so the report can state the compute cost
against a plain rollout (one model step + one decode per step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ups.config import TTCConfig
from ups.data.normalization import Normalizer
from ups.registry import Registry

#: PDE residuals of one step: fn(u_prev [B, N, C], u_next [B, N, C], params [B, P], dt [B], dx) -> [B]
RESIDUALS: Registry = Registry("pde residual")


@RESIDUALS.register("burgers1d")
def burgers_residual(u_prev, u_next, params, dt, dx: float) -> torch.Tensor:
    """u_t + (u^2/2)_x - (nu/pi) u_xx at the step's midpoint, periodic central differences -> [B]."""
    um = 0.5 * (u_prev + u_next)[..., 0]  # [B, N]
    flux_x = (torch.roll(um, -1, -1) ** 2 - torch.roll(um, 1, -1) ** 2) / (4 * dx)
    u_xx = (torch.roll(um, -1, -1) - 2 * um + torch.roll(um, 1, -1)) / dx**2
    nu = params[:, :1] / torch.pi
    res = (u_next - u_prev)[..., 0] / dt.view(-1, 1) + flux_x - nu * u_xx
    return res.pow(2).mean(-1)


@dataclass
class PhysicsReward:
    """Scores decoded candidates in physical space; higher is better."""

    weights: dict[str, float]
    nonnegative: tuple[bool, ...]
    residual: Callable | None = None
    dx: float = 1.0

    def __call__(self, u_prev: torch.Tensor, u_next: torch.Tensor, params: torch.Tensor,
                 dt: torch.Tensor) -> torch.Tensor:
        """u_prev, u_next: [B, N, C] physical -> reward [B]."""
        w = self.weights
        ref = u_prev.abs().mean(dim=(1, 2)).clamp_min(1e-12)
        cons = (u_next.mean(dim=(1, 2)) - u_prev.mean(dim=(1, 2))).abs() / ref
        mask = torch.tensor(self.nonnegative, dtype=u_next.dtype)
        neg = (torch.relu(-u_next) * mask).mean(dim=(1, 2))
        spec = torch.fft.rfft(u_next, dim=1).abs().pow(2).sum(-1)  # [B, K]
        smooth = spec[:, spec.shape[1] // 2:].sum(-1) / spec.sum(-1).clamp_min(1e-12)
        total = w.get("conservation", 0) * cons + w.get("negativity", 0) * neg + w.get("smoothness", 0) * smooth
        if self.residual is not None and w.get("residual", 0):
            total = total + w["residual"] * self.residual(u_prev, u_next, params, dt, self.dx)
        return -total


@dataclass
class TTCStepper:
    """One re-encoding rollout step with best-of-K selection. Works in normalised space."""

    model: torch.nn.Module
    corrector: torch.nn.Module
    normalizer: Normalizer
    reward: PhysicsReward
    ttc_cfg: TTCConfig
    generator: torch.Generator
    evaluations: int = 0  # decoder calls (candidates and look-ahead), summed over samples

    def _propose(self, u, coords, params, dt, cond):
        """K candidate next states. u: [B, N, C] -> [K, B, N, C] (normalised)."""
        z_pred = self.model.step(self.model.encode(u, coords), params, dt)
        outs = [self.model.decode(self.corrector.refine(z_pred, cond, generator=self.generator), coords, u)
                for _ in range(self.ttc_cfg.candidates)]
        self.evaluations += self.ttc_cfg.candidates * u.shape[0]
        return torch.stack(outs)

    def _deterministic(self, u, coords, params, dt, cond):
        z_pred = self.model.step(self.model.encode(u, coords), params, dt)
        self.evaluations += u.shape[0]
        return self.model.decode(self.corrector.refine(z_pred, cond), coords, u)

    def _score(self, u_prev, u_next, params, dt) -> torch.Tensor:
        den = self.normalizer.denormalize
        return self.reward(den(u_prev), den(u_next), params, dt)

    def __call__(self, u, coords, params, dt, cond) -> torch.Tensor:
        """u: [B, N, C] -> the chosen next state [B, N, C]."""
        cands = self._propose(u, coords, params, dt, cond)
        scores = torch.stack([self._score(u, c, params, dt) for c in cands])  # [K, B]
        for k in range(cands.shape[0]):
            prev, cur = cands[k], cands[k]
            for _ in range(self.ttc_cfg.horizon - 1):
                cur = self._deterministic(prev, coords, params, dt, cond)
                scores[k] += self._score(prev, cur, params, dt)
                prev = cur
        best = scores.argmax(dim=0)  # [B]: per sample
        return cands[best, torch.arange(u.shape[0])]


def ttc_rollout_fn(model, corrector, normalizer: Normalizer, reward: PhysicsReward, ttc_cfg: TTCConfig,
                   *, seed: int = 0, max_principle: bool = False):
    """A rollout function (see ``ups.eval.evaluate``) with best-of-K TTC; ``.stepper.evaluations`` counts."""
    from ups.models.corrector import condition_vector
    from ups.rollout import clamp_to_bounds, initial_bounds

    stepper = TTCStepper(model=model, corrector=corrector, normalizer=normalizer, reward=reward, ttc_cfg=ttc_cfg,
                         generator=torch.Generator().manual_seed(seed))

    @torch.inference_mode()
    def rollout(u0, coords, params, dt, steps):
        cond, frames, u = condition_vector(params, dt), [], u0
        bounds = initial_bounds(u0) if max_principle else None
        for _ in range(steps):
            u = clamp_to_bounds(stepper(u, coords, params, dt, cond), bounds)
            frames.append(u)
        return torch.stack(frames, dim=1)

    rollout.stepper = stepper  # type: ignore[attr-defined]
    return rollout
