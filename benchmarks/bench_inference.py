"""Inference speed: rolling out the whole test set with UPS (every rollout mode), FNO and U-Net against the
numerical solver producing the same frames at the same output resolution, all timed in this one process (CPU
seconds of its one thread, ``peers_common.compute_clock``: other jobs on the machine do not skew them), at
the benchmark's 256 points and again at every cell of the data (1,024 points; ``full_resolution``).

Weights are freshly initialised: the cost of a rollout does not depend on their values (accuracy is the
accuracy benchmark's job). The solver starts from the same first frames and writes the same 41 frames at
the same 256 points. Usage: python benchmarks/bench_inference.py [--quick]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_common import (  # noqa: E402
    Bench,
    compile_in_process,
    compute_clock,
    load_bench_config,
    n_params,
    one_step_model,
    ups_config,
)

from ups.data.metadata import DatasetMetadata  # noqa: E402
from ups.data.pdes import PDES  # noqa: E402
from ups.eval.metrics import nrmse  # noqa: E402
from ups.models import MODELS  # noqa: E402
from ups.models.compile import compile_for_inference  # noqa: E402
from ups.models.corrector import CorrectedSurrogate, Corrector  # noqa: E402
from ups.models.refiner import FieldCorrectedSurrogate, FieldRefiner  # noqa: E402
from ups.rollout import ROLLOUTS, flatten_points, frames_per_step, rollout, rollout_grid  # noqa: E402
from ups.training.stages.consistency_distill import ConsistencyDistillStage  # noqa: E402
from ups.training.stages.diff_residual import DiffResidualStage  # noqa: E402
from ups.training.stages.operator import OperatorStage  # noqa: E402

BUNDLE = 4  # frames per step of the bundled UPS timed beside the configured one (README "Temporal bundling")


def _with_correctors(model: torch.nn.Module, exp, meta) -> dict[str, torch.nn.Module]:
    """The UPS model (one frame per step) refined every step by its corrector, as the config sizes it
    (``diff_residual.space``: the physical-space refiner, the default, or the latent corrector): the multi-step
    sampler (all K levels: K + 1 refiner calls per step) and the distilled one (``consistency_distill``'s student
    calls)."""
    multi = DiffResidualStage.stage_config(exp)
    student = ConsistencyDistillStage.stage_config(exp)
    n_cond = meta.n_params + 1
    if multi.space == "physical":
        refiner = FieldRefiner(channels=meta.n_channels, n_cond=n_cond, spatial_shape=tuple(meta.spatial_shape),
                               periodic=meta.boundary == "periodic", config=multi.refiner)
        return {"ups_multi_corrector": FieldCorrectedSurrogate(model=model, corrector=refiner,
                                                               steps=multi.refiner.steps),
                "ups_distilled_corrector": FieldCorrectedSurrogate(model=model, corrector=refiner,
                                                                   steps=student.student_steps - 1)}
    corrector = Corrector(latent_dim=model.latent_dim, n_cond=n_cond, config=multi.corrector)
    return {"ups_multi_corrector": CorrectedSurrogate(model=model, corrector=corrector, steps=multi.corrector.steps),
            "ups_distilled_corrector": CorrectedSurrogate(model=model, corrector=corrector,
                                                          steps=student.student_steps)}


def _test_set(bench: Bench) -> dict[str, torch.Tensor]:
    """All test trajectories in one batch: u [S, T, N, C] normalised, coords, params, dt."""
    from ups.data.datasets import collate

    ds = bench.dataset("test", None)
    batch = collate([ds[i] for i in range(len(ds))])
    u, coords = flatten_points(batch["u"], batch["coords"])
    return {"u": u, "coords": coords, "params": batch["params"], "dt": batch["dt"]}


@torch.inference_mode()
def _time_rollout(step_fn, data: dict, batch: int, repeats: int) -> float:
    """Best CPU time (s) of rolling out every test trajectory over all its frames, in batches of ``batch``;
    ``step_fn(u0, coords, params, dt, steps)`` rolls one batch out."""
    return _time_rollouts({"one": step_fn}, data, batch, repeats)["one"]


@torch.inference_mode()
def _time_rollouts(step_fns: dict, data: dict, batch: int, repeats: int) -> dict[str, float]:
    """:func:`_time_rollout` of every named function, the repeats interleaved (round r times every function once),
    so that a machine that speeds up or slows down during the run favours none of them."""
    steps = data["u"].shape[1] - 1
    best = dict.fromkeys(step_fns, float("inf"))
    for _ in range(repeats):
        for name, step_fn in step_fns.items():
            t0 = compute_clock()
            for i in range(0, data["u"].shape[0], batch):
                sl = slice(i, i + batch)
                step_fn(data["u"][sl, 0], data["coords"][sl], data["params"][sl], data["dt"][sl], steps)
            best[name] = min(best[name], compute_clock() - t0)
    return best


def _rollout_fn(model: torch.nn.Module, mode: str | None):
    """A batch rollout: the model's ``mode`` (UPS: ``reencode``, ``latent``) or ``predict_next`` repeated."""
    if mode is None:
        one = one_step_model(model).eval()
        return lambda u0, x, p, dt, steps: rollout_grid(one, u0, x, p, dt, steps)
    model.eval()
    return lambda u0, x, p, dt, steps: rollout(model, u0, x, p, dt, steps, mode=mode)


def _time_compiled(model: torch.nn.Module, mode: str, data: dict, batch: int, repeats: int, *, work: Path,
                   solver_s: float) -> dict | None:
    """UPS's default rollout after ``Simulator(compile=True)``'s ``compile_for_inference`` (the model keeps the
    wrappers: call last); ``compile_s`` is the first pass's extra CPU time (compiling every batch shape)."""
    compile_in_process()
    if not compile_for_inference(model, device=torch.device("cpu"), cache=str(work / "inductor_cache")):
        return None
    fn = _rollout_fn(model, mode)
    first = _time_rollout(fn, data, batch, 1)
    seconds = _time_rollout(fn, data, batch, repeats)
    return {"model": "upt", "rollout_mode": f"{mode}, compiled", "params": n_params(model), "seconds": seconds,
            "ms_per_sample": 1e3 * seconds / data["u"].shape[0], "speedup_vs_solver": solver_s / seconds,
            "compile_s": round(first - seconds, 2)}


def _solver_fn(bench: Bench, outputs: list, samples: int, choices: list):
    """The solver as a batch rollout (``_time_rollouts``' signature): from the normalised first frames [b, N, 1] it
    solves the physical field at the same points and frames, and appends the frames [b, T, N] to ``outputs``, which
    keeps the last ``samples`` rows only (after a pass over the test set: that pass), and its own choices for the
    batch (``PDE.last_run``: internal grid, steps per frame) to ``choices``."""
    gen, meta = bench.exp.data.generate, bench.meta
    pde = PDES.get(meta.pde)()
    params = pde.make_params(**dict(gen.params), resolution=meta.n_points, frames=meta.n_frames,
                             t_end=meta.dt * (meta.n_frames - 1))

    def solve(u0, coords, p, dt, steps):
        outputs.append(pde.solve(bench.normalizer.denormalize(u0).double()[..., 0], params=params))
        choices.append(dict(getattr(pde, "last_run", {})))
        while sum(o.shape[0] for o in outputs) > samples:
            outputs.pop(0)
    return solve


def _largest(choices: list[dict]) -> dict:
    """The largest of each numeric choice the solver made over its batches (``PDE.last_run``), e.g. its internal
    grid: what the solver's cost follows, whatever the output resolution."""
    keys = {k for c in choices for k, v in c.items() if isinstance(v, int | float)}
    return {k: max(c[k] for c in choices if k in c) for k in sorted(keys)}


def _solver_error(bench: Bench, data: dict, outputs: list) -> float:
    """nRMSE of the solver's last pass over the test set (``outputs`` of :func:`_solver_fn`) against the test
    frames."""
    phys = bench.normalizer.denormalize(data["u"]).double()  # [S, T, N, 1]
    out = torch.cat(outputs)
    return nrmse(out[:, 1:, :, None], phys[:, 1:])


def _time_resolution(work: Path, quick: bool, stride: int | None, repeats: int, *, correctors: bool,
                     trained: DatasetMetadata | None = None) -> tuple[dict, DatasetMetadata]:
    """Solver and every model at one spatial stride of the data (None: the configs' own) -> the results and the
    data's metadata. trained: the metadata UPS is built from (the grid it trains on; default this stride's), so
    that its rollout mode refines relative to the training grid, as for a trained model."""
    extra = [] if stride is None else [f"data.spatial_stride={stride}"]
    bench = Bench.open(load_bench_config("fno_burgers1d", quick=quick, work=work, extra=extra))
    data = _test_set(bench)
    batch = bench.exp.eval.batch_size
    configs = {"ups": ups_config(quick=quick, work=work)[0],
               "fno": load_bench_config("fno_burgers1d", quick=quick, work=work),
               "unet": load_bench_config("unet_burgers1d", quick=quick, work=work)}
    torch.manual_seed(0)
    built = {name: MODELS.get(exp.model.name).from_config(trained if name == "ups" and trained else bench.meta,
                                                          exp.model.params) for name, exp in configs.items()}
    ups_mode = OperatorStage.stage_config(configs["ups"]).rollout_mode
    runs = {"ups": (built["ups"], ups_mode), "fno": (built["fno"], None), "unet": (built["unet"], None)}
    runs |= {f"ups_{mode}": (built["ups"], mode) for mode in ROLLOUTS.names() if mode != ups_mode}
    # temporal bundling side by side: a one-frame-per-step UPS config is timed at BUNDLE frames per step too, a
    # bundled one at one frame per step (what a corrector needs)
    other = 1 if frames_per_step(built["ups"]) > 1 else BUNDLE
    torch.manual_seed(0)
    variant = MODELS.get("upt").from_config(trained or bench.meta,
                                            {**configs["ups"].model.params, "frames_per_step": other})
    runs[f"ups_frames_per_step_{other}"] = (variant, ups_mode)
    single = variant if other == 1 else built["ups"]
    if correctors:  # re-encoding in the model's mode (a physical-space refiner corrects at the data points)
        runs |= {name: (m, ups_mode) for name, m in _with_correctors(single, configs["ups"], bench.meta).items()}
    solved, choices = [], []
    fns = {"solver": _solver_fn(bench, solved, data["u"].shape[0], choices)}
    fns |= {name: _rollout_fn(m, mode) for name, (m, mode) in runs.items()}
    timed = _time_rollouts(fns, data, batch, repeats)  # the solver and every model, in interleaved rounds
    solver_s, solver_err, models = timed["solver"], _solver_error(bench, data, solved), {}
    for name, (model, mode) in runs.items():
        seconds = timed[name]
        models[name] = {"model": configs.get(name, configs["ups"]).model.name, "rollout_mode": mode or "one-step",
                        "frames_per_step": frames_per_step(model), "params": n_params(model), "seconds": seconds,
                        "ms_per_sample": 1e3 * seconds / data["u"].shape[0], "speedup_vs_solver": solver_s / seconds}
    if not quick:  # the compilation alone outlasts a quick run
        models["ups_compiled"] = _time_compiled(built["ups"], ups_mode, data, batch, repeats, work=work,
                                                solver_s=solver_s)
    s, t = data["u"].shape[:2]
    return {"samples": s, "steps": t - 1, "points": bench.meta.n_points, "batch_size": batch,
            "solver": {"pde": bench.meta.pde, "seconds": solver_s, "ms_per_sample": 1e3 * solver_s / s,
                       "nrmse_vs_test_data": solver_err, **_largest(choices)},
            "models": models}, bench.meta


def run(budget: float | None = None, quick: bool = False) -> dict:
    """Time the rollouts at the benchmark's resolution (256 points) and at every cell (1,024); ``budget`` is
    unused (inference needs no training). Fresh weights: the cost does not depend on their values."""
    torch.set_num_threads(1)
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="ups-bench-inf-") as tmp:
        work = Path(tmp)
        base, meta = _time_resolution(work, quick, None, repeats, correctors=True)
        full, _ = _time_resolution(work, quick, 1, max(1, repeats - 1), correctors=False, trained=meta)
    return {"benchmark": "inference", "quick": quick, **base, "repeats": repeats, "threads": torch.get_num_threads(),
            "full_resolution": full}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="unused (kept for run_all)")
    parser.add_argument("--quick", action="store_true", help="tiny data and models, seconds")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.budget, args.quick), indent=2))


if __name__ == "__main__":
    main()
