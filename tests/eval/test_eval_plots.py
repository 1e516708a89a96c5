"""Plots: valid PNGs written atomically, tolerant training-log parsing, clear errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ups.errors import UPSError
from ups.eval.plots import (
    evaluation_plots,
    plot_error_curves,
    plot_spacetime,
    plot_training_curves,
    read_epoch_records,
    training_series,
)


def _png_size(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def _no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


def test_spacetime_plot_is_a_png_and_accepts_tensors_and_channels(tmp_path):
    t = torch.linspace(0, 1, 20).reshape(-1, 1)
    x = torch.linspace(0, 1, 64).reshape(1, -1)
    truth = torch.sin(2 * math.pi * (x - t))
    out = plot_spacetime(truth, truth + 0.01, tmp_path / "sub" / "st.png", title="sample 0",
                         x=x.flatten().tolist(), t=t.flatten().tolist())
    w, h = _png_size(out)
    assert w > 2 * h  # three panels side by side
    plot_spacetime(truth.unsqueeze(-1).numpy(), truth.unsqueeze(-1).numpy(), tmp_path / "st1.png")
    assert _no_temp_files(tmp_path)


def test_spacetime_plot_survives_non_finite_predictions(tmp_path):
    truth = np.random.default_rng(0).normal(size=(5, 16))
    pred = truth.copy()
    pred[3:] = np.nan  # a diverged rollout must still be shown, not crash the report
    _png_size(plot_spacetime(truth, pred, tmp_path / "nan.png"))


def test_spacetime_plot_rejects_bad_shapes(tmp_path):
    with pytest.raises(UPSError, match=r"one 1D sample \[T, X\]"):
        plot_spacetime(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), tmp_path / "x.png")
    with pytest.raises(UPSError, match="same"):
        plot_spacetime(np.zeros((2, 3)), np.zeros((2, 4)), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_error_curves_log_axis_with_zeros_and_nans(tmp_path):
    curves = {"model": [0.01, 0.02, 0.0, 0.05], "persistence": [0.1, 0.5, 1.0, float("nan")], "fno": [0.02] * 4}
    _png_size(plot_error_curves(curves, tmp_path / "curves.png", dt=0.05))
    with pytest.raises(UPSError, match="at least one curve"):
        plot_error_curves({}, tmp_path / "none.png")


def _write_log(path, lines):
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


def test_training_log_parsing_is_tolerant(tmp_path):
    log = _write_log(tmp_path / "train_log.jsonl", [
        {"kind": "config", "stage": "operator"},
        {"kind": "epoch", "stage": "operator", "epoch": 0, "loss": 1.0,
         "components": {"loss_forward": 0.8, "loss_inv_enc": 0.2}, "val_rollout_nrmse": 0.9},
        {"kind": "health", "stage": "operator", "loss": 5.0},
        {"kind": "epoch", "stage": "operator", "epoch": 1, "loss": 0.5, "loss_forward": 0.4,
         "val": {"rollout_nrmse": 0.6}},
        {"kind": "epoch", "stage": "corrector", "epoch": 0, "loss": None, "loss_corrector": 0.3},
        '{"kind": "epoch", "stage": "corr',  # half-written last line
    ])
    records = read_epoch_records(log)
    assert [r["stage"] for r in records] == ["operator", "operator", "corrector"]
    losses, vals = training_series(records)
    assert losses["loss"][:2] == [1.0, 0.5] and math.isnan(losses["loss"][2])
    assert losses["loss_forward"][:2] == [0.8, 0.4]  # exact: values read back from the JSON log
    # exact: values read back from the JSON log
    assert math.isnan(losses["loss_corrector"][0]) and losses["loss_corrector"][2] == 0.3
    assert vals["val_rollout_nrmse"][:2] == [0.9, 0.6]  # exact: values read back from the JSON log
    _png_size(plot_training_curves(log, tmp_path / "training.png"))


def test_training_curves_without_epochs_and_without_file(tmp_path):
    empty = _write_log(tmp_path / "empty.jsonl", [{"kind": "config"}])
    _png_size(plot_training_curves(empty, tmp_path / "t.png"))
    with pytest.raises(UPSError, match="training log .* not found"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "t2.png")


def test_evaluation_plots_for_a_report(tmp_path):
    true = torch.randn(4, 6, 16, 2)
    plots = evaluation_plots(tmp_path, pred=true + 0.1, true=true, curves={"model": [0.1] * 6}, samples=2)
    assert list(plots) == ["nRMSE per rollout step", "sample 0: truth, prediction, error",
                           "sample 1: truth, prediction, error"]
    for path in plots.values():
        _png_size(path)
    two_d = evaluation_plots(tmp_path / "2d", pred=torch.zeros(1, 2, 4, 4, 1), true=torch.zeros(1, 2, 4, 4, 1),
                             curves={"model": [0.1, 0.2]})
    assert list(two_d) == ["nRMSE per rollout step", "sample 0: truth, prediction, error snapshots",
                           "sample 0: animation"]  # 2D: snapshots and a GIF (ups.eval.plots2d)
    three_d = evaluation_plots(tmp_path / "3d", pred=torch.zeros(1, 2, 4, 4, 4, 1),
                               true=torch.zeros(1, 2, 4, 4, 4, 1), curves={"model": [0.1, 0.2]})
    assert list(three_d) == ["nRMSE per rollout step"]


def test_training_figure_one_row_per_stage_and_legends_beside_the_data():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ups.eval.plots import training_figure

    records = [{"kind": "epoch", "stage": "operator", "epoch": e, "loss": 1.0 / (e + 1), "loss_forward": 0.5,
                "val_metric": 0.9 / (e + 1), "val_rollout_nrmse": 0.9 / (e + 1)} for e in range(4)]
    records += [{"kind": "epoch", "stage": "diff_residual", "epoch": e, "loss_flow": 2.0 - e,
                 "val_metric": 0.7, "val_one_step_ratio": 0.8} for e in range(2)]
    fig = training_figure(records)
    FigureCanvasAgg(fig).draw()
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["operator: training losses", "operator: validation metrics",
                                             "diff_residual: training losses", "diff_residual: validation metrics"]
    labels = [[t.get_text() for t in a.get_legend().get_texts()] for a in axes]
    assert labels == [["loss", "loss_forward"], ["val_rollout_nrmse"], ["loss_flow"],
                      ["val_metric", "val_one_step_ratio"]]  # val_metric only where it is no alias
    renderer = fig.canvas.get_renderer()
    for ax in axes:  # every legend lies right of its panel's plotting area: it covers no line
        assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
