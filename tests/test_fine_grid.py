"""Rollouts that carry their state on a finer grid (``reencode_xR``, ``ups.fine_grid``): the grid and its
interpolation by hand, an exact solution that only the finer state reproduces, the fallback on point clouds,
and the config's checks."""

from __future__ import annotations

import pytest
import torch

from ups.errors import ConfigError, UPSError
from ups.fine_grid import FineGrid, grid_axes
from ups.models.upt import UPT, UPTConfig
from ups.rollout import parse_mode, refine_state, rollout
from ups.training.stages.operator import OperatorStageConfig


def periodic_line(n: int, b: int = 1) -> torch.Tensor:
    """n evenly spaced points on the periodic [0, 1) -> coords [b, n, 1]."""
    return (torch.arange(n, dtype=torch.float32) / n)[None, :, None].expand(b, -1, -1)


def test_periodic_refinement_by_hand():
    grid = FineGrid.around(periodic_line(4), 2, periodic=True)
    assert grid.fine_shape == (8,)
    assert torch.allclose(grid.coords[0, :, 0], torch.arange(8) / 8)
    u = torch.tensor([0.0, 1.0, 2.0, 3.0])[None, :, None]
    fine = grid.refine(u)[0, :, 0]
    # midpoints are the averages of their neighbours; the last one wraps to the first point: (3 + 0) / 2
    assert torch.allclose(fine, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 1.5]))
    assert torch.equal(grid.coarse(grid.refine(u)), u)


def test_bounded_2d_refinement_is_exact_for_bilinear_fields():
    xx, yy = torch.meshgrid(torch.arange(4.0), torch.arange(5.0) / 2, indexing="ij")
    coords = torch.stack([xx, yy], dim=-1).reshape(1, 20, 2).expand(2, -1, -1)
    grid = FineGrid.around(coords, 3, periodic=False)
    assert grid.fine_shape == (10, 13)  # (n - 1) * 3 + 1 per axis: no points beyond the last ones
    f = lambda c: 2 * c[..., :1] - 3 * c[..., 1:] + c[..., :1] * c[..., 1:]  # noqa: E731  bilinear: exact
    assert torch.allclose(grid.refine(f(coords)), f(grid.coords), atol=1e-5)
    assert torch.equal(grid.coarse(grid.refine(f(coords))), f(coords))


def test_refinement_is_relative_to_the_training_grid_when_given():
    line = periodic_line(16)  # spacing 1/16
    assert FineGrid.around(line, 2, periodic=True).fine_shape == (32,)  # no reference: twice the input
    assert FineGrid.around(line, 2, periodic=True, reference=(1 / 16,)).fine_shape == (32,)  # trained on 16 points
    assert FineGrid.around(line, 2, periodic=True, reference=(1 / 64,)).fine_shape == (128,)  # input 4x coarser
    assert FineGrid.around(line, 2, periodic=True, reference=(1 / 8,)) is None  # input already 2x the training grid
    assert FineGrid.around(line, 2, periodic=True, reference=(1 / 4,)) is None  # finer still


def test_only_regular_grids_shared_by_the_batch_are_refined():
    line = periodic_line(8, b=2)
    assert grid_axes(line) is not None
    assert grid_axes(line[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))]) is None  # shuffled
    assert grid_axes(torch.cat([line[:1], line[1:] + 0.01])) is None  # points differ between samples
    uneven = line.clone()
    uneven[:, 3] += 0.02
    assert grid_axes(uneven) is None


class ShiftByInterpolation(torch.nn.Module):
    """An exact-by-construction 'surrogate' of u_t + c u_x = 0 on the periodic [0, 1): the latent is the field at
    its points, a step does nothing, and decoding at x reads the state at x - shift by linear interpolation."""

    periodic = True

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def encode(self, u, coords):  # [B, N, C], [B, N, 1] -> [B, N, C + 1]
        return torch.cat([u, coords], dim=-1)

    def step(self, z, params, dt):
        return z

    def decode(self, z, coords_q, u_q=None):  # z [B, N, C + 1] on a regular periodic grid -> [B, Q, C]
        u, x = z[..., :-1], z[..., -1:]
        n = x.shape[1]
        pos = torch.remainder(coords_q[..., 0] - self.shift - x[:, :1, 0], 1.0) * n  # [B, Q] in state cells
        left = pos.floor().long() % n
        w = (pos - pos.floor()).unsqueeze(-1)
        take = lambda i: torch.gather(u, 1, i.unsqueeze(-1).expand(-1, -1, u.shape[-1]))  # noqa: E731
        return (1 - w) * take(left) + w * take((left + 1) % n)


def test_a_finer_state_keeps_what_lies_between_the_points():
    """Advection by half a cell per step. On the data's 16 points each step interpolates, so a square pulse smears;
    on the grid twice as fine a step is one fine cell, exact, and every second step lands on the data points:
    the rollout is the exact solution there (frame 2k = u0 shifted by k cells)."""
    n = 16
    coords = periodic_line(n)
    u0 = torch.zeros(1, n, 1)
    u0[0, 5:9] = 1.0
    model = ShiftByInterpolation(shift=0.5 / n)
    params, dt = torch.zeros(1, 1), torch.ones(1)
    fine = rollout(model, u0, coords, params, dt, 8, mode="reencode_x2")
    for k in range(5):
        assert torch.allclose(fine[:, 2 * k], torch.roll(u0, k, dims=1), atol=1e-6)
    plain = rollout(model, u0, coords, params, dt, 8, mode="reencode")
    assert (plain[:, 8] - torch.roll(u0, 4, dims=1)).abs().max() > 0.2  # smeared by eight interpolations


def tiny_upt() -> UPT:
    torch.manual_seed(0)
    model = UPT(config=UPTConfig(latent_dim=16, num_supernodes=8, heads=2, operator_depth=1, mixer="spectral",
                                 spectral_modes=3, decoder="kernel"), dims=1, channels=1, n_params=1, dt_ref=0.1,
                domain=((0.0, 1.0),), periodic=True)
    with torch.no_grad():  # open the adaLN-Zero gates so that a step changes the field
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_upt_rollout_on_a_finer_grid_and_its_fallback_on_point_clouds():
    model = tiny_upt()
    params, dt = torch.full((2, 1), 0.01), torch.full((2,), 0.1)
    grid = periodic_line(32, b=2)
    u0 = torch.sin(2 * torch.pi * grid) + 0.1 * torch.randn(2, 32, 1, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fine = rollout(model, u0, grid, params, dt, 3, mode="reencode_x2")
        plain = rollout(model, u0, grid, params, dt, 3, mode="reencode")
        assert fine.shape == plain.shape == (2, 4, 32, 1)
        assert torch.equal(fine[:, 0], u0)
        assert (fine[:, 1:] - plain[:, 1:]).abs().max() > 1e-4  # the state between the points changes the result
        cloud = torch.rand(2, 32, 1, generator=torch.Generator().manual_seed(2))  # not a grid: plain re-encoding
        assert torch.equal(rollout(model, u0, cloud, params, dt, 3, mode="reencode_x2"),
                           rollout(model, u0, cloud, params, dt, 3, mode="reencode"))


def test_rollout_modes_are_checked_with_one_line():
    assert parse_mode("reencode_x2") == ("reencode", 2) and parse_mode("latent") == ("latent", 1)
    assert OperatorStageConfig(rollout_mode="reencode_x3").rollout_mode == "reencode_x3"
    for bad in ("latent_x2", "reencode_x1"):
        with pytest.raises(ConfigError, match="only reencode carries its state on a finer grid"):
            OperatorStageConfig(rollout_mode=bad)
    with pytest.raises(UPSError, match="unknown rollout mode 'sideways'"):
        OperatorStageConfig(rollout_mode="sideways")


def test_a_refiner_on_a_finer_state_corrects_at_the_data_points():
    """``refine_state``: the refiner sees the data points' values; the state there becomes exactly its output, and
    its correction is interpolated onto the points between (a constant correction shifts every fine point)."""
    grid = FineGrid.around(periodic_line(8), 2, periodic=True)
    g = torch.Generator().manual_seed(3)
    prev, nxt = torch.randn(1, 16, 1, generator=g), torch.randn(1, 16, 1, generator=g)
    halfway = lambda a, b: b + 0.5 * (a - b)  # noqa: E731  a 'refiner' of fields at the 8 data points
    out = refine_state(halfway, grid, prev, nxt)
    torch.testing.assert_close(grid.coarse(out), halfway(grid.coarse(prev), grid.coarse(nxt)))
    torch.testing.assert_close(refine_state(lambda a, b: b + 0.25, grid, prev, nxt), nxt + 0.25)
    torch.testing.assert_close(refine_state(halfway, None, prev, nxt), halfway(prev, nxt))  # state at the data points


class ShiftAndRefine(ShiftByInterpolation):
    """The exact half-cell advection with a physical 'refiner' that adds ``bump`` to every predicted field."""

    def __init__(self, shift: float, bump: float):
        super().__init__(shift)
        self.bump = bump

    def refine_field(self, u_prev, u_pred, params, dt):
        return u_pred + self.bump


def test_refined_rollouts_keep_the_finer_state():
    """A refiner that corrects nothing leaves the exact fine-state rollout exact (a refined rollout used to fall
    back to the data's grid and smear); one that adds a constant adds it once per step."""
    n = 16
    coords, u0 = periodic_line(n), torch.zeros(1, n, 1)
    u0[0, 5:9] = 1.0
    params, dt = torch.zeros(1, 1), torch.ones(1)
    exact = rollout(ShiftAndRefine(0.5 / n, 0.0), u0, coords, params, dt, 8, mode="reencode_x2")
    for k in range(5):
        torch.testing.assert_close(exact[:, 2 * k], torch.roll(u0, k, dims=1), atol=1e-6, rtol=0)
    bumped = rollout(ShiftAndRefine(0.5 / n, 0.1), u0, coords, params, dt, 8, mode="reencode_x2")
    for k in range(5):
        torch.testing.assert_close(bumped[:, 2 * k], torch.roll(u0, k, dims=1) + 0.2 * k, atol=1e-5, rtol=0)


def test_corrector_training_pairs_follow_the_rollout_mode():
    """``rollout_pairs`` (what the refiner and its distilled sampler train on) meets the states the rollout of the
    operator's mode meets, refined ones included, read at the data points."""
    from ups.training.stages.diff_residual import rollout_pairs

    n = 16
    model = ShiftAndRefine(0.5 / n, 0.1)
    coords, u0 = periodic_line(n, b=2), torch.zeros(2, n, 1)
    u0[0, 5:9], u0[1, 2:4] = 1.0, -1.0
    params, dt = torch.zeros(2, 1), torch.ones(2)
    window = {"u": torch.stack([u0] * 4, dim=1), "coords": coords, "params": params, "dt": dt}  # truth unused here

    class Bump:  # the refiner interface rollout_pairs calls
        def refine(self, u_prev, u_pred, cond):
            return u_pred + 0.1

    for mode in ("reencode", "reencode_x2"):
        rolled = rollout(model, u0, coords, params, dt, 3, mode=mode)  # [2, 4, 16, 1]
        pairs = rollout_pairs(model, window, Bump(), mode=mode)
        torch.testing.assert_close(pairs["u_prev"], rolled[:, :3].transpose(0, 1).flatten(0, 1))
        torch.testing.assert_close(pairs["u_pred"], rolled[:, 1:].transpose(0, 1).flatten(0, 1) - 0.1)


def test_corrector_training_pairs_on_grids_at_different_offsets():
    """Training batches read each sample at its own sub-cell offset (``data.random_offset``): the pairs of each
    sample are those of its own finer-state rollout, as if it had been rolled out alone."""
    from ups.training.stages.diff_residual import rollout_pairs

    n = 16
    model = ShiftAndRefine(0.5 / n, 0.0)
    line = periodic_line(n, b=1)
    coords = torch.cat([line, line + 0.25 / n, line])  # samples 0 and 2 share a grid, 1 is offset by a quarter cell
    u0 = torch.zeros(3, n, 1)
    u0[0, 5:9], u0[1, 2:4], u0[2, 10:12] = 1.0, -1.0, 0.5
    params, dt = torch.zeros(3, 1), torch.ones(3)
    window = {"u": torch.stack([u0] * 4, dim=1), "coords": coords, "params": params, "dt": dt}
    pairs = rollout_pairs(model, window, mode="reencode_x2")
    alone = torch.cat([rollout(model, u0[i:i + 1], coords[i:i + 1], params[:1], dt[:1], 3, mode="reencode_x2")
                       for i in range(3)])  # [3, 4, 16, 1]
    torch.testing.assert_close(pairs["u_pred"], alone[:, 1:].transpose(0, 1).flatten(0, 1))
    for k in range(2):  # the exact solution on every sample's own grid: frame 2 is u0 shifted by one cell
        torch.testing.assert_close(pairs["u_pred"].unflatten(0, (3, 3))[1, k], torch.roll(u0[k], 1, dims=0),
                                   atol=1e-6, rtol=0)
