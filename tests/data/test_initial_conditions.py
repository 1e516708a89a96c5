"""PDEBench sine-sum initial conditions: statistics of a large sample against the recipe."""

from __future__ import annotations

import math

import pytest
import torch

from ups.data.pdes import PDES
from ups.data.pdes.base import Grid1D
from ups.data.pdes.initial_conditions import draw_sine_parameters, sample_pdebench_sines, sine_fields, window
from ups.errors import ConfigError

N = 20_000
GRID = Grid1D(resolution=256)


@pytest.fixture(scope="module")
def sample():
    draws = draw_sine_parameters(N, generator=torch.Generator().manual_seed(2024))
    return draws, sine_fields(draws, GRID.x)


def test_shares_of_absolute_and_windowed(sample):
    draws, u = sample
    sigma = math.sqrt(0.1 * 0.9 / N)
    assert abs(draws.absolute.double().mean() - 0.1) < 4 * sigma
    assert abs(draws.windowed.double().mean() - 0.1) < 4 * sigma
    assert abs((draws.sign > 0).double().mean() - 0.5) < 4 * math.sqrt(0.25 / N)
    # |u| samples keep one sign everywhere (sign flip after the absolute value)
    absu = u[draws.absolute] * draws.sign[draws.absolute, None]
    assert (absu >= 0).all()
    # windowed samples, recognised from the fields alone: near zero within 0.05 of both ends
    x = GRID.x
    edges = (x < 0.05) | (x > 0.95)
    looks_windowed = u[:, edges].abs().amax(dim=1) < 1e-3
    assert (looks_windowed != draws.windowed).sum() <= 2
    # the mask: 1/2 at each edge, ~1 between them, ~0 outside
    xs = torch.tensor([0.3, 0.5, 0.7, 0.05], dtype=torch.float64)
    mask = window(xs, torch.tensor([0.3]), torch.tensor([0.7]), 0.01)[0]
    assert torch.allclose(mask, torch.tensor([0.5, 1.0, 0.5, 0.0], dtype=torch.float64), atol=1e-8)


def test_random_mean_offset(sample):
    draws, u = sample
    plain = ~draws.absolute & ~draws.windowed
    means = u[plain].mean(dim=1)
    # undrawn modes have wavenumber 0 and add amp * sin(phase): the mean is their sum (times the sign)
    undrawn = draws.counts[plain] == 0
    predicted = (draws.amplitude[plain] * torch.sin(draws.phase[plain]) * undrawn).sum(dim=1) * draws.sign[plain]
    assert (means - predicted).abs().max() < 0.02  # drawn modes' sines average out to O(dx)
    # amp ~ U(0,1), phase ~ U(0,2pi): Var(amp sin) = 1/3 * 1/2; 2 undrawn modes w.p. 3/4, 3 w.p. 1/4
    assert abs(float(means.std()) - math.sqrt(0.75 * 2 / 6 + 0.25 * 3 / 6)) < 0.02
    assert abs(float(means.mean())) < 0.03
    assert means.abs().max() <= 3.0
    assert float((means.abs() <= 1.5).double().mean()) > 0.95
    assert float(means.min()) < -1.5 and float(means.max()) > 1.5  # the offsets span about [-1.5, 1.5]


def test_wavenumber_content(sample):
    draws, u = sample
    plain = ~draws.absolute & ~draws.windowed
    spec = torch.fft.rfft(u[plain] - u[plain].mean(dim=1, keepdim=True), dim=1).abs() ** 2
    energy = spec[:, 1:] / spec[:, 1:].sum(dim=1, keepdim=True)  # modes 1 .. X/2
    dominant = energy.argmax(dim=1) + 1
    assert set(dominant.tolist()) <= set(range(1, 9))
    assert {6, 8} <= set(dominant.tolist())  # doubled wavenumbers of modes 3 and 4
    # the energy sits on the drawn modes k * n (n = times drawn), up to the O(dx) leakage of the span 1 - dx
    k = torch.arange(1, 5)
    on_drawn = torch.zeros_like(energy)
    for j in range(4):
        wn = (k[j] * draws.counts[plain][:, j]).clamp(min=1) - 1
        hit = draws.counts[plain][:, j] > 0
        on_drawn[hit, wn[hit]] = energy[hit, wn[hit]]
    assert (on_drawn.sum(dim=1) > 0.97).float().mean() > 0.99
    # a mode drawn twice (probability 1/4) is a single doubled wavenumber; 6 or 8 only come from modes 3, 4
    only_6_or_8 = (energy[:, 5] + energy[:, 7]) > 0.97
    assert abs(float(only_6_or_8.double().mean()) - 2 / 16) < 0.015


def test_seeded_and_registered():
    pde = PDES.get("burgers1d")()
    a = pde.sample_initial(16, generator=torch.Generator().manual_seed(7), grid=GRID)
    b = sample_pdebench_sines(16, generator=torch.Generator().manual_seed(7), x=GRID.x)
    c = pde.sample_initial(16, generator=torch.Generator().manual_seed(8), grid=GRID)
    assert a.shape == (16, 256) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="abs_prob"):
        draw_sine_parameters(4, generator=torch.Generator(), abs_prob=1.5)
