"""Irregular point clouds end to end: per-item random point subsets, padded batches with a mask, a UPT
encoder and operator losses that ignore the padding, one-line refusals for grid models, train and eval."""

import json
import math

import numpy as np
import pytest
import torch
from tests.helpers import write_ups_file

from ups.cli import main
from ups.config import DataConfig, load_config
from ups.data.datasets import WindowDataset, collate
from ups.data.reader import open_split
from ups.errors import ConfigError
from ups.models.upt import UPT, UPTConfig
from ups.training.stages.operator import OperatorStageConfig, operator_losses

TINY = dict(latent_dim=8, num_supernodes=4, heads=2, operator_depth=1, kernel_hidden=8, decoder_hidden=8)


def _model(seed: int = 0) -> UPT:
    torch.manual_seed(seed)
    return UPT(config=UPTConfig(**TINY), dims=1, channels=1, n_params=1, dt_ref=0.1, domain=((0.0, 1.0),),
               periodic=True)


def _cloud(n: int, seed: int, window: int = 3) -> dict:
    """A point-cloud item with n points at random places: u [W, n, 1], coords [n, 1], mask [n]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    u = torch.stack([torch.sin(2 * torch.pi * (x - 0.05 * k)) for k in range(window)])  # [W, n, 1]
    return {"u": u, "coords": x, "params": torch.tensor([0.01]), "dt": 0.1, "sample": seed, "t0": 0,
            "mask": torch.ones(n, dtype=torch.bool)}


def test_collate_pads_point_clouds_with_a_mask():
    batch = collate([_cloud(5, 0), _cloud(9, 1)])
    assert batch["u"].shape == (2, 3, 9, 1) and batch["coords"].shape == (2, 9, 1)
    assert batch["mask"].tolist() == [[True] * 5 + [False] * 4, [True] * 9]
    assert not batch["u"][0, :, 5:].abs().any()


def test_latent_of_a_sample_alone_equals_its_latent_in_a_padded_batch():
    model = _model()
    short, long = _cloud(11, 0), _cloud(40, 1)
    alone = model.encode(short["u"][:1, :, :], short["coords"][None])  # [1, L, D]
    batch = collate([short, long])
    both = model.encode(batch["u"][:, 0], batch["coords"], batch["mask"])
    torch.testing.assert_close(both[0], alone[0], rtol=1e-5, atol=1e-6)
    # garbage in the padding changes nothing either
    noisy = batch["u"][:, 0].clone()
    noisy[0, 11:] = 1e3
    torch.testing.assert_close(model.encode(noisy, batch["coords"] + 0.0, batch["mask"])[0], alone[0],
                               rtol=1e-5, atol=1e-6)


def test_loss_with_padding_equals_the_loss_on_the_real_points():
    stage_cfg = OperatorStageConfig(rollout_steps=2, random_shift=False, inverse_loss_base=0.0)
    model = _model()
    short, long = _cloud(13, 2), _cloud(30, 3)
    padded = operator_losses(model, collate([short, long]), stage_cfg=stage_cfg, unroll=2, w_enc=0.0, w_dec=0.0,
                             spatial=(), domain=None)
    parts = [operator_losses(model, collate([item]), stage_cfg=stage_cfg, unroll=2, w_enc=0.0, w_dec=0.0, spatial=(),
                             domain=None) for item in (short, long)]
    for key in ("loss_forward", "loss_rollout"):  # the mean over all real points: a point-count weighted mean
        expected = (13 * parts[0][key] + 30 * parts[1][key]) / 43
        torch.testing.assert_close(padded[key], expected, rtol=1e-5, atol=1e-7)
    plain = {k: v for k, v in collate([long]).items() if k != "mask"}  # no mask at all: the same loss
    unmasked = operator_losses(model, plain, stage_cfg=stage_cfg, unroll=2, w_enc=0.0, w_dec=0.0, spatial=(),
                               domain=None)
    torch.testing.assert_close(unmasked["loss"], parts[1]["loss"])


def test_every_parameter_gets_a_gradient_from_a_masked_batch():
    stage_cfg = OperatorStageConfig(rollout_steps=2, random_shift=True, inverse_loss_balance=None)
    model = _model()
    # optimiser steps first so the zero-initialised gates and bias heads open and every branch is reachable
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = collate([_cloud(12, 4), _cloud(25, 5), _cloud(18, 6)])
    domain = torch.tensor([[0.0, 1.0]])
    for _ in range(3):
        opt.zero_grad()
        out = operator_losses(model, batch, stage_cfg=stage_cfg, unroll=2, w_enc=0.1, w_dec=0.1, spatial=(),
                              domain=domain, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        opt.step()
    assert torch.isfinite(out["loss"])
    assert not missing, missing


def _grid_file(tmp_path, name: str, samples: int = 6, n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (np.arange(n) + 0.5) / n
    amp = rng.uniform(0.5, 1.5, size=(samples, 1, 1))
    u = amp * np.sin(2 * np.pi * (x[None, None, :] - 0.05 * np.arange(8)[None, :, None]))
    return write_ups_file(tmp_path / name, u.astype(np.float32), seed=seed)


def test_subset_counts_differ_between_items_repeat_per_epoch_and_change_across_epochs(tmp_path):
    source = open_split(DataConfig(train=str(_grid_file(tmp_path, "train.h5"))), "train")
    ds = WindowDataset(source, window=3, normalizer=None, seed=7, point_subset=(0.5, 4))
    twin = WindowDataset(source, window=3, normalizer=None, seed=7, point_subset=(0.5, 4))
    counts = [ds[i]["mask"].numel() for i in range(len(ds))]
    assert len(set(counts)) > 1 and min(counts) >= 4 and max(counts) < 32
    item = ds[3]
    assert item["u"].shape == (3, counts[3], 1) and item["coords"].shape == (counts[3], 1)
    full = WindowDataset(source, window=3, normalizer=None, seed=7)[3]
    keep = ds.subset(3, 32)
    torch.testing.assert_close(item["u"], full["u"][:, keep])  # the subset reads the grid's own values
    torch.testing.assert_close(twin[3]["coords"], item["coords"])  # same seed and epoch: same points
    ds.set_epoch(1)
    assert [ds[i]["mask"].numel() for i in range(len(ds))] != counts
    twin.set_epoch(1)  # a resumed run's fresh dataset, told the epoch, draws the same points
    torch.testing.assert_close(twin[5]["coords"], ds[5]["coords"])
    assert not torch.equal(ds[3]["coords"], item["coords"]) or ds[3]["coords"].shape != item["coords"].shape
    dense = WindowDataset(source, window=3, normalizer=None, point_subset=(0.01, 10))
    assert all(dense[i]["mask"].numel() == 10 for i in range(5))  # the minimum holds


def _config(tmp_path, extra=()):
    paths = {s: _grid_file(tmp_path, f"{s}.h5", seed=i) for i, s in enumerate(("train", "val", "test"))}
    overrides = [f"data.{s}={p}" for s, p in paths.items()] + [
        "data.batch_size=4", f"run.out_dir={tmp_path / 'runs'}", "run.name=pc", "training.epochs=2",
        "training.progress=none", "stages.operator.rollout_steps=2", "data.point_subset={fraction: 0.5, min_points: 8}",
        "eval.rollout_start=0", *[f"model.params.{k}={v}" for k, v in TINY.items()]]
    return load_config(None, [*overrides, *extra])


def test_bad_point_subset_configs_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="fraction") as err:
        _config(tmp_path, ["data.point_subset={fraction: 1.5}"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="grid model 'fno' cannot take") as err:
        _config(tmp_path, ["model.name=fno", "model.params={}", "stages={baseline: {}}"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="lambda_spectral"):
        _config(tmp_path, ["stages.operator.lambda_spectral=0.1"])


def test_train_on_point_clouds_then_eval_on_the_full_grid_and_unseen_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = tmp_path / "pc.yaml"  # trained on random halves of the even points only (stride 2, no offsets)
    cfg_path.write_text(_config(tmp_path, ["data.spatial_stride=2", "data.random_offset=false"]).to_yaml())
    assert main(["train", str(cfg_path), "--stage", "operator"]) == 0
    run = tmp_path / "runs" / "pc"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(np.isfinite(losses))
    scores = {}
    for stride in (2, 1):  # the training grid in full, then the full grid: its odd points were never seen
        out = tmp_path / f"eval{stride}"
        assert main(["eval", str(run), "--out", str(out), f"data.spatial_stride={stride}"]) == 0
        scores[stride] = json.loads((out / "eval_test.json").read_text())["metrics"]["nrmse"]
    assert all(math.isfinite(v) for v in scores.values())
    assert not math.isclose(scores[1], scores[2])  # scored on different point sets


def test_rollout_scoring_refuses_padded_point_clouds():
    from ups.errors import DataError
    from ups.rollout import rollout_scores

    batch = collate([_cloud(5, 0), _cloud(9, 1)])
    with pytest.raises(DataError, match="whole grids"):
        rollout_scores(_model(), [batch], lambda v: v)
