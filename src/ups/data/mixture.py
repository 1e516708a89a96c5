"""Several PDE data sets behind one bundle, so that one model trains on all of them (``data.mixture``).

Each member is a data section of its own (``ups.config.MixtureConfig``), opened by ``prepare_data`` like
any other (its files generated when missing), with its own metadata and its own normaliser fitted on its
own train split. The mixture puts every member's items into one layout (:class:`MixtureLayout`):

    u       [W, N, C]  normalised by the item's member's statistics (N: the common point count)
    coords  [N, d]     mapped onto the reference box [0, 1)^d: (x - lo) / (hi - lo) of the member's domain
    params  [P + M]    the union of the members' parameter names, each log(value) where the member has it
                       and 0 where it does not, then a one-hot PDE identity over the M members
    dt      float      the member's own physical frame step
    member  int        the member's index (which normaliser de-normalises the item)

Items come from each member's :class:`~ups.data.datasets.WindowDataset` and batches from THE ``collate``.
Training windows of all members have one shape, so training batches mix PDEs; whole trajectories differ
in length between members, so trajectory loaders (:func:`member_loader`) never mix members in a batch.
Members must agree in spatial dimensions, point count after their ``spatial_stride``, channels and
boundary; anything else is a one-line :class:`~ups.errors.DataError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ups.config import DataConfig
from ups.data.datasets import WindowDataset, collate
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import MixtureNormalizer
from ups.errors import DataError

PARAM_ENCODING = "log"  # params: log(value) where present, 0 where absent; then the one-hot PDE identity


@dataclass(frozen=True)
class MixtureLayout:
    """How member items map into the common layout; saved in the mixture metadata (``extra["mixture"]``) so
    that evaluation encodes data exactly as training did."""

    names: tuple[str, ...]  # member PDEs, in one-hot order
    param_names: tuple[str, ...]  # the union of the members' parameter names, in order of first appearance
    member_params: dict[str, tuple[str, ...]]  # each member's own parameter names
    domains: dict[str, tuple[tuple[float, float], ...]]  # each member's physical (lo, hi) per axis

    @classmethod
    def of(cls, metas: dict[str, DatasetMetadata]) -> MixtureLayout:
        union = tuple(dict.fromkeys(n for m in metas.values() for n in m.param_names))
        return cls(names=tuple(metas), param_names=union,
                   member_params={k: tuple(m.param_names) for k, m in metas.items()},
                   domains={k: tuple(tuple(float(v) for v in ax) for ax in m.domain) for k, m in metas.items()})

    @property
    def all_param_names(self) -> tuple[str, ...]:
        """The model's parameter vector: the union, then ``pde=<name>`` per member (one-hot)."""
        return self.param_names + tuple(f"pde={n}" for n in self.names)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise DataError(f"'{name}' is not a member of this mixture (members: {', '.join(self.names)})")
        return self.names.index(name)

    def encode_params(self, name: str, raw: np.ndarray) -> np.ndarray:
        """A member's parameters raw [P_k] (its own order) -> the mixture's vector [P + M] float32."""
        out = np.zeros(len(self.all_param_names), dtype=np.float32)
        for value, pname in zip(np.asarray(raw, dtype=np.float64), self.member_params[name]):
            if not value > 0:
                raise DataError(f"mixture member {name}: parameter {pname}={value} must be > 0 (the mixture "
                                "conditions on log(value))")
            out[self.param_names.index(pname)] = math.log(value)
        out[len(self.param_names) + self.index(name)] = 1.0
        return out

    def to_reference(self, name: str, coords: torch.Tensor) -> torch.Tensor:
        """Physical coordinates of a member -> the reference box [0, 1)^d.  coords [..., d] -> [..., d]"""
        lo = torch.tensor([a for a, _ in self.domains[name]], dtype=coords.dtype)
        hi = torch.tensor([b for _, b in self.domains[name]], dtype=coords.dtype)
        return (coords - lo) / (hi - lo)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "param_names": list(self.param_names),
                "member_params": {k: list(v) for k, v in self.member_params.items()},
                "domains": {k: [list(ax) for ax in v] for k, v in self.domains.items()},
                "param_encoding": PARAM_ENCODING}

    @classmethod
    def from_meta(cls, meta: DatasetMetadata) -> MixtureLayout:
        """The layout a mixture run trained with (from its saved metadata)."""
        d = meta.extra.get("mixture") if isinstance(meta.extra, dict) else None
        if not isinstance(d, dict):
            raise DataError(f"the metadata of pde={meta.pde} describes one data set, not a mixture")
        return cls(names=tuple(d["names"]), param_names=tuple(d["param_names"]),
                   member_params={k: tuple(v) for k, v in d["member_params"].items()},
                   domains={k: tuple(tuple(ax) for ax in v) for k, v in d["domains"].items()})


class MixtureDataset(Dataset):
    """The items of several members' :class:`WindowDataset` in the mixture layout (module docstring).

    ``balance="pde"``: every member contributes the same number of items (the largest member's count;
    smaller members' items are spread over it, so each is repeated evenly); ``"windows"``: every item once.
    """

    def __init__(self, *, members: dict[str, WindowDataset], layout: MixtureLayout, balance: str = "windows"):
        self.members, self.layout, self.balance = members, layout, balance
        self.names = tuple(members)
        sizes = [len(ds) for ds in members.values()]
        self.sizes = [max(sizes)] * len(sizes) if balance == "pde" else sizes
        self._starts = np.cumsum([0] + self.sizes)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """(member name, item index in that member's dataset) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        j = int(index - self._starts[k])
        n = len(self.members[self.names[k]])
        return self.names[k], j * n // self.sizes[k]

    def __getitem__(self, index: int) -> dict:
        name, j = self.locate(int(index))
        item = self.members[name][j]
        item["coords"] = self.layout.to_reference(name, item["coords"])
        item["params"] = torch.from_numpy(self.layout.encode_params(name, item["params"].numpy()))
        item["member"] = self.layout.index(name)
        return item

    def set_epoch(self, epoch: int) -> None:
        for ds in self.members.values():
            ds.set_epoch(epoch)

    def window_starts(self) -> torch.Tensor:
        """Start frame of every item within its trajectory (early oversampling).  # [len] long"""
        starts = {name: ds.window_starts() for name, ds in self.members.items()}
        return torch.cat([starts[name][torch.arange(size) * len(starts[name]) // size]
                          for name, size in zip(self.names, self.sizes)])


class MemberBatches(Sampler[list[int]]):
    """Batches of at most ``batch_size`` consecutive items that never cross from one member to the next."""

    def __init__(self, dataset: MixtureDataset, *, batch_size: int):
        bounds = [(int(a), int(b)) for a, b in zip(dataset._starts[:-1], dataset._starts[1:])]  # per member
        self.batches = [list(range(lo, min(lo + batch_size, hi))) for first, hi in bounds
                        for lo in range(first, hi, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        yield from self.batches


def member_loader(dataset: MixtureDataset, *, batch_size: int) -> DataLoader:
    """A loader of ``dataset`` in order whose batches each hold one member (whole trajectories differ in
    length between members)."""
    return DataLoader(dataset, batch_sampler=MemberBatches(dataset, batch_size=batch_size), collate_fn=collate)


@dataclass
class MixtureSplit:
    """The files behind one split of every member (what run directories fingerprint)."""

    split: str
    parts: list = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(p.indices) for p in self.parts)


@dataclass
class MixtureBundle:
    """Open splits of every member plus the union metadata; used where a :class:`DataBundle` is."""

    data_cfg: DataConfig
    members: dict[str, Any]  # name -> the member's ups.data.prepare.DataBundle
    layout: MixtureLayout
    meta: DatasetMetadata

    @property
    def splits(self) -> dict[str, MixtureSplit]:
        opened = next(iter(self.members.values())).splits
        return {s: MixtureSplit(s, [p for b in self.members.values() for p in b.splits[s].parts]) for s in opened}

    def windows(self, split: str, *, window: int | None, normalizer: MixtureNormalizer | None, start: int = 0,
                train: bool = False, seed: int = 0) -> MixtureDataset:
        """Windows of every member (see :meth:`DataBundle.windows`), each normalised by its member's statistics."""
        if normalizer is not None and not isinstance(normalizer, MixtureNormalizer):
            raise DataError("a data mixture is normalised per member: pass the run's MixtureNormalizer")
        sets = {name: b.windows(split, window=window, start=start, train=train, seed=seed,
                                normalizer=None if normalizer is None else normalizer.member(name))
                for name, b in self.members.items()}
        balance = self.data_cfg.mixture.balance if train and self.data_cfg.mixture is not None else "windows"
        return MixtureDataset(members=sets, layout=self.layout, balance=balance)

    def select(self, name: str) -> MixtureBundle:
        """The same mixture layout restricted to member ``name`` (per-PDE evaluation)."""
        self.layout.index(name)
        return MixtureBundle(data_cfg=self.data_cfg, members={name: self.members[name]}, layout=self.layout,
                             meta=self.meta)



def check_members(metas: dict[str, DatasetMetadata]) -> None:
    """One line when the members cannot share one model: spatial dimensions, points, channels, boundary."""
    checks = (("spatial dimensions", lambda m: m.spatial_dims, ""),
              ("points per sample after spatial_stride", lambda m: m.n_points,
               " (set each member's spatial_stride so that the counts agree)"),
              ("channels", lambda m: m.n_channels, " (one model predicts one set of fields)"),
              ("boundary", lambda m: m.boundary, ""))
    for what, get, hint in checks:
        found = {name: get(m) for name, m in metas.items()}
        if len(set(found.values())) > 1:
            listed = ", ".join(f"{k} {v}" for k, v in found.items())
            raise DataError(f"data.mixture members differ in {what}: {listed}; they must agree{hint}")


def mixture_metadata(metas: dict[str, DatasetMetadata], layout: MixtureLayout) -> DatasetMetadata:
    """The union's metadata: common shapes, the reference box, the smallest frame step as the model's dt
    reference, the mixture parameter vector; the layout and each member's own metadata in ``extra``."""
    first = next(iter(metas.values()))
    fields = first.field_names if len({m.field_names for m in metas.values()}) == 1 else tuple(
        f"u{k}" for k in range(first.n_channels))
    nonneg = tuple(all(m.nonnegative[c] for m in metas.values()) for c in range(first.n_channels))
    return DatasetMetadata(
        pde="mixture", spatial_dims=first.spatial_dims, spatial_shape=first.spatial_shape,
        n_channels=first.n_channels, n_frames=max(m.n_frames for m in metas.values()),
        dt=min(m.dt for m in metas.values()), param_names=layout.all_param_names, field_names=fields,
        domain=((0.0, 1.0),) * first.spatial_dims, boundary=first.boundary, nonnegative=nonneg,
        full_spatial_shape=first.spatial_shape,
        extra={"mixture": {**layout.to_dict(), "members": {k: m.to_dict() for k, m in metas.items()}}},
    )


def member_metadata(meta: DatasetMetadata, name: str) -> DatasetMetadata:
    """A mixture member's own (physical) metadata from the mixture's: what its metrics are scored with."""
    members = (meta.extra.get("mixture") or {}).get("members") or {}
    if name not in members:
        raise DataError(f"'{name}' is not a member of this mixture (members: {', '.join(members) or 'none'})")
    return DatasetMetadata.from_dict(members[name])

