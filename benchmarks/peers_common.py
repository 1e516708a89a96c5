"""What the accuracy, inference and training benchmarks share: configs, data, training, evaluation.

Every model is trained by the one trainer on the same files, with the same train-split normaliser, and
evaluated the same way: an autoregressive rollout of ``predict_next`` over whole test trajectories
from frame 0, scored in physical space by ``ups.eval.metrics.evaluate_rollout``.

``quick=True`` swaps the data section for a tiny generated data set in a temporary directory so each
benchmark finishes in seconds (used by ``tests/test_benchmarks.py``); the numbers are then meaningless.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ups.config import ExperimentConfig, load_config
from ups.data.datasets import WindowDataset, build_metadata, make_loader
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.data.pdes import has_maximum_principle
from ups.data.reader import SplitSource, open_split
from ups.errors import UPSError
from ups.eval.metrics import evaluate_rollout
from ups.training.stage import STAGES, Stage
from ups.training.stages.baseline import flatten_batch, one_step_grid, rollout_grid
from ups.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEFAULT_BUDGET_S = 900.0
QUICK_BUDGET_S = 2.0
SPLITS = ("train", "val", "test")

# A tiny Burgers data set for quick mode (nu=0.1: few solver steps): 32 points, 5 frames after the strides.
QUICK_GENERATE = {"params": "{nu: 0.1}", "resolution": 128, "frames": 21, "t_end": 0.2,
                  "samples": {"train": 8, "val": 2, "test": 3}, "seeds": {"train": 11, "val": 12, "test": 13},
                  "batch_size": 8}
UPS_QUICK = {"latent_dim": 16, "num_supernodes": 8, "heads": 2, "operator_depth": 1, "kernel_hidden": 8,
             "decoder_hidden": 16}
QUICK_MODEL_PARAMS = {
    "upt": UPS_QUICK,
    "fno": {"n_modes": 8, "hidden_channels": 16, "n_layers": 2},
    "unet1d": {"width": 4, "depth": 2},
}


def quick_overrides(work: Path, model: str | None = None) -> list[str]:
    """Overrides that point a config at a tiny data set under ``work`` (and shrink the model)."""
    folder = work / "data"
    out = [f"data.{s}={folder / f'{s}.hdf5'}" for s in ("train", "val", "test")]
    out += [f"data.generate.{k}={v}" for k, v in QUICK_GENERATE.items()]
    out += ["data.batch_size=4", "eval.batch_size=4", "training.progress=none", "training.health_every=1000"]
    for key, value in QUICK_MODEL_PARAMS.get(model or "", {}).items():
        out.append(f"model.params.{key}={value}")
    return out


def load_bench_config(name: str, *, quick: bool, work: Path, extra: list[str] | None = None) -> ExperimentConfig:
    """``configs/{name}.yaml`` with the quick-mode overrides (when asked) and ``extra`` ones.

    Relative data paths are taken from the repository root, wherever the benchmark is started.
    """
    path = CONFIGS / f"{name}.yaml"
    base = load_config(path)
    if quick:
        overrides = quick_overrides(work, base.model.name)
    else:
        overrides = [f"data.{s}={ROOT / p}" for s in SPLITS
                     if (p := getattr(base.data, s)) and not Path(p).is_absolute()]
    return load_config(path, overrides + ["training.progress=none"] + list(extra or []))


def same_data(a: ExperimentConfig, b: ExperimentConfig) -> None:
    """Raise unless two configs read the same files the same way (the comparison would be unfair)."""
    keys = ("pde", "train", "val", "test", "pdebench_file", "spatial_stride", "temporal_stride", "max_samples",
            "early_oversample", "early_frames")
    diff = [k for k in keys if getattr(a.data, k) != getattr(b.data, k)]
    if diff:
        raise UPSError(f"configs '{a.name}' and '{b.name}' differ in data.{diff[0]}; benchmarks compare models "
                       "on the same data, align the data sections")


def stage_model(stage: Stage) -> torch.nn.Module:
    """The model a trained stage trained (its ``model`` module)."""
    model = getattr(stage, "model", None) or stage.modules().get("model")
    if model is None:
        raise UPSError(f"stage '{stage.name}' has no 'model' module (modules: {sorted(stage.modules())})")
    return model


class OneStep(torch.nn.Module):
    """Gives ``predict_next`` to a model whose ``forward`` is its one-step map (the UPT model's re-encoding
    step): ``(u [B, N, C], coords [B, N, d], params [B, P], dt [B]) -> [B, N, C]``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def predict_next(self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor,
                     dt: torch.Tensor) -> torch.Tensor:
        return self.model(u, coords, params, dt)


def one_step_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself when it has ``predict_next``, else :class:`OneStep` around it."""
    return model if hasattr(model, "predict_next") else OneStep(model)


def ups_config(*, quick: bool, work: Path) -> tuple[ExperimentConfig, str]:
    """The UPS model's config and its first stage: ``configs/burgers1d.yaml`` when present, else the peers'
    data section with the ``upt`` model and the ``operator`` stage at their defaults."""
    if (CONFIGS / "burgers1d.yaml").is_file():
        cfg = load_bench_config("burgers1d", quick=quick, work=work)
    else:
        params = "{" + ", ".join(f"{k}: {v}" for k, v in UPS_QUICK.items()) + "}" if quick else "{}"
        cfg = load_bench_config("fno_burgers1d", quick=quick, work=work,
                                extra=["name=ups_burgers1d", "model.name=upt", f"model.params={params}",
                                       "stages={operator: {}}", "data.random_offset=true"])
    return cfg, "operator"


def ensure_data(cfg: ExperimentConfig) -> None:
    """Generate the split files of ``cfg.data`` from ``cfg.data.generate`` when any is missing."""
    from ups.data.generate import generate_dataset

    d, gen = cfg.data, cfg.data.generate
    for split in SPLITS:
        path = getattr(d, split)
        if not path or Path(path).exists():
            continue
        if gen is None:
            raise UPSError(f"data.{split}={path} does not exist and the config has no data.generate section")
        generate_dataset(pde=d.pde, params=dict(gen.params), samples=gen.samples[split], seed=gen.seeds[split],
                         out=path, resolution=gen.resolution, frames=gen.frames, t_end=gen.t_end,
                         batch_size=gen.batch_size, progress=False)


@dataclass
class Bench:
    """The data of one benchmark: splits, normaliser (train split only) and metadata."""

    cfg: ExperimentConfig
    train: SplitSource
    val: SplitSource
    test: SplitSource
    normalizer: Normalizer
    meta: DatasetMetadata

    @classmethod
    def open(cls, cfg: ExperimentConfig) -> Bench:
        ensure_data(cfg)
        d = cfg.data
        train = open_split(d, "train")
        normalizer = Normalizer.fit(train, spatial_stride=d.spatial_stride, temporal_stride=d.temporal_stride)
        return cls(cfg=cfg, train=train, val=open_split(d, "val"), test=open_split(d, "test"),
                   normalizer=normalizer, meta=build_metadata(train, d))

    def dataset(self, split: str, window: int | None, *, random_offset: bool = False, start: int | None = None,
                spatial_stride: int | None = None) -> WindowDataset:
        """Windows (or, ``window=None``, whole trajectories from ``start``, default ``eval.rollout_start``) of
        ``split`` at ``spatial_stride`` (default the config's; 1 = every cell of the file)."""
        d = self.cfg.data
        if start is None:
            start = self.cfg.eval.rollout_start if window is None else 0
        return WindowDataset(getattr(self, split), window=window, normalizer=self.normalizer,
                             temporal_stride=d.temporal_stride, spatial_stride=spatial_stride or d.spatial_stride,
                             random_offset=random_offset, start=start, seed=self.cfg.training.seed)


def build_stage(bench: Bench, cfg: ExperimentConfig, stage_name: str, run_dir: Path) -> Stage:
    return STAGES.get(stage_name).build(cfg=cfg, meta=bench.meta, normalizer=bench.normalizer, run_dir=run_dir)


def loaders(bench: Bench, cfg: ExperimentConfig, stage: Stage) -> tuple[Any, Any]:
    """Training windows (shuffled) and whole validation trajectories for ``stage``."""
    train = bench.dataset("train", type(stage).train_window(cfg), random_offset=cfg.data.random_offset)
    val = bench.dataset("val", type(stage).val_window(cfg))
    return (make_loader(train, batch_size=cfg.data.batch_size, shuffle=True, seed=cfg.training.seed, drop_last=True),
            make_loader(val, batch_size=cfg.eval.batch_size, shuffle=False, seed=0))


def train_for_budget(bench: Bench, cfg: ExperimentConfig, stage_name: str, run_dir: Path,
                     budget_s: float) -> tuple[Stage, dict[str, Any]]:
    """Train ``stage_name`` for ``budget_s`` seconds of wall clock, with its schedule fitted to the budget.

    A short calibration run measures the training steps per second; ``max_steps`` is then set to what the
    budget allows (so a cosine schedule ends on time) and ``time_budget_s`` stops training in any case.
    """
    torch.manual_seed(cfg.training.seed)
    stage = build_stage(bench, cfg, stage_name, run_dir)
    train_loader, val_loader = loaders(bench, cfg, stage)
    rate = steps_per_second(stage, train_loader, cfg, seconds=min(10.0, max(0.5, budget_s / 30)))
    tcfg = cfg.stage_training(stage_name)
    val_cost = 0.05 * budget_s  # validation passes take part of the budget
    steps = max(1, int(rate * (budget_s - val_cost)))
    per_epoch = max(1, len(train_loader))
    tcfg = tcfg.model_copy(update={"max_steps": steps, "time_budget_s": budget_s,
                                   "epochs": max(1, math.ceil(steps / per_epoch)),
                                   "val_every": max(1, math.ceil(steps / per_epoch / 10))})
    torch.manual_seed(cfg.training.seed)
    stage = build_stage(bench, cfg, stage_name, run_dir)  # fresh weights after the calibration
    t0 = time.perf_counter()
    summary = Trainer(stage=stage, config=tcfg, run_dir=run_dir).fit(train_loader, val_loader)
    summary = {**summary, "wall_s": time.perf_counter() - t0, "calibrated_steps_per_s": rate,
               "planned_steps": steps}
    return stage, summary


def steps_per_second(stage: Stage, loader: Any, cfg: ExperimentConfig, *, seconds: float) -> float:
    """Optimizer steps per second of ``stage`` on ``loader`` (forward, backward, AdamW), measured."""
    module = {n: stage.modules()[n] for n in stage.trainable_modules()}
    params = [p for m in module.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    done, t0 = 0, None
    while True:
        for batch in loader:
            loss = stage.loss(batch, epoch=0, step=done)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if t0 is None:  # the first step (allocations, lazy init) is not timed
                t0, done = time.perf_counter(), 0
            elif time.perf_counter() - t0 >= seconds:
                return done / (time.perf_counter() - t0)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def rollout_test(model: torch.nn.Module, bench: Bench, *, split: str = "test", start: int | None = None,
                 spatial_stride: int | None = None) -> dict[str, torch.Tensor]:
    """Autoregressive rollouts of ``model.predict_next`` over whole trajectories of ``split``.

    Returns de-normalised ``pred``, ``one_step``, ``true`` [S, T-1, *spatial, C] and ``u0`` [S, *spatial, C].
    Every model's rollout obeys the PDE's maximum principle when it has one (the same rule as ``ups eval``).
    """
    model = one_step_model(model).eval()
    ds = bench.dataset(split, None, start=start, spatial_stride=spatial_stride)
    loader = make_loader(ds, batch_size=bench.cfg.eval.batch_size, shuffle=False, seed=0)
    device = next(iter(model.parameters()), torch.empty(0)).device
    parts: dict[str, list[torch.Tensor]] = {"pred": [], "one_step": [], "true": [], "u0": []}
    for batch in loader:
        u, coords, params, dt = flatten_batch(batch, device)
        shape = batch["u"].shape  # [B, T, *spatial, C]
        steps = u.shape[1] - 1
        out = {"pred": rollout_grid(model, u[:, 0], coords, params, dt, steps,
                                    max_principle=has_maximum_principle(bench.meta.pde)),
               "one_step": one_step_grid(model, u, coords, params, dt), "true": u[:, 1:]}
        for key, value in out.items():
            parts[key].append(bench.normalizer.denormalize(value.reshape(shape[0], steps, *shape[2:]).cpu()))
        parts["u0"].append(bench.normalizer.denormalize(batch["u"][:, 0]))
    return {key: torch.cat(value) for key, value in parts.items()}


def evaluate(model: torch.nn.Module, bench: Bench, *, split: str = "test", start: int | None = None,
             spatial_stride: int | None = None) -> dict[str, Any]:
    """Physical-space metrics of the test rollout (``evaluate_rollout``), without the per-step lists; from frame
    ``start`` (default ``eval.rollout_start``) at ``spatial_stride`` (default the config's)."""
    r = rollout_test(model, bench, split=split, start=start, spatial_stride=spatial_stride)
    ev = bench.cfg.eval
    metrics = evaluate_rollout(r["pred"], r["true"], pred_one_step=r["one_step"], u0=r["u0"],
                               boundary=bench.meta.boundary, corr_threshold=ev.corr_threshold,
                               valid_threshold=ev.valid_threshold)
    return {k: v for k, v in metrics.items() if not isinstance(v, list)} | {
        "nrmse_per_step": [round(x, 6) for x in metrics["nrmse_per_step"]]}
