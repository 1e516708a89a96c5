"""``ups train``: from a config to trained stages in one run directory.

``train(exp, stage="all")`` prepares the data (generating missing files when the config says how),
creates the run directory (resolved config, ``meta.json``, ``normalizer.json``, ``data_meta.json``),
and runs each requested stage on the one :class:`~ups.training.trainer.Trainer`:

- ``stage="all"``: every stage named in ``exp.stages`` in pipeline order (operator -> diff_residual
  -> consistency_distill -> steady_prior; peers' ``baseline`` stands alone), skipping those whose
  ``epochs`` is 0; each stage loads what it ``requires`` from the same run directory.
- ``stage=NAME``: that stage only; a missing prerequisite checkpoint fails with one line.
- ``resume=RUN_DIR``: continue that run with its saved config; finished stages are skipped, the
  interrupted one resumes exactly (its ``{stage}_state.pt``), later ones start fresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ups.checkpoint import seed_everything
from ups.config import ExperimentConfig
from ups.data.normalization import Normalizer, load_normalizer
from ups.data.prepare import DataBundle, fit_normalizer, prepare_data, stage_loaders
from ups.errors import CheckpointError, ConfigError
from ups.io_utils import atomic_write_json, file_fingerprint
from ups.rundir import load_run_config
from ups.training import distributed
from ups.training.runs import RunDir, finish_wandb
from ups.training.stage import STAGES, Stage
from ups.training.trainer import Trainer

PIPELINE_ORDER = ("operator", "diff_residual", "consistency_distill", "steady_prior")


def stages_to_run(exp: ExperimentConfig, stage: str) -> list[str]:
    """The stage names ``ups train --stage`` runs, in order."""
    if stage != "all":
        STAGES.get(stage)  # one-line error listing the allowed stages
        if stage not in exp.stages:
            raise ConfigError(f"config error: stage '{stage}' has no section under stages: in this config "
                              f"(configured: {', '.join(exp.stages) or 'none'})")
        return [stage]
    named = [s for s in PIPELINE_ORDER if s in exp.stages] + [s for s in exp.stages if s not in PIPELINE_ORDER]
    return [s for s in named if exp.stage_training(s).epochs > 0]


def check_prerequisites(run: RunDir, stage: str) -> None:
    """Fail with one line when a stage's required checkpoints are not in the run directory."""
    for req in STAGES.get(stage).requires:
        if not run.has_stage(req):
            raise CheckpointError(
                f"stage '{stage}' needs the '{req}' checkpoint ({run.stage_stem(req)}.safetensors), "
                f"which is missing: run `ups train CONFIG --stage {req}` first, or `--stage all`"
            )


def run_stage(exp: ExperimentConfig, run: RunDir, name: str, bundle: DataBundle, norm: Normalizer) -> dict:
    """Build one stage, its loaders and the trainer, and fit it; returns the trainer's summary."""
    check_prerequisites(run, name)
    cls: type[Stage] = STAGES.get(name)
    train_cfg = exp.stage_training(name)
    seed_everything(train_cfg.seed)  # the stage's initial weights depend on the config only, not on what ran before
    stage_cfg = cls.stage_config(exp)
    stage = cls.build(stage_cfg=stage_cfg, exp=exp, meta=bundle.meta, normalizer=norm, run_dir=run.path)
    distributed.local_batch_size(exp.data.batch_size, distributed.world_size())  # the global batch must divide
    train_loader, val_loader = stage_loaders(bundle, exp, normalizer=norm, train_window=stage.training_window(),
                                             val_window=cls.val_window(stage_cfg), seed=train_cfg.seed)
    resume = run.state_path(name).is_file()
    trainer = Trainer(stage=stage, config=train_cfg, run_dir=run.path, resume=resume, log_prefix=name)
    summary = trainer.fit(train_loader, val_loader)
    spread = distributed.weight_spread(stage.modules().values())  # the ranks must end with the same weights
    if distributed.is_main():
        extra = {"processes": distributed.world_size(), "rank_weight_spread": spread} if distributed.is_active() else {}
        run.mark_stage_done(name, summary, **extra)
        if spread > 0:
            print(f"warning: stage {name}: the {distributed.world_size()} processes ended with different weights "
                  f"(spread {spread:.3g}); please report this", file=sys.stderr)
    distributed.barrier()  # the next stage (and the caller) reads what rank 0 wrote
    return summary


def open_or_create_run(exp: ExperimentConfig, bundle: DataBundle, *, resume: str | Path | None,
                       run_dir: str | Path | None) -> tuple[RunDir, Normalizer]:
    """A new run directory (with normaliser and metadata), or the one being resumed."""
    if resume is not None:
        run = RunDir.open(resume)
        return run, load_normalizer(run.normalizer_path)
    fingerprints = {s: [file_fingerprint(p.file.path) for p in src.parts] for s, src in bundle.splits.items()}
    if not distributed.is_main():  # rank 0 picks (and creates) the directory; the others use the same one
        run = RunDir(Path(distributed.broadcast_object(None)))
    elif run_dir is not None:
        run = RunDir.create(Path(run_dir).parent, Path(run_dir).name, exp, data_fingerprints=fingerprints)
    else:
        run = RunDir.create(exp.run.out_dir, exp.run.name, exp, data_fingerprints=fingerprints)
    if distributed.is_main():
        distributed.broadcast_object(str(run.path))
    norm = fit_normalizer(bundle)
    if distributed.is_main():
        norm.to_json(run.normalizer_path)
        atomic_write_json(run.data_meta_path, bundle.meta.to_dict())
    return run, norm


def train(exp: ExperimentConfig, *, stage: str = "all", resume: str | Path | None = None,
          run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Train the requested stages; returns the run directory."""
    if resume is not None:
        exp = load_run_config(resume)  # the run's own resolved config, its data paths as recorded
        if exp.data.generate is None:
            load_run_config(resume, need=("train", "val", "pdebench_file"))
    names = stages_to_run(exp, stage)
    reqs = STAGES.get(stage).requires if stage != "all" else ()
    if resume is None and reqs:  # a new run directory cannot hold the prerequisite yet
        raise CheckpointError(f"stage '{stage}' needs the '{reqs[0]}' checkpoint of an earlier run: pass "
                              f"--resume RUN_DIR (a run that trained '{reqs[0]}'), or use --stage all")
    if not names:
        raise ConfigError("config error: no stage to train (every stage under stages: has epochs 0)")
    with distributed.session(exp.training.distributed):  # a process group when launched by torchrun
        bundle = _prepare(exp, progress)
        run, norm = open_or_create_run(exp, bundle, resume=resume, run_dir=run_dir)
        done = run.stages_done() if resume is not None else {}
        say = print if distributed.is_main() else (lambda *a, **k: None)
        say(f"run directory: {run.path}" + (f" ({distributed.world_size()} processes)"
                                            if distributed.is_active() else ""))
        try:
            for name in names:
                if name in done and done[name].get("status") != "interrupted":
                    say(f"stage {name}: already finished in this run, skipped")
                    continue
                summary = run_stage(exp, run, name, bundle, norm)
                say(f"stage {name}: {summary.get('status')} after {summary.get('epochs')} epochs, "
                    f"best {STAGES.get(name).val_metric} = {summary.get('best_metric')}")
        finally:
            finish_wandb()
    return run.path


def _prepare(exp: ExperimentConfig, progress: bool) -> DataBundle:
    """``prepare_data``; under torchrun the first rank of each machine generates missing files first."""
    if distributed.local_rank() == 0:
        bundle = prepare_data(exp.data, splits=("train", "val"), progress=progress and distributed.is_main())
    distributed.barrier()
    if distributed.local_rank() != 0:
        bundle = prepare_data(exp.data, splits=("train", "val"), progress=False)
    return bundle
