"""diffusion_reaction1d: exact limits (logistic ODE at nu = 0, heat modes at rho = 0), PDEBench initial states."""

from __future__ import annotations

import math

import pytest
import torch

from ups.data.pdes.diffusion_reaction import DiffusionReaction1D, DiffusionReactionParams
from ups.errors import ConfigError


def test_defaults_follow_pdebench():
    p = DiffusionReactionParams()
    assert (p.resolution, p.frames, p.length) == (1024, 201, 1.0) and math.isclose(p.t_end, 1.0)
    assert DiffusionReaction1D.param_names == ("nu", "rho")
    with pytest.raises(ConfigError, match="rho"):
        DiffusionReactionParams(rho=-1.0)


def test_initial_states_span_exactly_zero_to_one():
    p = DiffusionReactionParams()
    u0 = DiffusionReaction1D().sample_initial(64, generator=torch.Generator().manual_seed(0), grid=p.grid)
    assert u0.shape == (64, 1024)
    assert torch.allclose(u0.amin(-1), torch.zeros(64, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(u0.amax(-1), torch.ones(64, dtype=torch.float64), atol=1e-15)
    assert (u0.std(-1) > 0.05).all()


@pytest.mark.parametrize("rho", [1.0, 10.0])
def test_nu_zero_is_the_pointwise_logistic_solution(rho):
    p = DiffusionReactionParams(nu=0.0, rho=rho, resolution=256, frames=21, t_end=1.0)
    x = p.x
    u0 = torch.stack([0.5 + 0.45 * torch.sin(2 * math.pi * x), 0.05 + 0.9 * x])  # spatially varying, in (0, 1)
    u = DiffusionReaction1D().solve(u0, params=p)
    growth = torch.exp(rho * p.t)[None, :, None]
    exact = u0[:, None] * growth / (1.0 - u0[:, None] + u0[:, None] * growth)
    assert (u - exact).abs().max() < 1e-12


@pytest.mark.parametrize("nu", [0.5, 5.0])
def test_rho_zero_decays_heat_modes_exactly(nu):
    p = DiffusionReactionParams(nu=nu, rho=0.0, resolution=128, frames=11, t_end=0.05)
    x, t = p.x, p.t[:, None]
    u0 = 0.5 + 0.2 * torch.cos(2 * math.pi * x) + 0.1 * torch.sin(6 * math.pi * x)
    u = DiffusionReaction1D().solve(u0[None], params=p)[0]
    exact = (0.5 + 0.2 * torch.exp(-nu * (2 * math.pi) ** 2 * t) * torch.cos(2 * math.pi * x)
             + 0.1 * torch.exp(-nu * (6 * math.pi) ** 2 * t) * torch.sin(6 * math.pi * x))
    assert (u - exact).abs().max() < 1e-12


def test_splitting_converges_and_stays_in_the_unit_interval():
    p = DiffusionReactionParams(nu=0.5, rho=10.0, resolution=256, frames=41, t_end=1.0)
    u0 = DiffusionReaction1D().sample_initial(4, generator=torch.Generator().manual_seed(3), grid=p.grid)
    runs = {s: DiffusionReaction1D(steps_per_frame=s).solve(u0, params=p) for s in (2, 4, 8)}
    err = float((runs[4] - runs[8]).norm() / runs[8].norm())
    assert err < 1e-5
    assert float((runs[2] - runs[8]).norm() / runs[8].norm()) / err > 4.0  # better than second order
    assert runs[4].min() > -1e-9 and runs[4].max() < 1 + 1e-9


def test_initial_values_outside_the_unit_interval_are_refused():
    p = DiffusionReactionParams(resolution=64, frames=3, t_end=0.1)
    with pytest.raises(ConfigError, match=r"u0 in \[0, 1\]"):
        DiffusionReaction1D().solve(torch.full((1, 64), -0.5, dtype=torch.float64), params=p)
