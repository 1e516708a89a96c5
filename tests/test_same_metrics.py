"""A benchmark number and an ``ups eval`` number on the same model and data are the same number.

A tiny model is trained with ``ups train`` (a peer U-Net, and UPS), then scored twice: by ``ups eval RUN``
(the CLI, which writes ``eval_test.json``) and by the accuracy benchmark's scorer
(``benchmarks/peers_common.evaluate``) on the benchmark's own data handle, with its default rollout rule.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCALARS = ("nrmse", "nrmse_one_step", "corr_time", "valid_time", "conservation_gap", "bc_violation")


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    sys.modules.pop("peers_common", None)


@pytest.mark.parametrize("which", ["unet", "ups"])
def test_benchmark_and_ups_eval_give_identical_metrics(tmp_path, which):
    import peers_common as pc

    from ups.cli import main
    from ups.simulator import Simulator
    from ups.training.launch import train

    short = ["training.epochs=1", "training.max_steps=3", "training.ema_decay=null"]
    if which == "unet":
        exp, stage = pc.load_bench_config("unet_burgers1d", quick=True, work=tmp_path,
                                          extra=["model.params={width: 4, depth: 2}"] + short), "baseline"
    else:
        exp, stage = pc.load_bench_config("burgers1d", quick=True, work=tmp_path, extra=short), "operator"
    run = train(exp, stage=stage, run_dir=tmp_path / "run", progress=False)

    assert main(["eval", str(run)]) == 0
    by_eval = json.loads((run / "eval_test.json").read_text())["metrics"]

    sim = Simulator.from_run(run, stage=stage)  # the run's rollout mode (UPS on Burgers: reencode_x2)
    by_bench = pc.evaluate(sim.model, pc.Bench.open(exp), mode=sim.rollout_mode)  # the benchmark's data handle

    assert by_bench["samples"] == by_eval["samples"] and by_bench["steps"] == by_eval["steps"]
    for key in SCALARS:
        a, b = by_bench[key], by_eval[key]
        assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (key, a, b)
    assert len(by_bench["nrmse_per_step"]) == len(by_eval["nrmse_per_step"])
    for a, b in zip(by_bench["nrmse_per_step"], by_eval["nrmse_per_step"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)  # the benchmark rounds to 6 decimals


def test_accuracy_benchmark_scores_the_checkpoint_ups_eval_scores(tmp_path):
    """The accuracy benchmark scores what ``ups eval`` loads (the best checkpoint, EMA weights), not the live
    weights the stage ends with."""
    import accuracy_common as ac
    import peers_common as pc
    from bench_accuracy import BURGERS

    from ups.simulator import Simulator

    out = ac.train_and_score(BURGERS, "ups", quick=True, work=tmp_path, budget=1.0)
    run = tmp_path / "runs" / "ups_1"
    assert out["checkpoint"] == "operator_best"
    sim = Simulator.from_run(run, stage="operator")
    best = sim.model
    bench = pc.Bench.open(BURGERS.load(BURGERS.reference, quick=True, work=tmp_path))
    assert math.isclose(out["rollout_nrmse"], pc.evaluate(best, bench, mode=sim.rollout_mode)["nrmse"], rel_tol=1e-9)
    live = Simulator.from_run(run, stage="operator", checkpoint="last").model.state_dict()
    assert any(not torch.equal(v, live[k]) for k, v in best.state_dict().items())  # EMA != live weights
