"""Every bad input gets one line that names the problem (and what to do)."""

import h5py
import numpy as np
import pytest

from helpers import cell_centres, indexed_array, write_pdebench_file, write_ups_file
from ups.config import DataConfig, load_config
from ups.data.datasets import WindowDataset, build_metadata
from ups.data.normalization import Normalizer
from ups.data.reader import TrajectoryFile, open_split
from ups.errors import ConfigError, DataError


def _raises(exc, fn, *words):
    with pytest.raises(exc) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key.replace("_", "-")] = value
    return path


def test_missing_file(tmp_path):
    _raises(DataError, lambda: TrajectoryFile(tmp_path / "nope.hdf5"), "data file not found", "nope.hdf5")
    data_cfg = DataConfig(train=str(tmp_path / "train.hdf5"))
    _raises(DataError, lambda: open_split(data_cfg, "train"), "data.train", "file not found", "ups data generate")


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "text.hdf5"
    path.write_text("hello")
    _raises(DataError, lambda: TrajectoryFile(path), "text.hdf5 is not an HDF5 file", "tensor")
    _raises(DataError, lambda: TrajectoryFile(tmp_path), "is not an HDF5 file")  # a directory


def test_missing_or_misnamed_tensor(tmp_path):
    path = _h5(tmp_path / "m.hdf5", data=np.zeros((2, 3, 4)), x_coordinate=np.arange(4.0))
    _raises(DataError, lambda: TrajectoryFile(path), "no dataset 'tensor'", "found: data, x-coordinate",
            "expected: tensor")


def test_missing_coordinates(tmp_path):
    path = _h5(tmp_path / "c.hdf5", tensor=np.zeros((2, 3, 4)), t_coordinate=np.arange(3.0))
    _raises(DataError, lambda: TrajectoryFile(path), "no dataset 'x-coordinate'", "found: t-coordinate, tensor")
    path = _h5(tmp_path / "t.hdf5", tensor=np.zeros((2, 3, 4)), x_coordinate=np.arange(4.0))
    _raises(DataError, lambda: TrajectoryFile(path), "no dataset 't-coordinate'")


@pytest.mark.parametrize("shape", [(5, 4), (1, 2, 3, 4, 5, 6)])
def test_wrong_number_of_dimensions(tmp_path, shape):
    path = _h5(tmp_path / "d.hdf5", tensor=np.zeros(shape, dtype=np.float32))
    _raises(DataError, lambda: TrajectoryFile(path), f"'tensor' has {len(shape)} dimensions", "expected [N, T, X]")


def test_integer_tensor(tmp_path):
    path = _h5(tmp_path / "i.hdf5", tensor=np.zeros((2, 3, 4), dtype=np.int32))
    _raises(DataError, lambda: TrajectoryFile(path), "dtype int32", "floating point")


def test_coordinate_lengths_that_do_not_match(tmp_path):
    u = np.zeros((2, 3, 4), dtype=np.float32)
    path = _h5(tmp_path / "x.hdf5", tensor=u, x_coordinate=np.arange(5.0), t_coordinate=np.arange(3.0))
    _raises(DataError, lambda: TrajectoryFile(path), "'x-coordinate' has shape [5]", "4 points", "expected 4")
    path = _h5(tmp_path / "t.hdf5", tensor=u, x_coordinate=np.arange(4.0), t_coordinate=np.arange(5.0))
    _raises(DataError, lambda: TrajectoryFile(path), "'t-coordinate' has shape [5]", "3 frames", "3 or 4")
    path = _h5(tmp_path / "n.hdf5", tensor=u, x_coordinate=[0, np.nan, 1, 2.0], t_coordinate=np.arange(3.0))
    _raises(DataError, lambda: TrajectoryFile(path), "'x-coordinate' contains NaN")


def test_nan_and_inf_name_the_sample(tmp_path):
    u = indexed_array(6, 4, 8)
    u[3, 2, 1] = np.nan
    path = write_ups_file(tmp_path / "nan.hdf5", u)
    source = open_split(DataConfig(train=str(path)), "train")
    ds = WindowDataset(source, window=2, normalizer=None)
    ds[3 * 3]  # sample 3, frames 0-1: finite (only the values read are checked)
    _raises(DataError, lambda: ds[3 * 3 + 1], "nan.hdf5: sample 3 contains NaN or inf", "ups data info")
    _raises(DataError, lambda: Normalizer.fit(source), "sample 3 contains NaN or inf")


def test_parameters_missing_or_conflicting(tmp_path):
    u = indexed_array(2, 3, 4)
    path = _h5(tmp_path / "plain.hdf5", tensor=u, x_coordinate=cell_centres(4), t_coordinate=np.arange(3.0))
    _raises(DataError, lambda: TrajectoryFile(path).params, "carries no PDE parameters", "data.params")
    ours = write_ups_file(tmp_path / "ours.hdf5", u, params={"nu": 0.01})
    _raises(DataError, lambda: TrajectoryFile(ours, params={"nu": 0.1}).params, "nu=0.1 disagrees with nu=0.01")


def test_split_problems(tmp_path):
    path = write_pdebench_file(tmp_path, indexed_array(20, 3, 4))
    _raises(DataError, lambda: open_split(DataConfig(pdebench_file=str(path), val_fraction=0.0), "val"),
            "split 'val' holds no samples", "val_fraction=0.0")
    _raises(DataError, lambda: open_split(DataConfig(train=str(path)), "val"), "data.val is not set")
    _raises(DataError, lambda: open_split(DataConfig(train=str(path)), "dev"), "unknown split 'dev'")
    _raises(DataError, lambda: open_split(DataConfig(train=str(path), max_samples={"train": 0}), "train"),
            "data.max_samples.train=0")
    other = write_ups_file(tmp_path / "o.hdf5", indexed_array(2, 4, 4))
    _raises(DataError, lambda: open_split(DataConfig(train=[str(path), str(other)]), "train"),
            "differ in frames (4 vs 3)")


def test_dataset_problems(tmp_path):
    path = write_ups_file(tmp_path / "a.hdf5", indexed_array(2, 5, 8), pde="advection1d", params={"beta": 1.0})
    source = open_split(DataConfig(train=str(path)), "train")
    _raises(DataError, lambda: WindowDataset(source, window=4, normalizer=None, temporal_stride=2),
            "window of 4 frames", "3 frames")
    _raises(DataError, lambda: WindowDataset(source, window=2, normalizer=Normalizer(mean=[0, 0], std=[1, 1])),
            "normaliser has 2 channels but the data have 1")
    _raises(DataError, lambda: build_metadata(source, DataConfig(train=str(path))),
            "holds pde=advection1d but data.pde=burgers1d")


def test_bad_normaliser_file(tmp_path):
    _raises(DataError, lambda: Normalizer.from_json(tmp_path / "stats.json"), "not found")
    (tmp_path / "bad.json").write_text("{oops")
    _raises(DataError, lambda: Normalizer.from_json(tmp_path / "bad.json"), "not valid JSON")
    (tmp_path / "keys.json").write_text('{"avg": [0]}')
    _raises(DataError, lambda: Normalizer.from_json(tmp_path / "keys.json"), "need 'mean' and 'std'", "found: avg")
    _raises(DataError, lambda: Normalizer(mean=[0.0], std=[0.0]), "std > 0")


def test_bad_data_config():
    _raises(ConfigError, lambda: load_config(None, ["model.name=persistence", "data.spatial_stride=0"]),
            "data.spatial_stride=0")
    _raises(ConfigError, lambda: load_config(None, ["model.name=persistence", "data.trian=x.hdf5"]),
            "unknown key 'data.trian'")
    _raises(ConfigError, lambda: load_config(None, ["model.name=persistence", "data.pdebench_file=a.hdf5",
                                                    "data.train=b.hdf5"]), "either pdebench_file or train")
