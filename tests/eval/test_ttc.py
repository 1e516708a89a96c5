"""Test-time compute: per-sample best-of-K by physics reward, evaluation count, PDE residual."""

import math

import torch

from ups.config import TTCConfig
from ups.data.normalization import Normalizer
from ups.eval.ttc import PhysicsReward, burgers_residual, ks_residual, spectral_misfit, ttc_rollout_fn
from ups.models.corrector import CorrectedSurrogate


class Identity(torch.nn.Module):
    """encode/step/decode that leave the state as it is: u [B, N, C] is its own latent."""

    def encode(self, u, coords):
        return u.clone()

    def step(self, z, params, dt):
        return z

    def decode(self, z, coords, u=None):
        return z


class ShiftCorrector(torch.nn.Module):
    """refine adds a random constant to each sample: mass drift |shift|; the mean path adds 0.3."""

    def refine(self, z, cond=None, steps=None, generator=None):
        if generator is None:
            return z + 0.3
        return z + torch.randn(z.shape[0], 1, 1, generator=generator)


def _rollout(candidates, horizon=1, seed=0):
    ttc_cfg = TTCConfig(enabled=True, candidates=candidates, horizon=horizon,
                    weights={"conservation": 1.0, "smoothness": 0.0})
    reward = PhysicsReward(weights=ttc_cfg.weights, nonnegative=(False,))
    surrogate = CorrectedSurrogate(model=Identity(), corrector=ShiftCorrector())
    fn = ttc_rollout_fn(surrogate, Normalizer(mean=[0.0], std=[1.0]), reward, ttc_cfg, seed=seed)
    u0 = torch.sin(torch.linspace(0, 2 * math.pi, 33)[:-1]).repeat(6, 1).unsqueeze(-1) + 2.0  # [6, 32, 1]
    out = fn(u0, torch.zeros(6, 32, 1), torch.zeros(6, 1), torch.full((6,), 0.1), 3)
    return fn, u0, out


def test_best_of_k_is_chosen_per_sample_and_counted():
    fn, u0, out = _rollout(candidates=8)
    drift = (out[:, -1].mean(dim=(1, 2)) - u0.mean(dim=(1, 2))).abs()  # [6]
    _, _, single = _rollout(candidates=1)
    single_drift = (single[:, -1].mean(dim=(1, 2)) - u0.mean(dim=(1, 2))).abs()
    assert drift.mean() < 0.5 * single_drift.mean()  # best of 8 beats one draw on the reward it optimises
    assert fn.stepper.evaluations == 8 * 6 * 3  # K candidates per sample and step
    # per sample: every sample's chosen shift is the smallest |shift| among its own 8 draws at each step,
    # so the chosen drift differs between samples (one choice for the batch would give equal drifts)
    assert len({round(float(d), 6) for d in drift}) == 6


def test_lookahead_counts_its_extra_evaluations():
    fn, _, _ = _rollout(candidates=2, horizon=3)
    assert fn.stepper.evaluations == 3 * 6 * (2 + 2 * 2)  # steps * B * (K + K * (horizon - 1))


def test_burgers_residual_vanishes_on_an_exact_stationary_state_and_not_otherwise():
    u = torch.full((2, 64, 1), 0.7)  # a constant solves Burgers exactly
    params, dt = torch.full((2, 1), 0.01), torch.full((2,), 0.05)
    assert torch.allclose(burgers_residual(u, u, params, dt, 1 / 64), torch.zeros(2))
    moved = u + 0.05  # u_t = 1 with no flux or diffusion to balance it
    assert torch.allclose(burgers_residual(u, moved, params, dt, 1 / 64), torch.ones(2), atol=1e-5)


def test_ks_residual_of_a_frozen_sine_is_the_hand_computed_mean_square():
    """u = A sin(q x) held still: u_t = 0, u u_x = (A^2 q / 2) sin(2 q x), u_xx + u_xxxx = A (q^4 - q^2) sin(q x);
    two orthogonal sines, so the mean square is (A^2 q / 2)^2 / 2 + (A (q^4 - q^2))^2 / 2."""
    n, length, a = 128, 64.0, 0.3
    q = 2 * math.pi * 3 / length  # the third mode of the periodic domain
    x = torch.arange(n, dtype=torch.float64) * (length / n)
    u = (a * torch.sin(q * x)).view(1, n, 1)
    dt = torch.full((1,), 0.2, dtype=torch.float64)
    expected = (a * a * q / 2) ** 2 / 2 + (a * (q**4 - q**2)) ** 2 / 2
    got = ks_residual(u, u, torch.zeros(1, 1), dt, length / n)
    assert math.isclose(float(got), expected, rel_tol=1e-9)
    moved = u + 0.02  # u_t = 0.1 adds a third orthogonal part (the mean), and u u_x gains 0.02 u_x
    assert float(ks_residual(u, moved, torch.zeros(1, 1), dt, length / n)) > expected


def test_one_candidate_is_the_deterministic_corrected_rollout():
    _, u0, single = _rollout(candidates=1)
    expected = u0.unsqueeze(1) + 0.3 * torch.arange(1, 4.0).view(1, 3, 1, 1)  # the mean path adds 0.3 per step
    torch.testing.assert_close(single, expected)


def test_spectral_misfit_is_zero_on_the_reference_and_sees_lost_high_modes():
    x = torch.linspace(0, 2 * math.pi, 65)[:-1]
    ref = (torch.sin(x) + 0.1 * torch.sin(8 * x)).view(1, 64, 1)
    damped = (torch.sin(x) + 0.05 * torch.sin(8 * x)).view(1, 64, 1)  # mode 8 at half amplitude: energy / 4
    assert float(spectral_misfit(ref, ref)) < 1e-6
    # only wavenumber 8 of the 33 differs, by log(4)
    assert math.isclose(float(spectral_misfit(damped, ref)), math.log(4.0) / 33, rel_tol=0.02)  # + float32 round-off
