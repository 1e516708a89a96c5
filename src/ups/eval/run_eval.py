"""``ups eval RUN_DIR``: evaluate a trained run in physical space, write JSON, plots and the report.

Every variant the run holds is evaluated on the same trajectories: the operator alone (``none``),
with the multi-step corrector (``multi``, from ``diff_residual_best``) and with the distilled one
(``distilled``, from ``consistency_distill_best``). ``metrics`` is the selected variant: the one named
by ``corrector=``, or with ``"auto"`` the one recorded in ``RUN/selection.json`` (chosen on the
*validation* split by the pipeline), else the operator alone. Baselines: persistence, plus trained
peer runs passed in ``peers``. With ``ttc=True`` the stochastic corrector's best-of-K rollout is
evaluated too, with its evaluation count and cost ratio.
"""

from __future__ import annotations

import time
from pathlib import Path

from ups.config import DataConfig, ExperimentConfig
from ups.data.prepare import prepare_data, prepare_mixture, trajectory_loader
from ups.data.reader import TrajectoryFile
from ups.errors import UPSError
from ups.eval.evaluate import evaluate_split
from ups.eval.ttc import physics_reward, ttc_rollout_fn
from ups.io_utils import atomic_write_json, file_sha256
from ups.rollout import RolloutFn, rollout_fn
from ups.rundir import CORRECTOR_CHECKPOINTS, RunFiles, load_corrector, load_run_config, with_corrector


def _data_config(exp: ExperimentConfig, data: str | None, split: str) -> tuple[DataConfig, str, str]:
    """The data config to evaluate, the split to read from it and why that split holds its samples.

    The run's own data (``data=None``): its config's split. ``--data FILE``: a file we wrote, or any file
    with ``split="all"``, is evaluated whole; a PDEBench file is split as PDEBench does."""
    if data is None:
        if split == "all":
            raise UPSError("--split all needs --data FILE (the run's own data has train, val and test splits)")
        where = exp.data.pdebench_file or getattr(exp.data, split)
        rule = _pdebench_rule(split, exp.data.val_fraction) if exp.data.pdebench_file else \
            f"data.{split} of the run's config, every sample of it"
        return exp.data, split, f"{rule} ({where})"
    fields = exp.data.model_dump(exclude={"train", "val", "test", "pdebench_file", "generate", "max_samples"})
    if split == "all":
        return DataConfig(**fields, test=data), "test", "--split all: every sample of the file"
    if "pde" in TrajectoryFile(data).attrs:  # a file we wrote (PDEBench files carry no attributes): all of it
        return DataConfig(**fields, test=data), "test", "a file written by ups: every sample of the file"
    return DataConfig(**fields, pdebench_file=data), split, _pdebench_rule(split, exp.data.val_fraction)


def _pdebench_rule(split: str, val_fraction: float) -> str:
    from ups.data.reader import PDEBENCH_TEST_FRACTION

    test = f"{PDEBENCH_TEST_FRACTION:.0%}"
    return {"test": f"PDEBench split: test = the first {test} of the file's samples",
            "val": f"PDEBench split: val = the {val_fraction:.0%} after the first {test} (data.val_fraction)",
            "train": f"PDEBench split: train = the samples after the first {test} and the "
                     f"{val_fraction:.0%} of val"}[split]


def eval_out_dir(run_dir: str | Path, *, data: str | None, split: str, out: str | Path | None) -> Path:
    """Where ``ups eval`` writes JSON, plots and report: ``out``; else ``RUN/eval_<file stem>_<split>/``
    for ``--data FILE`` (never over the run's own report); else the run directory itself."""
    if out is not None:
        return Path(out)
    if data is not None:
        return Path(run_dir) / f"eval_{Path(data).stem}_{split}"
    return Path(run_dir)


def _variants(run_dir: Path, sim) -> dict[str, RolloutFn]:
    """Rollout functions of the operator alone and with each corrector the run holds."""
    fns = {"none": rollout_fn(sim.model, mode=sim.rollout_mode, max_principle=sim.max_principle)}
    if not hasattr(sim.model, "encode"):
        return fns
    for kind in CORRECTOR_CHECKPOINTS:
        if RunFiles(run_dir).has(CORRECTOR_CHECKPOINTS[kind]):
            fns[kind] = rollout_fn(with_corrector(sim.model, run_dir, kind), mode=sim.rollout_mode,
                                   max_principle=sim.max_principle)
    return fns


def _selected(run_dir: Path, corrector: str, available: dict) -> str:
    if corrector != "auto":
        if corrector not in available:
            raise UPSError(f"corrector '{corrector}' is not in this run (available: {', '.join(available)})")
        return corrector
    choice = RunFiles(run_dir).selected_corrector() or "none"
    return choice if choice in available else "none"


def evaluate_run(run_dir: str | Path, *, data: str | None = None, split: str | None = None, ttc: bool = False,
                 corrector: str = "auto", out: str | Path | None = None, max_samples: int | None = None,
                 overrides: list[str] | None = None, write: bool = True,
                 peers: list[str | Path] | None = None) -> dict:
    """Evaluate every variant of a run; returns (and by default writes) the ``ups eval`` dict.

    peers: trained peer runs (FNO, U-Net, another UPS run), each scored on the same samples by the same
    code, with its own model, normaliser and rollout rules; in ``baselines`` under its directory's name."""
    from ups.simulator import Simulator

    run_dir = Path(run_dir)
    asked = split or load_run_config(run_dir).eval.split
    need = (asked, "pdebench_file") if data is None and asked != "all" else ()
    exp = load_run_config(run_dir, overrides, need=need)
    if exp.data.mixture is not None:
        if ttc or peers or corrector not in ("auto", "none"):
            raise UPSError("a run trained on a data mixture is evaluated per PDE with the operator alone: drop "
                           "--ttc, --peer and --corrector")
        return _evaluate_mixture(run_dir, exp, data=data, split=asked, out=out,
                                 cap=max_samples or exp.eval.max_samples, write=write)
    split = asked
    data_cfg, split, rule = _data_config(exp, data, split)
    sim = Simulator.from_run(run_dir, stage=_model_stage(run_dir, exp))
    cap = max_samples or exp.eval.max_samples
    if cap:
        data_cfg = data_cfg.model_copy(update={"max_samples": {**data_cfg.max_samples, split: cap}})
    bundle = prepare_data(data_cfg, splits=(split,), generate=False)
    for part in bundle.splits[split].parts:
        check_data_fits(sim.meta, part.file, start=exp.eval.rollout_start)
    loader = trajectory_loader(bundle, exp, split, normalizer=sim.normalizer)
    fns = _variants(run_dir, sim)
    chosen = _selected(run_dir, corrector, fns)
    result, got = evaluate_split(fns[chosen], loader, sim.normalizer, sim.meta, exp.eval)
    result["variants"] = {chosen: _summary(result["metrics"], result["timing"])}
    for name, fn in fns.items():
        if name != chosen:
            res, _ = evaluate_split(fn, loader, sim.normalizer, sim.meta, exp.eval)
            result["variants"][name] = _summary(res["metrics"], res["timing"])
    if ttc:
        result["ttc"] = _ttc(run_dir, sim, exp, loader, result)
    for peer in peers or ():
        name = _peer_name(Path(peer), result["baselines"])
        result["baselines"][name] = _peer_metrics(Path(peer), bundle, exp, split, sim.meta)
        result.setdefault("peers", {})[name] = str(peer)
    src = bundle.splits[split]
    result["data"] = _data_info(src, split=asked, rule=rule, cap=cap)
    result["run"] = {"dir": str(run_dir), "stages": _stages(run_dir), "corrector": chosen,
                     "rollout_mode": sim.rollout_mode}
    target = eval_out_dir(run_dir, data=data, split=asked, out=out)
    result["out_dir"] = str(target)
    if write:
        atomic_write_json(target / f"eval_{asked}.json", result)
    result["_fields"] = got  # for plots; never written
    return result


def _evaluate_mixture(run_dir: Path, exp: ExperimentConfig, *, data: str | None, split: str,
                      out: str | Path | None, cap: int | None, write: bool) -> dict:
    """A data-mixture run, per PDE: each member's ``split`` (or ``--data FILE``, scored as the member whose PDE
    it holds) in the run's mixture layout, scored by :func:`evaluate_split` with that member's own metadata.
    Returns ``per_pde`` (one ``ups eval`` result per PDE, each written to ``OUT/pde_<name>/``) and the mean
    nRMSE over the PDEs; writes ``OUT/eval_<split>.json``."""
    from ups.data.mixture import MixtureLayout
    from ups.simulator import Simulator

    sim = Simulator.from_run(run_dir, stage="operator")
    layout = MixtureLayout.from_meta(sim.meta)
    data_cfg, split, rule = _mixture_data(exp, layout.names, data=data, split=split, cap=cap)
    bundle = prepare_mixture(data_cfg, splits=(split,), generate=False, layout=layout)
    fn = rollout_fn(sim.model, mode=sim.rollout_mode, max_principle=sim.max_principle)
    target = eval_out_dir(run_dir, data=data, split=split, out=out)
    per_pde = {}
    for name, member in bundle.members.items():
        for part in member.splits[split].parts:
            check_data_fits(member.meta, part.file, start=exp.eval.rollout_start)
        loader = trajectory_loader(bundle.select(name), exp, split, normalizer=sim.normalizer)
        res, got = evaluate_split(fn, loader, sim.normalizer, member.meta, exp.eval)
        res["variants"] = {"none": _summary(res["metrics"], res["timing"])}
        res["data"] = _data_info(member.splits[split], split=split, rule=f"mixture member {name}: {rule}", cap=cap)
        res["run"] = {"dir": str(run_dir), "stages": _stages(run_dir), "corrector": "none",
                      "rollout_mode": sim.rollout_mode, "pde": name}
        res["out_dir"] = str(target / f"pde_{name}")
        if write:
            atomic_write_json(target / f"pde_{name}" / f"eval_{split}.json", res)
        per_pde[name] = {**res, "_fields": got}
    nrmse = {name: res["metrics"]["nrmse"] for name, res in per_pde.items()}
    result = {"mixture": list(layout.names), "split": split, "out_dir": str(target),
              "metrics": {"nrmse_mean_over_pdes": sum(nrmse.values()) / len(nrmse), "nrmse_per_pde": nrmse},
              "per_pde": {name: {k: v for k, v in res.items() if not k.startswith("_")}
                          for name, res in per_pde.items()}}
    if write:
        atomic_write_json(target / f"eval_{split}.json", result)
    return {**result, "_per_pde": per_pde}


def _mixture_data(exp: ExperimentConfig, names: tuple[str, ...], *, data: str | None, split: str,
                  cap: int | None) -> tuple[DataConfig, str, str]:
    """The mixture data section to evaluate (the run's members, or the one member whose PDE ``data`` holds,
    reading that file whole as its test split), the split to read and why it holds its samples."""
    members, rule = exp.data.mixture.members, f"data.{split} of the run's config, every sample of it"
    if data is not None:
        pde = TrajectoryFile(data).pde
        members = [m.model_copy(update={"train": None, "val": None, "test": data, "pdebench_file": None,
                                        "generate": None}) for m in members if m.pde == pde]
        if not members:
            raise UPSError(f"{data} holds pde={pde}, but this run was trained on a mixture of "
                           f"{', '.join(names)}: give a file of one of them")
        split, rule = "test", "every sample of the file"
    if cap:
        members = [m.model_copy(update={"max_samples": {**m.max_samples, split: cap}}) for m in members]
    mixture = exp.data.mixture.model_copy(update={"members": members})
    return exp.data.model_copy(update={"mixture": mixture}), split, rule


def write_outputs(run_dir: str | Path, result: dict, *, peers: dict | None = None) -> Path:
    """Plots (space-time images, nRMSE per step) and ``report.html`` for one evaluation (a data-mixture run:
    one per PDE, under ``OUT/pde_<name>/``; returns OUT)."""
    if "_per_pde" in result:
        for res in result["_per_pde"].values():
            write_outputs(run_dir, res)
        return Path(result["out_dir"])
    from ups.eval.plots import evaluation_plots
    from ups.eval.report import write_report

    run_dir = Path(run_dir)
    target = Path(result.get("out_dir") or run_dir)
    got = result["_fields"]
    curves = {"model": result["metrics"]["nrmse_per_step"]}
    if "ttc" in result and "metrics" in result["ttc"]:
        curves["model + TTC"] = result["ttc"]["metrics"]["nrmse_per_step"]
    for name, metrics in {**result["baselines"], **(peers or {})}.items():  # persistence, then the peers
        curves[name] = metrics["nrmse_per_step"]
    exp = load_run_config(run_dir)
    plots = evaluation_plots(target / "plots", pred=got.pred, true=got.true, curves=curves,
                             samples=exp.eval.plot_samples)
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    title = f"UPS evaluation: {run_dir} on {result['data']['file']} ({result['data']['split']})" \
        if target != run_dir else None
    return write_report(run_dir, eval_json=clean, config_yaml=RunFiles(run_dir).config_path.read_text(), plots=plots,
                        out=target / "report.html", title=title)


def check_data_fits(meta, file: TrajectoryFile, *, start: int | None) -> None:
    """One line when ``file`` cannot be rolled out by a model trained on data described by ``meta``:
    other fields per point, other spatial dimensions, or (unless ``start`` is None) fewer than 2 frames
    from ``start``."""
    what = f"the run was trained on {meta.pde} data with"
    if file.n_channels != meta.n_channels:
        raise UPSError(f"{file.path} holds {file.n_channels} field(s) per point but {what} {meta.n_channels}: "
                       "give a file of the run's PDE and fields")
    if file.spatial_dims != meta.spatial_dims:
        raise UPSError(f"{file.path} is {file.spatial_dims}-D but {what} {meta.spatial_dims}-D grids: give a file of "
                       "the run's PDE")
    if start is not None and file.n_frames - start < 2:
        raise UPSError(f"{file.path} has {file.n_frames} frame(s); a rollout from frame {start} needs at least "
                       f"{start + 2} (lower eval.rollout_start or give a longer file)")


def _peer_name(peer: Path, taken: dict) -> str:
    name, n = peer.name, 2
    while name in taken or name in ("model", "model + TTC"):
        name, n = f"{peer.name}-{n}", n + 1
    return name


def _peer_metrics(peer: Path, bundle, exp: ExperimentConfig, split: str, meta) -> dict:
    """A peer run's metrics on ``split`` of ``bundle``: its selected variant, its normaliser and rollout rules,
    scored with this evaluation's metadata and settings (the same samples, the same code)."""
    from ups.simulator import Simulator

    if not RunFiles(peer).config_path.is_file():
        raise UPSError(f"--peer {peer} is not a run directory (no config.yaml); pass a directory ups train wrote")
    sim = Simulator.from_run(peer, stage=_model_stage(peer))
    if (sim.meta.spatial_shape, sim.meta.n_channels) != (meta.spatial_shape, meta.n_channels):
        raise UPSError(f"peer run {peer} was trained on {sim.meta.spatial_shape} points x {sim.meta.n_channels} "
                       f"channels, this evaluation reads {meta.spatial_shape} x {meta.n_channels}: pass a peer "
                       "trained on the same data (data.spatial_stride)")
    fns = _variants(peer, sim)
    loader = trajectory_loader(bundle, exp, split, normalizer=sim.normalizer)
    res, _ = evaluate_split(fns[_selected(peer, "auto", fns)], loader, sim.normalizer, meta, exp.eval)
    return res["metrics"]


def _model_stage(run_dir: Path, exp: ExperimentConfig | None = None) -> str:
    """The stage whose checkpoint holds the model: operator (UPS) or baseline (peers), as the run's config
    says (so a run whose checkpoints are missing is told which stage to train); else by its checkpoints."""
    stages = set(exp.stages) if exp is not None else set()
    if "operator" in stages or "baseline" not in stages and RunFiles(run_dir).has_stage("operator"):
        return "operator"
    return "baseline" if "baseline" in stages or RunFiles(run_dir).has_stage("baseline") \
        else "operator"


def _summary(metrics: dict, timing: dict) -> dict:
    keys = ("nrmse", "nrmse_one_step", "corr_time", "valid_time", "conservation_gap", "bc_violation")
    return {**{k: metrics[k] for k in keys}, "per_step_ms": timing["per_step_ms"]}


def _stages(run_dir: Path) -> dict:
    return RunFiles(run_dir).stages_done()


def _data_info(src, *, split: str, rule: str, cap: int | None) -> dict:
    """What the report says about the evaluated data: file(s), sha256, split, sample count and why."""
    files = list(dict.fromkeys(str(p.file.path.resolve()) for p in src.parts))
    total = sum(p.file.n_samples for p in src.parts)
    why = f"{rule}; capped at {cap} by max_samples" if cap and len(src) >= cap else rule
    return {"file": files[0] if len(files) == 1 else ", ".join(files), "sha256": ", ".join(map(file_sha256, files)),
            "split": split, "samples": len(src), "file_samples": total,
            "samples_why": f"{len(src)} of the file's {total} samples: {why}"}


def _ttc(run_dir: Path, sim, exp: ExperimentConfig, loader, base: dict) -> dict:
    """Best-of-K rollout with the run's corrector (multi, else distilled); metrics, evaluation count, cost
    ratio, and the gain against the same corrected model without TTC."""
    kind = next((k for k in ("multi", "distilled") if load_corrector(run_dir, k) is not None), None)
    if kind is None:
        return {"skipped": "no corrector in this run: TTC needs a stochastic corrector (train diff_residual)"}
    surrogate = with_corrector(sim.model, run_dir, kind)
    reward = physics_reward(sim.meta, exp.eval.ttc)
    fn = ttc_rollout_fn(surrogate, sim.normalizer, reward, exp.eval.ttc, seed=exp.training.seed,
                        max_principle=sim.max_principle)
    start = time.perf_counter()
    res, _ = evaluate_split(fn, loader, sim.normalizer, sim.meta, exp.eval)
    plain_evals = base["metrics"]["samples"] * base["metrics"]["steps"]
    evals = fn.stepper.evaluations  # decoder calls of the rollout and of the teacher-forced one-step pass
    return {"metrics": res["metrics"], "evaluations": evals, "plain_evaluations": 2 * plain_evals,
            "cost_ratio": evals / max(1, 2 * plain_evals), "wall_s": time.perf_counter() - start,
            "candidates": exp.eval.ttc.candidates, "horizon": exp.eval.ttc.horizon,
            "per_step_ms": res["timing"]["per_step_ms"], "corrector": kind,
            # against the same corrected model without TTC (its deterministic path)
            "gain_nrmse": base["variants"][kind]["nrmse"] - res["metrics"]["nrmse"],
            "gain_nrmse_vs_selected": base["metrics"]["nrmse"] - res["metrics"]["nrmse"]}
