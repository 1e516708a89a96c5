"""``ups.rollout`` with models that advance several frames per step (temporal bundling): frames are chained in
order, the last step's extra frames are dropped, and each step costs one encode-step-decode pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ups.rollout import clamp_to_bounds, frames_per_step, rollout


class Counter(nn.Module):
    """A bundled surrogate with a known answer: the tokens are the field itself, a step leaves them unchanged and
    its F frames are ``u_q + 1, ..., u_q + F``; so frame k of any rollout from u0 is ``u0 + k``. Counts its calls."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames_per_step = frames
        self.calls = {"encode": 0, "step": 0}

    def encode(self, u, coords):  # u [B, N, C] -> z [B, N, C]
        self.calls["encode"] += 1
        return u.clone()

    def step(self, z, params, dt):
        self.calls["step"] += 1
        return z

    def decode_frames(self, z, coords_q, u_q=None):  # -> [B, F, Q, C]
        base = z if u_q is None else u_q
        if u_q is None:
            return base.unsqueeze(1).expand(-1, self.frames_per_step, -1, -1)
        return torch.stack([base + f for f in range(1, self.frames_per_step + 1)], dim=1)

    def decode(self, z, coords_q, u_q=None):
        return self.decode_frames(z, coords_q, u_q)[:, -1]


@pytest.mark.parametrize("mode", ["latent", "reencode"])
@pytest.mark.parametrize(("frames", "steps"), [(1, 5), (3, 7), (4, 8)])
def test_bundled_rollouts_chain_the_frames_of_each_step(mode, frames, steps):
    model = Counter(frames)
    u0, x = torch.randn(2, 10, 1), torch.rand(2, 10, 1)
    p, dt = torch.ones(2, 1), torch.full((2,), 0.1)
    for query in (None, x):  # at the input points, and at query points (frame 0 there is the reconstruction)
        model.calls = {"encode": 0, "step": 0}
        out = rollout(model, u0, x, p, dt, steps, mode=mode, query_coords=query)
        assert out.shape == (2, steps + 1, 10, 1)
        expected = u0[:, None] + torch.arange(steps + 1, dtype=u0.dtype)[None, :, None, None]
        assert torch.allclose(out, expected)
        passes = -(-steps // frames)  # ceil: the last step's extra frames are dropped
        assert model.calls["step"] == passes
        assert model.calls["encode"] == (passes if mode == "reencode" else 1)  # no encode after the last step


def test_models_without_bundling_advance_one_frame_and_bounds_clamp_every_frame():
    assert frames_per_step(nn.Linear(2, 2)) == 1 and frames_per_step(Counter(3)) == 3
    u = torch.tensor([[-2.0, 0.5, 3.0], [0.0, 1.0, 2.0]]).reshape(1, 2, 3, 1)  # [B=1, F=2, Q=3, C=1]
    lo, hi = torch.full((1, 1, 1), -1.0), torch.full((1, 1, 1), 1.5)
    out = clamp_to_bounds(u, (lo, hi))
    assert torch.equal(out, torch.tensor([[-1.0, 0.5, 1.5], [0.0, 1.0, 1.5]]).reshape(1, 2, 3, 1))
    assert torch.equal(clamp_to_bounds(u[:, 0], (lo, hi)), out[:, 0])  # [B, Q, C] as before
