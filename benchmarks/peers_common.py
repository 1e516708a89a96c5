"""What the accuracy, inference and training benchmarks share: configs, data, training, evaluation.

Every model is trained by the one trainer on the same files, with the same train-split normaliser, and
evaluated the same way, by the code of ``ups eval`` (``ups.eval.evaluate.evaluate_split`` over the one
rollout of ``ups.rollout``): whole test trajectories from frame 0, scored in physical space.

``quick=True`` swaps the data section for a tiny generated data set in a temporary directory so each
benchmark finishes in seconds (used by ``tests/test_benchmarks.py``); the numbers are then meaningless.
Importing this module applies ``ups.allocator.retain_freed_memory`` to the process (as ``ups`` commands do).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ups.allocator import retain_freed_memory
from ups.config import SPLITS, ExperimentConfig, load_config
from ups.data.datasets import WindowDataset
from ups.data.normalization import Normalizer
from ups.data.pdes import has_maximum_principle
from ups.data.prepare import DataBundle, fit_normalizer, prepare_data, stage_loaders, trajectory_loader
from ups.errors import UPSError
from ups.eval.evaluate import evaluate_split
from ups.rollout import rollout_fn
from ups.rundir import RunFiles, model_stem
from ups.simulator import Simulator
from ups.training.optim import build_optimizer
from ups.training.stage import STAGES, Stage
from ups.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
# every benchmark process (and every training it spawns imports this module) keeps freed memory, as the ``ups``
# commands and the Simulator do: the same allocator for every model and the solver
retain_freed_memory()
CONFIGS = ROOT / "configs"
DEFAULT_BUDGET_S = 900.0
STEP_CAP_FACTOR = 10
QUICK_BUDGET_S = 2.0

# A tiny Burgers data set for quick mode (nu=0.1: few solver steps): 32 points, 5 frames after the strides.
QUICK_GENERATE = {"params": "{nu: 0.1}", "resolution": 128, "frames": 21, "t_end": 0.2,
                  "samples": {"train": 8, "val": 2, "test": 3}, "seeds": {"train": 11, "val": 12, "test": 13},
                  "batch_size": 8}
UPS_QUICK = {"latent_dim": 16, "num_supernodes": 8, "heads": 2, "operator_depth": 1, "kernel_hidden": 8,
             "decoder_hidden": 16, "spectral_modes": 2}  # 2 modes fit any lattice of >= 2 tokens per axis
QUICK_MODEL_PARAMS = {
    "upt": UPS_QUICK,
    "fno": {"n_modes": 8, "hidden_channels": 16, "n_layers": 2},
    "unet1d": {"width": 4, "depth": 2},
    "unet2d": {"width": 4, "depth": 2},
}


def quick_overrides(work: Path, model: str | None = None, *, generate: dict | None = None,
                    model_params: dict | None = None) -> list[str]:
    """Overrides that point a config at a tiny data set under ``work`` (``generate``: its ``data.generate``
    keys, default a tiny Burgers set) and shrink the model (``model_params``: model name -> params replacing
    the defaults of ``QUICK_MODEL_PARAMS``)."""
    folder = work / "data"
    out = [f"data.{s}={folder / f'{s}.hdf5'}" for s in ("train", "val", "test")]
    out += [f"data.generate.{k}={v}" for k, v in (generate or QUICK_GENERATE).items()]
    out += ["data.batch_size=4", "eval.batch_size=4", "training.progress=none", "training.health_every=1000",
            "training.compile=false"]  # a compilation would outlast the seconds of a quick run
    sizes = {**QUICK_MODEL_PARAMS, **(model_params or {})}
    for key, value in sizes.get(model or "", {}).items():
        out.append(f"model.params.{key}={value}")
    return out


def load_bench_config(name: str, *, quick: bool, work: Path, extra: list[str] | None = None,
                      generate: dict | None = None, model_params: dict | None = None) -> ExperimentConfig:
    """``configs/{name}.yaml`` with the quick-mode overrides (when asked; ``generate`` and ``model_params`` as
    :func:`quick_overrides` takes them) and ``extra`` ones.

    Relative data paths are taken from the repository root, wherever the benchmark is started.
    """
    path = CONFIGS / f"{name}.yaml"
    base = load_config(path)
    if quick:
        overrides = quick_overrides(work, base.model.name, generate=generate, model_params=model_params)
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


def scored_model(run_dir: Path, stage_name: str) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The model ``ups eval RUN`` scores for a trained run: ``Simulator.from_run`` (the best checkpoint, else the
    EMA weights, else the last), with its rollout rules (``mode``, ``max_principle``) and the checkpoint's name.

    Not the live weights a stage holds when training stops: with EMA on they are not what a user gets (for the
    Burgers UPS they scored 1.7x worse than its best checkpoint, 2026-12-02)."""
    sim = Simulator.from_run(run_dir, stage=stage_name)
    rules = {"mode": sim.rollout_mode, "max_principle": bool(sim.max_principle)}
    return sim.model, rules, model_stem(RunFiles(Path(run_dir)), stage_name).name


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
        exp = load_bench_config("burgers1d", quick=quick, work=work)
    else:
        params = "{" + ", ".join(f"{k}: {v}" for k, v in UPS_QUICK.items()) + "}" if quick else "{}"
        exp = load_bench_config("fno_burgers1d", quick=quick, work=work,
                                extra=["name=ups_burgers1d", "model.name=upt", f"model.params={params}",
                                       "stages={operator: {}}", "data.random_offset=true"])
    return exp, "operator"


@dataclass
class Bench:
    """The data of one benchmark: the splits (``ups.data.prepare.DataBundle``, missing files generated), the
    train-split normaliser and the metadata, as ``ups train`` prepares them."""

    exp: ExperimentConfig
    bundle: DataBundle
    normalizer: Normalizer

    @classmethod
    def open(cls, exp: ExperimentConfig) -> Bench:
        bundle = prepare_data(exp.data, splits=SPLITS, progress=False)
        return cls(exp=exp, bundle=bundle, normalizer=fit_normalizer(bundle))

    meta = property(lambda self: self.bundle.meta)
    train = property(lambda self: self.bundle.splits["train"])
    val = property(lambda self: self.bundle.splits["val"])
    test = property(lambda self: self.bundle.splits["test"])

    def dataset(self, split: str, window: int | None, *, start: int | None = None) -> WindowDataset:
        """Windows of ``window`` frames, or whole trajectories from ``start`` (default ``eval.rollout_start``)."""
        if start is None:
            start = self.exp.eval.rollout_start if window is None else 0
        return self.bundle.windows(split, window=window, normalizer=self.normalizer, start=start)


def build_stage(bench: Bench, exp: ExperimentConfig, stage_name: str, run_dir: Path) -> Stage:
    return STAGES.get(stage_name).from_experiment(exp, meta=bench.meta, normalizer=bench.normalizer, run_dir=run_dir)


def loaders(bench: Bench, exp: ExperimentConfig, stage: Stage) -> tuple[Any, Any]:
    """Training windows and whole validation trajectories for ``stage``: the loaders ``ups train`` builds."""
    return stage_loaders(bench.bundle, exp, normalizer=bench.normalizer,
                         train_window=stage.training_window(),
                         val_window=type(stage).val_window(stage.stage_cfg), seed=exp.training.seed)


def compute_clock() -> float:
    """Seconds of CPU this process, and the programs it ran and waited for, have used: the benchmarks' clock for
    training budgets and timings.

    Every model trains and rolls out on one thread, so CPU seconds are compute seconds; unlike the wall
    clock they do not shrink when other jobs share the machine, so budgets stay equal between models
    that run side by side or one after another (on an idle machine the two clocks agree). The programs run
    are ``torch.compile``'s C++ compilers (``training.compile``): their seconds count against the budget of the
    model being compiled."""
    done = os.times()  # children's seconds in clock ticks; the process's own at full resolution
    return time.process_time() + done.children_user + done.children_system


def compile_in_process() -> None:
    """``torch.compile`` compiles in this process and the compilers it waits for, not in a worker pool, so that
    :func:`compute_clock` sees the compilation."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1


def train_for_budget(bench: Bench, exp: ExperimentConfig, stage_name: str, run_dir: Path,
                     budget_s: float) -> tuple[Stage, dict[str, Any]]:
    """Train ``stage_name`` for ``budget_s`` seconds of compute (:func:`compute_clock`), with its schedule
    fitted to the budget.

    ``time_budget_s`` stops training, and the cosine schedule anneals on the same clock (``ups.training.optim``:
    its progress is the larger of the step and budget fractions). A short calibration run measures the steps
    per second to space validations (about 10 per run); ``max_steps`` and ``epochs`` are set well above what
    the budget allows (x ``STEP_CAP_FACTOR``), so no model stops early on a rate measured while the machine
    was busier than later (a calibrated ``max_steps`` had stopped FNO after 571 of its 900 seconds).
    """
    torch.manual_seed(exp.training.seed)
    stage = build_stage(bench, exp, stage_name, run_dir)
    train_loader, val_loader = loaders(bench, exp, stage)
    rate = steps_per_second(stage, train_loader, exp, seconds=min(10.0, max(0.5, budget_s / 30)))
    train_cfg = exp.stage_training(stage_name)
    val_cost = 0.05 * budget_s  # validation passes take part of the budget
    steps = max(1, int(rate * (budget_s - val_cost)))
    per_epoch = max(1, len(train_loader))
    cap = STEP_CAP_FACTOR * steps  # the budget stops training; the caps only guard a runaway calibration
    train_cfg = train_cfg.model_copy(update={"max_steps": cap, "time_budget_s": budget_s,
                                             "epochs": max(1, math.ceil(cap / per_epoch)),
                                             "val_every": max(1, math.ceil(steps / per_epoch / 10))})
    if train_cfg.compile:  # compiled in this process from an empty cache: the budget pays for the compilation
        compile_in_process()
        train_cfg = train_cfg.model_copy(update={"compile_cache": str(run_dir / "inductor_cache")})
    torch.manual_seed(exp.training.seed)
    stage = build_stage(bench, exp, stage_name, run_dir)  # fresh weights after the calibration
    t0, c0 = time.perf_counter(), compute_clock()
    summary = Trainer(stage=stage, config=train_cfg, run_dir=run_dir, clock=compute_clock).fit(train_loader,
                                                                                                val_loader)
    summary = {**summary, "wall_s": time.perf_counter() - t0, "cpu_s": compute_clock() - c0,
               "calibrated_steps_per_s": rate, "planned_steps": steps}
    return stage, summary


def steps_per_second(stage: Stage, loader: Any, exp: ExperimentConfig, *, seconds: float) -> float:
    """Optimizer steps per second of ``stage`` on ``loader`` (forward, backward, and the optimizer step the
    trainer builds: ``ups.training.optim.build_optimizer``), measured."""
    opt = build_optimizer(stage.modules(), list(stage.trainable_modules()), exp.stage_training(stage.name))
    done, t0 = 0, None
    while True:
        for batch in loader:
            loss = stage.loss(batch, epoch=0, step=done)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if t0 is None:  # the first step (allocations, lazy init) is not timed
                t0, done = compute_clock(), 0
            elif compute_clock() - t0 >= seconds:
                return done / (compute_clock() - t0)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def evaluate(model: torch.nn.Module, bench: Bench, *, split: str = "test", mode: str = "reencode",
             max_principle: bool | None = None, start: int | None = None,
             spatial_stride: int | None = None, member: str | None = None) -> dict[str, Any]:
    """Physical-space metrics of the rollout over whole trajectories of ``split``, by the code and rules of
    ``ups eval`` (``ups.eval.evaluate.evaluate_split``; ``mode`` for latent surrogates; by default every
    model's rollout obeys the PDE's maximum principle when it has one), from frame ``start`` (default
    ``eval.rollout_start``) at ``spatial_stride`` (default the config's; 1 = every cell of the file, the
    model unchanged); ``member``: one PDE of a data mixture, scored with its own metadata as ``ups eval``
    scores a mixture run; without the per-step lists but ``nrmse_per_step``."""
    pde = bench.bundle.members[member].meta.pde if member is not None else bench.meta.pde
    mp = has_maximum_principle(pde) if max_principle is None else max_principle
    return evaluate_fn(rollout_fn(model.eval(), mode=mode, max_principle=mp), bench, split=split, start=start,
                       spatial_stride=spatial_stride, member=member)


def evaluate_fn(fn: Any, bench: Bench, *, split: str = "test", start: int | None = None,
                spatial_stride: int | None = None, member: str | None = None) -> dict[str, Any]:
    """:func:`evaluate` of a rollout function (``ups.rollout.RolloutFn``: a model's, or TTC's best-of-K)."""
    exp, bundle = bench.exp, bench.bundle
    if start is not None:
        exp = exp.model_copy(update={"eval": exp.eval.model_copy(update={"rollout_start": start})})
    if spatial_stride is not None and spatial_stride != exp.data.spatial_stride:
        exp = exp.model_copy(update={"data": exp.data.model_copy(update={"spatial_stride": spatial_stride})})
        bundle = prepare_data(exp.data, splits=(split,), generate=False, progress=False)
    meta = bundle.meta
    if member is not None:
        meta, bundle = bundle.members[member].meta, bundle.select(member)
    loader = trajectory_loader(bundle, exp, split, normalizer=bench.normalizer)
    result, _ = evaluate_split(fn, loader, bench.normalizer, meta, exp.eval)
    metrics = result["metrics"]
    return {k: v for k, v in metrics.items() if not isinstance(v, list)} | {
        "nrmse_per_step": [round(x, 6) for x in metrics["nrmse_per_step"]]}
