"""The lattice neighbour search finds exactly what the dense point-token distance search finds, on irregular point
sets that differ per sample, padded point clouds, periodic and bounded domains, in 1D, 2D and 3D."""

import pytest
import torch

from ups.models.neighbours import nearest_tokens, tokens_within
from ups.models.upt import UPT, UPTConfig

CASES = [(1, 32, True), (1, 32, False), (2, 256, True), (2, 64, False), (3, 512, True)]


def model(dims: int, tokens: int, periodic: bool, **over) -> UPT:
    domain = tuple((0.0, 1.0 + 0.5 * i) for i in range(dims))  # unequal extents: spacing differs per dimension
    return UPT(config=UPTConfig(num_supernodes=tokens, **over), dims=dims, channels=1, n_params=1, dt_ref=1.0,
               domain=domain, periodic=periodic)


def points(dims: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(3, n, dims, generator=gen) * torch.tensor([1.0 + 0.5 * i for i in range(dims)])


def assert_same_neighbourhoods(got, want):
    """Per sample and token: the same points (in any order) with the same offsets, and the same width m."""
    (gi, gd, gm), (wi, wd, wm) = got, want
    assert gi.shape == wi.shape and gd.shape == wd.shape
    for b in range(gi.shape[0]):
        for s in range(gi.shape[1]):
            a, c = gi[b, s][gm[b, s]], wi[b, s][wm[b, s]]
            oa, oc = a.argsort(), c.argsort()
            assert torch.equal(a[oa], c[oc]), (b, s)
            torch.testing.assert_close(gd[b, s][gm[b, s]][oa], wd[b, s][wm[b, s]][oc], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("dims", "tokens", "periodic"), CASES)
@pytest.mark.parametrize("radius", [1.0, 1.5])
def test_encoder_neighbourhoods_match_the_dense_search(dims, tokens, periodic, radius):
    m = model(dims, tokens, periodic)
    x = points(dims, 400, seed=dims)
    real = torch.rand(3, 400, generator=torch.Generator().manual_seed(9)) < 0.6  # a padded point cloud
    for mask in (None, real):
        got = tokens_within(x, radius=radius, points=mask, **m._lattice())
        assert got is not None
        assert_same_neighbourhoods(got, m._dense_neighbourhoods(x, radius, mask))
        if mask is not None:  # padded points are in no neighbourhood
            assert bool(real.gather(1, got[0].flatten(1))[got[2].flatten(1)].all())


@pytest.mark.parametrize(("dims", "tokens", "periodic"), [c for c in CASES if c[2]])
@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_nearest_tokens_match_the_dense_search(dims, tokens, periodic, k):
    m = model(dims, tokens, periodic)
    xq = points(dims, 500, seed=10 + k)
    idx, delta = nearest_tokens(xq, k=k, **m._lattice())
    want_idx, want_delta = m._dense_nearest(xq, k)
    ga, wa = idx.sort(-1), want_idx.sort(-1)
    assert torch.equal(ga.values, wa.values)
    torch.testing.assert_close(delta.gather(2, ga.indices[..., None].expand_as(delta)),
                               want_delta.gather(2, wa.indices[..., None].expand_as(want_delta)), atol=1e-5, rtol=0)


def test_offsets_are_periodic_images_across_the_seam():
    # a point just below 1 is 0.6 spacings from the token at 0.5 / 32 (its image across the seam), not 31.4
    m = model(1, 32, True)
    x = torch.tensor([[[1.0 - 0.1 / 32]]])
    idx, delta, mask = tokens_within(x, radius=1.0, **m._lattice())
    assert idx.shape == (1, 32, 1) and not idx.any()  # one slot per token; the only point is point 0
    found = {s: float(delta[0, s, 0, 0]) for s in range(32) if mask[0, s, 0]}  # token -> offset
    assert set(found) == {0, 31}
    assert found[0] == pytest.approx(-0.6, abs=1e-4) and found[31] == pytest.approx(0.4, abs=1e-4)


def test_small_lattices_and_bounded_decoding_fall_back_to_the_dense_search():
    # 4 tokens per dimension cannot hold the 6-cell window of radius 1.5 without wrapping onto itself; nearest
    # tokens on a bounded domain are not confined to a window near the boundary
    small, bounded = model(2, 16, True), model(1, 32, False)
    x2, x1 = points(2, 50, seed=1), points(1, 50, seed=2)
    assert tokens_within(x2, radius=1.5, **small._lattice()) is None
    assert nearest_tokens(x1, k=4, **bounded._lattice()) is None
    assert_same_neighbourhoods(small._neighbourhoods(x2, radius=1.5), small._dense_neighbourhoods(x2, 1.5))
    torch.testing.assert_close(bounded._nearest_tokens(x1)[0].sort(-1).values,
                               bounded._dense_nearest(x1, 4)[0].sort(-1).values)
