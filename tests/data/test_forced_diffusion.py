"""Forced diffusion: exact against an independent finite-difference solve, the steady-state PDE residual,
conservation of the mean when k = 0, parameter validation."""

import math

import pytest
import torch

from ups.data.pdes import PDES
from ups.errors import ConfigError


def _fd_solution(u0, p, steps=20000):
    """Method of lines, 4th-order central differences in x, RK4 in t (independent of the Fourier solver)."""
    pde = PDES.get("forced_diffusion")()
    f = pde.forcing(p)
    dx = p.dx

    def rhs(u):
        uxx = (-torch.roll(u, 2, -1) + 16 * torch.roll(u, 1, -1) - 30 * u + 16 * torch.roll(u, -1, -1)
               - torch.roll(u, -2, -1)) / (12 * dx * dx)
        return p.D * uxx - p.k * u + f

    h, u = p.t_end / steps, u0.clone()
    for _ in range(steps):
        a = rhs(u)
        b = rhs(u + h / 2 * a)
        c = rhs(u + h / 2 * b)
        d = rhs(u + h * c)
        u = u + h / 6 * (a + 2 * b + 2 * c + d)
    return u


def test_registered_and_matches_an_independent_solver():
    pde = PDES.get("forced_diffusion")()
    p = pde.make_params(resolution=64, frames=3, t_end=0.5, D=0.05, k=0.3, forcing_amp=1.5)
    u0 = pde.sample_initial(3, generator=torch.Generator().manual_seed(0), grid=p.grid)
    traj = pde.solve(u0, params=p)
    assert traj.shape == (3, 3, 64) and traj.dtype == torch.float64 and torch.equal(traj[:, 0], u0)
    ref = _fd_solution(u0, p, steps=2000)
    assert torch.allclose(traj[:, -1], ref, atol=2e-5)


def test_steady_state_solves_the_steady_equation_and_is_reached():
    pde = PDES.get("forced_diffusion")()
    for k in (0.0, 0.5):
        p = pde.make_params(resolution=128, frames=2, t_end=30.0, D=0.05, k=k)  # slowest rates 1.97, k
        u0 = pde.sample_initial(4, generator=torch.Generator().manual_seed(1), grid=p.grid)
        ss = pde.steady_state(u0, params=p)
        # 0 = D u_xx - k u + f, checked spectrally
        kk = 2 * math.pi * torch.fft.rfftfreq(128, d=p.dx, dtype=torch.float64)
        uxx = torch.fft.irfft(-(kk**2) * torch.fft.rfft(ss), n=128)
        assert (p.D * uxx - k * ss + pde.forcing(p)).abs().max() < 1e-10
        assert (ss.std(-1) > 0.1).all()  # non-trivial
        assert torch.allclose(pde.solve(u0, params=p)[:, -1], ss, atol=1e-5)
        if k == 0.0:  # the mean is conserved and sets the steady state's mean
            assert torch.allclose(ss.mean(-1), u0.mean(-1), atol=1e-12)
            assert torch.allclose(pde.solve(u0, params=p).mean(-1), u0.mean(-1)[:, None].expand(-1, 2), atol=1e-12)


@pytest.mark.parametrize("bad,match", [({"D": 0.0}, "diffusivity"), ({"k": -1.0}, "decay"),
                                       ({"resolution": 6}, "more than 6"), ({"nu": 0.1}, "allowed: ")])
def test_bad_parameters_fail_with_one_line(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        PDES.get("forced_diffusion")().make_params(**bad)
    assert "\n" not in str(err.value)
