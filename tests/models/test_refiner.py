"""The physical-space refiner: noise ladder by hand, shapes, gradients, identity when untrained, a fit."""

import math

import pytest
import torch

from ups.errors import UPSError
from ups.models.refiner import FieldCorrectedSurrogate, FieldRefiner, RefinerConfig, noise_levels


def test_noise_levels_are_pde_refiners_geometric_ladder():
    sig = noise_levels(3, 4e-7)
    # variance sigma_min ** (k / K): std = (4e-7) ** (1/6), (4e-7) ** (2/6), (4e-7) ** (3/6)
    expected = [0.085837, 0.0073681, 6.3246e-4]
    for got, want in zip(sig.tolist(), expected):
        assert math.isclose(got, want, rel_tol=1e-4)
    assert math.isclose(float(noise_levels(1, 0.01)[0]), 0.1, rel_tol=1e-12)  # K = 1: sqrt(sigma_min)
    assert noise_levels(0, 4e-7).numel() == 0
    with pytest.raises(UPSError, match="sigma_min"):
        noise_levels(3, 1.5)


def _refiner(dims=1, steps=3, channels=1, n_cond=2, **config):
    shape = (32,) if dims == 1 else (8, 8)
    cfg = RefinerConfig(width=8, depth=2, kernel=3, steps=steps, **config)
    return FieldRefiner(channels=channels, n_cond=n_cond, spatial_shape=shape, periodic=True, config=cfg)


@pytest.mark.parametrize("dims", [1, 2])
def test_untrained_refiner_is_the_identity_and_shapes_hold(dims):
    torch.manual_seed(0)
    ref = _refiner(dims=dims, channels=2)
    n = 32 if dims == 1 else 64
    u_prev, u_pred, cond = torch.randn(3, n, 2), torch.randn(3, n, 2), torch.randn(3, 2)
    out = ref.refine(u_prev, u_pred, cond)  # deterministic path, K + 1 = 4 calls
    assert out.shape == (3, n, 2)
    assert torch.equal(out, u_pred)  # zero output layer: exactly no correction
    assert ref.calls == 4


def test_every_parameter_gets_a_gradient_after_the_first_update():
    torch.manual_seed(0)
    ref = _refiner()
    u_prev, u_pred = torch.randn(4, 32, 1), torch.randn(4, 32, 1)
    u_true, cond = u_pred + 0.1 * torch.randn(4, 32, 1), torch.randn(4, 2)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):  # the zero output layer blocks the others' gradients until it has moved once
        opt.zero_grad()
        torch.manual_seed(1)
        parts = ref.losses(u_prev, u_pred, u_true, cond)
        sum(parts.values()).backward()
        opt.step()
    assert set(parts) == {"correct", "denoise"}
    for name, p in ref.named_parameters():
        if name == "level.weight":  # rows of the levels this batch used
            continue
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_refiner_learns_a_systematic_error_of_the_operator():
    torch.manual_seed(0)
    ref = _refiner(steps=2)
    x = torch.linspace(0, 2 * math.pi, 33)[:-1]
    opt = torch.optim.Adam(ref.parameters(), lr=3e-3)
    for it in range(150):
        a = torch.randn(16, 1, 1)
        u_prev = a * torch.sin(x)[None, :, None]
        u_true = 0.9 * u_prev
        u_pred = u_true + 0.05 * torch.cos(x)[None, :, None]  # a systematic error of the operator
        if it < 4:
            ref.update_scale(u_true - u_pred)
        opt.zero_grad()
        sum(ref.losses(u_prev, u_pred, u_true, torch.zeros(16, 2)).values()).backward()
        opt.step()
    a = torch.randn(8, 1, 1)
    u_prev = a * torch.sin(x)[None, :, None]
    u_true = 0.9 * u_prev
    u_pred = u_true + 0.05 * torch.cos(x)[None, :, None]
    with torch.no_grad():
        err_op = float((u_pred - u_true).pow(2).mean())
        err = float((ref.refine(u_prev, u_pred, torch.zeros(8, 2)) - u_true).pow(2).mean())
    assert math.isclose(float(ref.res_scale[0]), 0.05 / math.sqrt(2), rel_tol=0.05)  # RMS of 0.05 cos
    assert err < 0.1 * err_op, (err, err_op)


def test_wrapper_refines_every_step_of_a_rollout():
    from ups.rollout import rollout

    class Persist(torch.nn.Module):
        latent_dim, num_latents = 32, 1

        def encode(self, u, coords):
            return u.transpose(1, 2)

        def step(self, z, params, dt):
            return z

        def decode(self, z, coords, u=None):
            return z.transpose(1, 2)

    class AddOne(torch.nn.Module):
        def refine(self, u_prev, u_pred, cond=None, steps=None, generator=None):
            return u_pred + 1.0

    wrapped = FieldCorrectedSurrogate(model=Persist(), corrector=AddOne())
    u0 = torch.zeros(2, 32, 1)
    for mode in ("reencode", "latent"):  # a latent rollout of a field refiner runs as a re-encoding one
        out = rollout(wrapped, u0, torch.zeros(2, 32, 1), torch.zeros(2, 1), torch.ones(2), 3, mode=mode)
        torch.testing.assert_close(out[:, :, 0, 0], torch.arange(4.0).expand(2, 4))


def test_stochastic_refinement_draws_the_ladders_noise():
    ref = _refiner(steps=3)  # untrained: every level keeps its noised input, so u - u_pred = sum_k sigma_k eps_k
    u_pred = torch.zeros(64, 32, 1)
    g = torch.Generator().manual_seed(0)
    a = ref.refine(u_pred, u_pred, torch.zeros(64, 2), generator=g)
    b = ref.refine(u_pred, u_pred, torch.zeros(64, 2), generator=g)
    assert not torch.allclose(a, b)  # TTC candidates differ
    var = float(noise_levels(3, 4e-7).pow(2).sum())
    assert math.isclose(float(a.var()), var, rel_tol=0.05)  # 2048 draws


def test_wrapper_samples_through_every_level_but_refines_deterministically_with_its_own():
    ref = _refiner(steps=3)  # untrained: a sample is u_pred + sum_k sigma_k eps_k, the mean path u_pred
    model = torch.nn.Identity()
    wrapped = FieldCorrectedSurrogate(model=model, corrector=ref, steps=0)
    u = torch.zeros(64, 32, 1)
    params, dt = torch.zeros(64, 1), torch.ones(64)
    assert torch.equal(wrapped.refine_field(u, u, params, dt), u)
    sample = wrapped.refine_field(u, u, params, dt, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(sample.var()), float(noise_levels(3, 4e-7).pow(2).sum()), rel_tol=0.05)


def test_conserve_mean_keeps_the_previous_states_mean_exactly():
    torch.manual_seed(0)
    cfg = RefinerConfig(width=8, depth=1, kernel=3, steps=2, conserve_mean=True)
    ref = FieldRefiner(channels=2, n_cond=0, spatial_shape=(16,), periodic=True, config=cfg)
    torch.nn.init.normal_(ref.net.out.weight)  # a trained-looking, biased correction
    torch.nn.init.constant_(ref.net.out.bias, 0.3)
    u_prev, u_pred = torch.randn(3, 16, 2), torch.randn(3, 16, 2)
    out = ref.refine(u_prev, u_pred)
    torch.testing.assert_close(out.mean(dim=1), u_prev.mean(dim=1))
    assert not torch.allclose(out - out.mean(1, keepdim=True), u_pred - u_pred.mean(1, keepdim=True))


def test_denoise_fraction_scores_the_noise_prediction_on_that_share_of_the_pairs():
    """With denoise_fraction 0.25 of 8 pairs the denoising loss sees 2 pairs (chosen at random), the correction
    loss all 8; at 1.0 both see every pair and the result is the plain losses."""
    torch.manual_seed(0)
    full, quarter = _refiner(), _refiner(denoise_fraction=0.25)
    quarter.load_state_dict(full.state_dict())
    u_prev, u_pred = torch.randn(8, 32, 1), torch.randn(8, 32, 1)
    u_true, cond = u_pred + 0.1 * torch.randn(8, 32, 1), torch.randn(8, 2)
    seen = []
    hook = quarter.net.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    torch.manual_seed(3)
    parts = quarter.losses(u_prev, u_pred, u_true, cond)
    hook.remove()
    assert seen == [8, 2]  # the correction on every pair, the denoising on a quarter of them
    torch.manual_seed(3)
    torch.testing.assert_close(parts["correct"], full.losses(u_prev, u_pred, u_true, cond)["correct"])
    with pytest.raises(ValueError, match="denoise_fraction"):
        RefinerConfig(denoise_fraction=0.0)
