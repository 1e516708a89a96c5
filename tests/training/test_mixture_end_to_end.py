"""One model across PDEs end to end (configs/multi1d_quick.yaml): generate tiny Burgers, KS and
diffusion-reaction data, train one UPS model on the mixture through the CLI, validate per PDE, and
evaluate per PDE with the one scorer, on the run's own test splits and on one PDE's file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import random_fields, write_ups_file
from ups.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "multi1d_quick.yaml"
PDES = ("burgers1d", "ks1d", "diffusion_reaction1d")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the config's relative data paths land here
        assert main(["train", str(CONFIG), "--run-dir", "run"]) == 0
        assert main(["eval", "run"]) == 0
    return root


def test_validation_scores_every_pde(trained):
    records = [json.loads(line) for line in (trained / "run" / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_rollout_nrmse" in r][-1]
    per = [val[f"val_rollout_nrmse_{name}"] for name in PDES]
    assert all(math.isfinite(v) and v > 0 for v in per)
    assert math.isclose(val["val_rollout_nrmse"], sum(per) / 3, rel_tol=1e-9)  # the mean over the PDEs


def test_eval_reports_metrics_per_pde(trained):
    result = json.loads((trained / "run" / "eval_test.json").read_text())
    assert result["mixture"] == list(PDES) and set(result["per_pde"]) == set(PDES)
    frames = {"burgers1d": 5, "ks1d": 21, "diffusion_reaction1d": 5}  # test frames after each temporal stride
    for name, res in result["per_pde"].items():
        m = res["metrics"]
        assert math.isfinite(m["nrmse"]) and res["data"]["samples"] == 2 and res["run"]["pde"] == name
        assert m["steps"] == frames[name] - 1 and "persistence" in res["baselines"]
        assert math.isclose(result["metrics"]["nrmse_per_pde"][name], m["nrmse"], rel_tol=1e-12)
        assert (trained / "run" / f"pde_{name}" / "report.html").is_file()
    # each PDE is scored with its own physical metadata: high-correlation times in its own time units
    dts = {"burgers1d": 0.25, "ks1d": 0.2, "diffusion_reaction1d": 0.025}
    for name, res in result["per_pde"].items():
        for metrics in (res["metrics"], res["baselines"]["persistence"]):
            for corr in metrics["high_corr"].values():
                assert math.isclose(corr["time"], corr["steps"] * dts[name], rel_tol=1e-5, abs_tol=1e-12)
    # persistence of a KS state stays correlated for a few steps, so the check above bites
    assert result["per_pde"]["ks1d"]["baselines"]["persistence"]["high_corr"]["0.8"]["steps"] > 0
    mean = sum(result["metrics"]["nrmse_per_pde"].values()) / 3
    assert math.isclose(result["metrics"]["nrmse_mean_over_pdes"], mean, rel_tol=1e-12)


def test_eval_on_one_pde_file_matches_the_mixture_eval(trained, monkeypatch):
    monkeypatch.chdir(trained)
    assert main(["eval", "run", "--data", "data/multi1d_quick/ks1d/test.h5", "--out", "ks_only"]) == 0
    alone = json.loads((trained / "ks_only" / "eval_test.json").read_text())
    mixed = json.loads((trained / "run" / "eval_test.json").read_text())
    assert list(alone["per_pde"]) == ["ks1d"]
    for key in ("nrmse", "nrmse_one_step", "corr_time"):  # the same samples through the same scorer
        assert math.isclose(alone["per_pde"]["ks1d"]["metrics"][key], mixed["per_pde"]["ks1d"]["metrics"][key],
                            rel_tol=1e-6, abs_tol=1e-9)


def test_eval_on_a_file_of_another_pde_is_one_line(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    u = random_fields(2, 5, 256, seed=0)
    write_ups_file(trained / "adv.h5", u, pde="advection1d", params={"beta": 1.0})
    assert main(["eval", "run", "--data", "adv.h5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds pde=advection1d" in err[0] and "burgers1d, ks1d, diffusion_reaction1d" in err[0]


def test_pipeline_and_infer_say_what_to_use_for_a_mixture(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert main(["pipeline", str(CONFIG)]) == 2
    assert main(["infer", "run", "--input", "data/multi1d_quick/ks1d/test.h5", "--steps", "2", "--out", "o.h5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "ups eval RUN_DIR" in err[0] and "ups eval RUN_DIR --data FILE" in err[1]


def test_a_mixture_run_resumes_exactly(trained, monkeypatch):
    """SIGTERM in the middle of epoch 2 and ``--resume``: the weights of an uninterrupted run (mixed batches,
    PDE balance, early oversampling over the members' window starts, per-member normalisers from the run)."""
    import torch
    from safetensors.torch import load_file

    from ups.config import load_config

    monkeypatch.chdir(trained)
    # 3 members x 36 KS windows (balanced) = 108 items: 6 batches of 16 per epoch; batch 8 is in epoch 2
    base = ["training.epochs=3", "training.max_steps=null", "data.early_oversample=2.0", "data.batch_size=16"]
    for name, extra in (("ref.yaml", []), ("fault.yaml", ["training.faults.sigterm_at_batch=8"])):
        (trained / name).write_text(load_config(CONFIG, [*base, *extra]).to_yaml())
    assert main(["train", "ref.yaml", "--run-dir", "ref"]) == 0
    assert main(["train", "fault.yaml", "--run-dir", "cut"]) == 130  # interrupted
    state = torch.load(trained / "cut" / "checkpoints" / "operator_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["batch_in_epoch"] >= 1  # stopped in the middle of epoch 2
    assert main(["train", "fault.yaml", "--run-dir", "cut", "--resume", "cut"]) == 0
    for stem in ("operator_last", "operator_ema"):
        a, b = (load_file(str(trained / run / "checkpoints" / f"{stem}.safetensors")) for run in ("ref", "cut"))
        assert a.keys() == b.keys()
        assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= 1e-6, stem
