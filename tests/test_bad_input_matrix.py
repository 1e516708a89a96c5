"""The bad-input matrix: every row is an input a user can give, run through ``ups.cli.main`` (the CLI in
this process; one row calls the function the CLI calls). Each must end with exit status 2 and exactly
one ``error:`` line on stderr (no traceback) that names the file, key or sample and what to do.

The README's "Bad input" table is checked against these rows: the same ids and inputs, and the message
each row prints (with this test's temporary folder shown as ``…``). After changing a message, rewrite
the table with ``UPS_UPDATE_README=1 pytest tests/test_bad_input_matrix.py``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import write_pdebench_file, write_ups_file
from ups.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- bad-input table: begin -->", "<!-- bad-input table: end -->"
TINY = ["model.name=upt", "model.params.latent_dim=8", "model.params.num_supernodes=4", "model.params.heads=2",
        "model.params.operator_depth=1", "model.params.kernel_hidden=8", "model.params.decoder_hidden=8",
        "data.batch_size=4", "training.epochs=1", "training.progress=none", "training.device=cpu",
        "stages.operator.rollout_steps=1", "eval.batch_size=4"]


def _fields(n: int = 4, frames: int = 6, points: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (np.arange(points) + 0.5) / points
    amp = rng.uniform(0.5, 1.5, size=(n, 1, 1))
    return (amp * np.sin(2 * np.pi * (x[None, None, :] - 0.1 * np.arange(frames)[None, :, None]))).astype(np.float32)


class Ctx:
    """A folder per row, and a tiny trained UPS run shared by the rows that need one."""

    def __init__(self, root: Path, run: Path, data: Path):
        self.root, self.run, self.data = root, run, data

    def config(self, name: str = "c.yaml", text: str | None = None, overrides: list[str] | None = None) -> str:
        from ups.config import load_config

        path = self.root / name
        path.write_text(text if text is not None else load_config(None, [*self.data_args(), *TINY,
                                                                           *(overrides or [])]).to_yaml())
        return str(path)

    def data_args(self) -> list[str]:
        return [f"data.train={self.data / 'train.h5'}", f"data.val={self.data / 'val.h5'}",
                f"data.test={self.data / 'test.h5'}"]

    def copy_run(self, name: str = "run") -> Path:
        return Path(shutil.copytree(self.run, self.root / name))


CASES: list[tuple[str, str, Callable[[Ctx], list[str]]]] = []


def case(case_id: str, what: str):
    def register(fn: Callable[[Ctx], list[str]]):
        CASES.append((case_id, what, fn))
        return fn
    return register


# ----------------------------------------------------------------------------------- configs
@case("config-unknown-key", "config file with a misspelt key `training.lr_max: 1`")
def _(c):
    return ["config", c.config(text="training:\n  lr_max: 1\n")]


@case("config-yaml-syntax", "config file that is not valid YAML (`a: [1, 2`)")
def _(c):
    return ["config", c.config(text="a: [1, 2\n")]


@case("config-missing-include", "config whose `include:` names a missing file")
def _(c):
    return ["config", c.config(text="include: nope.yaml\n")]


@case("config-missing-file", "`ups train` of a config file that does not exist")
def _(c):
    return ["train", str(c.root / "nope.yaml")]


@case("override-wrong-type", "override `training.epochs=many`")
def _(c):
    return ["config", c.config(text="{}\n"), "training.epochs=many"]


@case("override-no-equals", "override without `=` (`training.epochs`)")
def _(c):
    return ["config", c.config(text="{}\n"), "training.epochs"]


@case("unknown-stage", "`ups train CONFIG --stage nope`")
def _(c):
    return ["train", c.config(), "--stage", "nope"]


@case("unknown-option", "`ups eval RUN --bogus` (an option no command has)")
def _(c):
    return ["eval", str(c.run), "--bogus"]


# ----------------------------------------------------------------------------------- data generation
@case("generate-unknown-pde", "`ups data generate --pde navier_stokes9d ...`")
def _(c):
    return ["data", "generate", "--pde", "navier_stokes9d", "--samples", "2", "--seed", "0",
            "--out", str(c.root / "x.h5")]


@case("generate-negative-viscosity", "`ups data generate --nu -0.01 ...`")
def _(c):
    return ["data", "generate", "--nu", "-0.01", "--samples", "2", "--seed", "0", "--out", str(c.root / "x.h5")]


@case("generate-zero-samples", "`ups data generate --samples 0 ...`")
def _(c):
    return ["data", "generate", "--samples", "0", "--seed", "0", "--out", str(c.root / "x.h5")]


# ----------------------------------------------------------------------------------- data files
def _h5(path: Path, **datasets) -> str:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key.replace("_", "-")] = value
    return str(path)


@case("data-missing-file", "training config whose `data.train` file does not exist")
def _(c):
    return ["train", c.config(overrides=[f"data.train={c.root / 'missing.h5'}"]), "--run-dir", str(c.root / "r")]


@case("data-no-tensor", "HDF5 file without a `tensor` dataset (`ups data info`)")
def _(c):
    return ["data", "info", _h5(c.root / "m.h5", data=np.zeros((2, 3, 4)), x_coordinate=np.arange(4.0))]


@case("data-6d-tensor", "HDF5 `tensor` with 6 dimensions")
def _(c):
    return ["data", "info", _h5(c.root / "d.h5", tensor=np.zeros((1, 2, 3, 4, 5, 6), dtype=np.float32))]


@case("data-truncated", "HDF5 file cut short (a download that stopped)")
def _(c):
    src = c.data / "test.h5"
    cut = c.root / "cut.h5"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return ["data", "info", str(cut)]


@case("data-not-hdf5", "a text file given as data")
def _(c):
    (c.root / "notes.h5").write_text("hello")
    return ["data", "info", str(c.root / "notes.h5")]


@case("data-nan-training", "training file with NaN in sample 2")
def _(c):
    u = _fields()
    u[2, 1, 3] = np.nan
    bad = write_ups_file(c.root / "nan.h5", u)
    return ["train", c.config(overrides=[f"data.train={bad}"]), "--run-dir", str(c.root / "r")]


@case("data-info-strict-nan", "`ups data info FILE --strict` on a file with NaN in sample 1")
def _(c):
    u = _fields()
    u[1, 0, 0] = np.inf
    return ["data", "info", str(write_ups_file(c.root / "nan.h5", u)), "--strict"]


@case("data-no-parameters", "PDEBench-layout file with no parameters in attributes, name or config")
def _(c):
    bare = write_pdebench_file(c.root, _fields(), name="burgers_noparams.hdf5")
    return ["train", c.config(overrides=[f"data.train={bare}"]), "--run-dir", str(c.root / "r")]


@case("data-wrong-pde", "data file of `advection1d` under a `burgers1d` config")
def _(c):
    adv = write_ups_file(c.root / "adv.h5", _fields(), pde="advection1d", params={"beta": 1.0})
    return ["train", c.config(overrides=[f"data.train={adv}"]), "--run-dir", str(c.root / "r")]


@case("data-mixture-channels", "`data.mixture` whose members hold 1 and 2 fields per point")
def _(c):
    rng = np.random.default_rng(0)
    two = {s: write_ups_file(c.root / f"adv_{s}.h5", rng.random((3, 6, 16, 2)), pde="advection1d",
                             params={"beta": 1.0}) for s in ("train", "val", "test")}
    one = {s: c.data / f"{s}.h5" for s in ("train", "val", "test")}
    members = [{"pde": pde, **{s: str(f[s]) for s in f}} for pde, f in (("burgers1d", one), ("advection1d", two))]
    mixture = ["data.train=null", "data.val=null", "data.test=null", f"data.mixture={{members: {members}}}",
               "model.params.param_transform=identity"]
    return ["train", c.config(overrides=mixture), "--run-dir", str(c.root / "r")]


@case("data-coordinate-length", "`x-coordinate` with 5 entries for 4 points")
def _(c):
    return ["data", "info", _h5(c.root / "x.h5", tensor=np.zeros((2, 3, 4), dtype=np.float32),
                                x_coordinate=np.arange(5.0), t_coordinate=np.arange(3.0))]


# ----------------------------------------------------------------------------------- runs and checkpoints
@case("resume-not-a-run", "`ups train CONFIG --resume FOLDER` where FOLDER is no run directory")
def _(c):
    return ["train", c.config(), "--resume", str(c.root)]


@case("eval-missing-checkpoints", "`ups eval RUN` on a UPS run whose checkpoints were deleted")
def _(c):
    run = c.copy_run()
    shutil.rmtree(run / "checkpoints")
    return ["eval", str(run)]


@case("checkpoint-corrupt", "`ups eval RUN` with a damaged `operator_best.safetensors`")
def _(c):
    run = c.copy_run()
    (run / "checkpoints" / "operator_best.safetensors").write_bytes(b"\x00" * 64)
    return ["eval", str(run)]


@case("checkpoint-other-model", "`ups eval RUN` whose `operator_best` holds another model's weights")
def _(c):
    import torch
    from safetensors.torch import save_file

    run = c.copy_run()
    other = {f"model.{k}": v for k, v in torch.nn.Linear(3, 5).state_dict().items()}
    save_file(other, str(run / "checkpoints" / "operator_best.safetensors"))
    return ["eval", str(run)]


@case("checkpoint-other-data", "`ups train --stage diff_residual --resume RUN` on an operator trained on "
      "other data")
def _(c):
    run = c.copy_run()
    meta_path = run / "checkpoints" / "operator_best.json"
    meta = json.loads(meta_path.read_text())
    meta["data_meta"]["n_channels"] = 2  # as if trained on a two-field data set
    meta_path.write_text(json.dumps(meta))
    config_text = (run / "config.yaml").read_text().replace("stages:\n", "stages:\n  diff_residual: {}\n", 1)
    (run / "config.yaml").write_text(config_text)
    return ["train", str(run / "config.yaml"), "--stage", "diff_residual", "--resume", str(run)]


@case("disk-full-checkpoint", "disk full (ENOSPC) while a checkpoint is written in epoch 2")
def _(c):
    return ["train", c.config(overrides=["training.epochs=2"]), "--run-dir", str(c.root / "r")]


@case("compile-cache-unwritable", "`stages.consistency_distill.compile_cache_dir` that cannot be written")
def _(c):
    (c.root / "file").write_text("a file, not a folder")
    return ["function", str(c.root / "file" / "cache")]


@case("run-dir-unwritable", "`ups train CONFIG --run-dir` inside a path that is a file")
def _(c):
    (c.root / "afile").write_text("not a folder")
    return ["train", c.config(), "--run-dir", str(c.root / "afile" / "run")]


# ----------------------------------------------------------------------------------- eval and infer
@case("eval-moved-data", "`ups eval RUN` from another folder after the run's (relative) test file moved")
def _(c):
    os.chdir(c.root)
    (c.root / "data").mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(c.data / f"{split}.h5", c.root / "data" / f"{split}.h5")
    overrides = ["data.train=data/train.h5", "data.val=data/val.h5", "data.test=data/test.h5"]
    assert main(["train", c.config(overrides=overrides), "--run-dir", "rel_run"]) == 0
    (c.root / "data" / "test.h5").rename(c.root / "data" / "moved.h5")
    os.chdir(c.root / "data")
    return ["eval", str(c.root / "rel_run")]


@case("eval-split-all-without-data", "`ups eval RUN --split all` without `--data`")
def _(c):
    return ["eval", str(c.run), "--split", "all"]


@case("eval-unknown-corrector", "`ups eval RUN --corrector multi` on a run without that corrector")
def _(c):
    return ["eval", str(c.run), "--corrector", "multi"]


@case("eval-zero-samples", "`ups eval RUN --max-samples 0`")
def _(c):
    return ["eval", str(c.run), "--max-samples", "0"]


@case("eval-other-fields", "`ups eval RUN --data FILE` where FILE has 2 fields per point, the run 1")
def _(c):
    rng = np.random.default_rng(0)
    return ["eval", str(c.run), "--data", str(write_ups_file(c.root / "two.h5", rng.random((3, 6, 16, 2))))]


@case("eval-one-frame", "`ups eval RUN --data FILE` where FILE has a single frame")
def _(c):
    return ["eval", str(c.run), "--data", str(write_ups_file(c.root / "short.h5", _fields(frames=1)))]


@case("eval-not-a-run", "`ups eval FOLDER` where FOLDER is no run directory")
def _(c):
    return ["eval", str(c.root)]


@case("infer-no-parameters", "`ups infer` on a PDEBench-layout file without any parameter")
def _(c):
    bare = write_pdebench_file(c.root, _fields(), name="burgers_plain.hdf5")
    return ["infer", str(c.run), "--input", str(bare), "--steps", "2", "--out", str(c.root / "p.h5")]


@case("infer-points-wrong-dim", "`ups infer --points` with 2-D points for a 1-D run")
def _(c):
    np.save(c.root / "q.npy", np.zeros((5, 2)))
    return ["infer", str(c.run), "--input", str(c.data / "test.h5"), "--steps", "2",
            "--points", str(c.root / "q.npy"), "--out", str(c.root / "p.h5")]


@case("infer-points-missing", "`ups infer --points` naming a missing file")
def _(c):
    return ["infer", str(c.run), "--input", str(c.data / "test.h5"), "--steps", "2",
            "--points", str(c.root / "none.npy"), "--out", str(c.root / "p.h5")]


@case("infer-negative-steps", "`ups infer --steps -3`")
def _(c):
    return ["infer", str(c.run), "--input", str(c.data / "test.h5"), "--steps", "-3", "--out", str(c.root / "p.h5")]


@case("infer-start-past-end", "`ups infer --start 99` on a 6-frame file")
def _(c):
    return ["infer", str(c.run), "--input", str(c.data / "test.h5"), "--steps", "2", "--start", "99",
            "--out", str(c.root / "p.h5")]


@case("infer-other-fields", "`ups infer RUN --input FILE` where FILE has 2 fields per point, the run 1")
def _(c):
    rng = np.random.default_rng(0)
    return ["infer", str(c.run), "--input", str(write_ups_file(c.root / "two.h5", rng.random((3, 6, 16, 2)))),
            "--steps", "2", "--out", str(c.root / "p.h5")]


@case("infer-out-is-a-folder", "`ups infer ... --out FOLDER` (an existing folder, not a file name)")
def _(c):
    return ["infer", str(c.run), "--input", str(c.data / "test.h5"), "--steps", "2", "--out", str(c.root)]


IDS = [c[0] for c in CASES]


# ----------------------------------------------------------------------------------- machinery
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny UPS run (operator, one epoch) on 16-point Burgers-like data."""
    root = tmp_path_factory.mktemp("matrix")
    data = root / "data"
    for i, split in enumerate(("train", "val", "test")):
        write_ups_file(data / f"{split}.h5", _fields(seed=i), seed=i)
    ctx = Ctx(root, root / "run", data)
    assert main(["train", ctx.config(), "--run-dir", str(ctx.run)]) == 0
    return ctx


def _run_row(case_id: str, argv: list[str], ctx: Ctx, monkeypatch) -> int:
    if case_id == "compile-cache-unwritable":  # the check the stage runs before torch.compile
        from ups.errors import UPSError
        from ups.io_utils import ensure_writable_dir

        try:
            ensure_writable_dir(argv[1], "the compile cache folder (stages.consistency_distill.compile_cache_dir)")
        except UPSError as err:
            import sys
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if case_id == "disk-full-checkpoint":
        _disk_fills_up_after(3, monkeypatch)  # epoch 1 writes best, last and ema; epoch 2's first one fails
        code = main(argv)
        _previous_checkpoint_is_intact(Path(argv[-1]))
        return code
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors exit from parse_args
        return int(stop.code)


def _disk_fills_up_after(writes: int, monkeypatch) -> None:
    """Every ``.safetensors`` file after the first ``writes`` hits ENOSPC once written, as a full disk does."""
    import ups.io_utils as io

    real = io.atomic_path
    count = {"n": 0}

    @contextmanager
    def full(path):
        with real(path) as tmp:
            yield tmp
            if Path(path).suffix == ".safetensors":
                count["n"] += 1
                if count["n"] > writes:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io, "atomic_path", full)


def _previous_checkpoint_is_intact(run: Path) -> None:
    """After the failed write: epoch 1's checkpoints load, and no temporary file is left behind."""
    from ups.checkpoint import read_checkpoint_meta
    from ups.simulator import Simulator

    for kind in ("best", "last", "ema"):
        assert read_checkpoint_meta(run / "checkpoints" / f"operator_{kind}")["epoch"] in (0, 1)
        Simulator.from_run(run, checkpoint=kind)
    assert not list((run / "checkpoints").glob(".*.tmp"))


def _normalise(message: str, ctx: Ctx, row: Path) -> str:
    for base in (row, ctx.root):
        message = message.replace(str(base) + "/", "…/").replace(str(base), "…")
    return re.sub(r"pytest-of-\w+/pytest-\d+/", "", message)


def _readme_rows() -> dict[str, tuple[str, str]]:
    text = README.read_text()
    block = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = (cells[1], cells[2].replace("\\|", "|"))
    return rows


def _update_readme(case_id: str, what: str, message: str) -> None:
    text = README.read_text()
    rows = _readme_rows() if BEGIN in text else {}
    rows[case_id] = (what, message)
    order = [i for i in IDS if i in rows]
    lines = ["| id | input | final message (stderr, exit 2) |", "| --- | --- | --- |"]
    lines += [f"| `{i}` | {rows[i][0]} | {rows[i][1].replace('|', chr(92) + '|')} |" for i in order]
    table = BEGIN + "\n" + "\n".join(lines) + "\n" + END
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
    else:
        text += "\n" + table + "\n"
    README.write_text(text)


@pytest.mark.parametrize("case_id", IDS)
def test_bad_input_row(case_id, trained, tmp_path, monkeypatch, capsys):
    what, build = next((w, f) for i, w, f in CASES if i == case_id)
    monkeypatch.chdir(tmp_path)
    row = Ctx(tmp_path, trained.run, trained.data)
    argv = build(row)
    capsys.readouterr()
    code = _run_row(case_id, argv, row, monkeypatch)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    message = _normalise(lines[0], trained, tmp_path)
    if os.environ.get("UPS_UPDATE_README"):
        _update_readme(case_id, what, message)
    assert _readme_rows().get(case_id) == (what, message), \
        "README bad-input row out of date: rewrite it with UPS_UPDATE_README=1"


def test_readme_table_has_exactly_the_tested_rows():
    rows = _readme_rows()
    assert list(rows) == IDS and len(IDS) >= 30
    assert [w for w, _ in rows.values()] == [w for _, w, _ in CASES]


# ----------------------------------------------------------------------------------- the shortfalls, fixed
def test_infer_reads_pdebench_files_as_eval_does(trained, tmp_path):
    """A PDEBench file with the attribute ``Nu`` (their spelling), one with the parameter only in its name,
    and one with none given by ``--param``: infer reads all three, as eval does."""
    u = _fields()
    with_attr = write_pdebench_file(tmp_path / "a", u, name="burgers_train.hdf5")
    with h5py.File(with_attr, "a") as f:
        f.attrs["Nu"] = 0.01
    named = write_pdebench_file(tmp_path / "b", u, name="1D_Burgers_Sols_Nu0.01.hdf5")
    plain = write_pdebench_file(tmp_path / "c", u, name="plain.hdf5")
    outs = []
    for src, extra in ((with_attr, []), (named, []), (plain, ["--param", "nu=0.01"])):
        out = tmp_path / f"pred_{len(outs)}.h5"
        assert main(["infer", str(trained.run), "--input", str(src), "--steps", "2", "--out", str(out), *extra]) == 0
        with h5py.File(out) as f:
            outs.append(f["tensor"][...])
            assert f.attrs["nu"] == pytest.approx(0.01)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-6, atol=1e-7)
    assert main(["eval", str(trained.run), "--data", str(with_attr), "--split", "all"]) == 0


def test_infer_attributes_describe_the_written_file(trained, tmp_path):
    out = tmp_path / "pred.h5"
    points = tmp_path / "q.npy"
    np.save(points, np.linspace(0.0, 1.0, 10, endpoint=False))
    assert main(["infer", str(trained.run), "--input", str(trained.data / "test.h5"), "--steps", "3",
                 "--points", str(points), "--out", str(out)]) == 0
    with h5py.File(out) as f, h5py.File(trained.data / "test.h5") as src:
        assert f["tensor"].shape == (4, 4, 10)
        assert (f.attrs["frames"], f.attrs["resolution"], f.attrs["pde"]) == (4, 10, "burgers1d")
        t = f["t-coordinate"][...]
        assert f.attrs["dt"] == pytest.approx(t[1] - t[0]) and f.attrs["t_end"] == pytest.approx(t[-1])
        assert "seed" not in f.attrs and not any(k.startswith("solver_") for k in f.attrs)
        assert f.attrs["source_file"] == str((trained.data / "test.h5").resolve()) and "seed" in src.attrs


def test_eval_accepts_overrides_after_options(trained, tmp_path):
    out = tmp_path / "o"
    assert main(["eval", str(trained.run), "--corrector", "none", "eval.rollout_start=2", "--out", str(out)]) == 0
    saved = json.loads((out / "eval_test.json").read_text())
    assert saved["metrics"]["steps"] == 3  # 6 frames from frame 2: 3 predicted steps


def test_data_info_says_a_nan_file_is_refused(tmp_path, capsys):
    u = _fields()
    u[3, 2, 1] = np.nan
    path = write_ups_file(tmp_path / "nan.h5", u)
    assert main(["data", "info", str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("refused:") and "sample 3" in last and str(path) in last
    assert main(["data", "info", str(write_ups_file(tmp_path / "ok.h5", _fields()))]) == 0
    assert "refused" not in capsys.readouterr().out


def test_eval_names_the_stage_a_baseline_run_needs(trained, tmp_path, capsys):
    run = Path(shutil.copytree(trained.run, tmp_path / "peer"))
    shutil.rmtree(run / "checkpoints")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(re.sub(r"\nstages:\n(  .*\n)+", "\nstages:\n  baseline: {}\n", text))
    assert main(["eval", str(run)]) == 2
    assert "train stage 'baseline'" in capsys.readouterr().err


def test_a_run_with_relative_data_paths_works_from_any_folder(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained.data, tmp_path / "data")
    overrides = ["data.train=data/train.h5", "data.val=data/val.h5", "data.test=data/test.h5"]
    row = Ctx(tmp_path, trained.run, trained.data)
    assert main(["train", row.config(overrides=overrides), "--run-dir", "rel"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(tmp_path / "rel"), "--corrector", "none", "--out", "o"]) == 0
    saved = json.loads((elsewhere / "o" / "eval_test.json").read_text())
    assert saved["data"]["file"] == str((tmp_path / "data" / "test.h5").resolve())
