"""Markdown tables (for the README) from the JSON files that ``make bench`` wrote.

    python benchmarks/summarize.py [--results DIR]      (prints markdown; missing benchmarks are skipped)

Every number comes from ``benchmarks/results/NAME.json``; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def accuracy(res: dict) -> list[str]:
    """Equal wall-clock training budget, same data, same test rollouts."""
    d = res["data"]
    out = [f"Accuracy at equal compute: {res['budget_s']:.0f} s of training each on {res['threads']} thread(s); "
           f"{d['pde']} {d['params']}, {d['train']} train / {d['test']} test trajectories, {d['points']} points, "
           f"rollout over {d['rollout_steps']} steps from frame 0.", ""]
    rows = [[name, m.get("params"), m.get("steps"), m["rollout_nrmse"], m["one_step_nrmse"], m["corr_time"]]
            for name, m in res["models"].items()]
    out += _table(["model", "parameters", "training steps", "rollout nRMSE", "one-step nRMSE", "corr. time (steps)"],
                  rows)
    verdict = "beats" if res["ups_beats_fno"] else "does not beat"
    return out + ["", f"UPS / FNO rollout nRMSE = {res['ratio_ups_over_fno_rollout_nrmse']:.3g}: UPS {verdict} FNO "
                      "at equal compute."]


def inference(res: dict) -> list[str]:
    """Rollout of the whole test set against the solver, in one process."""
    out = [f"Inference: {res['samples']} test trajectories x {res['steps']} steps at {res['points']} points, "
           f"{res['threads']} thread(s); solver {res['solver']['ms_per_sample']:.1f} ms per trajectory.", ""]
    rows = [[name, m["params"], m["ms_per_sample"], m["speedup_vs_solver"]] for name, m in res["models"].items()
            if m is not None]
    return out + _table(["model", "parameters", "ms per trajectory", "speed-up vs solver"], rows)


def training(res: dict) -> list[str]:
    """Training throughput at matched parameter counts."""
    rows = [[name, m["params"], m["samples_per_s"], m["peak_rss_mib"]] for name, m in res["models"].items()]
    out = [f"Training throughput ({res['threads']} thread, {res['points']} points, UPS operator stage vs "
           "FNO one-step):", ""]
    out = out + _table(["model", "parameters", "samples / s", "peak RSS (MiB)"], rows) + [
        "", f"UPS / FNO samples per second = {res['ratio_ups_over_fno_samples_per_s']:.3g}."]
    dist = res.get("distributed")
    if dist:
        rows = [[r["processes"], r["global_batch"], r["steps"], r["samples_per_s"], r["speedup_vs_1"]]
                for r in dist["runs"].values()]
        out += ["", f"Scale-out: `ups train` under torchrun ({dist['backend']}, {dist['threads_per_process']} thread "
                f"per process, UPS {dist['stage']} stage, same global batch) on a shared "
                f"{dist['shared_machine_cores']}-core machine:", ""]
        out += _table(["processes", "global batch", "timed steps", "samples / s", "vs 1 process"], rows)
    return out


def datagen(res: dict) -> list[str]:
    out = [f"Data generation ({res['pde']} {res['params']}, {res['resolution']} cells, {res['frames']} frames): "
           f"{res['samples_per_s']:.3g} samples/s, {res['seconds_for_1000']:.0f} s per 1,000 trajectories."]
    if "pdes" in res:
        rows = [[pde, m["params"], m["resolution"], m["frames"], m["samples_per_s"], m["seconds_for_1000"]]
                for pde, m in res["pdes"].items()]
        out += ["", *_table(["PDE", "parameters", "points per axis", "frames", "samples / s", "s per 1,000"], rows)]
    return out


SECTIONS = {"accuracy": accuracy, "inference": inference, "training": training, "datagen": datagen}


def summarize(results: Path) -> str:
    """Markdown for every ``results/NAME.json`` present, in a fixed order."""
    parts = []
    for name, render in SECTIONS.items():
        path = results / f"{name}.json"
        if path.is_file():
            parts.append("\n".join(render(json.loads(path.read_text()))))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if not any((args.results / f"{n}.json").is_file() for n in SECTIONS):
        print(f"error: no benchmark results in {args.results}; run `make bench` first", file=sys.stderr)
        return 2
    print(summarize(args.results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
