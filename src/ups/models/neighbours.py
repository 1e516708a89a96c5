"""Neighbour search between an arbitrary point set and a regular token lattice, without a dense distance matrix.

The UPT-style surrogate's tokens sit on a lattice of ``n`` cell centres per dimension (``layers.lattice``). The
brute-force search measures the distance from every point to every token, ``[B, L, N]`` (L = n^d): on a
64 x 64 grid with a 16 x 16 lattice that is 16.8 million distances and a top-k over 4,096 per token for every
batch of 16, and it took about 2.4 of the 3.3 CPU s of such a training step. Here each point only looks at the
lattice cells around its own (a window of a few cells per dimension), which contains every token the brute force
could pick:

- ``nearest_tokens``: the k tokens nearest each query (the decoder's read-out);
- ``tokens_within``: the points within a radius of each token (the encoder's pooling), found point by point and
  then grouped by token.

Both return what the brute force returns (the same sets, and the same offsets up to rounding), for
any point set, including irregular ones that differ per sample. Where the window argument does not hold (a
lattice too small for the window, or ``nearest_tokens`` on a non-periodic domain) they return None and the
caller falls back to the brute force.
"""

from __future__ import annotations

import math

import torch


def _offsets(first: int, last: int, dims: int) -> torch.Tensor:
    """Every integer offset in [first, last]^dims -> [W, dims] (long), W = (last - first + 1)^dims."""
    r = torch.arange(first, last + 1)
    return torch.cartesian_prod(*([r] * dims)).reshape(-1, dims)


def _window(coords: torch.Tensor, n: int, lo: torch.Tensor, spacing: torch.Tensor, periodic: bool,
            first: int, last: int) -> tuple[torch.Tensor, ...]:
    """The lattice cells ``floor(f) + o`` (o in [first, last]^d, f the point's position in lattice units, token i at
    f = i) around each point. coords: [B, N, d] -> token idx [B, N, W], offsets point minus token in spacings
    [B, N, W, d], exists [B, N, W] (False: outside a non-periodic lattice). The offset is ``f - i`` before
    wrapping, which is the nearest periodic image while the window spans at most n cells."""
    dims = coords.shape[-1]
    f = (coords - lo) / spacing - 0.5  # [B, N, d]
    cell = torch.floor(f).long()[:, :, None, :] + _offsets(first, last, dims).to(coords.device)  # [B, N, W, d]
    delta = f[:, :, None, :] - cell.to(f.dtype)
    if periodic:
        exists, cell = torch.ones_like(cell[..., 0], dtype=torch.bool), cell % n
    else:
        exists, cell = ((cell >= 0) & (cell < n)).all(-1), cell.clamp(0, n - 1)
    strides = n ** torch.arange(dims - 1, -1, -1, device=coords.device)  # last dimension fastest, as ``lattice``
    return (cell * strides).sum(-1), delta, exists


def nearest_tokens(coords: torch.Tensor, *, n: int, lo: torch.Tensor, spacing: torch.Tensor,
                   period: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The k tokens nearest each query on a periodic lattice of n cells per dimension from ``lo``. coords: [B, Q, d]
    -> idx [B, Q, k], delta [B, Q, k, d] (query minus token, in spacings), or None where the window argument does
    not hold.

    The 2b x ... x 2b block of cells around the query's cell holds >= k tokens, all within b sqrt(d) spacings;
    every token outside the window [floor(f) - a + 1, floor(f) + a]^d is at least a >= b sqrt(d) away."""
    dims = coords.shape[-1]
    b = 1
    while (2 * b) ** dims < k:
        b += 1
    a = math.isqrt(b * b * dims - 1) + 1  # the smallest integer a with a^2 >= b^2 d
    if period is None or 2 * a > n:
        return None
    idx, delta, _ = _window(coords, n, lo, spacing, True, 1 - a, a)
    sel = delta.norm(dim=-1).topk(k, dim=-1, largest=False).indices  # [B, Q, k]
    return idx.gather(2, sel), delta.gather(2, sel.unsqueeze(-1).expand(-1, -1, -1, dims))


def tokens_within(coords: torch.Tensor, *, n: int, lo: torch.Tensor, spacing: torch.Tensor,
                  period: torch.Tensor | None, radius: float,
                  points: torch.Tensor | None = None) -> tuple[torch.Tensor, ...] | None:
    """The real points within ``radius`` spacings of each token. coords: [B, N, d]; points: [B, N]
    bool (True = real point; None: all) -> idx [B, L, m] of points, delta [B, L, m, d] (point minus token, in
    spacings), mask [B, L, m] (m = the largest count, at least 1; unused slots hold point 0 and mask False), or
    None where the window would wrap onto itself (fewer than 2 ceil(radius) + 2 tokens per dimension)."""
    reach = math.ceil(radius)
    if period is not None and 2 * reach + 2 > n:
        return None
    bsz, npts, dims = coords.shape
    tokens = n**dims
    idx, delta, exists = _window(coords, n, lo, spacing, period is not None, -reach, reach + 1)  # [B, N, W]
    near = exists & (delta.norm(dim=-1) < radius)
    if points is not None:
        near = near & points[:, :, None]
    pair = near.reshape(-1).nonzero().squeeze(-1)  # the (sample, point, cell) triples that are neighbours
    per_sample = npts * idx.shape[-1]
    key = torch.div(pair, per_sample, rounding_mode="floor") * tokens + idx.reshape(-1)[pair]  # sample * L + token
    count = torch.bincount(key, minlength=bsz * tokens)  # [B L]
    m = min(max(1, int(count.max())), npts)
    key, order = key.sort(stable=True)  # grouped by (sample, token)
    pair = pair[order]
    rank = torch.arange(key.numel(), device=coords.device) - (count.cumsum(0) - count)[key]
    slot = key * m + rank
    out_idx = torch.zeros(bsz * tokens * m, dtype=torch.long, device=coords.device)
    out_idx[slot] = torch.div(pair % per_sample, idx.shape[-1], rounding_mode="floor")
    out_delta = coords.new_zeros(bsz * tokens * m, dims)
    out_delta[slot] = delta.reshape(-1, dims)[pair]
    out_mask = torch.zeros(bsz * tokens * m, dtype=torch.bool, device=coords.device)
    out_mask[slot] = True
    return out_idx.view(bsz, tokens, m), out_delta.view(bsz, tokens, m, dims), out_mask.view(bsz, tokens, m)
