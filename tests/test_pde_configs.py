"""The shipped per-PDE quick configs end to end on tiny data: generate (per-split frames), open, metadata,
build the configured model and the 2D peers, one step on a batch."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch

from ups.config import load_config
from ups.data.datasets import WindowDataset, collate
from ups.data.prepare import prepare_data
from ups.models import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"train": 2, "val": 1, "test": 1}


def _tiny(name: str, tmp: Path, extra: list[str] = ()):
    samples = "{" + ", ".join(f"{k}: {v}" for k, v in TINY.items()) + "}"
    files = [f"data.{s}={tmp / s}.h5" for s in ("train", "val", "test")]
    return load_config(CONFIGS / f"{name}.yaml", [*files, f"data.generate.samples={samples}", *extra])


def _one_step(exp, meta, bundle) -> torch.Tensor:
    model = MODELS.get(exp.model.name).from_config(meta, exp.model.params)
    ds = WindowDataset(bundle.splits["train"], window=2, normalizer=None, spatial_stride=exp.data.spatial_stride,
                       temporal_stride=exp.data.temporal_stride)
    batch = collate([ds[0], ds[len(ds) - 1]])
    b, d = batch["u"].shape[0], meta.spatial_dims
    u = batch["u"][:, 0].reshape(b, -1, meta.n_channels)
    coords = batch["coords"].reshape(b, -1, d)
    step = model.predict_next if hasattr(model, "predict_next") else model
    out = step(u, coords, batch["params"], batch["dt"])
    assert out.shape == u.shape and torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("name,dims,params", [("ks1d_quick", 1, ("length",)),
                                              ("diffusion_reaction1d_quick", 1, ("nu", "rho")),
                                              ("ns2d_quick", 2, ("nu",))])
def test_quick_config_generates_and_runs(name, dims, params, tmp_path):
    extra = {"ks1d_quick": ["data.generate.frames={train: 11, val: 11, test: 21}"],
             "ns2d_quick": ["data.generate.frames=4", "data.generate.t_end=3.0"]}.get(name, [])
    exp = _tiny(name, tmp_path, extra)
    bundle = prepare_data(exp.data, progress=False)
    meta = bundle.meta
    assert meta.spatial_dims == dims and meta.param_names == params and meta.pde == exp.data.pde
    _one_step(exp, meta, bundle)
    if name == "ks1d_quick":  # per-split frame counts at the fixed frame interval 0.2
        with h5py.File(tmp_path / "train.h5") as f, h5py.File(tmp_path / "test.h5") as g:
            assert f["tensor"].shape == (2, 11, 256) and g["tensor"].shape == (1, 21, 256)
            assert f.attrs["dt"] == pytest.approx(0.2) and g.attrs["t_end"] == pytest.approx(4.0)
    if dims == 2:  # the 2D peers on the same data
        for peer in ("fno_ns2d", "unet2d_ns2d"):
            peer_exp = load_config(CONFIGS / f"{peer}.yaml", [f"data.{s}={tmp_path / s}.h5" for s in TINY])
            _one_step(peer_exp, meta, bundle)


def test_ns2d_train_eval_infer_end_to_end(tmp_path):
    """UPT on 2D Navier-Stokes through the CLI: train a few steps, evaluate (2D metrics, snapshots, GIF),
    infer on the input grid in the 2D layout."""
    import json

    import numpy as np

    from ups.cli import main
    from ups.data.reader import TrajectoryFile

    files = [f"data.{s}={tmp_path / 'data' / s}.h5" for s in ("train", "val", "test")]
    over = [*files, "data.generate={params: {nu: 0.001}, resolution: 16, frames: 6, t_end: 5.0, "
            "samples: {train: 4, val: 2, test: 2}, seeds: {train: 1, val: 2, test: 3}, "
            "solver: {ic_resolution: 64}}",
            "model.params={latent_dim: 8, num_supernodes: 16, heads: 2, operator_depth: 1, kernel_hidden: 8, "
            "decoder_hidden: 8}", "training.epochs=1", "training.max_steps=3", "training.progress=none",
            "eval.rollout_start=1", "eval.plot_samples=1", f"run.out_dir={tmp_path / 'runs'}"]
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "ns2d_quick.yaml"), *over, "--stage", "operator", "--run-dir", str(run)]) == 0
    assert main(["eval", str(run)]) == 0
    metrics = json.loads((run / "eval_test.json").read_text())["metrics"]
    assert {"rel_l2_full", "rel_l2_step", "frmse_low", "brmse", "high_corr"} <= set(metrics)
    assert metrics["steps"] == 4 and metrics["high_corr"]["0.8"]["time"] is not None
    assert (run / "plots" / "snapshots_0.png").is_file() and (run / "plots" / "animation_0.gif").is_file()
    out = tmp_path / "pred.h5"
    assert main(["infer", str(run), "--input", str(tmp_path / "data" / "test.h5"), "--steps", "2",
                 "--out", str(out)]) == 0
    pred, src = TrajectoryFile(out), TrajectoryFile(tmp_path / "data" / "test.h5")
    assert pred.shape == (2, 3, 16, 16, 1) and pred.spatial_dims == 2
    np.testing.assert_allclose(pred.read(0, [0]), src.read(0, [0]), rtol=1e-5, atol=1e-6)  # frame 0 = input
