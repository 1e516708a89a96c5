"""Saving matplotlib figures (the one PNG writer of ``ups.eval.plots`` and ``ups.eval.plots2d``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ups.io_utils import atomic_write_with


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` as PNG to ``path`` atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
