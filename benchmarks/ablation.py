"""Side-by-side short training runs: each variant trained for the same wall-clock budget, at the same time,
one thread each, then scored by its best validation rollout nRMSE (the stage's own validation).

    python benchmarks/ablation.py --budget 150 --out benchmarks/results/ablation.json \\
        --variant "old:configs/burgers1d.yaml:model.params.decoder=attention" \\
        --variant "fno:configs/fno_burgers1d.yaml:" --data src/ups/demo.yaml

``--variant NAME:CONFIG:OVERRIDES`` (overrides comma-separated) is repeatable; ``--data CONFIG`` points every
variant at that config's data files (the demo data by default). All variants run in parallel (``--parallel``),
so a shared machine slows them alike: compare the numbers of one invocation with each other, not across
invocations. Results (one record per variant: best validation rollout nRMSE, optimiser steps, ms per step)
are appended to ``--out`` under ``--tag`` and shown in ``docs/PERFORMANCE.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ups.config import load_config  # noqa: E402
from ups.io_utils import atomic_write_json  # noqa: E402
from ups.training.runs import JsonlLog  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _command(config: str, overrides: list[str], data: str, budget: float, run_dir: Path) -> list[str]:
    data_cfg = load_config(ROOT / data).data
    paths = [f"data.{s}={ROOT / getattr(data_cfg, s)}" for s in ("train", "val", "test")]
    stage = "baseline" if "baseline" in (load_config(ROOT / config).stages or {}) else "operator"
    return [sys.executable, "-m", "ups.cli", "train", str(ROOT / config), *paths, "data.max_samples={val: 20}",
            f"training.time_budget_s={budget}", "training.max_steps=100000", "training.epochs=1000",
            "training.progress=none", *overrides, "--stage", stage, "--run-dir", str(run_dir)]


def _score(run_dir: Path) -> dict:
    records = JsonlLog.read(run_dir / "train_log.jsonl")
    epochs = [r for r in records if r.get("kind") == "epoch" and r.get("val_rollout_nrmse") is not None]
    summary = next((r for r in records if r.get("kind") == "summary"), {})
    steps = summary.get("step") or (epochs[-1]["step"] if epochs else 0)
    wall = summary.get("elapsed_s") or summary.get("wall_s")
    return {"best_val_rollout_nrmse": min((r["val_rollout_nrmse"] for r in epochs), default=None),
            "last_val_rollout_nrmse": epochs[-1]["val_rollout_nrmse"] if epochs else None,
            "val_one_step_nrmse": epochs[-1].get("val_one_step_nrmse") if epochs else None,
            "steps": steps, "validations": len(epochs), "train_wall_s": wall}


def run(variants: list[tuple[str, str, list[str]]], *, data: str, budget: float, parallel: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="ups-ablation-") as tmp:
        pending = list(variants)
        running: list[tuple[str, subprocess.Popen, Path, float]] = []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        while pending or running:
            while pending and len(running) < parallel:
                name, config, overrides = pending.pop(0)
                run_dir = Path(tmp) / name
                log = open(Path(tmp) / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
                proc = subprocess.Popen(_command(config, overrides, data, budget, run_dir), stdout=log,
                                        stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                running.append((name, proc, run_dir, time.monotonic()))
            time.sleep(2)
            for item in [r for r in running if r[1].poll() is not None]:
                name, proc, run_dir, t0 = item
                running.remove(item)
                rec = {"config": next(v[1] for v in variants if v[0] == name),
                       "overrides": next(v[2] for v in variants if v[0] == name), "returncode": proc.returncode,
                       "process_wall_s": round(time.monotonic() - t0, 1)}
                if proc.returncode == 0:
                    rec |= _score(run_dir)
                    if rec["steps"]:
                        rec["ms_per_step"] = round(1e3 * budget / rec["steps"], 1)
                else:
                    rec["log_tail"] = (Path(tmp) / f"{name}.log").read_text()[-2000:]
                results[name] = rec
                print(json.dumps({name: rec}), flush=True)
    return results


def _parse_variant(text: str) -> tuple[str, str, list[str]]:
    name, config, overrides = (text.split(":", 2) + [""])[:3]
    return name, config, [o for o in overrides.split(",") if o]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, type=_parse_variant)
    parser.add_argument("--data", default="src/ups/demo.yaml", help="config whose data files every variant uses")
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per variant")
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "profiles" / "ablation" / "runs.json",
                        help="JSON history (kept in git; docs/PERFORMANCE.md shows it)")
    args = parser.parse_args(argv)
    results = run(args.variant, data=args.data, budget=args.budget, parallel=args.parallel)
    history = json.loads(args.out.read_text()) if args.out.is_file() else {}
    history[args.tag] = {"budget_s": args.budget, "data": args.data, "parallel": args.parallel, "variants": results}
    atomic_write_json(args.out, history)
    from profile_step import regenerate_doc

    regenerate_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
