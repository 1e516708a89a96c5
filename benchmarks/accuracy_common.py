"""Accuracy at equal compute for one problem: UPS and its grid peers trained on the same files for the same
budget of compute seconds (CPU seconds of one thread, ``peers_common.compute_clock``), side by side, then
scored on the same test trajectories by the code of ``ups eval``.

A problem names its configs (``configs/NAME.yaml``), a default budget, and the overrides that size its data
for the benchmark. Models train in separate processes, ``parallel`` at a time, one thread each, so that the
models of one round share the machine's load (a benchmark on a machine that other jobs use stays fair
between the models of a round); the JSON records which models trained together.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peers_common import Bench, evaluate, load_bench_config, n_params, same_data, scored_model, train_for_budget

from ups.config import ExperimentConfig
from ups.data.prepare import prepare_data
from ups.errors import UPSError
from ups.models.persistence import Persistence


@dataclass(frozen=True)
class Problem:
    """One accuracy benchmark: the UPS config and the peers' configs (all on the same data), the default
    training seconds per model, the overrides that size the data for the benchmark (``data``, full mode),
    and the tiny data generated in quick mode (``quick_generate``: ``data.generate`` keys)."""

    name: str
    ups: str
    peers: dict[str, str]
    budget_s: float
    data: tuple[str, ...] = ()
    quick_generate: dict = field(default_factory=dict)
    quick_eval: tuple[str, ...] = ()
    quick_models: dict = field(default_factory=dict)  # model name -> quick model params replacing the defaults
    data_dir: Path | None = None  # where the full-mode files lie (the super-resolution test file goes there)
    superres: dict = field(default_factory=dict)  # data.generate keys of a finer test file (super-resolution)
    quick_superres: dict = field(default_factory=dict)
    # a model trained another way on the same data, chosen with --models (e.g. UPS on random point subsets, a
    # peer at UPS's batch size): name in the results -> overrides of the config of UPS, or of the model that
    # ``variant_of`` names
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    variant_of: dict[str, str] = field(default_factory=dict)  # variant -> "ups" (default) or a peer's name

    def configs(self) -> dict[str, str]:
        """Model name in the results -> config stem, UPS first (a variant uses the config of the model it varies)."""
        base = {"ups": self.ups, **self.peers}
        return {**base, **{name: base[self.variant_of.get(name, "ups")] for name in self.variants}}

    @property
    def reference(self) -> str:
        """The config whose data section every model's is checked against (the first peer's: a fixed grid,
        no random offsets), which also opens the test splits."""
        return self.peers[next(iter(self.peers))]

    def peer_variants(self, of: str | None = None) -> list[str]:
        """The variants of a peer (of the peer ``of`` only, when given), not of UPS."""
        return [k for k in self.variants if self.variant_of.get(k, "ups") != "ups"
                and (of is None or self.variant_of[k] == of)]

    def default_models(self) -> list[str]:
        """The models a run trains unless --models names others: UPS, the peers and the peers' variants."""
        return ["ups", *self.peers, *self.peer_variants()]

    def overrides(self, quick: bool) -> list[str]:
        return list(self.quick_eval) if quick else list(self.data)

    def load(self, stem: str, *, quick: bool, work: Path, superres: bool = False,
             extra: tuple[str, ...] = ()) -> ExperimentConfig:
        """``configs/{stem}.yaml`` on this problem's data (quick or full), then the ``extra`` overrides."""
        extra = self.overrides(quick) + (self._superres_overrides(quick, work) if superres else []) + list(extra)
        return load_bench_config(stem, quick=quick, work=work, extra=extra,
                                 generate=self.quick_generate or None, model_params=self.quick_models)

    def _superres_overrides(self, quick: bool, work: Path) -> list[str]:
        folder = work / "data" if quick else self.data_dir
        gen = self.quick_superres if quick else self.superres
        return [f"data.test={folder / 'test_superres.h5'}"] + [f"data.generate.{k}={v}" for k, v in gen.items()]

    def superres_bench(self, bench: Bench, *, quick: bool, work: Path, generate: bool) -> Bench | None:
        """The test split at the finer resolution (generated when missing and ``generate``), with the training
        data's normaliser; None when the problem has no super-resolution test."""
        if not (self.quick_superres if quick else self.superres):
            return None
        exp = self.load(self.reference, quick=quick, work=work, superres=True)
        bundle = prepare_data(exp.data, splits=("test",), generate=generate, progress=False)
        return Bench(exp=exp, bundle=bundle, normalizer=bench.normalizer)


def _superres(model: torch.nn.Module, fine: Bench | None, rules: dict) -> dict:
    """Rollout nRMSE on the finer-resolution test file, the model unchanged (None where it cannot run there)."""
    if fine is None:
        return {}
    try:
        return {"rollout_nrmse_superres": evaluate(model, fine, **rules)["nrmse"],
                "superres_points": fine.meta.n_points}
    except UPSError as err:  # a grid model bound to its training grid
        return {"rollout_nrmse_superres": None, "superres_error": str(err), "superres_points": fine.meta.n_points}


def _scores(model: torch.nn.Module, bench: Bench, rules: dict) -> dict:
    """Test rollouts from ``eval.rollout_start`` (the headline), from 10 frames later, and at every cell of the
    data (without retraining) where the data are strided and the model runs at another resolution."""
    head = evaluate(model, bench, **rules)
    keys = ("corr_time", "valid_time", "high_corr", "rel_l2_full", "rel_l2_step")
    out = {"rollout_nrmse": head["nrmse"], "rollout_nrmse_finite": head["nrmse_finite"], "diverged": head["diverged"],
           "samples": head["samples"], "one_step_nrmse": head["nrmse_one_step"],
           **{k: head.get(k) for k in keys}, "nrmse_per_step": head["nrmse_per_step"]}
    start = bench.exp.eval.rollout_start
    later = start + 10 if start == 0 else None
    out["rollout_nrmse_from_10"] = (evaluate(model, bench, start=later, **rules)["nrmse"]
                                    if later is not None and bench.meta.n_frames > later + 2 else None)
    if bench.exp.data.spatial_stride == 1:
        out["rollout_nrmse_full_resolution"] = None
        out["full_resolution_error"] = "the benchmark already uses every cell of the data"
        return out
    try:
        out["rollout_nrmse_full_resolution"] = evaluate(model, bench, spatial_stride=1, **rules)["nrmse"]
    except UPSError as err:  # a grid model bound to its training grid
        out["rollout_nrmse_full_resolution"] = None
        out["full_resolution_error"] = str(err)
    return out


def train_and_score(problem: Problem, model_key: str, *, quick: bool, work: Path, budget: float) -> dict:
    """Train one model of ``problem`` for ``budget`` seconds and score it (runs in a worker process)."""
    torch.set_num_threads(1)
    bench = Bench.open(problem.load(problem.reference, quick=quick, work=work))
    stem = problem.configs()[model_key]
    exp = problem.load(stem, quick=quick, work=work, extra=problem.variants.get(model_key, ()))
    same_data(bench.exp, exp)
    stage_name = "operator" if exp.model.name == "upt" else "baseline"
    run_dir = work / "runs" / f"{model_key}_{budget:g}"
    _, summary = train_for_budget(bench, exp, stage_name, run_dir, budget)
    model, rules, checkpoint = scored_model(run_dir, stage_name)  # what ups eval scores, by its rules
    fine = problem.superres_bench(bench, quick=quick, work=work, generate=False)
    return {"model": exp.model.name, "config": stem, "overrides": list(problem.variants.get(model_key, ())),
            "params": n_params(model), "steps": summary["step"],
            "epochs": summary["epochs"], "train_wall_s": round(summary["wall_s"], 2),
            "train_cpu_s": round(summary["cpu_s"], 2),
            "ms_per_step": round(1e3 * summary["cpu_s"] / max(1, summary["step"]), 1),
            "status": summary["status"], "best_val_rollout_nrmse": summary["best_metric"], "checkpoint": checkpoint,
            **_scores(model, bench, rules), **_superres(model, fine, rules)}


def side_by_side(fn: Callable[..., dict], jobs: dict[str, dict], *, parallel: int) -> dict[str, dict]:
    """``fn(**kwargs)`` for every job (key -> kwargs, submitted in order): in this process when ``parallel``
    <= 1, else ``parallel`` at a time in spawned worker processes (``fn`` sets its own threads)."""
    if parallel <= 1:
        return {k: fn(**kw) for k, kw in jobs.items()}
    threads = torch.get_num_threads()
    try:
        with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {k: pool.submit(fn, **kw) for k, kw in jobs.items()}
            return {k: f.result() for k, f in futures.items()}
    finally:
        torch.set_num_threads(threads)


def _train_all(problem: Problem, keys: list[str], *, quick: bool, work: Path, budget: float,
               parallel: int) -> dict:
    """Every model in ``keys`` at one budget; ``parallel`` > 1 trains that many at a time in worker processes."""
    jobs = {k: {"problem": problem, "model_key": k, "quick": quick, "work": work, "budget": budget} for k in keys}
    return side_by_side(train_and_score, jobs, parallel=parallel)


def reused_results(prior: dict | None, *, keys: list[str], data: dict, quick: bool) -> dict[float, dict]:
    """A previous run's results of ``keys`` at its budget, and its budget-curve points of ``keys`` at its other
    budgets (``{budget: {model: result}}``; a curve point holds the curve's metrics only; models it lacks are
    trained by the new run), for a budget curve or a model added later on the same data; a result of other
    data, of none of these models or of the other mode (quick / full) is refused."""
    if prior is None:
        return {}
    found = {k: prior["models"][k] for k in keys if k in prior.get("models", {})}
    same = {k: v for k, v in prior.get("data", {}).items() if k != "rollout_steps"} == json.loads(json.dumps(data))
    if not found or not same or bool(prior.get("quick")) != quick:
        raise UPSError(f"--reuse: that result has other data, the other mode or none of the models {keys}: reuse "
                       "the JSON of a run of this benchmark on the same data")
    out = {float(prior["budget_s"]): found}
    for k in keys:  # the curve's other budgets; at the headline budget the full result above stays
        for b, point in prior.get("budget_curve", {}).get(k, {}).items():
            out.setdefault(float(b), {}).setdefault(k, point)
    return out


def run_problem(problem: Problem, *, budget: float | None, quick: bool, budgets: list[float] | None = None,
                parallel: int = 1, models: list[str] | None = None, work: Path, reuse: dict | None = None) -> dict:
    """Train and score the problem's models (UPS always, the ratios' reference) at ``budget`` (and at each of
    ``budgets``: the budget curve). ``reuse``: an earlier result JSON of this benchmark; the models it has at its
    budget and on its budget curve are not trained again at those budgets (``reused``), and its other budgets join
    the curve with the models they hold: a model is trained only at the budgets this run asks for."""
    keys = list(dict.fromkeys(["ups", *(models or problem.default_models())]))
    unknown = sorted(set(keys) - set(problem.configs()))
    if unknown:
        raise UPSError(f"models {', '.join(unknown)}: choose among {', '.join(problem.configs())}")
    budget = float(budget if budget is not None else problem.budget_s)
    bench = Bench.open(problem.load(problem.reference, quick=quick, work=work))  # generate once
    problem.superres_bench(bench, quick=quick, work=work, generate=True)
    reused = reused_results(reuse, keys=keys, data=data_summary(bench), quick=quick)
    by_budget, asked = {}, {budget, *[float(x) for x in budgets or []]}
    for b in sorted(asked | set(reused)):
        have = reused.get(b, {})
        todo = [k for k in keys if k not in have] if b in asked else []
        by_budget[b] = have | (_train_all(problem, todo, quick=quick, work=work, budget=b, parallel=parallel)
                               if todo else {})
    persistence = evaluate(Persistence(), bench)
    results = dict(by_budget[budget])
    results["persistence"] = {"rollout_nrmse": persistence["nrmse"], "one_step_nrmse": persistence["nrmse_one_step"],
                              "corr_time": persistence["corr_time"], "high_corr": persistence.get("high_corr"),
                              "rel_l2_full": persistence.get("rel_l2_full"), "params": 0}
    peers = [k for k in keys if k in problem.peers or k in problem.peer_variants()]
    ratios = {f"ups_over_{k}": results["ups"]["rollout_nrmse"] / results[k]["rollout_nrmse"] for k in peers}
    ratios |= {f"{k}_over_ups": results[k]["rollout_nrmse"] / results["ups"]["rollout_nrmse"]
               for k in keys if k in problem.variants and k not in peers}
    curve = {k: {f"{b:g}": {m: res[k][m] for m in ("rollout_nrmse", "rollout_nrmse_from_10", "steps")}
                 for b, res in sorted(by_budget.items()) if k in res} for k in keys}
    summary = data_summary(bench) | {"rollout_steps": len(results["ups"]["nrmse_per_step"])}
    trained = [k for k in keys if k not in reused.get(budget, {})]
    rounds = [r for r in (reuse or {}).get("trained_together", []) if set(r) <= set(reused.get(budget, {}))]
    rounds += [trained[i:i + max(1, parallel)] for i in range(0, len(trained), max(1, parallel))]
    return {"problem": problem.name, "quick": quick, "budget_s": budget, "data": summary,
            "models": results, "ratios": ratios, "budgets": sorted(by_budget), "budget_curve": curve,
            "threads_per_model": 1, "parallel": parallel, "trained_together": rounds,
            "reused": {f"{b:g}": sorted(r) for b, r in reused.items()}}


def data_summary(bench: Bench) -> dict:
    m = bench.meta
    gen = bench.exp.data.generate
    return {"pde": m.pde, "params": dict(gen.params) if gen else {}, "points": m.n_points, "frames": m.n_frames,
            "dt": m.dt, "train": len(bench.train), "val": len(bench.val), "test": len(bench.test),
            "rollout_start": bench.exp.eval.rollout_start}
