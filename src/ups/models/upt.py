"""The UPT-style latent surrogate (the main path): encode any point set to latent tokens, step the
tokens with a conditioned transformer, decode at any query points.

```
u [B, N, C] at coords [B, N, d]
  encode: continuous convolution onto S supernodes (evenly spread lattice, radius neighbourhoods,
          mean of u-linear messages -> the amplitude survives) -> transformer blocks     z [B, L=S, D]
  step:   adaLN-Zero transformer blocks conditioned on dt and the PDE parameters; tokens mix by
          attention with a relative-position bias (``mixer: attention``) or by a learned multiplier on
          the token lattice's lowest Fourier modes (``mixer: spectral``, an FNO layer in latent space);
          z_next = z + f(z, cond)                                                     z [B, L, D]
  decode: each query reads its nearest tokens, either by attention (offset-dependent filters and
          attention bias, u_q in the query; ``decoder: attention``) or by a learned continuous-
          convolution kernel of the offset, sum_s K(x_q - y_s) V z_s (``decoder: kernel``, ~4x
          cheaper); its own current value u_q is added; MLP head -> C channels; with
          ``predict_increment`` the head predicts u_next - u_q                        u [B, Q, C]
  bundling: with ``frames_per_step`` F > 1 one step advances F frames and the head gives all F
          (``decode_frames``; ``decode`` is the last of them)                      u [B, F, Q, C]
```
Neighbour tables are cached per point set (a rollout or a training step on fixed points searches them
once); under ``torch.no_grad`` / ``inference_mode`` the pooling and decoder kernels are cached too.
The model is translation-equivariant on periodic domains (it sees only offsets), so a random shift of
the points against the supernode lattice during training is the same as random supernode positions,
and the offsets it learns are continuous: decoding at unseen points (other resolutions, irregular
sets) is what it is trained for.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ups.config import Strict
from ups.data.metadata import DatasetMetadata
from ups.models import MODELS
from ups.models.layers import (
    MLP,
    Block,
    ContinuousConv,
    GeometryCache,
    OffsetFeatures,
    gather_neighbours,
    kernel_sum,
    lattice,
    param_versions,
    relative_offset,
    shared_rows,
)
from ups.models.neighbours import nearest_tokens, tokens_within


class UPTConfig(Strict):
    """Parameters of the UPT-style surrogate (shapes come from the data metadata)."""

    latent_dim: int = Field(64, ge=4)  # D, width of the tokens
    num_supernodes: int = Field(64, ge=2)  # L = S tokens; for d > 1 a perfect d-th power
    heads: int = Field(4, ge=1)
    encoder_depth: int = Field(1, ge=0)
    operator_depth: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    # how tokens mix in the encoder and operator blocks: "attention" (relative-position bias) or "spectral" (a
    # learned multiplier on the lowest ``spectral_modes`` Fourier modes of the token lattice, per axis)
    mixer: Literal["attention", "spectral"] = "attention"
    spectral_modes: int = Field(16, ge=1)
    encoder_radius: float = Field(1.5, gt=0)  # in supernode spacings
    kernel_hidden: int = Field(32, ge=4)
    encode_square: bool = True  # messages from [u, u^2/2] rather than u alone
    decoder_neighbours: int = Field(4, ge=1)  # tokens each query attends to
    decoder_hidden: int = Field(64, ge=4)
    decoder_freqs: int = Field(4, ge=1)  # Fourier features of the query-token offset: f = 1/2 .. freqs/2 cycles
    # "attention": each query attends to its nearest tokens (content-dependent weights); "kernel": a learned
    # continuous-convolution kernel of the offset interpolates the tokens to the query (about 4x cheaper)
    decoder: Literal["attention", "kernel"] = "attention"
    decoder_width: int | None = Field(None, ge=4)  # width of the kernel decoder's values (None: latent_dim)
    predict_increment: bool = True  # decode(z, x, u_q) = u_q + head(...)
    # temporal bundling: one operator step advances this many frames and the decoder reads all of them at once
    # (one head output per frame); a rollout of T frames then takes T / frames_per_step encode-step-decode passes
    frames_per_step: int = Field(1, ge=1)
    norm: Literal["none", "layer"] = "none"
    param_transform: Literal["log", "identity"] = "log"

    @model_validator(mode="after")
    def _heads_divide(self) -> UPTConfig:
        if self.latent_dim % self.heads:
            raise ValueError(f"latent_dim={self.latent_dim} must be divisible by heads={self.heads}")
        return self


def _per_dim(num: int, dims: int) -> int:
    n = round(num ** (1.0 / dims))
    if n**dims != num:
        raise ValueError(f"num_supernodes={num} is not a perfect power {dims} (needed in {dims}D)")
    return n


@MODELS.register("upt")
class UPT(nn.Module):
    """Encoder / operator / decoder surrogate with the latent interface of docs/ARCHITECTURE.md."""

    config_class = UPTConfig
    point_clouds = True  # encodes padded point clouds given a mask (``encode(u, coords, mask)``)
    compile_methods = ("encode", "step", "decode_frames")  # what ``ups.models.compile`` compiles (training, rollouts)

    def __init__(self, *, config: UPTConfig, dims: int, channels: int, n_params: int, dt_ref: float,
                 domain: tuple[tuple[float, float], ...], periodic: bool,
                 grid_spacing: tuple[float, ...] | None = None):
        super().__init__()
        self.config = config
        # point spacing per axis of the grid the model trains on (None: unknown); the reference of the rollout
        # mode reencode_xR (``ups.fine_grid``), which carries the state R times finer than it
        self.grid_spacing = grid_spacing
        self.dims, self.channels, self.n_params, self.dt_ref = dims, channels, n_params, dt_ref
        width = config.latent_dim
        lo = torch.tensor([a for a, _ in domain], dtype=torch.float32)
        hi = torch.tensor([b for _, b in domain], dtype=torch.float32)
        n = _per_dim(config.num_supernodes, dims)
        self.register_buffer("positions", lattice(n, lo, hi), persistent=False)  # [L, d]
        self.register_buffer("lo", lo, persistent=False)  # [d]
        self.n_per_dim = n
        self.register_buffer("spacing", (hi - lo) / n, persistent=False)  # [d]
        self.register_buffer("period", hi - lo, persistent=False)  # [d]
        self.periodic = periodic
        token_delta = relative_offset(self.positions[:, None], self.positions[None], self._period()) / self.spacing
        self.register_buffer("token_delta", token_delta, persistent=False)  # [L, L, d]
        block = dict(width=width, heads=config.heads, mlp_ratio=config.mlp_ratio, norm=config.norm, dims=dims,
                     mixer=config.mixer, n_per_dim=n, modes=config.spectral_modes, periodic=periodic)
        # encoder
        self.pool = ContinuousConv(dims=dims, channels=channels, width=width, hidden=config.kernel_hidden,
                                   square=config.encode_square)
        self.encoder_blocks = nn.ModuleList(Block(cond_dim=None, **block) for _ in range(config.encoder_depth))
        # operator
        self.cond_embed = MLP(n_in=1 + n_params, n_hidden=width, n_out=width)
        self.operator_blocks = nn.ModuleList(Block(cond_dim=width, **block) for _ in range(config.operator_depth))
        # decoder
        dec_width = width if config.decoder == "attention" else (config.decoder_width or width)
        self.query_embed = MLP(n_in=channels, n_hidden=config.decoder_hidden, n_out=dec_width)
        self.missing_query = nn.Parameter(torch.zeros(dec_width))
        self.dec_value = nn.Linear(width, dec_width)
        self.dec_features = OffsetFeatures(dims=dims, n_freq=config.decoder_freqs,
                                           scale=float(config.decoder_neighbours))
        self.dec_filter = nn.Linear(self.dec_features.n_out, dec_width)  # offset-dependent filter on the values
        if config.decoder == "attention":
            self.dec_query = nn.Linear(width, width)
            self.dec_key = nn.Linear(width, width)
            self.dec_bias = nn.Linear(self.dec_features.n_out, config.heads)  # offset-dependent attention bias
            self.dec_slope = nn.Parameter(torch.zeros(config.heads))  # distance decay per head (softplus)
        self.head = MLP(n_in=dec_width, n_hidden=config.decoder_hidden, n_out=channels * config.frames_per_step)
        self._geometry = GeometryCache()

    @classmethod
    def from_config(cls, meta: DatasetMetadata, params: dict) -> UPT:
        config = UPTConfig(**params)
        spacing = tuple((hi - lo) / n for (lo, hi), n in zip(meta.domain, meta.spatial_shape, strict=True))
        return cls(config=config, dims=meta.spatial_dims, channels=meta.n_channels, n_params=meta.n_params,
                   dt_ref=meta.dt, domain=meta.domain, periodic=meta.boundary == "periodic", grid_spacing=spacing)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def frames_per_step(self) -> int:
        """Frames one operator step advances (temporal bundling; 1: one frame per step)."""
        return self.config.frames_per_step

    @property
    def num_latents(self) -> int:
        return self.positions.shape[0]

    def _period(self) -> torch.Tensor | None:
        return self.period if self.periodic else None

    def _lattice(self) -> dict:
        return dict(n=self.n_per_dim, lo=self.lo, spacing=self.spacing, period=self._period())

    def _neighbourhoods(self, coords: torch.Tensor, points: torch.Tensor | None = None, *, radius: float):
        """The real points within ``radius`` spacings of each token. coords: [B, N, d]; points: [B, N] bool
        (True = real point; None: all) -> idx [B, L, m] of points, delta [B, L, m, d] offsets in spacings,
        mask [B, L, m] (m = largest count). Padded points are never in a neighbourhood. Searched cell by cell
        on the token lattice (``neighbours.tokens_within``); the dense search where the lattice is too small."""
        found = tokens_within(coords, radius=radius, points=points, **self._lattice())
        return found if found is not None else self._dense_neighbourhoods(coords, radius, points)

    def _dense_neighbourhoods(self, coords: torch.Tensor, radius: float, points: torch.Tensor | None = None):
        """``_neighbourhoods`` from every point-token distance ([B, L, N]; the reference the lattice search matches)."""
        delta = relative_offset(coords[:, None], self.positions[None, :, None], self._period()) / self.spacing
        dist = delta.norm(dim=-1)  # [B, L, N]
        if points is not None:
            dist = dist.masked_fill(~points[:, None, :], float("inf"))
        m = min(max(1, int((dist < radius).sum(-1).max())), dist.shape[-1])
        sel, idx = dist.topk(m, dim=-1, largest=False)
        delta = torch.gather(delta, 2, idx.unsqueeze(-1).expand(-1, -1, -1, self.dims))
        return idx, delta, sel < radius

    def encode(self, u: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """u: [B, N, C] (normalised) at coords [B, N, d]; mask: [B, N] bool, True at real points (None: all
        real) -> z [B, L, D]. Padded points (mask False) do not affect z."""
        radius = self.config.encoder_radius
        key = coords if mask is None else torch.cat([coords, mask.unsqueeze(-1).to(coords.dtype)], dim=-1)
        idx, delta, nb = self._geometry.get(key, ("encoder", radius),
                                            lambda: self._neighbourhoods(*shared_rows(coords, mask), radius=radius))
        kernel = None
        if not torch.is_grad_enabled():  # inference: the pooling kernel of these points is computed once
            kernel = self._geometry.get(key, ("pool", radius, param_versions(self.pool)),
                                        lambda: self.pool.kernel(delta / radius, nb))
        u_nb = gather_neighbours(u, idx)  # [B, L, m, C]
        z = self.pool(u_nb, delta / radius, nb, kernel)  # [B, L, D]
        for blk in self.encoder_blocks:
            z = blk(z, self.token_delta)
        return z

    def condition(self, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """params: [B, P]; dt: [B] -> cond [B, D]."""
        p = torch.log(params.abs().clamp_min(1e-12)) if self.config.param_transform == "log" else params
        return self.cond_embed(torch.cat([(dt / self.dt_ref).unsqueeze(-1), p.to(dt.dtype)], dim=-1))

    def step(self, z: torch.Tensor, params: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One operator step. z: [B, L, D]; params: [B, P]; dt: [B] -> z_next [B, L, D] = z + f(z, cond)."""
        cond = self.condition(params, dt)
        h = z
        for blk in self.operator_blocks:
            h = blk(h, self.token_delta, cond)
        return h  # each block is residual, so h = z + f(z, cond); untrained: exactly z

    def _nearest_tokens(self, coords_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``decoder_neighbours`` tokens nearest to each query. coords_q: [B, Q, d] ->
        idx [B, Q, k], delta [B, Q, k, d] (query minus token, in spacings). Searched in the lattice cells around
        each query (``neighbours.nearest_tokens``); the dense search where that does not apply."""
        k = min(self.config.decoder_neighbours, self.num_latents)
        found = nearest_tokens(coords_q, k=k, **self._lattice())
        return found if found is not None else self._dense_nearest(coords_q, k)

    def _dense_nearest(self, coords_q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``_nearest_tokens`` from every query-token distance ([B, Q, L]; the reference the lattice search matches)."""
        delta = relative_offset(coords_q[:, :, None], self.positions[None, None], self._period()) / self.spacing
        idx = delta.norm(dim=-1).topk(k, dim=-1, largest=False).indices
        return idx, torch.gather(delta, 2, idx.unsqueeze(-1).expand(-1, -1, -1, self.dims))

    def decode(self, z: torch.Tensor, coords_q: torch.Tensor, u_q: torch.Tensor | None = None) -> torch.Tensor:
        """z: [B, L, D]; coords_q: [B, Q, d]; u_q: [B, Q, C] current field at the queries or None -> [B, Q, C], the
        last frame of :meth:`decode_frames` (with one frame per step: the next field; without ``u_q``: the field
        the tokens hold)."""
        return self.decode_frames(z, coords_q, u_q)[:, -1]

    def decode_frames(self, z: torch.Tensor, coords_q: torch.Tensor, u_q: torch.Tensor | None = None) -> torch.Tensor:
        """z: [B, L, D]; coords_q: [B, Q, d]; u_q: [B, Q, C] current field at the queries or None
        -> [B, F, Q, C], the ``frames_per_step`` frames of one step.

        ``decoder: kernel``: ``u_q + head(sum_s K(x_q - y_s) V z_s + phi(u_q))`` over the ``decoder_neighbours``
        nearest tokens, K a linear map of Fourier features of the offset. ``decoder: attention``:
        each query attends to its ``decoder_neighbours`` nearest tokens; values are modulated by a filter
        of the offset, ``v_s * (1 + W f(x_q - y_s))`` (continuous-convolution style, linear in z), and
        the attention has a per-head offset bias; the query's current value ``u_q`` enters the query.
        With ``u_q`` and ``predict_increment`` frame f is ``u_q + increment_f``; without ``u_q`` the
        decoder reconstructs the field from z alone (the mode the inverse-encoding loss trains).
        """
        idx, delta, feats = self._geometry.get(coords_q, ("decoder",),
                                               lambda: self._query_geometry(shared_rows(coords_q)[0]))
        b, q = coords_q.shape[:2]
        phi = self.missing_query.expand(b, q, -1) if u_q is None else self.query_embed(u_q)  # [B, Q, D']
        if self.config.decoder == "kernel":
            if torch.is_grad_enabled():
                kernel = self.dec_filter(feats)  # [B, Q, k, D']
            else:  # inference: the kernel at these queries is computed once per rollout
                kernel = self._geometry.get(coords_q, ("kernel", param_versions(self.dec_filter)),
                                            lambda: self.dec_filter(feats))
            out = kernel_sum(self.dec_value(z), idx, kernel, start=phi)  # [B, Q, D']: phi + sum_s K(x_q - y_s) V z_s
        else:
            out = phi + self._attend(z, idx, delta, feats, phi)
        pred = self.head(out).unflatten(-1, (self.frames_per_step, -1)).movedim(-2, 1)  # [B, F, Q, C]
        if u_q is not None and self.config.predict_increment:
            pred = u_q.unsqueeze(1) + pred
        return pred

    def _query_geometry(self, coords_q: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """coords_q: [B, Q, d] -> nearest tokens idx [B, Q, k], offsets [B, Q, k, d], features [B, Q, k, F]."""
        idx, delta = self._nearest_tokens(coords_q)
        return idx, delta, self.dec_features(delta)

    def _attend(self, z: torch.Tensor, idx: torch.Tensor, delta: torch.Tensor, feats: torch.Tensor,
                phi: torch.Tensor) -> torch.Tensor:
        """The attention decoder's read-out. z [B, L, D]; idx [B, Q, k]; delta [B, Q, k, d]; feats [B, Q, k, F];
        phi [B, Q, D] -> [B, Q, D]."""
        heads = self.config.heads
        keys = gather_neighbours(self.dec_key(z), idx).unflatten(-1, (heads, -1))  # [B, Q, k, H, Dh]
        values = gather_neighbours(self.dec_value(z), idx) * (1 + self.dec_filter(feats))  # [B, Q, k, D]
        query = self.dec_query(phi).unflatten(-1, (heads, -1))  # [B, Q, H, Dh]
        bias = self.dec_bias(feats) - F.softplus(self.dec_slope) * delta.norm(dim=-1, keepdim=True)  # [B, Q, k, H]
        logits = (keys * query.unsqueeze(2)).sum(-1) / query.shape[-1] ** 0.5 + bias
        attn = logits.softmax(dim=2).unsqueeze(-1)  # [B, Q, k, H, 1]
        return (attn * values.unflatten(-1, (heads, -1))).sum(2).flatten(-2)  # [B, Q, D]

    def forward(self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """One re-encoding step at the input points. u: [B, N, C]; coords: [B, N, d]; mask: [B, N] bool or None
        -> [B, N, C] (values at padded points are meaningless)."""
        return self.decode(self.step(self.encode(u, coords, mask), params, dt), coords, u)
