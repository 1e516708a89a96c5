"""``ups eval RUN --peer PEER_RUN``: trained peers scored beside the model, on the same samples, by the same code,
in the JSON, the metrics table, the per-step plot, the terminal summary and the leaderboard."""

from __future__ import annotations

import base64
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py
from helpers import CHROMIUM, browser_shows_every_image, parse_report  # noqa: E402

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SHORT = ["training.epochs=1", "training.max_steps=3", "training.ema_decay=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny UPS run and a tiny U-Net peer run on the same tiny Burgers data."""
    sys.path.insert(0, str(BENCH))
    import peers_common as pc

    from ups.training.launch import train

    work = tmp_path_factory.mktemp("peers")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ups = pc.load_bench_config("burgers1d", quick=True, work=work, extra=SHORT)
        unet = pc.load_bench_config("unet_burgers1d", quick=True, work=work,
                                    extra=["model.params={width: 4, depth: 2}"] + SHORT)
        run = train(ups, stage="operator", run_dir=work / "ups_run", progress=False)
        peer = train(unet, stage="baseline", run_dir=work / "unet_run", progress=False)
    finally:
        torch.set_num_threads(before)
        sys.path.remove(str(BENCH))
    return run, peer


def test_peer_in_json_table_plot_and_summary(runs, capsys):
    from ups.cli import main
    from ups.eval.run_eval import evaluate_run

    run, peer = runs
    assert main(["eval", str(run), "--peer", str(peer)]) == 0
    out = capsys.readouterr().out
    assert "peer unet_run" in out and "persistence" in out
    result = json.loads((run / "eval_test.json").read_text())
    assert set(result["baselines"]) == {"persistence", "unet_run"} and result["peers"] == {"unet_run": str(peer)}
    alone = evaluate_run(peer, write=False)["metrics"]  # `ups eval PEER`: the same samples, the same code
    for key in ("nrmse", "nrmse_one_step", "conservation_gap", "corr_time"):
        assert math.isclose(result["baselines"]["unet_run"][key], alone[key], rel_tol=1e-9, abs_tol=1e-12), key
    assert result["baselines"]["unet_run"]["samples"] == result["metrics"]["samples"]

    report = parse_report(run / "report.html")
    assert {"model", "persistence", "unet_run"} <= set(report.cells)
    assert [i["alt"] for i in report.imgs][:2] == ["training curves", "nRMSE per rollout step"]
    prefix = "data:image/png;base64,"
    for img in report.imgs:  # every image decodes
        assert img["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True))) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium")
def test_headless_browser_shows_every_image_of_a_peer_report(runs, tmp_path):
    from ups.cli import main

    run, peer = runs
    assert main(["eval", str(run), "--peer", str(peer)]) == 0
    assert browser_shows_every_image(run / "report.html", tmp_path)


def test_a_peer_that_is_no_run_is_one_line(runs, tmp_path, capsys):
    from ups.cli import main

    run, _ = runs
    assert main(["eval", str(run), "--peer", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err.strip()
    assert "not a run directory" in err and "\n" not in err


def test_pipeline_peers_key_and_leaderboard_rows(runs, tmp_path):
    from ups.config import load_config
    from ups.eval.leaderboard import Leaderboard
    from ups.eval.run_eval import evaluate_run
    from ups.pipeline import peer_rows

    run, peer = runs
    assert load_config(None, ["model.name=persistence", f"peers=[{peer}]"]).peers == [str(peer)]
    result = evaluate_run(run, peers=[peer], write=False)
    board = Leaderboard(tmp_path / "board.csv")
    for row in peer_rows(result):
        board.append(row)
    (row,) = board.rows()
    assert row["status"] == "peer" and row["run"] == str(peer) and board.champion() is None
    assert math.isclose(row["nrmse"], result["baselines"]["unet_run"]["nrmse"], rel_tol=1e-6)
