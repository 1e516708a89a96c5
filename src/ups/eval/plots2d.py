"""Plots of 2D rollouts: truth / prediction / error snapshots at a few times (PNG) and an animated GIF.

Both take one sample's fields ``[T, X, Y]`` (or ``[T, X, Y, 1]``); x runs down the first axis and is
drawn horizontally (images are transposed, origin at the lower left). Truth and prediction share one
colour scale; the error has its own symmetric scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ups.errors import UPSError
from ups.eval.figures import save_figure
from ups.io_utils import atomic_write_with


def _as_fields(x, name: str) -> np.ndarray:
    """One sample as float64 ``[T, X, Y]``."""
    arr = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise UPSError(f"{name} must be one 2D sample [T, X, Y] (or [T, X, Y, 1]), got shape {tuple(arr.shape)}")
    return arr


def _pair(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    y, p = _as_fields(truth, "truth"), _as_fields(pred, "prediction")
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
    return save_figure(fig, path)


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
