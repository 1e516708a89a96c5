"""Tiny synthetic HDF5 trajectory files for tests, written with plain h5py.

Two layouts:

- ``write_ups_file``: the layout ``ups data generate`` writes (``tensor`` + coordinates + attributes
  ``pde``, one per PDE parameter, ``seed``, ``generator_version``, ``ups_version``, ``solver_*``);
- ``write_pdebench_file``: PDEBench's exact layout, no attributes at all: ``tensor`` float32
  ``[N, T, X]``, ``x-coordinate`` on the cell centres of (-1, 1) (so inside (-0.999, 0.999) for
  X = 1024) and ``t-coordinate`` with T + 1 entries; the file name carries the parameter
  (``1D_Burgers_Sols_Nu0.01.hdf5``).

``indexed_array`` builds values that encode their own indices, so a test can tell which sample,
frame and point a reader returned.

Import as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path`` for test modules in
``tests/`` and in packages under it such as ``tests/data/``).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np


def indexed_array(n: int, t: int, *spatial: int, channels: int | None = None) -> np.ndarray:
    """Values that name their indices: ``sample*1e4 + frame*1e2 + point(s) + channel*0.25``.

    Returns float32 ``[n, t, *spatial]`` (or ``[n, t, *spatial, channels]``); exact in float32 for
    n < 1000, t < 100 and spatial points whose flat index is < 100.
    """
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in (n, t, *spatial)], indexing="ij")
    out = grids[0] * 10_000.0 + grids[1] * 100.0 + _flat_index(grids[2:], spatial)
    if channels is not None:
        out = out[..., None] + 0.25 * np.arange(channels)
    return out.astype(np.float32)


def _flat_index(grids: list[np.ndarray], spatial: tuple[int, ...]) -> np.ndarray:
    flat = np.zeros_like(grids[0])
    for g, size in zip(grids, spatial):
        flat = flat * size + g
    return flat


def random_fields(n: int, t: int, *spatial: int, channels: int | None = None, seed: int = 0,
                  loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Smooth-ish random float32 fields ``[n, t, *spatial(, channels)]`` with a chosen mean and scale."""
    rng = np.random.default_rng(seed)
    shape = (n, t, *spatial) + ((channels,) if channels is not None else ())
    return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def cell_centres(n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Cell centres of ``n`` equal cells on [lo, hi) (float64 ``[n]``)."""
    dx = (hi - lo) / n
    return lo + dx * (np.arange(n) + 0.5)


def write_ups_file(path: str | Path, u: np.ndarray, *, pde: str = "burgers1d", params: dict | None = None,
                   t_end: float = 2.0, x: np.ndarray | None = None, y: np.ndarray | None = None,
                   t: np.ndarray | None = None, seed: int = 0, chunks: tuple | bool | None = None,
                   extra_attrs: dict | None = None) -> Path:
    """Write ``u`` (``[N, T, X]``, ``[N, T, X, C]`` or ``[N, T, X, Y, C]``) in our layout.

    Coordinates default to cell centres of [0, 1) per spatial axis and ``T`` frames on [0, t_end].
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {"nu": 0.01} if params is None else params
    n_t = u.shape[1]
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=np.asarray(u, dtype=np.float32), chunks=chunks)
        f.create_dataset("x-coordinate", data=cell_centres(u.shape[2]) if x is None else x)
        if u.ndim == 5 or y is not None:
            f.create_dataset("y-coordinate", data=cell_centres(u.shape[3]) if y is None else y)
        f.create_dataset("t-coordinate", data=np.linspace(0.0, t_end, n_t) if t is None else t)
        f.attrs["pde"] = pde
        for key, value in params.items():
            f.attrs[key] = value
        f.attrs.update({"seed": seed, "generator_version": "test-1", "ups_version": "0.1.0",
                        "solver_name": "synthetic"})
        f.attrs.update(extra_attrs or {})
    return path


def write_pdebench_file(directory: str | Path, u: np.ndarray, *, name: str = "1D_Burgers_Sols_Nu0.01.hdf5",
                        dt: float = 0.01, chunks: tuple | bool | None = None) -> Path:
    """Write ``u`` ``[N, T, X]`` exactly as PDEBench's 1D files are laid out: no attributes,
    ``x-coordinate`` [X] on the cell centres of (-1, 1), ``t-coordinate`` [T + 1] = dt * (0..T)."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    n_t, n_x = u.shape[1], u.shape[2]
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=np.asarray(u, dtype=np.float32), chunks=chunks)
        f.create_dataset("x-coordinate", data=cell_centres(n_x, -1.0, 1.0).astype(np.float32))
        f.create_dataset("t-coordinate", data=(dt * np.arange(n_t + 1)).astype(np.float32))
    return path


class ReportParser(HTMLParser):
    """The <img> attributes, the tag names and the table-cell texts of an HTML report."""

    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.cells = [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._in_cell = False


def parse_report(path: str | Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(Path(path).read_text())
    return parser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser_shows_every_image(report: str | Path, work: str | Path) -> bool:
    """Headless Chromium loads ``report`` and every <img> is complete with a width (needs ``CHROMIUM``)."""
    probe = Path(work) / "probe.html"
    probe.write_text(Path(report).read_text().replace(
        "</body>", "<script>window.onload=()=>{document.title=[...document.images].every("
        "i=>i.complete&&i.naturalWidth>0)?'ALL_OK':'BROKEN'}</script></body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    return "<title>ALL_OK</title>" in dom
