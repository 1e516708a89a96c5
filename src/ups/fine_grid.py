"""A finer regular grid around a rollout's input grid, for rollouts that carry their state between the input
points (rollout mode ``reencode_xR``).

A field sampled on a coarse grid is not a complete state of a PDE whose solutions have structure below the grid
spacing (a Burgers shock spans two or three of the benchmark's 256 points): re-encoding the decoded field at
the input points alone throws away, every step, where between two points the shock sits. A surrogate with an
any-point decoder can keep its state on a finer grid instead (``R`` times finer per axis than the grid it was
trained on); the input points are every few points of that grid, so its prediction there is read off without
interpolation. Only the first frame is interpolated (multilinearly) onto the finer grid.

Shapes: coordinates ``[B, N, d]`` of a grid flattened in C order (the data's layout), fields ``[B, N, C]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def grid_axes(coords: torch.Tensor) -> list[torch.Tensor] | None:
    """The per-axis coordinates of a regular grid, or None when the points are not one.

    coords: [B, N, d], the same points in every sample, flattened in C order (axis 0 slowest) -> d tensors
    [n_a] (n_a >= 2, evenly spaced). Point clouds, shuffled or per-sample point sets give None.
    """
    b, n, d = coords.shape
    if b > 1 and not torch.equal(coords, coords[:1].expand_as(coords)):
        return None
    x = coords[0]
    axes = [torch.unique(x[:, a]) for a in range(d)]
    if math.prod(len(ax) for ax in axes) != n or min(len(ax) for ax in axes) < 2:
        return None
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(n, d)
    if not torch.allclose(mesh, x):
        return None
    for ax in axes:
        steps = ax.diff()
        if not torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-4, atol=0.0):
            return None
    return axes


def _axis(ax: torch.Tensor, factor: int, periodic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis refined: ax [n] evenly spaced -> fine coordinates [m] and the linear interpolation matrix
    [m, n]; point ``factor * i`` of the fine axis is point i of ``ax``. Periodic: m = n * factor (the last
    interval wraps to the first point); bounded: m = (n - 1) * factor + 1."""
    n = len(ax)
    h = (ax[-1] - ax[0]) / (n - 1)
    m = n * factor if periodic else (n - 1) * factor + 1
    j = torch.arange(m)
    left = torch.clamp(j // factor, max=n - 1 if periodic else n - 2)
    w = (j - left * factor).to(ax.dtype) / factor  # [m], 0 at the coarse points
    mat = torch.zeros(m, n, dtype=ax.dtype)
    mat[j, left] += 1 - w
    mat[j, (left + 1) % n] += w
    return ax[0] + j.to(ax.dtype) * (h / factor), mat


@dataclass(frozen=True)
class FineGrid:
    """A grid ``factor`` times finer per axis than a coarse grid of ``shape`` points, which it contains."""

    shape: tuple[int, ...]  # points per axis of the coarse (input) grid
    fine_shape: tuple[int, ...]
    factor: int
    coords: torch.Tensor  # [B, M, d] the fine grid's points, M = prod(fine_shape)
    mats: tuple[torch.Tensor, ...]  # per axis [m_a, n_a]: linear interpolation onto the fine axis

    @classmethod
    def around(cls, coords: torch.Tensor, factor: int, *, periodic: bool,
               reference: tuple[float, ...] | None = None) -> FineGrid | None:
        """The finer grid around the regular grid ``coords`` [B, N, d]; None when the points are not a regular
        grid (see :func:`grid_axes`) or need no refinement. periodic: the domain wraps, so the last interval is
        refined too. reference: a spacing per axis (the training grid's) that ``factor`` refines instead of the
        input's: the input grid is refined by round(factor * input spacing / reference), at the coarsest axis,
        so an input already that fine is left as it is."""
        axes = grid_axes(coords)
        if axes is None:
            return None
        if reference is not None:
            ratio = max(float(ax[1] - ax[0]) / ref for ax, ref in zip(axes, reference, strict=True))
            factor = round(factor * ratio)
        if factor < 2:
            return None
        fine = [_axis(ax, factor, periodic) for ax in axes]
        mesh = torch.stack(torch.meshgrid(*(f[0] for f in fine), indexing="ij"), dim=-1).reshape(-1, len(axes))
        return cls(shape=tuple(len(ax) for ax in axes), fine_shape=tuple(len(f[0]) for f in fine), factor=factor,
                   coords=mesh.to(coords).unsqueeze(0).expand(coords.shape[0], -1, -1),
                   mats=tuple(f[1].to(coords) for f in fine))

    def refine(self, u: torch.Tensor) -> torch.Tensor:
        """Multilinear interpolation of u [B, N, C] on the coarse grid -> [B, M, C] on the fine grid (equal to u
        at the coarse points)."""
        b, c = u.shape[0], u.shape[-1]
        v = u.reshape(b, *self.shape, c)
        for a, mat in enumerate(self.mats):
            v = torch.movedim(torch.tensordot(mat.to(v.dtype), v, dims=([1], [1 + a])), 0, 1 + a)
        return v.reshape(b, -1, c)

    def coarse(self, u: torch.Tensor) -> torch.Tensor:
        """The coarse points' values of u [B, M, C] on the fine grid -> [B, N, C] (every ``factor``-th point)."""
        b, c = u.shape[0], u.shape[-1]
        v = u.reshape(b, *self.fine_shape, c)
        return v[(slice(None), *(slice(None, None, self.factor),) * len(self.shape))].reshape(b, -1, c)
