"""A self-contained HTML report per run: config summary, metrics table, TTC comparison and every plot
embedded as a base64 PNG data URI (the file can be moved or mailed and never shows a broken image).

The ``eval_json`` dict is what ``ups eval`` writes::

    {"metrics": {...}, "baselines": {"persistence": {...}, "fno": {...}}, "ttc": {...}, "data": {...},
     "run": {...}}

and the TTC dict (``ttc=`` or ``eval_json["ttc"]``) holds ``"metrics"`` (the same keys, with TTC) plus any
scalars to show beside them (e.g. ``"evaluations"``, ``"cost_ratio"``, ``"candidates"``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from ups.io_utils import atomic_write_text
from ups.rundir import RunFiles

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-family: monospace; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #a33; }
"""


def _fmt(value) -> str:
    """A table cell: 4 significant digits for floats, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _kv_table(items: Mapping) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in items.items() if _is_scalar(v))
    return f"<table>{rows}</table>" if rows else "<p>-</p>"


def metrics_columns(eval_json: Mapping, ttc: Mapping | None) -> dict[str, Mapping]:
    """The metric dicts to compare, in column order: model, model + TTC, persistence, then the peers."""
    columns: dict[str, Mapping] = {"model": eval_json.get("metrics") or {}}
    if ttc and isinstance(ttc.get("metrics"), Mapping):
        columns["model + TTC"] = ttc["metrics"]
    baselines = eval_json.get("baselines") or {}
    if "persistence" in baselines:
        columns["persistence"] = baselines["persistence"]
    for name, values in baselines.items():
        if name != "persistence" and isinstance(values, Mapping):
            columns[name] = values
    return columns


def _metrics_table(columns: Mapping[str, Mapping]) -> str:
    keys: list[str] = []
    for values in columns.values():
        keys += [k for k, v in values.items() if _is_scalar(v) and k not in keys]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>"
        + "".join(f'<td class="num">{html.escape(_fmt(values.get(k)))}</td>' for values in columns.values())
        + "</tr>" for k in keys)
    return f"<table><tr><th>metric</th>{head}</tr>{body}</table>"


def _ratio_line(columns: Mapping[str, Mapping]) -> str:
    model = columns["model"].get("nrmse")
    pers = columns.get("persistence", {}).get("nrmse")
    if not isinstance(model, (int, float)) or not isinstance(pers, (int, float)) or model <= 0:
        return ""
    return f"<p>Rollout nRMSE: model {_fmt(float(model))}, persistence {_fmt(float(pers))} " \
           f"(persistence / model = {_fmt(float(pers) / float(model))}).</p>"


def _config_summary(config_yaml: str) -> str:
    """Key facts of the resolved config (when it parses), then the whole YAML, escaped."""
    try:
        raw = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError:
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    section = lambda name: raw.get(name) if isinstance(raw.get(name), dict) else {}  # noqa: E731
    data, model, training = section("data"), section("model"), section("training")
    facts = {
        "name": raw.get("name"), "pde": data.get("pde"),
        "data": data.get("pdebench_file") or ", ".join(str(data[k]) for k in ("train", "val", "test") if data.get(k)),
        "model": model.get("name"), "stages": ", ".join(section("stages")) or None,
        "epochs": training.get("epochs"), "lr": training.get("lr"), "precision": training.get("precision"),
    }
    facts = {k: v for k, v in facts.items() if v not in (None, "")}
    return (_kv_table(facts) + "<details><summary>resolved config (YAML)</summary>"
            f"<pre>{html.escape(config_yaml)}</pre></details>")


def _embed(name: str, path: Path) -> str:
    """A <figure> with the PNG (or animated GIF) as a data URI, or a note when the file is missing or neither."""
    label = html.escape(name)
    try:
        data = Path(path).read_bytes()
    except OSError:
        return f'<p class="note">plot "{label}" is missing ({html.escape(str(path))})</p>'
    is_gif = data[:6] in (b"GIF87a", b"GIF89a")
    mime = "image/png" if data.startswith(PNG_SIGNATURE) else "image/gif" if is_gif else None
    if mime is None:
        return f'<p class="note">plot "{label}" is not a PNG or GIF ({html.escape(str(path))})</p>'
    uri = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{label}" src="{uri}"><figcaption>{label}</figcaption></figure>'


def _with_training_curves(run_dir: Path, plots: Mapping[str, Path]) -> dict[str, Path]:
    """The plots, with training curves drawn from the run's train_log.jsonl first when none was given."""
    plots = dict(plots)
    run = RunFiles(run_dir)
    log = run.log_path
    if not any(name.startswith("training") for name in plots) and log.is_file():
        from ups.eval.plots import plot_training_curves

        plots = {"training curves": plot_training_curves(log, run.plots_dir / "training_curves.png"), **plots}
    return plots


VARIANT_KEYS = ("nrmse", "nrmse_one_step", "corr_time", "valid_time", "conservation_gap", "per_step_ms")


def variant_columns(eval_json: Mapping, ttc: Mapping | None) -> dict[str, Mapping]:
    """Every variant of the run side by side (operator alone, each corrector, the corrector + TTC), with its
    cost per rollout step (``per_step_ms``), as columns for :func:`_metrics_table`."""
    columns = {name: {k: v.get(k) for k in VARIANT_KEYS}
               for name, v in (eval_json.get("variants") or {}).items() if isinstance(v, Mapping)}
    if columns and ttc and isinstance(ttc.get("metrics"), Mapping):
        name = f"{ttc.get('corrector', 'corrector')} + TTC (best of {ttc.get('candidates', '?')})"
        columns[name] = {**{k: ttc["metrics"].get(k) for k in VARIANT_KEYS}, "per_step_ms": ttc.get("per_step_ms")}
    return columns


def _variants_section(eval_json: Mapping, ttc: Mapping | None) -> str:
    columns = variant_columns(eval_json, ttc)
    if not columns:
        return ""
    chosen = (eval_json.get("run") or {}).get("corrector")
    return ("<h2>Variants</h2><p>The same trajectories through every variant (none: the operator alone; multi: "
            "with the multi-step corrector; distilled: with the distilled one); per_step_ms is the wall time "
            f"per rollout step and sample. Selected: {html.escape(str(chosen))}.</p>" + _metrics_table(columns))


def _ttc_section(ttc: Mapping | None) -> str:
    if not ttc:
        return ""
    scalars = {k: v for k, v in ttc.items() if k != "metrics" and _is_scalar(v)}
    return "<h2>Test-time compute</h2>" + _kv_table(scalars)


def write_report(run_dir: str | Path, *, eval_json: Mapping, config_yaml: str, plots: Mapping[str, Path],
                 ttc: Mapping | None = None, title: str | None = None, out: str | Path | None = None) -> Path:
    """Write ``out`` (default ``run_dir/report.html``) atomically and return its path.

    eval_json: the ``ups eval`` dict (see the module doc); config_yaml: the run's resolved config;
    plots: {caption: PNG path}, embedded in order (a missing file becomes a visible note, never a broken
    image); training curves are drawn from ``run_dir/train_log.jsonl`` when no plot name starts with
    "training"; ttc: the TTC dict (defaults to ``eval_json["ttc"]``).
    """
    run_dir = Path(run_dir)
    ttc = ttc if ttc is not None else eval_json.get("ttc")
    columns = metrics_columns(eval_json, ttc)
    run_info = eval_json.get("run") or {}
    title = title or f"UPS report: {run_info.get('dir') or run_dir.name}"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>written {stamp}</p>",
        "<h2>Run</h2>", _kv_table(run_info), "<h2>Data</h2>", _kv_table(eval_json.get("data") or {}),
        "<h2>Configuration</h2>", _config_summary(config_yaml),
        "<h2>Metrics</h2>", _ratio_line(columns),
        "<p>Physical space, de-normalised, over the whole rollout; lower is better except corr_time and "
        "valid_time (steps, or times when dt is known).</p>", _metrics_table(columns),
        _variants_section(eval_json, ttc), _ttc_section(ttc),
        "<h2>Plots</h2>",
        *(_embed(name, path) for name, path in _with_training_curves(run_dir, plots).items()),
        "</body></html>\n",
    ]
    out = Path(out) if out is not None else RunFiles(run_dir).report_path
    atomic_write_text(out, "\n".join(p for p in parts if p))
    return out
