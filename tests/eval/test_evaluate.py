"""Autoregressive evaluation against values known in closed form."""

import math

import numpy as np
import torch
from tests.helpers import write_ups_file

from ups.config import DataConfig, EvalConfig
from ups.data.datasets import make_loader
from ups.data.normalization import Normalizer
from ups.data.prepare import prepare_data
from ups.eval.evaluate import evaluate_split, model_rollout_fn
from ups.models.persistence import Persistence


class Grow(torch.nn.Module):
    """u_next = (1 + a) u in physical space, through a normaliser with nonzero mean."""

    def __init__(self, a: float, norm: Normalizer):
        super().__init__()
        self.a, self.norm = a, norm

    def predict_next(self, u, coords, params, dt):
        return self.norm.normalize((1 + self.a) * self.norm.denormalize(u))


def _constant_in_time(tmp_path, n=3, t=6, x=32):
    xs = (np.arange(x) + 0.5) / x
    y = np.stack([np.sin(2 * np.pi * (k + 1) * xs) + 0.5 for k in range(n)])
    u = np.repeat(y[:, None, :], t, axis=1).astype(np.float32)
    path = write_ups_file(tmp_path / "test.hdf5", u)
    return prepare_data(DataConfig(test=str(path)), splits=("test",), generate=False)


def test_growing_model_has_closed_form_nrmse(tmp_path):
    bundle = _constant_in_time(tmp_path)
    norm = Normalizer(mean=[0.3], std=[2.0])
    loader = make_loader(bundle.windows("test", window=None, normalizer=norm), batch_size=2, shuffle=False, seed=0)
    a = 0.1
    result, got = evaluate_split(model_rollout_fn(Grow(a, norm)), loader, norm, bundle.meta, EvalConfig())
    expected = [(1 + a) ** k - 1 for k in range(1, 6)]  # nRMSE after k steps of a constant field
    np.testing.assert_allclose(result["metrics"]["nrmse_per_step"], expected, rtol=1e-5)
    assert math.isclose(result["metrics"]["nrmse_one_step"], a, rel_tol=1e-5)  # teacher-forced: one growth
    assert result["baselines"]["persistence"]["nrmse"] < 1e-6  # the truth is constant in time
    assert got.pred.shape == (3, 5, 32, 1)


def test_persistence_model_equals_persistence_baseline(tmp_path):
    bundle = _constant_in_time(tmp_path)
    norm = Normalizer(mean=[0.0], std=[1.0])
    loader = make_loader(bundle.windows("test", window=None, normalizer=norm), batch_size=3, shuffle=False, seed=0)
    result, _ = evaluate_split(model_rollout_fn(Persistence()), loader, norm, bundle.meta, EvalConfig())
    for key in ("nrmse", "nrmse_one_step", "conservation_gap", "bc_violation"):
        assert math.isclose(result["metrics"][key], result["baselines"]["persistence"][key], abs_tol=1e-9)


def test_grid_rollout_obeys_the_maximum_principle_when_asked():
    from ups.rollout import rollout_grid

    class Doubler:
        def predict_next(self, u, coords, params, dt):  # [B, N, C] -> [B, N, C]: blows up geometrically
            return 2.0 * u + 0.1

    u0 = torch.tensor([[[-1.0], [0.5], [2.0]]])  # [1, 3, 1], range [-1, 2]
    free = rollout_grid(Doubler(), u0, u0, torch.zeros(1, 1), torch.ones(1), 5)
    kept = rollout_grid(Doubler(), u0, u0, torch.zeros(1, 1), torch.ones(1), 5, max_principle=True)
    assert float(free.abs().max()) > 60  # 2^5 * 2 + ...
    assert float(kept.min()) >= -1.0 and float(kept.max()) <= 2.0
    torch.testing.assert_close(kept[0, 0], torch.tensor([[-1.0], [1.1], [2.0]]))  # clamp(2u + 0.1)


def test_teacher_forced_steps_run_in_chunks_of_the_batch_size():
    """The one-step predictions from every true frame equal one big call, but no call sees more than B
    samples (a 640-frame trajectory would otherwise put B * 639 samples in one forward pass)."""
    from ups.rollout import teacher_forced

    b, w, n, c = 3, 7, 5, 2
    g = torch.Generator().manual_seed(0)
    flat, coords = torch.randn(b, w, n, c, generator=g), torch.rand(b, n, 1, generator=g)
    params, dt = torch.rand(b, 2, generator=g), torch.full((b,), 0.1)
    sizes = []

    def fn(u0, x, p, d, steps):  # a deterministic per-sample step: depends on the sample's own inputs only
        sizes.append(u0.shape[0])
        return (u0 * (1 + p[:, :1, None]) + x.sum(-1, keepdim=True) * d[:, None, None]).unsqueeze(1)

    got = teacher_forced(fn, flat, coords, params, dt)
    assert got.shape == (b * (w - 1), n, c) and max(sizes) == b and sum(sizes) == b * (w - 1)
    reps = [t.repeat_interleave(w - 1, dim=0) for t in (coords, params, dt)]
    sizes.clear()
    whole = fn(flat[:, :-1].reshape(b * (w - 1), n, c), *reps, 1)[:, 0]
    torch.testing.assert_close(got, whole)
