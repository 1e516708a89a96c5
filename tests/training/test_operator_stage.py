"""The operator stage on the shared trainer: gradients everywhere, curriculum in the health log,
validation on physical rollouts, checkpoints a Simulator can rebuild."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ups.config import load_config
from ups.data.prepare import fit_normalizer, prepare_data, stage_loaders
from ups.training.curriculum import inverse_loss_weight
from ups.training.runs import JsonlLog
from ups.training.stage import STAGES
from ups.training.stages.operator import OperatorStageConfig, spectral_error, unroll_length
from ups.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py
from helpers import write_ups_file  # noqa: E402

MODEL = {"latent_dim": 16, "num_supernodes": 8, "heads": 2, "operator_depth": 1, "kernel_hidden": 8,
         "decoder_hidden": 16}


def travelling_waves(n: int, seed: int) -> np.ndarray:
    """Advected sines with random amplitude, phase and mean: [n, 9, 32] on 32 cells, t in [0, 0.8]."""
    rng = np.random.default_rng(seed)
    x = (np.arange(32) + 0.5) / 32
    t = np.linspace(0.0, 0.8, 9)
    amp, phase, mean = rng.uniform(0.5, 1.5, (3, n, 1, 1))
    return (mean + amp * np.sin(2 * np.pi * (x - 0.3 * t[:, None]) + 6 * phase)).astype(np.float32)


def build(tmp_path, **stage):
    files = {s: write_ups_file(tmp_path / f"{s}.h5", travelling_waves(n, seed), t_end=0.8)
             for s, n, seed in (("train", 6, 1), ("val", 2, 2))}
    overrides = [f"data.train={files['train']}", f"data.val={files['val']}", "data.spatial_stride=2",
                 "data.batch_size=4", "training.epochs=3", "training.progress=none", "training.health_every=1",
                 "training.ema_decay=null", f"model.params={MODEL}", "training.lr=3e-3"]
    cfg = load_config(None, overrides + [f"stages.operator.{k}={v}" for k, v in stage.items()])
    bundle = prepare_data(cfg.data, splits=("train", "val"), generate=False)
    norm = fit_normalizer(bundle)
    stage_cls = STAGES.get("operator")
    st = stage_cls.build(cfg=cfg, meta=bundle.meta, normalizer=norm, run_dir=tmp_path / "run")
    train_loader, val_loader = stage_loaders(bundle, cfg, normalizer=norm, train_window=stage_cls.train_window(cfg),
                                             val_window=stage_cls.val_window(cfg), seed=0)
    return cfg, st, train_loader, val_loader


def test_every_parameter_gets_a_gradient(tmp_path):
    _, st, loader, _ = build(tmp_path, inverse_loss_warmup_epochs=0, rollout_steps=2, rollout_ramp_steps=0,
                             lambda_spectral=0.1, input_noise=0.01)
    model = st.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(loader))
    for _ in range(3):  # adaLN-Zero gates start at zero: one step opens them, then everything is reached
        out = st.loss(batch, epoch=0, step=0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(out["w_inv_enc"]) > 0 and float(out["w_inv_dec"]) > 0
    for key in ("loss_forward", "loss_inv_enc", "loss_inv_dec", "loss_rollout", "loss_spectral"):
        assert torch.isfinite(out[key]) and float(out[key].detach()) > 0, key
    names = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
             or float(p.grad.abs().max()) == 0.0]
    assert names == []
    prefixes = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"pool", "encoder_blocks", "operator_blocks", "cond_embed", "dec_value", "head"} <= prefixes


def test_trainer_run_logs_curriculum_and_validates_rollouts(tmp_path):
    cfg, st, train, val = build(tmp_path, inverse_loss_warmup_epochs=1, inverse_loss_base=0.2,
                                inverse_loss_max_weight=0.15, rollout_steps=2, rollout_ramp_steps=3)
    run = tmp_path / "run"
    summary = Trainer(stage=st, config=cfg.stage_training("operator"), run_dir=run).fit(train, val)
    records = JsonlLog.read(run / "train_log.jsonl")
    health = [r for r in records if r.get("kind") == "health"]
    assert health
    for r in health:
        expected = inverse_loss_weight(r["epoch"], base=0.2, warmup=1, max_weight=0.15)
        assert math.isclose(r["components"]["w_inv_enc"], expected, abs_tol=1e-9), r
    assert {r["epoch"] for r in health} == {0, 1, 2}
    epochs = [r for r in records if r.get("kind") == "epoch"]
    assert all(0 < r["val_rollout_nrmse"] < 10 and r["val_metric"] == r["val_rollout_nrmse"] for r in epochs)
    assert summary["best_metric"] == min(r["val_rollout_nrmse"] for r in epochs)
    assert (run / "checkpoints" / "operator_best.safetensors").is_file()


def test_unroll_curriculum_and_spectral_error():
    cfg = OperatorStageConfig(rollout_steps=4, rollout_ramp_steps=30)
    assert [unroll_length(cfg, s) for s in (0, 9, 10, 20, 30, 1000)] == [1, 1, 2, 3, 4, 4]
    assert unroll_length(OperatorStageConfig(rollout_steps=3, rollout_ramp_steps=0), 0) == 3
    x = torch.linspace(0, 1, 65)[:-1]
    true = torch.sin(2 * torch.pi * x).reshape(1, 1, 64, 1)
    assert float(spectral_error(true, true, (64,))) == 0.0
    # doubling the amplitude quadruples the energy: relative error 3
    assert math.isclose(float(spectral_error(2 * true, true, (64,))), 3.0, rel_tol=1e-5)


def test_stage_config_rejects_unknown_keys():
    from ups.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.operator.rollout_stepz"):
        load_config(None, ["stages.operator.rollout_stepz=3"])
