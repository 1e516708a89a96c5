"""The corrector's noise process, sampler and denoiser, on exact statistics and a toy Gaussian residual."""

import pytest
import torch

from ups.errors import UPSError
from ups.models.corrector import (
    Corrector,
    CorrectorConfig,
    condition_vector,
    noise,
    noised_statistics,
    sample_tau,
    tau_grid,
    velocity_target,
)


def test_noised_samples_have_the_target_mean_and_variance():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x1 = 1.5 + 0.5 * torch.randn(n, 1, 1, generator=g)  # mean 1.5, variance 0.25
    eps = torch.randn(n, 1, 1, generator=g)
    for tau in (0.0, 0.3, 0.7, 1.0):
        x = noise(x1, torch.full((n,), tau), eps)
        mean, var = noised_statistics(torch.tensor(1.5), torch.tensor(0.25), tau)
        assert abs(float(x.mean()) - float(mean)) < 0.01
        assert abs(float(x.var()) / float(var) - 1.0) < 0.02
    # tau = 0 is the clean sample, tau = 1 pure noise; the velocity is the path's derivative
    tau = torch.full((n,), 0.4)
    h = 1e-3
    fd = (noise(x1, tau + h, eps) - noise(x1, tau - h, eps)) / (2 * h)
    assert torch.allclose(fd, velocity_target(x1, eps), atol=1e-3)


def test_tau_grids_and_distributions():
    assert torch.allclose(tau_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    geo = tau_grid(4, "geometric", 0.001)
    assert torch.allclose(geo, torch.tensor([1.0, 0.1, 0.01, 0.001, 0.0]), rtol=1e-5)
    with pytest.raises(UPSError, match="allowed: geometric, uniform"):
        tau_grid(3, "cosine")
    g = torch.Generator().manual_seed(1)
    beta = sample_tau(100_000, distribution="beta", beta=(2.0, 5.0), generator=g)
    assert abs(float(beta.mean()) - 2.0 / 7.0) < 0.005 and 0.0 <= float(beta.min()) and float(beta.max()) <= 1.0
    again = sample_tau(5, distribution="beta", beta=(2.0, 5.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, sample_tau(5, distribution="beta", beta=(2.0, 5.0),
                                         generator=torch.Generator().manual_seed(3)))
    uni = sample_tau(100_000, generator=g)
    assert abs(float(uni.mean()) - 0.5) < 0.005


def test_untrained_corrector_is_the_identity_and_statistics_are_exact():
    torch.manual_seed(0)
    cor = Corrector(latent_dim=3, n_cond=2, config=CorrectorConfig(width=16, heads=2))
    z = torch.randn(4, 5, 3)
    cond = condition_vector(torch.rand(4, 1), torch.full((4,), 0.1))
    assert torch.equal(cor.refine(z, cond), z)  # zero-initialised output: v = 0, residual = res_mean = 0
    a, b = torch.randn(6, 5, 3) * 2 + 1, torch.randn(10, 5, 3) - 3
    za, zb = torch.randn(6, 5, 3), torch.randn(10, 5, 3)
    cor.update_statistics(a, za)
    cor.update_statistics(b, zb)
    both = torch.cat([a, b]).reshape(-1, 3)
    assert torch.allclose(cor.res_mean, both.mean(0), atol=1e-5)
    assert torch.allclose(cor.res_std, both.std(0, unbiased=False), atol=1e-5)
    assert int(cor.stats_count) == 80
    with pytest.raises(UPSError, match="condition vector"):
        cor.refine(z, None)


SPREAD = torch.tensor([0.4, 1.0])  # per feature


def _toy_batch(n: int, g: torch.Generator):
    """z_pred [n, 2, 2]; residual = mean(z_pred) + SPREAD * noise (a Gaussian given z_pred)."""
    z_pred = torch.randn(n, 2, 2, generator=g)
    mean = 0.6 * z_pred.flip(-1) + torch.tensor([1.0, -2.0])
    return z_pred, mean, mean + SPREAD * torch.randn(n, 2, 2, generator=g)



@pytest.mark.slow
def test_denoiser_trained_on_a_gaussian_residual_recovers_its_mean_and_spread():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    config = CorrectorConfig(width=32, depth=2, attention=False, steps=4, solver="heun")
    cor = Corrector(latent_dim=2, n_cond=0, config=config)
    z_pred, _, r = _toy_batch(4096, g)
    cor.update_statistics(r, z_pred)
    opt = torch.optim.Adam(cor.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    for _ in range(400):
        z_pred, _, r = _toy_batch(128, g)
        x1 = cor.standardise(r)
        eps = torch.randn(x1.shape, generator=g)
        tau = torch.rand(128, generator=g)
        loss = (cor(noise(x1, tau, eps), tau, z_pred) - velocity_target(x1, eps)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        z_one, mean_one, _ = _toy_batch(1, g)
        reps = z_one.expand(4000, 2, 2)
        samples = cor.refine(reps, None, generator=torch.Generator().manual_seed(5)) - reps  # residuals
        determ = cor.refine(z_one, None) - z_one
    # measured: mean within 0.03, spread 0.35 / 0.95 for 0.4 / 1.0 (the unconditional spread is 0.72 / 1.17)
    assert torch.allclose(samples.mean(0), mean_one[0], atol=0.1)
    assert torch.allclose(samples.std(0), SPREAD.expand(2, 2), rtol=0.2)
    assert torch.allclose(determ[0], mean_one[0], atol=0.1)  # deterministic path = the mean
    # stochastic with a generator, reproducible with the same seed
    s1 = cor.refine(z_one, None, generator=torch.Generator().manual_seed(7))
    s2 = cor.refine(z_one, None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2) and not torch.equal(s1, cor.refine(z_one, None))
