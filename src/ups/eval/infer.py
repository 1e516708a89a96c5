"""``ups infer``: roll a trained surrogate out from the initial frames of an HDF5 file.

Reads frame ``start`` of every sample of the input (our layout or PDEBench's), at the run's spatial
stride, rolls out ``steps`` steps of the run's time step, decodes at the input points or at the
query points of ``--points`` (a ``.npy`` file of coordinates ``[Q]`` or ``[Q, d]``), and writes the
prediction in the PDEBench layout: ``tensor`` ``[N, steps + 1, Q]`` (``[..., C]`` for several
channels), ``x-coordinate`` ``[Q]``, ``t-coordinate`` ``[steps + 1]``, written atomically. 2D runs decoded
on the input grid write ``[N, steps + 1, X, Y, C]`` with ``x-coordinate`` and ``y-coordinate`` (readable by
``ups data info``); 2D query points keep the point layout with ``x-coordinate`` ``[Q, 2]``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from ups import __version__
from ups.data.reader import TrajectoryFile
from ups.errors import DataError, UPSError
from ups.io_utils import atomic_write_with, check_free_disk
from ups.rundir import load_run_config


def _query_points(points: str | None, dims: int) -> np.ndarray | None:
    if points is None:
        return None
    path = Path(points)
    if not path.is_file():
        raise DataError(f"points file not found: {path} (a .npy array of coordinates [Q] or [Q, {dims}])")
    try:
        xq = np.load(path).astype(np.float32)
    except ValueError as err:
        raise DataError(f"{path} is not a .npy array of coordinates: {err}") from None
    xq = xq.reshape(-1, 1) if xq.ndim == 1 else xq
    if xq.ndim != 2 or xq.shape[1] != dims:
        raise DataError(f"{path} holds an array of shape {xq.shape}; expected [Q] or [Q, {dims}]")
    return xq


def infer(run_dir: str | Path, *, input: str | Path, steps: int, out: str | Path, points: str | None = None,
          start: int = 0, batch_size: int = 32, params: dict[str, float] | None = None, compile: bool = False) -> Path:
    """Roll out every sample of ``input`` from frame ``start``; write the PDEBench layout to ``out``.

    ``params``: PDE parameters for an input that carries none (its attributes and name win otherwise);
    ``compile``: ``torch.compile`` the surrogate (``Simulator(compile=True)``)."""
    from ups.simulator import Simulator

    if steps < 1:
        raise UPSError(f"--steps {steps}: roll out at least one step")
    run_dir = Path(run_dir)
    exp = load_run_config(run_dir)
    if exp.data.mixture is not None:
        raise UPSError(f"{run_dir} was trained on a data mixture, which ups infer does not read yet; score it per "
                       "PDE with `ups eval RUN_DIR --data FILE`")
    from ups.eval.run_eval import _model_stage, check_data_fits

    sim = Simulator.from_run(run_dir, stage=_model_stage(run_dir, exp), batch_size=batch_size, compile=compile)
    src = TrajectoryFile(input, params={**exp.data.params, **(params or {})} or None)
    if start >= src.n_frames:
        raise DataError(f"--start {start} is past the {src.n_frames} frames of {input}")
    check_data_fits(sim.meta, src, start=None)  # infer needs one frame, checked above
    stride = exp.data.spatial_stride
    coords = torch.from_numpy(src.coords(spatial_stride=stride)).float().reshape(-1, sim.meta.spatial_dims)
    xq = _query_points(points, sim.meta.spatial_dims)
    n_q = coords.shape[0] if xq is None else xq.shape[0]
    check_free_disk(Path(out).parent, src.n_samples * (steps + 1) * n_q * sim.meta.n_channels * 4, "predictions")
    params = torch.from_numpy(np.stack([src.params_array(sim.meta.param_names)] * src.n_samples)).float()
    preds = []
    for lo in range(0, src.n_samples, batch_size):
        hi = min(lo + batch_size, src.n_samples)
        u0 = np.stack([src.read(i, [start], spatial_stride=stride)[0] for i in range(lo, hi)])
        u0 = torch.from_numpy(u0).reshape(hi - lo, -1, sim.meta.n_channels)
        preds.append(sim.rollout(u0, steps, params=params[lo:hi], coords=coords,
                                 query_points=None if xq is None else torch.from_numpy(xq)).numpy())
    pred = np.concatenate(preds)  # [N, steps + 1, Q, C]
    t = src.t[start] + sim.meta.dt * np.arange(steps + 1)
    x = (coords.numpy() if xq is None else xq)
    attrs = output_attributes(sim.meta, params=params[0].tolist(), points=x.shape[0], t=t)
    attrs.update({"ups_version": __version__, "generator": "ups infer", "ups_run": str(run_dir.resolve()),
                  "source_file": str(src.path.resolve()), "source_start_frame": int(start)})
    if xq is None and sim.meta.spatial_dims == 2:  # on the input grid: the 2D layout [N, T, X, Y, C], x/y axes
        axes = [a[::stride] for a in src.axes]
        grid = pred.reshape(pred.shape[0], pred.shape[1], len(axes[0]), len(axes[1]), pred.shape[-1])
        attrs["resolution"] = len(axes[0])  # points per axis
        return _write(Path(out), grid, axes[0][:, None], t, attrs, y=axes[1])
    return _write(Path(out), pred, x, t, attrs)


def output_attributes(meta, *, params: list[float], points: int, t: np.ndarray) -> dict:
    """Attributes that describe the written prediction (not its source): PDE, parameters, points, frames,
    time step and span. params: the values used, in the order ``meta.param_names``; t: [frames]."""
    attrs = {"pde": meta.pde, **{n: float(v) for n, v in zip(meta.param_names, params)},
             "resolution": int(points), "frames": int(len(t)), "dt": float(meta.dt),
             "t_start": float(t[0]), "t_end": float(t[-1]), "boundary": meta.boundary}
    if meta.n_channels > 1:
        attrs["field_names"] = list(meta.field_names)
    return attrs


def _write(out: Path, pred: np.ndarray, x: np.ndarray, t: np.ndarray, attrs: dict,
           y: np.ndarray | None = None) -> Path:
    """pred [N, T, Q, C] with x [Q, d] (a point set), or [N, T, X, Y, C] with x [X, 1] and y [Y] (2D grid)."""
    def writer(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            two_d = y is not None
            f.create_dataset("tensor", data=pred[..., 0] if pred.shape[-1] == 1 and not two_d else pred,
                             dtype="float32")
            f.create_dataset("x-coordinate", data=x[:, 0] if x.shape[1] == 1 else x)
            if two_d:
                f.create_dataset("y-coordinate", data=y)
            f.create_dataset("t-coordinate", data=t)
            f.attrs.update(attrs)

    atomic_write_with(out, writer)
    return out
