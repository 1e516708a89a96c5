"""Per-channel standardisation with statistics from the train split only.

``Normalizer.fit(train_source)`` streams over the training samples one at a time (on the strided
grid the model sees), merging per-sample means and squared deviations in float64 (Chan et al.'s
pairwise update, so no catastrophic cancellation), and never holds more than one sample. The
statistics are saved as JSON next to every checkpoint and applied by the data pipeline
(:class:`ups.data.datasets.WindowDataset`), never per file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ups.errors import DataError
from ups.io_utils import atomic_write_json

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class Normalizer:
    """``(u - mean) / std`` per channel, channel axis last. ``mean``, ``std``: ``[C]``."""

    def __init__(self, *, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape or self.mean.size == 0:
            raise DataError(f"normaliser: mean has {self.mean.size} channels, std {self.std.size}; they must agree")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all() and (self.std > 0).all()):
            raise DataError(f"normaliser: mean={self.mean.tolist()} std={self.std.tolist()} must be finite, std > 0")

    @property
    def n_channels(self) -> int:
        return int(self.mean.size)

    @classmethod
    def fit(cls, source, *, spatial_stride: int = 1, temporal_stride: int = 1) -> Normalizer:
        """Statistics of the train split ``source`` (a :class:`ups.data.reader.SplitSource`) on the grid
        ``::temporal_stride`` in time and ``::spatial_stride`` in space. A constant channel gets std 1."""
        split = getattr(source, "split", None)
        if split != "train":
            raise DataError(f"normalisation statistics must come from the train split only (got split '{split}')")
        c = source.n_channels
        count, mean, m2 = 0, np.zeros(c), np.zeros(c)
        for i in range(len(source)):
            file, j = source.locate(i)
            block = file.read(j, slice(None, None, temporal_stride), spatial_stride=spatial_stride)
            block = block.reshape(-1, c).astype(np.float64)  # [n, C]
            n_b, mean_b = block.shape[0], block.mean(axis=0)
            m2_b = ((block - mean_b) ** 2).sum(axis=0)
            delta, total = mean_b - mean, count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
        std = np.sqrt(m2 / count)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return cls(mean=mean, std=std)

    def _stats(self, x: ArrayT) -> tuple[ArrayT, ArrayT]:
        if x.shape[-1] != self.n_channels:
            raise DataError(f"normaliser has {self.n_channels} channels but the array's last axis has "
                            f"{x.shape[-1]} (shape {tuple(x.shape)}); the channel axis must be last")
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.std, dtype=x.dtype, device=x.device))
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return self.mean.astype(dtype), self.std.astype(dtype)

    def normalize(self, x: ArrayT) -> ArrayT:
        """Physical -> normalised. ``x``: ``[..., C]`` numpy array or torch tensor (dtype kept)."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: ArrayT) -> ArrayT:
        """Normalised -> physical. ``x``: ``[..., C]`` numpy array or torch tensor (dtype kept)."""
        mean, std = self._stats(x)
        return x * std + mean

    def to_dict(self) -> dict:
        return {"kind": "per_channel_standard", "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            keys = ", ".join(sorted(d)) if isinstance(d, dict) else type(d).__name__
            raise DataError(f"normaliser statistics need 'mean' and 'std' (found: {keys})")
        return cls(mean=d["mean"], std=d["std"])

    def to_json(self, path: str | Path) -> None:
        """Write the statistics as JSON (atomically: temp file + rename)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> Normalizer:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"normalisation statistics not found: {path} (they are written with the run's checkpoints)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Normalizer) and np.array_equal(self.mean, other.mean) and np.array_equal(
            self.std, other.std)

    def __hash__(self) -> int:
        return hash((tuple(self.mean.tolist()), tuple(self.std.tolist())))

    def __repr__(self) -> str:
        fmt = ", ".join(f"{m:.4g}±{s:.4g}" for m, s in zip(self.mean, self.std))
        return f"Normalizer([{fmt}])"


def identity_normalizer(n_channels: int) -> Normalizer:
    """mean 0, std 1: leaves values unchanged (for tools that work in physical units)."""
    return Normalizer(mean=[0.0] * n_channels, std=[1.0] * n_channels)

