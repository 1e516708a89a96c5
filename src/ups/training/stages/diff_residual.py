"""Stage 2, ``diff_residual``: a flow-matching corrector of the frozen operator's one-step residual.

The operator's modules (``model``: encoder, operator, decoder) are loaded from ``operator_best`` and
frozen. On every one-step pair ``(u_t, u_{t+1})``::

    z = E(u_t),  z_pred = Op(z),  r = residual target (below),  x1 = (r - m) / s
    tau ~ U(0, 1) or Beta(a, b),  eps ~ N(0, I),  x_tau = (1 - tau) x1 + tau eps
    loss = || v_theta(x_tau, tau | z_pred, params, dt) - (eps - x1) ||^2

Residual target (``residual_target``):

- ``decoded`` (default): the latent correction the frozen decoder needs,
  ``r* = argmin_r  mean_x |D(z_pred + r, x, u_t) - u_{t+1}|^2 + residual_reg * mean r^2``, found per batch
  by L-BFGS from r = 0 (``residual_iters`` iterations; the small penalty picks the smallest such
  correction). An operator trained on decoded losses does not place ``Op(z)`` near ``E(u_{t+1})``, so the
  encoded residual below can be large and of no use to the decoder; ``r*`` improves the decoded step by
  construction, and where the operator's error is unpredictable its conditional mean is ~0 (no harm).
- ``encoded``: ``r = E(u_{t+1}) - z_pred`` (the textbook latent residual).

``m, s`` (per latent feature) are measured on the first ``stats_batches`` training batches and then
frozen; they are buffers of the corrector, so they travel with its checkpoint (see
``ups.models.corrector`` for the noise process and sampler). Validation refines ``z_pred`` with the
deterministic sampler and reports the decoded one-step nRMSE in physical space with and without the
corrector and their ratio (``val_metric`` = ``val_one_step_ratio``; below 1 means the corrector helps),
plus the latent error after refinement relative to the operator's (``val_latent_rel_err``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ups.checkpoint import read_checkpoint_meta
from ups.config import ExperimentConfig, ModelConfig
from ups.data.metadata import DatasetMetadata
from ups.errors import CheckpointError
from ups.eval.metrics import nrmse_per_sample
from ups.models import MODELS
from ups.models.corrector import Corrector, CorrectorConfig, condition_vector, noise, sample_tau, velocity_target
from ups.rollout import flatten_points
from ups.rundir import RunFiles, load_frozen, require_checkpoint
from ups.training.stage import STAGES, Stage, StageConfig
from ups.training.stages.operator import OperatorStage


class DiffResidualConfig(StageConfig):
    """Settings of ``stages.diff_residual``."""

    corrector: CorrectorConfig = Field(default_factory=CorrectorConfig)
    tau_distribution: Literal["uniform", "beta"] = "uniform"
    tau_beta: tuple[float, float] = (1.0, 1.0)  # (a, b) of the Beta distribution
    stats_batches: int = Field(8, ge=1)  # training batches the residual statistics are measured on
    val_steps: int | None = Field(None, ge=1)  # refinement steps in validation (default: corrector.steps)
    operator_checkpoint: str = "operator_best"
    residual_target: Literal["decoded", "encoded"] = "decoded"
    residual_iters: int = Field(10, ge=1)  # L-BFGS iterations for the decoded target
    residual_reg: float = Field(1e-3, ge=0)  # penalty on the size of the decoded target


def decoded_residual(model: nn.Module, pair: dict[str, torch.Tensor], *, iters: int, reg: float) -> torch.Tensor:
    """``argmin_r mean|D(z_pred + r, x, u0) - u1|^2 + reg * mean r^2`` by L-BFGS from 0 (frozen decoder).

    pair: from :func:`latent_pair` (z_pred [B, L, D], x [B, N, d], u0, u1 [B, N, C]) -> r [B, L, D].
    Samples are independent: the objective is a sum over samples of per-sample means.
    """
    z_pred, x, u0, u1 = (pair[k].detach() for k in ("z_pred", "x", "u0", "u1"))
    r = torch.zeros_like(z_pred, requires_grad=True)
    opt = torch.optim.LBFGS([r], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        misfit = (model.decode(z_pred + r, x, u0) - u1).pow(2).flatten(1).mean(1)
        loss = (misfit + reg * r.pow(2).flatten(1).mean(1)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return r.detach()


def load_frozen_surrogate(model_cfg: ModelConfig, meta: DatasetMetadata, run_dir: Path | None, checkpoint: str, *,
                          stage: str, needs: str) -> nn.Module:
    """Build the model of ``model_cfg`` (an experiment's ``model`` section) and load module ``model`` of
    ``run_dir/checkpoints/{checkpoint}``; frozen, eval mode.

    A missing checkpoint is a one-line :class:`CheckpointError` naming the stage to run first.
    """
    stem = require_checkpoint(None if run_dir is None else RunFiles(run_dir), checkpoint, stage=stage, needs=needs)
    check_checkpoint_source(read_checkpoint_meta(stem), model_cfg, meta, stem)
    model = MODELS.get(model_cfg.name).from_config(meta, model_cfg.params)
    load_frozen(stem, {"model": model}, strict=False)
    return model


DATA_FACTS = ("pde", "spatial_dims", "n_channels", "param_names", "boundary")


def check_checkpoint_source(info: dict, model_cfg: ModelConfig, meta: DatasetMetadata, stem: Path) -> None:
    """One line when checkpoint ``stem`` was written for another model or another data set than this run's."""
    model, params = info.get("model"), info.get("model_params")
    if model is not None and (model != model_cfg.name or (params is not None and params != model_cfg.params)):
        raise CheckpointError(f"checkpoint {stem}.json was written for model '{model}' {params} but this run builds "
                              f"'{model_cfg.name}' {model_cfg.params}: use that checkpoint's own run directory")
    saved = info.get("data_meta") or {}
    here = meta.to_dict()
    differ = [k for k in DATA_FACTS if k in saved and k in here and _plain(saved[k]) != _plain(here[k])]
    if differ:
        k = differ[0]
        raise CheckpointError(f"checkpoint {stem}.json was trained on another data set ({k} {saved[k]} there, "
                              f"{here[k]} here): train its stage on this data, or use the run that matches it")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode."""
    module.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def latent_pair(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Frozen-operator latents of a one-step batch (``u`` [B, W >= 2, *spatial, C]).

    Returns u0, u1 [B, N, C], x [B, N, d], z_pred, z_true [B, L, D] and cond [B, P + 1].
    """
    u, x = flatten_points(batch["u"], batch["coords"])
    z_pred = model.step(model.encode(u[:, 0], x), batch["params"], batch["dt"])
    return {"u0": u[:, 0], "u1": u[:, 1], "x": x, "z_pred": z_pred, "z_true": model.encode(u[:, 1], x),
            "cond": condition_vector(batch["params"], batch["dt"])}


def surrogate_meta(exp: ExperimentConfig, meta: DatasetMetadata, normalizer) -> dict[str, Any]:
    """What ``Simulator.from_run`` needs to rebuild the surrogate from any corrector-stage checkpoint
    (the model of ``exp`` and the rollout mode of its operator stage)."""
    out: dict[str, Any] = {"model": exp.model.name, "model_params": exp.model.params, "data_meta": meta.to_dict()}
    out["rollout_mode"] = OperatorStage.stage_config(exp).rollout_mode
    if normalizer is not None:
        out["normalizer"] = normalizer.to_dict()
    return out


class LatentScores:
    """Accumulates latent and decoded one-step errors of corrected and uncorrected predictions."""

    def __init__(self, denormalize=None):
        self.denormalize = denormalize or (lambda v: v)
        self.sums = {"corr": 0.0, "op": 0.0, "n": 0}
        self.nrmse: dict[str, list[torch.Tensor]] = {"corr": [], "op": []}

    def add(self, model: nn.Module, pair: dict[str, torch.Tensor], z_corr: torch.Tensor) -> None:
        """pair: from :func:`latent_pair`; z_corr: [B, L, D] corrected latent."""
        self.sums["corr"] += float((z_corr - pair["z_true"]).pow(2).sum())
        self.sums["op"] += float((pair["z_pred"] - pair["z_true"]).pow(2).sum())
        self.sums["n"] += pair["z_true"].numel()
        if hasattr(model, "decode"):
            true = self.denormalize(pair["u1"]).unsqueeze(1)  # [B, 1, N, C]
            for key, z in (("corr", z_corr), ("op", pair["z_pred"])):
                pred = self.denormalize(model.decode(z, pair["x"], pair["u0"])).unsqueeze(1)
                self.nrmse[key].append(nrmse_per_sample(pred, true))

    def result(self, prefix: str = "val") -> dict[str, float]:
        n = max(1, self.sums["n"])
        out = {f"{prefix}_latent_mse": self.sums["corr"] / n, f"{prefix}_latent_mse_operator": self.sums["op"] / n,
               f"{prefix}_latent_rel_err": self.sums["corr"] / max(self.sums["op"], 1e-30)}
        if self.nrmse["corr"]:
            out[f"{prefix}_one_step_nrmse"] = float(torch.cat(self.nrmse["corr"]).mean())
            out[f"{prefix}_one_step_nrmse_operator"] = float(torch.cat(self.nrmse["op"]).mean())
            out[f"{prefix}_one_step_ratio"] = out[f"{prefix}_one_step_nrmse"] / max(
                out[f"{prefix}_one_step_nrmse_operator"], 1e-30)
        return out


class OneStepPairs:
    """Windows of the stages that train and validate on one-step pairs ``(u_t, u_{t+1})`` (:func:`latent_pair`)."""

    @classmethod
    def train_window(cls, stage_cfg: StageConfig) -> int:
        return 2

    @classmethod
    def val_window(cls, stage_cfg: StageConfig) -> int | None:
        return 2


@STAGES.register("diff_residual")
class DiffResidualStage(OneStepPairs, Stage):
    """Trains ``corrector`` on the residual of the frozen ``model``."""

    name: ClassVar[str] = "diff_residual"
    config_class: ClassVar[type[StageConfig]] = DiffResidualConfig
    requires: ClassVar[tuple[str, ...]] = ("operator",)
    val_metric: ClassVar[str] = "val_one_step_ratio"

    def __init__(self, *, model: nn.Module, corrector: Corrector, stage_cfg: DiffResidualConfig,
                 normalizer=None, meta_info: dict[str, Any] | None = None):
        self.model, self.corrector, self.stage_cfg = freeze(model), corrector, stage_cfg
        self.normalizer = normalizer
        self.meta_info = meta_info or {}

    @classmethod
    def build(cls, *, stage_cfg: DiffResidualConfig, exp: ExperimentConfig, meta: DatasetMetadata, normalizer,
              run_dir: Path | None = None) -> DiffResidualStage:
        model = load_frozen_surrogate(exp.model, meta, run_dir, stage_cfg.operator_checkpoint, stage=cls.name,
                                      needs="operator")
        corrector = Corrector(latent_dim=model.latent_dim, n_cond=meta.n_params + 1, config=stage_cfg.corrector)
        return cls(model=model, corrector=corrector, stage_cfg=stage_cfg, normalizer=normalizer,
                   meta_info=surrogate_meta(exp, meta, normalizer))

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "corrector": self.corrector}

    def trainable_modules(self) -> list[str]:
        return ["corrector"]

    def residual(self, pair: dict[str, torch.Tensor]) -> torch.Tensor:
        """The configured residual target of a :func:`latent_pair` -> [B, L, D]."""
        if self.stage_cfg.residual_target == "encoded" or not hasattr(self.model, "decode"):
            return pair["z_true"] - pair["z_pred"]
        return decoded_residual(self.model, pair, iters=self.stage_cfg.residual_iters, reg=self.stage_cfg.residual_reg)

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        pair = latent_pair(self.model, batch)
        z_pred, residual = pair["z_pred"], self.residual(pair)
        if int(self.corrector.stats_updates) < self.stage_cfg.stats_batches:
            self.corrector.update_statistics(residual, z_pred)
        x1 = self.corrector.standardise(residual)
        tau = sample_tau(x1.shape[0], distribution=self.stage_cfg.tau_distribution, beta=self.stage_cfg.tau_beta,
                         device=x1.device)
        eps = torch.randn_like(x1)
        x_tau = noise(x1, tau, eps)
        v = self.corrector(x_tau, tau, z_pred, pair["cond"])
        loss = F.mse_loss(v, velocity_target(x1, eps))
        with torch.no_grad():
            clean = F.mse_loss(x_tau - tau.view(-1, 1, 1) * v, x1)
        return {"loss": loss, "loss_flow": loss.detach(), "clean_estimate_mse": clean}

    @torch.no_grad()
    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = self.corrector.res_mean.device
        scores = LatentScores(self.normalizer.denormalize if self.normalizer is not None else None)
        for batch in loader:
            pair = latent_pair(self.model, {k: v.to(device) for k, v in batch.items()})
            z_corr = self.corrector.refine(pair["z_pred"], pair["cond"], steps=self.stage_cfg.val_steps)
            scores.add(self.model, pair, z_corr)
        out = scores.result()
        out["val_metric"] = out.get("val_one_step_ratio", out["val_latent_rel_err"])
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**self.meta_info, "corrector": self.stage_cfg.corrector.model_dump(), "corrector_kind": "multi",
                "latent_dim": self.corrector.latent_dim, "n_cond": self.corrector.n_cond,
                "refine_steps": self.stage_cfg.val_steps or self.stage_cfg.corrector.steps}
