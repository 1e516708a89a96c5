"""What a training stage supplies to the one generic trainer.

The trainer (``ups.training.trainer``) owns the loop: epochs, accumulation, optimizer, schedule,
mixed precision, the stability contract, checkpoints, resume, logging. A stage only says *what* is
trained and *how it is scored*:

- ``modules()``: every module of the stage (trained or frozen), by name; all are checkpointed.
- ``trainable_modules()``: the names of the modules whose parameters the optimizer updates; the
  trainer sets ``requires_grad=False`` on everything else. Each trainable module is one parameter
  group (for per-group clipping and logging).
- ``loss(batch, epoch=, step=)``: a dict of scalar tensors with the total under ``"loss"`` and each
  (unweighted, mean-reduced) component under its own name; ``"loss_forward"`` and
  ``"loss_inv_*"`` names let the trainer log the inverse/forward ratio.
- ``validate(loader)``: a dict of floats that contains ``val_metric`` (lower is better). Model
  selection, early stopping and the plateau scheduler use it, never the training loss.
- ``checkpoint_meta()``: JSON that lets a later stage or ``Simulator.from_run`` rebuild the modules.
- ``rng_state()`` / ``load_rng_state(state)``: a stage that draws from its own ``torch.Generator``
  (rather than the global RNG, which the trainer saves itself) returns and restores its states here,
  as tensors and plain values, so that ``--resume`` is exact; the trainer keeps them in the training state.
- ``stage_config(exp)`` parses the stage's typed section of experiment config ``exp`` once; that
  ``stage_cfg`` (an instance of ``config_class``) is what the other classmethods take:
  ``build(stage_cfg=, exp=, meta=, normalizer=, run_dir=)`` (the stage; ``exp`` for the model and data
  sections it needs, never to re-read its own section), ``train_window(stage_cfg)`` and
  ``val_window(stage_cfg)`` (frames per training / validation item; ``None``: whole trajectories from
  ``eval.rollout_start``). A built stage keeps its typed config as ``stage.stage_cfg``;
  ``from_experiment(exp, meta=, normalizer=, run_dir=)`` is ``build`` with ``stage_config(exp)``.

The trainer puts every module in eval mode (and back) around ``validate``; stages do no train-mode
bookkeeping of their own.

Batches (from ``ups.data.datasets.collate``, the one collate function) are dicts::

    u       [B, W, *spatial, C]  normalised fields of W consecutive (strided) frames
    coords  [B, *spatial, d]     physical point coordinates
    params  [B, P]               PDE parameters of each sample (e.g. nu)
    dt      [B]                  time between the W frames
    sample  [B] (long)           sample index in its file; t0 [B] (long) first frame index
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ups.config import ExperimentConfig, Strict, TrainingConfig
from ups.registry import Registry
from ups.schema import register_check, validate_section

STAGES: Registry = Registry("stage")


class StageConfig(Strict):
    """Base of every stage's config; ``training`` overrides trainer fields for this stage."""

    training: dict[str, Any] = {}


class Stage(ABC):
    """A training stage: see the module docstring for the contract."""

    name: ClassVar[str] = "stage"
    config_class: ClassVar[type[StageConfig]] = StageConfig
    requires: ClassVar[tuple[str, ...]] = ()  # checkpoints (stage names) this stage loads first
    val_metric: ClassVar[str] = "val_loss"
    point_clouds: ClassVar[bool] = False  # trains on padded point-cloud batches with a mask (data.point_subset)
    mixtures: ClassVar[bool] = False  # trains on a data mixture (data.mixture: batches with a member index)
    stage_cfg: StageConfig  # the typed config the stage was built with

    @classmethod
    def stage_config(cls, exp: ExperimentConfig) -> StageConfig:
        """The typed ``stages.<name>`` section of experiment config ``exp`` (defaults when absent)."""
        return cls.config_class.model_validate(exp.stages.get(cls.name) or {})

    @classmethod
    @abstractmethod
    def build(cls, *, stage_cfg: StageConfig, exp: ExperimentConfig, meta: Any, normalizer: Any,
              run_dir: Path | None = None) -> Stage:
        """The stage for its typed config ``stage_cfg`` (from :meth:`stage_config`), experiment config ``exp``
        (model and data sections), data metadata ``meta``, the run's normaliser, and the run directory
        holding the checkpoints it ``requires``."""

    @classmethod
    def from_experiment(cls, exp: ExperimentConfig, *, meta: Any, normalizer: Any,
                        run_dir: Path | None = None) -> Stage:
        """:meth:`build` with the stage's section of ``exp`` parsed once (:meth:`stage_config`)."""
        return cls.build(stage_cfg=cls.stage_config(exp), exp=exp, meta=meta, normalizer=normalizer, run_dir=run_dir)

    @classmethod
    @abstractmethod
    def train_window(cls, stage_cfg: StageConfig) -> int | None:
        """Frames per training item (2: one step; K + 1: a K-step rollout loss; None: whole trajectories)."""

    def training_window(self) -> int | None:
        """Frames per training item of this built stage: :meth:`train_window` of its config unless the stage's
        model needs more (an operator that advances several frames per step)."""
        return type(self).train_window(self.stage_cfg)

    @classmethod
    @abstractmethod
    def val_window(cls, stage_cfg: StageConfig) -> int | None:
        """Frames per validation item (None: whole trajectories from ``eval.rollout_start``)."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]: ...

    @abstractmethod
    def trainable_modules(self) -> list[str]: ...

    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]: ...

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}

    def rng_state(self) -> dict[str, Any]:
        """States of the stage's own random generators (tensors/plain values); none by default."""
        return {}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned (an empty dict: a state saved before the stage had any)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook: called before each training epoch (curricula, schedules of the stage)."""

    def to(self, device: torch.device) -> Stage:
        for module in self.modules().values():
            module.to(device)
        return self


@register_check("experiment")
def check_stage_configs(exp) -> None:
    """Every ``stages.NAME`` is a registered stage whose params validate against its ``config_class``
    (stored back as the validated dump), with valid ``training`` overrides and a ``latent_dim`` that
    agrees with the model's. ``exp``: a ``ups.config.ExperimentConfig``."""
    for name, params in list(exp.stages.items()):
        if name not in STAGES:
            raise ValueError(f"unknown stage 'stages.{name}' (allowed: {', '.join(STAGES.names()) or 'none'})")
        stage_cfg = validate_section(STAGES.get(name).config_class, params or {}, f"stages.{name}")
        exp.stages[name] = stage_cfg.model_dump()
        overrides = exp.stages[name].get("training") or {}
        validate_section(TrainingConfig, {**exp.training.model_dump(), **overrides}, f"stages.{name}.training")
        width = exp.stages[name].get("latent_dim")
        model_width = exp.model.params.get("latent_dim")
        if width is not None and model_width is not None and width != model_width:
            raise ValueError(
                f"stages.{name}.latent_dim={width} disagrees with model.params.latent_dim="
                f"{model_width} (they must be equal; drop one of them)"
            )
    check_point_clouds(exp)
    check_mixture(exp)


def check_mixture(exp) -> None:
    """With ``data.mixture`` every configured stage must take mixtures, and a model with a ``param_transform``
    must take the mixture's parameters as they come (already log-scaled, plus a one-hot identity)."""
    if exp.data.mixture is None:
        return
    from ups.models import MODELS

    for name in exp.stages:
        if not STAGES.get(name).mixtures:
            raise ValueError(f"stage '{name}' cannot train on a data mixture (data.mixture); remove that stage")
    fields = getattr(getattr(MODELS.get(exp.model.name), "config_class", None), "model_fields", {})
    if "param_transform" in fields and exp.model.params.get("param_transform",
                                                            fields["param_transform"].default) != "identity":
        raise ValueError("data.mixture gives log-scaled parameters and a one-hot PDE identity: set "
                         "model.params.param_transform=identity")


def check_point_clouds(exp) -> None:
    """With ``data.point_subset`` the model and every configured stage must take point clouds (a mask)."""
    from ups.models import MODELS

    ps = exp.data.point_subset
    if ps is None:
        return
    if not getattr(MODELS.get(exp.model.name), "point_clouds", False):
        raise ValueError(f"data.point_subset gives irregular point clouds, which the grid model "
                         f"'{exp.model.name}' cannot take; train it on the grid (remove data.point_subset)")
    for name in exp.stages:
        if not STAGES.get(name).point_clouds:
            raise ValueError(f"stage '{name}' cannot train on point clouds (data.point_subset); "
                             "remove data.point_subset or that stage")
    if (exp.stages.get("operator") or {}).get("lambda_spectral", 0.0) > 0:
        raise ValueError("stages.operator.lambda_spectral > 0 needs whole grids; set it to 0 with data.point_subset")
