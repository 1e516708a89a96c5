"""Where the time of a training step and of a rollout step goes, per component, for UPS and FNO.

    python benchmarks/profile_step.py --label after [--batch 32] [--points 256] [--repeats 5]

Builds the UPS operator stage from ``configs/burgers1d.yaml`` (unroll K at its full length, inverse
losses at their full curriculum weight) and the FNO baseline stage from ``configs/fno_burgers1d.yaml``
on a synthetic Burgers-like batch (the cost of a step does not depend on the values), one thread. It
measures, with ``torch.profiler``:

- the operator-stage training step, forward and backward, by component (encoder pooling, encoder
  blocks, operator blocks, decoder) and by loss term (the time spent inside each term's code);
  backward operators are attributed to the component whose forward operator created them (autograd
  sequence numbers);
- one rollout step (inference) in every rollout mode (``reencode``, ``latent``, and the config's own, e.g.
  ``reencode_x2``) and the FNO's step;
- the plain CPU time (profiler off) of each, the best of ``--repeats``: process CPU time with one thread, so
  that waiting for a core on a shared machine does not count (the profiler's own times are wall-clock).

Writes ``docs/profiles/LABEL.json`` and regenerates the tables of ``docs/PERFORMANCE.md`` from every
JSON file there (so "before" and "after" stay side by side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd.profiler import record_function

from ups.allocator import retain_freed_memory
from ups.config import load_config
from ups.data.metadata import DatasetMetadata
from ups.io_utils import atomic_write_json, atomic_write_text
from ups.rollout import ROLLOUTS, rollout
from ups.training.stage import STAGES

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "docs" / "profiles"  # kept in git: the before/after record
DOC = ROOT / "docs" / "PERFORMANCE.md"
UPS_SCOPES = ("encoder pooling", "encoder blocks", "operator blocks", "decoder")
LOSS_PREFIX = "loss:"


def _meta(points: int) -> DatasetMetadata:
    return DatasetMetadata(pde="burgers1d", spatial_dims=1, spatial_shape=(points,), n_channels=1, n_frames=41,
                           dt=0.05, param_names=("nu",), domain=((0.0, 1.0),), boundary="periodic",
                           full_spatial_shape=(points * 4,))


def synthetic_batch(*, batch: int, points: int, window: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like the Burgers loader's: u [B, W, N, 1] (sums of sines, drifting), coords [B, N, 1],
    params [B, 1] (nu = 0.01), dt [B]."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.arange(points) + 0.5) / points
    k = torch.randint(1, 5, (batch, 1, 1), generator=g)
    phase = torch.rand(batch, 1, 1, generator=g) * 6.28
    t = torch.arange(window).view(1, window, 1) * 0.05
    u = torch.sin(2 * torch.pi * k * (x.view(1, 1, -1) - 0.3 * t) + phase) * torch.exp(-t)
    return {"u": u.unsqueeze(-1).float(), "coords": x.view(1, points, 1).expand(batch, -1, -1).contiguous(),
            "params": torch.full((batch, 1), 0.01), "dt": torch.full((batch,), 0.05)}


def _scoped(fn, name: str):
    def wrapped(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapped


def instrument_ups(model: torch.nn.Module) -> None:
    """Wrap the UPS model's parts (on this instance only) in profiler scopes named by ``UPS_SCOPES``."""
    model.pool.forward = _scoped(model.pool.forward, "encoder pooling")
    model._neighbourhoods = _scoped(model._neighbourhoods, "encoder pooling")
    for blk in model.encoder_blocks:
        blk.forward = _scoped(blk.forward, "encoder blocks")
    model.step = _scoped(model.step, "operator blocks")
    model.decode = _scoped(model.decode, "decoder")


def instrument_fno(model: torch.nn.Module) -> None:
    net = model.net
    for name in ("positional_embedding", "lifting", "fno_blocks", "projection"):
        part = getattr(net, name, None)
        if part is not None:
            part.forward = _scoped(part.forward, f"fno {name}")


def _scope_of(event, names: set[str], prefix: str | None = None) -> str | None:
    """The innermost enclosing user scope of ``event`` among ``names`` (or starting with ``prefix``)."""
    while event is not None:
        if event.name in names or (prefix and event.name.startswith(prefix)):
            return event.name
        event = event.cpu_parent
    return None


def attribute(prof, scopes: set[str]) -> tuple[dict[str, float], dict[str, float], float]:
    """Milliseconds per component scope and per loss scope (forward + the backward they caused), and the total.

    Each backward operator (``autograd::engine::evaluate_function: ...``) carries the sequence number of the
    forward operator that created it; that operator's scope gets its time."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    seq_scope: dict[int, tuple[str | None, str | None]] = {}
    comp, loss = defaultdict(float), defaultdict(float)
    for ev in events:
        if ev.name.startswith("autograd::engine") or ev.sequence_nr < 0 or ev.sequence_nr in seq_scope:
            continue
        if ev.cpu_parent is not None and ev.cpu_parent.sequence_nr == ev.sequence_nr:
            continue  # an inner call of the same forward operator
        seq_scope[ev.sequence_nr] = (_scope_of(ev, scopes), _scope_of(ev, set(), LOSS_PREFIX))
    total = 0.0
    for ev in events:
        if ev.cpu_parent is not None:
            continue  # only top-level events: their totals include their children
        ms = ev.cpu_time_total / 1e3
        total += ms
        if ev.name.startswith("autograd::engine::evaluate_function"):
            c, lo = seq_scope.get(ev.sequence_nr, (None, None))
            comp[c or "other"] += ms
            loss[lo or "other"] += ms
    for ev in events:  # forward time of the scopes themselves
        if ev.name in scopes and _scope_of(ev.cpu_parent, scopes) is None:
            comp[ev.name] += ev.cpu_time_total / 1e3
        if ev.name.startswith(LOSS_PREFIX) and _scope_of(ev.cpu_parent, set(), LOSS_PREFIX) is None:
            loss[ev.name] += ev.cpu_time_total / 1e3
    comp["other"] = max(0.0, total - sum(v for k, v in comp.items() if k != "other"))
    loss["other"] = max(0.0, total - sum(v for k, v in loss.items() if k != "other"))
    return dict(comp), dict(loss), total


def _best_ms(fn, repeats: int) -> float:
    """Best CPU time (ms) of ``fn()`` over ``repeats`` calls after a warm-up: the process's CPU time, not the wall
    clock, so that time spent waiting for a core on a shared machine does not count (one thread)."""
    fn()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(1e3 * (time.process_time() - t0))
    return min(times)


def _profiled(fn, scopes: set[str]) -> dict:
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    comp, loss, total = attribute(prof, scopes)
    return {"components_ms": comp, "loss_terms_ms": loss, "profiled_total_ms": total}


def _train_fn(stage, batch: dict, step: int):
    params = [p for n in stage.trainable_modules() for p in stage.modules()[n].parameters()]

    def fn():
        for p in params:
            p.grad = None
        stage.loss(batch, epoch=1000, step=step)["loss"].backward()
    return fn


def _rollout_call(model: torch.nn.Module, batch: dict, mode: str, steps: int):
    """A closure rolling ``batch``'s first frame out ``steps`` steps in ``mode`` (inference mode; any mode
    ``ups.rollout.rollout`` takes, ``reencode_x2`` included)."""
    def call():
        with torch.inference_mode():
            rollout(model, batch["u"][:, 0], batch["coords"], batch["params"], batch["dt"], steps, mode=mode)
    return call


def profile_ups(batch_size: int, points: int, repeats: int, overrides: list[str] | None = None) -> dict:
    exp = load_config(ROOT / "configs" / "burgers1d.yaml", list(overrides or []))
    stage = STAGES.get("operator").from_experiment(exp, meta=_meta(points), normalizer=None)
    stage.on_epoch_start(1000)
    model = stage.model
    window = stage.training_window()
    batch = synthetic_batch(batch=batch_size, points=points, window=window)
    full_k = 10**9  # far past the unroll ramp: K = rollout_steps
    out = {"config": "configs/burgers1d.yaml", "params": sum(p.numel() for p in model.parameters()),
           "unroll": window - 1, "train_step_ms": _best_ms(_train_fn(stage, batch, full_k), repeats)}
    rollouts = {}
    for mode in dict.fromkeys([*ROLLOUTS.names(), stage.stage_cfg.rollout_mode]):  # the config's mode too
        # the marginal cost of a step: (5 steps - 1 step) / 4, the initial encoding cancels
        rollouts[mode] = {"cpu_ms": (_best_ms(_rollout_call(model, batch, mode, 5), repeats)
                                      - _best_ms(_rollout_call(model, batch, mode, 1), repeats)) / 4}
    instrument_ups(model)
    out["train_profile"] = _profiled(_train_fn(stage, batch, full_k), set(UPS_SCOPES))
    for mode, rec in rollouts.items():
        prof = _profiled(_rollout_call(model, batch, mode, 4), set(UPS_SCOPES))  # per step: a quarter of 4 steps
        rec.update({k: {c: v / 4 for c, v in prof[k].items()} for k in ("components_ms", "loss_terms_ms")},
                   profiled_total_ms=prof["profiled_total_ms"] / 4)
    out["rollout_step"] = rollouts
    return out


def profile_fno(batch_size: int, points: int, repeats: int) -> dict:
    exp = load_config(ROOT / "configs" / "fno_burgers1d.yaml")
    stage = STAGES.get("baseline").from_experiment(exp, meta=_meta(points), normalizer=None)
    model = stage.model
    batch = synthetic_batch(batch=batch_size, points=points, window=stage.training_window())
    u0, x = batch["u"][:, 0], batch["coords"]

    def one():
        with torch.inference_mode():
            model.predict_next(u0, x, batch["params"], batch["dt"])
    out = {"config": "configs/fno_burgers1d.yaml", "params": sum(p.numel() for p in model.parameters()),
           "train_step_ms": _best_ms(_train_fn(stage, batch, 0), repeats),
           "rollout_step": {"grid": {"cpu_ms": _best_ms(one, repeats)}}}
    scopes = {"fno positional_embedding", "fno lifting", "fno fno_blocks", "fno projection"}
    instrument_fno(model)
    out["train_profile"] = _profiled(_train_fn(stage, batch, 0), scopes)
    out["rollout_step"]["grid"].update(_profiled(one, scopes))
    return out


def _row(name: str, values: dict[str, float], keys: list[str]) -> str:
    return "| " + name + " | " + " | ".join(f"{values.get(k, 0.0):.1f}" for k in keys) + " |"


def render(results: dict[str, dict]) -> str:
    """The Markdown of docs/PERFORMANCE.md from every ``docs/profiles/LABEL.json`` (label -> result)."""
    lines = ["# Performance: where a step's time goes", "",
             "Generated by `python benchmarks/profile_step.py --label LABEL` (one thread, synthetic Burgers batch;",
             "milliseconds). Profiled times are wall-clock and include the profiler's overhead; the unprofiled",
             "times are the best process CPU time of several repeats, which a shared machine disturbs less.",
             "Backward time is attributed to the component whose forward operator created it. A rollout step",
             "is the marginal cost of one more step. Do not edit by hand.", ""]
    for label, res in results.items():
        ups, fno = res["ups"], res["fno"]
        lines += [f"## {label}", "",
                  f"{res['when']}, commit {res['commit']}, batch {res['batch']}, {res['points']} points, "
                  f"{res['threads']} thread(s). {res.get('note', '')}".rstrip(), "",
                  "| | UPS | FNO |", "| --- | --- | --- |",
                  f"| parameters | {ups['params']:,} | {fno['params']:,} |",
                  f"| training step, forward + backward (CPU ms, K = {ups['unroll']}) | "
                  f"{ups['train_step_ms']:.1f} | {fno['train_step_ms']:.1f} |"]
        for mode, rec in ups["rollout_step"].items():
            lines.append(f"| one rollout step, `{mode}` (CPU ms) | {rec['cpu_ms']:.1f} | "
                         f"{fno['rollout_step']['grid']['cpu_ms']:.1f} |")
        comps = list(UPS_SCOPES) + ["other"]
        modes = list(ups["rollout_step"])
        lines += ["", "UPS by component (profiled ms):", "",
                  "| component | training step | " + " | ".join(f"rollout step `{m}`" for m in modes) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in modes) + " |"]
        for c in comps:
            vals = [ups["train_profile"]["components_ms"].get(c, 0.0)]
            vals += [ups["rollout_step"][m]["components_ms"].get(c, 0.0) for m in modes]
            lines.append(f"| {c} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
        terms = ups["train_profile"]["loss_terms_ms"]
        lines += ["", "UPS training step by loss term (profiled ms, forward and backward of each term's code):",
                  "", "| loss term | ms |", "| --- | --- |"]
        lines += [f"| {k.removeprefix(LOSS_PREFIX).strip()} | {v:.1f} |" for k, v in sorted(terms.items())]
        fc = fno["train_profile"]["components_ms"]
        fr = fno["rollout_step"]["grid"]["components_ms"]
        lines += ["", "FNO by component (profiled ms):", "", "| component | training step | rollout step |",
                  "| --- | --- | --- |"]
        lines += [f"| {k} | {fc.get(k, 0.0):.1f} | {fr.get(k, 0.0):.1f} |" for k in sorted(set(fc) | set(fr))]
        lines.append("")
    return "\n".join(lines)


def _g(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def render_ablation(history: dict) -> str:
    """Markdown of the side-by-side training runs of ``benchmarks/ablation.py`` (one table per invocation)."""
    lines = ["# Side-by-side short training runs (`benchmarks/ablation.py`)", "",
             "Every variant of one table trained at the same time for the same wall-clock budget, one thread each, on",
             "a shared 2-core machine; scored by the best validation rollout nRMSE (20 trajectories, 40 steps from",
             "frame 0). Compare rows within a table only. ms / step includes validation.", ""]
    for tag, run in history.items():
        lines += [f"## {tag}: {run['budget_s']:g} s each, data of `{run['data']}`, {run['parallel']} at a time", "",
                  "| variant | config | overrides | steps | ms / step | best val rollout nRMSE | val one-step |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in run["variants"].items():
            lines.append(f"| {name} | `{r['config']}` | {', '.join(r['overrides']) or '—'} | {r.get('steps', '—')} | "
                         f"{r.get('ms_per_step', '—')} | {_g(r.get('best_val_rollout_nrmse'))} | "
                         f"{_g(r.get('val_one_step_nrmse'))} |")
        lines.append("")
    return "\n".join(lines)


def regenerate_doc() -> None:
    found = sorted(PROFILES.glob("*.json"), key=lambda p: json.loads(p.read_text()).get("when", ""))
    results = {p.stem: json.loads(p.read_text()) for p in found}
    text = render(results)
    ablation = PROFILES / "ablation" / "runs.json"
    if ablation.is_file():
        text += "\n" + render_ablation(json.loads(ablation.read_text()))
    atomic_write_text(DOC, text)


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="current", help="name of this measurement (docs/profiles/LABEL.json)")
    parser.add_argument("--note", default="", help="one line shown under the label")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of configs/burgers1d.yaml for UPS (repeatable)")
    parser.add_argument("--no-doc", action="store_true", help="do not regenerate docs/PERFORMANCE.md")
    parser.add_argument("--doc-only", action="store_true", help="only regenerate docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    if not args.doc_only:
        retain_freed_memory()  # as the ups commands do (UPS_RETAIN_FREED_MEMORY=0 measures without it)
        torch.set_num_threads(1)
        torch.manual_seed(0)
        res = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(), "note": args.note,
               "batch": args.batch, "points": args.points, "threads": torch.get_num_threads(),
               "overrides": args.set, "ups": profile_ups(args.batch, args.points, args.repeats, args.set),
               "fno": profile_fno(args.batch, args.points, args.repeats)}
        atomic_write_json(PROFILES / f"{args.label}.json", res)
        print(json.dumps({k: res[k]["train_step_ms"] for k in ("ups", "fno")}
                         | {f"ups {m}": v["cpu_ms"] for m, v in res["ups"]["rollout_step"].items()}))
    if not args.no_doc:
        regenerate_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
