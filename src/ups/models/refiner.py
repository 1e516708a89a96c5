"""Physical-space refiner (PDE-Refiner style): corrects the operator's decoded prediction on the data grid.

Notation (all fields normalised, at the data points, ``[B, N, C]``): ``u_prev`` the state the step
starts from, ``u_pred`` the frozen operator's prediction of the next state, ``u_true`` the truth,
``cond`` the PDE parameters and dt ``[B, P + 1]``. One network ``f(x, k | u_prev, u_pred, cond)``
serves K + 1 levels ``k = 0..K``:

- level 0, the correction: ``u_0 = u_pred + s * f(u_pred, 0)``; trained on ``f -> (u_true - u_pred) / s``
  (``s`` per channel: the residual's scale, measured on the first training batches and stored as a
  buffer). The zero-initialised output layer makes an untrained refiner the identity.
- levels ``k = 1..K``, denoising with standard deviations decaying geometrically,
  ``sigma_k = sigma_min ** (k / (2 K))`` (PDE-Refiner: variance ``sigma_min ** (k / K)``; K = 3 and
  sigma_min = 4e-7 give 0.086, 7.4e-3, 6.3e-4)::

      x_k = u_{k-1} + sigma_k * eps          (eps ~ N(0, I); eps = 0 on the deterministic path)
      u_k = x_k - sigma_k * f(x_k, k)        (f predicts the noise)

  trained on ``x = u_true + sigma_k eps``, ``f -> eps`` (the small levels teach the low-amplitude,
  high-frequency detail a plain MSE fit neglects).

With ``conserve_mean`` the refined field is shifted to the spatial mean of ``u_prev`` (for PDEs that
conserve it exactly, periodic Burgers and KS): a small biased correction would otherwise drift the
mean a little every step. K + 1 network calls per step. Networks live in ``REFINER_NETS`` (registry);
``conv_unet`` is a small U-Net over the grid (1D or 2D, circular padding on periodic domains) with FiLM
conditioning on the level and ``cond``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from ups.config import Strict
from ups.errors import UPSError
from ups.models.corrector import WrappedSurrogate
from ups.registry import Registry

REFINER_NETS: Registry = Registry("refiner network")


class RefinerConfig(Strict):
    """The refiner's network and its noise ladder."""

    net: str = "conv_unet"  # REFINER_NETS
    width: int = Field(32, ge=4)
    depth: int = Field(2, ge=0)  # down-samplings of the U-Net (the grid must divide by 2**depth)
    kernel: int = Field(5, ge=1)
    steps: int = Field(3, ge=0)  # K denoising levels after the correction (0: the correction alone)
    sigma_min: float = Field(4e-7, gt=0, lt=1)
    conserve_mean: bool = False  # the refined field keeps the spatial mean of u_prev (periodic Burgers, KS)
    # share of each training batch the denoising loss is computed on (the correction loss sees every pair): under
    # a small budget the denoising levels cost half of every step and validation may still keep 0 of them
    denoise_fraction: float = Field(1.0, gt=0, le=1)


def noise_levels(steps: int, sigma_min: float) -> torch.Tensor:
    """Standard deviations ``sigma_k = sigma_min ** (k / (2 K))``, k = 1..K.  # -> [K] (float64)"""
    if steps < 0:
        raise UPSError(f"refiner steps={steps}: must be >= 0")
    if not 0.0 < sigma_min < 1.0:
        raise UPSError(f"refiner sigma_min={sigma_min}: must lie in (0, 1)")
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    return torch.tensor(sigma_min, dtype=torch.float64) ** (k / (2 * steps)) if steps else k


# ------------------------------------------------------------------------------------------ network
class FiLMBlock(nn.Module):
    """Two convolutions with a residual path, modulated (scale, shift) by the condition embedding."""

    def __init__(self, *, conv: type, width: int, kernel: int, padding_mode: str):
        super().__init__()
        pad = kernel // 2
        self.conv1 = conv(width, width, kernel, padding=pad, padding_mode=padding_mode)
        self.conv2 = conv(width, width, kernel, padding=pad, padding_mode=padding_mode)
        self.film = nn.Linear(width, 2 * width)
        self.act = nn.GELU()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h: [B, W, *spatial]; c: [B, W] -> [B, W, *spatial]."""
        scale, shift = self.film(c).chunk(2, dim=-1)
        view = (h.shape[0], h.shape[1]) + (1,) * (h.ndim - 2)
        g = self.act(self.conv1(h)) * (1.0 + scale.view(view)) + shift.view(view)
        return h + self.conv2(self.act(g))


@REFINER_NETS.register("conv_unet")
class ConvUNet(nn.Module):
    """A small U-Net over a 1D or 2D grid: in_ch -> out_ch channels, conditioned on a vector [B, W]."""

    def __init__(self, *, dims: int, in_ch: int, out_ch: int, config: RefinerConfig, periodic: bool):
        super().__init__()
        if dims not in (1, 2):
            raise UPSError(f"the conv_unet refiner works on 1D or 2D grids, not {dims}D")
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        w, mode = config.width, "circular" if periodic else "zeros"
        self.pool = nn.AvgPool1d(2) if dims == 1 else nn.AvgPool2d(2)
        self.inp = conv(in_ch, w, config.kernel, padding=config.kernel // 2, padding_mode=mode)
        block = dict(conv=conv, width=w, kernel=config.kernel, padding_mode=mode)
        self.down = nn.ModuleList(FiLMBlock(**block) for _ in range(config.depth))
        self.mid = FiLMBlock(**block)
        self.up = nn.ModuleList(FiLMBlock(**block) for _ in range(config.depth))
        self.merge = nn.ModuleList(conv(2 * w, w, 1) for _ in range(config.depth))
        self.out = conv(w, out_ch, 1)
        nn.init.zeros_(self.out.weight)  # an untrained refiner is the identity
        nn.init.zeros_(self.out.bias)
        self.multiple = 2**config.depth

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, *spatial]; c: [B, W] -> [B, out_ch, *spatial]."""
        if any(n % self.multiple for n in x.shape[2:]):
            raise UPSError(f"the refiner's grid {tuple(x.shape[2:])} must divide by {self.multiple} "
                           "(lower stages.diff_residual.refiner.depth)")
        h, skips = self.inp(x), []
        for block in self.down:
            h = block(h, c)
            skips.append(h)
            h = self.pool(h)
        h = self.mid(h, c)
        for block, merge in zip(self.up, self.merge):
            h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            h = block(merge(torch.cat([h, skips.pop()], dim=1)), c)
        return self.out(h)


class FieldRefiner(nn.Module):
    """The K + 1 level refiner of a field on the data grid (see the module docstring).

    Buffers (saved with the weights): ``res_scale`` [C] the level-0 residual's scale ``s``,
    ``stats_updates`` the batches it was measured on (0: not measured yet).
    """

    def __init__(self, *, channels: int, n_cond: int, spatial_shape: tuple[int, ...], periodic: bool,
                 config: RefinerConfig | None = None):
        super().__init__()
        cfg = config or RefinerConfig()
        self.config, self.channels, self.n_cond = cfg, channels, n_cond
        self.spatial_shape, self.periodic = tuple(int(n) for n in spatial_shape), periodic
        w = cfg.width
        self.net = REFINER_NETS.get(cfg.net)(dims=len(self.spatial_shape), in_ch=4 * channels, out_ch=channels,
                                             config=cfg, periodic=periodic)
        self.level = nn.Embedding(cfg.steps + 1, w)
        self.cond_mlp = nn.Sequential(nn.Linear(n_cond, w), nn.SiLU(), nn.Linear(w, w)) if n_cond else None
        self.register_buffer("sigmas", noise_levels(cfg.steps, cfg.sigma_min).float(), persistent=False)
        self.register_buffer("res_scale", torch.ones(channels))
        self.register_buffer("stats_updates", torch.zeros(()))

    @property
    def calls(self) -> int:
        """Network calls per refined step (K + 1)."""
        return self.config.steps + 1

    @torch.no_grad()
    def update_scale(self, residual: torch.Tensor) -> None:
        """Fold a batch of residuals ``u_true - u_pred`` [B, N, C] into the running RMS ``res_scale``."""
        n = float(self.stats_updates)
        rms2 = residual.pow(2).flatten(0, -2).mean(0)
        self.res_scale.copy_(((self.res_scale.pow(2) * n + rms2) / (n + 1)).sqrt().clamp_min(1e-6)
                             if n > 0 else rms2.sqrt().clamp_min(1e-6))
        self.stats_updates.add_(1)

    def _grid(self, u: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, C, *spatial] (1D: any N; 2D: the training grid)."""
        shape = (u.shape[1],) if len(self.spatial_shape) == 1 else self.spatial_shape
        if math.prod(shape) != u.shape[1]:
            raise UPSError(f"the physical refiner works on the {self.spatial_shape} grid it was trained on, got "
                           f"{u.shape[1]} points: evaluate without the corrector (--corrector none)")
        return u.transpose(1, 2).reshape(u.shape[0], u.shape[2], *shape)

    def forward(self, x: torch.Tensor, level: torch.Tensor, u_prev: torch.Tensor, u_pred: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """Network output. x, u_prev, u_pred: [B, N, C]; level: [B] integer in 0..K; cond: [B, n_cond] -> [B, N, C]."""
        s = self.res_scale
        inp = torch.cat([x, u_prev, u_pred, (x - u_pred) / s], dim=-1)
        c = self.level(level.long())
        if self.cond_mlp is not None:
            if cond is None or cond.shape[-1] != self.n_cond:
                got = None if cond is None else tuple(cond.shape)
                raise UPSError(f"refiner expects a condition vector [B, {self.n_cond}], got {got}")
            c = c + self.cond_mlp(cond.to(x.dtype))
        out = self.net(self._grid(inp), c)  # [B, C, *spatial]
        return out.flatten(2).transpose(1, 2)

    def correct(self, u_prev: torch.Tensor, u_pred: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Level 0: ``u_pred + s * f(u_pred, 0)``. Fields [B, N, C]; cond [B, n_cond] -> [B, N, C]."""
        zero = torch.zeros(u_pred.shape[0], dtype=torch.long, device=u_pred.device)
        return u_pred + self.res_scale * self(u_pred, zero, u_prev, u_pred, cond)

    def denoise(self, u: torch.Tensor, k: int, u_prev: torch.Tensor, u_pred: torch.Tensor,
                cond: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Level ``k`` >= 1: ``x = u + sigma_k eps``, ``x - sigma_k f(x, k)`` (eps None: 0). Fields [B, N, C]."""
        sigma = self.sigmas[k - 1]
        x = u if eps is None else u + sigma * eps
        level = torch.full((u.shape[0],), k, dtype=torch.long, device=u.device)
        return x - sigma * self(x, level, u_prev, u_pred, cond)

    def refine(self, u_prev: torch.Tensor, u_pred: torch.Tensor, cond: torch.Tensor | None = None,
               steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The correction then ``steps`` (default K) denoising levels. Fields [B, N, C] -> [B, N, C].

        Deterministic (eps = 0) unless ``generator`` is given (one noise draw per level: a sample)."""
        k_max = self.config.steps if steps is None else steps
        if not 0 <= k_max <= self.config.steps:
            raise UPSError(f"refine steps={k_max}: this refiner was trained with {self.config.steps} levels")
        u = self.correct(u_prev, u_pred, cond)
        for k in range(1, k_max + 1):
            eps = None if generator is None else torch.randn(
                u.shape, generator=generator, device=generator.device).to(u)
            u = self.denoise(u, k, u_prev, u_pred, cond, eps)
        if self.config.conserve_mean:  # mean over the points, per sample and channel (an affine normaliser keeps it)
            u = u - u.mean(dim=1, keepdim=True) + u_prev.mean(dim=1, keepdim=True)
        return u

    def losses(self, u_prev: torch.Tensor, u_pred: torch.Tensor, u_true: torch.Tensor,
               cond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training losses of one batch of pairs (fields [B, N, C]): ``correct`` (level 0, standardised
        residual) and, when K > 0, ``denoise`` (one random level 1..K per sample, noise prediction, on a random
        ``denoise_fraction`` of the pairs)."""
        zero = torch.zeros(u_pred.shape[0], dtype=torch.long, device=u_pred.device)
        out = {"correct": (self(u_pred, zero, u_prev, u_pred, cond)
                           - (u_true - u_pred) / self.res_scale).pow(2).mean()}
        if self.config.steps:
            m = max(1, math.ceil(self.config.denoise_fraction * u_pred.shape[0]))
            pick = torch.randperm(u_pred.shape[0], device=u_pred.device)[:m] if m < u_pred.shape[0] else slice(None)
            level = torch.randint(1, self.config.steps + 1, (m,), device=u_pred.device)
            sigma = self.sigmas[level - 1].view(-1, *([1] * (u_true.ndim - 1)))
            eps = torch.randn_like(u_true[pick])
            c = None if cond is None else cond[pick]
            out["denoise"] = (self(u_true[pick] + sigma * eps, level, u_prev[pick], u_pred[pick], c)
                              - eps).pow(2).mean()
        return out


class FieldCorrectedSurrogate(WrappedSurrogate):
    """A latent surrogate whose every decoded step is refined on the data grid by a :class:`FieldRefiner`.

    Offers encode / step / decode unchanged plus ``refine_field``, which ``ups.rollout`` applies to the
    decoded field at the data points after every step (re-encoding rollouts: the refined field is what
    the next step encodes; a latent-mode rollout of it is run as a re-encoding one). ``generator=None``
    refines along the deterministic path with ``steps`` levels; a generator draws one stochastic sample
    through all K levels per step.
    """

    def step(self, z: torch.Tensor, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """The operator's latent step (unrefined). z: [B, L, D] -> [B, L, D]."""
        return self.model.step(z, params, dt)

    def refine_field(self, u_prev: torch.Tensor, u_pred: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """u_prev, u_pred: [B, N, C] at the data points; params [B, P]; dt [B] -> refined [B, N, C].

        Deterministic: the wrapper's ``steps`` levels (chosen on validation). With a generator: one
        PDE-Refiner sample through all K noised levels (what TTC draws its candidates from)."""
        from ups.models.corrector import condition_vector

        generator = generator or self.generator
        return self.corrector.refine(u_prev, u_pred, condition_vector(params, dt),
                                     steps=self.steps if generator is None else None, generator=generator)

    def next_field(self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """One refined re-encoding step. u: [B, N, C]; coords: [B, N, d] -> [B, N, C]."""
        u_pred = self.model.decode(self.model.step(self.model.encode(u, coords), params, dt), coords, u)
        return self.refine_field(u, u_pred, params, dt, generator)

    def forward(self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """As :meth:`next_field` (deterministic unless the wrapper holds a generator)."""
        return self.next_field(u, coords, params, dt)
