"""Leaderboard CSV (atomic, typed, one champion), the promotion gate's every rule, `ups leaderboard`."""

import math

import pytest

from ups.cli import main
from ups.errors import DataError, UPSError
from ups.eval.leaderboard import COLUMNS, Leaderboard, gate, row_from_eval

EVAL = {"metrics": {"nrmse": 0.02, "nrmse_one_step": 0.002, "corr_time": 40.0, "conservation_gap": 1e-4,
                    "bc_violation": 3e-3, "crmse": 1.0},
        "data": {"file": "data/burgers_test.hdf5", "split": "test", "samples": 8}}


def test_append_rows_round_trip_typed(tmp_path):
    board = Leaderboard(tmp_path / "sub" / "lb.csv")
    assert board.rows() == [] and board.champion() is None and not board.exists()
    stored = board.append(row_from_eval(EVAL, run="runs/a", status="passed", wall_time_s=12.5))
    rows = board.rows()
    assert rows == [stored]
    # exact: the CSV text round-trips the float (every column as stored: rows == [stored] above)
    assert rows[0]["nrmse"] == 0.02 and rows[0]["champion"] is False
    assert rows[0]["data"] == "data/burgers_test.hdf5" and rows[0]["split"] == "test" and rows[0]["timestamp"]
    board.append({"run": "runs/b", "nrmse": float("nan"), "status": "failed"})
    rows = board.rows()
    assert [r["run"] for r in rows] == ["runs/a", "runs/b"]
    assert math.isnan(rows[1]["nrmse"]) and rows[1]["corr_time"] is None
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.suffix == ".tmp"] == []
    assert (tmp_path / "sub" / "lb.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_append_rejects_unknown_columns_and_missing_run(tmp_path):
    board = Leaderboard(tmp_path / "lb.csv")
    with pytest.raises(UPSError, match="unknown leaderboard column.*nrsme"):
        board.append({"run": "a", "nrsme": 1.0})
    with pytest.raises(UPSError, match="needs a 'run'"):
        board.append({"nrmse": 1.0})
    assert not board.exists()


def test_a_foreign_csv_is_refused(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a UPS leaderboard"):
        Leaderboard(tmp_path / "other.csv").rows()


def test_champion_and_promote_keep_exactly_one(tmp_path):
    board = Leaderboard(tmp_path / "lb.csv")
    board.append({"run": "a", "nrmse": 0.5, "champion": True})
    board.append({"run": "b", "nrmse": 0.3})
    assert board.champion()["run"] == "a"
    board.append({"run": "a", "nrmse": 0.4})  # a second evaluation of run a
    promoted = board.promote("a")
    flags = [r["champion"] for r in board.rows()]
    assert flags == [False, False, True] and promoted["nrmse"] == 0.4  # exact: the CSV text round-trips the float
    board.append({"run": "c", "nrmse": 0.1, "champion": True})
    assert [r["champion"] for r in board.rows()] == [False, False, False, True]
    assert board.champion()["run"] == "c"
    with pytest.raises(UPSError, match="run 'zz' has no row"):
        board.promote("zz")


def test_format_table_aligns_and_marks_the_champion(tmp_path):
    board = Leaderboard(tmp_path / "lb.csv")
    assert "no evaluations yet" in board.format_table()
    board.append({"run": "runs/long-run-name", "nrmse": 0.0123456, "status": "passed", "champion": True})
    board.append({"run": "b", "nrmse": 1.5, "status": "failed"})
    lines = board.format_table().splitlines()
    assert lines[0].split()[:2] == ["timestamp", "run"] and set(lines[1]) <= {"-", " "}
    assert "0.01235" in lines[2] and lines[2].rstrip().endswith("*") and not lines[3].endswith("*")
    assert lines[2].index("0.01235") == lines[3].index("1.5")  # columns aligned


PERS = {"nrmse": 1.0, "conservation_gap": 0.0, "bc_violation": 0.0}


def test_gate_without_champion_must_beat_persistence():
    assert gate({"nrmse": 0.5}, None, PERS) == (True, ["nrmse 0.5 < persistence 1 (no champion yet)"])
    ok, reasons = gate({"nrmse": 1.2}, None, PERS)
    assert not ok and "persistence" in reasons[0]
    ok, reasons = gate({"nrmse": 0.5}, None, {})
    assert not ok and "no finite persistence" in reasons[0]


def test_gate_with_champion_margin():
    champ = {"nrmse": 0.1, "conservation_gap": 0.01, "bc_violation": 0.01}
    cand = {"nrmse": 0.094, "conservation_gap": 0.01, "bc_violation": 0.01}
    assert gate(cand, champ, PERS, margin=0.05)[0]  # 0.094 < 0.095
    ok, reasons = gate({**cand, "nrmse": 0.096}, champ, PERS, margin=0.05)
    assert not ok and reasons == ["nrmse 0.096 >= 0.095 (champion 0.1 x (1 - margin 0.05))"]
    assert not gate({**cand, "nrmse": 0.1}, champ, PERS)[0]  # a tie does not dethrone the champion


def test_gate_conservation_and_boundary_ratios():
    champ = {"nrmse": 0.1, "conservation_gap": 0.01, "bc_violation": 0.02}
    good = {"nrmse": 0.05, "conservation_gap": 0.015, "bc_violation": 0.03}
    ok, reasons = gate(good, champ, PERS, conservation_ratio=1.5, bc_ratio=1.5)
    assert ok and len(reasons) == 3  # at the limits exactly: allowed
    ok, reasons = gate({**good, "conservation_gap": 0.016}, champ, PERS, conservation_ratio=1.5, bc_ratio=1.5)
    assert not ok and len(reasons) == 1 and reasons[0].startswith("conservation_gap 0.016 > 0.015")
    ok, reasons = gate({**good, "bc_violation": 0.05, "conservation_gap": float("nan")}, champ, PERS)
    assert not ok and [r.split()[0] for r in reasons] == ["conservation_gap:", "bc_violation"]


def test_gate_floor_when_the_champion_is_exact_and_non_finite_candidates():
    champ = {"nrmse": 0.1, "conservation_gap": 0.0, "bc_violation": 0.0}
    assert gate({"nrmse": 0.05, "conservation_gap": 5e-7, "bc_violation": 0.0}, champ, PERS)[0]
    assert not gate({"nrmse": 0.05, "conservation_gap": 2e-6, "bc_violation": 0.0}, champ, PERS)[0]
    ok, reasons = gate({"nrmse": float("inf")}, champ, PERS)
    assert not ok and "not finite" in reasons[0]
    # a champion row without physics metrics (older row) is compared on nRMSE only
    assert gate({"nrmse": 0.05}, {"nrmse": 0.1, "conservation_gap": None}, PERS)[0]


def test_cli_prints_the_table_or_a_clear_error(tmp_path, capsys):
    path = tmp_path / "lb.csv"
    assert main(["leaderboard", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no leaderboard at") and "--file" in err and len(err.strip().splitlines()) == 1
    Leaderboard(path).append({"run": "runs/x", "nrmse": 0.25, "status": "passed", "champion": True})
    assert main(["leaderboard", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "runs/x" in out and "0.25" in out
