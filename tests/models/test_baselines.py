"""The grid peers: shapes, gradients, conditioning channels, circular U-Net, lazy neuralop import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from ups.config import ModelConfig
from ups.data.metadata import DatasetMetadata
from ups.errors import ConfigError, UPSError
from ups.models import MODELS

pytest.importorskip("neuralop")


def _meta(shape=(64,), channels=1, params=("nu",)) -> DatasetMetadata:
    return DatasetMetadata(pde="burgers1d", spatial_dims=len(shape), spatial_shape=shape, n_channels=channels,
                           n_frames=11, dt=0.05, param_names=params, domain=((0.0, 1.0),) * len(shape),
                           nonnegative=(False,) * channels)


def _inputs(meta: DatasetMetadata, batch: int = 3, nu: float = 0.01):
    n = meta.n_points
    u = torch.randn(batch, n, meta.n_channels)
    coords = torch.rand(batch, n, meta.spatial_dims)
    params = torch.full((batch, meta.n_params), nu)
    dt = torch.full((batch,), meta.dt)
    return u, coords, params, dt


SMALL = {"fno": {"n_modes": 8, "hidden_channels": 16, "n_layers": 2}, "unet1d": {"width": 8, "depth": 2}}


@pytest.mark.parametrize("name", ["fno", "unet1d"])
@pytest.mark.parametrize("channels,params", [(1, ("nu",)), (2, ()), (2, ("nu", "beta"))])
def test_predict_next_shape(name, channels, params):
    meta = _meta(channels=channels, params=params)
    model = MODELS.get(name).from_config(meta, SMALL[name])
    u, coords, p, dt = _inputs(meta)
    if params:
        p = torch.rand(3, len(params)) + 0.1
    out = model.predict_next(u, coords, p, dt)
    assert out.shape == u.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["fno", "unet1d"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    meta = _meta()
    model = MODELS.get(name).from_config(meta, SMALL[name])
    u, coords, p, dt = _inputs(meta)
    loss = (model.predict_next(u, coords, p, dt) - torch.randn_like(u)).pow(2).mean()
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, f"{pname} has a zero gradient"


class _Recorder(nn.Module):
    """Stands in for the network: records its input, returns zeros shaped like the field channels."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return torch.zeros(x.shape[0], self.out_channels, *x.shape[2:]) + 0.5


def test_grid_layout_and_conditioning_channels_by_hand():
    meta = _meta(shape=(4, 6), channels=2, params=("nu",))
    model = MODELS.get("fno").from_config(meta, {"n_modes": 2, "hidden_channels": 4, "n_layers": 1,
                                                 "dt_channel": True})
    model.net = _Recorder(2)
    u = torch.arange(2 * 24 * 2, dtype=torch.float32).reshape(2, 24, 2)
    params = torch.tensor([[0.01], [1000.0]])
    dt = torch.tensor([0.05, 0.25])
    out = model.predict_next(u, torch.zeros(2, 24, 2), params, dt)
    x = model.net.seen
    assert x.shape == (2, 4, 4, 6)  # 2 fields + log10(nu) + dt, on the 4 x 6 grid
    # row-major points: point i * 6 + j sits at grid (i, j)
    assert x[1, 1, 2, 3] == u[1, 2 * 6 + 3, 1]
    assert torch.equal(x[:, :2], u.reshape(2, 4, 6, 2).permute(0, 3, 1, 2))
    assert torch.allclose(x[0, 2], torch.full((4, 6), -2.0)) and torch.allclose(x[1, 2], torch.full((4, 6), 3.0))
    assert torch.allclose(x[0, 3], torch.full((4, 6), 0.05)) and torch.allclose(x[1, 3], torch.full((4, 6), 0.25))
    assert torch.allclose(out, u + 0.5)  # residual: u + net(...)


def test_residual_false_returns_the_network_output():
    meta = _meta()
    model = MODELS.get("unet1d").from_config(meta, {"width": 8, "depth": 2, "residual": False,
                                                    "param_transform": "none"})
    model.net = _Recorder(1)
    u, coords, p, dt = _inputs(meta)
    out = model.predict_next(u, coords, p, dt)
    assert torch.allclose(out, torch.full_like(u, 0.5))
    assert torch.allclose(model.net.seen[:, 1], torch.full((3, 64), 0.01))  # raw nu, no log


def test_parameter_channel_changes_the_prediction():
    torch.manual_seed(1)
    meta = _meta()
    model = MODELS.get("fno").from_config(meta, SMALL["fno"])
    u, coords, p, dt = _inputs(meta)
    a = model.predict_next(u, coords, p, dt)
    b = model.predict_next(u, coords, p * 10, dt)
    assert (a - b).abs().max() > 1e-4


def test_unet_is_shift_equivariant_with_circular_padding():
    torch.manual_seed(2)
    meta = _meta(shape=(64,), channels=2)
    model = MODELS.get("unet1d").from_config(meta, {"width": 8, "depth": 3}).eval()
    u, coords, p, dt = _inputs(meta, batch=2)
    u = u + torch.linspace(-3, 3, 64).reshape(1, 64, 1)  # not itself periodic-looking: edges matter
    out = model.predict_next(u, coords, p, dt)
    for shift in (8, 16, -24):  # multiples of 2**depth
        rolled = model.predict_next(torch.roll(u, shift, dims=1), coords, p, dt)
        assert torch.allclose(rolled, torch.roll(out, shift, dims=1), atol=1e-5), shift


def test_unet_zero_padding_would_break_equivariance():
    """The property above is not vacuous: the same network with zero padding fails it."""
    torch.manual_seed(2)
    meta = _meta(shape=(64,))
    model = MODELS.get("unet1d").from_config(meta, {"width": 8, "depth": 3}).eval()
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            module.padding_mode = "zeros"
    u, coords, p, dt = _inputs(meta, batch=2)
    out = model.predict_next(u, coords, p, dt)
    rolled = model.predict_next(torch.roll(u, 8, dims=1), coords, p, dt)
    assert (rolled - torch.roll(out, 8, dims=1)).abs().max() > 1e-3


@pytest.mark.parametrize("channels,params,dt_channel", [(1, ("nu",), False), (3, ("nu", "beta"), True), (2, (), False)])
def test_fno_channels_come_from_metadata(channels, params, dt_channel):
    meta = _meta(shape=(32,), channels=channels, params=params)
    model = MODELS.get("fno").from_config(meta, {"n_modes": 8, "hidden_channels": 8, "dt_channel": dt_channel})
    assert model.net.in_channels == channels + len(params) + int(dt_channel)
    assert model.net.out_channels == channels
    assert tuple(model.net.n_modes) == (8,)


def test_fno_default_matches_the_reference_size():
    """The SPEC's reference FNO (modes 16, width 64, 4 layers, u + nu) has 198,337 parameters."""
    model = MODELS.get("fno").from_config(_meta(shape=(256,)), {})
    assert sum(p.numel() for p in model.parameters()) == 198_337


def test_bad_configs_raise_one_line_errors():
    with pytest.raises(ConfigError, match="n_modes=40 exceeds"):
        MODELS.get("fno").from_config(_meta(shape=(64,)), {"n_modes": 40})
    with pytest.raises(ConfigError, match="divisible by 16"):
        MODELS.get("unet1d").from_config(_meta(shape=(40,)), {"depth": 4})
    with pytest.raises(ConfigError, match="needs 1D data"):
        MODELS.get("unet1d").from_config(_meta(shape=(16, 16)), {"depth": 2})
    with pytest.raises(ConfigError, match="kernel_size") as err:
        ModelConfig(name="unet1d", params={"kernel_size": 4})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown key 'model.params.widht'"):
        ModelConfig(name="unet1d", params={"widht": 4})
    model = MODELS.get("unet1d").from_config(_meta(shape=(64,)), {"width": 8, "depth": 2})
    with pytest.raises(UPSError, match="64 points"):
        model.predict_next(torch.zeros(1, 32, 1), torch.zeros(1, 32, 1), torch.ones(1, 1), torch.ones(1))


def test_import_ups_does_not_import_neuralop():
    code = ("import sys, ups, ups.models, ups.config, ups.training; "
            "from ups.models import MODELS; MODELS.get('fno'); "
            "print('neuralop' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["fno", "unet1d"])
def test_checkpoint_round_trip_restores_predictions(name, tmp_path):
    from ups.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(3)
    meta = _meta()
    model = MODELS.get(name).from_config(meta, SMALL[name]).eval()
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    save_checkpoint(tmp_path / "m", {"model": model}, {"model": name})
    torch.manual_seed(4)
    fresh = MODELS.get(name).from_config(meta, SMALL[name]).eval()
    u, coords, p, dt = _inputs(meta)
    assert not torch.allclose(fresh.predict_next(u, coords, p, dt), model.predict_next(u, coords, p, dt))
    load_checkpoint(tmp_path / "m", {"model": fresh})
    assert torch.equal(fresh.predict_next(u, coords, p, dt), model.predict_next(u, coords, p, dt))


def test_fno_runs_on_a_finer_grid_of_the_same_domain_and_the_unet_refuses():
    torch.manual_seed(0)
    fno = MODELS.get("fno").from_config(_meta((64,)), SMALL["fno"]).eval()

    def smooth(n):  # a band-limited field on n cell-aligned points of [0, 1): [1, n, 1]
        x = torch.arange(n) / n
        return (0.8 * torch.sin(2 * torch.pi * x) + 0.3 * torch.cos(6 * torch.pi * x)).reshape(1, n, 1)

    params, dt = torch.full((1, 1), 0.01), torch.full((1,), 0.05)
    with torch.no_grad():
        coarse = fno.predict_next(smooth(64), torch.zeros(1, 64, 1), params, dt)
        fine = fno.predict_next(smooth(256), torch.zeros(1, 256, 1), params, dt)
    assert fine.shape == (1, 256, 1)
    # the same function at 4x the resolution: equal at the shared points up to aliasing of the nonlinearity
    err = (fine[:, ::4] - coarse).abs().max() / (coarse - smooth(64)).abs().max()
    assert err < 0.05, float(err)
    unet = MODELS.get("unet1d").from_config(_meta((64,)), SMALL["unet1d"])
    with pytest.raises(UPSError, match="need the training grid"):
        unet.predict_next(smooth(256), torch.zeros(1, 256, 1), params, dt)
    fno2d = MODELS.get("fno").from_config(_meta((8, 8)), {**SMALL["fno"], "n_modes": 4})
    assert fno2d.grid_shape(256) == (16, 16) and fno2d.grid_shape(200) is None
    with pytest.raises(UPSError, match="refined or coarsened"):
        fno2d.predict_next(torch.randn(1, 200, 1), torch.zeros(1, 200, 2), params, dt)
