"""Test-time compute (TTC): per-sample best-of-K rollouts scored by a physics reward.

At every rollout step the corrected surrogate (``CorrectedSurrogate`` or ``FieldCorrectedSurrogate``,
anything with ``next_field(u, coords, params, dt, generator)``) proposes ``K`` next states per sample:
candidate 0 is its deterministic prediction, candidates 1..K-1 are stochastic samples (the corrector's
noise drawn from the TTC generator, so they differ in what the corrector refines). Each is scored in
physical space by

    reward = -( w_c * conservation + w_n * negativity + w_s * smoothness + w_p * spectral + w_r * residual )

- conservation: |mean_x u_k - mean_x u_prev| / mean_x |u_prev|   (drift of the spatial integral)
- negativity:   mean relu(-u_k) over channels declared non-negative
- smoothness:   share of spectral energy in the upper half of the wavenumbers (1D: points axis)
- spectral:     mean over wavenumbers of |log E_k(f) - log E_pred(f)|, the candidate's energy spectrum
                against the deterministic prediction's (candidate 0 scores 0)
- residual:     mean squared residual of the PDE over the step, when the PDE registers one

The best candidate is kept **per sample** (never one choice for a whole batch). With ``horizon > 1``
each candidate is scored by the summed reward of a deterministic look-ahead of ``horizon - 1``
further steps from it. Every proposal (one surrogate step + decode) is counted, so the report can
state the compute cost against a plain rollout (one step per step).
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


@RESIDUALS.register("ks1d")
def ks_residual(u_prev, u_next, params, dt, dx: float) -> torch.Tensor:
    """u_t + u u_x + u_xx + u_xxxx at the step's midpoint, spectral derivatives on the periodic grid -> [B]."""
    um = 0.5 * (u_prev + u_next)[..., 0]  # [B, N]
    n = um.shape[-1]
    k = 2 * torch.pi * torch.fft.rfftfreq(n, d=dx).to(um)  # angular wavenumbers [n // 2 + 1]
    u_hat = torch.fft.rfft(um, dim=-1)

    def deriv(order: int) -> torch.Tensor:
        return torch.fft.irfft((1j * k) ** order * u_hat, n=n, dim=-1)

    res = (u_next - u_prev)[..., 0] / dt.view(-1, 1) + um * deriv(1) + deriv(2) + deriv(4)
    return res.pow(2).mean(-1)


@dataclass
class PhysicsReward:
    """Scores decoded candidates in physical space; higher is better."""

    weights: dict[str, float]
    nonnegative: tuple[bool, ...]
    residual: Callable | None = None
    dx: float = 1.0

    def __call__(self, u_prev: torch.Tensor, u_next: torch.Tensor, params: torch.Tensor,
                 dt: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """u_prev, u_next: [B, N, C] physical; reference: [B, N, C] the predicted state whose spectrum
        the spectral term compares with (None: no spectral term) -> reward [B]."""
        w = self.weights
        ref = u_prev.abs().mean(dim=(1, 2)).clamp_min(1e-12)
        cons = (u_next.mean(dim=(1, 2)) - u_prev.mean(dim=(1, 2))).abs() / ref
        mask = torch.tensor(self.nonnegative, dtype=u_next.dtype)
        neg = (torch.relu(-u_next) * mask).mean(dim=(1, 2))
        spec = torch.fft.rfft(u_next, dim=1).abs().pow(2).sum(-1)  # [B, K]
        smooth = spec[:, spec.shape[1] // 2:].sum(-1) / spec.sum(-1).clamp_min(1e-12)
        total = w.get("conservation", 0) * cons + w.get("negativity", 0) * neg + w.get("smoothness", 0) * smooth
        if reference is not None and w.get("spectral", 0):
            total = total + w["spectral"] * spectral_misfit(u_next, reference)
        if self.residual is not None and w.get("residual", 0):
            total = total + w["residual"] * self.residual(u_prev, u_next, params, dt, self.dx)
        return -total


def physics_reward(meta, ttc_cfg: TTCConfig) -> PhysicsReward:
    """The reward of ``ttc_cfg.weights`` for data described by ``meta`` (a ``DatasetMetadata``): its PDE's
    residual when one is registered, grid spacing of the first axis."""
    residual = RESIDUALS.get(meta.pde) if meta.pde in RESIDUALS else None
    dx = (meta.domain[0][1] - meta.domain[0][0]) / meta.spatial_shape[0]
    return PhysicsReward(weights=ttc_cfg.weights, nonnegative=meta.nonnegative, residual=residual, dx=dx)


def spectral_misfit(u: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean over wavenumbers of |log E_u - log E_ref| (energy of the points axis, summed over channels).
    u, reference: [B, N, C] -> [B]."""
    e_u = torch.fft.rfft(u, dim=1).abs().pow(2).sum(-1)  # [B, K]
    e_r = torch.fft.rfft(reference, dim=1).abs().pow(2).sum(-1)
    floor = 1e-12 * e_r.sum(-1, keepdim=True).clamp_min(1e-30)
    return ((e_u + floor).log() - (e_r + floor).log()).abs().mean(-1)


@dataclass
class TTCStepper:
    """One re-encoding rollout step with best-of-K selection. Works in normalised space."""

    surrogate: torch.nn.Module  # next_field(u, coords, params, dt, generator=None) -> [B, N, C]
    normalizer: Normalizer
    reward: PhysicsReward
    ttc_cfg: TTCConfig
    generator: torch.Generator
    evaluations: int = 0  # surrogate steps (candidates and look-ahead), summed over samples

    def _propose(self, u, coords, params, dt):
        """K candidate next states, the deterministic prediction first. u: [B, N, C] -> [K, B, N, C]."""
        outs = [self.surrogate.next_field(u, coords, params, dt)]
        outs += [self.surrogate.next_field(u, coords, params, dt, generator=self.generator)
                 for _ in range(self.ttc_cfg.candidates - 1)]
        self.evaluations += self.ttc_cfg.candidates * u.shape[0]
        return torch.stack(outs)

    def _deterministic(self, u, coords, params, dt):
        self.evaluations += u.shape[0]
        return self.surrogate.next_field(u, coords, params, dt)

    def _score(self, u_prev, u_next, params, dt, reference=None) -> torch.Tensor:
        den = self.normalizer.denormalize
        return self.reward(den(u_prev), den(u_next), params, dt, None if reference is None else den(reference))

    def __call__(self, u, coords, params, dt) -> torch.Tensor:
        """u: [B, N, C] -> the chosen next state [B, N, C]."""
        cands = self._propose(u, coords, params, dt)
        scores = torch.stack([self._score(u, c, params, dt, cands[0]) for c in cands])  # [K, B]
        for k in range(cands.shape[0]):
            prev = cands[k]
            for _ in range(self.ttc_cfg.horizon - 1):
                cur = self._deterministic(prev, coords, params, dt)
                scores[k] += self._score(prev, cur, params, dt)
                prev = cur
        best = scores.argmax(dim=0)  # [B]: per sample
        return cands[best, torch.arange(u.shape[0])]


def ttc_rollout_fn(surrogate, normalizer: Normalizer, reward: PhysicsReward, ttc_cfg: TTCConfig,
                   *, seed: int = 0, max_principle: bool = False):
    """A rollout function (see ``ups.eval.evaluate``) with best-of-K TTC over a corrected ``surrogate``;
    ``.stepper.evaluations`` counts its surrogate steps."""
    from ups.rollout import clamp_to_bounds, initial_bounds

    stepper = TTCStepper(surrogate=surrogate, normalizer=normalizer, reward=reward, ttc_cfg=ttc_cfg,
                         generator=torch.Generator().manual_seed(seed))

    @torch.inference_mode()
    def rollout(u0, coords, params, dt, steps):
        frames, u = [], u0
        bounds = initial_bounds(u0) if max_principle else None
        for _ in range(steps):
            u = clamp_to_bounds(stepper(u, coords, params, dt), bounds)
            frames.append(u)
        return torch.stack(frames, dim=1)

    rollout.stepper = stepper  # type: ignore[attr-defined]
    return rollout
