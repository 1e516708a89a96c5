"""Every metric against a value computed by hand or known in closed form."""

import json
import math

import pytest
import torch

from ups.errors import UPSError
from ups.eval import metrics as M

N = 64
X = torch.arange(N, dtype=torch.float64) / N  # periodic grid on [0, 1)


def _field(values: torch.Tensor) -> torch.Tensor:
    """[X] -> [B=1, T=1, X, C=1]."""
    return values.reshape(1, 1, -1, 1)


def test_nrmse_of_a_sine_perturbation_is_eps_in_closed_form():
    # y = sin(2 pi x), p = y + eps sin(6 pi x): discrete orthogonality on the grid gives
    # mean_x (p - y)^2 = eps^2 / 2 and mean_x y^2 = 1 / 2, so nRMSE = eps exactly.
    y = _field(torch.sin(2 * math.pi * X))
    for eps in (1e-3, 0.05, 0.5):
        p = y + eps * _field(torch.sin(6 * math.pi * X))
        assert math.isclose(M.nrmse(p, y), eps, rel_tol=1e-12)
        assert math.isclose(M.nrmse_one_step(p, y), eps, rel_tol=1e-12)


def test_crmse_hand_computed():
    y = torch.zeros(2, 1, 2, 1, dtype=torch.float64)
    p = torch.tensor([1.0, 1.0, 2.0, -2.0], dtype=torch.float64).reshape(2, 1, 2, 1)
    # sums of the error: sample 0 -> 2, sample 1 -> 0; sqrt((4 + 0) / 2) / n_x(=2)
    assert math.isclose(M.crmse(p, y), math.sqrt(2) / 2)


def test_brmse_1d_and_2d_hand_computed():
    y = torch.zeros(2, 1, 3, 1, dtype=torch.float64)
    p = torch.tensor([[3.0, 9.0, 4.0], [0.0, 9.0, 0.0]], dtype=torch.float64).reshape(2, 1, 3, 1)
    # sample 0: sqrt((9 + 16) / 2); sample 1: 0; the interior 9 never counts
    assert math.isclose(M.brmse(p, y), math.sqrt(12.5) / 2)
    # 2D: one unit error at a corner appears on two of the four edges (12 edge entries on a 3x3 grid)
    y2 = torch.zeros(1, 1, 3, 3, 1)
    p2 = y2.clone()
    p2[0, 0, 0, 0, 0] = 1.0
    assert math.isclose(M.brmse(p2, y2), math.sqrt(2 / 12), rel_tol=1e-12)


@pytest.mark.parametrize("k0,band", [(1, "low"), (5, "mid"), (13, "high")])
def test_frmse_of_a_single_mode(k0, band):
    # p - y = A cos(2 pi k0 x) on n = 32 points: its rfft coefficient at k0 is A n / 2, so the scaled error
    # there is A L / 2; sample 1 has no error, so the RMS over the batch is A L / (2 sqrt 2).
    n, amp, length = 32, 0.7, 2.0
    x = torch.arange(n, dtype=torch.float64) / n
    err = torch.stack([amp * torch.cos(2 * math.pi * k0 * x), torch.zeros(n, dtype=torch.float64)])
    y = torch.randn(2, 1, n, 1, dtype=torch.float64)
    p = y + err.reshape(2, 1, n, 1)
    per_k = amp * length / 2 / math.sqrt(2)
    counts = {"low": 4, "mid": 8, "high": n // 2 + 1 - 12}  # rfft has k = 0 .. 16
    got = M.frmse_bands(p, y, Lx=length)
    for name in ("low", "mid", "high"):
        want = per_k / counts[name] if name == band else 0.0
        assert math.isclose(got[name], want, rel_tol=1e-9, abs_tol=1e-12), name
    assert math.isclose(getattr(M, f"frmse_{band}")(p, y, Lx=length), per_k / counts[band], rel_tol=1e-9)


def test_frmse_empty_band_is_nan_and_bad_length_raises():
    y = torch.zeros(1, 1, 16, 1)
    assert math.isnan(M.frmse_high(y + 1, y))  # rfft of 16 points stops at k = 8
    with pytest.raises(UPSError, match="Lx"):
        M.frmse_low(y, y, Lx=-1.0)


def test_max_error():
    y = torch.zeros(2, 3, 4, 1)
    p = y.clone()
    p[1, 2, 3, 0] = -2.5
    p[0, 0, 0, 0] = 1.0
    assert M.max_error(p, y) == 2.5


def test_conservation_gap_of_a_known_drift():
    # y = 1 + sin(2 pi x) >= 0 has mean_x y = mean_x |y| = 1; p_t = y + delta t drifts by delta t.
    T, delta = 5, 0.01
    y = (1 + torch.sin(2 * math.pi * X)).reshape(1, 1, N, 1).expand(1, T, N, 1)
    drift = delta * torch.arange(T, dtype=torch.float64).reshape(1, T, 1, 1)
    p = y + drift
    want = delta * (T - 1) / 2  # mean over t of delta t / 1
    assert math.isclose(M.conservation_gap(p, y), want, rel_tol=1e-12)
    assert math.isclose(M.conservation_gap_t0(p, y[:, 0]), want, rel_tol=1e-12)
    # a change of shape that keeps the integral is no gap
    shifted = y + 0.3 * torch.cos(2 * math.pi * X).reshape(1, 1, N, 1)
    assert M.conservation_gap(shifted, y) < 1e-15
    with pytest.raises(UPSError, match="u0 shape"):
        M.conservation_gap_t0(p, y)


def test_conservation_gap_against_truth_differs_from_against_t0_when_truth_decays():
    y = torch.ones(1, 3, 8, 1) * torch.tensor([1.0, 0.5, 0.25]).reshape(1, 3, 1, 1)  # decaying mean
    u0 = torch.ones(1, 8, 1)
    assert M.conservation_gap(y, y) == 0.0
    assert math.isclose(M.conservation_gap_t0(y, u0), (0 + 0.5 + 0.75) / 3)


def test_bc_violation_periodic_of_a_known_jump():
    y = torch.sin(2 * math.pi * X)
    h = 0.4
    step = h * (X >= 0.5).double()  # a jump of h inside and -h across the wrap
    # residual differences: value jump across the wrap (0 - h) = -h, slope jump 0 -> sqrt(h^2 / 2)
    got = M.bc_violation(_field(y + step), _field(y), "periodic")
    assert math.isclose(got, h / math.sqrt(2), rel_tol=1e-12)
    # a ramp a x: value jump -a x_{n-1}, equal one-sided slopes on both sides
    a = 0.3
    got = M.bc_violation(_field(y + a * X), _field(y))
    assert math.isclose(got, a * (N - 1) / N / math.sqrt(2), rel_tol=1e-12)
    # a smooth periodic change, however large, joins like the truth: only O(dx^2) residue
    assert M.bc_violation(_field(y + torch.cos(2 * math.pi * X)), _field(y)) < 0.05 * 1 / math.sqrt(2)
    assert M.bc_violation(_field(y), _field(y)) == 0.0


def test_bc_violation_dirichlet_neumann_and_unknown():
    y = _field(torch.sin(2 * math.pi * X))
    assert math.isclose(M.bc_violation(y + 0.2, y, "dirichlet"), 0.2, rel_tol=1e-12)
    assert M.bc_violation(y + 0.2, y, "neumann") < 1e-15
    # a ramp a x changes both outward differences by a / N
    assert math.isclose(M.bc_violation(y + 0.3 * _field(X), y, "neumann"), 0.3 / N, rel_tol=1e-9)
    with pytest.raises(UPSError, match="unknown boundary type 'robin'.*dirichlet, neumann, periodic"):
        M.bc_violation(y, y, "robin")


def test_negativity_only_counts_declared_channels():
    u = torch.tensor([[-5.0, -1.0], [7.0, 2.0], [-9.0, -3.0], [1.0, 0.0]]).reshape(1, 1, 4, 2)
    assert M.negativity(u, (False, True)) == 1.0  # relu(-v) = [1, 0, 3, 0]
    assert M.negativity(u, (True, True)) == (5 + 1 + 9 + 3) / 8
    assert M.negativity(u, None) == 0.0
    with pytest.raises(UPSError, match="one flag per channel"):
        M.negativity(u, (True,))


def test_energy_spectrum_parseval_in_1d_and_2d():
    for shape in ((2, 3, 32, 1), (1, 2, 8, 6, 2), (1, 1, 7, 1)):
        u = torch.randn(*shape, dtype=torch.float64)
        spatial = tuple(range(2, u.ndim - 1))
        n = math.prod(shape[2:-1])
        want = n * u.pow(2).sum(dim=spatial)  # [B, T, C]
        assert torch.allclose(M.energy_spectrum(u).sum(-1), want, rtol=1e-10)


def test_spectral_energy_error_hand_computed():
    y = torch.randn(2, 3, 32, 1, dtype=torch.float64)
    a = 0.1
    assert math.isclose(M.spectral_energy_error((1 + a) * y, y), (1 + a) ** 2 - 1, rel_tol=1e-10)
    # same energy in another shell: sum |E_p - E_y| = 2 sum E_y
    s1, s2 = _field(torch.sin(2 * math.pi * X)), _field(torch.sin(4 * math.pi * X))
    assert math.isclose(M.spectral_energy_error(s2, s1), 2.0, rel_tol=1e-10)


def _decorrelating(coeffs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """p_t = y + c_t z with y, z orthogonal, zero-mean, equal variance: corr_t = 1 / sqrt(1 + c_t^2)."""
    y = torch.sin(2 * math.pi * X)
    z = torch.cos(6 * math.pi * X)
    true = y.reshape(1, 1, N, 1).expand(1, len(coeffs), N, 1)
    pred = torch.stack([y + c * z for c in coeffs]).reshape(1, len(coeffs), N, 1)
    return pred, true


def test_corr_time_on_a_constructed_sequence():
    coeffs = [0.3 * t for t in range(6)]  # corr = 1, .958, .857, .743, .640, .557
    pred, true = _decorrelating(coeffs)
    per_step = M.correlation_per_step(pred, true)
    for got, c in zip(per_step, coeffs):
        assert math.isclose(got, 1 / math.sqrt(1 + c * c), rel_tol=1e-12)
    assert M.corr_time(pred, true) == 3.0
    assert M.corr_time(pred, true, threshold=0.9) == 2.0
    assert M.corr_time(pred, true, threshold=0.9, dt=0.5) == 1.0
    assert M.corr_time(pred, true, threshold=0.1) == 6.0  # never below: all steps


def test_correlation_leaves_constant_fields_out():
    pred, true = _decorrelating([0.0, 3.0])  # second step: corr 0.316
    const = torch.ones_like(true)
    both_pred = torch.cat([pred, const])  # sample 1: a constant prediction has no correlation
    both_true = torch.cat([true, true])
    assert M.correlation_per_step(both_pred, both_true) == pytest.approx(M.correlation_per_step(pred, true))
    assert math.isnan(M.correlation_per_step(const, true)[0])
    assert M.corr_time(const, true) == 2.0  # undefined correlation never ends the count


def test_valid_time_stops_at_the_first_exceedance():
    y = torch.randn(3, 1, 16, 2, dtype=torch.float64).expand(3, 4, 16, 2)
    scale = torch.tensor([0.05, 0.1, 0.3, 0.1], dtype=torch.float64).reshape(1, 4, 1, 1)
    p = (1 + scale) * y  # nRMSE per step = the scale exactly
    assert M.nrmse_per_step(p, y) == pytest.approx([0.05, 0.1, 0.3, 0.1], rel=1e-12)
    assert M.valid_time(p, y, threshold=0.2) == 2.0
    assert M.valid_time(p, y, threshold=0.5) == 4.0
    assert M.valid_time(p, y, threshold=0.2, dt=0.01) == pytest.approx(0.02)


def test_persistence_rollout_repeats_the_initial_state():
    u0 = torch.randn(2, 8, 3)
    r = M.persistence_rollout(u0, 5)
    assert r.shape == (2, 5, 8, 3)
    assert torch.equal(r[:, 4], u0) and torch.equal(r[:, 0], u0)
    r[0, 0, 0, 0] = 99.0  # a real copy, not a view of u0
    assert u0[0, 0, 0] != 99.0
    with pytest.raises(UPSError, match="steps >= 1"):
        M.persistence_rollout(u0, 0)


KEYS = {"nrmse", "nrmse_one_step", "crmse", "brmse", "frmse_low", "frmse_mid", "frmse_high", "max_error",
        "conservation_gap", "conservation_gap_t0", "bc_violation", "negativity", "spectral_energy_error",
        "corr_time", "valid_time", "nrmse_per_step", "corr_per_step", "samples", "steps", "high_corr",
        "rel_l2_full", "rel_l2_step", "diverged", "nrmse_finite"}


def test_evaluate_rollout_returns_every_metric_consistently():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(3, 6, 32, 1, generator=g, dtype=torch.float64)
    pred = true + 0.1 * torch.randn(3, 6, 32, 1, generator=g, dtype=torch.float64)
    out = M.evaluate_rollout(pred, true, boundary="dirichlet", nonnegative=(True,), Lx=2.0)
    assert set(out) == KEYS
    assert out["nrmse"] == pytest.approx(M.nrmse(pred, true), rel=1e-12)
    assert out["diverged"] == 0 and out["nrmse_finite"] == pytest.approx(out["nrmse"], rel=1e-12)
    assert out["nrmse_one_step"] == M.nrmse(pred[:, :1], true[:, :1])
    assert out["bc_violation"] == M.bc_violation(pred, true, "dirichlet")
    assert out["frmse_mid"] == M.frmse_mid(pred, true, Lx=2.0)
    assert out["negativity"] == M.negativity(pred, (True,)) > 0
    assert len(out["nrmse_per_step"]) == 6 and out["samples"] == 3 and out["steps"] == 6
    json.loads(json.dumps(out))  # what ``ups eval`` writes
    one = M.evaluate_rollout(pred, true, pred_one_step=true.clone())
    assert one["nrmse_one_step"] == 0.0


def test_evaluate_rollout_of_the_truth_is_perfect():
    true = torch.sin(2 * math.pi * (X.reshape(1, 1, N, 1) + 0.1 * torch.arange(4.0).reshape(1, 4, 1, 1)))
    out = M.evaluate_rollout(true.clone(), true)
    for key in ("nrmse", "crmse", "brmse", "frmse_low", "max_error", "bc_violation", "spectral_energy_error"):
        assert out[key] == 0.0, key
    assert out["corr_time"] == 4.0 and out["valid_time"] == 4.0


def test_shape_mismatch_is_one_clear_line():
    with pytest.raises(UPSError, match=r"prediction shape \(1, 2, 3, 1\) differs"):
        M.evaluate_rollout(torch.zeros(1, 2, 3, 1), torch.zeros(1, 2, 4, 1))
    with pytest.raises(UPSError, match="at least 4 axes"):
        M.crmse(torch.zeros(2, 3), torch.zeros(2, 3))


def test_frmse_2d_sums_pdebench_radial_shells():
    # p - y = A cos(2 pi (3 x + 4 y)) on a 16 x 16 grid: FFT coefficient A n^2 / 2 at (3, 4) (in PDEBench's
    # quadrant) and at (-3, -4) (not counted); shell floor(5) = 5 holds A n^2 / 2 -> scaled by L^2 / n^2: A / 2.
    # Shells 0 .. 7 exist (min(16, 16) // 2 = 8); the mid band [4, 12) is shells 4 .. 7: mean = A / 2 / 4.
    n, amp = 16, 0.6
    g = torch.arange(n, dtype=torch.float64) / n
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    y = torch.zeros(1, 1, n, n, 1, dtype=torch.float64)
    err = amp * torch.cos(2 * math.pi * (3 * gx + 4 * gy)).reshape(1, 1, n, n, 1)
    got = M.frmse_bands(y + err, y)
    assert math.isclose(got["mid"], amp / 2 / 4, rel_tol=1e-9)
    assert got["low"] < 1e-12 and math.isnan(got["high"])  # no shell >= 12 on this grid
    assert M.frmse_shells_2d(y + err, y, Lx=(2.0, 3.0))["mid"] == pytest.approx(6.0 * got["mid"])  # Lx Ly
    # two shells summed, not averaged: modes (1, 0) and (0, 1) share shell 1; low band = shells 0 .. 3
    two = amp * (torch.cos(2 * math.pi * gx) + torch.cos(2 * math.pi * gy)).reshape(1, 1, n, n, 1)
    shell_1 = math.sqrt(2 * (amp * n * n / 2) ** 2) / n**2  # sqrt of the summed squares
    assert math.isclose(M.frmse_low(y + two, y), shell_1 / 4, rel_tol=1e-9)
    # as in PDEBench, a mode with one negative wavenumber lies outside the counted quadrant
    hidden = amp * torch.cos(2 * math.pi * (3 * gx - 4 * gy)).reshape(1, 1, n, n, 1)
    assert max(M.frmse_bands(y + hidden, y)["low"], M.frmse_bands(y + hidden, y)["mid"]) < 1e-12


def test_brmse_2d_counts_every_edge_point_as_pdebench():
    # error 1 on the x = 0 edge only (ny points of the 2 nx + 2 ny edge terms; corners belong to both edges)
    nx, ny = 4, 6
    y = torch.zeros(2, 1, nx, ny, 1, dtype=torch.float64)
    p = y.clone()
    p[:, :, 0, :] = 1.0
    expected = math.sqrt((ny + 2) / (2 * nx + 2 * ny))  # ny on the x-edge, + the 2 corners seen by y-edges
    assert math.isclose(M.brmse(p, y), expected, rel_tol=1e-12)


def test_relative_l2_full_and_per_step_by_hand():
    true = torch.zeros(2, 2, 2, 2, 1, dtype=torch.float64)
    true[0] = 1.0  # sample 0: ||y|| = sqrt(8) over all frames, sqrt(4) per frame
    true[1] = 2.0
    pred = true.clone()
    pred[0, 0] += 1.0  # sample 0, frame 0 off by 1 at 4 points: error norm 2
    # full: sample 0: 2 / sqrt(8); sample 1: 0 -> mean
    assert math.isclose(M.relative_l2_full(pred, true), (2 / math.sqrt(8)) / 2, rel_tol=1e-12)
    # per step: sample 0 frame 0: 2 / 2 = 1, others 0 -> mean over 4 (sample, frame) pairs
    assert math.isclose(M.relative_l2_step(pred, true), 1 / 4, rel_tol=1e-12)


def test_high_correlation_times_in_steps_and_time_units():
    x = torch.arange(32, dtype=torch.float64) / 32
    true = torch.sin(2 * math.pi * x).reshape(1, 1, 32, 1).repeat(1, 5, 1, 1)
    noise = torch.cos(6 * math.pi * x).reshape(1, 1, 32, 1)  # orthogonal to the truth
    scale = torch.tensor([0.0, 0.5, 0.8, 1.2, 3.0], dtype=torch.float64).reshape(1, 5, 1, 1)
    pred = true + scale * noise  # correlation 1 / sqrt(1 + s^2): 1, 0.894, 0.781, 0.640, 0.316
    out = M.evaluate_rollout(pred, true, frame_dt=0.2)
    assert out["high_corr"]["0.8"] == {"steps": 2, "time": pytest.approx(0.4)}
    assert out["high_corr"]["0.9"] == {"steps": 1, "time": pytest.approx(0.2)}
    assert M.evaluate_rollout(pred, true)["high_corr"]["0.9"] == {"steps": 1, "time": None}


def test_bc_violation_needs_three_points():
    with pytest.raises(UPSError, match="at least 3 points"):
        M.bc_violation(torch.zeros(1, 1, 2, 1), torch.zeros(1, 1, 2, 1))


def test_diverged_rollouts_are_counted_and_the_finite_ones_scored():
    """Three samples: nRMSE 0.1 and 0.3 exactly (p = (1 + s) y), and one that turns NaN at step 2. The plain
    mean stays NaN; 1 of 3 diverged; the finite mean is (0.1 + 0.3) / 2; correlation and validity end at the
    divergence (the diverged sample counts as uncorrelated: mean corr 2/3 < 0.8 from step 2)."""
    y = torch.sin(2 * math.pi * X).reshape(1, 1, N, 1).expand(3, 4, N, 1)
    scale = torch.tensor([0.1, 0.3, 0.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    pred = ((1 + scale) * y).clone()
    pred[2, 2:, 5, 0] = math.nan
    out = M.evaluate_rollout(pred, y.clone(), frame_dt=0.5, valid_threshold=0.5)
    assert math.isnan(out["nrmse"]) and out["samples"] == 3
    assert out["diverged"] == 1 and math.isclose(out["nrmse_finite"], 0.2, rel_tol=1e-12)
    assert M.correlation_per_step(pred, y) == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3], rel=1e-12)
    assert out["high_corr"]["0.8"]["steps"] == 2 and out["valid_time"] == pytest.approx(2.0)
    assert M.divergence(pred[:2], y[:2]) == {"diverged": 0, "nrmse_finite": pytest.approx(0.2, rel=1e-12)}
    assert M.divergence(pred[2:], y[2:]) == {"diverged": 1, "nrmse_finite": None}  # nothing finite to score
