"""Initial conditions drawn as PDEBench's current 1D generator draws them (sum of sines, k_tot = 4).

Per sample, in this order (SPEC "Reference facts"):

1. each of the ``k_tot`` modes gets an amplitude ``U(0, 1)`` and a phase ``U(0, 2 pi)``;
2. ``num_choice`` mode indices are drawn from ``{1 .. k_tot}`` with replacement; a mode drawn ``n`` times
   gets the wavenumber ``2 pi k n / (x_last - x_first)`` (doubled when drawn twice; the length is
   ``L - dx``, not ``L``), an undrawn mode gets wavenumber 0 and adds the constant ``amp * sin(phase)``,
   so every sample has a random mean;
3. ``u = sum_k amp_k sin(kk_k x + phase_k)``;
4. with probability ``abs_prob`` the sample is replaced by ``|u|``;
5. every sample is multiplied by a random sign +-1;
6. with probability ``window_prob`` the sample is multiplied by
   ``0.5 (tanh((x - xL)/w) - tanh((x - xR)/w))``, ``xL ~ U(0.1, 0.45) L``, ``xR ~ U(0.55, 0.9) L``,
   ``w = 0.01 L``.

Every random draw is made for every sample (whether used or not), in a fixed order from one
``torch.Generator``, so the stream, and therefore each sample, depends only on the seed and on how
many samples are drawn per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ups.errors import ConfigError


@dataclass(frozen=True)
class SineDraws:
    """The random choices behind a batch of sine-sum initial conditions (all ``[n, ...]``)."""

    amplitude: torch.Tensor  # [n, k_tot] U(0, 1)
    phase: torch.Tensor  # [n, k_tot] U(0, 2 pi)
    counts: torch.Tensor  # [n, k_tot] long, how often each mode index was drawn
    absolute: torch.Tensor  # [n] bool, replaced by |u|
    sign: torch.Tensor  # [n] float64, +-1
    windowed: torch.Tensor  # [n] bool
    x_left: torch.Tensor  # [n] window edges (used where ``windowed``)
    x_right: torch.Tensor  # [n]


def draw_sine_parameters(
    n: int,
    *,
    generator: torch.Generator,
    k_tot: int = 4,
    num_choice: int = 2,
    abs_prob: float = 0.1,
    window_prob: float = 0.1,
    length: float = 1.0,
) -> SineDraws:
    """Draw the random parameters of ``n`` PDEBench sine-sum initial conditions."""
    if n < 0 or k_tot < 1 or num_choice < 1:
        raise ConfigError(f"bad sine-sum settings n={n}, k_tot={k_tot}, num_choice={num_choice}")
    for name, p in (("abs_prob", abs_prob), ("window_prob", window_prob)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{name}={p}: a probability must lie in [0, 1]")
    f64 = {"dtype": torch.float64, "generator": generator}
    amplitude = torch.rand(n, k_tot, **f64)
    phase = 2.0 * math.pi * torch.rand(n, k_tot, **f64)
    chosen = torch.randint(0, k_tot, (n, num_choice), generator=generator)
    counts = torch.nn.functional.one_hot(chosen, k_tot).sum(dim=1)
    absolute = torch.rand(n, **f64) < abs_prob
    sign = torch.where(torch.rand(n, **f64) < 0.5, 1.0, -1.0).to(torch.float64)
    windowed = torch.rand(n, **f64) < window_prob
    x_left = (0.1 + 0.35 * torch.rand(n, **f64)) * length
    x_right = (0.55 + 0.35 * torch.rand(n, **f64)) * length
    return SineDraws(amplitude, phase, counts, absolute, sign, windowed, x_left, x_right)


def window(x: torch.Tensor, x_left: torch.Tensor, x_right: torch.Tensor, width: float) -> torch.Tensor:
    """``0.5 (tanh((x - xL)/w) - tanh((x - xR)/w))`` for x ``[X]``, xL, xR ``[n]``.  # -> [n, X]"""
    xx = x.unsqueeze(0)
    return 0.5 * (torch.tanh((xx - x_left[:, None]) / width) - torch.tanh((xx - x_right[:, None]) / width))


def sine_fields(draws: SineDraws, x: torch.Tensor, *, length: float = 1.0) -> torch.Tensor:
    """Evaluate the initial conditions of ``draws`` at the points ``x [X]``.  # -> [n, X] float64"""
    x = x.to(torch.float64)
    k_tot = draws.amplitude.shape[1]
    span = float(x[-1] - x[0])
    index = torch.arange(1, k_tot + 1, dtype=torch.float64)
    kk = 2.0 * math.pi * index * draws.counts.to(torch.float64) / span  # [n, k_tot]
    u = (draws.amplitude[..., None] * torch.sin(kk[..., None] * x + draws.phase[..., None])).sum(dim=1)
    u = torch.where(draws.absolute[:, None], u.abs(), u)
    u = u * draws.sign[:, None]
    mask = window(x, draws.x_left, draws.x_right, 0.01 * length)
    return torch.where(draws.windowed[:, None], u * mask, u)


def sample_pdebench_sines(
    n: int, *, generator: torch.Generator, x: torch.Tensor, length: float = 1.0, **settings
) -> torch.Tensor:
    """``n`` PDEBench sine-sum initial conditions at the points ``x [X]``.  # -> [n, X] float64

    ``settings`` go to :func:`draw_sine_parameters` (``k_tot``, ``num_choice``, ``abs_prob``,
    ``window_prob``).
    """
    draws = draw_sine_parameters(n, generator=generator, length=length, **settings)
    return sine_fields(draws, x, length=length)
