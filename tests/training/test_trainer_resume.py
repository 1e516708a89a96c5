"""Interrupt (SIGINT/SIGTERM) and resume: the final weights equal an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import toy_training as toy

from ups.errors import CheckpointError
from ups.training.runs import JsonlLog, TrainingInterrupted
from ups.training.trainer import Trainer

# accumulation, EMA, warmup + cosine, dropout (RNG in the loss), shuffled loader (RNG in the order)
SETUP = {"epochs": 5, "grad_accum": 2, "ema_decay": 0.9, "warmup_steps": 3, "health_every": 3}
STAGE = {"dropout": 0.2}


class SignalAt(Trainer):
    """Sends itself a real signal after optimizer step ``at`` (the handler defers it to a boundary)."""

    def __init__(self, *, at: int, signum: int = signal.SIGTERM, **kw):
        super().__init__(**kw)
        self.at, self.signum = at, signum

    def optimizer_step(self) -> None:
        super().optimizer_step()
        if self.step == self.at:
            os.kill(os.getpid(), self.signum)


def _trainer(cls, run_dir: Path, *, resume: bool = False, **kw):
    torch.manual_seed(0)
    stage = toy.ToyStage(**STAGE)
    train, val = toy.loaders()
    return stage, cls(stage=stage, config=toy.toy_config(**SETUP), run_dir=run_dir, resume=resume, **kw), train, val


def _compare_logs(a: Path, b: Path) -> None:
    """The resumed run's health/epoch records equal the uninterrupted run's (apart from timing)."""
    def records(path):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in JsonlLog.read(path / "train_log.jsonl")
                if r["kind"] in ("health", "epoch")]
    assert records(a) == records(b)


@pytest.mark.parametrize(("at", "signum"), [(7, signal.SIGTERM), (12, signal.SIGINT)])
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, at, signum):
    # 8 batches per epoch, accumulation 2: 4 steps per epoch; step 7 is mid-epoch 1, step 12 ends epoch 2
    ref_stage, ref, train, val = _trainer(Trainer, tmp_path / "ref")
    ref_summary = ref.fit(train, val)

    stage, trainer, train, val = _trainer(SignalAt, tmp_path / "run", at=at, signum=signum)
    with pytest.raises(TrainingInterrupted) as err:
        trainer.fit(train, val)
    assert err.value.exit_code == 130 and err.value.step == at
    assert "resume with: ups train CONFIG --resume" in str(err.value) and str(tmp_path / "run") in str(err.value)
    assert signal.getsignal(signum) is not trainer._signals._handle  # handlers restored

    stage, resumed, train, val = _trainer(Trainer, tmp_path / "run", resume=True)
    summary = resumed.fit(train, val)
    assert toy.max_abs_diff(toy.weights(stage), toy.weights(ref_stage)) < 1e-6
    assert all(torch.allclose(resumed.ema.shadow[k], ref.ema.shadow[k], atol=1e-6) for k in ref.ema.shadow)
    assert summary["step"] == ref_summary["step"] == 20
    assert summary["best_metric"] == pytest.approx(ref_summary["best_metric"], abs=1e-7)
    _compare_logs(tmp_path / "ref", tmp_path / "run")
    events = [r["event"] for r in JsonlLog.read(tmp_path / "run" / "train_log.jsonl") if r["kind"] == "event"]
    assert events == ["interrupted", "resumed"]


def test_resume_without_state_is_a_one_line_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stage, trainer, train, val = _trainer(Trainer, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="training state not found.*start it again without --resume"):
        trainer.fit(train, val)


def test_resume_of_a_finished_run_does_no_more_work(tmp_path):
    stage, trainer, train, val = _trainer(Trainer, tmp_path)
    first = trainer.fit(train, val)
    before = toy.weights(stage)
    stage, again, train, val = _trainer(Trainer, tmp_path, resume=True)
    second = again.fit(train, val)
    assert second["step"] == first["step"] and second["epochs"] == first["epochs"]
    assert toy.max_abs_diff(toy.weights(stage), before) == 0.0


def _wait_for_epoch(log: Path, epoch: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before epoch {epoch}: {proc.communicate()}")
        if any(r["kind"] == "epoch" and r["epoch"] == epoch for r in JsonlLog.read(log)):
            return
        time.sleep(0.01)
    raise AssertionError("no epoch record in time")


@pytest.mark.slow
def test_sigterm_in_a_subprocess_then_resume(tmp_path):
    script = Path(toy.__file__)
    run_dir = tmp_path / "run"
    overrides = {**SETUP, "stage_kw": {**STAGE, "sleep_s": 0.03}}
    env = {**os.environ, "PYTHONPATH": str(script.parent)}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), json.dumps(overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_epoch(run_dir / "train_log.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: ups train CONFIG --resume" in err
    assert (run_dir / "checkpoints" / "toy_last.safetensors").is_file()

    stage, resumed, train, val = _trainer(Trainer, run_dir, resume=True)
    assert resumed.fit(train, val)["status"] == "completed"
    ref_stage, ref, train, val = _trainer(Trainer, tmp_path / "ref")
    ref.fit(train, val)
    assert toy.max_abs_diff(toy.weights(stage), toy.weights(ref_stage)) < 1e-6
