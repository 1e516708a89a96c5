"""ns2d: FNO-convention Navier-Stokes: exact Taylor-Green decay, conserved mean, convergence, 2D files end to end."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from ups.cli import main
from ups.config import DataConfig
from ups.data.generate import generate_dataset
from ups.data.pdes.ns2d import GRF_ALPHA, GRF_TAU, NavierStokes2D, NSParams, sample_grf
from ups.data.prepare import prepare_data
from ups.data.reader import TrajectoryFile
from ups.errors import ConfigError


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _initial(n: int = 2, seed: int = 0) -> torch.Tensor:
    p = NSParams()
    return NavierStokes2D().sample_initial(n, generator=torch.Generator().manual_seed(seed), grid=p.grid)


def test_defaults_follow_the_fno_convention():
    p = NSParams()
    assert (p.resolution, p.frames) == (64, 51)
    assert all(math.isclose(a, b) for a, b in ((p.t_end, 50.0), (p.nu, 1e-3), (p.forcing_amp, 0.1)))
    assert math.isclose(p.dt, 1.0) and p.spatial_shape == (64, 64)
    assert torch.allclose(p.x, torch.arange(64, dtype=torch.float64) / 64)  # nodes, as FNO's linspace[:-1]
    with pytest.raises(ConfigError, match="ic_convention"):
        NavierStokes2D(ic_convention="other")


def test_unforced_taylor_green_vortex_decays_exactly():
    p = NSParams(nu=0.01, forcing_amp=0.0, frames=6, t_end=5.0)
    x, y = torch.meshgrid(p.x, p.x, indexing="ij")
    # two vortex patterns on the same Laplacian shell |k|^2 = 2 (2 pi)^2: u . grad w vanishes identically
    w0 = torch.sin(2 * math.pi * x) * torch.sin(2 * math.pi * y) + 0.5 * torch.cos(2 * math.pi * (x - y))
    w = NavierStokes2D().solve(w0[None], params=p)
    exact = w0[None, None] * torch.exp(-0.01 * 8 * math.pi**2 * p.t)[None, :, None, None]
    assert (w - exact).abs().max() < 1e-12


def test_mean_vorticity_is_conserved():
    p = NSParams(frames=4, t_end=3.0)
    w0 = _initial() + 0.25
    w = NavierStokes2D().solve(w0, params=p)
    drift = (w.mean(dim=(-2, -1)) - w0.mean(dim=(-2, -1))[:, None]).abs().max()
    assert drift < 1e-12
    assert _rel(w[:, -1], w0) > 0.1  # the flow evolved


def test_converges_in_step_and_resolution():
    p = NSParams(frames=3, t_end=2.0)
    w0 = _initial()
    base = NavierStokes2D().solve(w0, params=p)[:, -1]
    half_step = NavierStokes2D(cfl=0.5).solve(w0, params=p)[:, -1]
    finer = NavierStokes2D(internal=128).solve(w0, params=p)[:, -1]
    assert _rel(base, half_step) < 1e-6
    assert _rel(base, finer) < 1e-6


def test_initial_field_has_the_fno_covariance():
    size, sigma = 64, GRF_TAU**1.5
    w = sample_grf(64, generator=torch.Generator().manual_seed(5), size=size, sigma=sigma)
    k = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)
    lam = 4 * math.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + GRF_TAU**2
    lam[0, 0] = math.inf  # mode 0 removed
    variance = float((sigma**2 * lam ** (-GRF_ALPHA)).sum())  # pointwise variance of the field
    assert abs(w.mean()) < 0.05 * math.sqrt(variance)
    assert float(w.var()) == pytest.approx(variance, rel=0.25)
    # the paper's printed covariance is the same draw scaled by 7^{-3/4}
    code = NavierStokes2D().sample_initial(2, generator=torch.Generator().manual_seed(1), grid=NSParams().grid)
    paper = NavierStokes2D(ic_convention="paper").sample_initial(2, generator=torch.Generator().manual_seed(1),
                                                                 grid=NSParams().grid)
    assert torch.allclose(paper, code * GRF_TAU**-0.75, rtol=1e-12, atol=1e-15)


def test_generate_info_and_reader_end_to_end(tmp_path, capsys):
    out = tmp_path / "ns.h5"
    generate_dataset(pde="ns2d", params={"nu": 1e-3}, samples=3, seed=4, out=out, resolution=16, frames=3,
                     t_end=2.0, batch_size=2, progress=False)
    with h5py.File(out) as f:
        assert f["tensor"].shape == (3, 3, 16, 16, 1)
        np.testing.assert_allclose(f["y-coordinate"][...], np.arange(16) / 16, rtol=1e-6)
        assert f.attrs["pde"] == "ns2d" and f.attrs["solver_internal"] == 64
        assert "sin(2 pi (x + y))" in f.attrs["solver_equation"]
    file = TrajectoryFile(out)
    assert file.spatial_dims == 2 and file.spatial_shape == (16, 16) and file.params == {"nu": pytest.approx(1e-3)}
    assert file.read(1, [0, 2]).shape == (2, 16, 16, 1)
    bundle = prepare_data(DataConfig(pde="ns2d", train=str(out)), splits=("train",), generate=False)
    assert bundle.meta.spatial_dims == 2 and bundle.meta.spatial_shape == (16, 16) and bundle.meta.n_params == 1
    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spatial_shape"] == [16, 16] and info["pde"] == "ns2d"
