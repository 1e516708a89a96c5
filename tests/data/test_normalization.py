"""Normalisation: streamed train-only statistics equal numpy's; exact JSON round trip."""

import numpy as np
import pytest
import torch

from helpers import random_fields, write_pdebench_file, write_ups_file
from ups.config import DataConfig
from ups.data.normalization import Normalizer
from ups.data.reader import open_split
from ups.errors import DataError


@pytest.fixture
def splits(tmp_path):
    """Train, val and test files with very different statistics (leaks would show)."""
    arrays = {"train": random_fields(12, 9, 20, channels=2, seed=1, loc=3.0, scale=2.0),
              "val": random_fields(5, 9, 20, channels=2, seed=2, loc=-50.0, scale=10.0),
              "test": random_fields(5, 9, 20, channels=2, seed=3, loc=100.0, scale=0.1)}
    arrays["train"][..., 1] = arrays["train"][..., 1] * 0.5 - 7.0
    paths = {k: str(write_ups_file(tmp_path / f"{k}.hdf5", v)) for k, v in arrays.items()}
    return DataConfig(**paths), arrays


@pytest.mark.parametrize("ss,ts", [(1, 1), (4, 3)])
def test_statistics_equal_numpy_on_the_train_split_only(splits, ss, ts):
    data_cfg, arrays = splits
    norm = Normalizer.fit(open_split(data_cfg, "train"), spatial_stride=ss, temporal_stride=ts)
    train = arrays["train"][:, ::ts, ::ss].astype(np.float64).reshape(-1, 2)
    np.testing.assert_allclose(norm.mean, train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.std, train.std(axis=0), rtol=1e-12)
    everything = np.concatenate([a[:, ::ts, ::ss].reshape(-1, 2) for a in arrays.values()])
    assert np.abs(norm.mean - everything.mean(axis=0)).min() > 1.0  # val/test values did not leak in
    with pytest.raises(DataError, match="train split only"):
        Normalizer.fit(open_split(data_cfg, "val"))


def test_pdebench_train_split_excludes_test_and_val_samples(tmp_path):
    u = random_fields(20, 5, 8, seed=4)
    u[:2] += 1000.0  # the test split (first 10 %)
    u[2:6] -= 1000.0  # the val split (next 20 %)
    data_cfg = DataConfig(pdebench_file=str(write_pdebench_file(tmp_path, u)), val_fraction=0.2)
    norm = Normalizer.fit(open_split(data_cfg, "train"))
    np.testing.assert_allclose(norm.mean, [u[6:].astype(np.float64).mean()], rtol=1e-12)
    np.testing.assert_allclose(norm.std, [u[6:].astype(np.float64).std()], rtol=1e-12)


def test_large_offset_does_not_lose_precision(tmp_path):
    u = (1e4 + random_fields(6, 7, 16, seed=5, scale=1e-2)).astype(np.float32)
    data_cfg = DataConfig(train=str(write_ups_file(tmp_path / "t.hdf5", u)))
    norm = Normalizer.fit(open_split(data_cfg, "train"))
    np.testing.assert_allclose(norm.std, [u.astype(np.float64).std()], rtol=1e-9)


def test_normalize_denormalize_numpy_and_torch(splits, tmp_path):
    data_cfg, arrays = splits
    norm = Normalizer.fit(open_split(data_cfg, "train"))
    x = arrays["train"]
    z = norm.normalize(x)
    assert z.dtype == np.float32
    flat = z.astype(np.float64).reshape(-1, 2)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(norm.denormalize(z), x, rtol=1e-5, atol=1e-5)
    t = torch.from_numpy(x)
    zt = norm.normalize(t)
    assert zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.denormalize(zt).numpy(), x, rtol=1e-5, atol=1e-5)
    t64 = torch.from_numpy(x.astype(np.float64))
    torch.testing.assert_close(norm.denormalize(norm.normalize(t64)), t64, rtol=1e-14, atol=1e-12)
    with pytest.raises(DataError, match="channel axis must be last"):
        norm.normalize(np.zeros((2, 3)))


def test_json_round_trip_is_exact(splits, tmp_path):
    data_cfg, _ = splits
    norm = Normalizer.fit(open_split(data_cfg, "train"), spatial_stride=3)
    norm.to_json(tmp_path / "stats.json")
    back = Normalizer.from_json(tmp_path / "stats.json")
    assert back == norm and back.mean.tolist() == norm.mean.tolist() and back.std.tolist() == norm.std.tolist()
    assert Normalizer.from_dict(norm.to_dict()) == norm
    assert not list(tmp_path.glob(".stats.json*"))  # no temporary file left behind


def test_constant_channel_gets_unit_std(tmp_path):
    u = np.full((3, 4, 5, 2), 2.5, dtype=np.float32)
    u[..., 1] = random_fields(3, 4, 5, seed=6)
    data_cfg = DataConfig(train=str(write_ups_file(tmp_path / "c.hdf5", u)))
    norm = Normalizer.fit(open_split(data_cfg, "train"))
    assert norm.mean[0] == pytest.approx(2.5, rel=1e-12) and norm.std[0] == pytest.approx(1.0, rel=1e-12)
    assert norm.std[1] > 0.5
