"""The grid peers trained end to end by the one trainer: data files -> loaders -> Trainer -> checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers import write_ups_file

from ups.checkpoint import load_checkpoint, read_checkpoint_meta
from ups.config import ExperimentConfig
from ups.data.datasets import WindowDataset, build_metadata, make_loader
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.data.reader import open_split
from ups.models import MODELS
from ups.training.stages.baseline import BaselineStage
from ups.training.trainer import Trainer


def _advection(n: int, seed: int, points: int = 32, frames: int = 9) -> np.ndarray:
    """u(x, t) = a sin(2 pi (x - 0.5 t) + phi) on cell centres, t in [0, 0.8]: [n, frames, points]."""
    rng = np.random.default_rng(seed)
    x = (np.arange(points) + 0.5) / points
    t = np.linspace(0.0, 0.8, frames)
    a, phi = rng.uniform(0.5, 1.5, (n, 1, 1)), rng.uniform(0, 2 * np.pi, (n, 1, 1))
    return a * np.sin(2 * np.pi * (x[None, None] - 0.5 * t[None, :, None]) + phi)



@pytest.mark.slow
def test_unet_learns_advection_and_its_best_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    for split, n, seed in (("train", 24, 1), ("val", 6, 2)):
        write_ups_file(tmp_path / f"{split}.hdf5", _advection(n, seed), t_end=0.8)
    exp = ExperimentConfig(
        data={"train": str(tmp_path / "train.hdf5"), "val": str(tmp_path / "val.hdf5"), "batch_size": 8,
              "random_offset": False},
        model={"name": "unet1d", "params": {"width": 8, "depth": 2}},
        training={"epochs": 12, "lr": 3e-3, "progress": "none", "ema_decay": None, "warmup_steps": 0},
        stages={"baseline": {"unroll_steps": 2}},
    )
    train = open_split(exp.data, "train")
    meta, norm = build_metadata(train, exp.data), Normalizer.fit(train)
    stage = BaselineStage.from_experiment(exp, meta=meta, normalizer=norm, run_dir=tmp_path / "run")
    train_ds = WindowDataset(train, window=BaselineStage.train_window(stage.stage_cfg), normalizer=norm)
    val_ds = WindowDataset(open_split(exp.data, "val"), window=None, normalizer=norm)
    val_loader = make_loader(val_ds, batch_size=6, shuffle=False, seed=0)
    before = stage.validate(val_loader)["val_rollout_nrmse"]
    summary = Trainer(stage=stage, config=exp.stage_training("baseline"), run_dir=tmp_path / "run").fit(
        make_loader(train_ds, batch_size=8, shuffle=True, seed=0), val_loader)
    # persistence scores about 0.9 on this rollout; a model that learned the advection does far better
    assert before > 0.3 and summary["best_metric"] < 0.3 * before
    stem = tmp_path / "run" / "checkpoints" / "baseline_best"
    info = read_checkpoint_meta(stem)
    assert info["model"] == "unet1d" and info["val_metric"] == pytest.approx(summary["best_metric"])
    fresh = MODELS.get(info["model"]).from_config(DatasetMetadata.from_dict(info["data_meta"]), info["model_params"])
    load_checkpoint(stem, {"model": fresh})
    again = BaselineStage(model=fresh, stage_cfg=stage.stage_cfg, normalizer=Normalizer.from_dict(info["normalizer"])
                          ).validate(val_loader)
    assert again["val_rollout_nrmse"] == pytest.approx(summary["best_metric"], rel=1e-5)
