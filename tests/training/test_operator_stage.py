"""The operator stage on the shared trainer: gradients everywhere, curriculum in the health log,
validation on physical rollouts, checkpoints a Simulator can rebuild."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ups.config import load_config
from ups.data.prepare import fit_normalizer, prepare_data, stage_loaders
from ups.rollout import flatten_points
from ups.training.curriculum import inverse_loss_weight
from ups.training.runs import JsonlLog
from ups.training.stage import STAGES
from ups.training.stages.operator import (
    OperatorStageConfig,
    balanced_weights,
    relative_mse,
    spectral_error,
    unroll_length,
)
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


def build(tmp_path, model: dict | None = None, **stage):
    files = {s: write_ups_file(tmp_path / f"{s}.h5", travelling_waves(n, seed), t_end=0.8)
             for s, n, seed in (("train", 6, 1), ("val", 2, 2))}
    overrides = [f"data.train={files['train']}", f"data.val={files['val']}", "data.spatial_stride=2",
                 "data.batch_size=4", "training.epochs=3", "training.progress=none", "training.health_every=1",
                 "training.ema_decay=null", f"model.params={ {**MODEL, **(model or {})} }", "training.lr=3e-3"]
    exp = load_config(None, overrides + [f"stages.operator.{k}={v}" for k, v in stage.items()])
    bundle = prepare_data(exp.data, splits=("train", "val"), generate=False)
    norm = fit_normalizer(bundle)
    stage_cls = STAGES.get("operator")
    stage_cfg = stage_cls.stage_config(exp)
    st = stage_cls.build(stage_cfg=stage_cfg, exp=exp, meta=bundle.meta, normalizer=norm, run_dir=tmp_path / "run")
    train_loader, val_loader = stage_loaders(bundle, exp, normalizer=norm, seed=0,
                                             train_window=st.training_window(),
                                             val_window=stage_cls.val_window(stage_cfg))
    return exp, st, train_loader, val_loader


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
    exp, st, train, val = build(tmp_path, inverse_loss_warmup_epochs=1, inverse_loss_base=0.2,
                                inverse_loss_max_weight=0.15, rollout_steps=2, rollout_ramp_steps=3)
    run = tmp_path / "run"
    summary = Trainer(stage=st, config=exp.stage_training("operator"), run_dir=run).fit(train, val)
    records = JsonlLog.read(run / "train_log.jsonl")
    health = [r for r in records if r.get("kind") == "health"]
    assert health
    for r in health:
        expected = inverse_loss_weight(r["epoch"], base=0.2, warmup=1, max_weight=0.15)
        assert math.isclose(r["components"]["w_curriculum"], expected, abs_tol=1e-9), r
        if expected > 0:  # computed, balanced: at most the curriculum weight, the ratio under the cap (0.1)
            assert 0 < r["components"]["w_inv_enc"] <= expected + 1e-12
        else:  # weight 0: the inverse losses are not computed at all
            assert "loss_inv_enc" not in r["components"] and "w_inv_enc" not in r["components"]
    assert {r["epoch"] for r in health} == {0, 1, 2}
    epochs = [r for r in records if r.get("kind") == "epoch"]
    assert all(0 < r["val_rollout_nrmse"] < 10 and r["val_metric"] == r["val_rollout_nrmse"] for r in epochs)
    assert summary["best_metric"] == min(r["val_rollout_nrmse"] for r in epochs)
    assert (run / "checkpoints" / "operator_best.safetensors").is_file()


def test_bundled_operator_trains_on_k_steps_of_f_frames(tmp_path):
    _, st, loader, _ = build(tmp_path, model={"frames_per_step": 3}, rollout_steps=2, rollout_ramp_steps=0,
                             random_shift=False, inverse_loss_warmup_epochs=0)
    assert st.training_window() == 2 * 3 + 1
    batch = next(iter(loader))
    assert batch["u"].shape[1] == 7
    out = st.loss(batch, epoch=0, step=0)
    u, x = flatten_points(batch["u"], batch["coords"])  # [B, 7, N, C], [B, N, d]
    model, p, dt = st.model, batch["params"], batch["dt"]
    with torch.no_grad():  # one step gives frames 1-3 (the forward loss); the next, from frame 3 re-encoded, 4-6
        first = model.decode_frames(model.step(model.encode(u[:, 0], x), p, dt), x, u[:, 0])
        second = model.decode_frames(model.step(model.encode(first[:, -1], x), p, dt), x, first[:, -1])
    assert math.isclose(float(out["loss_forward"].detach()), float(F.mse_loss(first, u[:, 1:4])), rel_tol=1e-5)
    assert math.isclose(float(out["loss_rollout"].detach()), float(F.mse_loss(second, u[:, 4:7])), rel_tol=1e-5)
    out["loss"].backward()
    assert float(model.head.fc2.weight.grad.abs().amax(dim=1).min()) > 0  # every frame's output row is trained


def test_unroll_curriculum_and_spectral_error():
    stage_cfg = OperatorStageConfig(rollout_steps=4, rollout_ramp_steps=30)
    assert [unroll_length(stage_cfg, s) for s in (0, 9, 10, 20, 30, 1000)] == [1, 1, 2, 3, 4, 4]
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


def test_zero_weight_terms_are_not_computed_and_inverse_losses_follow_their_frequency(tmp_path):
    _, st, loader, _ = build(tmp_path, inverse_loss_warmup_epochs=1, inverse_loss_frequency=3, rollout_steps=2,
                             rollout_ramp_steps=0, lambda_spectral=0.0)
    batch = next(iter(loader))
    early = st.loss(batch, epoch=0, step=0)  # curriculum weight 0 in the warm-up epoch
    assert "loss_spectral" not in early and not any(k.startswith(("loss_inv", "w_inv")) for k in early)
    assert float(early["w_curriculum"]) == 0.0
    for step, expected in ((3, True), (4, False), (5, False), (6, True)):
        out = st.loss(batch, epoch=5, step=step)
        assert ("loss_inv_enc" in out and "loss_inv_dec" in out) is expected, step
        total = out["loss_forward"] + out["loss_rollout"]
        if expected:
            total = total + out["w_inv_enc"] * out["loss_inv_enc"] + out["w_inv_dec"] * out["loss_inv_dec"]
        torch.testing.assert_close(out["loss"].double(), total.double().detach(), rtol=1e-5, atol=1e-9)


def test_inverse_decoding_loss_is_scale_free():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, 16, generator=gen), torch.randn(4, 8, 16, generator=gen)
    torch.testing.assert_close(relative_mse(1000.0 * a, 1000.0 * b), relative_mse(a, b), rtol=1e-4, atol=0)
    # a prediction equal to the target's mean scores ~1 (the target's variance, relative to itself)
    assert math.isclose(float(relative_mse(torch.full_like(b, float(b.mean())), b)), 1.0, rel_tol=0.01)


def test_balanced_weights_cap_the_inverse_forward_ratio():
    fwd = torch.tensor(0.01)
    terms = {"enc": (0.5, torch.tensor(0.1)), "dec": (0.5, torch.tensor(0.3))}  # weighted sum 0.2 = 20 x forward
    w = balanced_weights(fwd, terms, 0.1)  # scaled by 0.1 * 0.01 / 0.2 = 0.005
    assert math.isclose(w["enc"], 0.0025, rel_tol=1e-6) and math.isclose(w["dec"], 0.0025, rel_tol=1e-6)
    assert math.isclose(sum(w[k] * float(v) for k, (_, v) in terms.items()) / 0.01, 0.1, rel_tol=1e-6)
    unc = balanced_weights(fwd, terms, None)
    assert math.isclose(unc["enc"], 0.5) and math.isclose(unc["dec"], 0.5)
    small = {"enc": (0.001, torch.tensor(0.1))}  # 1e-4 = 0.01 x forward: under the cap, unchanged
    assert math.isclose(balanced_weights(fwd, small, 0.1)["enc"], 0.001)


def test_shared_shift_lands_translated_grids_on_one_point_set():
    """``shared_shift``: each sample is still translated (mod the period) by its own uniform shift, but samples whose
    points are translates of each other (strided grids at different sub-cell offsets) land on the same points, so
    the model computes its geometry once for the batch; point sets that are not translates keep independent shifts."""
    from ups.models.layers import shared_rows
    from ups.training.stages.operator import random_translation

    domain = torch.tensor([[0.0, 1.0]])
    grids = ((torch.arange(64) * 4 + torch.tensor([0, 1, 2, 3]).view(4, 1)) / 256.0).unsqueeze(-1)  # [4, 64, 1]
    out = random_translation(grids, domain, torch.Generator().manual_seed(1), shared=True)
    assert shared_rows(out)[0].shape == (1, 64, 1)
    moved = torch.remainder(out - grids, 1.0)  # each sample's translation, the same at every point
    assert torch.allclose(moved, moved[:, :1].expand_as(moved), atol=1e-6)
    assert len({round(float(m), 5) for m in moved[:, 0, 0]}) == 4  # four different shifts
    clouds = torch.rand(3, 64, 1, generator=torch.Generator().manual_seed(2))
    out = random_translation(clouds, domain, torch.Generator().manual_seed(1), shared=True)
    assert shared_rows(out)[0].shape == (3, 64, 1)
    moved = torch.remainder(out - clouds, 1.0)
    assert torch.allclose(moved, moved[:, :1].expand_as(moved), atol=1e-6)
