"""One lazy reader for trajectory files in the PDEBench HDF5 layout (ours and PDEBench's own).

A file holds ``tensor`` float ``[N, T, X]`` (one channel, 1D), ``[N, T, X, C]`` (1D) or
``[N, T, X, Y, C]`` (2D; ``[N, T, X, Y]`` when a ``y-coordinate`` is present), ``x-coordinate``
``[X]`` (``y-coordinate`` ``[Y]`` in 2D) and ``t-coordinate`` ``[T]`` or ``[T + 1]`` (PDEBench
writes one more entry; the first ``T`` are kept). Files written by ``ups data generate`` carry
attributes (``pde``, one per PDE parameter, ``seed``, versions, ``solver_*``); PDEBench's carry none,
so their parameters come from the config or the file name (``1D_Burgers_Sols_Nu0.01.hdf5``).

Nothing here loads a whole ``tensor``: :meth:`TrajectoryFile.read` selects one sample, the frames
asked for and a strided spatial grid inside HDF5; scans (:func:`scan_file`) go a few samples at a
time. The h5py handle is opened on first use and re-opened in a forked process, so a
``TrajectoryFile`` works inside DataLoader workers.

:func:`open_split` turns a :class:`ups.config.DataConfig` into the samples of one split (a
:class:`SplitSource` over one or several files).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from ups.config import SPLITS
from ups.errors import DataError

EXPECTED_KEYS = "tensor [N, T, X(, C)], x-coordinate [X], t-coordinate [T]"
_NOT_PARAMS = {"pde", "seed", "generator_version", "ups_version", "boundary", "field_names", "param_names",
               "nonnegative", "version", "created"}
_NAME_PARAM = re.compile(r"_([A-Za-z]+)([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?=_|\.|$)")
_NAME_PDE = re.compile(r"^(\d)D_([A-Za-z]+)")


def _plain(value):
    """An HDF5 attribute as a plain Python value (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def params_from_name(name: str) -> dict[str, float]:
    """Parameters in a PDEBench file name: ``1D_Burgers_Sols_Nu0.01.hdf5`` -> ``{"nu": 0.01}``."""
    stem = Path(name).name
    for suffix in (".hdf5", ".h5", ".hdf"):
        stem = stem.removesuffix(suffix)
    return {key.lower(): float(num) for key, num in _NAME_PARAM.findall(stem)}


def _per_dim(value: int | tuple[int, ...] | list[int], dims: int, what: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in value) if isinstance(value, tuple | list) else (int(value),) * dims
    if len(values) != dims:
        raise DataError(f"{what}={value} gives {len(values)} values for {dims} spatial dimension(s)")
    return values


def strided_length(n: int, stride: int) -> int:
    """Points of ``range(0, n, stride)``: PDEBench's ``x[::stride]`` (e.g. 1024 cells, stride 4 -> 256)."""
    return len(range(0, n, stride))


class TrajectoryFile:
    """A lazily read trajectory file. Validates the layout on open; reads slices on demand.

    ``params``: PDE parameters for files that carry none as attributes (PDEBench's); a file's own
    attributes win, and a value here that disagrees with them is an error.
    """

    def __init__(self, path: str | Path, *, params: dict[str, float] | None = None):
        self.path = Path(path)
        self._given_params = {k: float(v) for k, v in (params or {}).items()}
        self._h5: h5py.File | None = None
        self._ds: h5py.Dataset | None = None
        self._pid: int | None = None
        self._load_header()

    # ------------------------------------------------------------------------------ validation
    def _load_header(self) -> None:
        if not self.path.exists():
            raise DataError(f"data file not found: {self.path} (check the path, or write it with `ups data generate`)")
        if not self.path.is_file() or not h5py.is_hdf5(self.path):
            raise DataError(f"{self.path} is not an HDF5 file (expected the PDEBench layout: {EXPECTED_KEYS})")
        try:
            with h5py.File(self.path, "r") as f:
                self._read_layout(f)
        except OSError as err:
            raise DataError(f"cannot read {self.path} as HDF5: {str(err).splitlines()[0]}") from None

    def _missing(self, f: h5py.File, key: str) -> DataError:
        found = ", ".join(sorted(f.keys())) or "nothing"
        return DataError(f"{self.path} has no dataset '{key}' (found: {found}; expected: {EXPECTED_KEYS})")

    def _read_layout(self, f: h5py.File) -> None:
        ds = f.get("tensor")
        if not isinstance(ds, h5py.Dataset):
            raise self._missing(f, "tensor")
        shape = tuple(ds.shape)
        two_d = ds.ndim == 5 or (ds.ndim == 4 and "y-coordinate" in f)
        if ds.ndim not in (3, 4, 5):
            raise DataError(f"{self.path}: 'tensor' has {ds.ndim} dimensions {list(shape)}; expected [N, T, X], "
                            "[N, T, X, C] or [N, T, X, Y, C]")
        if not np.issubdtype(ds.dtype, np.floating):
            raise DataError(f"{self.path}: 'tensor' has dtype {ds.dtype}; expected floating point values")
        if min(shape) < 1:
            raise DataError(f"{self.path}: 'tensor' has an empty axis {list(shape)}")
        self.shape, self.dtype, self.chunks = shape, ds.dtype, ds.chunks
        self.spatial_dims = 2 if two_d else 1
        self.spatial_shape = shape[2:2 + self.spatial_dims]
        self._channel_added = ds.ndim == 2 + self.spatial_dims
        self.n_channels = 1 if self._channel_added else int(shape[-1])
        names = ("x-coordinate", "y-coordinate")[: self.spatial_dims]
        self.axes = tuple(self._coordinate(f, key, n, "points") for key, n in zip(names, self.spatial_shape))
        t = self._coordinate(f, "t-coordinate", shape[1], "frames", extra_ok=True)
        self.t = t[: shape[1]]
        self.attrs = {key: _plain(value) for key, value in f.attrs.items()}

    def _coordinate(self, f: h5py.File, key: str, n: int, what: str, extra_ok: bool = False) -> np.ndarray:
        ds = f.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise self._missing(f, key)
        values = np.asarray(ds[()], dtype=np.float64).reshape(-1)
        if ds.ndim != 1 or not (len(values) == n or (extra_ok and len(values) == n + 1)):
            allowed = f"{n} or {n + 1}" if extra_ok else f"{n}"
            raise DataError(f"{self.path}: '{key}' has shape {list(ds.shape)} but 'tensor' has {n} {what} "
                            f"(expected {allowed} entries)")
        if not np.isfinite(values).all():
            raise DataError(f"{self.path}: '{key}' contains NaN or inf values")
        return values

    # ------------------------------------------------------------------------------ properties
    @property
    def n_samples(self) -> int:
        return int(self.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.shape[1])

    @property
    def x(self) -> np.ndarray:
        """Coordinates of the first spatial axis as stored in the file.  # [X] float64"""
        return self.axes[0]

    @property
    def dt(self) -> float:
        """Mean time between consecutive frames of the file (0.0 for a one-frame file)."""
        return float((self.t[-1] - self.t[0]) / (self.n_frames - 1)) if self.n_frames > 1 else 0.0

    @property
    def pde(self) -> str | None:
        """The ``pde`` attribute, else a name from a PDEBench file name (``1D_Burgers_...`` -> burgers1d)."""
        if "pde" in self.attrs:
            return str(self.attrs["pde"])
        match = _NAME_PDE.match(self.path.name)
        return f"{match.group(2).lower()}{match.group(1)}d" if match else None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params)

    @cached_property
    def params(self) -> dict[str, float]:
        """PDE parameters: from attributes, else the ``params`` argument, else the file name."""
        stored = self._params_from_attrs()
        if stored:
            for key, value in self._given_params.items():
                if key in stored and not np.isclose(stored[key], value, rtol=1e-9, atol=0.0):
                    raise DataError(f"data.params {key}={value} disagrees with {key}={stored[key]} stored in "
                                    f"{self.path} (remove it from data.params)")
            return stored
        if self._given_params:
            return dict(self._given_params)
        parsed = params_from_name(self.path.name)
        if parsed:
            return parsed
        raise DataError(f"{self.path} carries no PDE parameters (no attributes, none in its name like _Nu0.01): "
                        "give them in the config, e.g. data.params='{nu: 0.01}' (ups infer: --param nu=0.01)")

    def _params_from_attrs(self) -> dict[str, float]:
        names = self.attrs.get("param_names")
        if names is None and self.pde is not None and "pde" in self.attrs:
            names = _registered_param_names(self.pde)
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            missing = [n for n in names if n not in self.attrs]
            if missing:
                raise DataError(f"{self.path}: parameter attribute(s) {', '.join(missing)} missing "
                                f"(pde={self.pde} needs {', '.join(names)})")
            return {n: float(self.attrs[n]) for n in names}
        return {k: float(v) for k, v in self.attrs.items()
                if k not in _NOT_PARAMS and not k.startswith("solver_")
                and isinstance(v, int | float) and not isinstance(v, bool)}

    def params_array(self, names: tuple[str, ...] | None = None) -> np.ndarray:
        """The parameters in the order ``names`` (default: the file's own).  # [P] float32"""
        params = self.params
        names = self.param_names if names is None else names
        return np.asarray([self._param(params, n) for n in names], dtype=np.float32)

    def _param(self, params: dict[str, float], name: str) -> float:
        """``params[name]``, matching case as PDEBench's attributes need (``Nu`` is ``nu``); one line if absent."""
        if name in params:
            return params[name]
        folded = {k.lower(): v for k, v in params.items()}
        if name.lower() in folded:
            return folded[name.lower()]
        raise DataError(f"{self.path} has no PDE parameter '{name}' (it has: {', '.join(params) or 'none'}): add the "
                        f"attribute {name} to the file or put it in the file name like _{name.capitalize()}0.01")

    def coords(self, *, spatial_stride: int | tuple[int, ...] = 1,
               offset: int | tuple[int, ...] = 0) -> np.ndarray:
        """Physical coordinates of the points ``read`` returns.  # [*spatial', d] float64"""
        strides = _per_dim(spatial_stride, self.spatial_dims, "spatial_stride")
        offsets = _per_dim(offset, self.spatial_dims, "offset")
        axes = [a[o::s] for a, o, s in zip(self.axes, offsets, strides)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    # ------------------------------------------------------------------------------ reading
    def _dataset(self) -> h5py.Dataset:
        """The ``tensor`` dataset, opened on first use and re-opened after a fork."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._ds = self._h5["tensor"]
        return self._ds

    def _frame_selection(self, frames: slice | list[int] | np.ndarray) -> tuple[slice | list[int], np.ndarray | None]:
        if isinstance(frames, slice):
            start, stop, step = frames.indices(self.n_frames)
            if step > 0:
                return slice(start, max(stop, start), step), None
            frames = list(range(start, stop, step))
        idx = np.asarray(frames, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + self.n_frames, idx)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.n_frames:
            raise DataError(f"{self.path}: frames {list(frames)} out of range (the file has {self.n_frames} frames)")
        unique, inverse = np.unique(idx, return_inverse=True)
        return unique.tolist(), inverse

    def read(self, sample: int, frames: slice | list[int] | np.ndarray = slice(None), *,
             spatial_stride: int | tuple[int, ...] = 1, offset: int | tuple[int, ...] = 0) -> np.ndarray:
        """One sample's frames on the grid ``offset::spatial_stride`` (per spatial axis).

        Returns float32 ``[T', *spatial', C]`` (a channel axis is added for one-channel files).
        Raises :class:`DataError` naming the file and the sample if it holds NaN or inf.
        """
        if not 0 <= int(sample) < self.n_samples:
            raise DataError(f"{self.path}: sample {sample} out of range (the file has {self.n_samples} samples)")
        strides = _per_dim(spatial_stride, self.spatial_dims, "spatial_stride")
        offsets = _per_dim(offset, self.spatial_dims, "offset")
        for o, s, n in zip(offsets, strides, self.spatial_shape):
            if s < 1 or not 0 <= o < n:
                raise DataError(f"{self.path}: spatial offset {o} / stride {s} invalid for {n} points")
        fsel, order = self._frame_selection(frames)
        data = self._dataset()[(int(sample), fsel) + tuple(slice(o, None, s) for o, s in zip(offsets, strides))]
        if order is not None:
            data = data[order]
        if self._channel_added:
            data = data[..., None]
        if not np.isfinite(data).all():
            raise DataError(f"{self.path}: sample {sample} contains NaN or inf values (run `ups data info "
                            f"{self.path}` to list every bad sample; drop or regenerate them)")
        return np.asarray(data, dtype=np.float32)

    def read_block(self, samples: slice) -> np.ndarray:
        """Consecutive whole samples as stored, non-finite values kept.  # [n, T, *spatial, C] float32"""
        data = np.asarray(self._dataset()[samples], dtype=np.float32)
        return data[..., None] if self._channel_added else data

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._pid, self._ds = None, None, None

    def __enter__(self) -> TrajectoryFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"], state["_ds"] = None, None, None
        return state

    def __repr__(self) -> str:
        return f"TrajectoryFile({str(self.path)!r}, shape={list(self.shape)})"


def _registered_param_names(pde: str) -> list[str] | None:
    """The parameter names of a registered PDE, or None when ``pde`` is not registered."""
    from ups.data.pdes import PDES

    if pde not in PDES:
        return None
    names = getattr(PDES.get(pde), "param_names", None)
    return list(names) if names else None


# ---------------------------------------------------------------------------------- scanning
@dataclass
class FileScan:
    """What one streamed pass over a file found (statistics over finite values, per channel)."""

    n_values: int = 0
    n_nonfinite: int = 0
    bad_samples: list[int] = field(default_factory=list)
    min: list[float | None] = field(default_factory=list)
    max: list[float | None] = field(default_factory=list)
    mean: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _chunk_samples(file: TrajectoryFile, chunk: int | None) -> int:
    if chunk is not None:
        return max(1, int(chunk))
    per_sample = 4 * int(np.prod(file.shape[1:]))
    return max(1, (64 << 20) // per_sample)  # about 64 MiB per read


def scan_file(file: TrajectoryFile | str | Path, *, chunk: int | None = None) -> FileScan:
    """One pass, ``chunk`` samples at a time: value range and mean per channel, samples with NaN/inf."""
    file = file if isinstance(file, TrajectoryFile) else TrajectoryFile(file)
    c = file.n_channels
    lo, hi = np.full(c, np.inf), np.full(c, -np.inf)
    total, count = np.zeros(c), np.zeros(c)
    scan = FileScan()
    step = _chunk_samples(file, chunk)
    for first in range(0, file.n_samples, step):
        block = file.read_block(slice(first, min(first + step, file.n_samples)))
        finite = np.isfinite(block)
        per_sample = finite.reshape(block.shape[0], -1).all(axis=1)
        scan.bad_samples.extend(int(first + i) for i in np.flatnonzero(~per_sample))
        scan.n_nonfinite += int((~finite).sum())
        flat, ok = block.reshape(-1, c).astype(np.float64), finite.reshape(-1, c)
        lo = np.minimum(lo, np.where(ok, flat, np.inf).min(axis=0))
        hi = np.maximum(hi, np.where(ok, flat, -np.inf).max(axis=0))
        total += np.where(ok, flat, 0.0).sum(axis=0)
        count += ok.sum(axis=0)
    scan.n_values = int(count.sum() + scan.n_nonfinite)
    has = count > 0
    scan.min = [float(v) if h else None for v, h in zip(lo, has)]  # None: no finite value at all
    scan.max = [float(v) if h else None for v, h in zip(hi, has)]
    scan.mean = [float(s / n) if n else None for s, n in zip(total, count)]
    return scan


def check_finite(file: TrajectoryFile | str | Path, *, chunk: int | None = None) -> list[int]:
    """Indices of the samples that hold NaN or inf, scanning ``chunk`` samples at a time."""
    return scan_file(file, chunk=chunk).bad_samples


# ------------------------------------------------------------------------------------ splits
PDEBENCH_TEST_FRACTION = 0.1  # PDEBench's baselines: test = the first 10 % of the samples


def pdebench_indices(n: int, split: str, val_fraction: float) -> np.ndarray:
    """Sample indices of ``split`` in a PDEBench file of ``n`` samples: test = the first 10 %,
    val = the next ``val_fraction``, train = the rest."""
    n_test = int(n * PDEBENCH_TEST_FRACTION)
    n_val = int(n * val_fraction)
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, n)}
    return np.arange(*bounds[split], dtype=np.int64)


@dataclass(frozen=True)
class SplitPart:
    """Samples ``indices`` (in file order) of one file."""

    file: TrajectoryFile
    indices: np.ndarray  # [n] int64


class SplitSource:
    """The samples of one split, over one or several files that share grid, frames, channels and
    parameter names. Sample ``i`` of the split is ``locate(i)``; shapes come from the first file."""

    def __init__(self, parts: list[SplitPart], *, split: str):
        self.split = split
        self.parts = [p for p in parts if len(p.indices)]
        if not self.parts:
            raise DataError(f"split '{split}' holds no samples")
        self._starts = np.cumsum([0] + [len(p.indices) for p in self.parts])
        self.ref = self.parts[0].file
        for part in self.parts[1:]:
            self._check_same(part.file)

    def _check_same(self, f: TrajectoryFile) -> None:
        ref = self.ref
        checks = (("frames", f.n_frames, ref.n_frames), ("spatial shape", f.spatial_shape, ref.spatial_shape),
                  ("channels", f.n_channels, ref.n_channels), ("parameter names", f.param_names, ref.param_names))
        for what, mine, theirs in checks:
            if mine != theirs:
                raise DataError(f"{f.path} and {ref.path} differ in {what} ({mine} vs {theirs}); "
                                f"the files of split '{self.split}' must agree")
        same_grid = all(np.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(f.axes, ref.axes))
        if not same_grid or not np.isclose(f.dt, ref.dt, rtol=1e-6):
            raise DataError(f"{f.path} and {ref.path} differ in their coordinates or time step; "
                            f"the files of split '{self.split}' must share one grid")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[TrajectoryFile, int]:
        """(file, sample index inside that file) of sample ``i`` of the split."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for split '{self.split}' of {len(self)} samples")
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        part = self.parts[k]
        return part.file, int(part.indices[i - self._starts[k]])

    def params(self, i: int) -> np.ndarray:
        """PDE parameters of sample ``i`` in the order ``param_names``.  # [P] float32"""
        return self.locate(i)[0].params_array(self.param_names)

    @property
    def files(self) -> list[TrajectoryFile]:
        return [p.file for p in self.parts]

    @property
    def n_frames(self) -> int:
        return self.ref.n_frames

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.ref.spatial_shape

    @property
    def spatial_dims(self) -> int:
        return self.ref.spatial_dims

    @property
    def n_channels(self) -> int:
        return self.ref.n_channels

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.ref.param_names

    @property
    def dt(self) -> float:
        return self.ref.dt

    def __repr__(self) -> str:
        return f"SplitSource({self.split!r}, samples={len(self)}, files={[str(f.path) for f in self.files]})"


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _open(path: str, key: str, params: dict[str, float]) -> TrajectoryFile:
    if not Path(path).exists():
        raise DataError(f"{key}: file not found: {path} (check the path, or write it with "
                        f"`ups data generate --out {path}`)")
    return TrajectoryFile(path, params=params)


def _cap(parts: list[SplitPart], cap: int, split: str) -> list[SplitPart]:
    """Keep at most ``cap`` samples, shared as evenly as possible between the files."""
    if cap < 1:
        raise DataError(f"data.max_samples.{split}={cap}: must be at least 1")
    sizes = [len(p.indices) for p in parts]
    keep = [0] * len(parts)
    while sum(keep) < min(cap, sum(sizes)):
        for k in range(len(parts)):
            if keep[k] < sizes[k] and sum(keep) < cap:
                keep[k] += 1
    return [SplitPart(p.file, p.indices[:n]) for p, n in zip(parts, keep)]


def open_split(data_cfg, split: str) -> SplitSource:
    """The samples of ``split`` ("train", "val" or "test") described by a :class:`ups.config.DataConfig`.

    One file (or a list) per split, or PDEBench file(s) split as PDEBench does (test = first 10 %,
    then ``val_fraction`` for validation, the rest for training); ``max_samples[split]`` caps it.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (allowed: {', '.join(SPLITS)})")
    params = dict(data_cfg.params)
    if data_cfg.pdebench_file:
        files = [_open(p, "data.pdebench_file", params) for p in _as_list(data_cfg.pdebench_file)]
        parts = [SplitPart(f, pdebench_indices(f.n_samples, split, data_cfg.val_fraction)) for f in files]
        hint = f"PDEBench split of {sum(f.n_samples for f in files)} samples with data.val_fraction=" \
               f"{data_cfg.val_fraction}"
    else:
        paths = getattr(data_cfg, split)
        if not paths:
            raise DataError(f"data.{split} is not set (give a file per split, data.train/val/test, "
                            "or one data.pdebench_file)")
        parts = [SplitPart(f, np.arange(f.n_samples)) for f in (_open(p, f"data.{split}", params)
                                                                  for p in _as_list(paths))]
        hint = f"data.{split}"
    if not sum(len(p.indices) for p in parts):
        raise DataError(f"split '{split}' holds no samples ({hint}); use more samples or change the split")
    cap = data_cfg.max_samples.get(split)
    return SplitSource(parts if cap is None else _cap(parts, int(cap), split), split=split)
