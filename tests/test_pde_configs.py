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


def _one_step(cfg, meta, bundle) -> torch.Tensor:
    model = MODELS.get(cfg.model.name).from_config(meta, cfg.model.params)
    ds = WindowDataset(bundle.splits["train"], window=2, normalizer=None, spatial_stride=cfg.data.spatial_stride,
                       temporal_stride=cfg.data.temporal_stride)
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
    cfg = _tiny(name, tmp_path, extra)
    bundle = prepare_data(cfg.data, progress=False)
    meta = bundle.meta
    assert meta.spatial_dims == dims and meta.param_names == params and meta.pde == cfg.data.pde
    _one_step(cfg, meta, bundle)
    if name == "ks1d_quick":  # per-split frame counts at the fixed frame interval 0.2
        with h5py.File(tmp_path / "train.h5") as f, h5py.File(tmp_path / "test.h5") as g:
            assert f["tensor"].shape == (2, 11, 256) and g["tensor"].shape == (1, 21, 256)
            assert f.attrs["dt"] == pytest.approx(0.2) and g.attrs["t_end"] == pytest.approx(4.0)
    if dims == 2:  # the 2D peers on the same data
        for peer in ("fno_ns2d", "unet2d_ns2d"):
            peer_cfg = load_config(CONFIGS / f"{peer}.yaml", [f"data.{s}={tmp_path / s}.h5" for s in TINY])
            _one_step(peer_cfg, meta, bundle)
