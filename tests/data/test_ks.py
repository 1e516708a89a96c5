"""ks1d: Kuramoto-Sivashinsky conventions, conservation of the mean, ETDRK4 convergence."""

from __future__ import annotations

import math

import h5py
import pytest
import torch

from ups.data.generate import generate_dataset
from ups.data.pdes import PDES
from ups.data.pdes.ks import KSParams, KuramotoSivashinsky1D
from ups.errors import ConfigError


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_defaults_follow_the_issue_conventions():
    p = KSParams()
    assert (p.length, p.resolution, p.frames, p.burn_in) == (64.0, 256, 140, 100.0)
    assert math.isclose(p.dt, 0.2, rel_tol=1e-12)
    assert PDES.get("ks1d") is KuramotoSivashinsky1D and KuramotoSivashinsky1D.param_names == ("length",)
    with pytest.raises(ConfigError, match="burn_in"):
        KSParams(burn_in=-1.0)


def test_initial_state_is_zero_mean_and_holds_only_modes_1_to_3():
    p = KSParams(length=60.0)
    u0 = KuramotoSivashinsky1D().sample_initial(8, generator=torch.Generator().manual_seed(0), grid=p.grid)
    spec = torch.fft.rfft(u0, dim=-1).abs() / p.resolution
    assert spec[:, 0].max() < 1e-12  # zero mean
    assert spec[:, 4:].max() < 1e-12 and spec[:, 1:4].max() > 0.1
    assert u0.abs().max() <= 10 * 0.5


def test_mean_is_conserved_exactly():
    model = KuramotoSivashinsky1D()
    p = KSParams(frames=26, t_end=5.0, burn_in=0.0)
    u0 = model.sample_initial(3, generator=torch.Generator().manual_seed(1), grid=p.grid) + 0.3
    u = model.solve(u0, params=p)
    drift = (u.mean(dim=-1) - u0.mean(dim=-1, keepdim=True)).abs().max()
    assert drift < 1e-12
    assert u[:, -1].std() > 0.1  # the state evolved (no trivial pass)


def test_etdrk4_converges_halving_the_step_changes_10_time_units_by_less_than_1e6():
    p_burn = KSParams(frames=2, t_end=0.2, burn_in=30.0)  # a developed, chaotic state
    u0 = KuramotoSivashinsky1D().sample_initial(2, generator=torch.Generator().manual_seed(2), grid=p_burn.grid)
    start = KuramotoSivashinsky1D(steps_per_frame=16).solve(u0, params=p_burn)[:, -1]
    p = KSParams(frames=51, t_end=10.0, burn_in=0.0)
    runs = {s: KuramotoSivashinsky1D(steps_per_frame=s).solve(start, params=p)[:, -1] for s in (4, 8, 16)}
    err_default = _rel(runs[8], runs[16])  # the default step (dt / 8) against half of it
    assert err_default < 1e-6
    assert _rel(runs[4], runs[8]) / err_default > 8.0  # fourth order: ~16 per halving


def test_burn_in_is_discarded_and_file_records_conventions(tmp_path):
    out = generate_dataset(pde="ks1d", params={"length": 60.0}, samples=2, seed=0, out=tmp_path / "ks.h5",
                           frames=6, t_end=1.0, progress=False, solver={"steps_per_frame": 2})
    with h5py.File(out) as f:
        u, attrs = f["tensor"][...], dict(f.attrs)
        x = f["x-coordinate"][...]
    assert u.shape == (2, 6, 256)
    assert attrs["pde"] == "ks1d" and attrs["length"] == pytest.approx(60.0) and attrs["burn_in"] == 100.0
    assert "u_xxxx" in attrs["solver_equation"] and "burn_in" in attrs["solver_initial_condition"]
    assert x[0] == pytest.approx(60.0 / 512) and x[-1] == pytest.approx(60.0 - 60.0 / 512)
    # frame 0 is the state after the burn-in, no longer the three-mode initial sum
    model = KuramotoSivashinsky1D()
    raw = model.sample_initial(2, generator=torch.Generator().manual_seed(0), grid=KSParams(length=60.0).grid)
    assert torch.fft.rfft(torch.from_numpy(u[:, 0]).double(), dim=-1)[:, 4:].abs().max() > 1.0
    assert not torch.allclose(torch.from_numpy(u[:, 0]).double(), raw, atol=1e-3)


def test_generate_config_gives_per_split_frames_at_a_fixed_frame_interval():
    from ups.config import GenerateConfig

    gen = GenerateConfig(params={"length": 64.0}, resolution=256, frames={"train": 140, "val": 640, "test": 640},
                         frame_dt=0.2)
    assert gen.frames_for("train") == 140 and gen.t_end_for("train") == pytest.approx(27.8)
    assert gen.t_end_for("test") == pytest.approx(127.8)
    with pytest.raises(ConfigError, match="frames.val"):
        GenerateConfig(frames={"train": 140}).frames_for("val")
    with pytest.raises(ValueError, match="at least 2 frames"):
        GenerateConfig(frames={"train": 1})


def test_cli_generates_ks_frames_at_a_given_interval(tmp_path, capsys):
    from ups.cli import main

    out = tmp_path / "ks.h5"
    assert main(["data", "generate", "--pde", "ks1d", "--param", "length=60", "--samples", "1", "--seed", "1",
                 "--frames", "6", "--dt", "0.2", "--out", str(out), "--quiet"]) == 0
    with h5py.File(out) as f:
        assert f["tensor"].shape == (1, 6, 256) and f.attrs["dt"] == pytest.approx(0.2)
    assert main(["data", "generate", "--pde", "ks1d", "--samples", "1", "--seed", "1", "--dt", "0.2",
                 "--out", str(tmp_path / "x.h5"), "--quiet"]) == 2
    assert "--dt needs --frames" in capsys.readouterr().err
