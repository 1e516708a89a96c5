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


class MixtureNormalizer:
    """One :class:`Normalizer` per member of a data mixture (``ups.data.mixture``), each fitted on that
    member's own train split. Fields are (de-)normalised per sample by the member they belong to:
    ``member`` is one member index (int) or a tensor of indices ``[B]`` over the first axis of ``x``."""

    def __init__(self, *, members: dict[str, Normalizer]):
        if not members:
            raise DataError("a mixture normaliser needs at least one member")
        channels = {n.n_channels for n in members.values()}
        if len(channels) > 1:
            raise DataError(f"the mixture members' normalisers have {sorted(channels)} channels; they must agree")
        self.members = dict(members)
        self.names = tuple(members)

    @property
    def n_channels(self) -> int:
        return next(iter(self.members.values())).n_channels

    def member(self, key: int | str) -> Normalizer:
        """The normaliser of member ``key`` (its index in the mixture or its name)."""
        return self.members[self.names[key] if isinstance(key, int) else key]

    def _stats(self, x: torch.Tensor, member) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample statistics broadcast against x [B, ..., C]: (mean, std) [B, 1, ..., 1, C]."""
        if member is None:
            raise DataError("a mixture normaliser needs member= (which data set each sample comes from)")
        ids = torch.as_tensor(member, dtype=torch.long)
        ids = ids.expand(x.shape[0]) if ids.ndim == 0 and x.ndim >= 2 else ids.reshape(-1)
        if x.ndim < 2 or ids.numel() != x.shape[0] or int(ids.min()) < 0 or int(ids.max()) >= len(self.names):
            raise DataError(f"member ids {ids.tolist()[:8]} do not fit fields of shape {tuple(x.shape)} "
                            f"([B, ..., C]) of a mixture of {len(self.names)} members")
        mean = torch.as_tensor(np.stack([self.member(n).mean for n in range(len(self.names))]))  # [M, C]
        std = torch.as_tensor(np.stack([self.member(n).std for n in range(len(self.names))]))
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        ids = ids.to(mean.device)
        return (mean[ids].reshape(shape).to(x.device, x.dtype), std[ids].reshape(shape).to(x.device, x.dtype))

    def normalize(self, x: torch.Tensor, member=None) -> torch.Tensor:
        """Physical -> normalised. x: [B, ..., C]; member: int or [B] member indices."""
        mean, std = self._stats(torch.as_tensor(x), member)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor, member=None) -> torch.Tensor:
        """Normalised -> physical. x: [B, ..., C]; member: int or [B] member indices."""
        mean, std = self._stats(torch.as_tensor(x), member)
        return x * std + mean

    def to_dict(self) -> dict:
        return {"kind": "mixture", "members": {name: n.to_dict() for name, n in self.members.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> MixtureNormalizer:
        if not isinstance(d.get("members"), dict):
            raise DataError("mixture normaliser statistics need 'members' (name -> mean and std)")
        return cls(members={name: Normalizer.from_dict(v) for name, v in d["members"].items()})

    def to_json(self, path: str | Path) -> None:
        """Write the statistics as JSON (atomically: temp file + rename)."""
        atomic_write_json(path, self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MixtureNormalizer) and self.members == other.members

    def __repr__(self) -> str:
        return "MixtureNormalizer(" + ", ".join(f"{k}: {v!r}" for k, v in self.members.items()) + ")"


def normalizer_from_dict(d: dict) -> Normalizer | MixtureNormalizer:
    """A normaliser from its ``to_dict`` form: one data set's or a mixture's (``kind: mixture``)."""
    if isinstance(d, dict) and d.get("kind") == "mixture":
        return MixtureNormalizer.from_dict(d)
    return Normalizer.from_dict(d)


def load_normalizer(path: str | Path) -> Normalizer | MixtureNormalizer:
    """The statistics a run wrote next to its checkpoints (either kind)."""
    path = Path(path)
    if not path.is_file():
        return Normalizer.from_json(path)  # its one-line error
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    return normalizer_from_dict(data)
