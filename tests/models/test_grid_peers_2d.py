"""2D grid peers (FNO-2D from neuraloperator, the 2D U-Net) in the GridModel harness: shapes, gradients,
circular equivariance, clear errors; and the UPT model on a 2D lattice (shapes)."""

from __future__ import annotations

import pytest
import torch

from ups.data.metadata import DatasetMetadata
from ups.errors import ConfigError
from ups.models import MODELS

pytest.importorskip("neuralop")

SMALL = {"fno": {"n_modes": 4, "hidden_channels": 8, "n_layers": 2}, "unet2d": {"width": 4, "depth": 2}}


def _meta(shape=(16, 16), channels=1, params=("nu",)) -> DatasetMetadata:
    return DatasetMetadata(pde="ns2d", spatial_dims=len(shape), spatial_shape=shape, n_channels=channels,
                           n_frames=11, dt=1.0, param_names=params, domain=((0.0, 1.0),) * len(shape),
                           nonnegative=(False,) * channels)


def _inputs(meta: DatasetMetadata, batch: int = 2):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, meta.n_points, meta.n_channels, generator=g)
    axes = [torch.arange(n) / n for n in meta.spatial_shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 2).expand(batch, -1, -1)
    return u, coords, torch.full((batch, meta.n_params), 1e-3), torch.full((batch,), meta.dt)


@pytest.mark.parametrize("name", ["fno", "unet2d"])
@pytest.mark.parametrize("shape,channels", [((16, 16), 1), ((16, 8), 2)])
def test_2d_peers_shape_and_gradients(name, shape, channels):
    meta = _meta(shape=shape, channels=channels)
    model = MODELS.get(name).from_config(meta, SMALL[name])
    u, coords, params, dt = _inputs(meta)
    out = model.predict_next(u, coords, params, dt)
    assert out.shape == u.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_unet2d_commutes_with_circular_shifts_by_the_coarsest_cell():
    meta = _meta()
    model = MODELS.get("unet2d").from_config(meta, SMALL["unet2d"]).eval()
    u, coords, params, dt = _inputs(meta)
    grid = u.reshape(2, 16, 16, 1)
    shifted = torch.roll(grid, shifts=(4, 8), dims=(1, 2)).reshape(2, -1, 1)  # multiples of 2**depth
    with torch.no_grad():
        a = model.predict_next(u, coords, params, dt).reshape(2, 16, 16, 1)
        b = model.predict_next(shifted, coords, params, dt).reshape(2, 16, 16, 1)
    torch.testing.assert_close(torch.roll(a, shifts=(4, 8), dims=(1, 2)), b, atol=1e-5, rtol=1e-5)


def test_2d_peers_refuse_wrong_shapes_with_one_line():
    with pytest.raises(ConfigError, match="unet2d.*2D data"):
        MODELS.get("unet2d").from_config(_meta(shape=(64,)), SMALL["unet2d"])
    with pytest.raises(ConfigError, match="divisible by 4"):
        MODELS.get("unet2d").from_config(_meta(shape=(18, 16)), SMALL["unet2d"])
    with pytest.raises(ConfigError, match="n_modes"):
        MODELS.get("fno").from_config(_meta(shape=(8, 8)), {"n_modes": 9, "hidden_channels": 4, "n_layers": 1})


def test_upt_predicts_on_a_2d_lattice():
    meta = _meta()
    model = MODELS.get("upt").from_config(meta, {"latent_dim": 8, "num_supernodes": 16, "heads": 2,  # 4 x 4
                                                 "operator_depth": 1, "kernel_hidden": 8, "decoder_hidden": 8})
    u, coords, params, dt = _inputs(meta)
    out = model(u, coords, params, dt)  # one step: encode, step, decode
    assert out.shape == u.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
