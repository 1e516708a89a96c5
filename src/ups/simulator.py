"""The Python API for fast rollouts with a trained surrogate.

```python
sim = Simulator.from_run("runs/burgers1d_...")          # model, normaliser, metadata from the run alone
u = sim.rollout(u0, 40, params={"nu": 0.01})            # u0 [B, N, C] physical -> [B, 41, N, C] physical
u = sim.rollout(u0, 40, params=..., query_points=xq)    # decoded at any points xq [B, Q, d] (or [Q, d])
```
"""

from __future__ import annotations

from pathlib import Path

import torch

from ups.allocator import retain_freed_memory
from ups.data.metadata import DatasetMetadata
from ups.data.normalization import Normalizer
from ups.errors import UPSError
from ups.models.compile import compile_for_inference
from ups.models.layers import lattice
from ups.models.steady_prior import steady_state
from ups.rollout import rollout
from ups.rundir import RunFiles, load_prior, load_run_model, model_stem, with_corrector


class Simulator:
    """A trained latent surrogate with its normaliser and data metadata, ready to roll out."""

    def __init__(self, *, model: torch.nn.Module, normalizer: Normalizer, meta: DatasetMetadata,
                 rollout_mode: str = "reencode", batch_size: int = 64, device: str | torch.device = "cpu",
                 compile: bool = False):
        self.device = torch.device(device)
        retain_freed_memory()  # rollouts reuse big buffers every step: no page faults (ups.allocator)
        self.model = model.to(self.device).eval()
        if compile:  # torch.compile of encode/step/decode; one warning and eager rollouts where it cannot
            compile_for_inference(self.model, device=self.device)
        self.normalizer, self.meta = normalizer, meta
        self.rollout_mode, self.batch_size = rollout_mode, batch_size
        self.run_dir: Path | None = None  # set by from_run (steady_state reads the prior from it)
        self.max_principle = False  # from the checkpoint: keep rollouts in the initial range

    @classmethod
    def from_run(cls, run_dir: str | Path, *, stage: str = "operator", checkpoint: str | None = None,
                 corrector: str = "none", batch_size: int = 64, device: str | torch.device = "cpu",
                 compile: bool = False) -> Simulator:
        """Rebuild from ``run_dir/checkpoints/{stage}_{checkpoint}`` (default: best, else ema, else last).

        corrector: "none", "multi" (diff_residual), "distilled" (consistency_distill) or "auto" (the
        distilled one when trained, else multi, else none): every step is then refined by it.
        compile: ``torch.compile`` the operator's encode / step / decode for rollouts (``ups.models.compile``).
        """
        model, normalizer, meta, info = load_run_model(model_stem(RunFiles(Path(run_dir)), stage, checkpoint))
        model = with_corrector(model, run_dir, corrector)
        sim = cls(model=model, normalizer=normalizer, meta=meta,
                   rollout_mode=info.get("rollout_mode", "reencode"), batch_size=batch_size, device=device,
                   compile=compile)
        sim.run_dir = Path(run_dir)
        sim.max_principle = bool(info.get("max_principle", False))
        return sim

    # ------------------------------------------------------------------------------ inputs
    def grid(self, n: int) -> torch.Tensor:
        """Cell centres of ``n`` equal cells over the domain (1D), or of ``m**d`` cells. -> [n, d]."""
        dims = self.meta.spatial_dims
        m = round(n ** (1.0 / dims))
        if m**dims != n:
            raise UPSError(f"{n} points are not a regular {dims}-D grid; pass coords= with the point positions")
        lo = torch.tensor([a for a, _ in self.meta.domain], dtype=torch.float64)
        hi = torch.tensor([b for _, b in self.meta.domain], dtype=torch.float64)
        return lattice(m, lo, hi).float()

    def _params(self, params, batch: int) -> torch.Tensor:
        """dict name -> value, a sequence [P] or a tensor [B, P] -> [B, P]."""
        names = self.meta.param_names
        if params is None:
            if names:
                raise UPSError(f"rollout needs params= for {', '.join(names)} (e.g. params={{'{names[0]}': 0.01}})")
            return torch.zeros(batch, 0)
        if isinstance(params, dict):
            unknown = sorted(set(params) - set(names))
            missing = [n for n in names if n not in params]
            if unknown or missing:
                raise UPSError(f"params {sorted(params)} do not match the model's parameters {list(names)}")
            params = [float(params[n]) for n in names]
        p = torch.as_tensor(params, dtype=torch.float32)
        p = p.expand(batch, -1) if p.ndim == 1 else p
        if p.shape != (batch, len(names)):
            raise UPSError(f"params have shape {tuple(p.shape)}, expected [{batch}, {len(names)}] for {list(names)}")
        return p

    @staticmethod
    def _points(x: torch.Tensor | None, batch: int, what: str, dims: int) -> torch.Tensor | None:
        """[n, d] or [B, n, d] -> [B, n, d] (None stays None)."""
        if x is None:
            return None
        x = torch.as_tensor(x, dtype=torch.float32)
        x = x.expand(batch, -1, -1) if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[0] != batch or x.shape[-1] != dims:
            raise UPSError(f"{what} has shape {tuple(x.shape)}; expected [n, {dims}] or [{batch}, n, {dims}]")
        return x

    # ------------------------------------------------------------------------------ rollout
    def rollout(self, u0: torch.Tensor, steps: int, *, params=None, query_points: torch.Tensor | None = None,
                coords: torch.Tensor | None = None, dt: float | None = None) -> torch.Tensor:
        """Autoregressive rollout in physical units.

        u0: [B, N, C] (or [B, *spatial, C]) physical field at ``coords`` [N, d] or [B, N, d] (default:
        cell centres of a regular grid over the domain); params: dict, [P] or [B, P]; query_points:
        [Q, d] or [B, Q, d] (default: the input points); dt: time step (default: the training data's).
        Returns [B, steps + 1, Q, C] physical, frame 0 included. Batched by ``batch_size``.
        """
        u0 = torch.as_tensor(u0, dtype=torch.float32)
        c = self.meta.n_channels
        if u0.ndim < 3 or u0.shape[-1] != c:
            raise UPSError(f"u0 has shape {tuple(u0.shape)}; expected [B, N, {c}] (channels last)")
        b = u0.shape[0]
        u0 = u0.reshape(b, -1, c)
        coords = self.grid(u0.shape[1]) if coords is None else coords
        x = self._points(coords, b, "coords", self.meta.spatial_dims)
        if x.shape[1] != u0.shape[1]:
            raise UPSError(f"coords hold {x.shape[1]} points but u0 has {u0.shape[1]}")
        xq = self._points(query_points, b, "query_points", self.meta.spatial_dims)
        p = self._params(params, b)
        step_dt = torch.full((b,), float(self.meta.dt if dt is None else dt))
        out = []
        with torch.inference_mode():
            for i in range(0, b, self.batch_size):
                part = [None if t is None else t[i:i + self.batch_size].to(self.device)
                        for t in (u0, x, p, step_dt, xq)]
                pred = rollout(self.model, self.normalizer.normalize(part[0]), *part[1:4], steps,
                               mode=self.rollout_mode, query_coords=part[4], max_principle=self.max_principle)
                out.append(self.normalizer.denormalize(pred).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------------- steady state
    def steady_state(self, u0: torch.Tensor, *, params=None, coords: torch.Tensor | None = None,
                     query_points: torch.Tensor | None = None) -> torch.Tensor:
        """The steady state predicted by the run's steady prior (``steady_prior_best``).

        u0: [B, N, C] physical at ``coords`` (default: the regular grid) -> [B, Q, C] physical at
        ``query_points`` (default: the input points).
        """
        prior = load_prior(self.run_dir or ".")
        u0 = torch.as_tensor(u0, dtype=torch.float32)
        b = u0.shape[0]
        u0 = u0.reshape(b, -1, self.meta.n_channels)
        x = self._points(self.grid(u0.shape[1]) if coords is None else coords, b, "coords", self.meta.spatial_dims)
        xq = self._points(query_points, b, "query_points", self.meta.spatial_dims)
        base = getattr(self.model, "model", self.model)  # the surrogate without its corrector
        with torch.inference_mode():
            out = steady_state(base, prior, self.normalizer.normalize(u0), x, self._params(params, b), xq)
        return self.normalizer.denormalize(out)
