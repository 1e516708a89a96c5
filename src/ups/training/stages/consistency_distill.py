"""Stage 3, ``consistency_distill``: the multi-step corrector distilled into a 1-2 step sampler.

Physical-space teacher (a :class:`ups.models.refiner.FieldRefiner`, K + 1 network calls): the student,
a copy of it, refines with ``student_steps`` calls (the correction, plus one denoising level when 2) and
is trained on the rollout states of :func:`ups.training.stages.diff_residual.rollout_pairs` to reach
the teacher's deterministic K-level result, computed once per batch without gradients::

    loss = mean( ((u_S - u_T) / s)^2 )          u_S, u_T: student's and teacher's refined fields

Its target is the teacher's refined field, whose correction ``u_T - u_pred`` is not zero, so dropping
the correction costs the whole teacher correction; ``val_distill_rel_err`` = |r_S - r_T|^2 / |r_T|^2
(r = u - u_pred) is 1 for a collapsed student.

Latent teacher (flow matching):
Teacher: the frozen operator (``model``) and the frozen multi-step corrector (``teacher``), both from
``diff_residual_best``. Student (``corrector``): initialised as a copy of the teacher. Per batch::

    eps ~ N(0, I)                                              one draw per sample
    x1_T = teacher.sample(z_pred, eps, steps=K)               computed ONCE per batch (no grad)
    for each of distill_num_taus taus (tau = 1 always among them when include_tau_one):
        x_tau = (1 - tau) x1_T + tau eps                       on the straight path eps -> x1_T
        x1_S = x_tau - tau v_student(x_tau, tau | z_pred)      the student's one-jump estimate
        loss += || x1_S - x1_T ||^2 / distill_num_taus

The target is the teacher's endpoint, never zero, so the student cannot lower the loss by dropping
the correction: the loss is minimal only when its one-jump result equals the teacher's sample from
the same noise. Because the path is straight, one jump from tau = 1 is the 1-step sampler and
jump / re-noise at tau = 1/2 the 2-step sampler (``Corrector.sample(steps=1 or 2)``, Euler).

Micro-batching: with ``distill_micro_batch`` smaller than the batch, the student's forward runs per
micro-batch under activation checkpointing, so only one micro-batch's activations are alive while the
one backward of the trainer accumulates the micro-batch gradients (the trainer's loss scaling,
non-finite checks and clipping still apply to the whole batch). ``compile: true`` wraps the student's
jump in ``torch.compile`` with its kernel cache in ``compile_cache_dir`` (``TORCHINDUCTOR_CACHE_DIR``;
default: ``RUN/compile_cache``, never the system temp folder).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint

from ups.checkpoint import read_checkpoint_meta
from ups.config import ExperimentConfig, ModelConfig
from ups.data.metadata import DatasetMetadata
from ups.errors import CheckpointError
from ups.io_utils import ensure_writable_dir
from ups.models.corrector import Corrector, noise, sample_tau
from ups.models.refiner import FieldCorrectedSurrogate, FieldRefiner
from ups.rundir import RunFiles, corrector_from_meta, load_frozen, require_checkpoint
from ups.training.stage import STAGES, Stage, StageConfig
from ups.training.stages.diff_residual import (
    LatentScores,
    OneStepPairs,
    field_rollout_scores,
    freeze,
    latent_pair,
    refiner_meta,
    rollout_pairs,
    surrogate_meta,
)


class ConsistencyDistillConfig(StageConfig):
    """Settings of ``stages.consistency_distill``."""

    distill_num_taus: int = Field(3, ge=1)
    distill_micro_batch: int = Field(8, ge=0)  # 0: the whole batch at once
    student_steps: Literal[1, 2] = 1  # network calls of the distilled sampler per step
    pushforward_steps: int = Field(3, ge=1)  # physical: operator steps rolled out per training window
    teacher_steps: int | None = Field(None, ge=1)  # default: the teacher's own refine steps
    tau_distribution: Literal["uniform", "beta"] = "uniform"
    tau_beta: tuple[float, float] = (1.0, 1.0)
    include_tau_one: bool = True  # always train the jump from pure noise (the 1-step sampler)
    teacher_checkpoint: str = "diff_residual_best"
    compile: bool = False
    compile_cache_dir: str | None = None


def load_teacher(model_cfg: ModelConfig, meta: DatasetMetadata, run_dir: Path | None, checkpoint_name: str,
                 stage: str) -> tuple[nn.Module, Corrector, dict[str, Any]]:
    """The frozen surrogate and multi-step corrector of ``checkpoint_name`` and its metadata."""
    from ups.models import MODELS

    stem = require_checkpoint(None if run_dir is None else RunFiles(run_dir), checkpoint_name, stage=stage,
                              needs="diff_residual")
    info = read_checkpoint_meta(stem)
    if "corrector" not in info and info.get("space") != "physical":
        raise CheckpointError(f"checkpoint {stem}.json holds no corrector: it was not written by diff_residual")
    model = MODELS.get(model_cfg.name).from_config(meta, model_cfg.params)
    teacher = corrector_from_meta(info)
    load_frozen(stem, {"model": model, "corrector": teacher})
    return model, teacher, info


@STAGES.register("consistency_distill")
class ConsistencyDistillStage(OneStepPairs, Stage):
    """Trains ``corrector`` (the student) to reach the ``teacher``'s multi-step sample in one jump."""

    name: ClassVar[str] = "consistency_distill"
    config_class: ClassVar[type[StageConfig]] = ConsistencyDistillConfig
    requires: ClassVar[tuple[str, ...]] = ("diff_residual",)
    val_metric: ClassVar[str] = "val_distill_rel_err"

    def __init__(self, *, model: nn.Module, teacher: Corrector, stage_cfg: ConsistencyDistillConfig,
                 teacher_steps: int, normalizer=None, meta_info: dict[str, Any] | None = None,
                 run_dir: Path | None = None):
        self.model, self.teacher, self.stage_cfg = freeze(model), freeze(teacher), stage_cfg
        self.student = copy.deepcopy(teacher).train().requires_grad_(True)
        self.teacher_steps = stage_cfg.teacher_steps or teacher_steps
        self.normalizer, self.meta_info = normalizer, meta_info or {}
        self.physical = isinstance(teacher, FieldRefiner)
        self.max_principle = bool(self.meta_info.get("max_principle", False))
        self.rollout_mode = str(self.meta_info.get("rollout_mode", "reencode"))
        if self.physical:
            self.teacher_steps = teacher_steps if stage_cfg.teacher_steps is None else stage_cfg.teacher_steps
            return
        self._jump: Callable = self.student.clean_estimate
        if stage_cfg.compile:
            cache = ensure_writable_dir(stage_cfg.compile_cache_dir or Path(run_dir or ".") / "compile_cache",
                                        "the compile cache folder (stages.consistency_distill.compile_cache_dir)")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache.resolve())
            self._jump = torch.compile(self.student.clean_estimate)

    @classmethod
    def build(cls, *, stage_cfg: ConsistencyDistillConfig, exp: ExperimentConfig, meta: DatasetMetadata, normalizer,
              run_dir: Path | None = None) -> ConsistencyDistillStage:
        model, teacher, info = load_teacher(exp.model, meta, run_dir, stage_cfg.teacher_checkpoint, cls.name)
        meta_info = {**surrogate_meta(exp, meta, normalizer), "max_principle": bool(info.get("max_principle", False))}
        return cls(model=model, teacher=teacher, stage_cfg=stage_cfg, teacher_steps=int(info["refine_steps"]),
                   normalizer=normalizer, meta_info=meta_info, run_dir=run_dir)

    @classmethod
    def train_window(cls, stage_cfg: ConsistencyDistillConfig) -> int:
        """Rollout windows for a physical-space teacher; a latent teacher uses their first pair."""
        return stage_cfg.pushforward_steps + 1

    @classmethod
    def val_window(cls, stage_cfg: ConsistencyDistillConfig) -> int | None:
        return stage_cfg.pushforward_steps + 1

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "teacher": self.teacher, "corrector": self.student}

    def trainable_modules(self) -> list[str]:
        return ["corrector"]

    def taus(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """[distill_num_taus, B] noise levels; the first row is 1 when ``include_tau_one``."""
        n = self.stage_cfg.distill_num_taus
        rows = sample_tau(n * batch_size, distribution=self.stage_cfg.tau_distribution, beta=self.stage_cfg.tau_beta,
                          device=device).view(n, batch_size)
        if self.stage_cfg.include_tau_one:
            rows[0] = 1.0
        return rows

    def distill_loss(self, z_pred: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor, x1_t: torch.Tensor,
                     taus: torch.Tensor) -> torch.Tensor:
        """Mean over taus of ``|x1_S - x1_T|^2``. z_pred, eps, x1_t: [B, L, D]; cond: [B, n_cond]; taus: [n, B]."""
        b = z_pred.shape[0]
        micro = self.stage_cfg.distill_micro_batch or b
        total = z_pred.new_zeros(())
        for tau in taus:
            x_tau = noise(x1_t, tau, eps)
            for lo in range(0, b, micro):
                sl = slice(lo, lo + micro)
                args = (x_tau[sl], tau[sl], z_pred[sl], cond[sl])
                est = checkpoint(self._jump, *args, use_reentrant=False) if micro < b else self._jump(*args)
                total = total + (est - x1_t[sl]).pow(2).sum()
        return total / (taus.shape[0] * x1_t.numel())

    def field_pairs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rollout pairs of ``batch`` with the teacher's refined field ``u_T`` (no gradients)."""
        pairs = rollout_pairs(self.model, batch, max_principle=self.max_principle, mode=self.rollout_mode)
        with torch.no_grad():
            pairs["u_T"] = self.teacher.refine(pairs["u_prev"], pairs["u_pred"], pairs["cond"],
                                               steps=self.teacher_steps)
        return pairs

    def student_field(self, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The student's refined field with ``student_steps`` network calls -> [B, N, C]."""
        return self.student.refine(pairs["u_prev"], pairs["u_pred"], pairs["cond"],
                                   steps=self.stage_cfg.student_steps - 1)

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        if self.physical:
            pairs = self.field_pairs(batch)
            scale = self.teacher.res_scale
            loss = ((self.student_field(pairs) - pairs["u_T"]) / scale).pow(2).mean()
            teacher_sq = ((pairs["u_T"] - pairs["u_pred"]) / scale).pow(2).mean()
            return {"loss": loss, "loss_distill": loss.detach(), "teacher_sq_norm": teacher_sq}
        pair = latent_pair(self.model, batch)
        z_pred, cond = pair["z_pred"], pair["cond"]
        eps = torch.randn_like(z_pred)
        with torch.no_grad():  # the teacher's result: once per batch, reused for every tau
            x1_t = self.teacher.sample(z_pred, cond, steps=self.teacher_steps, eps=eps)
        loss = self.distill_loss(z_pred, cond, eps, x1_t, self.taus(z_pred.shape[0], z_pred.device))
        return {"loss": loss, "loss_distill": loss.detach(), "teacher_sq_norm": x1_t.pow(2).mean()}

    @torch.no_grad()
    def compare(self, loader: Iterable[dict[str, torch.Tensor]], *, generator: torch.Generator | None = None
                ) -> dict[str, float]:
        """Student (``student_steps``) against teacher corrections on ``loader``, same noise for both
        (deterministic, eps = 0, unless ``generator``): raw latent residuals ``r_S``, ``r_T``."""
        if self.physical:
            return self.compare_fields(loader)
        device = self.student.res_mean.device
        scores = LatentScores(self.normalizer.denormalize if self.normalizer is not None else None)
        sq = {"diff": 0.0, "teacher": 0.0, "student": 0.0}
        for batch in loader:
            pair = latent_pair(self.model, {k: v.to(device) for k, v in batch.items()})
            z_pred, cond = pair["z_pred"], pair["cond"]
            eps = (torch.randn(z_pred.shape, generator=generator).to(z_pred) if generator is not None
                   else torch.zeros_like(z_pred))
            r_t = self.teacher.unstandardise(self.teacher.sample(z_pred, cond, steps=self.teacher_steps, eps=eps))
            r_s = self.student.unstandardise(self.student.sample(z_pred, cond, steps=self.stage_cfg.student_steps,
                                                                 eps=eps))
            sq["diff"] += float((r_s - r_t).pow(2).sum())
            sq["teacher"] += float(r_t.pow(2).sum())
            sq["student"] += float(r_s.pow(2).sum())
            scores.add(self.model, pair, z_pred + r_s)
        teacher_sq = max(sq["teacher"], 1e-30)
        return {"val_distill_rel_err": sq["diff"] / teacher_sq,  # |r_S - r_T|^2 / |r_T|^2 (zero correction: 1)
                "val_norm_ratio": (sq["student"] / teacher_sq) ** 0.5, **scores.result()}

    @torch.no_grad()
    def compare_fields(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Student against teacher corrections ``r = u - u_pred`` on the operator's rollout states of ``loader``,
        and the student-corrected rollout against the operator's (:func:`field_rollout_scores`)."""
        device = self.student.res_scale.device
        sq = {"diff": 0.0, "teacher": 0.0, "student": 0.0}
        batches = [{k: v.to(device) for k, v in b.items()} for b in loader]
        for batch in batches:
            pairs = self.field_pairs(batch)
            r_t, r_s = pairs["u_T"] - pairs["u_pred"], self.student_field(pairs) - pairs["u_pred"]
            sq["diff"] += float((r_s - r_t).pow(2).sum())
            sq["teacher"] += float(r_t.pow(2).sum())
            sq["student"] += float(r_s.pow(2).sum())
        student = FieldCorrectedSurrogate(model=self.model, corrector=self.student,
                                          steps=self.stage_cfg.student_steps - 1)
        teacher_sq = max(sq["teacher"], 1e-30)
        rolled = field_rollout_scores(self.model, {"student": student}, batches, self.normalizer,
                                      mode=self.rollout_mode, max_principle=self.max_principle)
        return {"val_distill_rel_err": sq["diff"] / teacher_sq, "val_norm_ratio": (sq["student"] / teacher_sq) ** 0.5,
                "val_rollout_nrmse_operator": rolled["val_rollout_nrmse_operator"],
                **{k.removesuffix("_student"): v for k, v in rolled.items()}}

    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        out = self.compare(loader)
        out["val_metric"] = out["val_distill_rel_err"]
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        s = self.student
        if self.physical:
            return {**self.meta_info, **refiner_meta(s), "corrector_kind": "distilled",
                    "refine_steps": self.stage_cfg.student_steps - 1, "teacher_steps": self.teacher_steps}
        return {**self.meta_info, "corrector": s.config.model_dump(), "corrector_kind": "distilled",
                "latent_dim": s.latent_dim, "n_cond": s.n_cond, "refine_steps": self.stage_cfg.student_steps,
                "teacher_steps": self.teacher_steps}
