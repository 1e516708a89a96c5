"""advection1d: the spectral shift is the exact solution u0(x - beta t)."""

from __future__ import annotations

import math

import h5py
import pytest
import torch

from ups.data.generate import generate_dataset
from ups.data.pdes import PDES
from ups.data.pdes.advection import Advection1D, AdvectionParams
from ups.errors import ConfigError


def smooth(x: torch.Tensor) -> torch.Tensor:
    return 0.4 + torch.sin(2 * math.pi * 3 * x) + 0.5 * torch.cos(2 * math.pi * 7 * x + 1.0)


@pytest.mark.parametrize("beta", [0.1, 1.0, -2.5, 7.0])
def test_matches_exact_shift(beta):
    p = AdvectionParams(beta=beta, resolution=128, frames=21, t_end=2.0)
    u = Advection1D().solve(smooth(p.x)[None], params=p)
    exact = smooth(p.x[None, :] - beta * p.t[:, None])  # [T, X]
    assert u.shape == (1, 21, 128)
    assert torch.allclose(u[0], exact, atol=1e-12)


def test_whole_cell_shift_is_a_roll_and_mass_is_conserved():
    g = torch.Generator().manual_seed(0)
    x_res = 64
    # a random band-limited field (no Nyquist mode): a shift by one cell per frame is a roll
    coeffs = torch.randn(4, x_res // 2, generator=g, dtype=torch.complex128)
    spec = torch.zeros(4, x_res // 2 + 1, dtype=torch.complex128)
    spec[:, : x_res // 2] = coeffs
    spec[:, 0] = spec[:, 0].real
    u0 = torch.fft.irfft(spec, n=x_res)
    p = AdvectionParams(beta=1.0 / x_res / 0.1, resolution=x_res, frames=6, t_end=0.5)  # beta dt = dx
    u = Advection1D().solve(u0, params=p)
    for k in range(6):
        assert torch.allclose(u[:, k], torch.roll(u0, k, dims=-1), atol=1e-12)
    assert torch.allclose(u.sum(-1), u0.sum(-1, keepdim=True).expand(-1, 6), atol=1e-10)


def test_registered_generates_and_validates(tmp_path):
    pde = PDES.get("advection1d")()
    assert pde.param_names == ("beta",)
    with pytest.raises(ConfigError, match="beta=inf"):
        AdvectionParams(beta=float("inf"))
    out = generate_dataset(pde="advection1d", params={"beta": 0.4}, samples=3, seed=2, out=tmp_path / "a.hdf5",
                           resolution=64, frames=5, t_end=1.0, progress=False)
    with h5py.File(out) as f:
        assert f.attrs["pde"] == "advection1d" and f.attrs["beta"] == pytest.approx(0.4)
        assert f["tensor"].shape == (3, 5, 64)
    with pytest.raises(ConfigError, match="unknown parameter.*nu"):
        generate_dataset(pde="advection1d", params={"nu": 0.1}, samples=1, seed=0, out=tmp_path / "b.hdf5",
                         progress=False)
