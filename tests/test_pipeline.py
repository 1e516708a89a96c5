"""The pipeline end to end on a tiny generated Burgers set: every stage, gate, eval JSON, report, leaderboard."""

import base64
import hashlib
import json
import re

import pytest

from ups.checkpoint import read_checkpoint_meta
from ups.cli import main
from ups.config import load_config
from ups.errors import UPSError
from ups.eval.leaderboard import Leaderboard
from ups.eval.run_eval import evaluate_run
from ups.pipeline import pipeline

TINY = [
    "data.pde=burgers1d", "data.spatial_stride=2", "data.temporal_stride=2", "data.batch_size=8",
    "data.generate={params: {nu: 0.1}, resolution: 64, frames: 13, t_end: 0.6, "
    "samples: {train: 16, val: 8, test: 8}, seeds: {train: 1, val: 2, test: 3}, batch_size: 16}",
    "model.name=upt", "model.params={latent_dim: 8, num_supernodes: 8, heads: 2, operator_depth: 1, "
    "kernel_hidden: 8, decoder_hidden: 8}",
    "training.epochs=5", "training.progress=none", "training.lr=0.003", "training.ema_decay=0.9",
    "stages.operator={rollout_steps: 2, rollout_ramp_steps: 4}",
    "stages.diff_residual={corrector: {width: 8, depth: 1, heads: 2, steps: 2}, stats_batches: 1}",
    "stages.consistency_distill={distill_num_taus: 2, distill_micro_batch: 0}",
    "eval.ttc={enabled: true, candidates: 2}", "eval.plot_samples=1", "eval.gate.margin=0.0",
]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    files = [f"data.{s}={root / 'data' / s}.h5" for s in ("train", "val", "test")]
    exp = load_config(None, TINY + files + [f"run.out_dir={root / 'runs'}", f"run.leaderboard={root / 'lb.csv'}"])
    return root, exp, pipeline(exp)


def test_pipeline_writes_everything_and_promotes(first_run):
    root, exp, result = first_run
    run = root / "runs" / next(p.name for p in (root / "runs").iterdir())
    for name in ("selection.json", "gate.json", "eval_test.json", "report.html", "stages_done.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "eval_test.json").read_text())
    assert set(saved["variants"]) == {"none", "multi", "distilled"}
    assert all(v["per_step_ms"] > 0 for v in saved["variants"].values())  # the cost of each, side by side
    meta = read_checkpoint_meta(run / "checkpoints" / "diff_residual_best")
    assert meta["space"] == "physical" and meta["refiner"]["steps"] == 3  # the default: the field refiner
    assert meta["network_calls"] == meta["refine_steps"] + 1 <= 4  # levels chosen on validation
    assert saved["ttc"]["evaluations"] == 2 * saved["ttc"]["plain_evaluations"]  # K = 2 candidates
    assert saved["metrics"]["nrmse"] < saved["baselines"]["persistence"]["nrmse"]  # the gate demanded it on val
    assert saved["data"]["split"] == "test" and saved["data"]["samples"] == 8
    html = (run / "report.html").read_text()
    assert "<h2>Variants</h2>" in html and "multi + TTC (best of 2)" in html
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    rows = Leaderboard(exp.run.leaderboard).rows()
    assert len(rows) == 1 and Leaderboard(exp.run.leaderboard).champion()["run"] == str(run)


def test_failed_gate_stops_and_keeps_the_leaderboard(first_run):
    root, exp, _ = first_run
    strict = exp.model_copy(update={
        "eval": exp.eval.model_copy(update={"gate": exp.eval.gate.model_copy(update={"margin": 0.99})}),
        "training": exp.training.model_copy(update={"epochs": 1, "max_steps": 2}),  # cheap: it must fail anyway
    })
    before = Leaderboard(exp.run.leaderboard).rows()
    with pytest.raises(UPSError, match="gate failed.*kept"):
        pipeline(strict)
    assert Leaderboard(exp.run.leaderboard).rows() == before


def test_eval_cli_on_another_file_and_variants(first_run, capsys):
    root, exp, _ = first_run
    run = root / "runs" / sorted(p.name for p in (root / "runs").iterdir())[0]
    out = root / "other"
    report_before = (run / "report.html").read_bytes()
    val = root / "data" / "val.h5"
    assert main(["eval", str(run), "--data", str(val), "--corrector", "none", "--out", str(out)]) == 0
    saved = json.loads((out / "eval_test.json").read_text())
    assert saved["run"]["corrector"] == "none" and saved["data"]["samples"] == 8
    assert (out / "report.html").is_file() and list((out / "plots").glob("*.png"))
    assert "persistence" in capsys.readouterr().out
    # the default folder is RUN/eval_<stem>_<split>/; the run's own report is never overwritten
    assert main(["eval", str(run), "--data", str(val), "--corrector", "none", "--split", "all"]) == 0
    default = run / "eval_val_all"
    saved = json.loads((default / "eval_all.json").read_text())
    assert (run / "report.html").read_bytes() == report_before
    assert saved["data"]["file"] == str(val.resolve()) and saved["data"]["split"] == "all"
    assert saved["data"]["sha256"] == hashlib.sha256(val.read_bytes()).hexdigest()
    assert saved["data"]["samples"] == 8 and "every sample" in saved["data"]["samples_why"]
    html = (default / "report.html").read_text()
    assert str(val.resolve()) in html and saved["data"]["sha256"] in html and "8 of the file" in html
    with pytest.raises(UPSError, match="not in this run"):
        evaluate_run(run, corrector="nonsense", write=False)
    # any-point: the same run evaluated on every cell (twice its training resolution) without retraining
    fine = evaluate_run(run, overrides=["data.spatial_stride=1"], write=False)
    assert fine["_fields"].true.shape[2] == 64 and fine["metrics"]["nrmse"] < 10


def test_infer_writes_the_input_layout(first_run, tmp_path):
    import h5py
    import numpy as np

    root, _, _ = first_run
    run = root / "runs" / sorted(p.name for p in (root / "runs").iterdir())[0]
    src = root / "data" / "test.h5"
    out = tmp_path / "pred.h5"
    assert main(["infer", str(run), "--input", str(src), "--steps", "3", "--out", str(out)]) == 0
    with h5py.File(out) as f, h5py.File(src) as g:
        assert f["tensor"].shape == (8, 4, 32) and f["tensor"].dtype == np.float32
        np.testing.assert_allclose(f["tensor"][:, 0], g["tensor"][:, 0, ::2], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["x-coordinate"][...], g["x-coordinate"][::2], rtol=1e-6)
        assert f["t-coordinate"].shape == (4,) and f.attrs["pde"] == "burgers1d"
    points = tmp_path / "q.npy"
    np.save(points, np.linspace(0.0, 1.0, 50, endpoint=False))
    assert main(["infer", str(run), "--input", str(src), "--steps", "2", "--points", str(points),
                 "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f["tensor"].shape == (8, 3, 50) and f["x-coordinate"].shape == (50,)
    assert main(["infer", str(run), "--input", str(tmp_path / "none.h5"), "--steps", "2", "--out", str(out)]) == 2


def test_infer_compile_writes_what_the_eager_rollout_writes(first_run, tmp_path, monkeypatch):
    import h5py
    import numpy as np
    import torch

    from ups.models.compile import compiler_missing

    if compiler_missing(torch.device("cpu")) is not None:
        pytest.skip("no C++ compiler for torch.compile on CPU")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    root, _, _ = first_run
    run = root / "runs" / sorted(p.name for p in (root / "runs").iterdir())[0]
    src = root / "data" / "test.h5"
    args = ["infer", str(run), "--input", str(src), "--steps", "3"]
    assert main([*args, "--out", str(tmp_path / "eager.h5")]) == 0
    assert main([*args, "--compile", "--out", str(tmp_path / "compiled.h5")]) == 0
    assert any((tmp_path / "cache").iterdir())  # inductor compiled, into the cache it was given
    with h5py.File(tmp_path / "eager.h5") as f, h5py.File(tmp_path / "compiled.h5") as g:
        np.testing.assert_allclose(g["tensor"][...], f["tensor"][...], rtol=1e-4, atol=1e-5)


def test_simulator_uses_the_corrector_when_asked(first_run):
    import torch

    from ups.errors import CheckpointError
    from ups.simulator import Simulator

    root, _, _ = first_run
    run = root / "runs" / sorted(p.name for p in (root / "runs").iterdir())[0]
    x = (torch.arange(32) + 0.5) / 32
    u0 = torch.sin(2 * torch.pi * x).view(1, 32, 1).repeat(2, 1, 1)
    plain = Simulator.from_run(run).rollout(u0, 3, params={"nu": 0.1})
    multi = Simulator.from_run(run, corrector="multi")
    a, b = multi.rollout(u0, 3, params={"nu": 0.1}), multi.rollout(u0, 3, params={"nu": 0.1})
    assert torch.equal(a, b)  # the mean path is deterministic
    assert not torch.allclose(a[:, 1:], plain[:, 1:])  # and it does correct
    assert torch.equal(a[:, 0], plain[:, 0])
    with pytest.raises(UPSError, match="unknown corrector"):
        Simulator.from_run(run, corrector="nonsense")
    with pytest.raises(CheckpointError, match="no steady prior"):
        multi.steady_state(u0, params={"nu": 0.1})


def test_champion_on_other_data_is_not_compared(first_run):
    from ups.pipeline import _champion_val

    root, exp, _ = first_run
    board = Leaderboard(exp.run.leaderboard)
    other = exp.model_copy(update={"data": exp.data.model_copy(update={"spatial_stride": 1})})
    assert _champion_val(board, other, 4) is None  # a champion on other data cannot gate this candidate
    assert _champion_val(board, exp, 4)["nrmse"] > 0  # on the same data it is re-measured
