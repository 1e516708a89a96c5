"""Markdown tables (for the README) from the JSON files that ``make bench`` wrote.

    python benchmarks/summarize.py [--results DIR]      (prints markdown; missing benchmarks are skipped)

Every number comes from ``benchmarks/results/NAME.json``; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ups.errors import UPSError
from ups.io_utils import atomic_write_text

HERE = Path(__file__).resolve().parent


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _rollout(m: dict, key: str = "rollout_nrmse"):
    """The rollout nRMSE cell: the plain mean, with "(k of n diverged, x on the rest)" when k > 0 rollouts
    went non-finite (their NaN hides how many did)."""
    k = m.get("diverged") or 0
    if k <= 0:
        return m[key]
    rest = m.get(f"{key}_finite")
    return (f"{_fmt(m[key])} ({k} of {m.get('samples', '?')} diverged"
            + (f", {_fmt(rest)} on the rest)" if rest is not None else ")"))


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _label(name: str, res: dict) -> str:
    """A model's row name; "(reused)" when ``--reuse`` took its result at the table's budget from an earlier run
    on the same data (``reused``: {budget: [models]})."""
    return f"{name} (reused)" if name in (res.get("reused") or {}).get(f"{res['budget_s']:g}", []) else name


def accuracy(res: dict) -> list[str]:
    """Equal training compute (CPU seconds), same data, same test rollouts."""
    d = res["data"]
    out = [f"Accuracy at equal compute: {res['budget_s']:.0f} CPU seconds of training each on "
           f"{res['threads']} thread(s); "
           f"{d['pde']} {d['params']}, {d['train']} train / {d['test']} test trajectories, {d['points']} points, "
           f"rollout over {d['rollout_steps']} steps from frame 0.", ""]
    rows = [[_label(name, res), m.get("params"), m.get("steps"), m.get("train_cpu_s"), m.get("ms_per_step"),
             _rollout(m), m.get("rollout_nrmse_from_10"), m["one_step_nrmse"], m.get("rollout_nrmse_full_resolution"),
             m["corr_time"]]
            for name, m in res["models"].items()]
    out += _table(["model", "parameters", "training steps", "training CPU s", "ms / step", "rollout nRMSE",
                   "from frame 10", "one-step nRMSE", "every cell (no retraining)", "corr. time (steps)"], rows)
    verdict = "beats" if res["ups_beats_fno"] else "does not beat"
    out += ["", f"UPS / FNO rollout nRMSE = {res['ratio_ups_over_fno_rollout_nrmse']:.3g}: UPS {verdict} FNO "
                "at equal compute."]
    curve = res.get("budget_curve") or {}
    if len(res.get("budgets") or []) > 1:
        budgets = [f"{b:g}" for b in res["budgets"]]
        out += ["", "Budget curve (rollout nRMSE from frame 0; training seconds per model):", ""]
        out += _table(["model"] + [f"{b} s" for b in budgets],
                      [[name] + [c.get(b, {}).get("rollout_nrmse") for b in budgets] for name, c in curve.items()])
    return out


def _corr(m: dict, level: str) -> str | None:
    hc = (m.get("high_corr") or {}).get(level)
    return None if hc is None else f"{hc['steps']} ({hc['time']:.3g})"


def accuracy_problem(res: dict) -> list[str]:
    """Another PDE's accuracy benchmark (KS, 2D Navier-Stokes): the same columns plus the correlation times
    and the FNO paper's relative L2."""
    d = res["data"]
    together = "; ".join(" + ".join(r) for r in res.get("trained_together", []))
    out = [f"{d['pde']} {d['params']}: {res['budget_s']:.0f} CPU seconds of training per model, one thread each, "
           f"trained side by side ({together}); {d['train']} train / {d['test']} test trajectories, "
           f"{d['points']} points, "
           f"rollout over {d['rollout_steps']} steps from frame {d['rollout_start']}.", ""]
    fine = next((m["superres_points"] for m in res["models"].values() if m.get("superres_points")), None)
    rows = [[_label(name, res), m.get("params"), m.get("steps"), m.get("train_cpu_s"), m.get("ms_per_step"),
             _rollout(m), m["one_step_nrmse"],
             m.get("rel_l2_full"), _corr(m, "0.8"), _corr(m, "0.9")]
            + ([m.get("rollout_nrmse_superres")] if fine else []) for name, m in res["models"].items()]
    header = ["model", "parameters", "training steps", "training CPU s", "ms / step", "rollout nRMSE",
              "one-step nRMSE", "relative L2", "corr. > 0.8: steps (time)", "corr. > 0.9: steps (time)"]
    out += _table(header + ([f"rollout nRMSE at {fine} points (no retraining)"] if fine else []), rows)
    ratios = ", ".join(f"{k.replace('_over_', ' / ').upper()} = {v:.3g}" for k, v in res["ratios"].items())
    return out + ["", f"Rollout nRMSE ratios: {ratios}."]


def multi_pde(res: dict) -> list[str]:
    """One model on the PDE mixture against one model per PDE, at equal total compute, per PDE."""
    pdes = list(res["per_pde"])
    data = "; ".join(f"{p} {d['params']}: {d['train']} train / {d['test']} test trajectories, {d['points']} points, "
                     f"rollout over {d['rollout_steps']} steps" for p, d in res["data"].items())
    mix = res["models"]["mixture"]
    out = [f"One model across PDEs at equal total compute ({res['config']}): one UPS model per PDE trained "
           f"{res['budget_s']:.0f} CPU seconds on its PDE alone, one on the mixture of all {len(pdes)} trained "
           f"{res['mixture_budget_s']:.0f} CPU seconds, one thread each, {res['parallel']} at a time; {data}. "
           f"The mixture's steps and CPU seconds cover all PDEs together ({mix['steps']} steps, "
           f"{mix['train_cpu_s']:.0f} s).", ""]
    rows = []
    for pde, c in res["per_pde"].items():
        single = res["models"][pde]
        for name, m, run in (("single", c["single"], single), ("mixture", c["mixture"], mix),
                             ("persistence", c["persistence"], {})):
            rows.append([pde, name, run.get("steps"), run.get("train_cpu_s"), _rollout(m), m["one_step_nrmse"],
                         (m.get("high_corr") or {}).get("0.8", {}).get("steps"), f"{m['diverged']} of {m['samples']}"])
    out += _table(["PDE", "model", "training steps", "training CPU s", "rollout nRMSE", "one-step nRMSE",
                   "corr. > 0.8 (steps)", "diverged rollouts"], rows)
    ratios = ", ".join(f"{p} {_fmt(c['ratio_mixture_over_single'])}" for p, c in res["per_pde"].items())
    return out + ["", f"Mixture / single-PDE rollout nRMSE (below 1: the mixture model is better): {ratios}."]


def _steps(value) -> str | None:
    return None if value is None else f"{value:.3g}x"


def _nrmse_verdict(ratio: float | None) -> str:
    """Corrected / operator-alone rollout nRMSE read as a verdict (derived here from the measured ratio)."""
    if ratio is None or math.isnan(ratio):
        return "no verdict: a test rollout diverged (NaN)"
    return "better" if ratio < 1.0 else "no worse" if ratio <= 1.0 else "worse"


def ttc_verdict(nrmse_ratio: float | None, corr_ratio: float | None) -> str:
    """TTC against the same model without it, from the rollout nRMSE ratio (with / without) and the correlation
    time ratio: "helps" when one improves and the other does not get worse, "mixed" when one improves and the
    other gets worse (the saturated nRMSE of long chaotic rollouts can fall while the correlation shortens)."""
    nrmse = None if nrmse_ratio is None or math.isnan(nrmse_ratio) else nrmse_ratio
    better = (nrmse is not None and nrmse < 1.0) or (corr_ratio is not None and corr_ratio > 1.0)
    worse = (nrmse is not None and nrmse > 1.0) or (corr_ratio is not None and corr_ratio < 1.0)
    return ("mixed" if worse else "helps") if better else "does not help"


def corrector_problem(name: str, res: dict) -> list[str]:
    """One problem of the corrector benchmark: every variant, its training CPU seconds and its cost per step."""
    d, v = res["data"], res["verdict"]
    spent = {s: t["cpu_s"] for s, t in res["training"]["operator + corrector"].items()}
    out = [f"Corrector, {d['pde']} {d['params']}: operator alone {res['budget_s']:.0f} CPU s against operator "
           f"{res['budget_s'] - res['corrector_s']:.0f} s + refiner (diff_residual) for the rest of the "
           f"{res['budget_s']:.0f} s (measured: {spent['operator']:.0f} + {spent['diff_residual']:.0f} s, "
           f"+ distillation {res['distill_s']:.0f} s), one thread per arm; {d['train']} train / {d['test']} "
           f"test trajectories, rollout over {d['rollout_steps']} steps from frame {d['rollout_start']}.", ""]
    rows = [[k, m.get("train_cpu_s"), m["corrector_calls"], m["cpu_ms_per_step"], m["rollout_nrmse"],
             m["corr_steps_0.8"], m["corr_steps_0.9"]] for k, m in res["variants"].items()]
    out += _table(["variant", "training CPU s", "corrector calls / step", "CPU ms / step", "rollout nRMSE",
                   "corr. > 0.8 (steps)", "corr. > 0.9 (steps)"], rows)
    kept = v.get("distilled_gain_kept")
    line = (f"Corrected / operator alone: correlation time (0.8) {_steps(v['corr_ratio_0.8'])} "
            f"({'meets' if v['corrector_meets_1.2x'] else 'does not meet'} 1.2x), rollout nRMSE "
            f"{_fmt(v['nrmse_ratio'])} ({_nrmse_verdict(v['nrmse_ratio'])}); distilled sampler: "
            f"{_steps(v.get('distilled_corr_ratio_0.8'))} at {_fmt(v.get('distilled_calls'))} calls per step, "
            f"keeps {'—' if kept is None else f'{kept:.0%}'} of the gain"
            + ("." if v.get("distilled_nrmse_gain_kept") is None else
               f" in correlation time and {v['distilled_nrmse_gain_kept']:.0%} of the nRMSE gain."))
    if "ttc_helps" in v:
        line += (f" TTC best-of-{res['ttc_candidates']} against the same corrected model: nRMSE x"
                 f"{_fmt(v['ttc_nrmse_ratio'])}, correlation time x{_fmt(v['ttc_corr_ratio_0.8'])} at "
                 f"{_fmt(v['ttc_cost_ratio'])}x the CPU per step "
                 f"({ttc_verdict(v['ttc_nrmse_ratio'], v['ttc_corr_ratio_0.8'])}).")
    return out + ["", line]


def corrector(res: dict) -> list[str]:
    """The corrector benchmark (issue 15): each problem's table, KS first."""
    out: list[str] = []
    for name, part in res["problems"].items():
        out += ([""] if out else []) + corrector_problem(name, part)
    return out


def corrector_bound(res: dict) -> list[str]:
    """The oracle bound beside the corrector benchmark: what a corrector of the shorter-trained operator could give."""
    d, alone, target = res["data"], res["operator_alone"], res["target_corr_steps_0.8"]
    part = res["budget_s"] - res["corrector_s"]
    out = [f"Corrector bound, {d['pde']} {d['params']}: the operator trained for {part:.0f} CPU s (the corrected "
           f"arm's share) rolled out with oracle corrections: after every step its own one-step error (prediction "
           f"minus the exact solver's step from the same state; solver check {res['solver_check']:.1e}) is scaled "
           f"on a band of Fourier modes. The operator alone at {res['budget_s']:.0f} s keeps a correlation above 0.8 "
           f"for {alone['corr_steps_0.8']} steps; the corrected arm's target, 1.2x, is {target:.0f} steps.", ""]
    rows = [[k, m["rollout_nrmse"], m["one_step_nrmse"], m["corr_steps_0.8"],
             _steps(res["verdict"][k]["corr_ratio_0.8"]), "yes" if res["verdict"][k]["reaches_target"] else "no"]
            for k, m in res["variants"].items()]
    return out + _table(["oracle", "rollout nRMSE", "one-step nRMSE", "corr. > 0.8 (steps)",
                         "x operator alone", "reaches 1.2x"], rows)


def _solver_grid(solver: dict) -> str:
    """The solver's own choices (the largest over its batches) as a clause for the table's sentence, e.g.
    " (internal grid 1024 points, 96 steps per frame)"; empty for a result without them."""
    if "internal_resolution" not in solver:
        return ""
    steps = f", {solver['steps_per_frame']} steps per frame" if "steps_per_frame" in solver else ""
    return f" (internal grid {solver['internal_resolution']} points{steps})"


def inference(res: dict) -> list[str]:
    """Rollout of the whole test set against the solver, in one process, at each resolution measured."""
    out = []
    for part in [res] + ([res["full_resolution"]] if res.get("full_resolution") else []):
        out += ["" if out else None, f"Inference: {part['samples']} test trajectories x {part['steps']} steps at "
                f"{part['points']} points, {res['threads']} thread(s); solver {part['solver']['ms_per_sample']:.1f} ms "
                f"per trajectory{_solver_grid(part['solver'])}.", ""]
        rows = [[name, m.get("rollout_mode", "—"), m.get("frames_per_step", 1), m["params"], m["ms_per_sample"],
                 m["speedup_vs_solver"]] for name, m in part["models"].items() if m is not None]
        out += _table(["model", "rollout", "frames / step", "parameters", "ms per trajectory", "speed-up vs solver"],
                      rows)
    return [line for line in out if line is not None]


def training(res: dict) -> list[str]:
    """Training throughput at matched parameter counts."""
    rows = [[name, m["params"], m.get("ms_per_step"), m["samples_per_s"], m["peak_rss_mib"]]
            for name, m in res["models"].items()]
    out = [f"Training throughput ({res['threads']} thread, {res['points']} points, UPS operator stage vs "
           "FNO one-step):", ""]
    out = out + _table(["model", "parameters", "ms / optimiser step", "samples / s", "peak RSS (MiB)"], rows) + [
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


SECTIONS = {"accuracy": accuracy, "accuracy_ks": accuracy_problem, "accuracy_ns2d": accuracy_problem,
            "accuracy_dr1d": accuracy_problem, "multi_pde": multi_pde,
            "corrector": corrector, "corrector_bound": corrector_bound, "inference": inference, "training": training,
            "datagen": datagen}


def summarize(results: Path) -> str:
    """Markdown for every ``results/NAME.json`` present, in a fixed order."""
    parts = []
    for name, render in SECTIONS.items():
        path = results / f"{name}.json"
        if path.is_file():
            parts.append("\n".join(render(json.loads(path.read_text()))))
    return "\n\n".join(parts) + "\n"


BEGIN, END = "<!-- benchmark tables: begin -->", "<!-- benchmark tables: end -->"


def update_readme(readme: Path, markdown: str) -> None:
    """Replace what lies between the README's benchmark-table markers with ``markdown`` (atomically)."""
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise UPSError(f"{readme} needs one '{BEGIN}' line followed by one '{END}' line")
    head, rest = text.split(BEGIN)
    atomic_write_text(readme, head + BEGIN + "\n" + markdown + rest[rest.index(END):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the tables between the benchmark-table markers of this README")
    args = parser.parse_args(argv)
    if not any((args.results / f"{n}.json").is_file() for n in SECTIONS):
        print(f"error: no benchmark results in {args.results}; run `make bench` first", file=sys.stderr)
        return 2
    markdown = summarize(args.results)
    print(markdown, end="")
    if args.readme is not None:
        try:
            update_readme(args.readme, markdown)
        except (UPSError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
