"""Simulator.from_run rebuilds model, normaliser and metadata from a run directory alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ups.errors import CheckpointError, UPSError
from ups.rollout import rollout
from ups.simulator import Simulator
from ups.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
from test_operator_stage import build  # noqa: E402


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    exp, st, train, val = build(tmp, rollout_steps=1)
    Trainer(stage=st, config=exp.stage_training("operator").model_copy(update={"epochs": 1}),
            run_dir=tmp / "run").fit(train, val)
    return tmp / "run", st, next(iter(val))


def test_from_run_matches_the_trained_model_in_physical_units(trained_run):
    run, st, batch = trained_run
    sim = Simulator.from_run(run, batch_size=1)
    u_norm = batch["u"][:, 0]  # [B, 16, 1] normalised
    u0 = st.normalizer.denormalize(u_norm)
    out = sim.rollout(u0, 5, params={"nu": 0.01}, coords=batch["coords"])
    assert out.shape == (u0.shape[0], 6, 16, 1)
    assert torch.allclose(out[:, 0], u0, atol=1e-5)  # frame 0 is the input, in physical units
    # the same numbers as the best checkpoint's weights rolled out by hand
    from ups.checkpoint import load_checkpoint

    load_checkpoint(run / "checkpoints" / "operator_best", {"model": st.model})
    st.model.eval()
    with torch.no_grad():
        ref = rollout(st.model, u_norm, batch["coords"], batch["params"], batch["dt"], 5, max_principle=True)
    assert torch.allclose(out, st.normalizer.denormalize(ref), atol=1e-4)
    # Burgers has a maximum principle: every frame stays within the range of its initial state
    assert sim.max_principle
    lo, hi = u0.amin(dim=1, keepdim=True), u0.amax(dim=1, keepdim=True)
    assert (out >= lo.unsqueeze(1) - 1e-5).all() and (out <= hi.unsqueeze(1) + 1e-5).all()


def test_query_points_default_grid_and_errors(trained_run):
    run, st, batch = trained_run
    sim = Simulator.from_run(run)
    u0 = st.normalizer.denormalize(batch["u"][:, 0])
    xq = torch.rand(40, 1)
    out = sim.rollout(u0, 3, params=[0.01], query_points=xq)
    assert out.shape == (u0.shape[0], 4, 40, 1) and torch.isfinite(out).all()
    assert sim.grid(16).shape == (16, 1)
    with pytest.raises(UPSError, match="params"):
        sim.rollout(u0, 2)
    with pytest.raises(UPSError, match="do not match"):
        sim.rollout(u0, 2, params={"mu": 1.0})
    with pytest.raises(UPSError, match="channels last"):
        sim.rollout(u0[..., 0], 2, params=[0.01])
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Simulator.from_run(run.parent / "nowhere")
