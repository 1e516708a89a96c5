"""PNG plots for evaluations and reports (matplotlib's Agg canvas, no pyplot global state, atomic writes).

- :func:`plot_spacetime`        truth, prediction and error images of one 1D sample [T, X]
- :func:`plot_error_curves`     nRMSE per rollout step for the model, persistence and peers (log y)
- :func:`plot_training_curves`  loss components and validation metrics over epochs from ``train_log.jsonl``
- :func:`plot_snapshots_2d`     truth / prediction / error of one 2D sample [T, X, Y] at a few times
- :func:`animate_2d`            the same three panels as an animated GIF, one frame per rollout step

2D images are transposed so that x runs horizontally (origin at the lower left); truth and prediction
share one colour scale, the error has its own symmetric one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from ups.errors import UPSError
from ups.io_utils import atomic_write_with


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` as PNG to ``path`` atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def _as_array(x, name: str, *, dims: int = 1) -> np.ndarray:
    """One sample as float64 ``[T, X]`` (``dims=1``) or ``[T, X, Y]`` (``dims=2``); a trailing channel of 1 dropped."""
    arr = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if arr.ndim == dims + 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != dims + 1:
        axes = "T, X" if dims == 1 else "T, X, Y"
        raise UPSError(f"{name} must be one {dims}D sample [{axes}] (or [{axes}, 1]), got shape {tuple(arr.shape)}")
    return arr


def plot_spacetime(truth, pred, path: str | Path, *, title: str = "", x: Sequence[float] | None = None,
                   t: Sequence[float] | None = None) -> Path:
    """Truth, prediction and error (pred - truth) as space-time images of one 1D sample.

    truth, pred: [T, X] (or [T, X, 1]) tensors or arrays; x: [X] and t: [T] coordinates for the axes
    (indices when None). Truth and prediction share one colour scale; the error has a symmetric one.
    """
    y, p = _as_array(truth, "truth"), _as_array(pred, "pred")
    if y.shape != p.shape:
        raise UPSError(f"truth {y.shape} and prediction {p.shape} must have the same [T, X] shape")
    n_t, n_x = y.shape
    xs = np.asarray(x if x is not None else np.arange(n_x), dtype=np.float64)
    ts = np.asarray(t if t is not None else np.arange(n_t), dtype=np.float64)
    extent = (xs[0], xs[-1] if n_x > 1 else xs[0] + 1, ts[-1] if n_t > 1 else ts[0] + 1, ts[0])
    finite = np.concatenate([y[np.isfinite(y)], p[np.isfinite(p)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    err = p - y
    emax = float(np.nanmax(np.abs(err[np.isfinite(err)]))) if np.isfinite(err).any() else 0.0
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    panels = [("truth", y, "viridis", lo, hi), ("prediction", p, "viridis", lo, hi),
              ("error (pred - truth)", err, "RdBu_r", -emax or -1e-12, emax or 1e-12)]
    for i, (name, data, cmap, vmin, vmax) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        im = ax.imshow(data, aspect="auto", origin="upper", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.set_ylabel("t" if i == 0 else "")
        if i:
            ax.tick_params(labelleft=False)
        fig.colorbar(im, ax=ax)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_error_curves(curves: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "nRMSE per step",
                      ylabel: str = "nRMSE", dt: float | None = None) -> Path:
    """One line per entry of ``curves`` ({name: per-step values}), log y axis; steps (or times with dt) on x.

    Non-positive or non-finite values cannot be drawn on a log axis and are left out of the line.
    """
    if not curves:
        raise UPSError("plot_error_curves needs at least one curve ({name: per-step values})")
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        v = np.asarray(list(values), dtype=np.float64)
        steps = np.arange(1, v.size + 1) * (dt if dt is not None else 1.0)
        v = np.where(np.isfinite(v) & (v > 0), v, np.nan)
        ax.plot(steps, v, marker="o" if v.size <= 20 else None, markersize=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("time" if dt is not None else "rollout step")
    if dt is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _outside_legend(ax)
    return _save(fig, path)


def read_epoch_records(train_log: str | Path) -> list[dict]:
    """The ``"kind": "epoch"`` records of a train_log.jsonl, in order; malformed lines (a half-written last
    line) are skipped. A missing file is an error."""
    train_log = Path(train_log)
    if not train_log.is_file():
        raise UPSError(f"training log {train_log} not found (train a run first, or pass the run's train_log.jsonl)")
    records = []
    for line in train_log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("kind", "epoch") == "epoch":
            records.append(rec)
    return records


def _flatten(rec: dict) -> dict:
    """Lift one level of nested dicts (the trainer's ``"components": {"loss_forward": ...}``, a ``"val": {...}``
    block) to the top: inner keys that already start with ``loss``/``val_`` are kept, others are prefixed."""
    out = {k: v for k, v in rec.items() if not isinstance(v, dict)}
    for key, inner in rec.items():
        if isinstance(inner, dict):
            for k, v in inner.items():
                out.setdefault(k if k.startswith(("loss", "val_")) else f"{key}_{k}", v)
    return out


def _numeric_series(records: list[dict], keep) -> dict[str, list[float]]:
    """{field: value per record (NaN where missing)} for numeric fields whose name passes ``keep``."""
    records = [_flatten(r) for r in records]
    names: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if keep(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and k not in names:
                names.append(k)
    return {k: [float(r[k]) if isinstance(r.get(k), (int, float)) else math.nan for r in records] for k in names}


def training_series(records: list[dict]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """({loss field: per-epoch values}, {val_ field: per-epoch values}) of epoch records, NaN where missing."""
    return (_numeric_series(records, lambda k: k.startswith("loss")),
            _numeric_series(records, lambda k: k.startswith("val_")))


def _by_stage(records: list[dict]) -> dict[str, list[dict]]:
    """Epoch records grouped by stage, stages in the order they ran."""
    out: dict[str, list[dict]] = {}
    for rec in records:
        out.setdefault(str(rec.get("stage") or "training"), []).append(rec)
    return out


def _outside_legend(ax) -> None:
    """The legend to the right of the axes, where it cannot cover a line."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _draw_series(ax, series: dict[str, list[float]], title: str) -> None:
    xs = np.arange(1, len(next(iter(series.values()), [])) + 1)
    for name, values in series.items():
        v = np.asarray(values, dtype=np.float64)
        v = np.where(np.isfinite(v) & (v > 0), v, np.nan)
        if np.isfinite(v).any():  # a field this stage never logged gets no legend entry
            ax.plot(xs, v, marker="o" if xs.size <= 30 else None, markersize=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    _outside_legend(ax)


def training_figure(records: list[dict], *, title: str = "training", source: str = "the log") -> Figure:
    """Loss components (fields ``loss*``) and validation metrics (fields ``val_*``) of epoch records: one row
    of two panels per stage (each stage its own scales), legends beside the panels. ``val_metric`` is left
    out where it only repeats a named metric. With no records the figure says so."""
    stages = _by_stage(records)
    fig = Figure(figsize=(12, 3.2 * max(1, len(stages))), layout="constrained")
    if not stages:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, f"no epoch records in {source}", ha="center", va="center")
    for row, (stage, recs) in enumerate(stages.items()):
        losses, vals = training_series(recs)
        if any(k != "val_metric" and v == vals.get("val_metric") for k, v in vals.items()):
            del vals["val_metric"]  # an alias of the stage's metric: its line would hide the named one
        _draw_series(fig.add_subplot(len(stages), 2, 2 * row + 1), losses, f"{stage}: training losses")
        _draw_series(fig.add_subplot(len(stages), 2, 2 * row + 2), vals, f"{stage}: validation metrics")
    fig.suptitle(title)
    return fig


def plot_training_curves(train_log: str | Path, path: str | Path, *, title: str = "training") -> Path:
    """:func:`training_figure` of a train_log.jsonl's epoch records, as a PNG. Missing fields leave gaps;
    with no epoch records the figure says so instead of failing, so a report can still be written."""
    return _save(training_figure(read_epoch_records(train_log), title=title, source=Path(train_log).name), path)


def evaluation_plots(out_dir: str | Path, *, pred, true, curves: Mapping[str, Sequence[float]], samples: int = 3,
                     channel: int = 0, x: Sequence[float] | None = None, t: Sequence[float] | None = None,
                     dt: float | None = None) -> dict[str, Path]:
    """The standard plots of one evaluation, as {caption: PNG path} ready for :func:`ups.eval.report.write_report`.

    pred, true: [B, T, X, C] de-normalised rollouts (space-time images of ``channel`` for the first
    ``samples`` samples; for [B, T, X, Y, C] snapshots and a GIF per sample (:func:`plot_snapshots_2d`,
    :func:`animate_2d`);
    skipped for 3D fields); curves: {name: nRMSE per step} (model, persistence,
    peers) -> ``nrmse_per_step.png``. x: [X], t: [T] coordinates for the image axes.
    """
    out_dir = Path(out_dir)
    plots: dict[str, Path] = {}
    if curves:
        plots["nRMSE per rollout step"] = plot_error_curves(curves, out_dir / "nrmse_per_step.png", dt=dt)
    if getattr(true, "ndim", 0) == 4:
        for i in range(min(samples, true.shape[0])):
            plots[f"sample {i}: truth, prediction, error"] = plot_spacetime(
                true[i, ..., channel], pred[i, ..., channel], out_dir / f"spacetime_{i}.png",
                title=f"test sample {i}", x=x, t=t)
    elif getattr(true, "ndim", 0) == 5:  # 2D: snapshots at a few times and an animation per sample
        for i in range(min(samples, true.shape[0])):
            y, p = true[i, ..., channel], pred[i, ..., channel]
            plots[f"sample {i}: truth, prediction, error snapshots"] = plot_snapshots_2d(
                y, p, out_dir / f"snapshots_{i}.png", times=t, title=f"test sample {i}")
            plots[f"sample {i}: animation"] = animate_2d(y, p, out_dir / f"animation_{i}.gif",
                                                         title=f"sample {i}")
    return plots


# ------------------------------------------------------------------------------------------ 2D
def _pair(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    y, p = _as_array(truth, "truth", dims=2), _as_array(pred, "prediction", dims=2)
    if y.shape != p.shape:
        raise UPSError(f"truth {y.shape} and prediction {p.shape} differ in shape")
    return y, p


def snapshot_frames(n_frames: int, count: int = 4) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame (distinct, sorted)."""
    count = min(count, n_frames)
    return sorted({round(i * (n_frames - 1) / max(1, count - 1)) for i in range(count)})


def plot_snapshots_2d(truth, pred, path: str | Path, *, frames: Sequence[int] | None = None,
                      times: Sequence[float] | None = None, title: str = "") -> Path:
    """Rows truth / prediction / error, one column per frame in ``frames`` (default 4 spread frames).

    truth, pred: [T, X, Y] (or [T, X, Y, 1]); times: [T] labels (default the frame index).
    """
    y, p = _pair(truth, pred)
    frames = list(frames) if frames is not None else snapshot_frames(y.shape[0])
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    emax = float(np.abs(p - y).max()) or 1.0
    fig = Figure(figsize=(2.6 * len(frames) + 0.8, 7.2))
    axes = fig.subplots(3, len(frames), squeeze=False)
    for col, f in enumerate(frames):
        label = f"t = {times[f]:.3g}" if times is not None else f"step {f}"
        for row, (img, kw) in enumerate(((y[f], {"vmin": lo, "vmax": hi, "cmap": "RdBu_r"}),
                                         (p[f], {"vmin": lo, "vmax": hi, "cmap": "RdBu_r"}),
                                         (p[f] - y[f], {"vmin": -emax, "vmax": emax, "cmap": "coolwarm"}))):
            ax = axes[row, col]
            im = ax.imshow(img.T, origin="lower", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(("truth", "prediction", "error")[row])
            if col == len(frames) - 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def animate_2d(truth, pred, path: str | Path, *, fps: int = 5, title: str = "") -> Path:
    """An animated GIF: truth, prediction and error side by side, one frame per rollout step.

    truth, pred: [T, X, Y] (or [T, X, Y, 1]). Written atomically.
    """
    y, p = _pair(truth, pred)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    emax = float(np.abs(p - y).max()) or 1.0
    field_kw = {"vmin": lo, "vmax": hi, "cmap": "RdBu_r"}
    fig = Figure(figsize=(9.0, 3.2))
    axes = fig.subplots(1, 3)
    images = []
    for ax, img, kw, name in zip(axes, (y[0], p[0], p[0] - y[0]),
                                 (field_kw, field_kw, {"vmin": -emax, "vmax": emax, "cmap": "coolwarm"}),
                                 ("truth", "prediction", "error")):
        images.append(ax.imshow(img.T, origin="lower", **kw))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    heading = fig.suptitle(f"{title} step 0".strip())

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(60)
    pictures = []
    for f in range(y.shape[0]):
        for im, img in zip(images, (y[f], p[f], p[f] - y[f])):
            im.set_data(img.T)
        heading.set_text(f"{title} step {f}".strip())
        canvas.draw()
        pictures.append(Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("P"))

    def write(tmp: Path) -> None:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                         duration=int(1000 / fps), loop=0)

    path = Path(path)
    atomic_write_with(path, write)
    return path
