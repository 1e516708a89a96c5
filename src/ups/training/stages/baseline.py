"""Stage ``baseline``: trains any registered grid model (``fno``, ``unet1d``, ...) to predict the next frame.

Training (one window of ``pushforward_steps + unroll_steps + 1`` frames per item)::

    state = u_0 (+ noise)                      normalised fields [B, N, C]
    pushforward_steps x: state = model(state)  without gradient (Brandstetter et al.'s pushforward trick)
    unroll_steps x:      state = model(state); loss += MSE(state, u_true)   (mean over the trained steps)

``loss_forward`` is the MSE of the first trained step, ``loss_rollout`` the mean MSE of the later ones
(when ``unroll_steps > 1``). With ``detach_between_steps`` each trained step starts from the detached
previous prediction (gradients do not flow back through the rollout).

Validation is what model selection needs: an autoregressive rollout over whole validation trajectories
from their first frame, scored in de-normalised (physical) space with PDEBench's nRMSE
(``val_rollout_nrmse``, the stage's ``val_metric``), plus the teacher-forced one-step nRMSE.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ups.config import ExperimentConfig
from ups.data.metadata import DatasetMetadata
from ups.data.pdes import has_maximum_principle
from ups.eval.metrics import nrmse_per_sample
from ups.models import MODELS
from ups.rollout import flatten_points, iter_rollouts, rollout_fn
from ups.training.stage import STAGES, Stage, StageConfig


class BaselineStageConfig(StageConfig):
    """One-step training of a grid model, optionally rollout-aware."""

    unroll_steps: int = Field(1, ge=1)  # trained autoregressive steps per window
    pushforward_steps: int = Field(0, ge=0)  # untrained (no-gradient) steps before them
    detach_between_steps: bool = False
    input_noise: float = Field(0.0, ge=0)  # std of Gaussian noise added to the (normalised) input
    val_max_steps: int | None = Field(None, ge=1)  # cap on validation rollout length (None: whole)


@STAGES.register("baseline")
class BaselineStage(Stage):
    """Trains ``model`` (any registered model with ``predict_next``) one step ahead; see the module doc."""

    name = "baseline"
    config_class = BaselineStageConfig
    val_metric = "val_rollout_nrmse"

    def __init__(self, *, model: nn.Module, stage_cfg: BaselineStageConfig, normalizer: Any,
                 model_name: str = "", model_params: dict | None = None, meta: DatasetMetadata | None = None):
        self.model = model
        self.stage_cfg = stage_cfg
        self.normalizer = normalizer
        self.meta = meta
        self.model_name = model_name
        self.model_params = dict(model_params or {})

    @classmethod
    def build(cls, *, stage_cfg: BaselineStageConfig, exp: ExperimentConfig, meta: DatasetMetadata, normalizer: Any,
              run_dir: Path | None = None) -> BaselineStage:
        model_cfg = exp.model
        model = MODELS.get(model_cfg.name).from_config(meta, model_cfg.params)
        return cls(model=model, stage_cfg=stage_cfg, normalizer=normalizer, model_name=model_cfg.name,
                   model_params=model_cfg.params, meta=meta)

    @classmethod
    def train_window(cls, stage_cfg: BaselineStageConfig) -> int:
        return stage_cfg.pushforward_steps + stage_cfg.unroll_steps + 1

    @classmethod
    def val_window(cls, stage_cfg: BaselineStageConfig) -> int | None:
        return None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable_modules(self) -> list[str]:
        return ["model"]

    def _device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        device = self._device()
        u, coords = (t.to(device) for t in flatten_points(batch["u"], batch["coords"]))  # [B, W, N, C], [B, N, d]
        params, dt = batch["params"].to(device), batch["dt"].to(device)
        stage_cfg = self.stage_cfg
        need = self.train_window(stage_cfg)
        if u.shape[1] < need:
            raise ValueError(f"baseline stage needs windows of {need} frames, got {u.shape[1]}")
        state = u[:, 0]
        if stage_cfg.pushforward_steps:
            with torch.no_grad():
                for _ in range(stage_cfg.pushforward_steps):
                    state = self.model.predict_next(state, coords, params, dt)
        if stage_cfg.input_noise > 0:
            state = state + stage_cfg.input_noise * torch.randn_like(state)
        errors = []
        for k in range(stage_cfg.unroll_steps):
            state = self.model.predict_next(state, coords, params, dt)
            errors.append((state - u[:, stage_cfg.pushforward_steps + k + 1]).pow(2).mean())
            if stage_cfg.detach_between_steps:
                state = state.detach()
        out = {"loss": torch.stack(errors).mean(), "loss_forward": errors[0]}
        if len(errors) > 1:
            out["loss_rollout"] = torch.stack(errors[1:]).mean()
        return out

    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        sums = self._validation_sums(loader)
        if sums["samples"] == 0:
            raise ValueError("baseline stage: the validation loader yielded no samples")
        n = sums.pop("samples")
        out = {key: value / n for key, value in sums.items()}
        out["val_metric"] = out[self.val_metric]  # what the trainer selects and stops on
        return out

    @torch.no_grad()
    def _validation_sums(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Sums over samples of the rollout and one-step nRMSE (physical) and one-step MSE (normalised),
        from the one rollout path (``ups.rollout.iter_rollouts``; no clamping, as in training)."""
        sums = {"val_rollout_nrmse": 0.0, "val_one_step_nrmse": 0.0, "val_one_step_mse": 0.0, "samples": 0}
        denorm = self.normalizer.denormalize
        for got in iter_rollouts(rollout_fn(self.model), loader, lambda v: v, device=self._device(),
                                 max_steps=self.stage_cfg.val_max_steps):
            true = denorm(got.true)  # [B, T - 1, *spatial, C]
            sums["val_rollout_nrmse"] += float(nrmse_per_sample(denorm(got.pred), true).mean(dim=(1, 2)).sum())
            sums["val_one_step_mse"] += float((got.one_step - got.true).pow(2).flatten(1).mean(1).sum())
            sums["val_one_step_nrmse"] += float(nrmse_per_sample(denorm(got.one_step), true).mean(dim=(1, 2)).sum())
            sums["samples"] += got.true.shape[0]
        return sums

    def checkpoint_meta(self) -> dict[str, Any]:
        """Model name and parameters, data metadata and normaliser (the keys the operator stage writes too)."""
        return {"model": self.model_name, "model_params": self.model_params,
                "data_meta": self.meta.to_dict() if self.meta is not None else None,
                "normalizer": self.normalizer.to_dict() if hasattr(self.normalizer, "to_dict") else None,
                "stage_config": self.stage_cfg.model_dump(),
                # ups eval and the benchmarks keep this model's rollouts within the initial range, as UPS's
                "max_principle": self.meta is not None and has_maximum_principle(self.meta.pde)}
