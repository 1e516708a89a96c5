"""Stage 4, ``steady_prior`` (optional; ``epochs: 0`` skips it): a latent drift towards the steady state.

For problems that settle to a steady state (e.g. ``forced_diffusion``), the prior maps the latent of
any state to the latent of its steady state in a fixed number ``S`` (4-6) of residual steps::

    z_0 = E(u_t),   z_{k+1} = z_k + g_theta(z_k | k, params),   k = 0 .. S-1,   u_ss ~ D(z_S)

``g`` is a stack of adaptive-layer-norm blocks (as in the corrector) conditioned on the step index and
the PDE parameters, zero-initialised: the untrained prior is the identity, i.e. it starts from the
initial state as its guess. The operator's encoder/decoder (``model``, from ``operator_best``) stay
frozen. Training items are whole trajectories (``window: null``); the target is the last frame, which
the data must have run long enough to be steady. Loss: ``|z_S - E(u_T)|^2 + lambda_decoded *
|D(z_S) - u_T|^2`` from ``inputs_per_item`` random frames of each trajectory. Validation: nRMSE (physical
space) of the prior's steady state against the last frame, next to the initial state's.
:func:`steady_state` is what ``Simulator.steady_state(u0)`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ups.config import ExperimentConfig
from ups.data.metadata import DatasetMetadata
from ups.eval.metrics import nrmse_per_sample
from ups.models.steady_prior import SteadyPrior, SteadyPriorNetConfig, steady_state
from ups.rollout import flatten_points
from ups.training.stage import STAGES, Stage, StageConfig
from ups.training.stages.diff_residual import freeze, load_frozen_surrogate, surrogate_meta


class SteadyPriorConfig(StageConfig):
    """Settings of ``stages.steady_prior``."""

    prior: SteadyPriorNetConfig = Field(default_factory=SteadyPriorNetConfig)
    window: int | None = Field(None, ge=2)  # frames per training item; None: whole trajectories
    inputs_per_item: int = Field(4, ge=1)  # random input frames per trajectory and batch
    lambda_decoded: float = Field(1.0, ge=0)
    operator_checkpoint: str = "operator_best"


@STAGES.register("steady_prior")
class SteadyPriorStage(Stage):
    """Trains ``prior`` on (state, steady state) pairs of whole trajectories; ``model`` frozen."""

    name: ClassVar[str] = "steady_prior"
    config_class: ClassVar[type[StageConfig]] = SteadyPriorConfig
    requires: ClassVar[tuple[str, ...]] = ("operator",)  # it needs only the encoder/decoder
    val_metric: ClassVar[str] = "val_steady_nrmse"

    def __init__(self, *, model: nn.Module, prior: SteadyPrior, stage_cfg: SteadyPriorConfig, normalizer=None,
                 meta_info: dict[str, Any] | None = None):
        self.model, self.prior, self.stage_cfg = freeze(model), prior, stage_cfg
        self.normalizer, self.meta_info = normalizer, meta_info or {}

    @classmethod
    def build(cls, *, stage_cfg: SteadyPriorConfig, exp: ExperimentConfig, meta: DatasetMetadata, normalizer,
              run_dir: Path | None = None) -> SteadyPriorStage:
        model = load_frozen_surrogate(exp.model, meta, run_dir, stage_cfg.operator_checkpoint, stage=cls.name,
                                      needs="operator")
        prior = SteadyPrior(latent_dim=model.latent_dim, n_params=meta.n_params, config=stage_cfg.prior)
        return cls(model=model, prior=prior, stage_cfg=stage_cfg, normalizer=normalizer,
                   meta_info=surrogate_meta(exp, meta, normalizer))

    @classmethod
    def train_window(cls, stage_cfg: SteadyPriorConfig) -> int | None:
        return stage_cfg.window

    @classmethod
    def val_window(cls, stage_cfg: SteadyPriorConfig) -> int | None:
        return stage_cfg.window

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "prior": self.prior}

    def trainable_modules(self) -> list[str]:
        return ["prior"]

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        u, x = flatten_points(batch["u"], batch["coords"])  # [B, T, N, C], [B, N, d]
        b, t = u.shape[:2]
        k = min(self.stage_cfg.inputs_per_item, t - 1)
        frames = torch.stack([torch.randperm(t - 1)[:k] for _ in range(b)]).to(u.device)  # [B, k]
        u_in = torch.gather(u, 1, frames[:, :, None, None].expand(-1, -1, *u.shape[2:])).flatten(0, 1)
        xr = x.repeat_interleave(k, 0)
        params = batch["params"].repeat_interleave(k, 0)
        u_ss = u[:, -1].repeat_interleave(k, 0)  # [B k, N, C]
        with torch.no_grad():
            z0, z_ss = self.model.encode(u_in, xr), self.model.encode(u_ss, xr)
        z = self.prior(z0, params)
        out = {"loss_latent": F.mse_loss(z, z_ss)}
        out["loss_decoded"] = F.mse_loss(self.model.decode(z, xr), u_ss) if self.stage_cfg.lambda_decoded > 0 \
            else z.new_zeros(())
        out["loss"] = out["loss_latent"] + self.stage_cfg.lambda_decoded * out["loss_decoded"]
        return out

    @torch.no_grad()
    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = next(self.prior.parameters()).device
        denorm = self.normalizer.denormalize if self.normalizer is not None else (lambda v: v)
        prior_err, init_err = [], []
        for batch in loader:
            u, x = flatten_points(batch["u"].to(device), batch["coords"].to(device))
            true = denorm(u[:, -1]).unsqueeze(1)
            pred = steady_state(self.model, self.prior, u[:, 0], x, batch["params"].to(device))
            prior_err.append(nrmse_per_sample(denorm(pred).unsqueeze(1), true))
            init_err.append(nrmse_per_sample(denorm(u[:, :1]), true))
        err = float(torch.cat(prior_err).mean())
        return {"val_metric": err, "val_steady_nrmse": err, "val_initial_nrmse": float(torch.cat(init_err).mean())}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**self.meta_info, "prior": self.prior.config.model_dump(), "latent_dim": self.prior.latent_dim,
                "n_params": self.prior.n_params}
