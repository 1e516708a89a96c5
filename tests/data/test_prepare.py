"""From a data config to open splits: missing files, metadata, train-only normalisation."""

import numpy as np
import pytest
from tests.helpers import write_ups_file

from ups.config import DataConfig
from ups.data.prepare import ensure_data, fit_normalizer, prepare_data
from ups.errors import DataError


def _three_splits(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for i, split in enumerate(("train", "val", "test")):
        u = rng.normal(loc=10.0 * i, scale=1.0 + i, size=(4, 9, 16)).astype(np.float32)
        paths[split] = str(write_ups_file(tmp_path / f"{split}.hdf5", u, seed=i))
    return paths


def test_missing_file_without_generate_section_names_it(tmp_path):
    data_cfg = DataConfig(train=str(tmp_path / "nope.hdf5"))
    with pytest.raises(DataError, match=r"nope\.hdf5.*data\.train.*ups data generate"):
        ensure_data(data_cfg)


def test_prepare_opens_splits_and_strided_metadata(tmp_path):
    data_cfg = DataConfig(**_three_splits(tmp_path), spatial_stride=4, temporal_stride=2)
    bundle = prepare_data(data_cfg, generate=False)
    assert bundle.meta.spatial_shape == (4,) and bundle.meta.n_frames == 5
    assert bundle.meta.param_names == ("nu",)
    ds = bundle.windows("val", window=None, normalizer=None, start=1)
    item = ds[0]
    assert item["u"].shape == (4, 4, 1)  # frames 1..4 of the 5 strided ones, 4 points, 1 channel


def test_normaliser_uses_train_split_only(tmp_path):
    paths = _three_splits(tmp_path)
    bundle = prepare_data(DataConfig(**paths), generate=False)
    norm = fit_normalizer(bundle)
    import h5py

    with h5py.File(paths["train"]) as f:
        train = f["tensor"][...]
    np.testing.assert_allclose(norm.mean, [train.mean()], rtol=1e-6)
    np.testing.assert_allclose(norm.std, [train.std()], rtol=1e-5)
