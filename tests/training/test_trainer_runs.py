"""Run directories and metadata, the rank-0 rule, the disk preflight, signals and W&B (offline)."""

import json
import os
import signal

import pytest
import toy_training as toy

import ups.training.runs as runs
import ups.training.trainer as trainer_mod
from ups.config import ExperimentConfig, load_config
from ups.errors import UPSError
from ups.io_utils import file_fingerprint
from ups.training.runs import JsonlLog, RunDir, SignalFlag, is_main_process


def _cfg() -> ExperimentConfig:
    return ExperimentConfig(name="exp", model={"name": "persistence"})


def test_run_dir_writes_config_and_meta(tmp_path):
    data = tmp_path / "train.h5"
    data.write_bytes(b"abc" * 1000)
    run = RunDir.create(tmp_path / "runs", "r1", _cfg(), data_fingerprints={"train": file_fingerprint(data)})
    assert run.path == tmp_path / "runs" / "r1" and run.checkpoints.is_dir()
    assert load_config(run.config_path) == _cfg()
    meta = json.loads(run.meta_path.read_text())
    assert meta["config_hash"] == _cfg().config_hash() and meta["name"] == "r1"
    assert meta["data"]["train"]["size"] == 3000 and len(meta["data"]["train"]["sha256_head_tail"]) == 64
    assert meta["packages"]["torch"].startswith("2.") and meta["torch_threads"] >= 1
    assert "start_time" in meta and "git_commit" in meta and meta["device_name"]
    again = RunDir.create(tmp_path / "runs", "r1", _cfg())  # taken: a numbered sibling, nothing overwritten
    assert again.path.name == "r1-1" and RunDir.open(run.path).path == run.path
    with pytest.raises(UPSError, match="is not a run directory"):
        RunDir.open(tmp_path)


def test_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(3 * 2**20))
    before = file_fingerprint(f)
    with f.open("r+b") as fh:
        fh.seek(3 * 2**20 - 10)
        fh.write(b"0123456789")  # the tail changes
    assert file_fingerprint(f)["sha256_head_tail"] != before["sha256_head_tail"]


def test_only_rank_zero_writes_and_prints(tmp_path, monkeypatch, capsys):
    assert is_main_process()  # torch.distributed is not initialised here
    monkeypatch.setattr(runs, "is_main_process", lambda: False)
    monkeypatch.setattr(trainer_mod, "is_main_process", lambda: False)
    _, summary = toy.run_toy(tmp_path, epochs=2, progress="lines", grad_norm_warn=1e-3)
    assert summary["status"] == "completed"
    assert not (tmp_path / "train_log.jsonl").exists() and not list(tmp_path.glob("checkpoints/*"))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_too_little_disk_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    stage = toy.ToyStage()
    with pytest.raises(UPSError, match="not enough free disk for the checkpoints of stage 'toy'"):
        trainer_mod.Trainer(stage=stage, config=toy.toy_config(), run_dir=tmp_path).fit(*toy.loaders())
    assert not (tmp_path / "train_log.jsonl").exists()


def test_signal_flag_defers_then_restores():
    old = signal.getsignal(signal.SIGTERM)
    with SignalFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signum == signal.SIGTERM and flag.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait for a step boundary
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is old


def test_log_truncation_keeps_other_stages(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    for stage, step in [("a", 1), ("a", 5), ("b", 9), ("a", 7)]:
        log.write({"stage": stage, "step": step})
    log.truncate_after("a", 5)
    assert [(r["stage"], r["step"]) for r in JsonlLog.read(log.path)] == [("a", 1), ("a", 5), ("b", 9)]


@pytest.mark.slow
def test_wandb_offline_logs_prefixed_metrics(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, summary = toy.run_toy(tmp_path / "run", epochs=2, wandb={"enabled": True, "mode": "offline"},
                             log_prefix="op")
    run = wandb.run
    assert run is not None and summary["status"] == "completed"
    keys = set(run.summary.keys())
    runs.finish_wandb()
    assert wandb.run is None
    assert {"op/loss", "op/val_metric", "op/grad_norm_max", "op/components/loss_forward"} <= keys
    assert list((tmp_path / "run").glob("wandb/offline-run-*"))


def test_progress_bar_mode_shows_loss_lr_and_grad(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs.Reporter, "MININTERVAL", 0.0)
    toy.run_toy(tmp_path, epochs=1, progress="bar")
    captured = capsys.readouterr()
    assert "toy 1/1" in captured.err and "loss=" in captured.err and "lr=" in captured.err
    assert "grad=" in captured.err
    assert "toy epoch 1/1" in captured.out + captured.err  # the epoch line is still printed


def test_resume_with_changed_settings_warns(tmp_path, capsys):
    toy.run_toy(tmp_path, epochs=1)
    toy.run_toy(tmp_path, epochs=2, resume=True, lr=0.5)
    assert "changed training settings ['lr']" in capsys.readouterr().err
