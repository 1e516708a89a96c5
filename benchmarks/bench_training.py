"""Training throughput: samples per second of a training step (forward, backward, AdamW) for UPS and FNO
at matched parameter counts (the FNO's width is chosen to match the UPS model's size), on the same data,
with the peak resident memory of each measurement (each runs in its own fresh process, so
``resource.getrusage`` peaks do not mix; quick mode measures in-process, so its peaks are cumulative).

Multi-process scaling: the UPS operator stage trained by ``ups train`` under torchrun with 1 and 2
processes (gloo on CPU, one thread each, the same global batch), samples/s from the run's own log
(``elapsed_s`` of the per-step health records, so process start-up, preflight and validation are
not counted). On a shared 2-core machine the 2-process number depends on what else runs.

Usage: python benchmarks/bench_training.py [--budget SECONDS] [--quick] [--processes 1 2]
(prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_common import Bench, build_stage, load_bench_config, loaders, n_params, steps_per_second, ups_config  # noqa: E402

from ups.config import ExperimentConfig  # noqa: E402
from ups.models import MODELS  # noqa: E402


def matched_fno_width(bench: Bench, exp: ExperimentConfig, target: int) -> tuple[int, int]:
    """The FNO ``hidden_channels`` (multiple of 4) whose parameter count is closest to ``target``."""
    cls = MODELS.get("fno")
    best = None
    for width in range(4, 513, 4):
        count = n_params(cls.from_config(bench.meta, {**exp.model.params, "hidden_channels": width}))
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (width, count)
        if count > target:
            break
    return best


def _measure(exp_json: str, stage_name: str, work: str, seconds: float) -> dict:
    """In a fresh process: samples/s of ``stage_name`` on the train split and the process's peak RSS."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    exp = ExperimentConfig.model_validate_json(exp_json)
    bench = Bench.open(exp)
    stage = build_stage(bench, exp, stage_name, Path(work) / "run")
    train_loader, _ = loaders(bench, exp, stage)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rate = steps_per_second(stage, train_loader, exp, seconds=seconds)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"steps_per_s": rate, "ms_per_step": 1e3 / rate, "samples_per_s": rate * exp.data.batch_size,
            "batch_size": exp.data.batch_size,
            "peak_rss_mib": peak_kib / 1024, "rss_before_training_mib": rss_before / 1024}


def rate_from_log(records: list[dict], *, stage: str, global_batch: int, skip: int) -> dict:
    """Samples/s between the ``skip``-th and the last health record of ``stage`` (one per step)."""
    health = [r for r in records if r.get("stage") == stage and r.get("kind") == "health"]
    if len(health) < skip + 2:
        raise RuntimeError(f"only {len(health)} step records in the log; raise the step count")
    first, last = health[skip], health[-1]
    steps, seconds = last["step"] - first["step"], last["elapsed_s"] - first["elapsed_s"]
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds,
            "samples_per_s": steps * global_batch / seconds}


def measure_processes(exp: ExperimentConfig, stage: str, work: Path, *, nproc: int, steps: int) -> dict:
    """``ups train`` of ``stage`` under torchrun with ``nproc`` processes for ``steps`` optimizer steps."""
    from ups.training.runs import JsonlLog

    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.yaml"
    config_path.write_text(exp.to_yaml())
    run_dir = work / f"run{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "ups",
           "train", str(config_path), f"training.max_steps={steps}", "training.epochs=1000", "training.val_every=1000",
           "training.health_every=1", "training.progress=none", "training.time_budget_s=null",
           "--stage", stage, "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed: {done.stderr[-2000:]}")
    out = rate_from_log(JsonlLog.read(run_dir / "train_log.jsonl"), stage=stage, global_batch=exp.data.batch_size,
                        skip=min(3, steps // 4))
    return {"processes": nproc, "global_batch": exp.data.batch_size, **out}


def scaling(exp: ExperimentConfig, stage: str, work: Path, *, processes: tuple[int, ...], steps: int) -> dict:
    runs = {str(n): measure_processes(exp, stage, work / f"p{n}", nproc=n, steps=steps) for n in processes}
    base = runs.get("1")
    for r in runs.values():
        r["speedup_vs_1"] = r["samples_per_s"] / base["samples_per_s"] if base else None
    return {"backend": "gloo", "threads_per_process": 1, "stage": stage, "steps": steps,
            "shared_machine_cores": os.cpu_count(), "runs": runs}


def run(budget: float | None = None, quick: bool = False, processes: tuple[int, ...] = (1, 2)) -> dict:
    """``budget``: seconds of timed training per model (default 30, quick 1); ``processes``: world sizes
    of the torchrun scaling measurement (empty: skip it)."""
    seconds = float(budget if budget is not None else (1.0 if quick else 30.0))
    seconds = min(seconds, 120.0)
    with tempfile.TemporaryDirectory(prefix="ups-bench-train-") as tmp:
        work = Path(tmp)
        fno_exp = load_bench_config("fno_burgers1d", quick=quick, work=work)
        bench = Bench.open(fno_exp)  # generates the data once, in this process
        ups_exp, ups_stage = ups_config(quick=quick, work=work)
        ups_params = n_params(MODELS.get(ups_exp.model.name).from_config(bench.meta, ups_exp.model.params))
        width, fno_params = matched_fno_width(bench, fno_exp, ups_params)
        shipped = load_bench_config("fno_burgers1d", quick=quick, work=work)  # the accuracy benchmark's FNO
        fno_exp = load_bench_config("fno_burgers1d", quick=quick, work=work,
                                    extra=[f"model.params.hidden_channels={width}"])
        jobs = {"ups": (ups_exp, ups_stage, ups_params), "fno": (fno_exp, "baseline", fno_params),
                "fno_benchmark_config": (shipped, "baseline", n_params(MODELS.get("fno").from_config(
                    bench.meta, shipped.model.params)))}
        results = {}
        for name, (exp, stage, count) in jobs.items():
            args = (exp.model_dump_json(), stage, str(work / name), seconds)
            if quick:  # in this process: seconds instead of a fresh interpreter per model
                out = _measure(*args)
            else:
                with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
                    out = pool.submit(_measure, *args).result()
            results[name] = {"model": exp.model.name, "params": count, "isolated_process": not quick, **out}
        steps = 12 if quick else max(20, int(seconds * results["ups"]["steps_per_s"]))
        dist = scaling(ups_exp, ups_stage, work / "ddp", processes=tuple(processes), steps=steps) if processes else None
    return {"benchmark": "training", "quick": quick, "timed_seconds_per_model": seconds, "threads": 1,
            "fno_hidden_channels": width, "points": bench.meta.n_points, "models": results,
            "ratio_ups_over_fno_samples_per_s": results["ups"]["samples_per_s"] / results["fno"]["samples_per_s"],
            "distributed": dist}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="timed seconds per model (default 30)")
    parser.add_argument("--quick", action="store_true", help="tiny data and models, seconds")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2], help="torchrun world sizes (none: skip)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.budget, args.quick, tuple(args.processes)), indent=2))


if __name__ == "__main__":
    main()
