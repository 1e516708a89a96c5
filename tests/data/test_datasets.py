"""WindowDataset items, the one collate function, loaders (seeded, workers, DDP sampler), metadata."""

import numpy as np
import pytest
import torch

from helpers import cell_centres, indexed_array, random_fields, write_pdebench_file, write_ups_file
from ups.config import DataConfig
from ups.data.datasets import WindowDataset, build_metadata, collate, make_loader, set_loader_epoch
from ups.data.normalization import Normalizer
from ups.data.reader import open_split
from ups.errors import DataError


@pytest.fixture
def burgers(tmp_path):
    u = indexed_array(5, 21, 16)
    path = write_ups_file(tmp_path / "train.hdf5", u, params={"nu": 0.05}, t_end=2.0)
    return DataConfig(train=str(path), val=str(path), test=str(path)), u


def test_window_items_1d(burgers):
    data_cfg, u = burgers
    source = open_split(data_cfg, "train")
    norm = Normalizer(mean=[3.0], std=[7.0])
    ds = WindowDataset(source, window=3, normalizer=norm, temporal_stride=5, spatial_stride=4, start=1)
    # strided timeline: frames 0, 5, 10, 15, 20 (5 frames); windows of 3 from t0 = 1: t0 in {1, 2}
    assert len(ds) == 5 * 2
    item = ds[7]  # sample 3, t0 = 2
    assert item["sample"] == 3 and item["t0"] == 2
    assert item["u"].shape == (3, 4, 1) and item["u"].dtype == torch.float32
    want = (u[3, 10:21:5, ::4] - 3.0) / 7.0
    np.testing.assert_allclose(item["u"][..., 0].numpy(), want, rtol=1e-6)
    assert item["coords"].shape == (4, 1)
    np.testing.assert_allclose(item["coords"][:, 0].numpy(), cell_centres(16)[::4], rtol=1e-6)
    assert item["params"].tolist() == pytest.approx([0.05])
    assert item["dt"] == pytest.approx(0.5)  # 21 frames on [0, 2]: 0.1 per frame, stride 5


def test_whole_trajectories(burgers):
    data_cfg, u = burgers
    ds = WindowDataset(open_split(data_cfg, "val"), window=None, normalizer=None, temporal_stride=2, start=3)
    assert len(ds) == 5
    item = ds[4]
    assert item["t0"] == 3 and item["u"].shape == (8, 16, 1)  # strided frames 3..10 of 11
    np.testing.assert_array_equal(item["u"][..., 0].numpy(), u[4, 6::2])


def test_window_items_2d_multichannel(tmp_path):
    u = indexed_array(3, 6, 8, 6, channels=2)
    data_cfg = DataConfig(pde="toy2d", train=str(write_ups_file(tmp_path / "2d.hdf5", u, pde="toy2d",
                                                          params={"nu": 1e-3, "re": 100.0})))
    ds = WindowDataset(open_split(data_cfg, "train"), window=2, normalizer=None, spatial_stride=2, temporal_stride=2)
    assert len(ds) == 3 * 2  # strided frames 0, 2, 4: windows of 2 start at t0 in {0, 1}
    item = ds[5]  # sample 2, t0 = 1
    assert item["u"].shape == (2, 4, 3, 2) and item["coords"].shape == (4, 3, 2)
    np.testing.assert_array_equal(item["u"].numpy(), u[2, 2:5:2, ::2, ::2])
    np.testing.assert_allclose(item["coords"][..., 1].numpy()[0], cell_centres(6)[::2], rtol=1e-6)
    batch = collate([ds[0], ds[5]])
    assert batch["u"].shape == (2, 2, 4, 3, 2) and batch["coords"].shape == (2, 4, 3, 2)
    assert batch["params"].shape == (2, 2) and batch["params"][0].tolist() == pytest.approx([1e-3, 100.0])
    strided = data_cfg.model_copy(update={"spatial_stride": 2, "temporal_stride": 2})
    meta = build_metadata(open_split(data_cfg, "train"), strided)
    assert meta.spatial_dims == 2 and meta.spatial_shape == (4, 3) and meta.n_channels == 2
    assert meta.field_names == ("u0", "u1") and meta.param_names == ("nu", "re")
    np.testing.assert_allclose(meta.domain, [(0.0, 1.0), (0.0, 1.0)], atol=1e-12)


def test_random_offsets_are_shifted_grids_and_reproducible(tmp_path):
    u = indexed_array(4, 3, 16)
    data_cfg = DataConfig(train=str(write_ups_file(tmp_path / "o.hdf5", u)))
    source = open_split(data_cfg, "train")
    ds = WindowDataset(source, window=2, normalizer=None, spatial_stride=4, random_offset=True, seed=3)
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            offset = int(item["u"][0, 0, 0].item()) % 100  # point index encoded in the value
            assert 0 <= offset < 4
            sample, t0 = item["sample"], item["t0"]
            np.testing.assert_array_equal(item["u"][..., 0].numpy(), u[sample, t0:t0 + 2, offset::4])
            np.testing.assert_allclose(item["coords"][:, 0].numpy(), cell_centres(16)[offset::4], rtol=1e-6)
            seen.add(offset)
    assert seen == {0, 1, 2, 3}
    ds.set_epoch(1)
    first = [ds.offset(i) for i in range(len(ds))]
    ds.set_epoch(2)
    assert [ds.offset(i) for i in range(len(ds))] != first
    ds.set_epoch(1)
    assert [ds.offset(i) for i in range(len(ds))] == first
    uneven = WindowDataset(open_split(DataConfig(train=str(write_ups_file(tmp_path / "u.hdf5", indexed_array(
        2, 2, 10)))), "train"), window=1, normalizer=None, spatial_stride=4, random_offset=True)
    assert uneven.max_offset == (2,)  # 10 points, stride 4: offsets 0, 1 keep 3 points
    assert {uneven[i]["u"].shape for i in range(len(uneven))} == {(1, 3, 1)}


def test_collate_layout(burgers):
    data_cfg, _ = burgers
    ds = WindowDataset(open_split(data_cfg, "train"), window=2, normalizer=None)
    batch = collate([ds[i] for i in (0, 25, 99)])
    assert batch["u"].shape == (3, 2, 16, 1) and batch["u"].dtype == torch.float32
    assert batch["coords"].shape == (3, 16, 1) and batch["params"].shape == (3, 1)
    assert batch["dt"].shape == (3,) and batch["dt"].dtype == torch.float32
    assert batch["dt"][0].item() == pytest.approx(0.1)
    assert batch["sample"].tolist() == [0, 1, 4] and batch["t0"].tolist() == [0, 5, 19]
    assert batch["sample"].dtype == torch.long and batch["t0"].dtype == torch.long


def test_loader_is_seeded_and_workers_match(burgers):
    data_cfg, _ = burgers
    source = open_split(data_cfg, "train")
    ds = WindowDataset(source, window=2, normalizer=None, spatial_stride=2, random_offset=True)
    source.ref.read(0)  # the parent has an open handle before the workers fork

    def order(loader):
        return [(b["sample"].tolist(), b["t0"].tolist(), b["u"].sum().item()) for b in loader]

    a = order(make_loader(ds, batch_size=8, shuffle=True, seed=5))
    assert a == order(make_loader(ds, batch_size=8, shuffle=True, seed=5))
    assert a != order(make_loader(ds, batch_size=8, shuffle=True, seed=6))
    assert a == order(make_loader(ds, batch_size=8, shuffle=True, seed=5, num_workers=2))
    loader = make_loader(ds, batch_size=8, shuffle=True, seed=5)
    set_loader_epoch(loader, 1)
    assert order(loader) != a  # new offsets in a new epoch


def test_distributed_sampler_shards_the_items(burgers):
    data_cfg, _ = burgers
    ds = WindowDataset(open_split(data_cfg, "train"), window=2, normalizer=None)
    seen = []
    for rank in range(2):
        loader = make_loader(ds, batch_size=4, shuffle=True, seed=0, distributed=True, num_replicas=2, rank=rank)
        set_loader_epoch(loader, 0)
        seen.append({(s, t) for b in loader for s, t in zip(b["sample"].tolist(), b["t0"].tolist())})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == len(ds)


def test_sharded_batches_are_the_single_process_batches_split_by_rank(burgers):
    data_cfg, _ = burgers
    ds = WindowDataset(open_split(data_cfg, "train"), window=2, normalizer=None)  # 100 windows

    def batches(world, rank, **kw):
        loader = make_loader(ds, batch_size=12, shuffle=True, seed=4, distributed=True, num_replicas=world,
                             rank=rank, **kw)
        set_loader_epoch(loader, 2)
        return [list(zip(b["sample"].tolist(), b["t0"].tolist())) for b in loader]

    for drop_last in (True, False):
        one = batches(1, 0, drop_last=drop_last)
        for world in (2, 3, 4):
            ranks = [batches(world, r, drop_last=drop_last) for r in range(world)]
            assert [sum(parts, []) for parts in zip(*ranks)] == one  # rank shards, in rank order = the batch
        assert len(one) == (8 if drop_last else 9) and len(one[-1]) == (12 if drop_last else 4)
    with pytest.raises(DataError, match="data.batch_size"):
        make_loader(ds, batch_size=10, shuffle=True, seed=0, distributed=True, num_replicas=4, rank=0)
    with pytest.raises(DataError, match="holds 1 of 100 items, fewer than the 3 processes"):
        make_loader(ds, batch_size=33, shuffle=True, seed=0, distributed=True, num_replicas=3, rank=0)


def test_early_oversampling_draws_starts_by_their_weights(burgers):
    data_cfg, _ = burgers
    ds = WindowDataset(open_split(data_cfg, "train"), window=2, normalizer=None)  # 5 samples x 20 starts
    loader = make_loader(ds, batch_size=10, shuffle=True, seed=3, early_oversample=9.0, early_frames=2.0)
    draws = []
    for epoch in range(200):  # 20,000 draws
        set_loader_epoch(loader, epoch)
        draws += [b["t0"] for b in loader]
    t0 = torch.cat(draws)
    w = 1 + 9.0 * torch.exp(-torch.arange(20.0) / 2.0)
    freq = torch.bincount(t0, minlength=20).double() / t0.numel()
    torch.testing.assert_close(freq, (w / w.sum()).double(), atol=0.006, rtol=0.0)  # first start: 10x the last
    set_loader_epoch(loader, 0)
    first = [b["t0"].tolist() for b in loader]
    assert first == [b["t0"].tolist() for b in loader] and len(first) == len(ds) // 10
    set_loader_epoch(loader, 1)
    assert first != [b["t0"].tolist() for b in loader]  # a new draw each epoch
    # the distributed form: the same weighted draw, each global batch of 10 cut into 2 rank shards of 5
    shards = [make_loader(ds, batch_size=10, shuffle=True, seed=3, early_oversample=9.0, early_frames=2.0,
                          distributed=True, num_replicas=2, rank=r) for r in range(2)]
    for shard in shards:
        set_loader_epoch(shard, 0)
    joined = [a["t0"].tolist() + b["t0"].tolist() for a, b in zip(*shards)]
    assert joined == first and all(len(b["t0"]) == 5 for b in shards[0])


def test_metadata_from_pdebench_file(tmp_path):
    u = random_fields(20, 201, 1024, seed=0)[:, :41]  # 41 frames of a 1024-cell file
    data_cfg = DataConfig(pdebench_file=str(write_pdebench_file(tmp_path, u)), spatial_stride=4, temporal_stride=5)
    meta = build_metadata(open_split(data_cfg, "train"), data_cfg)
    assert meta.pde == "burgers1d" and meta.param_names == ("nu",)
    assert meta.spatial_shape == (256,) and meta.full_spatial_shape == (1024,)
    assert meta.n_frames == 9 and meta.dt == pytest.approx(0.05, rel=1e-6)
    lo, hi = meta.domain[0]
    assert lo == pytest.approx(-1.0, abs=1e-6) and hi == pytest.approx(1.0, abs=1e-6)  # period 2 on (-1, 1)
    assert meta.extra["spatial_stride"] == 4 and meta.n_channels == 1


def test_metadata_of_our_files(burgers):
    data_cfg, _ = burgers
    meta = build_metadata(open_split(data_cfg, "train"), data_cfg)
    np.testing.assert_allclose(meta.domain, [(0.0, 1.0)], atol=1e-12)
    assert meta.dt == pytest.approx(0.1)
    assert meta.n_frames == 21 and meta.spatial_shape == (16,) and meta.boundary == "periodic"


def test_cached_items_equal_file_reads_and_the_cache_respects_its_limit(tmp_path):
    u = indexed_array(4, 11, 16)  # 4 samples x 11 frames x 16 points: 2,816 bytes as float32
    source = open_split(DataConfig(train=str(write_ups_file(tmp_path / "c.hdf5", u))), "train")
    kw = dict(window=3, normalizer=Normalizer(mean=[1.0], std=[2.0]), temporal_stride=2, spatial_stride=4,
              random_offset=True, seed=5, start=1)
    from_file, cached = WindowDataset(source, cache_mb=0, **kw), WindowDataset(source, cache_mb=1, **kw)
    assert not from_file.cached and cached.cached
    for epoch in range(3):  # new random offsets every epoch, served from the same cached frames
        from_file.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(cached)):
            a, b = from_file[i], cached[i]
            assert set(a) == set(b) and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    item = cached[0]
    item["u"].add_(100.0)  # an item is a copy: changing it leaves the cache alone
    assert torch.equal(cached[0]["u"], from_file[0]["u"])
    assert not WindowDataset(source, cache_mb=1e-3, **kw).cached  # 2,816 bytes do not fit in 1,049
    assert cached.__getstate__()["_frames"] == {}  # loader workers start with an empty cache
