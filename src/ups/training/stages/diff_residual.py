"""Stage 2, ``diff_residual``: a corrector of the frozen operator, in physical or latent space.

``space: physical`` (default): a :class:`ups.models.refiner.FieldRefiner` (PDE-Refiner style, see that
module) refines the decoded field at the data points. It is trained on the states the model meets in
rollouts: each training window ``u [B, P + 1, ...]`` (P = ``pushforward_steps``) is rolled out by the
frozen operator from its first true frame without gradients; step j gives the pair (state s_j, the
operator's prediction from s_j, the true frame j + 1), so j = 0 is the teacher-forced pair and j >= 1
are pushforward pairs. With ``rollout_with_refiner`` the states are those of the *corrected* rollout
(the current refiner applied after every step). Loss: level-0 correction MSE plus the denoising MSE
of a random level. Validation rolls whole validation trajectories out with and without the refiner;
``val_metric`` = ``val_rollout_ratio`` (corrected / operator rollout nRMSE; below 1: it helps). With
``select_levels`` (default) it does so with 0, 1, .., K denoising levels after the correction and keeps
the best count for inference (``refine_steps`` in the checkpoint): an under-trained denoiser applied
without noise can move the field by more than the operator's own error, the level-0 correction cannot.
``select_by: corr_time`` ranks instead by the high-correlation time of the validation rollouts
(``val_corr_ratio`` = operator / corrected steps above ``corr_threshold``, ties by the nRMSE ratio): on a
chaotic PDE the nRMSE of long rollouts saturates, and one diverging operator rollout makes it NaN.

``space: latent``: a flow-matching corrector of the operator's one-step latent residual (below).
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
from ups.eval.metrics import corr_time, nrmse_per_sample
from ups.models import MODELS
from ups.models.corrector import (
    Corrector,
    CorrectorConfig,
    condition_vector,
    noise,
    require_one_frame_per_step,
    sample_tau,
    velocity_target,
)
from ups.models.refiner import FieldCorrectedSurrogate, FieldRefiner, RefinerConfig
from ups.rollout import clamp_to_bounds, flatten_points, initial_bounds, parse_mode, refine_state, rollout, state_grid
from ups.rundir import RunFiles, load_frozen, require_checkpoint
from ups.training.stage import STAGES, Stage, StageConfig
from ups.training.stages.operator import OperatorStage


class DiffResidualConfig(StageConfig):
    """Settings of ``stages.diff_residual``."""

    space: Literal["physical", "latent"] = "physical"  # refine the decoded field, or the latent tokens
    refiner: RefinerConfig = Field(default_factory=RefinerConfig)  # space: physical
    pushforward_steps: int = Field(3, ge=1)  # physical: operator steps rolled out per training window
    rollout_with_refiner: bool = False  # physical: train on the corrected rollout's states
    select_levels: bool = True  # physical: validation picks how many of the K denoising levels inference uses
    # physical: what validation ranks by (levels and best checkpoint): the corrected / operator rollout nRMSE, or
    # for chaotic PDEs the operator / corrected high-correlation time (steps above corr_threshold; ties: nRMSE)
    select_by: Literal["rollout_nrmse", "corr_time"] = "rollout_nrmse"
    corr_threshold: float = Field(0.8, gt=0, lt=1)
    corrector: CorrectorConfig = Field(default_factory=CorrectorConfig)  # space: latent
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


@torch.no_grad()
def rollout_pairs(model: nn.Module, batch: dict[str, torch.Tensor], refiner: FieldRefiner | None = None, *,
                  max_principle: bool = False, mode: str = "reencode") -> dict[str, torch.Tensor]:
    """The (state, prediction, truth) pairs a rollout meets: ``batch["u"]`` [B, W, *spatial, C] rolled out
    W - 1 re-encoding steps by the frozen ``model`` from its first frame, as ``ups.rollout`` rolls it out in
    ``mode`` (``reencode_xR``: the state on the finer grid; each state refined by ``refiner`` when given,
    by ``ups.rollout.refine_state``, and kept in the initial range with ``max_principle``).
    Returns u_prev, u_pred, u_true [(W - 1) B, N, C] at the data points (step-major) and cond.
    Training batches whose samples sit on grids at different sub-cell offsets (``data.random_offset``) are rolled
    out group by group of samples that share one grid, so each gets the finer state its rollout would have."""
    u, x = flatten_points(batch["u"], batch["coords"])
    fine = parse_mode(mode)[1]
    cond = condition_vector(batch["params"], batch["dt"])
    group = torch.zeros(u.shape[0], dtype=torch.long)
    if fine > 1 and state_grid(model, x, fine) is None and state_grid(model, x[:1], fine) is not None:
        group = torch.unique(x.flatten(1), dim=0, return_inverse=True)[1].cpu()  # [B] which grid each sample has
    steps, (b, n, c) = u.shape[1] - 1, u[:, 0].shape
    prev, pred = u.new_empty(steps, b, n, c), u.new_empty(steps, b, n, c)
    for g in range(int(group.max()) + 1):
        rows = (group == g).to(u.device)
        prev[:, rows], pred[:, rows] = _rollout_states(model, u[rows], x[rows], batch["params"][rows],
                                                       batch["dt"][rows], cond[rows], refiner, fine=fine,
                                                       max_principle=max_principle)
    true = u[:, 1:].transpose(0, 1).flatten(0, 1)
    return {"u_prev": prev.flatten(0, 1), "u_pred": pred.flatten(0, 1), "u_true": true, "cond": cond.repeat(steps, 1)}


def _rollout_states(model: nn.Module, u: torch.Tensor, x: torch.Tensor, params: torch.Tensor, dt: torch.Tensor,
                    cond: torch.Tensor, refiner: FieldRefiner | None, *, fine: int, max_principle: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rollout_pairs` of samples on one point set: u [b, W, N, C], x [b, N, d] -> the states and the
    predictions at the data points, each [W - 1, b, N, C]."""
    bounds = initial_bounds(u[:, 0]) if max_principle else None
    grid = state_grid(model, x, fine)
    at_data = (lambda v: v) if grid is None else grid.coarse  # [b, M, C] state grid -> [b, N, C] data points
    xs, state = (x, u[:, 0]) if grid is None else (grid.coords, clamp_to_bounds(grid.refine(u[:, 0]), bounds))
    prev, preds = [], []
    for _ in range(u.shape[1] - 1):
        pred = model.decode(model.step(model.encode(state, xs), params, dt), xs, state)
        prev.append(at_data(state))
        preds.append(at_data(pred))
        if refiner is not None:
            pred = refine_state(lambda a, b: refiner.refine(a, b, cond), grid, state, pred)
        state = clamp_to_bounds(pred, bounds)
    return torch.stack(prev), torch.stack(preds)


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
    """Trains ``corrector`` (a field refiner or a latent corrector) on the frozen ``model``'s errors."""

    name: ClassVar[str] = "diff_residual"
    config_class: ClassVar[type[StageConfig]] = DiffResidualConfig
    requires: ClassVar[tuple[str, ...]] = ("operator",)
    val_metric: ClassVar[str] = "val_rollout_ratio (space: latent: val_one_step_ratio)"

    def __init__(self, *, model: nn.Module, corrector: Corrector | FieldRefiner, stage_cfg: DiffResidualConfig,
                 normalizer=None, meta_info: dict[str, Any] | None = None):
        self.model, self.corrector, self.stage_cfg = freeze(model), corrector, stage_cfg
        self.normalizer = normalizer
        self.meta_info = meta_info or {}
        self.physical = isinstance(corrector, FieldRefiner)
        self.max_principle = bool(self.meta_info.get("max_principle", False))  # the operator's rollout rules
        self.rollout_mode = str(self.meta_info.get("rollout_mode", "reencode"))

    @classmethod
    def train_window(cls, stage_cfg: DiffResidualConfig) -> int:
        return stage_cfg.pushforward_steps + 1 if stage_cfg.space == "physical" else 2

    @classmethod
    def val_window(cls, stage_cfg: DiffResidualConfig) -> int | None:
        return None if stage_cfg.space == "physical" else 2  # physical: whole trajectories

    @classmethod
    def build(cls, *, stage_cfg: DiffResidualConfig, exp: ExperimentConfig, meta: DatasetMetadata, normalizer,
              run_dir: Path | None = None) -> DiffResidualStage:
        require_one_frame_per_step(int(exp.model.params.get("frames_per_step", 1)))  # before any checkpoint is read
        model = load_frozen_surrogate(exp.model, meta, run_dir, stage_cfg.operator_checkpoint, stage=cls.name,
                                      needs="operator")
        if stage_cfg.space == "physical":
            corrector = FieldRefiner(channels=meta.n_channels, n_cond=meta.n_params + 1,
                                     spatial_shape=tuple(meta.spatial_shape), periodic=meta.boundary == "periodic",
                                     config=stage_cfg.refiner)
        else:
            corrector = Corrector(latent_dim=model.latent_dim, n_cond=meta.n_params + 1, config=stage_cfg.corrector)
        op_info = read_checkpoint_meta(RunFiles(run_dir).stem(stage_cfg.operator_checkpoint))
        info = {**surrogate_meta(exp, meta, normalizer), "max_principle": bool(op_info.get("max_principle", False))}
        return cls(model=model, corrector=corrector, stage_cfg=stage_cfg, normalizer=normalizer, meta_info=info)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "corrector": self.corrector}

    def trainable_modules(self) -> list[str]:
        return ["corrector"]

    def residual(self, pair: dict[str, torch.Tensor]) -> torch.Tensor:
        """The configured latent residual target of a :func:`latent_pair` -> [B, L, D]."""
        if self.stage_cfg.residual_target == "encoded" or not hasattr(self.model, "decode"):
            return pair["z_true"] - pair["z_pred"]
        return decoded_residual(self.model, pair, iters=self.stage_cfg.residual_iters, reg=self.stage_cfg.residual_reg)

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        return self._field_loss(batch) if self.physical else self._latent_loss(batch)

    def _field_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        refiner = self.corrector
        pairs = rollout_pairs(self.model, batch, refiner if self.stage_cfg.rollout_with_refiner else None,
                              max_principle=self.max_principle, mode=self.rollout_mode)
        if int(refiner.stats_updates) < self.stage_cfg.stats_batches:
            refiner.update_scale(pairs["u_true"] - pairs["u_pred"])
        parts = refiner.losses(pairs["u_prev"], pairs["u_pred"], pairs["u_true"], pairs["cond"])
        loss = sum(parts.values())
        return {"loss": loss, **{f"loss_{k}": v.detach() for k, v in parts.items()}}

    def _latent_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
        if self.physical:
            return self._validate_fields(loader)
        device = self.corrector.res_mean.device
        scores = LatentScores(self.normalizer.denormalize if self.normalizer is not None else None)
        for batch in loader:
            pair = latent_pair(self.model, {k: v.to(device) for k, v in batch.items()})
            z_corr = self.corrector.refine(pair["z_pred"], pair["cond"], steps=self.stage_cfg.val_steps)
            scores.add(self.model, pair, z_corr)
        out = scores.result()
        out["val_metric"] = out.get("val_one_step_ratio", out["val_latent_rel_err"])
        return out

    def _validate_fields(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Validation rollouts with 0..K denoising levels (only K unless ``select_levels``); the number of
        levels with the lowest rollout nRMSE is the one inference uses (``refine_steps`` of the checkpoint)."""
        k_max = self.corrector.config.steps
        ks = range(k_max + 1) if self.stage_cfg.select_levels else (k_max,)
        variants = {f"k{k}": FieldCorrectedSurrogate(model=self.model, corrector=self.corrector, steps=k) for k in ks}
        out = field_rollout_scores(self.model, variants, list(loader), self.normalizer, mode=self.rollout_mode,
                                   max_principle=self.max_principle, corr_threshold=self.stage_cfg.corr_threshold)
        by_corr = self.stage_cfg.select_by == "corr_time"
        rank = (lambda k: (out[f"val_corr_ratio_k{k}"], out[f"val_rollout_ratio_k{k}"])) if by_corr else (
            lambda k: out[f"val_rollout_ratio_k{k}"])
        self.levels = min(ks, key=rank)
        for key in ("val_rollout_nrmse", "val_rollout_ratio", "val_first_step_ratio", "val_corr_steps",
                    "val_corr_ratio"):
            out[key] = out[f"{key}_k{self.levels}"]
        out["val_levels"] = float(self.levels)
        out["val_metric"] = out["val_corr_ratio" if by_corr else "val_rollout_ratio"]
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        if self.physical:
            levels = getattr(self, "levels", self.corrector.config.steps)
            return {**self.meta_info, **refiner_meta(self.corrector), "corrector_kind": "multi",
                    "refine_steps": levels, "network_calls": levels + 1}
        return {**self.meta_info, "corrector": self.stage_cfg.corrector.model_dump(), "corrector_kind": "multi",
                "latent_dim": self.corrector.latent_dim, "n_cond": self.corrector.n_cond,
                "refine_steps": self.stage_cfg.val_steps or self.stage_cfg.corrector.steps}


def refiner_meta(refiner: FieldRefiner) -> dict[str, Any]:
    """What :func:`ups.rundir.load_corrector` needs to rebuild a field refiner."""
    return {"space": "physical", "refiner": refiner.config.model_dump(), "channels": refiner.channels,
            "n_cond": refiner.n_cond, "spatial_shape": list(refiner.spatial_shape), "periodic": refiner.periodic}


@torch.no_grad()
def field_rollout_scores(model: nn.Module, variants: dict[str, nn.Module], loader: Iterable[dict[str, torch.Tensor]],
                         normalizer=None, *, mode: str = "reencode", max_principle: bool = False,
                         corr_threshold: float = 0.8) -> dict[str, float]:
    """Rollout nRMSE (physical units) and high-correlation time of ``model`` and of each corrected variant over
    every trajectory of ``loader`` (``u`` [B, T, *spatial, C]) from its first frame, all in rollout ``mode``
    (the operator's). Returns
    ``val_rollout_nrmse_operator``, ``val_corr_steps_operator`` and, per variant name v, ``val_rollout_nrmse_v``,
    ``val_rollout_ratio_v`` (corrected / operator), ``val_first_step_ratio_v``, ``val_corr_steps_v`` (steps
    before the mean correlation with the truth falls below ``corr_threshold``, ``ups.eval.metrics.corr_time``)
    and ``val_corr_ratio_v`` (operator / corrected steps: below 1 the corrector keeps the rollout correlated
    longer)."""
    den = normalizer.denormalize if normalizer is not None else (lambda v: v)
    errs: dict[str, list[torch.Tensor]] = {}
    fields: dict[str, list[torch.Tensor]] = {}
    device = next(iter(variants.values())).corrector.res_scale.device
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        u, x = flatten_points(batch["u"], batch["coords"])
        true = den(u[:, 1:])
        fields.setdefault("truth", []).append(true)
        for key, m in (("operator", model), *variants.items()):
            pred = den(rollout(m, u[:, 0], x, batch["params"], batch["dt"], u.shape[1] - 1, mode=mode,
                               max_principle=max_principle)[:, 1:])
            err = nrmse_per_sample(pred, true)  # [B, T - 1, C]
            errs.setdefault(key, []).append(err.mean(dim=(1, 2)))
            errs.setdefault(key + "/1", []).append(err[:, 0].mean(-1))
            fields.setdefault(key, []).append(pred)
    mean = {k: float(torch.cat(v).mean()) for k, v in errs.items()}
    truth = torch.cat(fields["truth"])
    steps = {k: corr_time(torch.cat(fields[k]), truth, corr_threshold) for k in ("operator", *variants)}
    out = {"val_rollout_nrmse_operator": mean["operator"], "val_corr_steps_operator": steps["operator"]}
    for v in variants:
        out[f"val_rollout_nrmse_{v}"] = mean[v]
        out[f"val_rollout_ratio_{v}"] = mean[v] / max(mean["operator"], 1e-30)
        out[f"val_first_step_ratio_{v}"] = mean[v + "/1"] / max(mean["operator/1"], 1e-30)
        out[f"val_corr_steps_{v}"] = steps[v]
        out[f"val_corr_ratio_{v}"] = steps["operator"] / max(steps[v], 1.0)
    return out
