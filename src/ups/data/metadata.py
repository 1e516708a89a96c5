"""The single source of shapes: what a data set holds, read once and handed to models and stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DatasetMetadata:
    """Shapes and physical facts of a (strided) trajectory data set.

    Models take ``n_channels``, ``spatial_dims`` and ``n_params`` from here, never from their own
    constants. Saved as JSON with every checkpoint so a run rebuilds itself from its directory.
    """

    pde: str
    spatial_dims: int  # d
    spatial_shape: tuple[int, ...]  # (*spatial) after the spatial stride
    n_channels: int  # C
    n_frames: int  # T after the temporal stride
    dt: float  # time between saved frames after the temporal stride
    param_names: tuple[str, ...] = ()  # e.g. ("nu",)
    field_names: tuple[str, ...] = ("u",)
    domain: tuple[tuple[float, float], ...] = ((0.0, 1.0),)  # (lo, hi) per spatial dim: period
    boundary: str = "periodic"
    nonnegative: tuple[bool, ...] = (False,)  # per channel
    full_spatial_shape: tuple[int, ...] = ()  # before the stride (for sub-cell shifts, any-point)
    extra: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_points(self) -> int:
        n = 1
        for s in self.spatial_shape:
            n *= s
        return n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetMetadata:
        d = dict(d)
        for key in ("spatial_shape", "param_names", "field_names", "nonnegative", "full_spatial_shape"):
            if key in d:
                d[key] = tuple(d[key])
        if "domain" in d:
            d["domain"] = tuple(tuple(x) for x in d["domain"])
        return cls(**d)
