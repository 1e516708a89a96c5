"""generate_dataset and ``ups data generate``: PDEBench layout, attributes, determinism, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ups import __version__
from ups.cli import main
from ups.data import generate as gen
from ups.data.generate import generate_dataset
from ups.errors import ConfigError, UPSError

SMALL = dict(resolution=128, frames=11, t_end=0.5, progress=False)


def test_layout_attributes_and_mass(tmp_path):
    out = generate_dataset(pde="burgers1d", params={"nu": 0.1}, samples=5, seed=3, out=tmp_path / "b.hdf5",
                           batch_size=2, **SMALL)
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {"tensor", "x-coordinate", "t-coordinate"}
        u = f["tensor"][...]
        assert u.shape == (5, 11, 128) and u.dtype == np.float32
        x, t = f["x-coordinate"][...], f["t-coordinate"][...]
        attrs = dict(f.attrs)
    np.testing.assert_allclose(x, (np.arange(128) + 0.5) / 128, rtol=1e-7)
    np.testing.assert_allclose(t, np.arange(11) * 0.05, rtol=1e-6)
    assert attrs["pde"] == "burgers1d" and attrs["nu"] == pytest.approx(0.1) and attrs["seed"] == 3
    assert attrs["ups_version"] == __version__ and attrs["generator_version"] == gen.GENERATOR_VERSION
    assert attrs["resolution"] == 128 and attrs["frames"] == 11 and attrs["dt"] == pytest.approx(0.05)
    assert "solver_cfl" in attrs and "solver_scheme" in attrs
    assert attrs["solver_internal_resolution_max"] >= 128 and attrs["solver_steps_per_frame_max"] >= 1
    assert np.isfinite(u).all() and np.abs(u).max() > 0.1
    # mass (sum over x) per sample and frame, relative to sum |u0|, in the float32 file
    u64 = u.astype(np.float64)
    drift = np.abs(u64.sum(-1) - u64[:, :1].sum(-1)).max(1) / np.abs(u64[:, 0]).sum(-1)
    assert drift.max() < 1e-6
    assert not list(tmp_path.glob(".*.tmp"))


def test_same_seed_same_bytes_any_batch_size(tmp_path):
    a = generate_dataset(pde="burgers1d", params={"nu": 0.1}, samples=3, seed=9, out=tmp_path / "a.hdf5",
                         batch_size=3, **SMALL)
    b = generate_dataset(pde="burgers1d", params={"nu": 0.1}, samples=3, seed=9, out=tmp_path / "b.hdf5",
                         batch_size=3, **SMALL)
    assert a.read_bytes() == b.read_bytes()
    c = generate_dataset(pde="burgers1d", params={"nu": 0.1}, samples=3, seed=10, out=tmp_path / "c.hdf5",
                         batch_size=3, **SMALL)
    with h5py.File(a) as fa, h5py.File(c) as fc:
        assert not np.array_equal(fa["tensor"][:, 0], fc["tensor"][:, 0])
    # the initial conditions do not depend on the batch size
    d = generate_dataset(pde="burgers1d", params={"nu": 0.1}, samples=3, seed=9, out=tmp_path / "d.hdf5",
                         batch_size=1, **SMALL)
    with h5py.File(a) as fa, h5py.File(d) as fd:
        np.testing.assert_array_equal(fa["tensor"][:, 0], fd["tensor"][:, 0])


def test_failure_mid_write_leaves_existing_file_intact(tmp_path, monkeypatch):
    out = tmp_path / "keep.hdf5"
    out.write_bytes(b"previous contents")
    from ups.data.pdes.burgers import Burgers1D

    calls = {"n": 0}
    real_solve = Burgers1D.solve

    def flaky(self, u0, *, params):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in batch 2")
        return real_solve(self, u0, params=params)

    monkeypatch.setattr(Burgers1D, "solve", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_dataset(pde="burgers1d", params={"nu": 0.1}, samples=4, seed=1, out=out, batch_size=2, **SMALL)
    assert calls["n"] == 2
    assert out.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.hdf5"]


def test_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter.*beta"):
        generate_dataset(pde="burgers1d", params={"beta": 1.0}, samples=2, seed=0, out=tmp_path / "x.hdf5", **SMALL)
    with pytest.raises(ConfigError, match="samples=0"):
        generate_dataset(pde="burgers1d", params={}, samples=0, seed=0, out=tmp_path / "x.hdf5", **SMALL)
    with pytest.raises(UPSError, match="unknown pde 'heat'"):
        generate_dataset(pde="heat", params={}, samples=1, seed=0, out=tmp_path / "x.hdf5", **SMALL)
    assert not list(tmp_path.iterdir())


def test_not_enough_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(UPSError, match="not enough free disk"):
        generate_dataset(pde="burgers1d", params={}, samples=2, seed=0, out=tmp_path / "x.hdf5", **SMALL)


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "cli.hdf5"
    rc = main(["data", "generate", "--pde", "burgers1d", "--nu", "0.2", "--samples", "2", "--seed", "4",
               "--out", str(out), "--resolution", "64", "--frames", "6", "--t-end", "0.25", "--batch-size", "2",
               "--quiet"])
    assert rc == 0 and "wrote 2 burgers1d samples" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert f["tensor"].shape == (2, 6, 64) and f.attrs["nu"] == pytest.approx(0.2) and f.attrs["seed"] == 4
    rc = main(["data", "generate", "--pde", "burgers1d", "--param", "nu=-1", "--samples", "2", "--seed", "4",
               "--out", str(tmp_path / "bad.hdf5"), "--quiet"])
    assert rc == 2 and "nu=-1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "generate", "--param", "nu", "--samples", "1", "--seed", "1", "--out", "x.hdf5"])


def test_benchmark_datagen_quick(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    spec = importlib.util.spec_from_file_location("ups_run_all", root / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    assert run_all.main(["--only", "datagen", "--quick", "--budget", "60", "--results", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "datagen.json").read_text())
    assert printed == saved
    for key in ("samples_per_s", "seconds_for_1000", "meets_target", "torch_threads", "torch_version", "samples"):
        assert key in saved
    assert saved["benchmark"] == "datagen" and saved["quick"] and saved["samples"] == 2 and saved["samples_per_s"] > 0
    assert run_all.main(["--only", "nosuch", "--results", str(tmp_path)]) == 2
    spec = importlib.util.spec_from_file_location("ups_summarize", root / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    capsys.readouterr()
    assert summarize.main(["--results", str(tmp_path)]) == 0  # the README line comes from the JSON
    assert f"{saved['samples_per_s']:.3g} samples/s" in capsys.readouterr().out
    assert summarize.main(["--results", str(tmp_path / "empty")]) == 2
