"""Torch datasets of trajectory windows, the ONE collate function, loaders and the data metadata.

An item of :class:`WindowDataset` is ``W`` consecutive frames of the strided timeline of one sample
(``W = 2``: one-step pairs; ``W = K + 1``: K-step rollout windows; ``window=None``: the whole
trajectory from ``start``), on a strided spatial grid, normalised, with the physical coordinates of
the points read, the sample's PDE parameters and the time step::

    u       [W, *spatial, C]  float32, normalised
    coords  [*spatial, d]     float32 physical coordinates of the points read (offset included)
    params  [P]               float32, in the order of ``source.param_names``
    dt      float             time between consecutive frames of ``u`` (after the temporal stride)
    sample  int               sample index in its split
    t0      int               first frame of ``u`` on the strided timeline (file frame t0 * stride)

With ``point_subset`` an item is an irregular point cloud: ``u`` [W, n, C] and ``coords`` [n, d] at a
random subset of n of the grid's points (n differs between items) plus ``mask`` [n] (all True).
:func:`collate` stacks items into the batch layout of ``docs/ARCHITECTURE.md``; point clouds of
different sizes are padded to the largest, ``mask`` [B, N] marking the real points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.data.reader import SplitSource, strided_length
from ups.errors import DataError


class WindowDataset(Dataset):
    """Windows of ``window`` consecutive strided frames over (sample, start frame ``t0 >= start``).

    ``random_offset=True`` reads the strided grid shifted by a random sub-cell offset in
    ``[0, spatial_stride)`` per axis and item (so models see many point sets of the fine grid); the
    offset is a function of ``(seed, epoch, index)``: call :meth:`set_epoch` (or
    :func:`set_loader_epoch`) each epoch for fresh offsets. ``normalizer=None`` leaves values physical.
    ``point_subset=(fraction, min_points)`` keeps each point of an item with probability ``fraction``,
    at least ``min_points`` (or all) of them, drawn from ``(seed, epoch, index)`` like the offsets.
    ``cache_mb``: when every sample's strided frames at the file's full spatial resolution fit in that many
    MiB, each sample is read from the file once and kept in memory (per process; items are copies, the
    values identical to a file read); 0 reads every item from the file.
    """

    def __init__(self, source: SplitSource, *, window: int | None, normalizer: Normalizer | None,
                 temporal_stride: int = 1, spatial_stride: int = 1, random_offset: bool = False,
                 start: int = 0, seed: int = 0, point_subset: tuple[float, int] | None = None,
                 cache_mb: float = 0.0):
        if temporal_stride < 1 or spatial_stride < 1 or start < 0:
            raise DataError(f"temporal_stride={temporal_stride}, spatial_stride={spatial_stride} must be >= 1 "
                            f"and start={start} >= 0")
        if normalizer is not None and normalizer.n_channels != source.n_channels:
            raise DataError(f"the normaliser has {normalizer.n_channels} channels but the data have "
                            f"{source.n_channels}")
        self.source, self.window, self.normalizer = source, window, normalizer
        self.temporal_stride, self.spatial_stride = temporal_stride, spatial_stride
        self.random_offset, self.start, self.seed, self.epoch = random_offset, start, seed, 0
        self.n_frames = strided_length(source.n_frames, temporal_stride)  # T' on the strided timeline
        span = self.n_frames - start if window is None else window
        self.per_sample = self.n_frames - start - span + 1
        if (window is not None and window < 1) or span < 1 or self.per_sample < 1:
            raise DataError(f"a window of {window} frames from frame {start} does not fit in the {self.n_frames} "
                            f"frames of the data (temporal_stride={temporal_stride}); shorten the window")
        self.span = span
        if point_subset is not None and not (0 < point_subset[0] <= 1 and point_subset[1] >= 1):
            raise DataError(f"point_subset={point_subset}: the fraction must be in (0, 1] and min_points >= 1")
        self.point_subset = point_subset
        # largest sub-cell offset (exclusive) that keeps the strided grid's point count
        self.max_offset = tuple(min(spatial_stride, n - spatial_stride * (strided_length(n, spatial_stride) - 1))
                                for n in source.spatial_shape)
        self.spatial_shape = tuple(strided_length(n, spatial_stride) for n in source.spatial_shape)
        frame_bytes = 4 * int(np.prod(source.spatial_shape)) * source.n_channels
        self.cached = cache_mb > 0 and len(source) * self.n_frames * frame_bytes <= cache_mb * 2**20
        self._frames: dict[int, np.ndarray] = {}  # sample -> [T', *full spatial, C] when cached

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_frames": {}}  # loader workers fill their own cache

    def __len__(self) -> int:
        return len(self.source) * self.per_sample

    def set_epoch(self, epoch: int) -> None:
        """Draw new random sub-cell offsets for this epoch (same epoch and seed: same offsets)."""
        self.epoch = int(epoch)

    def window_starts(self) -> torch.Tensor:
        """Start frame of every item counted from ``start`` (what early oversampling weights).  # [len] long"""
        return torch.arange(len(self)) % self.per_sample

    def offset(self, index: int) -> tuple[int, ...]:
        """The sub-cell offset of item ``index`` per spatial axis (zeros unless ``random_offset``)."""
        if not self.random_offset:
            return (0,) * len(self.max_offset)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return tuple(int(rng.integers(0, m)) for m in self.max_offset)

    def subset(self, index: int, n_points: int) -> np.ndarray | None:
        """The sorted indices of the points item ``index`` keeps among ``n_points`` (None: all, no subset)."""
        if self.point_subset is None:
            return None
        fraction, min_points = self.point_subset
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])  # a stream apart from the offsets'
        order = rng.permutation(n_points)
        count = max(int((rng.random(n_points) < fraction).sum()), min(min_points, n_points))
        return np.sort(order[:count])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        sample, t0 = divmod(int(index), self.per_sample)
        t0 += self.start
        file, j = self.source.locate(sample)
        offset = self.offset(index)
        u = self._read(file, j, sample, t0, offset)  # [W, *spatial, C]
        if self.normalizer is not None:
            u = self.normalizer.normalize(u)
        coords = file.coords(spatial_stride=self.spatial_stride, offset=offset)  # [*spatial, d]
        item = {
            "u": torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32)),
            "coords": torch.from_numpy(coords.astype(np.float32)),
            "params": torch.from_numpy(file.params_array(self.source.param_names)),
            "dt": float(file.dt * self.temporal_stride),
            "sample": sample,
            "t0": t0,
        }
        keep = self.subset(index, int(np.prod(coords.shape[:-1])))
        if keep is not None:  # an irregular point cloud: [W, n, C], [n, d]
            keep_t = torch.from_numpy(keep)
            item["u"] = item["u"].flatten(1, -2)[:, keep_t].contiguous()
            item["coords"] = item["coords"].flatten(0, -2)[keep_t].contiguous()
            item["mask"] = torch.ones(len(keep), dtype=torch.bool)
        return item

    def _read(self, file, j: int, sample: int, t0: int, offset: tuple[int, ...]) -> np.ndarray:
        """Sample ``sample`` (sample ``j`` of ``file``): its frames t0 .. t0 + span - 1 (strided timeline) on the
        grid ``offset::spatial_stride``, from the file or from its cached frames.  # [W, *spatial, C] float32"""
        ts = self.temporal_stride
        if not self.cached:
            return file.read(j, slice(t0 * ts, (t0 + self.span - 1) * ts + 1, ts),
                             spatial_stride=self.spatial_stride, offset=offset)
        frames = self._frames.get(sample)
        if frames is None:
            frames = self._frames[sample] = file.read(j, slice(0, None, ts))  # [T', *full spatial, C]
        grid = tuple(slice(o, None, self.spatial_stride) for o in offset)
        return frames[(slice(t0, t0 + self.span),) + grid].copy()


def collate(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """THE collate function: a list of items -> one batch (see ``docs/ARCHITECTURE.md``).

    ``u`` [B, W, *spatial, C] float32; ``coords`` [B, *spatial, d] float32; ``params`` [B, P] float32;
    ``dt`` [B] float32; ``sample``, ``t0`` [B] long. Other keys are stacked as tensors. Point clouds (items
    with a ``mask`` [n]) are padded to the largest n: ``u`` [B, W, N, C] and ``coords`` [B, N, d] repeat
    each cloud's first point (zeros in ``u``), ``mask`` [B, N] is True at the real points.
    """
    if not items:
        raise DataError("cannot collate an empty list of items")
    if "mask" in items[0]:
        items = _pad_points(items)
    dtypes = {"u": torch.float32, "coords": torch.float32, "params": torch.float32, "dt": torch.float32,
              "sample": torch.long, "t0": torch.long}
    batch = {}
    for key in items[0]:
        values = [torch.as_tensor(item[key]) for item in items]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise DataError(f"cannot collate '{key}': items have different shapes {sorted(shapes)}")
        stacked = torch.stack(values)
        batch[key] = stacked.to(dtypes[key]) if key in dtypes else stacked
    return batch


def _pad_points(items: Sequence[dict]) -> list[dict]:
    """Point-cloud items (``u`` [W, n, C], ``coords`` [n, d], ``mask`` [n]) padded to the largest n."""
    if any("mask" not in item for item in items):
        raise DataError("cannot collate point clouds (items with a mask) with whole grids in one batch")
    size = max(item["mask"].shape[0] for item in items)
    out = []
    for item in items:
        pad = size - item["mask"].shape[0]
        u, coords, mask = item["u"], item["coords"], item["mask"]
        out.append({**item,
                    "u": torch.cat([u, u.new_zeros(u.shape[0], pad, u.shape[-1])], dim=1),
                    "coords": torch.cat([coords, coords[:1].expand(pad, -1)], dim=0),
                    "mask": torch.cat([mask, mask.new_zeros(pad)], dim=0)})
    return out


def _domain(axis: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of the periodic cell-centred axis: period = x[-1] - x[0] + dx."""
    if len(axis) < 2:
        return float(axis[0]), float(axis[0])
    dx = float(axis[-1] - axis[0]) / (len(axis) - 1)
    lo = float(axis[0]) - dx / 2
    return lo, lo + float(axis[-1] - axis[0]) + dx


def build_metadata(source: SplitSource, data_cfg) -> DatasetMetadata:
    """Shapes and physical facts of ``source`` after the strides of ``data_cfg`` (a DataConfig)."""
    ref = source.ref
    pde = ref.attrs.get("pde")
    if pde is not None and str(pde) != data_cfg.pde:
        raise DataError(f"{ref.path} holds pde={pde} but data.pde={data_cfg.pde} (set data.pde={pde})")
    ss, ts = data_cfg.spatial_stride, data_cfg.temporal_stride
    c = source.n_channels
    names = ref.attrs.get("field_names")
    fields = tuple(names) if isinstance(names, list) and len(names) == c else (
        ("u",) if c == 1 else tuple(f"u{k}" for k in range(c)))
    nonneg = ref.attrs.get("nonnegative")
    nonneg = tuple(bool(v) for v in nonneg) if isinstance(nonneg, list) and len(nonneg) == c else (False,) * c
    return DatasetMetadata(
        pde=data_cfg.pde, spatial_dims=source.spatial_dims,
        spatial_shape=tuple(strided_length(n, ss) for n in source.spatial_shape), n_channels=c,
        n_frames=strided_length(source.n_frames, ts), dt=float(source.dt * ts),
        param_names=tuple(source.param_names), field_names=fields,
        domain=tuple(_domain(a) for a in ref.axes), boundary=str(ref.attrs.get("boundary", "periodic")),
        nonnegative=nonneg, full_spatial_shape=tuple(source.spatial_shape),
        extra={"spatial_stride": ss, "temporal_stride": ts, "files": [str(f.path) for f in source.files]},
    )


class EarlyWindowSampler(Sampler[int]):
    """Draws ``len(dataset)`` windows per epoch, with replacement, window start ``t0`` (frames after the
    dataset's ``start``) weighted ``1 + boost * exp(-t0 / frames)``: more of the early frames, where a
    trajectory changes fastest (Burgers: shocks form) and where rollout errors are born. The draw is a
    function of ``(seed, epoch)``; call :meth:`set_epoch` each epoch (the trainer does).
    """

    def __init__(self, dataset: WindowDataset, *, boost: float, frames: float, seed: int):
        t0 = dataset.window_starts()  # [len(dataset)]
        self.weights = 1.0 + boost * torch.exp(-t0.double() / frames)  # [len(dataset)]
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.weights.numel()

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.multinomial(self.weights, len(self), replacement=True, generator=g).tolist()


class ShardedSampler(Sampler[int]):
    """One rank's shard of the single-process order: the epoch's order (a permutation seeded by
    ``(seed, epoch)``, the :class:`EarlyWindowSampler` draw when ``early_oversample > 0``, or the
    dataset order without ``shuffle``) is cut into global batches of ``global_batch`` items, and rank
    ``r`` keeps the contiguous slice ``[r * b, (r + 1) * b)`` of each (``b = global_batch / replicas``).
    The rank shards of a global batch, concatenated in rank order, are that batch of one process.
    With ``drop_last`` an incomplete last global batch is dropped; otherwise it is split as evenly as
    possible (it must hold at least one item per rank). Call :meth:`set_epoch` each epoch.
    """

    def __init__(self, dataset: Dataset, *, global_batch: int, num_replicas: int, rank: int, seed: int,
                 shuffle: bool = True, drop_last: bool = False, early_oversample: float = 0.0,
                 early_frames: float = 5.0):
        if not 0 <= rank < num_replicas or global_batch % num_replicas:
            raise DataError(f"rank {rank} of {num_replicas} processes with a global batch of {global_batch}: the "
                            "batch must divide evenly over the processes (data.batch_size)")
        n = len(dataset)
        tail = 0 if drop_last else n % global_batch
        if 0 < tail < num_replicas:
            raise DataError(f"the last batch holds {tail} of {n} items, fewer than the {num_replicas} processes; "
                            "change data.batch_size or the number of processes")
        self.n, self.global_batch, self.replicas, self.rank = n, global_batch, num_replicas, rank
        self.seed, self.shuffle, self.drop_last, self.epoch = int(seed), shuffle, drop_last, 0
        self.early = (EarlyWindowSampler(dataset, boost=early_oversample, frames=early_frames, seed=seed)
                      if early_oversample > 0 and shuffle else None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> list[int]:
        """The order one process draws this epoch (before any sharding)."""
        if self.early is not None:
            self.early.set_epoch(self.epoch)
            return list(self.early)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def _slices(self) -> list[tuple[int, int]]:
        full = self.n // self.global_batch
        b = self.global_batch // self.replicas
        out = [(k * self.global_batch + self.rank * b, k * self.global_batch + (self.rank + 1) * b)
               for k in range(full)]
        tail = self.n - full * self.global_batch
        if tail and not self.drop_last:
            bounds = np.linspace(0, tail, self.replicas + 1).round().astype(int)  # as even as possible
            start = full * self.global_batch
            out.append((start + int(bounds[self.rank]), start + int(bounds[self.rank + 1])))
        return out

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self._slices())

    def __iter__(self):
        order = self.global_order()
        for lo, hi in self._slices():
            yield from order[lo:hi]


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                drop_last: bool = False, distributed: bool = False, num_replicas: int | None = None,
                rank: int | None = None, early_oversample: float = 0.0, early_frames: float = 5.0) -> DataLoader:
    """A DataLoader with a seeded order and :func:`collate`; call :func:`set_loader_epoch` each epoch.

    ``early_oversample > 0`` (with ``shuffle``) draws windows with an :class:`EarlyWindowSampler`.
    ``distributed=True``: ``batch_size`` is the GLOBAL batch and this loader yields this rank's shard of
    each (a :class:`ShardedSampler`, batches of ``batch_size / num_replicas``; ``num_replicas``/``rank``
    default to the process group's). The sharded order is a function of ``(seed, epoch)`` alone, so it
    is the same at every world size, 1 included.
    """
    generator = torch.Generator().manual_seed(int(seed))
    sampler = None
    if distributed:
        group = torch.distributed.is_available() and torch.distributed.is_initialized()
        replicas = num_replicas if num_replicas is not None else torch.distributed.get_world_size() if group else 1
        rank = rank if rank is not None else torch.distributed.get_rank() if group else 0
        sampler = ShardedSampler(dataset, global_batch=batch_size, num_replicas=replicas, rank=rank, seed=seed,
                                 shuffle=shuffle, drop_last=drop_last, early_oversample=early_oversample,
                                 early_frames=early_frames)
        batch_size //= replicas
    elif early_oversample > 0 and shuffle:
        sampler = EarlyWindowSampler(dataset, boost=early_oversample, frames=early_frames, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, generator=generator, collate_fn=collate, num_workers=num_workers,
                      drop_last=drop_last, persistent_workers=False)


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell everything in the loader with a ``set_epoch`` the epoch, once each: its sampler (shuffling
    under DDP, oversampling), batch sampler and that one's sampler, and dataset (random offsets). The
    trainer calls it at the start of every epoch."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    found: dict[int, object] = {}
    for owner in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None),
                  getattr(loader, "dataset", None)):
        if owner is not None and callable(getattr(owner, "set_epoch", None)):
            found.setdefault(id(owner), owner)
    for owner in found.values():
        owner.set_epoch(epoch)
