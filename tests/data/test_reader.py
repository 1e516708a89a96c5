"""The lazy reader: PDEBench's layout and ours, splits, strides, offsets, lazy slicing, NaN scans."""

import json

import h5py
import numpy as np
import pytest

from helpers import cell_centres, indexed_array, write_pdebench_file, write_ups_file
from ups.cli import main
from ups.config import DataConfig
from ups.data.reader import TrajectoryFile, check_finite, open_split, params_from_name
from ups.errors import DataError


@pytest.fixture
def pdebench(tmp_path):
    u = indexed_array(30, 11, 16)
    return write_pdebench_file(tmp_path, u), u


def test_pdebench_layout_test_split_is_first_ten_percent(pdebench):
    path, u = pdebench
    data_cfg = DataConfig(pdebench_file=str(path), val_fraction=0.2)
    test = open_split(data_cfg, "test")
    assert len(test) == 3  # 10 % of 30
    for i in range(3):
        file, j = test.locate(i)
        assert j == i
        np.testing.assert_array_equal(file.read(j)[..., 0], u[i])
    file = test.ref
    assert file.params == {"nu": 0.01} and file.pde == "burgers1d"  # exact: the attribute written is read back
    np.testing.assert_allclose(file.x, cell_centres(16, -1.0, 1.0), rtol=1e-6)  # read from the file, not [0, 1)
    assert file.x.min() > -1 and file.x.max() < 1
    assert file.t.shape == (11,)  # the file's t-coordinate has 12 entries
    np.testing.assert_allclose(file.t, 0.01 * np.arange(11), atol=1e-7)
    assert file.dt == pytest.approx(0.01, rel=1e-6)


def test_pdebench_val_and_train_follow_test(pdebench):
    path, u = pdebench
    data_cfg = DataConfig(pdebench_file=str(path), val_fraction=0.2)
    sources = {s: open_split(data_cfg, s) for s in ("test", "val", "train")}
    got = {s: [src.locate(i)[1] for i in range(len(src))] for s, src in sources.items()}
    assert got["test"] == [0, 1, 2]
    assert got["val"] == list(range(3, 9))  # the next 20 %
    assert got["train"] == list(range(9, 30))
    train = open_split(data_cfg, "train")
    np.testing.assert_array_equal(train.locate(0)[0].read(train.locate(0)[1])[..., 0], u[9])


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_strides_and_offsets_equal_numpy_slicing(tmp_path, stride):
    u = indexed_array(4, 12, 14)
    file = TrajectoryFile(write_ups_file(tmp_path / "a.hdf5", u))
    for offset in range(stride):
        for frames in (slice(None), slice(1, 11, 5), slice(None, None, 3), [7, 2, 2, 11], slice(10, 2, -4)):
            got = file.read(2, frames, spatial_stride=stride, offset=offset)
            want = u[2][frames if isinstance(frames, slice) else np.asarray(frames)][:, offset::stride]
            assert got.shape == want.shape + (1,) and got.dtype == np.float32
            np.testing.assert_array_equal(got[..., 0], want)
        np.testing.assert_allclose(file.coords(spatial_stride=stride, offset=offset)[:, 0],
                                   cell_centres(14)[offset::stride])


def test_multichannel_1d_and_2d_layouts(tmp_path):
    u1 = indexed_array(3, 5, 8, channels=2)  # [N, T, X, C]
    f1 = TrajectoryFile(write_ups_file(tmp_path / "c.hdf5", u1))
    assert (f1.spatial_dims, f1.spatial_shape, f1.n_channels) == (1, (8,), 2)
    np.testing.assert_array_equal(f1.read(1, [0, 4], spatial_stride=2, offset=1), u1[1, [0, 4], 1::2])

    u2 = indexed_array(3, 4, 6, 5, channels=3)  # [N, T, X, Y, C]
    f2 = TrajectoryFile(write_ups_file(tmp_path / "d.hdf5", u2))
    assert (f2.spatial_dims, f2.spatial_shape, f2.n_channels) == (2, (6, 5), 3)
    got = f2.read(2, slice(1, 4, 2), spatial_stride=(2, 3), offset=(1, 2))
    np.testing.assert_array_equal(got, u2[2, 1:4:2, 1::2, 2::3])
    coords = f2.coords(spatial_stride=(2, 3), offset=(1, 2))
    assert coords.shape == (3, 1, 2)
    np.testing.assert_allclose(coords[:, 0, 0], cell_centres(6)[1::2])
    np.testing.assert_allclose(coords[0, :, 1], cell_centres(5)[2::3])

    u3 = indexed_array(2, 3, 4, 5)  # [N, T, X, Y] with a y-coordinate: 2D, one channel
    f3 = TrajectoryFile(write_ups_file(tmp_path / "e.hdf5", u3, y=cell_centres(5)))
    assert (f3.spatial_dims, f3.n_channels) == (2, 1)
    np.testing.assert_array_equal(f3.read(1)[..., 0], u3[1])


def test_parameters_from_attributes_argument_and_name(tmp_path):
    u = indexed_array(2, 3, 4)
    ours = TrajectoryFile(write_ups_file(tmp_path / "ours.hdf5", u, params={"nu": 0.1}))
    # exact: the attribute written is read back; seed, solver_*, versions are not params
    assert ours.params == {"nu": 0.1} and ours.param_names == ("nu",)
    with h5py.File(tmp_path / "bare.hdf5", "w") as f:
        f["tensor"], f["x-coordinate"], f["t-coordinate"] = u, cell_centres(4), np.arange(3.0)
    assert TrajectoryFile(tmp_path / "bare.hdf5", params={"nu": 0.5}).params == {"nu": 0.5}
    # exact: the file name's decimal text parsed
    assert params_from_name("1D_Burgers_Sols_Nu0.001.hdf5") == {"nu": 0.001}
    assert params_from_name("1D_ReacDiff_Nu0.5_Rho1.0.hdf5") == {"nu": 0.5, "rho": 1.0}
    # exact: the file name's decimal text parsed
    assert params_from_name("1D_CFD_Rand_Eta1.e-8_Zeta1.e-8_periodic_Train.hdf5") == {"eta": 1e-8, "zeta": 1e-8}
    # exact: the file name's decimal text parsed
    assert TrajectoryFile(write_pdebench_file(tmp_path, u, name="1D_Advection_Sols_beta0.4.hdf5")).params == {
        "beta": 0.4}


def _record_reads(monkeypatch):
    """Record the number of values every h5py read of 'tensor' returns."""
    sizes = []
    original = h5py.Dataset.__getitem__

    def spy(self, args, **kw):
        out = original(self, args, **kw)
        if self.name == "/tensor":
            sizes.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return sizes


def test_read_touches_only_the_requested_slice_of_a_large_chunked_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    u = rng.standard_normal((64, 101, 1024)).astype(np.float32)  # 26 MB, chunked per sample
    path = write_pdebench_file(tmp_path, u, chunks=(1, 101, 1024))
    file = TrajectoryFile(path)
    sizes = _record_reads(monkeypatch)
    got = file.read(40, slice(0, 101, 5), spatial_stride=4, offset=3)
    np.testing.assert_array_equal(got[..., 0], u[40, ::5, 3::4])
    assert sizes == [21 * 256]  # one read of exactly the requested values
    ds = open_split(DataConfig(pdebench_file=str(path)), "test")
    assert len(ds) == 6 and sum(sizes) == 21 * 256  # opening a split reads no values


def test_check_finite_reports_samples_and_read_names_them(tmp_path):
    u = indexed_array(10, 4, 6)
    u[2, 1, 3] = np.nan
    u[5, 0, 0] = np.inf
    u[7, 3, 5] = -np.inf
    path = write_ups_file(tmp_path / "bad.hdf5", u)
    assert check_finite(path, chunk=3) == [2, 5, 7]
    assert check_finite(path) == [2, 5, 7]
    file = TrajectoryFile(path)
    np.testing.assert_array_equal(file.read(4)[..., 0], u[4])
    with pytest.raises(DataError, match=r"bad\.hdf5: sample 5 contains NaN or inf") as err:
        file.read(5)
    assert "\n" not in str(err.value)


def test_several_files_in_one_split_and_max_samples(tmp_path):
    a = write_ups_file(tmp_path / "a.hdf5", indexed_array(3, 5, 8), params={"nu": 0.01})
    b = write_ups_file(tmp_path / "b.hdf5", indexed_array(4, 5, 8) + 0.5, params={"nu": 0.1})
    split = open_split(DataConfig(train=[str(a), str(b)], val=str(a), test=str(a)), "train")
    assert len(split) == 7
    file, j = split.locate(4)
    assert file.path == b and j == 1
    assert split.params(1).tolist() == pytest.approx([0.01]) and split.params(5).tolist() == pytest.approx([0.1])
    capped = open_split(DataConfig(train=[str(a), str(b)], max_samples={"train": 5}), "train")
    assert [len(p.indices) for p in capped.parts] == [3, 2]
    capped = open_split(DataConfig(train=[str(a), str(b)], max_samples={"train": 3}), "train")
    assert [len(p.indices) for p in capped.parts] == [2, 1]


def test_pickled_file_reopens_after_transfer(tmp_path):
    import pickle

    u = indexed_array(3, 4, 5)
    file = TrajectoryFile(write_ups_file(tmp_path / "p.hdf5", u))
    file.read(0)  # opens the handle
    clone = pickle.loads(pickle.dumps(file))
    np.testing.assert_array_equal(clone.read(2)[..., 0], u[2])
    file.close()


def test_data_info_cli_reports_shapes_ranges_and_bad_samples(tmp_path, capsys):
    u = indexed_array(6, 3, 4)
    u[4, 0, 1] = np.nan
    path = write_ups_file(tmp_path / "i.hdf5", u, params={"nu": 0.1})
    assert main(["data", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # exact: the attribute written is read back
    assert info["shape"] == [6, 3, 4] and info["n_channels"] == 1 and info["params"] == {"nu": 0.1}
    assert info["attrs"]["pde"] == "burgers1d"
    assert info["nonfinite"] == {"values": 1, "samples": 1, "first_samples": [4]}
    finite = u[np.isfinite(u)]
    assert info["values"]["min"] == [float(finite.min())] and info["values"]["max"] == [float(finite.max())]
    assert info["values"]["mean"][0] == pytest.approx(float(finite.astype(np.float64).mean()), rel=1e-12)
    assert info["coordinates"]["x"]["n"] == 4 and info["coordinates"]["t"]["dt"] == pytest.approx(1.0)
    assert main(["data", "info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "NaN/inf     1 values in 1 samples: 4" in text and "[6, 3, 4]" in text
    assert main(["data", "info", str(tmp_path / "missing.hdf5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data file not found:") and "\n" not in err
