"""Metrics in physical space, implemented from their published definitions.

All functions take de-normalised rollouts ``pred`` and ``true`` shaped ``[B, T, *spatial, C]`` (the
input frames already dropped: frame 0 is the first prediction) and return Python floats unless stated
otherwise. Reductions run in float64 (FFTs in the input's precision, at least float32).

PDEBench metrics (per frame and channel, then averaged over frames and channels):

- ``nrmse``       mean_b sqrt(mean_x (p - y)^2) / sqrt(mean_x y^2)
- ``crmse``       sqrt(mean_b (sum_x p - sum_x y)^2) / n_x            (n_x = number of spatial points)
- ``brmse``       mean_b sqrt(mean over boundary points (p - y)^2)   (1D: the two end points)
- ``frmse_*``     1D: mean over the band's wavenumbers k of sqrt(mean_b |P_k - Y_k|^2) * L / n_x, bands
                  low [0, 4), mid [4, 12), high [12, inf) of k (rfft). 2D (:func:`frmse_shells_2d`): the
                  squared FFT errors of the quadrant ``0 <= i < n_x/2, 0 <= j < n_y/2`` summed over each
                  radial shell ``floor(sqrt(i^2 + j^2))``, then sqrt(mean_b) * L_x L_y / (n_x n_y), then
                  the mean over the band's shells (PDEBench ``metric_func``). 3D and up: the 1D formula
                  over every rfftn coefficient with |k| in the band.
- ``max_error``   max |p - y| over everything

FNO paper (Li et al. 2021) relative L2 on the predicted frames (its ``LpLoss``: per sample
``||p - y||_2 / ||y||_2``, averaged over samples): ``rel_l2_full`` over all predicted frames, points and
channels at once (its ``test_l2_full / ntest``, the figure its Navier-Stokes table reports);
``rel_l2_step`` per predicted frame, then the mean over frames (its ``test_l2_step / ntest / T``).

Physics and rollout metrics are documented on each function. ``evaluate_rollout`` returns them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ups.errors import UPSError
from ups.registry import Registry

FREQ_BANDS: dict[str, tuple[float, float]] = {"low": (0.0, 4.0), "mid": (4.0, 12.0), "high": (12.0, math.inf)}


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a [B, T, *spatial, C] tensor."""
    return tuple(range(2, x.ndim - 1))


def _check_pair(pred: torch.Tensor, true: torch.Tensor) -> None:
    if pred.shape != true.shape:
        raise UPSError(f"prediction shape {tuple(pred.shape)} differs from truth shape {tuple(true.shape)} "
                       "(pass both as [B, T, *spatial, C] with the input frames dropped)")
    if true.ndim < 4:
        raise UPSError(f"rollouts must be [B, T, *spatial, C] (at least 4 axes), got shape {tuple(true.shape)}")


# ------------------------------------------------------------------------------------- PDEBench
def nrmse_per_sample(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """PDEBench nRMSE per sample, frame and channel.

    pred, true: [B, T, *spatial, C] -> [B, T, C] = sqrt(mean_x (p - y)^2) / sqrt(mean_x y^2).
    """
    dims = _spatial_dims(true)
    err = (pred - true).double().pow(2).mean(dim=dims).sqrt()
    ref = true.double().pow(2).mean(dim=dims).sqrt()
    return err / ref.clamp_min(eps)


def nrmse(pred: torch.Tensor, true: torch.Tensor) -> float:
    """PDEBench nRMSE: the per-(sample, frame, channel) values averaged. pred, true: [B, T, *spatial, C]."""
    return float(nrmse_per_sample(pred, true).mean())


def divergence(pred: torch.Tensor, true: torch.Tensor) -> dict[str, int | float | None]:
    """Diverged rollouts and what the others score. pred, true: [B, T, *spatial, C].

    ``diverged``: samples with any non-finite predicted value; ``nrmse_finite``: :func:`nrmse` over the other
    samples (None when all diverged). The plain nRMSE stays the mean over every sample, so it is NaN or inf as
    soon as one diverges; these two say how many did and what the rest score."""
    ok = torch.isfinite(pred).flatten(1).all(dim=1)  # [B]
    k = int((~ok).sum())
    return {"diverged": k, "nrmse_finite": nrmse(pred[ok], true[ok]) if k < ok.numel() else None}


def nrmse_per_step(pred: torch.Tensor, true: torch.Tensor) -> list[float]:
    """nRMSE of each rollout step (averaged over samples and channels). pred, true: [B, T, *spatial, C]."""
    return nrmse_per_sample(pred, true).mean(dim=(0, 2)).tolist()


def nrmse_one_step(pred_one_step: torch.Tensor, true: torch.Tensor) -> float:
    """Teacher-forced nRMSE: the nRMSE formula on one-step predictions made from the true previous frames.

    pred_one_step, true: [B, T, *spatial, C]; ``pred_one_step[:, t]`` was predicted from ``true[:, t - 1]``
    (or the last input frame for t = 0). The caller produces them; the formula is that of :func:`nrmse`.
    """
    _check_pair(pred_one_step, true)
    return nrmse(pred_one_step, true)


def crmse(pred: torch.Tensor, true: torch.Tensor) -> float:
    """PDEBench cRMSE (error of the conserved value): sqrt(mean_b (sum_x p - sum_x y)^2) / n_x, averaged over
    frames and channels. pred, true: [B, T, *spatial, C]."""
    _check_pair(pred, true)
    dims = _spatial_dims(true)
    n_x = math.prod(true.shape[d] for d in dims)
    diff = pred.double().sum(dim=dims) - true.double().sum(dim=dims)  # [B, T, C]
    return float((diff.pow(2).mean(dim=0).sqrt() / n_x).mean())


def _boundary_slices(x: torch.Tensor) -> list[torch.Tensor]:
    """The first and last slice along each spatial axis of x [B, T, *spatial, C], each flattened to
    [B, T, n_face, C]."""
    faces = []
    for d in _spatial_dims(x):
        for idx in (0, -1):
            face = x.select(d, idx)  # [B, T, *other spatial, C]
            faces.append(face.reshape(face.shape[0], face.shape[1], -1, face.shape[-1]))
    return faces


def brmse(pred: torch.Tensor, true: torch.Tensor) -> float:
    """PDEBench bRMSE: mean_b sqrt(mean over boundary points (p - y)^2), averaged over frames and channels.

    pred, true: [B, T, *spatial, C]. In 1D the boundary points are x_0 and x_-1, so the inner mean is
    ((p_0 - y_0)^2 + (p_-1 - y_-1)^2) / 2; in 2D it is the mean over the 2 n_x + 2 n_y edge points.
    """
    _check_pair(pred, true)
    diff = torch.cat(_boundary_slices(pred), dim=2).double() - torch.cat(_boundary_slices(true), dim=2).double()
    sq = diff.pow(2)  # [B, T, n_boundary, C]
    return float(sq.mean(dim=2).sqrt().mean())


def _wavenumber_magnitude(shape: Sequence[int]) -> torch.Tensor:
    """|k| (integer wavenumbers, radians per domain length / 2 pi) of ``rfftn`` coefficients of a grid of
    ``shape``: full FFT frequencies on every axis but the last, rfft frequencies on the last."""
    freqs = [torch.fft.fftfreq(n, d=1.0 / n).double() for n in shape[:-1]]
    freqs.append(torch.fft.rfftfreq(shape[-1], d=1.0 / shape[-1]).double())
    grids = torch.meshgrid(*freqs, indexing="ij")
    return torch.sqrt(sum(g.pow(2) for g in grids))


def _as_lengths(Lx: float | Sequence[float], d: int) -> list[float]:
    lengths = [float(Lx)] * d if isinstance(Lx, (int, float)) else [float(v) for v in Lx]
    if len(lengths) != d or any(v <= 0 for v in lengths):
        raise UPSError(f"Lx={Lx!r} must be one positive length or one per spatial axis ({d} here)")
    return lengths


def _rfft_spatial(x: torch.Tensor) -> torch.Tensor:
    """rfftn over the spatial axes of x [B, T, *spatial, C] -> complex [B, T, *freq, C], in the input's
    precision (at least float32; float64 inputs stay float64)."""
    return torch.fft.rfftn(x.to(torch.promote_types(x.dtype, torch.float32)), dim=_spatial_dims(x))


def frmse_bands(pred: torch.Tensor, true: torch.Tensor, Lx: float | Sequence[float] = 1.0) -> dict[str, float]:
    """PDEBench fRMSE in the bands of :data:`FREQ_BANDS`: for each wavenumber k, sqrt(mean_b |P_k - Y_k|^2)
    scaled by prod(L / n); then the mean over the band's k, frames and channels. A band without any
    coefficient (coarse grids) is NaN. pred, true: [B, T, *spatial, C]; Lx: domain length(s). 2D rollouts
    use PDEBench's radial shells (:func:`frmse_shells_2d`)."""
    _check_pair(pred, true)
    dims = _spatial_dims(true)
    if len(dims) == 2:
        return frmse_shells_2d(pred, true, Lx)
    spatial = [true.shape[d] for d in dims]
    scale = math.prod(length / n for length, n in zip(_as_lengths(Lx, len(dims)), spatial))
    err = (_rfft_spatial(pred) - _rfft_spatial(true)).abs().double().pow(2).mean(dim=0).sqrt() * scale  # [T, *freq, C]
    err = err.movedim(0, -1).reshape(-1, true.shape[-1] * true.shape[1])  # [n_freq, C * T]
    kmag = _wavenumber_magnitude(spatial).reshape(-1)
    out = {}
    for name, (lo, hi) in FREQ_BANDS.items():
        mask = (kmag >= lo) & (kmag < hi)
        out[name] = float(err[mask].mean()) if bool(mask.any()) else math.nan
    return out


def frmse_shells_2d(pred: torch.Tensor, true: torch.Tensor, Lx: float | Sequence[float] = 1.0,
                    low: int = 4, high: int = 12) -> dict[str, float]:
    """PDEBench's 2D fRMSE over radial wavenumber shells. pred, true: [B, T, X, Y, C]; Lx: length(s).

    ``E_ij = |FFT2(p - y)_ij|^2`` (unnormalised FFT) on the quadrant ``0 <= i < X // 2``,
    ``0 <= j < Y // 2`` only (as PDEBench: the modes with one negative wavenumber are not counted),
    summed per shell ``s = floor(sqrt(i^2 + j^2))`` for ``s < min(X, Y) // 2``; per shell
    ``sqrt(mean_b sum) * Lx Ly / (X Y)``; bands: the mean over shells [0, low), [low, high),
    [high, min(X, Y) // 2) (NaN when empty), then over frames and channels.
    """
    _check_pair(pred, true)
    if true.ndim != 5:
        raise UPSError(f"frmse_shells_2d needs [B, T, X, Y, C] rollouts, got shape {tuple(true.shape)}")
    nx, ny = true.shape[2], true.shape[3]
    lx, ly = _as_lengths(Lx, 2)
    diff = (pred.to(torch.float64) - true.to(torch.float64))
    power = torch.fft.fftn(diff, dim=(2, 3))[:, :, : nx // 2, : ny // 2].abs().pow(2)  # [B, T, nx/2, ny/2, C]
    n_shells = min(nx // 2, ny // 2)
    shell = torch.tensor([[math.isqrt(i * i + j * j) for j in range(ny // 2)] for i in range(nx // 2)])
    keep = shell < n_shells
    summed = torch.zeros(*power.shape[:2], n_shells, power.shape[-1], dtype=torch.float64)
    summed.index_add_(2, shell[keep], power[:, :, keep])  # [B, T, S, C]
    per_shell = summed.mean(dim=0).sqrt() * lx * ly / (nx * ny)  # [T, S, C]
    out = {}
    for name, (lo, hi) in {"low": (0, low), "mid": (low, high), "high": (high, n_shells)}.items():
        out[name] = float(per_shell[:, lo:hi].mean()) if hi > lo else math.nan
    return out


def relative_l2_full(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> float:
    """FNO paper's relative L2 over all predicted frames: mean_b ||p_b - y_b||_2 / ||y_b||_2, each norm over
    every frame, point and channel of sample b. pred, true: [B, T, *spatial, C]."""
    _check_pair(pred, true)
    err = (pred.double() - true.double()).flatten(1).norm(dim=1)
    return float((err / true.double().flatten(1).norm(dim=1).clamp_min(eps)).mean())


def relative_l2_step(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> float:
    """FNO paper's per-step relative L2: per sample and frame ||p - y||_2 / ||y||_2 over points and channels,
    averaged over samples and frames. pred, true: [B, T, *spatial, C]."""
    _check_pair(pred, true)
    err = (pred.double() - true.double()).flatten(2).norm(dim=2)
    return float((err / true.double().flatten(2).norm(dim=2).clamp_min(eps)).mean())


def frmse_low(pred: torch.Tensor, true: torch.Tensor, Lx: float | Sequence[float] = 1.0) -> float:
    """fRMSE in the band [0, 4) of |k|. pred, true: [B, T, *spatial, C]."""
    return frmse_bands(pred, true, Lx)["low"]


def frmse_mid(pred: torch.Tensor, true: torch.Tensor, Lx: float | Sequence[float] = 1.0) -> float:
    """fRMSE in the band [4, 12) of |k|. pred, true: [B, T, *spatial, C]."""
    return frmse_bands(pred, true, Lx)["mid"]


def frmse_high(pred: torch.Tensor, true: torch.Tensor, Lx: float | Sequence[float] = 1.0) -> float:
    """fRMSE in the band [12, inf) of |k|. pred, true: [B, T, *spatial, C]."""
    return frmse_bands(pred, true, Lx)["high"]


def max_error(pred: torch.Tensor, true: torch.Tensor) -> float:
    """The largest absolute error over all samples, frames, points and channels. pred, true: [B, T, *spatial, C]."""
    _check_pair(pred, true)
    return float((pred - true).abs().max())


# -------------------------------------------------------------------------------------- physics
def _integral_gap(integral: torch.Tensor, reference: torch.Tensor, scale: torch.Tensor, eps: float) -> float:
    """mean |integral - reference| / scale over [B, T, C] tensors."""
    return float(((integral - reference).abs() / scale.clamp_min(eps)).mean())


def conservation_gap(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> float:
    """Relative drift of the spatial integral of u against the truth's integral at the same frame.

    pred, true: [B, T, *spatial, C]. With I(u) = mean_x u (the integral over the domain divided by its
    volume, which cancels in the ratio): mean over b, t, c of |I(p) - I(y)| / mean_x |y|. Normalising by
    the mean absolute value (not |I(y)|) keeps zero-mean fields well defined.
    """
    _check_pair(pred, true)
    dims = _spatial_dims(true)
    p, y = pred.double(), true.double()
    return _integral_gap(p.mean(dim=dims), y.mean(dim=dims), y.abs().mean(dim=dims), eps)


def conservation_gap_t0(pred: torch.Tensor, u0: torch.Tensor, eps: float = 1e-12) -> float:
    """Relative drift of the spatial integral of the prediction against the initial state's.

    pred: [B, T, *spatial, C]; u0: [B, *spatial, C] (the last input frame). mean over b, t, c of
    |mean_x p_t - mean_x u0| / mean_x |u0|. For a conserved quantity (periodic Burgers) this is the
    violation of the conservation law itself, whatever the truth does.
    """
    if u0.shape != pred.shape[:1] + pred.shape[2:]:
        raise UPSError(f"u0 shape {tuple(u0.shape)} must be the rollout's [B, *spatial, C] = "
                       f"{tuple(pred.shape[:1] + pred.shape[2:])}")
    dims = _spatial_dims(pred)
    ref = u0.double().unsqueeze(1)  # [B, 1, *spatial, C]
    return _integral_gap(pred.double().mean(dim=dims), ref.mean(dim=dims), ref.abs().mean(dim=dims), eps)


BoundaryResidual = Callable[[torch.Tensor], torch.Tensor]
BOUNDARY_RESIDUALS: Registry[BoundaryResidual] = Registry("boundary type")


def _faces(x: torch.Tensor, d: int, idx: int) -> torch.Tensor:
    return x.select(d, idx)


@BOUNDARY_RESIDUALS.register("periodic")
def _periodic_jumps(x: torch.Tensor) -> torch.Tensor:
    """Per spatial axis, the value jump across the wrap u[0] - u[-1] and the slope jump (one-sided
    differences, per grid cell) (u[1] - u[0]) - (u[-1] - u[-2]). x: [B, T, *spatial, C] -> [B, T, n, C]."""
    out = []
    for d in _spatial_dims(x):
        first, second = _faces(x, d, 0), _faces(x, d, 1)
        last, before_last = _faces(x, d, -1), _faces(x, d, -2)
        out += [first - last, (second - first) - (last - before_last)]
    return torch.cat([o.reshape(o.shape[0], o.shape[1], -1, o.shape[-1]) for o in out], dim=2)


@BOUNDARY_RESIDUALS.register("dirichlet")
def _dirichlet_values(x: torch.Tensor) -> torch.Tensor:
    """The boundary values (first and last slice of every spatial axis). x: [B, T, *spatial, C] -> [B, T, n, C]."""
    return torch.cat(_boundary_slices(x), dim=2)


@BOUNDARY_RESIDUALS.register("neumann")
def _neumann_slopes(x: torch.Tensor) -> torch.Tensor:
    """Outward one-sided differences at both ends of every spatial axis (per grid cell): u[0] - u[1] and
    u[-1] - u[-2]. x: [B, T, *spatial, C] -> [B, T, n, C]."""
    out = []
    for d in _spatial_dims(x):
        out += [_faces(x, d, 0) - _faces(x, d, 1), _faces(x, d, -1) - _faces(x, d, -2)]
    return torch.cat([o.reshape(o.shape[0], o.shape[1], -1, o.shape[-1]) for o in out], dim=2)


def bc_violation(pred: torch.Tensor, true: torch.Tensor, boundary: str = "periodic") -> float:
    """How far the prediction's boundary behaviour departs from the truth's own, in units of u.

    pred, true: [B, T, *spatial, C] (each spatial axis needs at least 2 points, 3 for periodic).
    A residual r(u) [B, T, n, C] is taken from :data:`BOUNDARY_RESIDUALS` by ``boundary``:
    periodic -> value jump u[0] - u[-1] and slope jump (u[1] - u[0]) - (u[-1] - u[-2]) across the wrap,
    per axis; dirichlet -> the boundary values; neumann -> the outward one-sided differences.
    The violation is mean over b, t, c of sqrt(mean_n (r(p) - r(y))^2): zero when the prediction joins
    across the boundary exactly as the truth does (the truth's own jump, one grid cell wide, is not
    counted against the model).
    """
    _check_pair(pred, true)
    residual = BOUNDARY_RESIDUALS.get(boundary)
    if min(true.shape[d] for d in _spatial_dims(true)) < 3:
        raise UPSError(f"bc_violation needs at least 3 points along every spatial axis, got {tuple(true.shape)}")
    diff = residual(pred).double() - residual(true).double()  # [B, T, n, C]
    return float(diff.pow(2).mean(dim=2).sqrt().mean())


def negativity(pred: torch.Tensor, nonnegative: Sequence[bool] | None = None) -> float:
    """Mean of relu(-u) over samples, frames, points and the channels declared non-negative (0 if none).

    pred: [B, T, *spatial, C]; nonnegative: one flag per channel (``DatasetMetadata.nonnegative``).
    """
    if not nonnegative or not any(nonnegative):
        return 0.0
    if len(nonnegative) != pred.shape[-1]:
        raise UPSError(f"nonnegative has {len(nonnegative)} flags but the fields have {pred.shape[-1]} channels "
                       "(give one flag per channel)")
    idx = torch.tensor([i for i, flag in enumerate(nonnegative) if flag])
    return float(torch.relu(-pred.double().index_select(-1, idx)).mean())


def energy_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Spatial energy spectrum per shell of integer |k|: E(k) = sum over coefficients with round(|k|) = k of
    |U|^2 (rfft coefficients of the last spatial axis other than k = 0 and Nyquist count twice, so that
    sum_k E(k) = n_x * sum_x u^2 by Parseval). x: [B, T, *spatial, C] -> [B, T, C, n_shells]."""
    dims = _spatial_dims(x)
    spatial = [x.shape[d] for d in dims]
    power = _rfft_spatial(x).abs().double().pow(2)  # [B, T, *freq, C]
    last = spatial[-1]
    weight = torch.full((last // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if last % 2 == 0:
        weight[-1] = 1.0
    power = power * weight.view(*([1] * (power.ndim - 2)), -1, 1)
    shells = _wavenumber_magnitude(spatial).round().long().reshape(-1)
    flat = power.reshape(power.shape[0], power.shape[1], -1, power.shape[-1]).movedim(2, -1)  # [B, T, C, n_freq]
    out = torch.zeros(*flat.shape[:-1], int(shells.max()) + 1, dtype=torch.float64)
    return out.index_add_(-1, shells, flat)


def spectral_energy_error(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> float:
    """Relative error of the spatial energy spectrum: mean over b, t, c of sum_k |E_p(k) - E_y(k)| / sum_k E_y(k).

    pred, true: [B, T, *spatial, C]. A prediction p = (1 + a) y gives (1 + a)^2 - 1 exactly.
    """
    _check_pair(pred, true)
    ep, ey = energy_spectrum(pred), energy_spectrum(true)
    return float(((ep - ey).abs().sum(dim=-1) / ey.sum(dim=-1).clamp_min(eps)).mean())


# -------------------------------------------------------------------------------------- rollout
def correlation_per_step(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-12) -> list[float]:
    """Mean Pearson correlation with the truth at each step. pred, true: [B, T, *spatial, C] -> [T] list.

    The correlation is taken over the spatial points of each (sample, channel), then averaged over samples
    and channels. Pairs where either field is constant (variance below eps) have no correlation and are left
    out of the mean; a step where every pair is constant is NaN. A pair whose prediction is not finite (a
    diverged rollout) counts as uncorrelated (0), so divergence ends the high-correlation time.
    """
    _check_pair(pred, true)
    dims = _spatial_dims(true)
    p = pred.double() - pred.double().mean(dim=dims, keepdim=True)
    y = true.double() - true.double().mean(dim=dims, keepdim=True)
    var_p, var_y = p.pow(2).mean(dim=dims), y.pow(2).mean(dim=dims)  # [B, T, C]
    corr = (p * y).mean(dim=dims) / (var_p * var_y).sqrt().clamp_min(eps)
    corr = torch.where((var_p > eps) & (var_y > eps), corr, torch.full_like(corr, math.nan))
    finite = (~torch.isfinite(pred.double())).sum(dim=dims) == 0  # [B, T, C]
    corr = torch.where(finite, corr, torch.zeros_like(corr))
    return corr.nanmean(dim=(0, 2)).tolist()


def _steps_until(values: list[float], fails: Callable[[float], bool], *, nan_fails: bool = False) -> int:
    """The number of leading values that do not fail (len(values) if none fails; NaN fails when ``nan_fails``)."""
    for i, v in enumerate(values):
        if (nan_fails if math.isnan(v) else fails(v)):
            return i
    return len(values)


def _as_time(steps: int, dt: float | None) -> float:
    return float(steps * dt) if dt is not None else float(steps)


def corr_time(pred: torch.Tensor, true: torch.Tensor, threshold: float = 0.8, dt: float | None = None) -> float:
    """High-correlation time: rollout steps before the mean Pearson correlation first falls below ``threshold``.

    pred, true: [B, T, *spatial, C]. Returns T when it never does; with ``dt`` the count times dt (a time).
    """
    return _as_time(_steps_until(correlation_per_step(pred, true), lambda c: c < threshold), dt)


def valid_time(pred: torch.Tensor, true: torch.Tensor, threshold: float = 0.2, dt: float | None = None) -> float:
    """Valid-rollout time: steps before the per-step nRMSE first exceeds ``threshold`` or is NaN (T if never;
    times dt when given). pred, true: [B, T, *spatial, C]."""
    _check_pair(pred, true)
    return _as_time(_steps_until(nrmse_per_step(pred, true), lambda e: e > threshold, nan_fails=True), dt)


def persistence_rollout(u0: torch.Tensor, steps: int) -> torch.Tensor:
    """The persistence baseline u_{t+1} = u_t: u0 [B, *spatial, C] repeated -> [B, steps, *spatial, C]."""
    if steps < 1:
        raise UPSError(f"persistence_rollout needs steps >= 1, got {steps}")
    return u0.unsqueeze(1).expand(u0.shape[0], steps, *u0.shape[1:]).clone()


def _high_corr(corr: list[float], frame_dt: float | None, thresholds=(0.8, 0.9)) -> dict:
    """High-correlation times at ``thresholds``: {"0.8": {"steps": n, "time": n * frame_dt or None}, ...}."""
    out = {}
    for th in thresholds:
        steps = _steps_until(corr, lambda c, th=th: c < th)
        out[f"{th:g}"] = {"steps": steps, "time": None if frame_dt is None else float(steps * frame_dt)}
    return out


def evaluate_rollout(
    pred: torch.Tensor,
    true: torch.Tensor,
    *,
    pred_one_step: torch.Tensor | None = None,
    u0: torch.Tensor | None = None,
    boundary: str = "periodic",
    nonnegative: Sequence[bool] | None = None,
    Lx: float | Sequence[float] = 1.0,
    corr_threshold: float = 0.8,
    valid_threshold: float = 0.2,
    dt: float | None = None,
    frame_dt: float | None = None,
) -> dict[str, float | int | list[float] | dict]:
    """Every metric of this module on one rollout, as the dict ``ups eval`` writes.

    pred, true: [B, T, *spatial, C] de-normalised, input frames dropped. pred_one_step: [B, T, *spatial, C]
    teacher-forced predictions; when None, ``nrmse_one_step`` is the nRMSE of the first rollout step (which is
    itself a prediction from true frames). u0: [B, *spatial, C] the last input frame; when None,
    ``conservation_gap_t0`` takes the first true frame as reference. dt turns corr/valid times into times.
    ``high_corr`` holds the high-correlation time at 0.8 and 0.9 in steps and, with ``frame_dt`` (the time
    between rollout steps), in time units.
    """
    _check_pair(pred, true)
    per_step = nrmse_per_step(pred, true)
    corr = correlation_per_step(pred, true)
    one_step = pred_one_step if pred_one_step is not None else pred[:, :1]
    one_true = true if pred_one_step is not None else true[:, :1]
    bands = frmse_bands(pred, true, Lx)
    return {
        "nrmse": sum(per_step) / len(per_step),
        "nrmse_one_step": nrmse_one_step(one_step, one_true),
        "crmse": crmse(pred, true),
        "brmse": brmse(pred, true),
        "frmse_low": bands["low"],
        "frmse_mid": bands["mid"],
        "frmse_high": bands["high"],
        "max_error": max_error(pred, true),
        "conservation_gap": conservation_gap(pred, true),
        "conservation_gap_t0": conservation_gap_t0(pred, u0 if u0 is not None else true[:, 0]),
        "bc_violation": bc_violation(pred, true, boundary),
        "negativity": negativity(pred, nonnegative),
        "spectral_energy_error": spectral_energy_error(pred, true),
        "corr_time": _as_time(_steps_until(corr, lambda c: c < corr_threshold), dt),
        "valid_time": _as_time(_steps_until(per_step, lambda e: e > valid_threshold, nan_fails=True), dt),
        "high_corr": _high_corr(corr, frame_dt),
        "rel_l2_full": relative_l2_full(pred, true),
        "rel_l2_step": relative_l2_step(pred, true),
        **divergence(pred, true),
        "nrmse_per_step": per_step,
        "corr_per_step": corr,
        "samples": int(true.shape[0]),
        "steps": int(true.shape[1]),
    }
