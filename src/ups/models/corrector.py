"""Stochastic latent corrector: a flow-matching model of the operator's one-step residual.

Notation: ``z = E(u_t)`` the encoded state, ``z_pred = Op(z)`` the frozen operator's prediction,
``r = E(u_{t+1}) - z_pred`` the residual. The corrector works on the *standardised* residual
``x1 = (r - m) / s`` (``m, s`` per latent feature, measured on training batches, stored as buffers).

Noise process (rectified flow / conditional flow matching, straight paths). With the noise level
``tau`` in [0, 1] (0: clean, 1: pure noise) and ``eps ~ N(0, I)``::

    x_tau = (1 - tau) * x1 + tau * eps                       (noising)
    E[x_tau] = (1 - tau) * E[x1],  Var[x_tau] = (1 - tau)^2 Var[x1] + tau^2        (its statistics)
    v* = d x_tau / d tau = eps - x1                            (velocity target)
    L = E_{tau, eps} || v_theta(x_tau, tau | z_pred, cond) - (eps - x1) ||^2

``tau`` is drawn uniformly or from Beta(a, b) (config). The clean estimate implied at any level is
``x1_hat = x_tau - tau * v_theta`` and the noise estimate ``eps_hat = x_tau + (1 - tau) * v_theta``.

Sampling integrates ``dx/dtau = v_theta`` from ``tau = 1`` (``x = eps``) to ``tau = 0`` with Euler
(or Heun: ``x' = x + h/2 (v(x, tau) + v(x + h v, tau + h))``, 2nd order; Euler under-disperses a
Gaussian by ~20 % with 8 steps, Heun is within ~2 % with 4) steps on a decreasing grid
``1 = tau_0 > ... > tau_K = 0``: uniform, or geometric down to ``tau_min``
(PDE-Refiner's ladder of noise levels: ``tau_k = tau_min^(k / (K - 1))``, then 0), so that the last
steps refine small-amplitude detail. On straight paths an Euler step is the same as re-noising the
clean estimate with the noise estimate, ``x_{tau'} = (1 - tau') x1_hat + tau' eps_hat``, which is why
the distilled student (``ups.training.stages.consistency_distill``) is sampled by the very same code
with 1 or 2 steps. Stochastic: ``eps`` drawn from the given generator (a sample of the conditional
residual distribution). Deterministic: ``eps = 0``, the noise mean; for a Gaussian residual the flow
maps it exactly to the conditional mean. The corrected latent is ``z_pred + m + s * x1_hat``.

Why flow matching and not PDE-Refiner's K fixed levels: the straight path gives exact, testable
noise statistics at any ``tau``, a sampler whose spread reproduces the residual's spread, and a
consistency target (the teacher's endpoint on the same path) that is never zero by construction.

Network: a DiT-style token transformer over the L latent tokens. Input per token:
``Linear([x_tau, (z_pred - mu_z) / sd_z])``; every block is modulated by adaptive layer norm from an
embedding of ``tau`` (sinusoidal) plus the condition vector (PDE parameters and dt), with the
modulation and the output layer zero-initialised, so an untrained corrector predicts ``v = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from ups.config import Strict
from ups.errors import ConfigError, UPSError


class CorrectorConfig(Strict):
    """Size of the corrector network and its noise process / sampler."""

    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    attention: bool = True  # False: a token-wise MLP (no mixing between latent tokens)
    tau_features: int = 32
    steps: int = 4  # default number of denoising (Euler) steps in ``refine``
    schedule: Literal["uniform", "geometric"] = "uniform"  # see ``TAU_SCHEDULES``
    tau_min: float = 0.02  # smallest non-zero noise level of the geometric schedule
    solver: Literal["euler", "heun"] = "euler"  # heun: 2nd order, 2 network calls per step but the last


# ------------------------------------------------------------------------------------ noise process
def noise(x1: torch.Tensor, tau: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``x_tau = (1 - tau) x1 + tau eps``. x1, eps: [B, L, D]; tau: [B] -> [B, L, D]."""
    t = tau.view(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
    return (1.0 - t) * x1 + t * eps


def velocity_target(x1: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``v* = eps - x1``. x1, eps: [B, L, D] -> [B, L, D]."""
    return eps - x1


def noised_statistics(mean: torch.Tensor, var: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``x_tau`` when ``x1`` has ``mean``/``var`` (any shape) and eps ~ N(0, 1)."""
    return (1.0 - tau) * mean, (1.0 - tau) ** 2 * var + tau**2


def _uniform_grid(steps: int, tau_min: float) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, steps + 1)


def _geometric_grid(steps: int, tau_min: float) -> torch.Tensor:
    if steps == 1:
        return torch.tensor([1.0, 0.0])
    k = torch.arange(steps, dtype=torch.float64)
    levels = torch.tensor(tau_min, dtype=torch.float64) ** (k / (steps - 1))
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)]).float()


TAU_SCHEDULES: dict[str, Callable[[int, float], torch.Tensor]] = {
    "uniform": _uniform_grid,
    "geometric": _geometric_grid,
}


def tau_grid(steps: int, schedule: str = "uniform", tau_min: float = 0.02) -> torch.Tensor:
    """Decreasing noise levels ``1 = tau_0 > ... > tau_steps = 0``.  # -> [steps + 1]"""
    if steps < 1:
        raise UPSError(f"refinement steps={steps}: need at least 1")
    if schedule not in TAU_SCHEDULES:
        raise UPSError(f"unknown tau schedule '{schedule}' (allowed: {', '.join(sorted(TAU_SCHEDULES))})")
    if not 0.0 < tau_min < 1.0:
        raise UPSError(f"tau_min={tau_min}: must lie in (0, 1)")
    return TAU_SCHEDULES[schedule](steps, tau_min)


def sample_tau(
    n: int, *, distribution: str = "uniform", beta: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` noise levels in [0, 1]: uniform, or Beta(a, b) (sampled from the generator).  # -> [n]"""
    if distribution == "uniform":
        return torch.rand(n, generator=generator).to(device)
    if distribution == "beta":
        # torch.distributions takes no generator: draw a seed from it and sample under a forked CPU RNG,
        # so that a given generator gives the same taus (and the global RNG is left untouched).
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.distributions.Beta(float(beta[0]), float(beta[1])).sample((n,)).to(device)
    raise UPSError(f"unknown tau distribution '{distribution}' (allowed: beta, uniform)")


# ------------------------------------------------------------------------------------------ network
def timestep_embedding(tau: torch.Tensor, features: int) -> torch.Tensor:
    """Sinusoidal embedding of the noise level. tau: [B] -> [B, features]."""
    half = features // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)
    angles = 100.0 * tau.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: [B, L, W]; shift, scale: [B, W]."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class AdaLNBlock(nn.Module):
    """Pre-norm transformer (or MLP-only) block modulated by a global condition, zero-initialised."""

    def __init__(self, *, width: int, heads: int, mlp_ratio: float, attention: bool):
        super().__init__()
        self.attention = attention
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True) if attention else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: [B, L, W]; c: [B, W] -> [B, L, W]."""
        s1, g1, a1, s2, g2, a2 = self.ada(c).chunk(6, dim=-1)
        if self.attn is not None:
            h = _modulate(self.norm1(x), s1, g1)
            x = x + a1[:, None, :] * self.attn(h, h, h, need_weights=False)[0]
        return x + a2[:, None, :] * self.mlp(_modulate(self.norm2(x), s2, g2))


class Corrector(nn.Module):
    """Velocity network ``v_theta(x_tau, tau | z_pred, cond)`` plus the residual statistics and sampler.

    Buffers (saved with the weights): ``res_mean``/``res_std`` [D] standardise the residual,
    ``z_mean``/``z_std`` [D] standardise the conditioning prediction, ``stats_count`` counts the
    tokens and ``stats_updates`` the batches they were measured on (0: not measured yet).
    """

    def __init__(self, *, latent_dim: int, n_cond: int, config: CorrectorConfig | None = None):
        super().__init__()
        config = config or CorrectorConfig()
        if config.attention and config.width % config.heads:
            raise UPSError(f"corrector width={config.width} must be divisible by heads={config.heads}")
        self.config, self.latent_dim, self.n_cond = config, latent_dim, n_cond
        w = config.width
        self.inp = nn.Linear(2 * latent_dim, w)
        self.tau_mlp = nn.Sequential(nn.Linear(config.tau_features, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_mlp = nn.Sequential(nn.Linear(n_cond, w), nn.SiLU(), nn.Linear(w, w)) if n_cond else None
        self.blocks = nn.ModuleList(
            AdaLNBlock(width=w, heads=config.heads, mlp_ratio=config.mlp_ratio, attention=config.attention)
            for _ in range(config.depth)
        )
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False)
        self.ada_out = nn.Linear(w, 2 * w)
        self.out = nn.Linear(w, latent_dim)
        for lin in (self.ada_out, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for name, value in (("res_mean", 0.0), ("res_std", 1.0), ("z_mean", 0.0), ("z_std", 1.0)):
            self.register_buffer(name, torch.full((latent_dim,), value))
        self.register_buffer("stats_count", torch.zeros(()))
        self.register_buffer("stats_updates", torch.zeros(()))

    # ---------------------------------------------------------------------------- statistics
    @torch.no_grad()
    def update_statistics(self, residual: torch.Tensor, z_pred: torch.Tensor) -> None:
        """Fold a batch into the running per-feature statistics. residual, z_pred: [B, L, D]."""
        n_new = residual.shape[0] * residual.shape[1]
        n_old = float(self.stats_count)
        for (mean, std), x in (((self.res_mean, self.res_std), residual), ((self.z_mean, self.z_std), z_pred)):
            flat = x.reshape(-1, x.shape[-1]).float()
            m_b, v_b = flat.mean(0), flat.var(0, unbiased=False)
            var_old = std.pow(2) if n_old > 0 else torch.zeros_like(std)
            tot = n_old + n_new
            delta = m_b - mean
            new_mean = mean + delta * n_new / tot
            new_var = (var_old * n_old + v_b * n_new + delta.pow(2) * n_old * n_new / tot) / tot
            mean.copy_(new_mean)
            std.copy_(new_var.sqrt().clamp_min(1e-6))
        self.stats_count.fill_(n_old + n_new)
        self.stats_updates.add_(1)

    def standardise(self, residual: torch.Tensor) -> torch.Tensor:
        """Raw residual [B, L, D] -> standardised residual x1 [B, L, D]."""
        return (residual - self.res_mean) / self.res_std

    def unstandardise(self, x1: torch.Tensor) -> torch.Tensor:
        """Standardised residual x1 [B, L, D] -> raw latent residual [B, L, D]."""
        return x1 * self.res_std + self.res_mean

    # ------------------------------------------------------------------------------- network
    def forward(
        self, x: torch.Tensor, tau: torch.Tensor, z_pred: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity. x: [B, L, D] noised standardised residual; tau: [B]; z_pred: [B, L, D] raw operator
        prediction; cond: [B, n_cond] (PDE parameters and dt) -> v [B, L, D]."""
        zs = (z_pred - self.z_mean) / self.z_std
        h = self.inp(torch.cat([x, zs.to(x.dtype)], dim=-1))
        c = self.tau_mlp(timestep_embedding(tau, self.config.tau_features).to(h.dtype))
        if self.cond_mlp is not None:
            if cond is None or cond.shape[-1] != self.n_cond:
                got = None if cond is None else tuple(cond.shape)
                raise UPSError(f"corrector expects a condition vector [B, {self.n_cond}], got {got}")
            c = c + self.cond_mlp(cond.to(h.dtype))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(_modulate(self.norm_out(h), shift, scale))

    def clean_estimate(
        self, x: torch.Tensor, tau: torch.Tensor, z_pred: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One-jump estimate ``x1_hat = x - tau v`` of the standardised residual. Shapes as ``forward``."""
        return x - tau.view(-1, 1, 1).to(x.dtype) * self(x, tau, z_pred, cond)

    # ------------------------------------------------------------------------------- sampling
    def sample(
        self, z_pred: torch.Tensor, cond: torch.Tensor | None = None, *, steps: int | None = None,
        eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Standardised residual sample by ``steps`` Euler steps from tau = 1 to 0.

        z_pred: [B, L, D]; cond: [B, n_cond]; eps: [B, L, D] starting noise (default: drawn from
        ``generator`` when given, else zeros = the deterministic mean path) -> x1 [B, L, D].
        """
        config = self.config
        grid = tau_grid(steps or config.steps, config.schedule, config.tau_min).to(z_pred.device)
        if eps is None:
            eps = (
                torch.randn(z_pred.shape, generator=generator, device=generator.device).to(z_pred)
                if generator is not None else torch.zeros_like(z_pred)
            )
        x = eps
        ones = torch.ones(z_pred.shape[0], device=z_pred.device, dtype=z_pred.dtype)
        heun = config.solver == "heun"
        for k in range(grid.numel() - 1):
            t, t_next = float(grid[k]), float(grid[k + 1])
            v = self(x, ones * t, z_pred, cond)
            x_euler = x + (t_next - t) * v
            if heun and t_next > 0.0:  # trapezoidal correction (EDM's 2nd-order step); last step Euler
                x_euler = x + 0.5 * (t_next - t) * (v + self(x_euler, ones * t_next, z_pred, cond))
            x = x_euler
        return x

    def refine(
        self, z_pred: torch.Tensor, cond: torch.Tensor | None = None, steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Corrected latent ``z_pred + residual``. z_pred: [B, L, D]; cond: [B, n_cond] -> [B, L, D].

        Stochastic when ``generator`` is given (one sample of the residual distribution), otherwise
        the deterministic mean path (eps = 0).
        """
        return z_pred + self.unstandardise(self.sample(z_pred, cond, steps=steps, generator=generator))


def condition_vector(params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """The corrector's condition: PDE parameters and the time step. params: [B, P]; dt: [B] -> [B, P + 1]."""
    return torch.cat([params.float(), dt.float().view(-1, 1)], dim=-1)


def require_one_frame_per_step(frames: int) -> None:
    """A corrector refines one frame per operator step: one line refusing an operator that advances ``frames`` > 1
    (``model.params.frames_per_step``), for the wrappers here and for the stage that trains a corrector."""
    if frames > 1:
        raise ConfigError(f"a corrector refines one frame per operator step, but this operator advances {frames} "
                          f"(model.params.frames_per_step): train the operator with frames_per_step 1 to correct it")


class WrappedSurrogate(nn.Module):
    """A latent surrogate ``model`` with a corrector beside it: encode / decode, ``latent_dim`` and
    ``num_latents`` are the model's; subclasses say how the corrector refines a step. ``generator=None``:
    the deterministic path; a generator draws one stochastic sample per step."""

    def __init__(self, *, model: nn.Module, corrector: nn.Module, steps: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        require_one_frame_per_step(int(getattr(model, "frames_per_step", 1)))
        self.model, self.corrector, self.steps, self.generator = model, corrector, steps, generator

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def num_latents(self) -> int:
        return self.model.num_latents

    @property
    def periodic(self) -> bool:
        return bool(getattr(self.model, "periodic", False))

    @property
    def grid_spacing(self) -> tuple[float, ...] | None:
        return getattr(self.model, "grid_spacing", None)

    def encode(self, u: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """u: [B, N, C]; coords: [B, N, d] -> z [B, L, D]."""
        return self.model.encode(u, coords)

    def decode(self, z: torch.Tensor, coords_q: torch.Tensor, u_q: torch.Tensor | None = None) -> torch.Tensor:
        """z: [B, L, D]; coords_q: [B, Q, d]; u_q: [B, Q, C] or None -> [B, Q, C]."""
        return self.model.decode(z, coords_q, u_q)


class CorrectedSurrogate(WrappedSurrogate):
    """A latent surrogate whose every step is refined by a corrector: ``step = refine(model.step(z))``.

    Offers the surrogate interface (encode / step / decode, latent_dim, num_latents), so every rollout
    (latent or re-encoding, any query points) works unchanged with a corrector. ``generator=None``
    refines along the deterministic mean path; a generator draws one stochastic sample per step.
    """

    def step(self, z: torch.Tensor, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """z: [B, L, D]; params: [B, P]; dt: [B] -> refined z_next [B, L, D]."""
        z_pred = self.model.step(z, params, dt)
        return self.corrector.refine(z_pred, condition_vector(params, dt), steps=self.steps, generator=self.generator)

    def next_field(self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """One corrected re-encoding step at the input points, stochastic with ``generator``.
        u: [B, N, C]; coords: [B, N, d] -> [B, N, C]."""
        z_pred = self.model.step(self.encode(u, coords), params, dt)
        z = self.corrector.refine(z_pred, condition_vector(params, dt), steps=self.steps,
                                  generator=generator or self.generator)
        return self.decode(z, coords, u)

    def forward(self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One corrected re-encoding step at the input points. u: [B, N, C]; coords: [B, N, d] -> [B, N, C]."""
        return self.decode(self.step(self.encode(u, coords), params, dt), coords, u)
