"""Stage ``baseline``: windows, rollout-aware losses and the physical-space rollout validation, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ups.config import ExperimentConfig
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.errors import ConfigError
from ups.models.persistence import Persistence
from ups.training.stage import STAGES
from ups.training.stages.baseline import BaselineStage, BaselineStageConfig


def _meta(points: int = 16) -> DatasetMetadata:
    return DatasetMetadata(pde="burgers1d", spatial_dims=1, spatial_shape=(points,), n_channels=1, n_frames=6,
                           dt=0.1, param_names=("nu",))


def _batch(values: list[float], batch: int = 2, points: int = 16) -> dict[str, torch.Tensor]:
    """Frames that are constant in space: frame k holds values[k]. u [B, W, X, 1]."""
    u = torch.tensor(values).reshape(1, -1, 1, 1).expand(batch, -1, points, 1).clone()
    return {"u": u, "coords": torch.linspace(0, 1, points).reshape(1, points, 1).expand(batch, -1, -1),
            "params": torch.full((batch, 1), 0.01), "dt": torch.full((batch,), 0.1),
            "sample": torch.arange(batch), "t0": torch.zeros(batch, dtype=torch.long)}


def _stage(**kw) -> BaselineStage:
    return BaselineStage(model=Persistence(), stage_cfg=BaselineStageConfig(**kw),
                         normalizer=Normalizer(mean=[1.0], std=[2.0]), model_name="persistence")


def test_registered_with_its_metric_and_windows():
    assert STAGES.get("baseline") is BaselineStage and BaselineStage.val_metric == "val_rollout_nrmse"
    exp = ExperimentConfig(model={"name": "persistence"},
                           stages={"baseline": {"unroll_steps": 3, "pushforward_steps": 2}})
    stage_cfg = BaselineStage.stage_config(exp)
    assert BaselineStage.train_window(stage_cfg) == 6 and BaselineStage.val_window(stage_cfg) is None
    assert BaselineStage.train_window(BaselineStage.stage_config(ExperimentConfig(model={"name": "persistence"}))) == 2
    with pytest.raises(ConfigError, match="stages.baseline.unroll_steps"):
        ExperimentConfig(model={"name": "persistence"}, stages={"baseline": {"unroll_steps": 0}})


def test_losses_by_hand_with_persistence():
    # persistence keeps frame 0 (value 0); trained steps compare it with frames 2 and 3 after 1 pushforward
    out = _stage(unroll_steps=2, pushforward_steps=1).loss(_batch([0.0, 1.0, 2.0, 3.0]), epoch=0, step=0)
    assert out["loss_forward"].item() == pytest.approx(4.0)
    assert out["loss_rollout"].item() == pytest.approx(9.0)
    assert out["loss"].item() == pytest.approx(6.5)
    one = _stage().loss(_batch([0.0, 1.0]), epoch=0, step=0)
    assert set(one) == {"loss", "loss_forward"} and one["loss"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="windows of 4 frames"):
        _stage(unroll_steps=3).loss(_batch([0.0, 1.0, 2.0]), epoch=0, step=0)


def test_input_noise_perturbs_the_input():
    torch.manual_seed(0)
    out = _stage(input_noise=0.5).loss(_batch([0.0, 0.0], points=4096), epoch=0, step=0)
    assert out["loss"].item() == pytest.approx(0.25, rel=0.1)  # E[(0.5 z)^2]


def test_validation_is_a_physical_space_rollout_by_hand():
    # normalised frames 0, 1, 3 -> physical (x * 2 + 1): 1, 3, 7; persistence predicts 1 every step
    stage = _stage()
    metrics = stage.validate([_batch([0.0, 1.0, 3.0], batch=3)])
    rollout = ((3 - 1) / 3 + (7 - 1) / 7) / 2
    one_step = ((3 - 1) / 3 + (7 - 3) / 7) / 2
    assert metrics["val_rollout_nrmse"] == pytest.approx(rollout) and metrics["val_metric"] == metrics[
        "val_rollout_nrmse"]
    assert metrics["val_one_step_nrmse"] == pytest.approx(one_step)
    assert metrics["val_one_step_mse"] == pytest.approx((1 + 4) / 2)
    capped = _stage(val_max_steps=1).validate([_batch([0.0, 1.0, 3.0])])
    assert capped["val_rollout_nrmse"] == pytest.approx(2 / 3)


def test_validation_averages_over_samples_not_batches():
    stage = _stage()
    a, b = _batch([0.0, 1.0], batch=3), _batch([0.0, 3.0], batch=1)
    got = stage.validate([a, b])["val_rollout_nrmse"]
    assert got == pytest.approx((3 * (2 / 3) + 1 * (6 / 7)) / 4)
    with pytest.raises(ValueError, match="no samples"):
        stage.validate([])


def _unrolled_grads(detach: bool) -> tuple[BaselineStage, ExperimentConfig, list[torch.Tensor]]:
    torch.manual_seed(0)
    exp = ExperimentConfig(model={"name": "unet1d", "params": {"width": 4, "depth": 2}},
                           stages={"baseline": {"unroll_steps": 2, "detach_between_steps": detach}})
    stage = BaselineStage.from_experiment(exp, meta=_meta(), normalizer=Normalizer(mean=[0.0], std=[1.0]))
    assert stage.trainable_modules() == ["model"] and stage.modules()["model"] is stage.model
    x = torch.linspace(0, 2 * math.pi, 17)[:-1]
    frames = torch.stack([torch.sin(x - 0.3 * k) for k in range(3)]).reshape(1, 3, 16, 1).repeat(2, 1, 1, 1)
    batch = {**_batch([0.0, 0.0, 0.0]), "u": frames}
    stage.loss(batch, epoch=0, step=0)["loss"].backward()
    return stage, exp, [p.grad for p in stage.model.parameters()]


def test_unrolled_loss_trains_the_grid_model_and_detach_cuts_the_rollout_gradient():
    stage, exp, through = _unrolled_grads(False)
    assert all(g is not None and g.abs().sum() > 0 for g in through)
    meta = stage.checkpoint_meta()
    assert meta["model"] == "unet1d" and meta["model_params"] == exp.model.params
    assert meta["data_meta"] == _meta().to_dict() and meta["normalizer"]["mean"] == [0.0]
    assert meta["stage_config"]["detach_between_steps"] is False
    _, _, cut = _unrolled_grads(True)
    assert max((a - b).abs().max().item() for a, b in zip(through, cut)) > 1e-6
