"""Exact resume on the real ``ups train`` path: a run sent SIGTERM in the middle of epoch 2 and resumed
with ``--resume`` ends with the weights of an uninterrupted run, for the operator stage (random shifts,
input noise and query subsets from its own generator; random sub-cell offsets; a shuffled loader), a
U-Net baseline and the diff_residual corrector; a resumed run with ``time_budget_s`` stops at the same
total budget (an injected clock, not the wall clock).

The runs go through ``ups.cli.main`` in this process (one thread, set by ``conftest``); the signal is a
real SIGTERM the trainer sends itself after a chosen batch (``training.faults.sigterm_at_batch``).
``test_resume_is_exact_in_a_fresh_process`` repeats the operator case on two threads and resumes it in a
subprocess with another ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ups.training.trainer as trainer_mod
from helpers import write_ups_file
from ups.cli import main
from ups.config import load_config
from ups.training.runs import JsonlLog

TINY_UPT = ["model.name=upt", "model.params.latent_dim=8", "model.params.num_supernodes=4", "model.params.heads=2",
            "model.params.operator_depth=1", "model.params.kernel_hidden=8", "model.params.decoder_hidden=8"]
# 4 samples x 4 windows of 3 frames = 16 training items, batches of 4: 4 batches (steps) per epoch
BASE = ["data.batch_size=4", "data.spatial_stride=2", "data.random_offset=true", "training.epochs=3",
        "training.progress=none", "training.device=cpu", "training.ema_decay=0.9", "training.warmup_steps=2",
        "eval.batch_size=4"]
OPERATOR = ["stages.operator.rollout_steps=2", "stages.operator.rollout_ramp_steps=4",
            "stages.operator.input_noise=0.05", "stages.operator.random_shift=true",
            "stages.operator.query_fraction=0.5"]
MID_EPOCH_2 = 5  # global batch 5 = the second batch of epoch 2 (index 1)


def _data(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    x = (np.arange(32) + 0.5) / 32
    paths = {}
    for i, split in enumerate(("train", "val")):
        amp = rng.uniform(0.5, 1.5, size=(4, 1, 1))
        phase = rng.uniform(0, 1, size=(4, 1, 1))
        u = amp * np.sin(2 * np.pi * (x[None, None, :] - phase - 0.05 * np.arange(6)[None, :, None]))
        paths[split] = write_ups_file(tmp_path / f"{split}.hdf5", u.astype(np.float32), seed=i)
    return [f"data.train={paths['train']}", f"data.val={paths['val']}"]


def _config_file(tmp_path: Path, overrides: list[str]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(load_config(None, [*_data(tmp_path), *BASE, *overrides]).to_yaml())
    return path


def _train(config: Path, run: Path, *extra: str) -> int:
    return main(["train", str(config), "--run-dir", str(run), *extra])


def _weights(run: Path, stem: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{stem}.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _interrupt_and_resume(tmp_path: Path, overrides: list[str], fault_stage: str, stages: list[str]):
    """An uninterrupted run and one sent SIGTERM after global batch 5 of ``fault_stage`` then resumed."""
    config = _config_file(tmp_path, overrides)
    assert _train(config, tmp_path / "ref") == 0
    fault = f"stages.{fault_stage}.training={{faults: {{sigterm_at_batch: {MID_EPOCH_2}}}}}"
    faulty = _config_file(tmp_path / "f", [*overrides, fault])
    assert _train(faulty, tmp_path / "run") == 130  # interrupted
    state = torch.load(tmp_path / "run" / "checkpoints" / f"{fault_stage}_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["batch_in_epoch"] >= 1  # stopped in the middle of epoch 2
    assert _train(faulty, tmp_path / "run", "--resume", str(tmp_path / "run")) == 0
    for stem in stages:
        diff = _max_diff(_weights(tmp_path / "ref", stem), _weights(tmp_path / "run", stem))
        assert diff <= 1e-6, (stem, diff)
    ref = [r for r in JsonlLog.read(tmp_path / "ref" / "train_log.jsonl") if r["kind"] == "epoch"]
    got = [r for r in JsonlLog.read(tmp_path / "run" / "train_log.jsonl") if r["kind"] == "epoch"]
    assert [(r["stage"], r["epoch"], r["step"]) for r in got] == [(r["stage"], r["epoch"], r["step"]) for r in ref]
    for a, b in zip(ref, got):
        assert a["val_metric"] == pytest.approx(b["val_metric"], rel=1e-5, abs=1e-7)


def test_operator_stage_resumes_exactly(tmp_path):
    _interrupt_and_resume(tmp_path, [*TINY_UPT, *OPERATOR], "operator",
                          ["operator_last", "operator_ema", "operator_best"])


def test_operator_stage_with_early_oversampling_resumes_exactly(tmp_path):
    _interrupt_and_resume(tmp_path, [*TINY_UPT, *OPERATOR, "data.early_oversample=2.0"], "operator",
                          ["operator_last", "operator_ema"])


def test_operator_stage_on_point_clouds_resumes_exactly(tmp_path):
    _interrupt_and_resume(tmp_path, [*TINY_UPT, *OPERATOR, "data.point_subset={fraction: 0.5, min_points: 4}"],
                          "operator", ["operator_last", "operator_ema"])


def test_unet_baseline_resumes_exactly(tmp_path):
    unet = ["model.name=unet1d", "model.params.width=8", "model.params.depth=2", "model.params.groups=4",
            "stages.baseline.unroll_steps=2", "stages.baseline.input_noise=0.05"]
    _interrupt_and_resume(tmp_path, unet, "baseline", ["baseline_last", "baseline_ema"])


def test_diff_residual_resumes_exactly(tmp_path):
    overrides = [*TINY_UPT, *OPERATOR, "stages.operator.training={epochs: 1}", "stages.diff_residual={}",
                 "stages.diff_residual.residual_iters=2", "stages.diff_residual.stats_batches=2",
                 "stages.diff_residual.corrector.width=8", "stages.diff_residual.corrector.depth=1",
                 "stages.diff_residual.corrector.heads=2", "stages.diff_residual.corrector.tau_features=8"]
    _interrupt_and_resume(tmp_path, overrides, "diff_residual",
                          ["operator_last", "diff_residual_last", "diff_residual_ema"])


def test_operator_resumes_exactly_after_a_crash_at_an_epoch_end(tmp_path, monkeypatch):
    """A process killed right after the checkpoint that ends epoch 1 (no signal handling: a crash, kill -9)
    resumes from that epoch-end state: the loader's generator must not replay epoch 0's order."""
    overrides = [*TINY_UPT, *OPERATOR]
    config = _config_file(tmp_path, overrides)
    assert _train(config, tmp_path / "ref") == 0
    real = trainer_mod.Trainer.save_checkpoints

    def crash_after_epoch_1(self, which):
        real(self, which)
        if which == "last" and self.epoch == 1 and self.batch_in_epoch == 0:
            raise RuntimeError("killed")

    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoints", crash_after_epoch_1)
    with pytest.raises(RuntimeError, match="killed"):
        _train(config, tmp_path / "run")
    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoints", real)
    assert _train(config, tmp_path / "run", "--resume", str(tmp_path / "run")) == 0
    for stem in ("operator_last", "operator_ema"):
        assert _max_diff(_weights(tmp_path / "ref", stem), _weights(tmp_path / "run", stem)) <= 1e-6


def test_dataset_offsets_change_every_epoch_through_the_trainer(tmp_path, monkeypatch):
    """The trainer calls ``set_epoch`` on the dataset: the sub-cell offsets differ between epochs and are
    the same for the same seed and epoch (recorded from the batches the stage trains on)."""
    from ups.training.stages.operator import OperatorStage

    seen: list[list[float]] = []
    original = OperatorStage.loss

    def recording(self, batch, *, epoch, step):
        seen.append(batch["coords"][:, 0, 0].tolist())  # the first point's x = the item's offset
        return original(self, batch, epoch=epoch, step=step)

    monkeypatch.setattr(OperatorStage, "loss", recording)
    config = _config_file(tmp_path, [*TINY_UPT, *OPERATOR])
    assert _train(config, tmp_path / "a") == 0
    first, seen[:] = list(seen), []
    assert _train(config, tmp_path / "b") == 0
    assert seen == first  # same seed: the same offsets, epoch by epoch
    epochs = [sorted(x for batch in first[e * 4:(e + 1) * 4] for x in batch) for e in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert len({x for batch in first for x in batch}) == 2  # stride 2: both sub-cell offsets occur


class StepClock:
    """A fake clock that advances 1 s per training batch (the trainer's only clock here)."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_resumed_run_stops_at_the_same_total_time_budget(tmp_path, monkeypatch):
    """Budget 6.5 s at 1 s per batch: the uninterrupted run stops after step 7 (in epoch 2); a run
    interrupted after batch 5 and resumed in a 'new process' (a clock restarted elsewhere) continues the
    same clock-annealed schedule and stops at the same step, with the same weights."""
    from ups.training.stages.operator import OperatorStage

    clock = StepClock(0.0)
    original = OperatorStage.loss

    def ticking(self, batch, *, epoch, step):
        clock.now += 1.0
        return original(self, batch, epoch=epoch, step=step)

    monkeypatch.setattr(OperatorStage, "loss", ticking)
    monkeypatch.setattr(trainer_mod, "default_clock", clock)
    budget = [*TINY_UPT, *OPERATOR, "training.epochs=20", "training.time_budget_s=6.5", "training.health_every=1"]
    config = _config_file(tmp_path, budget)
    assert _train(config, tmp_path / "ref") == 0
    faulty = _config_file(tmp_path / "f", [*budget, f"training.faults.sigterm_at_batch={MID_EPOCH_2}"])
    clock.now = 100.0
    assert _train(faulty, tmp_path / "run") == 130
    clock.now = 5000.0  # the resumed process's clock reads something else entirely
    assert _train(faulty, tmp_path / "run", "--resume", str(tmp_path / "run")) == 0
    done = [json.loads((tmp_path / r / "stages_done.json").read_text())["operator"] for r in ("ref", "run")]
    assert done[0]["status"] == done[1]["status"] == "time_budget"
    assert done[0]["step"] == done[1]["step"] == 7
    ticks_accounted = [round(d["elapsed_s"]) for d in done]  # the fake clock ticks 1 s per batch
    assert ticks_accounted == [7, 7]  # the resumed run carried the 5 ticks spent before SIGTERM

    def lrs(run):
        return [r["lr"] for r in JsonlLog.read(tmp_path / run / "train_log.jsonl") if r["kind"] == "health"]

    assert lrs("run") == pytest.approx(lrs("ref"), rel=1e-9) and len(lrs("ref")) == 7
    assert _max_diff(_weights(tmp_path / "ref", "operator_last"), _weights(tmp_path / "run", "operator_last")) <= 1e-6


@pytest.mark.slow
def test_resume_is_exact_in_a_fresh_process(tmp_path):
    """On two threads, the run interrupted here is resumed in a fresh process with another
    ``PYTHONHASHSEED``, and ends where an uninterrupted run does."""
    config = _config_file(tmp_path, [*TINY_UPT, *OPERATOR])
    faulty = _config_file(tmp_path / "f", [*TINY_UPT, *OPERATOR, f"training.faults.sigterm_at_batch={MID_EPOCH_2}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _train(config, tmp_path / "ref") == 0
        assert _train(faulty, tmp_path / "run") == 130
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "2"}
    code = "import sys, torch; torch.set_num_threads(2); from ups.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "train", str(faulty), "--resume", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    diff = _max_diff(_weights(tmp_path / "ref", "operator_last"), _weights(tmp_path / "run", "operator_last"))
    assert diff <= 1e-6
