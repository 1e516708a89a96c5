"""Spectral token mixing (an FNO layer on the token lattice): exact action on single Fourier modes, the mode
cut-off, shift equivariance, no wrap-around on bounded domains, and the UPT model built with it in 1D-3D."""

import math

import pytest
import torch

from ups.data.metadata import DatasetMetadata
from ups.models.layers import SpectralMix
from ups.models.upt import UPT

SMALL = dict(latent_dim=16, heads=2, operator_depth=2, kernel_hidden=8, decoder_hidden=16, mixer="spectral",
             spectral_modes=3, decoder="kernel", decoder_width=8)


def identity_weights(mix: SpectralMix) -> None:
    """Every kept mode multiplied by the identity matrix (real 1, imaginary 0)."""
    with torch.no_grad():
        mix.weight.zero_()
        mix.weight[..., 0].copy_(torch.eye(mix.weight.shape[-2]))


def test_a_kept_mode_passes_and_a_cut_mode_vanishes():
    n, modes = 16, 3
    mix = SpectralMix(width=2, dims=1, n_per_dim=n, modes=modes)
    identity_weights(mix)
    j = torch.arange(n, dtype=torch.float32)
    kept = torch.cos(2 * math.pi * 2 * j / n) + 0.5  # modes 0 and 2 (< 3): unchanged
    cut = torch.sin(2 * math.pi * 5 * j / n)  # mode 5 (>= 3): removed exactly
    z = torch.stack([kept, kept + cut], dim=-1)[None]  # [1, 16, 2]
    out = mix(z)
    assert torch.allclose(out[0, :, 0], kept, atol=1e-5)
    assert torch.allclose(out[0, :, 1], kept, atol=1e-5)


def test_a_complex_weight_shifts_the_phase_of_its_mode():
    # multiplying mode 1 by exp(-i 2 pi s / n) delays a cosine of that mode by s lattice cells
    n, s = 8, 1.0
    mix = SpectralMix(width=1, dims=1, n_per_dim=n, modes=2)
    with torch.no_grad():
        mix.weight.zero_()
        mix.weight[1, 0, 0] = torch.tensor([math.cos(2 * math.pi * s / n), -math.sin(2 * math.pi * s / n)])
    j = torch.arange(n, dtype=torch.float32)
    out = mix(torch.cos(2 * math.pi * j / n)[None, :, None])
    assert torch.allclose(out[0, :, 0], torch.cos(2 * math.pi * (j - s) / n), atol=1e-5)


def test_two_dimensional_mixing_keeps_negative_frequencies_and_commutes_with_shifts():
    n = 8
    mix = SpectralMix(width=3, dims=2, n_per_dim=n, modes=2)
    identity_weights(mix)
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    field = torch.cos(2 * math.pi * (x - y) / n)  # wavevector (-1, 1): needs the negative frequency on axis 0
    out = mix(field.reshape(1, n * n, 1).expand(1, -1, 3))
    assert torch.allclose(out[0, :, 0], field.reshape(-1), atol=1e-5)
    torch.manual_seed(0)
    mix = SpectralMix(width=3, dims=2, n_per_dim=n, modes=3)
    z = torch.randn(2, n, n, 3)
    shifted = mix(torch.roll(z, (2, 5), (1, 2)).reshape(2, -1, 3)).reshape(2, n, n, 3)
    assert torch.allclose(torch.roll(mix(z.reshape(2, -1, 3)).reshape(2, n, n, 3), (2, 5), (1, 2)), shifted, atol=1e-5)


def test_bounded_lattice_does_not_wrap_across_the_boundary():
    # identity weights on the lowest modes make a symmetric low-pass kernel: on a periodic lattice the last token is
    # as close to the first as the second is; on a bounded one (zero-padded to 2n) it is 15 cells away
    n = 16
    z = torch.zeros(1, n, 1, requires_grad=True)
    ratios = []
    for periodic in (True, False):
        mix = SpectralMix(width=1, dims=1, n_per_dim=n, modes=5, periodic=periodic)
        identity_weights(mix)
        (grad,) = torch.autograd.grad(mix(z)[0, 0].sum(), z)
        ratios.append(float(grad[0, -1].abs().sum() / grad[0, 1].abs().sum()))
    assert ratios[0] == pytest.approx(1.0, abs=1e-4)
    assert ratios[1] < 0.3, ratios


def test_too_many_modes_is_refused_with_the_limit():
    with pytest.raises(ValueError, match=r"spectral_modes=10 .* <= 9"):
        SpectralMix(width=4, dims=1, n_per_dim=16, modes=10)


@pytest.mark.parametrize(("dims", "tokens", "periodic"), [(1, 32, True), (1, 32, False), (2, 64, True), (3, 64, True)])
def test_upt_with_spectral_mixing_on_any_dimension(dims, tokens, periodic):
    meta = DatasetMetadata(pde="x", spatial_dims=dims, spatial_shape=(8,) * dims, n_channels=2, n_frames=2, dt=0.1,
                           domain=((0.0, 1.0),) * dims, boundary="periodic" if periodic else "dirichlet")
    torch.manual_seed(0)
    model = UPT.from_config(meta, {**SMALL, "num_supernodes": tokens, "spectral_modes": 2})
    x = torch.rand(2, 150, dims)
    u = torch.randn(2, 150, 2)
    z = model.encode(u, x)
    params, dt = torch.zeros(2, 0), torch.full((2,), 0.1)
    assert torch.equal(model.step(z, params, dt), z)  # adaLN-Zero: the untrained operator is the identity
    with torch.no_grad():  # give every gate a value so that every parameter is on the gradient path
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    z = model.encode(u, x)
    out = model(u, x, params, dt)
    assert out.shape == (2, 150, 2) and torch.isfinite(out).all()
    (out.square().mean() + model.decode(z, x).square().mean()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [], missing


def reference_mix(mix: SpectralMix, z: torch.Tensor) -> torch.Tensor:
    """The 1D layer's definition with torch.fft: irfft(W_k * rfft(z)_k) over the kept modes, zero-padded to twice
    the lattice when bounded. z: [B, n, D] -> [B, n, D]."""
    n = z.shape[1]
    spec = torch.fft.rfft(z, n=mix.size, dim=1, norm="ortho")[:, :mix.weight.shape[0]]
    mixed = torch.einsum("bmi,mio->bmo", spec, torch.view_as_complex(mix.weight))
    return torch.fft.irfft(mixed, n=mix.size, dim=1, norm="ortho")[:, :n]


@pytest.mark.parametrize(("n", "modes", "periodic"), [(16, 3, True), (16, 9, True), (15, 8, True), (16, 5, False),
                                                      (16, 17, False)])
def test_a_short_lattice_mixes_in_real_arithmetic_as_the_fft_definition(n, modes, periodic):
    # a 1D lattice no longer than twice the width is mixed by real matrix products: the same map and the same
    # gradients as the FFT definition, the Nyquist mode (n = 16, 9 modes; bounded, 17 of 32) and an odd lattice
    torch.manual_seed(0)
    mix = SpectralMix(width=8, dims=1, n_per_dim=n, modes=modes, periodic=periodic).double()
    assert mix.real_transform
    z = torch.randn(3, n, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, n, 8, dtype=torch.float64)
    grads = []
    for fn in (mix, lambda v: reference_mix(mix, v)):
        out = fn(z)
        grads.append((out, *torch.autograd.grad((out * target).sum(), (z, mix.weight))))
    for got, expected in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    long = SpectralMix(width=2, dims=1, n_per_dim=16, modes=3)  # 16 tokens > twice the width: the FFTs
    assert not long.real_transform
    z = torch.randn(2, 16, 2)
    torch.testing.assert_close(long(z), reference_mix(long, z), atol=1e-5, rtol=1e-5)
