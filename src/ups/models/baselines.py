"""Grid peers of the UPS model: neuraloperator's FNO (``fno``, any dimension) and compact U-Nets
(``unet1d``, ``unet2d``).

Both are autoregressive one-step models on the regular grid of ``DatasetMetadata.spatial_shape``.
They offer the one-step interface of every registered model::

    predict_next(u, coords, params, dt)   u [B, N, C] normalised, coords [B, N, d], params [B, P],
                                          dt [B]  -> u_next [B, N, C] (normalised)

The N points are the grid flattened in row-major order (the layout of ``collate``'s ``coords``), so
``u`` is reshaped to ``[B, C, *spatial]``. The PDE parameters enter as extra constant channels
(``log10`` of each parameter by default, since coefficients such as the viscosity span decades),
optionally followed by a ``dt`` channel. With ``residual: true`` (the default) the network predicts
the increment: ``u_next = u + net([u, params])``.

``neuralop`` (the optional ``[baselines]`` extra) is imported only when an FNO is built, so
``import ups`` works without it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as F

from ups.config import Strict
from ups.data.metadata import DatasetMetadata
from ups.errors import ConfigError, UPSError
from ups.models import MODELS

ParamTransform = Literal["log10", "none"]


class GridInputConfig(Strict):
    """What both grid peers feed their network besides the field."""

    residual: bool = True  # predict u_next = u + net(...) instead of u_next = net(...)
    param_transform: ParamTransform = "log10"  # applied to each PDE parameter before broadcasting
    dt_channel: bool = False  # append dt as one more constant channel


class GridModel(nn.Module):
    """Shared plumbing: points <-> grid, parameter channels, residual update."""

    compile_methods = ("grid_forward",)  # what ``ups.models.compile`` compiles (training and rollouts)

    def __init__(self, *, spatial_shape: tuple[int, ...], n_channels: int, n_params: int,
                 residual: bool, param_transform: ParamTransform, dt_channel: bool):
        super().__init__()
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.n_channels = int(n_channels)
        self.n_params = int(n_params)
        self.residual = bool(residual)
        self.param_transform = param_transform
        self.dt_channel = bool(dt_channel)
        self.net: nn.Module = nn.Identity()  # set by subclasses
        self.resolution_agnostic = False  # True: the network runs on other grids of the same domain (FNO)

    @property
    def in_channels(self) -> int:
        """Channels the network sees: fields, one per parameter, and dt when enabled."""
        return self.n_channels + self.n_params + int(self.dt_channel)

    def _conditioning(self, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """params [B, P], dt [B] -> [B, P (+1)] values broadcast as constant channels."""
        values = params.to(torch.float32)
        if self.param_transform == "log10":
            values = torch.log10(values.abs().clamp_min(1e-12))
        if self.dt_channel:
            values = torch.cat([values, dt.to(values).reshape(-1, 1)], dim=1)
        return values

    def grid_forward(self, u: torch.Tensor, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """u [B, C, *spatial], params [B, P], dt [B] -> next field [B, C, *spatial]."""
        cond = self._conditioning(params, dt)
        if cond.shape[1]:
            shape = (*cond.shape, *([1] * len(self.spatial_shape)))
            cond = cond.reshape(shape).expand(-1, -1, *u.shape[2:]).to(u.dtype)
            x = torch.cat([u, cond], dim=1)
        else:
            x = u
        out = self.net(x)
        return u + out if self.residual else out

    def predict_next(
        self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor
    ) -> torch.Tensor:
        """One step. u: [B, N, C] (normalised); coords: [B, N, d]; params: [B, P]; dt: [B] -> [B, N, C]."""
        b, n, c = u.shape
        shape = self.grid_shape(n) if c == self.n_channels else None
        if shape is None:
            raise UPSError(
                f"{type(self).__name__} was built for {math.prod(self.spatial_shape)} points x {self.n_channels} "
                f"channels but got u of shape {tuple(u.shape)} (grid models need the training grid"
                + (", or the same grid refined or coarsened by one factor per dimension)" if self.resolution_agnostic
                   else ")")
            )
        grid = u.reshape(b, *shape, c).movedim(-1, 1)
        nxt = self.grid_forward(grid, params, dt)
        return nxt.movedim(1, -1).reshape(b, n, c)

    def grid_shape(self, n: int) -> tuple[int, ...] | None:
        """The grid of ``n`` points: the training grid, or (resolution-agnostic networks only) the training grid
        scaled by one common factor in every dimension; None when ``n`` points form neither."""
        if n == math.prod(self.spatial_shape):
            return self.spatial_shape
        if not self.resolution_agnostic:
            return None
        factor = (n / math.prod(self.spatial_shape)) ** (1.0 / len(self.spatial_shape))
        shape = tuple(max(1, round(s * factor)) for s in self.spatial_shape)
        return shape if math.prod(shape) == n else None


def _grid_kwargs(meta: DatasetMetadata, config: GridInputConfig) -> dict:
    return dict(spatial_shape=tuple(meta.spatial_shape), n_channels=meta.n_channels, n_params=meta.n_params,
                residual=config.residual, param_transform=config.param_transform, dt_channel=config.dt_channel)


# ------------------------------------------------------------------------------------------- FNO
class FNOConfig(GridInputConfig):
    """neuraloperator's FNO. ``n_modes`` is kept per spatial dimension (at most X // 2 + 1)."""

    n_modes: int = Field(16, ge=1)
    hidden_channels: int = Field(64, ge=1)
    n_layers: int = Field(4, ge=1)
    lifting_channel_ratio: int = Field(2, ge=1)
    projection_channel_ratio: int = Field(2, ge=1)
    positional_embedding: bool = True  # neuralop's "grid" embedding appends coordinate channels


@MODELS.register("fno")
class FNOModel(GridModel):
    """``neuralop.models.FNO`` on ``[B, C + P (+1), *spatial]`` -> ``[B, C, *spatial]``."""

    config_class = FNOConfig

    def __init__(self, *, spatial_shape: tuple[int, ...], n_channels: int, n_params: int, n_modes: int,
                 hidden_channels: int, n_layers: int, lifting_channel_ratio: int = 2,
                 projection_channel_ratio: int = 2, positional_embedding: bool = True, residual: bool = True,
                 param_transform: ParamTransform = "log10", dt_channel: bool = False):
        super().__init__(spatial_shape=spatial_shape, n_channels=n_channels, n_params=n_params, residual=residual,
                         param_transform=param_transform, dt_channel=dt_channel)
        try:
            from neuralop.models import FNO
        except ImportError:
            raise ConfigError(
                "model 'fno' needs the neuraloperator package: pip install -e '.[baselines]'"
            ) from None
        limit = min(self.spatial_shape) // 2 + 1
        if n_modes > limit:
            raise ConfigError(f"model.params.n_modes={n_modes} exceeds the grid's {limit} Fourier modes "
                              f"(spatial shape {self.spatial_shape}); choose n_modes <= {limit}")
        self.net = FNO(
            n_modes=(int(n_modes),) * len(self.spatial_shape), in_channels=self.in_channels,
            out_channels=self.n_channels, hidden_channels=hidden_channels, n_layers=n_layers,
            lifting_channel_ratio=lifting_channel_ratio, projection_channel_ratio=projection_channel_ratio,
            positional_embedding="grid" if positional_embedding else None,
        )
        # spectral weights on the lowest modes and a grid embedding on the unit box: the same function on any
        # resolution of the domain (neuraloperator's FNO, as published), so rollouts may use a finer grid
        self.resolution_agnostic = True

    def state_dict(self, *args, **kwargs):
        """Tensors only: neuralop adds a ``_metadata`` dict entry that safetensors checkpoints cannot hold."""
        out = super().state_dict(*args, **kwargs)
        for key in [k for k, v in out.items() if not isinstance(v, torch.Tensor)]:
            del out[key]
        return out

    @classmethod
    def from_config(cls, meta: DatasetMetadata, params: dict) -> FNOModel:
        config = FNOConfig.model_validate(params)
        return cls(**_grid_kwargs(meta, config), n_modes=config.n_modes, hidden_channels=config.hidden_channels,
                   n_layers=config.n_layers, lifting_channel_ratio=config.lifting_channel_ratio,
                   projection_channel_ratio=config.projection_channel_ratio,
                   positional_embedding=config.positional_embedding)


# ---------------------------------------------------------------------------------------- U-Net
class UNet1dConfig(GridInputConfig):
    """A compact 1D U-Net: ``depth`` halvings, ``width * 2**level`` channels, circular padding."""

    width: int = Field(32, ge=1)
    depth: int = Field(3, ge=1, le=8)
    kernel_size: int = Field(3, ge=1)
    groups: int = Field(8, ge=1)  # GroupNorm groups (reduced to a divisor of each width)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"kernel_size={value} must be odd (symmetric circular padding)")
        return value


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d}


class _ConvBlock(nn.Module):
    """Two (circular conv -> GroupNorm -> GELU) layers. x [B, Cin, *spatial] -> [B, Cout, *spatial] (1D or 2D)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int, dims: int = 1):
        super().__init__()
        pad = kernel_size // 2
        conv = _CONV[dims]
        self.conv1 = conv(c_in, c_out, kernel_size, padding=pad, padding_mode="circular")
        self.norm1 = _norm(c_out, groups)
        self.conv2 = conv(c_out, c_out, kernel_size, padding=pad, padding_mode="circular")
        self.norm2 = _norm(c_out, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(self.norm2(self.conv2(x)))


class UNet1dNet(nn.Module):
    """The U-Net body. x [B, Cin, *spatial] -> [B, Cout, *spatial] (``dims`` = 1 or 2 spatial axes); each
    axis must be divisible by 2**depth.

    Downsampling is a stride-2 average pooling, upsampling a nearest-neighbour doubling; every
    convolution pads circularly, so the network commutes with shifts by multiples of 2**depth.
    """

    def __init__(self, *, in_channels: int, out_channels: int, width: int, depth: int, kernel_size: int,
                 groups: int, dims: int = 1):
        super().__init__()
        widths = [width * 2**level for level in range(depth + 1)]
        self.pool = _POOL[dims]
        self.inc = _ConvBlock(in_channels, widths[0], kernel_size, groups, dims)
        self.down = nn.ModuleList(_ConvBlock(widths[i], widths[i + 1], kernel_size, groups, dims)
                                  for i in range(depth))
        self.up = nn.ModuleList(
            _ConvBlock(widths[i + 1] + widths[i], widths[i], kernel_size, groups, dims) for i in reversed(range(depth))
        )
        self.out = _CONV[dims](widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(self.pool(skips[-1], 2)))
        h = skips.pop()
        for block in self.up:
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skips.pop()], dim=1))
        return self.out(h)


class _UNet(GridModel):
    """The U-Net peer on ``[B, C + P (+1), *grid]`` -> ``[B, C, *grid]`` (periodic domains), ``dims`` 1 or 2."""

    config_class = UNet1dConfig
    dims: int = 1
    name: str = "unet1d"

    def __init__(self, *, spatial_shape: tuple[int, ...], n_channels: int, n_params: int, width: int = 32,
                 depth: int = 3, kernel_size: int = 3, groups: int = 8, residual: bool = True,
                 param_transform: ParamTransform = "log10", dt_channel: bool = False):
        super().__init__(spatial_shape=spatial_shape, n_channels=n_channels, n_params=n_params, residual=residual,
                         param_transform=param_transform, dt_channel=dt_channel)
        if len(self.spatial_shape) != self.dims:
            other = "'unet2d', 'fno' or 'upt'" if self.dims == 1 else "'unet1d', 'fno' or 'upt'"
            raise ConfigError(f"model '{self.name}' needs {self.dims}D data but the data set has spatial shape "
                              f"{self.spatial_shape}; use model {other}")
        if any(n % 2**depth for n in self.spatial_shape):
            raise ConfigError(f"model.params.depth={depth} needs every axis divisible by {2**depth} but the grid is "
                              f"{self.spatial_shape}; lower depth or change data.spatial_stride")
        self.net = UNet1dNet(in_channels=self.in_channels, out_channels=self.n_channels, width=width, depth=depth,
                             kernel_size=kernel_size, groups=groups, dims=self.dims)

    @classmethod
    def from_config(cls, meta: DatasetMetadata, params: dict) -> _UNet:
        config = UNet1dConfig.model_validate(params)
        if meta.boundary != "periodic":
            raise ConfigError(f"model '{cls.name}' pads circularly and needs periodic data, not '{meta.boundary}'")
        return cls(**_grid_kwargs(meta, config), width=config.width, depth=config.depth, kernel_size=config.kernel_size,
                   groups=config.groups)


@MODELS.register("unet1d")
class UNet1d(_UNet):
    """The 1D U-Net peer on ``[B, C + P (+1), X]`` -> ``[B, C, X]``."""

    dims, name = 1, "unet1d"


@MODELS.register("unet2d")
class UNet2d(_UNet):
    """The 2D U-Net peer (the blocks of ``unet1d`` with 2D convolutions) on ``[B, C + P (+1), X, Y]``."""

    dims, name = 2, "unet2d"
