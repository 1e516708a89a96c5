"""Building blocks of the UPT-style surrogate: geometry helpers, relative-position attention blocks
with optional DiT-style adaLN-Zero conditioning, and an amplitude-preserving continuous convolution.

Nothing here applies a LayerNorm to the field's features by default: in Burgers the amplitude of u
sets the wave speed, and a norm that divides it out before a read-out hides exactly that (SPEC,
"Lessons measured on this kind of machine").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_offset(a: torch.Tensor, b: torch.Tensor, period: torch.Tensor | None) -> torch.Tensor:
    """``a - b`` (broadcast), wrapped into [-period/2, period/2) per dimension when periodic.

    a, b: [..., d] broadcastable; period: [d] or None (non-periodic) -> [..., d].
    """
    delta = a - b
    if period is None:
        return delta
    return torch.remainder(delta + 0.5 * period, period) - 0.5 * period


def lattice(n_per_dim: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Evenly spread positions: ``n_per_dim`` cell centres per dimension of the box [lo, hi).

    lo, hi: [d] -> [n_per_dim ** d, d] (last dimension fastest).
    """
    d = lo.numel()
    axes = [lo[i] + (torch.arange(n_per_dim, dtype=lo.dtype) + 0.5) * (hi[i] - lo[i]) / n_per_dim for i in range(d)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


def shared_rows(coords: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """coords [B, N, d] and mask [B, N] (or None) cut to their first row [1, N, d], [1, N] when every sample has
    the same points (a grid, as in evaluation and rollouts), else unchanged: the geometry computed from one row
    serves the whole batch (``gather_neighbours`` and ``kernel_sum`` broadcast it)."""
    if coords.shape[0] == 1 or not torch.equal(coords, coords[:1].expand_as(coords)):
        return coords, mask
    if mask is not None and not torch.equal(mask, mask[:1].expand_as(mask)):
        return coords, mask
    return coords[:1], None if mask is None else mask[:1]


def gather_neighbours(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pick rows of ``values`` per target. values: [B, N, F]; idx: [B or 1, M, k] -> [B, M, k, F] (an index of
    one row, ``shared_rows``, is the same for every sample).

    Rows are copied whole from the flattened [B * N, F] table (``index_select``): on the CPU about 10x faster
    forward and 4x with backward than ``torch.gather`` along dim 1 with an index expanded over F."""
    b, n, f = values.shape
    m, k = idx.shape[1:]
    if idx.shape[0] == 1 and b > 1:  # one index for every sample: pick along the point axis
        return values.index_select(1, idx.reshape(-1)).reshape(b, m, k, f)
    rows = idx + torch.arange(b, device=idx.device).view(b, 1, 1) * n  # [B, M, k] rows of the flat table
    return values.reshape(b * n, f).index_select(0, rows.reshape(-1)).reshape(b, m, k, f)


def kernel_sum(values: torch.Tensor, idx: torch.Tensor, kernel: torch.Tensor,
               start: torch.Tensor | None = None) -> torch.Tensor:
    """``start + sum_j kernel[:, q, j] * values[:, idx[:, q, j]]``: a continuous-convolution read-out.
    values: [B, N, F]; idx: [B or 1, M, k]; kernel: [B or 1, M, k, F]; start: [B, M, F] or None (zero)
    -> [B, M, F]. With geometry shared by the batch (one row) the k neighbours are added one at a time, each
    by one fused multiply-add: no [B, M, k, F] table (3x faster at 512 queries, CPU)."""
    if idx.shape[0] > 1 or values.shape[0] == 1:
        out = (gather_neighbours(values, idx) * kernel).sum(2)
        return out if start is None else start + out
    first = values.index_select(1, idx[0, :, 0])
    out = first * kernel[:, :, 0] if start is None else torch.addcmul(start, first, kernel[:, :, 0])
    for j in range(1, idx.shape[-1]):
        out = out.addcmul_(values.index_select(1, idx[0, :, j]), kernel[:, :, j])
    return out


class MLP(nn.Module):
    """Two-layer perceptron with GELU: [..., n_in] -> [..., n_out]."""

    def __init__(self, *, n_in: int, n_hidden: int, n_out: int, zero_out: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.fc2 = nn.Linear(n_hidden, n_out)
        if zero_out:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., n_in] -> [..., n_out]."""
        return self.fc2(F.gelu(self.fc1(x)))


class OffsetFeatures(nn.Module):
    """Fixed Fourier features of an offset (in units of a length ``scale``): no per-pair hidden layer, so
    they stay cheap on the many query-token pairs of the decoder.

    ``[sin(pi f delta / scale), cos(pi f delta / scale)]`` for f = 1/2, 1, ..., n_freq/2, plus ``delta / scale``.
    """

    def __init__(self, *, dims: int, n_freq: int, scale: float):
        super().__init__()
        self.register_buffer("freqs", torch.pi * 0.5 * torch.arange(1, n_freq + 1) / scale, persistent=False)
        self.scale = scale
        self.n_out = dims * (2 * n_freq + 1)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """delta: [..., d] -> [..., d * (2 n_freq + 1)]."""
        arg = delta.unsqueeze(-1) * self.freqs  # [..., d, n_freq]
        return torch.cat([arg.sin(), arg.cos(), delta.unsqueeze(-1) / self.scale], dim=-1).flatten(-2)


class RelativeBias(nn.Module):
    """Per-head attention bias from the offset between two positions (locality).

    ``bias_h(delta) = MLP(delta / h)_h - softplus(a_h) * |delta / h|``: a learned, possibly
    asymmetric kernel plus a distance decay whose slope differs per head at initialisation.
    """

    def __init__(self, *, dims: int, heads: int, hidden: int = 32):
        super().__init__()
        self.mlp = MLP(n_in=dims, n_hidden=hidden, n_out=heads, zero_out=True)
        # slopes from 0.25 to 2 across heads: some heads look far, some stay local.
        init = torch.logspace(math.log10(0.25), math.log10(2.0), heads)
        self.raw_slope = nn.Parameter(torch.log(torch.expm1(init)))

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """delta: [..., d] offsets in units of the token spacing -> [..., heads]."""
        dist = delta.norm(dim=-1, keepdim=True)
        return self.mlp(delta) - F.softplus(self.raw_slope) * dist


class Modulation(nn.Module):
    """DiT adaLN-Zero: a conditioning vector -> (shift, scale, gate) x 2, zero at initialisation."""

    def __init__(self, *, width: int, cond_dim: int):
        super().__init__()
        self.lin = nn.Linear(cond_dim, 6 * width)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cond: [B, cond_dim] -> six tensors [B, 1, width]."""
        return tuple(c.unsqueeze(1) for c in self.lin(F.silu(cond)).chunk(6, dim=-1))


class SpectralMix(nn.Module):
    """Token mixing on the lowest Fourier modes of the token lattice (an FNO layer on the latent tokens).

    ``out = irfft(W_k * rfft(z)_k)`` over the lattice's ``d`` axes, one complex ``D x D`` matrix per kept mode
    ``k``: ``modes`` frequencies per axis (the non-negative ones on the last axis, both signs on the others).
    The tokens' positions enter only through the transform, so the layer commutes with lattice shifts
    (periodic domains). On a bounded domain the lattice is zero-padded to twice its size first, so nothing wraps
    across the boundary.
    """

    def __init__(self, *, width: int, dims: int, n_per_dim: int, modes: int, periodic: bool = True):
        super().__init__()
        self.dims, self.n = dims, n_per_dim
        self.size = n_per_dim if periodic else 2 * n_per_dim  # the transformed lattice's points per axis
        if modes > self.size // 2 + 1:
            raise ValueError(f"spectral_modes={modes} exceeds the {self.size // 2 + 1} Fourier modes of a token "
                             f"lattice of {self.size} per axis; choose spectral_modes <= {self.size // 2 + 1}")
        both = torch.cat([torch.arange(modes), torch.arange(self.size - modes, self.size)])
        full = torch.arange(self.size) if 2 * modes >= self.size else both
        index = [full] * (dims - 1) + [torch.arange(modes)]  # kept modes per axis (last: rfft half)
        # the kept modes' coordinates, built once: [d, *shape]; it follows the module across devices
        self.register_buffer("mode_index", torch.stack(torch.meshgrid(*index, indexing="ij")), persistent=False)
        shape = [len(i) for i in index]
        self.weight = nn.Parameter(torch.randn(*shape, width, width, 2) / (2 * width) ** 0.5)
        # a 1D lattice no longer than twice the width: the transforms as real matrix products (``_forward_real``),
        # which then cost at most twice the mode mixing itself
        self.real_transform = dims == 1 and n_per_dim <= 2 * width
        if self.real_transform:
            forward, inverse = _real_dft(n_per_dim, modes, self.size)
            self.register_buffer("dft", forward, persistent=False)  # [2 modes, n]
            self.register_buffer("idft", inverse, persistent=False)  # [n, 2 modes]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, L, D] (L = n ** d, last lattice axis fastest) -> [B, L, D]."""
        if self.real_transform:
            return self._forward_real(z)
        b, length, width = z.shape
        axes = tuple(range(1, self.dims + 1))
        x = z.reshape(b, *([self.n] * self.dims), width)
        if self.size != self.n:  # bounded domain: zero-pad every lattice axis to twice its size
            x = F.pad(x, [0, 0] + [0, self.n] * self.dims)
        spec = torch.fft.rfftn(x, dim=axes, norm="ortho")  # [B, *modes_full, D]
        weight = torch.view_as_complex(self.weight)
        if self.dims == 1:  # the kept modes are the first ones: a slice in, and irfft pads the rest with zeros
            mixed = torch.einsum("bmi,mio->bmo", spec[:, :weight.shape[0]], weight)  # [B, modes, D]
            x = torch.fft.irfft(mixed, n=self.size, dim=1, norm="ortho")
        else:
            sel = (slice(None), *self.mode_index)
            out = torch.zeros_like(spec)
            out[sel] = torch.einsum("b...i,...io->b...o", spec[sel], weight)
            x = torch.fft.irfftn(out, s=[self.size] * self.dims, dim=axes, norm="ortho")
        if self.size != self.n:
            x = x[(slice(None), *[slice(0, self.n)] * self.dims)]
        return x.reshape(b, length, width)

    def _forward_real(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on a short 1D lattice in real arithmetic: the kept modes' real and imaginary parts by one
        matrix product with the lattice, the complex mode weights by one batched product over the modes (the weight
        read as a real [D, 2D] matrix per mode, no copy), the inverse transform by one more product. The same map as
        the FFT path; with 64 tokens of width 64 a rollout takes ~0.9x the time and a training step ~0.96x (one CPU
        thread; README "Cheaper steps"). z: [B, n, D] -> [B, n, D]."""
        b, n, width = z.shape
        modes = self.dft.shape[0] // 2
        spec = torch.matmul(self.dft, z)  # [B, 2 modes, D]: real parts, then imaginary parts
        x = spec.view(b, 2, modes, width).permute(2, 1, 0, 3).reshape(modes, 2 * b, width)  # [modes, (Re|Im, B), D]
        # r[m, p, b, o, q] = sum_i part p of mode m [b, i] * (Re if q == 0 else Im) W[m, i, o]
        r = torch.bmm(x, self.weight.reshape(modes, width, 2 * width)).view(modes, 2, b, width, 2)
        mixed = torch.stack([r[:, 0, ..., 0] - r[:, 1, ..., 1], r[:, 0, ..., 1] + r[:, 1, ..., 0]])  # [2, modes, B, D]
        return torch.matmul(self.idft, mixed.permute(2, 0, 1, 3).reshape(b, 2 * modes, width))  # [B, n, D]


def _real_dft(n: int, modes: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rfft`` (orthonormal) of n lattice values zero-padded to ``size``, kept to its first ``modes``, as a real
    matrix [2 modes, n] (rows: the modes' real parts, then their imaginary parts), and the matching ``irfft`` of
    those modes cut back to the first n values, [n, 2 modes] (a mode above 0 counts twice, for its conjugate twin,
    except the Nyquist mode of an even size; the imaginary parts of mode 0 and the Nyquist mode drop out, as in
    irfft)."""
    m = torch.arange(modes, dtype=torch.float64)
    x = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * m[:, None] * x[None] / size  # [modes, n]
    forward = torch.cat([torch.cos(angle), -torch.sin(angle)])  # [2 modes, n]
    twice = torch.where((m == 0) | (2 * m == size), 1.0, 2.0)[:, None]  # [modes, 1]
    inverse = torch.cat([twice * torch.cos(angle), -twice * torch.sin(angle)]).T  # [n, 2 modes]
    return (forward / math.sqrt(size)).float(), (inverse / math.sqrt(size)).contiguous().float()


class Block(nn.Module):
    """Transformer block on tokens: a token mixer, then a token-wise MLP.

    ``mixer``: "attention" (multi-head, with a relative-position attention bias for locality) or
    "spectral" (:class:`SpectralMix` on the token lattice, which needs ``n_per_dim`` and ``modes``).
    Conditioned (``cond_dim`` given): adaLN-Zero, so the untrained block is exactly the identity.
    Unconditioned: residual branches with learned gates that start at ``gate_init``.
    ``norm``: "none" keeps the token amplitude visible to the branches; "layer" is the textbook
    pre-norm (discards it).
    """

    def __init__(self, *, width: int, heads: int, mlp_ratio: float, cond_dim: int | None, norm: str, dims: int,
                 mixer: str = "attention", n_per_dim: int | None = None, modes: int | None = None,
                 periodic: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.mixer = mixer
        if mixer == "spectral":
            self.spectral = SpectralMix(width=width, dims=dims, n_per_dim=n_per_dim, modes=modes, periodic=periodic)
        else:
            self.qkv = nn.Linear(width, 3 * width)
            self.proj = nn.Linear(width, width)
            self.bias = RelativeBias(dims=dims, heads=heads)
        self.mlp = MLP(n_in=width, n_hidden=int(width * mlp_ratio), n_out=width)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False) if norm == "layer" else nn.Identity()
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False) if norm == "layer" else nn.Identity()
        self.modulation = Modulation(width=width, cond_dim=cond_dim) if cond_dim is not None else None
        if self.modulation is None:
            self.gates = nn.Parameter(torch.full((2, width), 0.1))

    def attention(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """h: [B, L, D]; bias: [1 or B, H, L, L] -> [B, L, D]."""
        b, n, width = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        logits = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5) + bias.to(q.dtype)
        out = torch.matmul(logits.softmax(dim=-1), v)  # [B, H, L, Dh]
        return self.proj(out.transpose(1, 2).reshape(b, n, width))

    def mix(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The token mixer. h: [B, L, D]; delta: [L, L, d] token offsets (attention only) -> [B, L, D]."""
        if self.mixer == "spectral":
            return self.spectral(h)
        return self.attention(h, self.bias(delta).permute(2, 0, 1).unsqueeze(0))  # bias [1, H, L, L]

    def forward(self, z: torch.Tensor, delta: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z: [B, L, D]; delta: [L, L, d] token offsets in spacing units; cond: [B, cond_dim] -> [B, L, D]."""
        if self.modulation is None:
            z = z + self.gates[0] * self.mix(self.norm1(z), delta)
            return z + self.gates[1] * self.mlp(self.norm2(z))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)
        z = z + gate1 * self.mix(self.norm1(z) * (1 + scale1) + shift1, delta)
        return z + gate2 * self.mlp(self.norm2(z) * (1 + scale2) + shift2)


class ContinuousConv(nn.Module):
    """Amplitude-preserving pooling of point values onto target positions.

    ``out_s = mean_{j : |x_j - y_s| < r} K(x_j - y_s) f(u_j)`` with ``K`` an MLP of the offset and
    ``f(u) = [u, u^2/2]`` (linear in u, plus the Burgers flux term when ``square``): the mean of a
    neighbourhood approximates an integral, so the result does not depend on how densely the points
    sample the field.
    """

    def __init__(self, *, dims: int, channels: int, width: int, hidden: int, square: bool):
        super().__init__()
        self.square = square
        self.n_feat = channels * (2 if square else 1)
        self.hidden = nn.Linear(dims, hidden)
        # K(delta) = W gelu(A delta + a) + w: W is applied after the neighbourhood mean (same function,
        # far fewer multiply-adds than evaluating the full kernel on every pair).
        self.out = nn.Linear((hidden + 1) * self.n_feat, width)

    def kernel(self, delta: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-pair hidden kernel and the neighbourhood weights (both depend on the geometry only, so a rollout
        on fixed points may reuse them). delta: [B or 1, S, k, d] offsets / r; mask: [B or 1, S, k] ->
        gelu(A delta + a) [B or 1, S, k, H] and mask / neighbourhood size [B or 1, S, k]."""
        weight = mask.to(delta.dtype) / mask.sum(-1, keepdim=True).clamp_min(1).to(delta.dtype)
        return F.gelu(self.hidden(delta)), weight

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor,
                kernel: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """u: [B, S, k, C] neighbour values; delta: [B or 1, S, k, d] offsets / r (1: shared by the batch);
        mask: [B or 1, S, k]; kernel: the result
        of :meth:`kernel` for this geometry, or None to compute it -> [B, S, D].

        The mask and the 1 / size of the mean weigh the few features, not the H-wide kernel (the same sum)."""
        feats = torch.cat([u, 0.5 * u * u], dim=-1) if self.square else u  # [B, S, k, F]
        h, weight = self.kernel(delta, mask) if kernel is None else kernel  # [B, S, k, H], [B, S, k]
        feats = feats * weight.unsqueeze(-1)
        if h.shape[0] == 1:  # geometry shared by the batch (``shared_rows``): one matrix product per target
            moments = torch.einsum("skh,bskf->bshf", h[0], feats)  # [B, S, H, F]
        else:
            moments = torch.einsum("bskh,bskf->bshf", h, feats)
        moments = torch.cat([moments, feats.sum(2, keepdim=True)], dim=2)  # + the constant part w of K
        return self.out(moments.flatten(-2))  # [B, S, D]


class GeometryCache:
    """Remembers the last few results of a function of a coordinate tensor (neighbour tables, offsets),
    so a rollout or a training step that reuses one point set computes its geometry once.

    A hit needs equal coordinates (compared in full, cheap next to a neighbour search), the same
    extra key and the same inference mode (tensors made under ``torch.inference_mode`` cannot enter
    autograd later). Results must not depend on trainable parameters.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: list[tuple[tuple, torch.Tensor, object]] = []

    @torch.compiler.disable  # eager under torch.compile: neighbour searches are data-dependent integer work
    def get(self, coords: torch.Tensor, key: tuple, compute):
        """``compute()`` for coords [..., d] (and ``key``), or the remembered result."""
        full_key = (key, tuple(coords.shape), coords.dtype, coords.device, torch.is_inference_mode_enabled())
        for i, (k, c, value) in enumerate(self.entries):
            if k == full_key and torch.equal(c, coords):
                self.entries.append(self.entries.pop(i))
                return value
        value = compute()
        self.entries = [*self.entries[-(self.size - 1):], (full_key, coords.detach().clone(), value)]
        return value


def param_versions(*modules: nn.Module) -> tuple:
    """A key that changes whenever a parameter of ``modules`` is replaced or updated in place (optimiser steps,
    ``load_state_dict``): for caching parameter-dependent results outside autograd."""
    return tuple((id(p), p._version) for m in modules for p in m.parameters())
