"""The UPT-style surrogate: shapes on any point set, identity at initialisation, resolution transfer."""

import pytest
import torch

from ups.data.metadata import DatasetMetadata
from ups.errors import ConfigError
from ups.models import MODELS
from ups.models.upt import UPT, UPTConfig

META = DatasetMetadata(pde="burgers1d", spatial_dims=1, spatial_shape=(256,), n_channels=1, n_frames=41, dt=0.05,
                       param_names=("nu",))
SMALL = dict(latent_dim=16, num_supernodes=16, heads=2, operator_depth=2, kernel_hidden=8, decoder_hidden=16)


def grid(b: int, n: int, offset: float = 0.5) -> torch.Tensor:
    """Cell-centred grid of n points on [0, 1): [b, n, 1]."""
    return ((torch.arange(n) + offset) / n).expand(b, n)[..., None].clone()


def small_model(**over) -> UPT:
    torch.manual_seed(0)
    return MODELS.get("upt").from_config(META, {**SMALL, **over})


@pytest.mark.parametrize(("n", "freqs"), [(64, 4), (256, 4), (1024, 4), (256, 16)])
def test_shapes_on_grids(n, freqs):
    model = small_model(decoder_freqs=freqs)
    assert model.dec_filter.in_features == 2 * freqs + 1  # sin, cos per frequency, plus the offset itself
    u, x = torch.randn(3, n, 1), grid(3, n)
    z = model.encode(u, x)
    assert z.shape == (3, model.num_latents, model.latent_dim) == (3, 16, 16)
    z1 = model.step(z, torch.full((3, 1), 0.01), torch.full((3,), 0.05))
    assert model.decode(z1, x, u).shape == (3, n, 1)
    assert model.decode(z1, x).shape == (3, n, 1)
    assert model(u, x, torch.full((3, 1), 0.01), torch.full((3,), 0.05)).shape == (3, n, 1)


@pytest.mark.parametrize("decoder", ["attention", "kernel"])
def test_irregular_points_differing_per_sample_and_queries_elsewhere(decoder):
    model = small_model(decoder=decoder)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 300, 1, generator=gen)  # each sample its own irregular points
    u = torch.sin(6.28 * x)
    z = model.encode(u, x)
    xq = torch.rand(2, 77, 1, generator=gen)
    out = model.decode(z, xq)
    assert z.shape == (2, 16, 16) and out.shape == (2, 77, 1) and torch.isfinite(out).all()
    # a point set is a set: permuting the points does not change the encoding
    perm = torch.randperm(300, generator=gen)
    assert torch.allclose(model.encode(u[:, perm], x[:, perm]), z, atol=1e-5)


def test_bundled_decoder_gives_each_frame_of_a_step_as_its_own_increment():
    model = small_model(frames_per_step=3)
    u, x = torch.randn(2, 64, 1), grid(2, 64)
    z = model.step(model.encode(u, x), torch.full((2, 1), 0.01), torch.full((2,), 0.05))
    frames = model.decode_frames(z, x, u)
    assert model.frames_per_step == 3 and frames.shape == (2, 3, 64, 1)
    assert torch.equal(model.decode(z, x, u), frames[:, -1])
    assert model.decode_frames(z, x).shape == (2, 3, 64, 1)
    plain = small_model(frames_per_step=3, predict_increment=False)
    plain.load_state_dict(model.state_dict())
    increments = plain.decode_frames(z, x, u)  # the head's three outputs, one per frame
    assert not torch.allclose(increments[:, 0], increments[:, 2])
    assert torch.allclose(frames, u[:, None] + increments, atol=1e-6)


def test_untrained_operator_is_identity_on_z():
    model = small_model()
    z = torch.randn(4, model.num_latents, model.latent_dim)
    z1 = model.step(z, torch.rand(4, 1) + 0.01, torch.rand(4) + 0.01)
    assert torch.equal(z1, z)


def test_encoder_is_translation_equivariant_on_periodic_domain():
    # shifting the field and the points together by one supernode spacing shifts the tokens by one
    model = small_model(encoder_depth=0)
    x = grid(1, 256)
    u = torch.sin(2 * torch.pi * x) + 0.3 * torch.cos(6 * torch.pi * x)
    z = model.encode(u, x)
    z_shift = model.encode(u, torch.remainder(x + 1 / 16, 1.0))
    assert torch.allclose(torch.roll(z, 1, dims=1), z_shift, atol=1e-5)


def test_encoder_pooling_keeps_amplitude():
    # without the square feature and encoder blocks the pooled tokens are linear in u
    model = small_model(encode_square=False, encoder_depth=0)
    x, u = grid(1, 128), torch.randn(1, 128, 1)
    z0 = model.encode(torch.zeros_like(u), x)
    assert torch.allclose(model.encode(3 * u, x) - z0, 3 * (model.encode(u, x) - z0), atol=1e-5)


def test_encoding_is_resolution_consistent():
    # the neighbourhood mean approximates an integral: a smooth field gives nearly the same tokens
    model = small_model()
    f = lambda x: torch.sin(2 * torch.pi * x) + 0.5 * torch.cos(4 * torch.pi * x)  # noqa: E731
    x256, x1024 = grid(1, 256), grid(1, 1024)
    z256, z1024 = model.encode(f(x256), x256), model.encode(f(x1024), x1024)
    assert (z256 - z1024).norm() / z1024.norm() < 0.05


@pytest.mark.parametrize("decoder", ["attention", "kernel"])
def test_decoding_at_twice_the_training_resolution(decoder):
    # fit the any-point decoder on random sub-cell shifts of a 64-point grid, then decode at 128 points
    model = small_model(decoder=decoder)
    f = lambda x: torch.sin(2 * torch.pi * x) + 0.5 * torch.sin(4 * torch.pi * x + 1.0)  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        x = torch.remainder(grid(8, 64) + torch.rand(8, 1, 1, generator=gen) / 64, 1.0)
        loss = (model.decode(model.encode(f(x), x), x) - f(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x64, x128 = grid(1, 64), grid(1, 128)
    with torch.no_grad():
        z = model.encode(f(x64), x64)
        out, out64 = model.decode(z, x128), model.decode(z, x64)
    rel = (out - f(x128)).norm() / f(x128).norm()
    rel64 = (out64 - f(x64)).norm() / f(x64).norm()
    assert out.shape == (1, 128, 1)
    assert rel < 0.2 and rel < 1.2 * rel64 + 0.01, (rel, rel64)  # half the points were never trained on


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="heads"):
        from ups.config import ModelConfig

        ModelConfig(name="upt", params={"latent_dim": 30, "heads": 4})
    with pytest.raises(ValueError, match="perfect power"):
        meta2 = DatasetMetadata(pde="x", spatial_dims=2, spatial_shape=(8, 8), n_channels=1, n_frames=2, dt=0.1,
                                domain=((0.0, 1.0), (0.0, 1.0)))
        UPT.from_config(meta2, {**SMALL, "num_supernodes": 15})
    assert UPTConfig().latent_dim == 64


@pytest.mark.parametrize("decoder", ["attention", "kernel"])
def test_two_dimensional_points(decoder):
    meta2 = DatasetMetadata(pde="x", spatial_dims=2, spatial_shape=(12, 12), n_channels=2, n_frames=2, dt=0.1,
                            domain=((0.0, 1.0), (0.0, 2.0)))
    model = UPT.from_config(meta2, {**SMALL, "decoder": decoder, "decoder_width": 8})
    x = torch.rand(2, 144, 2) * torch.tensor([1.0, 2.0])
    u = torch.randn(2, 144, 2)
    out = model(u, x, torch.zeros(2, 0), torch.full((2,), 0.1))
    assert out.shape == (2, 144, 2) and torch.isfinite(out).all()


def test_cached_geometry_and_inference_kernels_match_a_fresh_computation():
    # neighbour tables are reused per point set, and in inference the pooling and decoder kernels too; the
    # results equal the uncached ones, for alternating point sets and after the weights change
    model = small_model(decoder="kernel", decoder_width=8)
    gen = torch.Generator().manual_seed(3)
    xa, xb = torch.rand(2, 100, 1, generator=gen), torch.rand(2, 90, 1, generator=gen)
    ua, ub = torch.randn(2, 100, 1, generator=gen), torch.randn(2, 90, 1, generator=gen)
    params, dt = torch.full((2, 1), 0.01), torch.full((2,), 0.05)

    def fresh(u, x):
        model._geometry.entries.clear()
        return model(u, x, params, dt)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        with torch.no_grad():
            want_a, want_b = fresh(ua, xa), fresh(ub, xb)
            model._geometry.entries.clear()
        with torch.inference_mode():
            for _ in range(2):  # second pass: every kernel comes from the cache
                torch.testing.assert_close(model(ua, xa, params, dt), want_a)
                torch.testing.assert_close(model(ub, xb, params, dt), want_b)
        loss = model(ua, xa, params, dt).square().mean() + model.decode(model.encode(ua, xa), xa).square().mean()
        opt.zero_grad()
        loss.backward()  # grad mode after inference-mode entries: nothing cached under inference is reused
        opt.step()  # the weights change in place: the cached kernels must not survive it


def test_pooling_is_the_masked_mean_of_the_kernel_times_the_features():
    """ContinuousConv against its definition evaluated pair by pair: out_s = W mean_j [K_h(delta_j), 1] (x) f(u_j) + b
    over the real neighbours j (none: zeros through W), f(u) = [u, u^2 / 2]; the cached kernel gives the same."""
    from ups.models.layers import ContinuousConv

    torch.manual_seed(0)
    conv = ContinuousConv(dims=1, channels=1, width=8, hidden=5, square=True)
    u, delta = torch.randn(2, 3, 4, 1), torch.randn(2, 3, 4, 1)
    mask = torch.tensor([[[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], [[1, 1, 1, 1], [0, 1, 1, 0], [1, 0, 1, 0]]]).bool()
    expected = torch.empty(2, 3, 8)
    for b in range(2):
        for s in range(3):
            terms = [torch.outer(torch.cat([torch.nn.functional.gelu(conv.hidden(delta[b, s, j])), torch.ones(1)]),
                                 torch.cat([u[b, s, j], 0.5 * u[b, s, j] ** 2])).flatten()
                     for j in range(4) if mask[b, s, j]]
            mean = torch.stack(terms).mean(0) if terms else torch.zeros(6 * 2)
            expected[b, s] = conv.out(mean)
    with torch.no_grad():
        assert torch.allclose(conv(u, delta, mask), expected, atol=1e-6)
        assert torch.allclose(conv(u, delta, mask, conv.kernel(delta, mask)), expected, atol=1e-6)


def test_shared_rows_cuts_a_batch_with_equal_points_to_one_row():
    from ups.models.layers import shared_rows

    x = grid(3, 10)
    rows, mask = shared_rows(x)
    assert rows.shape == (1, 10, 1) and mask is None and torch.equal(rows[0], x[0])
    moved = x.clone()
    moved[2, 4, 0] += 1e-3  # one point of one sample differs: the batch keeps its rows
    assert shared_rows(moved)[0].shape == (3, 10, 1)
    points = torch.ones(3, 10, dtype=torch.bool)
    assert shared_rows(x, points)[1].shape == (1, 10)
    points[1, 0] = False  # same coordinates, another mask: not shared
    assert shared_rows(x, points)[0].shape == (3, 10, 1)


@pytest.mark.parametrize("decoder", ["attention", "kernel"])
def test_geometry_shared_by_the_batch_gives_what_per_sample_geometry_gives(decoder, monkeypatch):
    """A batch whose samples share their points computes its geometry once (``shared_rows``); values and gradients
    (training) and the cached kernels (inference) equal those of the per-sample tables every batch used before."""
    import ups.models.upt as upt

    model = small_model(decoder=decoder, decoder_width=8)
    gen = torch.Generator().manual_seed(5)
    u, x = torch.randn(3, 64, 1, generator=gen), grid(3, 64)
    xq = torch.rand(1, 50, 1, generator=gen).expand(3, -1, -1)
    params, dt = torch.rand(3, 1, generator=gen) * 0.1, torch.full((3,), 0.05)

    def outputs():
        model._geometry.entries.clear()
        z = model.step(model.encode(u, x), params, dt)
        out = (model.decode(z, x, u), model.decode(z, xq))
        if not torch.is_grad_enabled():
            return out
        grads = torch.autograd.grad(sum(t.square().sum() for t in out), list(model.parameters()), allow_unused=True)
        return out + tuple(g for g in grads if g is not None)

    def inference():
        with torch.inference_mode():
            outputs()
            return model.step(model.encode(u, x), params, dt), model.decode(model.encode(u, x), xq)  # cached kernels

    shared, shared_inf = outputs(), inference()
    monkeypatch.setattr(upt, "shared_rows", lambda coords, mask=None: (coords, mask))  # per-sample tables
    per_sample, per_sample_inf = outputs(), inference()
    for got, want in zip((*shared, *shared_inf), (*per_sample, *per_sample_inf), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_kernel_sum_is_the_weighted_sum_over_the_neighbours():
    from ups.models.layers import kernel_sum

    gen = torch.Generator().manual_seed(0)
    values, kernel1 = torch.randn(2, 6, 3, generator=gen), torch.randn(1, 4, 2, 3, generator=gen)
    idx1 = torch.tensor([[[0, 5], [1, 2], [2, 2], [4, 3]]])
    expected = torch.empty(2, 4, 3)
    for b in range(2):
        for q in range(4):
            expected[b, q] = sum(kernel1[0, q, j] * values[b, idx1[0, q, j]] for j in range(2))
    torch.testing.assert_close(kernel_sum(values, idx1, kernel1), expected)  # one row shared by the batch
    torch.testing.assert_close(kernel_sum(values, idx1.expand(2, -1, -1), kernel1.expand(2, -1, -1, -1)), expected)
    start = torch.randn(2, 4, 3, generator=gen)  # the decoder's query term, added as the sum starts
    torch.testing.assert_close(kernel_sum(values, idx1, kernel1, start=start), start + expected)
    torch.testing.assert_close(kernel_sum(values, idx1.expand(2, -1, -1), kernel1.expand(2, -1, -1, -1), start=start),
                               start + expected)
    values.requires_grad_(True)  # the in-place sum keeps the gradient: d(sum of outputs) / d values counts uses
    kernel_sum(values, idx1, torch.ones(1, 4, 2, 3), start=start).sum().backward()
    uses = torch.bincount(idx1.flatten(), minlength=6).float()
    torch.testing.assert_close(values.grad, uses[None, :, None].expand(2, 6, 3))
