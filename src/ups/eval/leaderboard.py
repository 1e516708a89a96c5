"""The leaderboard: one CSV row per evaluation across runs, a champion, and the promotion gate.

Every change rewrites the whole file to a temporary file and renames it over the CSV (under an advisory
lock on ``<file>.lock``), so a crash or a concurrent writer never leaves a half-written table.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ups.errors import DataError, UPSError
from ups.io_utils import atomic_path

COLUMNS = ("timestamp", "run", "data", "split", "nrmse", "nrmse_one_step", "corr_time", "conservation_gap",
           "bc_violation", "wall_time_s", "status", "champion")
FLOAT_COLUMNS = frozenset({"nrmse", "nrmse_one_step", "corr_time", "conservation_gap", "bc_violation", "wall_time_s"})
METRIC_COLUMNS = ("nrmse", "nrmse_one_step", "corr_time", "conservation_gap", "bc_violation")


def _encode(key: str, value) -> str:
    if key == "champion":
        return "true" if value else "false"
    if value is None:
        return ""
    return repr(float(value)) if key in FLOAT_COLUMNS else str(value)


def _decode(key: str, text: str):
    if key == "champion":
        return text.strip().lower() == "true"
    if key in FLOAT_COLUMNS:
        return float(text) if text.strip() else None
    return text


def _fmt(key: str, value) -> str:
    if key == "champion":
        return "*" if value else ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


class Leaderboard:
    """A CSV leaderboard at ``path`` with the columns of :data:`COLUMNS` (``champion`` is true on one row)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def rows(self) -> list[dict]:
        """Every row in file order, typed (floats or None, champion a bool); [] when the file does not exist."""
        if not self.exists():
            return []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise DataError(f"{self.path} is not a UPS leaderboard (columns {reader.fieldnames}, expected "
                                f"{', '.join(COLUMNS)}); move it away or pass another file")
            try:
                return [{k: _decode(k, row[k] or "") for k in COLUMNS} for row in reader]
            except ValueError as err:
                raise DataError(f"{self.path} has a malformed number ({err}); fix or remove that row") from None

    def _write(self, rows: list[dict]) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows([_encode(k, row.get(k)) for k in COLUMNS] for row in rows)

    def append(self, row: Mapping) -> dict:
        """Add one evaluation (keys from :data:`COLUMNS`; ``run`` required, ``timestamp`` defaults to now in
        UTC, ``champion`` to False). A row appended as champion demotes the others. Returns the row stored."""
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise UPSError(f"unknown leaderboard column(s) {', '.join(unknown)} (allowed: {', '.join(COLUMNS)})")
        if not row.get("run"):
            raise UPSError("a leaderboard row needs a 'run' (the run directory or name)")
        new = {k: row.get(k) for k in COLUMNS}
        new["timestamp"] = new["timestamp"] or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        new["champion"] = bool(new["champion"])
        with self._locked():
            rows = self.rows()
            if new["champion"]:
                for r in rows:
                    r["champion"] = False
            rows.append(new)
            self._write(rows)
        return {k: _decode(k, _encode(k, new[k])) for k in COLUMNS}

    def champion(self) -> dict | None:
        """The champion row (the last one flagged, should a hand-edited file flag several), or None."""
        flagged = [r for r in self.rows() if r["champion"]]
        return flagged[-1] if flagged else None

    def promote(self, run: str) -> dict:
        """Make the latest row of ``run`` the champion (and no other row). Returns that row."""
        with self._locked():
            rows = self.rows()
            idx = [i for i, r in enumerate(rows) if r["run"] == run]
            if not idx:
                raise UPSError(f"run '{run}' has no row in {self.path} (append its evaluation first)")
            for i, r in enumerate(rows):
                r["champion"] = i == idx[-1]
            self._write(rows)
        return rows[idx[-1]]

    def format_table(self) -> str:
        """The rows as an aligned text table (champion marked '*'), or a note when there are none."""
        rows = self.rows()
        if not rows:
            return f"{self.path}: no evaluations yet"
        cells = [list(COLUMNS)] + [[_fmt(k, r[k]) for k in COLUMNS] for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
        lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))).rstrip() for c in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def row_from_eval(eval_json: Mapping, *, run: str, status: str, wall_time_s: float | None = None,
                  champion: bool = False) -> dict:
    """A leaderboard row from the ``ups eval`` dict (its ``metrics`` and ``data`` blocks)."""
    metrics = eval_json.get("metrics") or {}
    data = eval_json.get("data") or {}
    row = {k: metrics.get(k) for k in METRIC_COLUMNS}
    return {**row, "run": run, "data": data.get("file"), "split": data.get("split"), "status": status,
            "wall_time_s": wall_time_s, "champion": champion}


def _finite(metrics: Mapping | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _no_worse(name: str, cand: Mapping, champ: Mapping, ratio: float, floor: float) -> tuple[bool, str]:
    c, ch = _finite(cand, name), _finite(champ, name)
    if ch is None:
        return True, f"{name}: the champion has none, not compared"
    limit = max(ch * ratio, floor)
    if c is None:
        return False, f"{name}: the candidate's value is missing or not finite (champion {ch:.4g})"
    verdict = c <= limit
    return verdict, f"{name} {c:.4g} {'<=' if verdict else '>'} {limit:.4g} (champion {ch:.4g} x {ratio:g})"


def gate(candidate: Mapping, champion: Mapping | None, persistence: Mapping, *, margin: float = 0.0,
         conservation_ratio: float = 1.5, bc_ratio: float = 1.5, floor: float = 1e-6) -> tuple[bool, list[str]]:
    """Decide whether a candidate's metrics may be promoted. Metric dicts hold ``nrmse``,
    ``conservation_gap`` and ``bc_violation`` (an eval ``metrics`` block or a leaderboard row).

    With a champion: nRMSE < champion's x (1 - margin), and conservation_gap / bc_violation no more than
    the champion's x their ratio (or ``floor``, whichever is larger, so a champion at exactly 0 does not
    forbid every candidate). With no champion: nRMSE < persistence's. A non-finite candidate nRMSE fails.
    Returns (passed, reasons): the failed checks when it fails, the passed checks when it passes.
    """
    nrmse = _finite(candidate, "nrmse")
    if nrmse is None:
        return False, [f"nrmse: the candidate's value {candidate.get('nrmse')!r} is missing or not finite"]
    if champion is None:
        pers = _finite(persistence, "nrmse")
        if pers is None:
            return False, ["nrmse: no champion and no finite persistence nRMSE to compare with"]
        ok = nrmse < pers
        return ok, [f"nrmse {nrmse:.4g} {'<' if ok else '>='} persistence {pers:.4g} (no champion yet)"]
    champ = _finite(champion, "nrmse")
    checks = []
    if champ is None:
        checks.append((True, "nrmse: the champion has none, not compared"))
    else:
        limit = champ * (1 - margin)
        ok = nrmse < limit
        checks.append((ok, f"nrmse {nrmse:.4g} {'<' if ok else '>='} {limit:.4g} "
                           f"(champion {champ:.4g} x (1 - margin {margin:g}))"))
    checks.append(_no_worse("conservation_gap", candidate, champion, conservation_ratio, floor))
    checks.append(_no_worse("bc_violation", candidate, champion, bc_ratio, floor))
    passed = all(ok for ok, _ in checks)
    return passed, [msg for ok, msg in checks if ok == passed]
