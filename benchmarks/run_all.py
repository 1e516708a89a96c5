"""Run every ``benchmarks/bench_*.py`` module and record its JSON result.

Each module defines ``run(budget: float | None, quick: bool) -> dict``. This script prints each result
as one JSON object and writes it atomically to ``benchmarks/results/NAME.json`` (NAME = the module name
without ``bench_``).

    python benchmarks/run_all.py [--budget SECONDS] [--budgets 300,900,1800] [--only NAME] [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from ups.errors import UPSError
from ups.io_utils import atomic_write_json

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    """Benchmark name -> module path, sorted by name."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load(path: Path):
    """Import a benchmark module from its file (its folder on sys.path, for shared helper modules)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    # registered under its importable name, so worker processes can unpickle its functions
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def run_benchmarks(*, budget: float | None, only: str | None, quick: bool, results: Path,
                   budgets: list[float] | None = None) -> dict[str, dict]:
    """Run the selected benchmarks, sharing ``budget`` seconds between those not yet run."""
    found = discover()
    if only is not None:
        name = only.removeprefix("bench_")
        if name not in found:
            raise UPSError(f"unknown benchmark '{only}' (available: {', '.join(found) or 'none'})")
        found = {name: found[name]}
    out: dict[str, dict] = {}
    start = time.monotonic()
    for i, (name, path) in enumerate(found.items()):
        share = None
        if budget is not None:
            share = max(1.0, (budget - (time.monotonic() - start)) / (len(found) - i))
        extra = {"budgets": budgets} if budgets and name == "accuracy" else {}
        result = load(path).run(budget=share, quick=quick, **extra)
        result = {"benchmark": name, **result}
        print(json.dumps(result), flush=True)
        atomic_write_json(results / f"{name}.json", result)
        out[name] = result
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=None, help="seconds for all benchmarks together")
    parser.add_argument("--only", default=None, help="run one benchmark by NAME (e.g. datagen)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations (a smoke test)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where NAME.json files go")
    parser.add_argument("--budgets", default=None,
                        help="accuracy budget curve: training seconds per model, comma-separated (e.g. 300,900,1800)")
    args = parser.parse_args(argv)
    try:
        budgets = load(HERE / "bench_accuracy.py").parse_budgets(args.budgets) if args.budgets else None
        run_benchmarks(budget=args.budget, only=args.only, quick=args.quick, results=args.results, budgets=budgets)
    except (UPSError, argparse.ArgumentTypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
