"""``ups pipeline CONFIG`` and ``ups demo``: from a config to a leaderboard row.

check config and data (generating a missing data set the config describes)
  -> train every stage in one run directory
  -> small evaluation on the validation split; the corrector variant (none / multi / distilled) is
     selected here, on validation data, never on the test split
  -> gate: beat the champion's validation nRMSE (re-measured on the same samples) by ``eval.gate.margin``
     without worsening conservation / boundary metrics beyond their ratios; with no champion, beat
     persistence. A failed gate stops with a clear message and keeps everything written so far.
  -> full test evaluation (with TTC when ``eval.ttc.enabled``), plots, ``report.html``
  -> leaderboard row, promoted to champion.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from ups.config import ExperimentConfig, load_config
from ups.data.prepare import ensure_data
from ups.errors import UPSError
from ups.eval.leaderboard import Leaderboard, gate, row_from_eval
from ups.eval.run_eval import evaluate_run, write_outputs
from ups.io_utils import atomic_write_json
from ups.rundir import RunFiles
from ups.training import distributed
from ups.training.launch import train

SMALL_EVAL_SAMPLES = 32


def _select_variant(run: Path, small: dict) -> str:
    """The corrector variant with the lowest validation rollout nRMSE; recorded in selection.json."""
    variants = small["variants"]
    best = min(variants, key=lambda k: variants[k]["nrmse"])
    atomic_write_json(RunFiles(run).selection_path, {"corrector": best, "split": "val",
                                                     "nrmse": {k: v["nrmse"] for k, v in variants.items()}})
    return best


def _champion_val(board: Leaderboard, exp: ExperimentConfig, samples: int) -> dict | None:
    """The champion's metrics re-measured on the same validation samples (None: no champion, or a
    champion trained on other data, which cannot be compared)."""
    champ = board.champion()
    if champ is None:
        return None
    run = RunFiles(Path(str(champ["run"])))
    if not run.config_path.is_file():
        raise UPSError(f"the leaderboard's champion run {run.path} is missing; restore it or start a new leaderboard "
                       f"(run.leaderboard)")
    if load_config(run.config_path).data != exp.data:
        print(f"champion {run.path} was trained on other data: gating against persistence instead")
        return None
    return evaluate_run(run.path, split="val", max_samples=samples, write=False)["metrics"]


def pipeline(exp: ExperimentConfig, *, run_dir: str | Path | None = None) -> dict | None:
    """Run the whole pipeline; returns the test evaluation dict (with ``report`` and ``gate``).

    Under torchrun every rank trains; rank 0 alone then gates, evaluates and reports (the others
    return None)."""
    if exp.data.mixture is not None:
        raise UPSError("ups pipeline gates and ranks runs of one data set; for data.mixture run `ups train CONFIG` "
                       "and then `ups eval RUN_DIR` (metrics per PDE)")
    start = time.perf_counter()
    if distributed.local_rank() == 0:  # the other ranks wait for the files inside train()
        ensure_data(exp.data)
    run = train(exp, stage="all", run_dir=run_dir)
    if distributed.env_rank() != 0:
        return None
    small = evaluate_run(run, split="val", max_samples=SMALL_EVAL_SAMPLES, corrector="none", write=False)
    chosen = _select_variant(run, small)
    candidate = small["variants"][chosen]
    board = Leaderboard(exp.run.leaderboard)
    champion = _champion_val(board, exp, SMALL_EVAL_SAMPLES)
    passed, reasons = gate(candidate, champion, small["baselines"]["persistence"], **exp.eval.gate.model_dump())
    atomic_write_json(RunFiles(run).gate_path, {"passed": passed, "reasons": reasons, "candidate": candidate,
                                                "champion": champion, "corrector": chosen})
    if not passed:
        raise UPSError(f"gate failed for {run}: {'; '.join(reasons)} (the run, its checkpoints and gate.json are "
                       "kept; nothing was added to the leaderboard)")
    result = evaluate_run(run, split="test", ttc=exp.eval.ttc.enabled, peers=exp.peers)
    result["report"] = str(write_outputs(run, result))
    result["gate"] = {"passed": passed, "reasons": reasons}
    row = row_from_eval(result, run=str(run), status="passed", wall_time_s=time.perf_counter() - start)
    board.append(row)
    for peer_row in peer_rows(result):
        board.append(peer_row)
    board.promote(str(run))
    return result


def peer_rows(result: dict) -> list[dict]:
    """Leaderboard rows (status ``peer``, never champions) of the peers an evaluation scored beside the model."""
    return [row_from_eval({"metrics": result["baselines"][name], "data": result["data"]}, run=peer, status="peer")
            for name, peer in result.get("peers", {}).items()]


def demo_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """The embedded demo config (small Burgers data, every stage, about 10 minutes on 2 cores)."""
    with resources.as_file(resources.files("ups") / "demo.yaml") as path:
        return load_config(path, overrides)


def format_summary(result: dict) -> str:
    """A metrics table for the terminal: model (+ variants, + TTC) against persistence."""
    keys = ("nrmse", "nrmse_one_step", "corr_time", "valid_time", "conservation_gap", "per_step_ms")
    rows = [("model (" + result["run"]["corrector"] + ")", result["metrics"])]
    rows += [(f"  variant {k}", v) for k, v in result.get("variants", {}).items()]
    if "metrics" in result.get("ttc", {}):
        rows.append(("model + TTC", {**result["ttc"]["metrics"], "per_step_ms": result["ttc"].get("per_step_ms")}))
    rows.append(("persistence", result["baselines"]["persistence"]))
    rows += [(f"peer {name}", m) for name, m in result["baselines"].items() if name != "persistence"]
    lines = [f"{'':24s}" + "".join(f"{k:>18s}" for k in keys)]
    for name, m in rows:
        lines.append(f"{name:24s}" + "".join(f"{_fmt(m.get(k)):>18s}" for k in keys))
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
