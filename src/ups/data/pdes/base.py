"""The PDE base class and the parameter dataclasses every registered PDE builds on.

A PDE is registered in :data:`ups.data.pdes.PDES` under its name. It declares

- ``name``: the registry name (also written to the ``pde`` attribute of generated files);
- ``param_names``: its physical parameters, in the order models receive them (e.g. ``("nu",)``);
- ``params_class``: a frozen dataclass (subclass of :class:`Params1D`) holding the physical parameters
  and the output grid and time axis, with computed properties (``dx``, ``dt`` = frame interval, ``x``,
  ``t``);

and implements ``sample_initial(n, *, generator, grid) -> [n, X]`` and
``solve(u0 [B, X], *, params) -> [B, T, X]`` (float64 internally, frame 0 is ``u0``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch

from ups.errors import ConfigError


def check_threads(threads: int | None) -> None:
    """A solver's ``threads`` setting: a positive count or None (one-line :class:`ConfigError` otherwise)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: use a positive number, or None for torch's own setting")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body on ``n`` intra-op threads (None: leave torch's setting), then restore the setting.

    Measured on a shared 2-core machine (Burgers, batch 64, 1024 points): one thread generated 2.7
    samples/s, two threads 0.17 samples/s -- the FFTs of one batch are too small for intra-op threads
    to pay, and their synchronisation collapses when other processes load the cores.
    """
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass(frozen=True, kw_only=True)
class Grid1D:
    """``resolution`` cells of width ``dx`` on the periodic domain ``[0, length)``; values live at cell centres."""

    resolution: int = 1024
    length: float = 1.0

    def __post_init__(self) -> None:
        if self.resolution < 4:
            raise ConfigError(f"resolution={self.resolution}: need at least 4 cells")
        if not self.length > 0:
            raise ConfigError(f"length={self.length}: the domain length must be positive")

    @property
    def dx(self) -> float:
        return self.length / self.resolution

    @property
    def x(self) -> torch.Tensor:
        """Cell centres ``(i + 0.5) dx``.  # [X] float64"""
        return (torch.arange(self.resolution, dtype=torch.float64) + 0.5) * self.dx


@dataclass(frozen=True, kw_only=True)
class Params1D:
    """Output grid and time axis shared by the 1D PDEs; subclasses add their physical parameters.

    ``frames`` saved frames at ``t_k = k * dt``, ``k = 0 .. frames - 1``, with ``dt = t_end / (frames - 1)``.
    """

    resolution: int = 1024
    frames: int = 201
    t_end: float = 2.0
    length: float = 1.0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ConfigError(f"frames={self.frames}: need at least 2 frames (t = 0 and t_end)")
        if not (math.isfinite(self.t_end) and self.t_end > 0):
            raise ConfigError(f"t_end={self.t_end}: must be a positive number")
        self.grid  # validates resolution and length  # noqa: B018

    @property
    def grid(self) -> Grid1D:
        return Grid1D(resolution=self.resolution, length=self.length)

    @property
    def dx(self) -> float:
        return self.grid.dx

    @property
    def x(self) -> torch.Tensor:
        """Cell centres.  # [X] float64"""
        return self.grid.x

    @property
    def dt(self) -> float:
        """Time between saved frames."""
        return self.t_end / (self.frames - 1)

    @property
    def t(self) -> torch.Tensor:
        """Saved times.  # [T] float64"""
        return torch.arange(self.frames, dtype=torch.float64) * self.dt

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of one saved frame (``(X,)`` in 1D, ``(X, Y)`` in 2D)."""
        return (self.resolution,)

    def coordinates(self) -> dict[str, torch.Tensor]:
        """The coordinate datasets of a generated file, by name.  # each [X] float64"""
        return {"x-coordinate": self.x}

    def physical(self, names: tuple[str, ...]) -> dict[str, float]:
        """The physical parameters ``names`` as a dict of floats."""
        return {n: float(getattr(self, n)) for n in names}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Grid2D(Grid1D):
    """``resolution x resolution`` points on the periodic square ``[0, length)^2``.

    ``offset`` places the points at ``(i + offset) dx``: 0.5 for cell centres (the 1D convention), 0.0
    for the nodes ``i dx`` of the FNO paper's Navier-Stokes data.
    """

    offset: float = 0.0

    @property
    def x(self) -> torch.Tensor:
        """Point coordinates along each axis.  # [X] float64"""
        return (torch.arange(self.resolution, dtype=torch.float64) + self.offset) * self.dx

    @property
    def shape(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)


@dataclass(frozen=True, kw_only=True)
class Params2D(Params1D):
    """Output grid and time axis of 2D PDEs on a square: ``resolution`` points per axis at ``grid_offset``."""

    grid_offset: float = 0.0

    @property
    def grid(self) -> Grid2D:
        return Grid2D(resolution=self.resolution, length=self.length, offset=self.grid_offset)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.grid.shape

    def coordinates(self) -> dict[str, torch.Tensor]:
        """x and y coordinates (the same points on both axes).  # each [X] float64"""
        return {"x-coordinate": self.x, "y-coordinate": self.x}


def build_params(params_class: type[Params1D], values: dict) -> Params1D:
    """``params_class(**values)`` with a one-line error naming unknown keys and the allowed ones."""
    allowed = [f.name for f in fields(params_class)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for {params_class.__name__} (allowed: {', '.join(allowed)})"
        )
    return params_class(**values)


class PDE(ABC):
    """A registered PDE: an initial-condition sampler and a batched, float64, accurate solver."""

    name: str = ""
    param_names: tuple[str, ...] = ()
    params_class: type[Params1D] = Params1D
    maximum_principle: bool = False  # True: solutions stay within the range of their initial state
    last_run: dict  # adaptive solvers record their choices of the last solve() (e.g. internal grid size)

    def make_params(self, **values) -> Params1D:
        """Build this PDE's parameter dataclass, failing with one line on unknown keys."""
        return build_params(self.params_class, values)

    @abstractmethod
    def sample_initial(self, n: int, *, generator: torch.Generator, grid: Grid1D) -> torch.Tensor:
        """Draw ``n`` initial conditions on ``grid``'s cell centres.  # -> [n, X] float64"""

    @abstractmethod
    def solve(self, u0: torch.Tensor, *, params: Params1D) -> torch.Tensor:
        """Solve from ``u0 [B, X]`` (values at ``params.x``); returns ``[B, T, X]`` float64, frame 0 = u0."""

    def solver_settings(self) -> dict:
        """Solver settings written as ``solver_*`` attributes of generated files."""
        return {}

    @staticmethod
    def check_input(u0: torch.Tensor, params: Params1D) -> torch.Tensor:
        """Validate ``u0 [B, *spatial]`` against ``params`` and return it as float64."""
        shape = tuple(params.spatial_shape)
        if u0.ndim != 1 + len(shape) or tuple(u0.shape[1:]) != shape:
            raise ConfigError(
                f"initial condition shape {tuple(u0.shape)} does not match [B, {', '.join(map(str, shape))}] "
                "(pass a batch of fields on the output grid)"
            )
        u0 = u0.to(torch.float64)
        if not torch.isfinite(u0).all():
            raise ConfigError("initial condition contains NaN or inf values")
        return u0
