"""Typed experiment configuration: YAML with ``include:``, dotted overrides, one-line errors.

An experiment config composes one typed section per component::

    data:      DataConfig       where the trajectories come from, strides, batch size
    model:     ModelConfig      a registered model name + its own typed parameters
    training:  TrainingConfig   the generic trainer (optimizer, schedule, stability contract)
    stages:    {name: params}   per-stage settings, each validated by the registered stage's config
    eval:      EvalConfig       evaluation, test-time compute, gate
    run:       RunConfig        where runs are written

``load_config(path, overrides)`` reads the YAML (``include:`` files are merged first, the including
file wins), applies ``a.b.c=value`` overrides (values parsed as YAML), and validates. Any unknown key,
wrong type or inconsistent pair raises :class:`ConfigError` with one line naming key, value and what
is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from ups.errors import ConfigError
from ups.schema import Strict, format_validation_error, run_checks, validate_section

__all__ = ["Strict", "format_validation_error"]  # re-exported: configs and tests name them from here

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")  # the one list of splits, in this order


# ----------------------------------------------------------------------------------------- data
class GenerateConfig(Strict):
    """How ``ups pipeline``/``ups demo`` generate the data set when its files are missing."""

    params: dict[str, float] = Field(default_factory=lambda: {"nu": 0.01})
    resolution: int = Field(1024, ge=8)
    frames: int | dict[Split, int] = Field(201)  # a dict: frames per split (e.g. KS: train 140, test 640)
    t_end: float = Field(2.0, gt=0)
    frame_dt: float | None = Field(None, gt=0)  # set: t_end = frame_dt * (frames - 1) per split, t_end unused
    samples: dict[Split, int] = Field(default_factory=lambda: {"train": 1000, "val": 100, "test": 200})
    seeds: dict[Split, int] = Field(default_factory=lambda: {"train": 1, "val": 2, "test": 3})
    batch_size: int = Field(64, ge=1)
    solver: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the PDE class

    @model_validator(mode="after")
    def _distinct_seeds(self) -> GenerateConfig:
        if len(set(self.seeds.values())) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: each split needs its own seed")
        counts = self.frames.values() if isinstance(self.frames, dict) else [self.frames]
        if any(c < 2 for c in counts):
            raise ValueError(f"frames={self.frames}: every split needs at least 2 frames")
        return self

    def frames_for(self, split: Split) -> int:
        """Saved frames of ``split`` (the one count, or the split's entry of a per-split dict)."""
        if not isinstance(self.frames, dict):
            return self.frames
        if split not in self.frames:
            raise ConfigError(f"data.generate.frames has no entry for split '{split}' (add frames.{split})")
        return self.frames[split]

    def t_end_for(self, split: Split) -> float:
        """Final time of ``split``: ``frame_dt * (frames - 1)`` when frame_dt is set, else ``t_end``."""
        return self.t_end if self.frame_dt is None else self.frame_dt * (self.frames_for(split) - 1)


class PointSubsetConfig(Strict):
    """Irregular point clouds for training: each training item keeps each grid point with probability
    ``fraction`` (so counts differ between items), at least ``min_points`` of them (or all, if fewer)."""

    fraction: float = Field(gt=0.0, le=1.0)
    min_points: int = Field(16, ge=1)


class DataConfig(Strict):
    """Trajectory files and how they are sampled. Paths are relative to the working directory.

    Either one file per split (``train``/``val``/``test``, e.g. from ``ups data generate``), or one
    PDEBench file (``pdebench_file``) split as PDEBench does: test = first 10 % of samples, then
    ``val_fraction`` of the samples for validation, the rest for training.
    """

    pde: str = "burgers1d"
    train: str | list[str] | None = None  # a list: several files in one split
    val: str | list[str] | None = None
    test: str | list[str] | None = None
    pdebench_file: str | list[str] | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=0.9)
    params: dict[str, float] = Field(default_factory=dict)  # for files that do not carry them
    spatial_stride: int = Field(1, ge=1)
    temporal_stride: int = Field(1, ge=1)
    random_offset: bool = True  # training reads strided grids at random sub-cell offsets
    max_samples: dict[Split, int] = Field(default_factory=dict)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    # a split whose strided frames (at the file's full resolution) fit in this many MiB is read from the file
    # once and then served from memory, per process (0: every item read from the file)
    cache_mb: float = Field(2048.0, ge=0)
    # training windows starting at frame t0 drawn with weight 1 + early_oversample * exp(-t0 / early_frames)
    early_oversample: float = Field(0.0, ge=0)
    early_frames: float = Field(5.0, gt=0)
    # training items as random point subsets of the grid, padded with a mask in batches (None: whole grids)
    point_subset: PointSubsetConfig | None = None
    generate: GenerateConfig | None = None
    # several data sets at once (``ups.data.mixture``): the members give files, strides and generation; this
    # section keeps the loader settings (batch_size, num_workers, early_oversample) for all of them
    mixture: MixtureConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.pdebench_file and (self.train or self.val or self.test):
            raise ValueError("give either pdebench_file or train/val/test files, not both")
        if self.mixture is not None and (self.pdebench_file or self.train or self.val or self.test or self.generate):
            raise ValueError("data.mixture names its members' files: move data.train/val/test/pdebench_file/"
                             "generate into the members (data.mixture.members)")
        return self


class MixtureConfig(Strict):
    """One model on several PDE data sets (``data.mixture``). Each member is a data section of its own (pde,
    files or ``generate``, strides, params, max_samples); every member must give the same number of points
    per sample after its ``spatial_stride`` and the same fields. ``balance``: ``pde`` draws the same number of
    training windows from every member each epoch (smaller ones repeated), ``windows`` every window once."""

    members: list[DataConfig] = Field(min_length=2)
    balance: Literal["pde", "windows"] = "pde"

    @model_validator(mode="after")
    def _distinct(self) -> MixtureConfig:
        names = [m.pde for m in self.members]
        for m in self.members:
            if m.mixture is not None:
                raise ValueError(f"data.mixture member '{m.pde}' holds a mixture itself; list every data set "
                                 "directly under data.mixture.members")
        if len(set(names)) != len(names):
            raise ValueError(f"data.mixture.members name the PDEs {names}: one member per PDE (put several "
                             "files of one PDE in that member's train/val/test lists)")
        return self


DataConfig.model_rebuild()


# ---------------------------------------------------------------------------------------- model
class ModelConfig(Strict):
    """A registered model (``ups.models.MODELS``) and its parameters, validated by its own config
    (the check ``ups.models`` registers for section ``model``)."""

    name: str = "upt"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _validate_params(self) -> ModelConfig:
        run_checks("model", self)
        return self


# ------------------------------------------------------------------------------------- training
class WandbConfig(Strict):
    enabled: bool = False
    project: str = "ups"
    mode: Literal["online", "offline", "disabled"] = "offline"


class LRSpike(Strict):
    start: int = Field(ge=0)
    length: int = Field(ge=1)
    factor: float = Field(gt=0)


class FaultConfig(Strict):
    """Fault injection for tests: NaN loss at global batch k, inf gradients at step j, LR spikes, a real
    SIGTERM sent to the training process itself after global batch k (interrupt/resume tests)."""

    nan_loss_at_batch: list[int] = Field(default_factory=list)
    nan_loss_rank: int | None = Field(None, ge=0)  # inject the NaN loss only on this rank (None: every rank)
    sigterm_at_batch: int | None = Field(None, ge=0)
    inf_grad_at_step: list[int] = Field(default_factory=list)
    lr_spike: LRSpike | None = None


class DistributedConfig(Strict):
    """Multi-process training under torchrun (``ups.training.distributed``); ignored in one process."""

    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: float = Field(1800.0, gt=0)  # collective timeout (a rank waiting for rank 0's validation)
    preflight: bool = True  # measure one dry-run batch and check memory and disk before the first step
    memory_fraction: float = Field(0.9, gt=0, le=1)  # of the free device (or host) memory a rank may plan for


class TrainingConfig(Strict):
    """The generic trainer and its stability contract. Stages may override any field."""

    epochs: int = Field(10, ge=0)
    max_steps: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0)
    scheduler: Literal["cosine", "plateau", "step", "none"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    anneal_on_time_budget: bool = True  # cosine progress = max(step fraction, time_budget_s fraction)
    step_size: int = Field(10, ge=1)  # epochs, for the step scheduler
    step_gamma: float = Field(0.5, gt=0, le=1)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    plateau_patience: int = Field(3, ge=0)
    plateau_cooldown: int = Field(1, ge=0)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    clip_per_group: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile of the models' compile_methods while training (ups.models.compile)
    compile_cache: str | None = None  # inductor's cache directory (default ~/.cache/ups/torchinductor)
    ema_decay: float | None = Field(0.999, gt=0, lt=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    target_metric: float | None = None
    val_every: int = Field(1, ge=1)
    health_every: int = Field(50, ge=1)
    grad_norm_warn: float = Field(10.0, gt=0)
    clip_ratio_warn: float = Field(0.5, gt=0, le=1)
    inverse_ratio_warn: float = Field(0.2, gt=0)
    seed: int = 0
    device: str = "auto"
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


# ----------------------------------------------------------------------------------------- eval
class TTCConfig(Strict):
    enabled: bool = False
    candidates: int = Field(4, ge=1)
    beam_width: int = Field(1, ge=1)
    horizon: int = Field(1, ge=1)
    weights: dict[str, float] = Field(
        default_factory=lambda: {"conservation": 1.0, "negativity": 0.0, "smoothness": 0.1, "residual": 0.0}
    )


class GateConfig(Strict):
    margin: float = Field(0.0, ge=0, lt=1)  # must beat the champion's nRMSE by this fraction
    conservation_ratio: float = Field(1.5, ge=1)
    bc_ratio: float = Field(1.5, ge=1)


class EvalConfig(Strict):
    split: Split = "test"
    rollout_start: int = Field(0, ge=0)
    max_samples: int | None = Field(None, ge=1)
    corr_threshold: float = Field(0.8, gt=0, lt=1)
    valid_threshold: float = Field(0.2, gt=0)
    batch_size: int = Field(32, ge=1)
    plot_samples: int = Field(3, ge=0)
    ttc: TTCConfig = Field(default_factory=TTCConfig)
    gate: GateConfig = Field(default_factory=GateConfig)


class RunConfig(Strict):
    out_dir: str = "runs"
    name: str | None = None
    leaderboard: str = "runs/leaderboard.csv"


# ----------------------------------------------------------------------------------- experiment
class ExperimentConfig(Strict):
    name: str = "experiment"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    # trained peer runs (FNO, U-Net, another UPS run) that ups pipeline scores beside the model on the same samples
    peers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _validate_stages(self) -> ExperimentConfig:
        run_checks("experiment", self)  # stages: validated by ups.training, which owns the stage registry
        return self

    def stage_training(self, stage: str) -> TrainingConfig:
        """The trainer config for one stage: ``training`` with the stage's overrides applied."""
        overrides = (self.stages.get(stage) or {}).get("training") or {}
        return TrainingConfig(**{**self.training.model_dump(), **overrides})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------------ loading
def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml_with_includes(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping; files named by ``include:`` (str or list, relative) are merged first."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config error: include cycle through {path}")
    if not path.is_file():
        raise ConfigError(f"config error: file not found: {path} (check the path)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {path} must hold a mapping at the top level")
    includes = data.pop("include", None) or []
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged = _deep_merge(merged, read_yaml_with_includes(path.parent / inc, _seen + (path,)))
    return _deep_merge(merged, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides; the value is parsed as YAML (numbers, lists, null...)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, compose, override and validate an experiment config (``path=None``: defaults)."""
    data = read_yaml_with_includes(path) if path is not None else {}
    return validate_config(apply_overrides(data, overrides or []))


def validate_config(data: dict) -> ExperimentConfig:
    """Validate a config mapping (one-line :class:`ConfigError` for the first problem)."""
    return validate_section(ExperimentConfig, data, "")  # type: ignore[return-value]


def save_config(exp: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from ups.io_utils import atomic_write_text

    atomic_write_text(Path(path), exp.to_yaml())
