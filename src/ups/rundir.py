"""The one place that names the files of a run directory and loads what a run holds.

```
RUN/config.yaml        resolved experiment config          RUN/meta.json        environment, fingerprints
RUN/train_log.jsonl    health/epoch/event records          RUN/normalizer.json  train-split statistics
RUN/data_meta.json     DatasetMetadata                     RUN/stages_done.json finished stages (resume)
RUN/selection.json     corrector chosen on validation      RUN/gate.json        promotion decision
RUN/eval_<split>.json  ups eval result                     RUN/plots/, RUN/report.html
RUN/checkpoints/{stage}_{best,last,ema}.safetensors + .json,  {stage}_state.pt (training state)
```

:class:`RunFiles` names them; the loaders rebuild the surrogate (:func:`load_run_model`), a corrector
(:func:`load_corrector`), the steady prior (:func:`load_prior`) and any frozen module set of a stage's
checkpoint (:func:`load_frozen`), each failing with one line that says which stage to train first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ups.checkpoint import checkpoint_exists, load_checkpoint, read_checkpoint_meta
from ups.config import apply_overrides, read_yaml_with_includes, validate_config
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer, normalizer_from_dict
from ups.errors import CheckpointError, DataError, UPSError
from ups.io_utils import atomic_write_json
from ups.models import MODELS

CHECKPOINT_KINDS = ("best", "ema", "last")  # the order a model is looked for when none is named
CORRECTOR_CHECKPOINTS = {"multi": "diff_residual_best", "distilled": "consistency_distill_best"}
PRIOR_CHECKPOINT = "steady_prior_best"


@dataclass(frozen=True)
class RunFiles:
    """Paths of one run directory (nothing is created or checked here)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config_path = property(lambda self: self.path / "config.yaml")
    meta_path = property(lambda self: self.path / "meta.json")
    log_path = property(lambda self: self.path / "train_log.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    normalizer_path = property(lambda self: self.path / "normalizer.json")
    data_meta_path = property(lambda self: self.path / "data_meta.json")
    stages_done_path = property(lambda self: self.path / "stages_done.json")
    selection_path = property(lambda self: self.path / "selection.json")
    gate_path = property(lambda self: self.path / "gate.json")
    plots_dir = property(lambda self: self.path / "plots")
    report_path = property(lambda self: self.path / "report.html")

    def eval_path(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    def stem(self, name: str) -> Path:
        """``checkpoints/{name}`` (``name`` e.g. ``operator_best``), without suffix."""
        return self.checkpoints / name

    def stage_stem(self, stage: str, kind: str = "best") -> Path:
        return self.stem(f"{stage}_{kind}")

    def state_path(self, stage: str) -> Path:
        return self.checkpoints / f"{stage}_state.pt"

    def has(self, name: str) -> bool:
        return checkpoint_exists(self.stem(name))

    def has_stage(self, stage: str, kind: str = "best") -> bool:
        """Whether checkpoint ``{stage}_{kind}`` exists."""
        return checkpoint_exists(self.stage_stem(stage, kind))

    # ---------------------------------------------------------------------------- small files
    def stages_done(self) -> dict[str, Any]:
        """Finished stages and their summaries (empty when none finished)."""
        return _read_json(self.stages_done_path)

    def mark_stage_done(self, stage: str, summary: dict[str, Any], **extra: Any) -> None:
        """Record a stage's summary (and ``extra`` fields, e.g. the process count of a multi-process run)."""
        done = self.stages_done()
        done[stage] = {**{k: summary.get(k) for k in ("status", "epochs", "step", "best_metric", "elapsed_s")}, **extra}
        atomic_write_json(self.stages_done_path, done)

    def selected_corrector(self) -> str | None:
        """The corrector variant the pipeline chose on validation, or None."""
        return _read_json(self.selection_path).get("corrector")


DATA_PATH_KEYS = ("train", "val", "test", "pdebench_file")


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None, *, need: tuple[str, ...] = ()):
    """The run's config with its data paths usable from any working directory.

    Relative data paths in ``config.yaml`` are resolved against the working directory the run was
    created in (``meta.json`` ``cwd``; runs without it: the current one); ``overrides`` are applied after
    that, so paths given on the command line are relative to the current directory. For each key in
    ``need`` (``train``/``val``/``test``/``pdebench_file``) a file that is not there is one line naming
    the recorded path, where it was looked for, and what to do.
    """
    run = RunFiles(Path(run_dir))
    if not run.config_path.is_file():
        raise UPSError(f"{run_dir} is not a run directory (no config.yaml); pass the directory a run created")
    raw = read_yaml_with_includes(run.config_path)
    base = _recorded_cwd(run)
    data = raw.setdefault("data", {}) or {}
    recorded = _resolve_paths(data, base)
    for member in (data.get("mixture") or {}).get("members") or []:  # a data mixture: its members' files too
        if isinstance(member, dict):
            _resolve_paths(member, base)
    exp = validate_config(apply_overrides(raw, overrides or []))
    for key in need:
        value = getattr(exp.data, key)
        if value is None or value != data.get(key):
            continue  # unset, or replaced by an override (checked where it is opened)
        for rec, path in zip(_as_list(recorded[key]), _as_list(value)):
            if not Path(path).is_file():
                raise DataError(f"data.{key} of run {run.path}: '{rec}' is not at {path} (recorded relative to "
                                f"{base}); move it back, or give its new path: data.{key}=NEW_PATH")
    return exp


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make the data paths of one data section absolute against ``base`` in place; returns the recorded ones."""
    recorded = {k: data.get(k) for k in DATA_PATH_KEYS if data.get(k)}
    for key, value in recorded.items():
        data[key] = [str(base / v) for v in value] if isinstance(value, list) else str(base / value)
    return recorded


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _recorded_cwd(run: RunFiles) -> Path:
    try:
        cwd = json.loads(run.meta_path.read_text()).get("cwd")
    except (OSError, ValueError):
        cwd = None
    return Path(cwd) if cwd else Path.cwd()


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def require_checkpoint(run: RunFiles | None, name: str, *, stage: str, needs: str) -> Path:
    """The stem of checkpoint ``name``; a one-line :class:`CheckpointError` naming the stage to train first."""
    stem = (run or RunFiles(Path("."))).stem(name)
    if run is None or not checkpoint_exists(stem):
        raise CheckpointError(
            f"stage '{stage}' needs the checkpoint {stem}.safetensors, which does not exist: train stage '{needs}' "
            f"into this run directory first (ups train CONFIG --stage {needs})"
        )
    return stem


def load_frozen(stem: Path, modules: dict[str, torch.nn.Module], *, strict: bool = True) -> dict[str, Any]:
    """The one checkpoint loader for modules a later stage or the Simulator uses without training them:
    loads ``modules`` from ``stem``, freezes them (no gradients, eval mode), returns the checkpoint's JSON."""
    load_checkpoint(stem, modules, strict=strict)
    for module in modules.values():
        module.requires_grad_(False).eval()
    return read_checkpoint_meta(stem)


def model_stem(run: RunFiles, stage: str, checkpoint: str | None = None) -> Path:
    """``{stage}_{checkpoint}`` (default: best, else ema, else last); one line when none exists."""
    stems = [run.stage_stem(stage, kind) for kind in ((checkpoint,) if checkpoint else CHECKPOINT_KINDS)]
    stem = next((s for s in stems if checkpoint_exists(s)), None)
    if stem is None:
        raise CheckpointError(f"no checkpoint {' or '.join(s.name for s in stems)} in {run.checkpoints} "
                              f"(train stage '{stage}' first or pass the run directory it wrote)")
    return stem


def load_run_model(stem: Path) -> tuple[torch.nn.Module, Normalizer, DatasetMetadata, dict[str, Any]]:
    """(model, normaliser, metadata, checkpoint JSON) from a model checkpoint that carries them."""
    info = read_checkpoint_meta(stem)
    missing = [k for k in ("model", "model_params", "data_meta", "normalizer") if k not in info]
    if missing:
        raise CheckpointError(f"checkpoint {stem}.json lacks {', '.join(missing)}: it was not written by a stage "
                              "that a Simulator can rebuild (use the operator stage's checkpoints)")
    meta = DatasetMetadata.from_dict(info["data_meta"])
    model = MODELS.get(info["model"]).from_config(meta, info["model_params"])
    load_frozen(stem, {"model": model})
    return model, normalizer_from_dict(info["normalizer"]), meta, info


def corrector_from_meta(info: dict) -> torch.nn.Module:
    """The (untrained) corrector network a diff_residual checkpoint's metadata describes: the physical-space
    refiner (``space: physical``) or the latent flow-matching corrector."""
    from ups.models.corrector import Corrector, CorrectorConfig

    if info.get("space") == "physical":
        from ups.models.refiner import FieldRefiner, RefinerConfig

        return FieldRefiner(channels=int(info["channels"]), n_cond=int(info["n_cond"]),
                            spatial_shape=tuple(info["spatial_shape"]), periodic=bool(info["periodic"]),
                            config=RefinerConfig(**info["refiner"]))
    return Corrector(latent_dim=int(info["latent_dim"]), n_cond=int(info["n_cond"]),
                     config=CorrectorConfig(**info["corrector"]))


def load_corrector(run_dir: str | Path, kind: str):
    """(corrector, refine steps) of kind ``multi``/``distilled`` from a run, or None if not trained."""

    if kind not in CORRECTOR_CHECKPOINTS:
        raise UPSError(f"unknown corrector '{kind}' (allowed: none, auto, {', '.join(CORRECTOR_CHECKPOINTS)})")
    run = RunFiles(Path(run_dir))
    if not run.has(CORRECTOR_CHECKPOINTS[kind]):
        return None
    info = read_checkpoint_meta(run.stem(CORRECTOR_CHECKPOINTS[kind]))
    corr = corrector_from_meta(info)
    load_frozen(run.stem(CORRECTOR_CHECKPOINTS[kind]), {"corrector": corr}, strict=False)
    steps = info.get("refine_steps")
    return corr, int(corr.config.steps if steps is None else steps)


def with_corrector(model: torch.nn.Module, run_dir: str | Path, kind: str, *,
                   generator: torch.Generator | None = None) -> torch.nn.Module:
    """``model`` refined every step by the run's ``kind`` corrector ("none": the model itself;
    "auto": distilled, else multi, else none). A named corrector the run lacks is a one-line error."""
    from ups.models.corrector import CorrectedSurrogate
    from ups.models.refiner import FieldCorrectedSurrogate, FieldRefiner

    if kind == "none":
        return model
    kinds = ("distilled", "multi") if kind == "auto" else (kind,)
    for k in kinds:
        loaded = load_corrector(run_dir, k)
        if loaded is not None:
            wrap = FieldCorrectedSurrogate if isinstance(loaded[0], FieldRefiner) else CorrectedSurrogate
            return wrap(model=model, corrector=loaded[0], steps=loaded[1], generator=generator)
    if kind == "auto":
        return model
    raise CheckpointError(f"this run has no '{kind}' corrector ({CORRECTOR_CHECKPOINTS[kind]} is missing in "
                          f"{RunFiles(Path(run_dir)).checkpoints}): train it with ups train CONFIG --stage all")


def load_prior(run_dir: str | Path) -> torch.nn.Module:
    """The run's steady prior (``steady_prior_best``), frozen; one line when it was not trained."""
    from ups.models.steady_prior import SteadyPrior, SteadyPriorNetConfig

    run = RunFiles(Path(run_dir))
    stem = run.stem(PRIOR_CHECKPOINT)
    if not checkpoint_exists(stem):
        raise CheckpointError(f"no steady prior in this run ({stem}.safetensors is missing): train the "
                              "steady_prior stage (e.g. configs/steady_forced_diffusion.yaml)")
    info = read_checkpoint_meta(stem)
    prior = SteadyPrior(latent_dim=int(info["latent_dim"]), n_params=int(info["n_params"]),
                        config=SteadyPriorNetConfig(**info["prior"]))
    load_frozen(stem, {"prior": prior}, strict=False)
    return prior
