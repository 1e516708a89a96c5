"""``ups train``: from a config to trained stages in one run directory.

``train(cfg, stage="all")`` prepares the data (generating missing files when the config says how),
creates the run directory (resolved config, ``meta.json``, ``normalizer.json``, ``data_meta.json``),
and runs each requested stage on the one :class:`~ups.training.trainer.Trainer`:

- ``stage="all"``: every stage named in ``cfg.stages`` in pipeline order (operator -> diff_residual
  -> consistency_distill -> steady_prior; peers' ``baseline`` stands alone), skipping those whose
  ``epochs`` is 0; each stage loads what it ``requires`` from the same run directory.
- ``stage=NAME``: that stage only; a missing prerequisite checkpoint fails with one line.
- ``resume=RUN_DIR``: continue that run with its saved config; finished stages are skipped, the
  interrupted one resumes exactly (its ``{stage}_state.pt``), later ones start fresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ups.config import ExperimentConfig, load_config
from ups.data.datasets import make_loader
from ups.data.normalization import Normalizer
from ups.data.prepare import DataBundle, fit_normalizer, prepare_data
from ups.errors import CheckpointError, ConfigError
from ups.io_utils import atomic_write_json
from ups.training import distributed
from ups.training.checkpoint import checkpoint_exists, seed_everything
from ups.training.runs import RunDir, file_fingerprint, finish_wandb
from ups.training.stage import STAGES, Stage
from ups.training.trainer import Trainer

PIPELINE_ORDER = ("operator", "diff_residual", "consistency_distill", "steady_prior")


def stages_to_run(cfg: ExperimentConfig, stage: str) -> list[str]:
    """The stage names ``ups train --stage`` runs, in order."""
    if stage != "all":
        STAGES.get(stage)  # one-line error listing the allowed stages
        if stage not in cfg.stages:
            raise ConfigError(f"config error: stage '{stage}' has no section under stages: in this config "
                              f"(configured: {', '.join(cfg.stages) or 'none'})")
        return [stage]
    named = [s for s in PIPELINE_ORDER if s in cfg.stages] + [s for s in cfg.stages if s not in PIPELINE_ORDER]
    return [s for s in named if cfg.stage_training(s).epochs > 0]


def check_prerequisites(run: RunDir, stage: str) -> None:
    """Fail with one line when a stage's required checkpoints are not in the run directory."""
    for req in STAGES.get(stage).requires:
        if not checkpoint_exists(run.checkpoints / f"{req}_best"):
            raise CheckpointError(
                f"stage '{stage}' needs the '{req}' checkpoint ({run.checkpoints / (req + '_best')}.safetensors), "
                f"which is missing: run `ups train CONFIG --stage {req}` first, or `--stage all`"
            )


def _stage_done(run: RunDir) -> dict:
    import json

    path = run.path / "stages_done.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_stage(cfg: ExperimentConfig, run: RunDir, name: str, bundle: DataBundle, norm: Normalizer) -> dict:
    """Build one stage, its loaders and the trainer, and fit it; returns the trainer's summary."""
    check_prerequisites(run, name)
    cls: type[Stage] = STAGES.get(name)
    seed_everything(cfg.stage_training(name).seed)  # the same initial weights in every process and run
    stage = cls.build(cfg=cfg, meta=bundle.meta, normalizer=norm, run_dir=run.path)
    tcfg = cfg.stage_training(name)
    train_ds = bundle.windows("train", window=cls.train_window(cfg), normalizer=norm, train=True, seed=tcfg.seed)
    val_window = cls.val_window(cfg)
    val_ds = bundle.windows("val", window=val_window, normalizer=norm,
                            start=cfg.eval.rollout_start if val_window is None else 0)
    batch = cfg.data.batch_size  # the global batch; each rank loads its shard of every one
    distributed.local_batch_size(batch, distributed.world_size())  # one-line error when it does not divide
    train_loader = make_loader(train_ds, batch_size=batch, shuffle=True, seed=tcfg.seed,
                               num_workers=cfg.data.num_workers, drop_last=len(train_ds) > batch,
                               early_oversample=cfg.data.early_oversample, early_frames=cfg.data.early_frames,
                               distributed=True)
    val_loader = make_loader(val_ds, batch_size=cfg.eval.batch_size, shuffle=False, seed=0)
    resume = (run.checkpoints / f"{name}_state.pt").is_file()
    trainer = Trainer(stage=stage, config=tcfg, run_dir=run.path, resume=resume, log_prefix=name)
    summary = trainer.fit(train_loader, val_loader)
    spread = distributed.weight_spread(stage.modules().values())  # the ranks must end with the same weights
    if distributed.is_main():
        done = _stage_done(run)
        done[name] = {k: summary.get(k) for k in ("status", "epochs", "step", "best_metric", "elapsed_s")}
        if distributed.is_active():
            done[name].update(processes=distributed.world_size(), rank_weight_spread=spread)
            if spread > 0:
                print(f"warning: stage {name}: the {distributed.world_size()} processes ended with different "
                      f"weights (spread {spread:.3g}); please report this", file=sys.stderr)
        atomic_write_json(run.path / "stages_done.json", done)
    distributed.barrier()  # the next stage (and the caller) reads what rank 0 wrote
    return summary


def open_or_create_run(cfg: ExperimentConfig, bundle: DataBundle, *, resume: str | Path | None,
                       run_dir: str | Path | None) -> tuple[RunDir, Normalizer]:
    """A new run directory (with normaliser and metadata), or the one being resumed."""
    if resume is not None:
        run = RunDir.open(resume)
        return run, Normalizer.from_json(run.path / "normalizer.json")
    fingerprints = {s: [file_fingerprint(p.file.path) for p in src.parts] for s, src in bundle.splits.items()}
    if not distributed.is_main():  # rank 0 picks (and creates) the directory; the others use the same one
        run = RunDir(Path(distributed.broadcast_object(None)))
    elif run_dir is not None:
        run = RunDir.create(Path(run_dir).parent, Path(run_dir).name, cfg, data_fingerprints=fingerprints)
    else:
        run = RunDir.create(cfg.run.out_dir, cfg.run.name, cfg, data_fingerprints=fingerprints)
    if distributed.is_main():
        distributed.broadcast_object(str(run.path))
    norm = fit_normalizer(bundle)
    if distributed.is_main():
        norm.to_json(run.path / "normalizer.json")
        atomic_write_json(run.path / "data_meta.json", bundle.meta.to_dict())
    return run, norm


def train(cfg: ExperimentConfig, *, stage: str = "all", resume: str | Path | None = None,
          run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Train the requested stages; returns the run directory."""
    if resume is not None:
        cfg = load_config(RunDir.open(resume).config_path)  # the run's own resolved config
    names = stages_to_run(cfg, stage)
    reqs = STAGES.get(stage).requires if stage != "all" else ()
    if resume is None and reqs:  # a new run directory cannot hold the prerequisite yet
        raise CheckpointError(f"stage '{stage}' needs the '{reqs[0]}' checkpoint of an earlier run: pass "
                              f"--resume RUN_DIR (a run that trained '{reqs[0]}'), or use --stage all")
    if not names:
        raise ConfigError("config error: no stage to train (every stage under stages: has epochs 0)")
    with distributed.session(cfg.training.distributed):  # a process group when launched by torchrun
        bundle = _prepare(cfg, progress)
        run, norm = open_or_create_run(cfg, bundle, resume=resume, run_dir=run_dir)
        done = _stage_done(run) if resume is not None else {}
        say = print if distributed.is_main() else (lambda *a, **k: None)
        say(f"run directory: {run.path}" + (f" ({distributed.world_size()} processes)"
                                            if distributed.is_active() else ""))
        try:
            for name in names:
                if name in done and done[name].get("status") != "interrupted":
                    say(f"stage {name}: already finished in this run, skipped")
                    continue
                summary = run_stage(cfg, run, name, bundle, norm)
                say(f"stage {name}: {summary.get('status')} after {summary.get('epochs')} epochs, "
                    f"best {STAGES.get(name).val_metric} = {summary.get('best_metric')}")
        finally:
            finish_wandb()
    return run.path


def _prepare(cfg: ExperimentConfig, progress: bool) -> DataBundle:
    """``prepare_data``; under torchrun the first rank of each machine generates missing files first."""
    if distributed.local_rank() == 0:
        bundle = prepare_data(cfg.data, splits=("train", "val"), progress=progress and distributed.is_main())
    distributed.barrier()
    if distributed.local_rank() != 0:
        bundle = prepare_data(cfg.data, splits=("train", "val"), progress=False)
    return bundle
