"""Burgers solver: Cole-Hopf exact solutions, resolution convergence, mass conservation, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ups.data.pdes import PDES
from ups.data.pdes.burgers import Burgers1D, BurgersParams
from ups.data.pdes.spectral import coefficients, evaluate, fft_size, resample
from ups.errors import ConfigError, UPSError


def cole_hopf(x: np.ndarray, t: float, eps: float, mean: float = 0.0, dy: float = 1e-3) -> np.ndarray:
    """Exact solution of u_t + u u_x = eps u_xx with u0 = mean + sin(2 pi x), by quadrature.

    Cole-Hopf: u = -2 eps phi_x / phi with phi the heat-equation solution from
    phi0 = exp(-F / (2 eps)), F(y) = int_0^y sin(2 pi s) ds. Then
    u(x, t) = int (x - y)/t exp(-G/(2 eps)) dy / int exp(-G/(2 eps)) dy, G = (x - y)^2/(2t) + F(y),
    a Gaussian-weighted integral evaluated by the trapezoid rule on a fine line grid (log-sum-exp
    stabilised). A constant mean travels by the Galilean shift x -> x - mean t.
    """
    xs = (x - mean * t)[:, None]
    reach = 12.0 * math.sqrt(2.0 * eps * t)
    y = np.arange(-1.0 - reach, 2.0 + reach, dy)[None, :]
    expo = -((xs - y) ** 2 / (2.0 * t) + (1.0 - np.cos(2.0 * math.pi * y)) / (2.0 * math.pi)) / (2.0 * eps)
    weight = np.exp(expo - expo.max(axis=1, keepdims=True))
    return mean + ((xs - y) / t * weight).sum(axis=1) / weight.sum(axis=1)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("nu,mean", [(0.1, 0.0), (1.0, 0.0), (0.1, 0.6), (0.01, 0.0)])
def test_matches_cole_hopf(nu, mean):
    solver = Burgers1D()
    p = BurgersParams(nu=nu, resolution=1024, frames=3, t_end=1.0)  # frames at t = 0, 0.5, 1
    x = p.x.numpy()
    u = solver.solve(torch.tensor(mean + np.sin(2 * np.pi * x))[None], params=p)
    assert u.dtype == torch.float64 and u.shape == (1, 3, 1024)
    for frame, t in ((1, 0.5), (2, 1.0)):
        err = rel_l2(u[0, frame], cole_hopf(x, t, nu / math.pi, mean))
        assert err < 1e-6, f"nu={nu} mean={mean} t={t}: relative L2 error {err:.2e}"


def _pdebench_batch(n: int, seed: int, resolution: int = 1024) -> tuple[Burgers1D, torch.Tensor]:
    solver = Burgers1D()
    grid = BurgersParams(resolution=resolution).grid
    return solver, solver.sample_initial(n, generator=torch.Generator().manual_seed(seed), grid=grid)


def test_doubling_internal_resolution_changes_little_at_nu_001():
    solver, u0 = _pdebench_batch(4, seed=5)
    p = BurgersParams(nu=0.01, frames=6, t_end=0.5)
    coarse = solver.solve(u0, params=p)
    n = solver.last_run["internal_resolution"]
    fine_solver = Burgers1D(min_internal=2 * n)
    fine = fine_solver.solve(u0, params=p)
    assert fine_solver.last_run["internal_resolution"] == 2 * n
    diff = ((coarse - fine).norm(dim=(1, 2)) / fine.norm(dim=(1, 2))).max()
    assert diff < 1e-3, f"doubling {n} -> {2 * n} internal points changed the output by {diff:.2e}"


def test_mass_conserved_and_frame0_is_u0():
    solver, u0 = _pdebench_batch(8, seed=11, resolution=256)
    p = BurgersParams(nu=0.01, resolution=256, frames=11, t_end=2.0)
    u = solver.solve(u0, params=p)
    assert torch.equal(u[:, 0], u0)
    # relative to the initial total variation of the field, sum |u0|
    drift = (u.sum(dim=-1) - u0.sum(dim=-1, keepdim=True)).abs().amax(dim=1) / u0.abs().sum(dim=-1)
    assert drift.max() < 1e-8
    assert torch.isfinite(u).all()
    # the maximum principle holds for the viscous solution
    assert (u.amax(dim=(1, 2)) <= u0.amax(dim=1) + 1e-6).all()
    assert (u.amin(dim=(1, 2)) >= u0.amin(dim=1) - 1e-6).all()


def test_registered_and_params():
    pde = PDES.get("burgers1d")()
    assert pde.name == "burgers1d" and pde.param_names == ("nu",)
    p = pde.make_params(nu=0.1)
    assert p.resolution == 1024 and p.frames == 201 and p.dt == pytest.approx(0.01)
    assert p.dx == pytest.approx(1 / 1024) and float(p.x[0]) == pytest.approx(0.5 / 1024)
    assert p.viscosity == pytest.approx(0.1 / math.pi)
    assert float(p.t[-1]) == pytest.approx(2.0)


def test_bad_input():
    solver = Burgers1D()
    with pytest.raises(ConfigError, match="nu=-1"):
        BurgersParams(nu=-1.0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        solver.make_params(viscosity=0.1)
    with pytest.raises(ConfigError, match="does not match"):
        solver.solve(torch.zeros(2, 100), params=BurgersParams(resolution=128))
    with pytest.raises(ConfigError, match="NaN"):
        solver.solve(torch.full((1, 128), float("nan")), params=BurgersParams(resolution=128))
    with pytest.raises(ConfigError, match="max_internal"):
        Burgers1D(max_internal=512).solve(torch.sin(torch.arange(128) / 10.0)[None] * 3, params=BurgersParams(
            nu=0.001, resolution=128, frames=2))
    with pytest.raises(UPSError, match="cfl"):
        Burgers1D(cfl=5.0)


def test_spectral_resampling_is_exact_for_band_limited_fields():
    x64 = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
    x200 = (torch.arange(200, dtype=torch.float64) + 0.5) / 200
    f = lambda x: 0.3 + torch.sin(2 * math.pi * 3 * x) + 0.5 * torch.cos(2 * math.pi * 31 * x + 0.2)  # noqa: E731
    up = resample(f(x64)[None], 200)
    assert torch.allclose(up[0], f(x200), atol=1e-12)
    back = resample(up, 64)
    assert torch.allclose(back[0], f(x64), atol=1e-12)
    # evaluation at any offset: the grid j/64 (offset 0)
    assert torch.allclose(evaluate(coefficients(f(x64)[None]), 64, offset=0.0)[0], f(x64 - 0.5 / 64), atol=1e-12)
    assert [fft_size(n) for n in (1, 5, 1025, 1945, 3073)] == [1, 6, 1152, 2048, 3456]
