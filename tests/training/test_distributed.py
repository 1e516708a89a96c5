"""Multi-process training (torchrun, gloo, 2 processes of one thread) against one process.

The tiny runs use SGD: Adam divides each gradient by its own running RMS, so a parameter whose true
gradient is exactly zero (the softmax key bias of the UPT decoder is shift-invariant) turns float
summation-order noise of size 1e-8 into steps of size lr, and two mathematically equal runs drift
apart by ~1e-4 in that parameter alone. SGD keeps the comparison about the distributed machinery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from tests.training import ddp_helpers as h

from ups.config import load_config
from ups.errors import ConfigError, UPSError
from ups.training import distributed
from ups.training.launch import train

SGD = ["training.optimizer=sgd", "training.lr=0.05"]
TOL = 1e-5


def _one_process(cfg_path, run_dir):
    torch.set_num_threads(1)
    return train(load_config(cfg_path), run_dir=run_dir, progress=False)


@pytest.fixture(scope="module")
def operator_runs(tmp_path_factory):
    """The operator stage (tiny UPT, 2 epochs x 16 steps) in 2 processes and in 1, same global batch."""
    folder = tmp_path_factory.mktemp("ddp_operator")
    config_path = h.config_file(folder, h.write_data(folder, samples=16), [*h.OPERATOR, *SGD])
    code, out, err = h.finish(h.torchrun(2, ["train", str(config_path), "--run-dir", str(folder / "two")], cwd=folder))
    assert code == 0, err[-3000:]
    _one_process(config_path, folder / "one")
    return folder, config_path, out


def test_two_processes_train_the_operator_as_one_process_does(operator_runs):
    folder, _, out = operator_runs
    for stem in ("operator_last", "operator_best", "operator_ema"):
        assert h.max_abs_diff(h.weights(folder / "two", stem), h.weights(folder / "one", stem)) <= TOL, stem
    done = json.loads((folder / "two" / "stages_done.json").read_text())["operator"]
    assert done["processes"] == 2 and done["rank_weight_spread"] < 1e-12 and done["step"] == 32


def test_rank_zero_alone_writes_and_prints(operator_runs):
    folder, _, out = operator_runs
    files = lambda run: sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))  # noqa: E731
    assert files(folder / "two") == files(folder / "one")  # one log, one set of checkpoints, nothing else
    for epoch in (1, 2):
        assert sum(line.startswith(f"operator epoch {epoch}/2 ") for line in out.splitlines()) == 1
    assert out.count("run directory:") == 1 and out.count("trained:") == 1
    records = [json.loads(line) for line in (folder / "two" / "train_log.jsonl").read_text().splitlines()]
    health = [r["step"] for r in records if r["kind"] == "health"]
    assert health == list(range(1, 33))  # each step logged once, by one process
    one = [r for r in map(json.loads, (folder / "one" / "train_log.jsonl").read_text().splitlines())
           if r["kind"] == "health"]
    two = [r for r in records if r["kind"] == "health"]
    for a, b in zip(one, two):  # the logged losses are the global batch's, as in one process
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)


def test_sigterm_to_the_launcher_then_resume_with_one_then_two_processes(operator_runs):
    folder, config_path, _ = operator_runs
    run = folder / "stopped"
    proc = h.torchrun(2, ["train", str(config_path), "--run-dir", str(run)], cwd=folder)
    h.wait_for_step(run / "train_log.jsonl", 4, proc)
    proc.send_signal(signal.SIGTERM)
    h.finish(proc)
    state = torch.load(run / "checkpoints" / "operator_state.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 16  # stopped in the middle of epoch 0
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "interrupted" for r in log) == 1  # one checkpoint, by rank 0
    # 1 process: resumes the 2-process state; Ctrl-C (SIGINT to the process group: the launcher and the
    # rank, which then gets it twice) stops it once more, in epoch 1
    one = h.torchrun(1, ["train", str(config_path), "--resume", str(run)], cwd=folder)
    h.wait_for_step(run / "train_log.jsonl", 20, one)
    os.killpg(one.pid, signal.SIGINT)
    h.finish(one)
    state = torch.load(run / "checkpoints" / "operator_state.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch_in_epoch"] < 16, (state["epoch"], state["batch_in_epoch"])
    code, _, err = h.finish(h.torchrun(2, ["train", str(config_path), "--resume", str(run)], cwd=folder))
    assert code == 0, err[-3000:]
    for stem in ("operator_last", "operator_best"):
        assert h.max_abs_diff(h.weights(run, stem), h.weights(folder / "two", stem)) <= TOL, stem


def test_every_stage_trains_under_ddp_and_a_nan_on_rank_one_skips_the_step_on_both(tmp_path):
    data = h.write_data(tmp_path)
    nan = ["training.epochs=1", "training.faults.nan_loss_at_batch=[3]"]
    config_path = h.config_file(tmp_path, data,
                                [*h.OPERATOR, *SGD, *nan, "training.faults.nan_loss_rank=1", *h.CORRECTORS])
    code, _, err = h.finish(h.torchrun(2, ["train", str(config_path), "--run-dir", str(tmp_path / "two")],
                                       cwd=tmp_path))
    assert code == 0, err[-3000:]
    done = json.loads((tmp_path / "two" / "stages_done.json").read_text())
    assert list(done) == ["operator", "diff_residual", "consistency_distill", "steady_prior"]
    for stage, info in done.items():  # trainable modules reduced, frozen ones untouched: equal on both ranks
        assert info["status"] == "completed" and info["processes"] == 2 and info["rank_weight_spread"] < 1e-12, stage
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    skipped = [(r["stage"], r["step"]) for r in log if r.get("event") == "nonfinite_loss"]
    assert skipped == [("operator", 3), ("diff_residual", 3), ("consistency_distill", 3)]  # rank 0 skipped too
    assert sum("non-finite loss" in line for line in err.splitlines()) == 3  # printed once each, by rank 0
    # one process with the NaN in its global batch 3 skips that batch: the same weights
    one_config_path = h.config_file(tmp_path, data, [*h.OPERATOR, *SGD, *nan])
    torch.set_num_threads(1)
    train(load_config(one_config_path), stage="operator", run_dir=tmp_path / "one", progress=False)
    two, one = h.weights(tmp_path / "two", "operator_last"), h.weights(tmp_path / "one", "operator_last")
    assert h.max_abs_diff(two, one) <= TOL


def test_baseline_stage_under_ups_train_nproc(tmp_path):
    config_path = h.config_file(tmp_path, h.write_data(tmp_path), [*h.BASELINE, *SGD])
    proc = subprocess.run([sys.executable, "-m", "ups", "train", str(config_path), "--nproc", "2", "--run-dir",
                           str(tmp_path / "two")], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("baseline epoch 2/2 ") == 1
    _one_process(config_path, tmp_path / "one")
    for stem in ("baseline_last", "baseline_best"):
        assert h.max_abs_diff(h.weights(tmp_path / "two", stem), h.weights(tmp_path / "one", stem)) <= TOL, stem


def test_preflight_names_the_setting_when_memory_does_not_fit(tmp_path):
    config_path = h.config_file(tmp_path, h.write_data(tmp_path),
                                [*h.OPERATOR, "training.distributed.memory_fraction=1e-9"])
    with pytest.raises(UPSError, match="preflight: stage 'operator' needs about .* lower data.batch_size") as err:
        _one_process(config_path, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "operator_last.safetensors").exists()


def test_distributed_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="training.distributed.backend='mpi'"):
        load_config(None, ["training.distributed.backend=mpi"])
    with pytest.raises(ConfigError, match="data.batch_size=10 is the global batch .* multiple of 4"):
        distributed.local_batch_size(10, 4)
    assert distributed.local_batch_size(12, 4) == 3 and distributed.world_size() == 1
