"""Autoregressive rollouts of a latent surrogate (``encode`` / ``step`` / ``decode``) and their scores.

Two modes, both differentiable (the operator stage trains through them) and both usable under
``torch.inference_mode`` (validation, evaluation, the Simulator):

- ``reencode``: every step decodes the field at the input points and encodes it again, so the model
  is a Markov map on fields (as an FNO is);
- ``latent``: encode once, step the tokens ``steps`` times, decode where asked at every step;
- ``reencode_xR`` (R = 2, 3, ...): ``reencode`` with the state carried on a regular grid R times finer per
  axis than the model's training grid (``ups.fine_grid``): the input grid is refined by the factor that takes
  (2 for the training grid itself, none for an input already that fine), the first frame is interpolated onto
  it, every step decodes and re-encodes there, and the input points (a subset of it) are read off. On input
  points that are not a regular grid it is plain ``reencode``.

Query points (``query_coords``) may differ from the input points: frame 0 there is the decoder's
reconstruction of the encoded input; later frames chain the decoder's increments at those points.
A model with ``refine_field`` (a physical-space corrector, ``ups.models.refiner``) has the decoded field at
the input points refined after every step (:func:`refine_state`; on a finer state grid the correction at the
input points is interpolated onto it); it always rolls out by re-encoding (``latent`` runs as ``reencode``),
and query points see the refinement through the re-encoded state (their own frame at that step is the
unrefined decode).
The one place for rollouts: stage validation, ``ups eval``, TTC, the Simulator and every benchmark call
these functions. Everything here works on normalised fields; :func:`rollout_scores` de-normalises before scoring.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from ups.errors import ConfigError, DataError
from ups.eval.metrics import nrmse_per_sample
from ups.fine_grid import FineGrid
from ups.registry import Registry

ROLLOUTS: Registry = Registry("rollout mode")

# u0 [B, N, C] normalised, coords [B, N, d], params [B, P], dt [B], steps -> [B, steps, N, C] normalised
RolloutFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _initial_queries(model, z0: torch.Tensor, u0: torch.Tensor, query_coords: torch.Tensor | None) -> torch.Tensor:
    """Frame 0 at the queries: the input itself, or its reconstruction. -> [B, Q, C]."""
    return u0 if query_coords is None else model.decode(z0, query_coords)


def frames_per_step(model) -> int:
    """Frames one ``step`` of ``model`` advances (temporal bundling, ``UPTConfig.frames_per_step``; 1 without)."""
    return int(getattr(model, "frames_per_step", 1))


def decode_frames(model, z: torch.Tensor, coords_q: torch.Tensor, u_q: torch.Tensor | None = None) -> torch.Tensor:
    """Every frame one step of ``model`` yields: z [B, L, D], coords_q [B, Q, d], u_q [B, Q, C] or None
    -> [B, F, Q, C] (F = :func:`frames_per_step`; a model without ``decode_frames`` gives F = 1)."""
    if hasattr(model, "decode_frames"):
        return model.decode_frames(z, coords_q, u_q)
    return model.decode(z, coords_q, u_q).unsqueeze(1)


@ROLLOUTS.register("reencode")
def rollout_reencode(model, u0: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                     steps: int, *, query_coords: torch.Tensor | None = None, bounds=None,
                     fine: int = 1) -> torch.Tensor:
    """u0: [B, N, C] at coords [B, N, d]; params [B, P]; dt [B]; query_coords [B, Q, d] or None (Q = N)
    -> [B, steps + 1, Q, C], frame 0 included (``steps`` counts frames; a bundled model's step gives several, and
    the last step's extra frames are dropped). fine: when coords are a regular grid, carry the state on a grid
    ``fine`` times finer per axis (``reencode_x{fine}``) than the model's training grid (``model.grid_spacing``;
    without one, than the input grid): the input refined by the factor that takes, an input that fine as it is."""
    grid = state_grid(model, coords, fine)
    xs, u = (coords, u0) if grid is None else (grid.coords, clamp_to_bounds(grid.refine(u0), bounds))
    z = model.encode(u, xs)
    frames = [_initial_queries(model, z, u0, query_coords)]
    while len(frames) <= steps:
        z_next = model.step(z, params, dt)
        u_next = decode_frames(model, z_next, xs, u)  # [B, F, M, C]
        if hasattr(model, "refine_field"):  # a physical-space corrector refines the field at the data points
            u_next = refine_state(lambda a, b: model.refine_field(a, b, params, dt), grid, u, u_next[:, -1])[:, None]
        u_next = clamp_to_bounds(u_next, bounds)
        if query_coords is None:
            frames += [f if grid is None else grid.coarse(f) for f in u_next.unbind(1)]
        else:
            frames += clamp_to_bounds(decode_frames(model, z_next, query_coords, frames[-1]), bounds).unbind(1)
        u = u_next[:, -1]
        if len(frames) <= steps:
            z = model.encode(u, xs)
    return torch.stack(frames[:steps + 1], dim=1)


def state_grid(model, coords: torch.Tensor, fine: int) -> FineGrid | None:
    """The grid a ``reencode_x{fine}`` rollout of ``model`` carries its state on, for input points coords [B, N, d]
    (``fine`` times finer than the model's training grid ``model.grid_spacing``); None: the input points."""
    if fine < 2:
        return None
    return FineGrid.around(coords, fine, periodic=bool(getattr(model, "periodic", False)),
                           reference=getattr(model, "grid_spacing", None))


def refine_state(refine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], grid: FineGrid | None,
                 u_prev: torch.Tensor, u_next: torch.Tensor) -> torch.Tensor:
    """A physical-space refiner applied to one step of a rollout whose state lives on ``grid``.

    refine(u_prev, u_pred) -> refined, all [B, N, C] at the data points (the grid the refiner trained on);
    u_prev, u_next: [B, M, C] the state before and after the step on ``grid`` (None: M = N, the data points)
    -> [B, M, C]. On a finer state grid the refiner sees the data points' values, and its correction there is
    interpolated onto the state grid and added, so the state keeps what lies between the data points."""
    if grid is None:
        return refine(u_prev, u_next)
    pred = grid.coarse(u_next)
    return u_next + grid.refine(refine(grid.coarse(u_prev), pred) - pred)


_FINE_MODE = re.compile(r"(?P<base>[a-z]+)_x(?P<factor>[0-9]+)")


def parse_mode(mode: str) -> tuple[str, int]:
    """A rollout mode -> (registered mode, state-grid refinement): ``"reencode"`` -> ("reencode", 1),
    ``"reencode_x2"`` -> ("reencode", 2). An unknown mode, or a refinement of another mode or below 2, is a
    ``ConfigError`` naming the allowed modes."""
    match = _FINE_MODE.fullmatch(mode)
    if match is None:
        ROLLOUTS.get(mode)  # the registry's one-line error for an unknown mode
        return mode, 1
    base, factor = match["base"], int(match["factor"])
    if base != "reencode" or factor < 2:
        raise ConfigError(f"rollout mode '{mode}': only reencode carries its state on a finer grid, by a factor "
                          f">= 2 (e.g. reencode_x2); allowed: {', '.join(ROLLOUTS.names())}, reencode_xR")
    return base, factor


@ROLLOUTS.register("latent")
def rollout_latent(model, u0: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                   steps: int, *, query_coords: torch.Tensor | None = None, bounds=None) -> torch.Tensor:
    """Encode once, step in latent space. Shapes as :func:`rollout_reencode`: -> [B, steps + 1, Q, C]."""
    z = model.encode(u0, coords)
    xq = coords if query_coords is None else query_coords
    frames = [_initial_queries(model, z, u0, query_coords)]
    while len(frames) <= steps:
        z = model.step(z, params, dt)
        frames += clamp_to_bounds(decode_frames(model, z, xq, frames[-1]), bounds).unbind(1)
    return torch.stack(frames[:steps + 1], dim=1)


def clamp_to_bounds(u: torch.Tensor, bounds) -> torch.Tensor:
    """Keep u [B, Q, C] (or [B, F, Q, C]) within per-sample, per-channel bounds (lo, hi) [B, 1, C]; None: unchanged."""
    if bounds is None:
        return u
    lo, hi = (b.reshape(b.shape[0], *([1] * (u.dim() - 2)), b.shape[-1]) for b in bounds)
    return torch.minimum(torch.maximum(u, lo), hi)


def initial_bounds(u0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of the initial field u0 [B, N, C] -> (min, max) [B, 1, C] (the normalisation is affine with
    positive scale, so the range in normalised units is the physical one)."""
    return u0.amin(dim=1, keepdim=True), u0.amax(dim=1, keepdim=True)


def rollout(model, u0: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor, steps: int,
            *, mode: str = "reencode", query_coords: torch.Tensor | None = None,
            max_principle: bool = False) -> torch.Tensor:
    """Dispatch on ``mode`` (``ROLLOUTS``). u0 [B, N, C], coords [B, N, d] -> [B, steps + 1, Q, C].

    max_principle: for PDEs whose solutions stay within the range of their initial state (viscous
    Burgers, advection), every decoded frame is kept inside that range, so an error can never grow
    into a blow-up; the same rule applies in validation, evaluation and the Simulator.
    """
    base, factor = parse_mode(mode)
    if hasattr(model, "refine_field"):  # its refined field must be re-encoded: a latent rollout cannot carry it
        base = "reencode"
    fn: Callable = ROLLOUTS.get(base)
    extra = {"fine": factor} if factor > 1 else {}
    bounds = initial_bounds(u0) if max_principle else None
    return fn(model, u0, coords, params, dt, steps, query_coords=query_coords, bounds=bounds, **extra)


def flatten_points(u: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch layout -> point lists. u: [B, T, *spatial, C]; coords: [B, *spatial, d] -> [B, T, N, C], [B, N, d]."""
    return u.flatten(2, -2), coords.flatten(1, -2)


@torch.no_grad()
def rollout_grid(model, u0: torch.Tensor, coords: torch.Tensor, params: torch.Tensor,
                 dt: torch.Tensor, steps: int, *, max_principle: bool = False) -> torch.Tensor:
    """Autoregressive rollout of ``predict_next``. u0 [B, N, C], coords [B, N, d], params [B, P], dt [B]
    -> [B, steps, N, C] (the predicted frames 1..steps, normalised). ``max_principle``: every frame kept
    within the range of u0, as in :func:`rollout`."""
    frames, state = [], u0
    bounds = initial_bounds(u0) if max_principle else None
    for _ in range(steps):
        state = clamp_to_bounds(model.predict_next(state, coords, params, dt), bounds)
        frames.append(state)
    return torch.stack(frames, dim=1)


def rollout_fn(model, *, mode: str = "reencode", max_principle: bool = False) -> RolloutFn:
    """The rollout function of any model, frame 0 dropped: latent surrogates (``encode``/``step``/``decode``,
    a corrected one too) by :func:`rollout` in ``mode``, grid models (``predict_next``) by :func:`rollout_grid`."""
    if not hasattr(model, "encode"):
        def grid(u0, coords, params, dt, steps):
            return rollout_grid(model, u0, coords, params, dt, steps, max_principle=max_principle)

        return grid

    @torch.inference_mode()
    def latent(u0, coords, params, dt, steps):
        return rollout(model, u0, coords, params, dt, steps, mode=mode, max_principle=max_principle)[:, 1:]

    return latent


@dataclass
class Collected:
    """Rolled-out fields, all [B, T - 1, *spatial, C] (input frame dropped) but ``u0`` [B, *spatial, C]:
    ``pred`` the rollout from frame 0, ``one_step`` the teacher-forced one-step predictions, ``true``;
    ``member`` [B] the data-mixture member of each sample, when the batches carry one."""

    pred: torch.Tensor
    one_step: torch.Tensor
    true: torch.Tensor
    u0: torch.Tensor
    wall_s: float
    member: torch.Tensor | None = None  # [B] mixture member of each sample (None: one data set)


def iter_rollouts(fn: RolloutFn, loader: Iterable[dict], denormalize: Callable[..., torch.Tensor], *,
                  device: torch.device | None = None, max_steps: int | None = None) -> Iterator[Collected]:
    """Roll out every batch of whole trajectories ``u [B, W, *spatial, C]`` from its first frame (at most
    ``max_steps`` steps), and one step from every true frame but the last; fields through ``denormalize``
    (normalised [..., C] -> physical; the identity keeps them normalised). One :class:`Collected` per batch.
    Batches of a data mixture carry ``member`` [B]: they are de-normalised per sample by
    ``denormalize(x, member=...)`` (a ``MixtureNormalizer``'s)."""
    for batch in loader:
        if "mask" in batch and not bool(batch["mask"].all()):
            raise DataError("rollouts are scored on whole grids, but this batch holds padded point clouds "
                            "(data.point_subset applies to training items only)")
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        member = batch.get("member")
        denorm = denormalize if member is None else partial(denormalize, member=member)
        u = batch["u"] if max_steps is None else batch["u"][:, :max_steps + 1]
        b, w, spatial, c = u.shape[0], u.shape[1], u.shape[2:-1], u.shape[-1]
        flat, coords = flatten_points(u, batch["coords"])  # [B, W, N, C], [B, N, d]
        params, dt = batch["params"], batch["dt"]
        start = time.perf_counter()
        pred = fn(flat[:, 0], coords, params, dt, w - 1)
        wall = time.perf_counter() - start
        one = teacher_forced(fn, flat, coords, params, dt)
        shape = (b, w - 1, *spatial, c)
        yield Collected(denorm(pred.reshape(shape)), denorm(one.reshape(shape)), denorm(u[:, 1:]),
                        denorm(u[:, 0]), wall, None if member is None else member.cpu())


def teacher_forced(fn: RolloutFn, flat: torch.Tensor, coords: torch.Tensor, params: torch.Tensor,
                   dt: torch.Tensor) -> torch.Tensor:
    """One step from every true frame but the last: flat [B, W, N, C], coords [B, N, d], params [B, P], dt [B]
    -> [B * (W - 1), N, C] (sample-major). Run in chunks of B frames, the batch size the rollout itself runs
    at, so memory does not grow with the trajectory length (640-frame KS trajectories, 40-frame Burgers)."""
    b, w, c = flat.shape[0], flat.shape[1], flat.shape[-1]
    frames = flat[:, :-1].reshape(b * (w - 1), -1, c)
    reps = [x.repeat_interleave(w - 1, dim=0) for x in (coords, params, dt)]
    return torch.cat([fn(frames[i:i + b], *(x[i:i + b] for x in reps), 1)[:, 0]
                      for i in range(0, frames.shape[0], b)])


def collect(fn: RolloutFn, loader: Iterable[dict], denormalize: Callable[[torch.Tensor], torch.Tensor], *,
            device: torch.device | None = None) -> Collected:
    """:func:`iter_rollouts` of every batch, concatenated (float32)."""
    parts = list(iter_rollouts(fn, loader, denormalize, device=device))
    cat = lambda key: torch.cat([getattr(p, key) for p in parts]).float()  # noqa: E731
    member = torch.cat([p.member for p in parts]) if all(p.member is not None for p in parts) else None
    return Collected(cat("pred"), cat("one_step"), cat("true"), cat("u0"), sum(p.wall_s for p in parts), member)


def rollout_scores(model, batches: Iterable[dict[str, torch.Tensor]], denormalize: Callable, *,
                   mode: str = "reencode", device: torch.device | None = None, max_principle: bool = False) -> dict:
    """Roll out every trajectory of ``batches`` from its first frame over all its frames and score it
    in physical space (PDEBench nRMSE, frame 0 excluded).

    batches: dicts with ``u`` [B, T, *spatial, C] (normalised), ``coords``, ``params`` [B, P], ``dt`` [B]
    (and ``member`` [B] for a data mixture); denormalize: normalised [..., C] -> physical. Returns ``nrmse``
    (full rollout), ``one_step`` (from the true frame at every step), ``per_step`` (list, T - 1 values) and
    ``persistence``. With members (whose trajectories may differ in length), each score is the mean of the
    members' scores, ``per_member`` holds them and ``per_step`` is empty.
    """
    groups: dict[int | None, list[list[torch.Tensor]]] = {}
    fn = rollout_fn(model, mode=mode, max_principle=max_principle)
    for got in iter_rollouts(fn, batches, denormalize, device=device):
        persistence = got.u0.unsqueeze(1).expand_as(got.true)
        errs = [nrmse_per_sample(x, got.true) for x in (got.pred, got.one_step, persistence)]  # [B, T-1, C]
        ids = [None] if got.member is None else got.member.unique().tolist()
        for m in ids:
            rows = slice(None) if m is None else got.member == m
            for bucket, err in zip(groups.setdefault(m, [[], [], []]), errs):
                bucket.append(err[rows])
    scores = {m: [torch.cat(bucket) for bucket in lists] for m, lists in groups.items()}
    per_member = {m: {"nrmse": float(e.mean()), "one_step": float(o.mean()), "persistence": float(p.mean())}
                  for m, (e, o, p) in scores.items()}
    mean = lambda key: sum(v[key] for v in per_member.values()) / len(per_member)  # noqa: E731
    out = {"nrmse": mean("nrmse"), "one_step": mean("one_step"), "persistence": mean("persistence")}
    if list(scores) == [None]:
        return {**out, "per_step": scores[None][0].mean(dim=(0, 2)).tolist()}
    return {**out, "per_step": [], "per_member": per_member}
