"""2D evaluation plots: snapshot PNG and animated GIF per sample, embedded in the report."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from ups.errors import UPSError
from ups.eval.plots import evaluation_plots
from ups.eval.plots2d import animate_2d, plot_snapshots_2d, snapshot_frames


def _fields(t: int = 5, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.arange(n, dtype=torch.float64) / n
    x, y = torch.meshgrid(g, g, indexing="ij")
    true = torch.stack([torch.sin(2 * math.pi * (x + 0.1 * k)) * torch.cos(2 * math.pi * y) for k in range(t)])
    return true, true + 0.05 * torch.cos(4 * math.pi * x)


def test_snapshot_frames_spread_from_first_to_last():
    assert snapshot_frames(40, 4) == [0, 13, 26, 39] and snapshot_frames(2, 4) == [0, 1]


def test_snapshots_and_animation_files(tmp_path):
    true, pred = _fields()
    png = plot_snapshots_2d(true, pred, tmp_path / "s.png", times=[0.0, 1.0, 2.0, 3.0, 4.0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gif = animate_2d(true.unsqueeze(-1), pred.unsqueeze(-1), tmp_path / "a.gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5
    with pytest.raises(UPSError, match="one 2D sample"):
        plot_snapshots_2d(true[0], pred[0], tmp_path / "bad.png")


def test_evaluation_plots_make_2d_figures_per_sample(tmp_path):
    true, pred = _fields()
    batch_t, batch_p = true[None, ..., None].repeat(2, 1, 1, 1, 1), pred[None, ..., None].repeat(2, 1, 1, 1, 1)
    plots = evaluation_plots(tmp_path, pred=batch_p, true=batch_t, curves={"model": [0.1] * 5}, samples=2)
    assert {p.name for p in plots.values()} == {"nrmse_per_step.png", "snapshots_0.png", "snapshots_1.png",
                                                "animation_0.gif", "animation_1.gif"}
    from ups.eval.report import _embed

    assert 'src="data:image/gif;base64,' in _embed("animation", plots["sample 0: animation"])
