"""Multi-process training on PyTorch's own engine: ``torch.distributed`` + ``torchrun``.

Launch: ``torchrun --nproc-per-node N -m ups train CONFIG`` (or ``ups train --nproc N CONFIG``, which
calls torchrun's own entry point, :func:`torch.distributed.run.main`). torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; :func:`session` then creates the
process group from that environment: ``gloo`` on CPU, ``nccl`` on CUDA, or the backend named by
``training.distributed.backend``. Without those variables everything here is a no-op (world size 1).

How the ranks stay one optimisation (what the trainer calls, :class:`GradientSync`):

- **Data.** ``data.batch_size`` is the *global* batch. Each rank's loader draws the single-process
  order of the epoch and keeps its contiguous slice of every global batch
  (:class:`ups.data.datasets.ShardedSampler`), so the shards of a global batch are exactly the samples
  one process would have drawn for it, at any world size.
- **Gradients: explicit all-reduce, not ``DistributedDataParallel.forward``.** Stages call their
  modules' methods directly (``model.encode`` / ``step`` / ``decode``, ``corrector(...)`` inside
  loss functions), so a forward through a ``DistributedDataParallel`` wrapper never happens. DDP's
  reducer is armed by its own ``forward`` (``prepare_for_backward``); without it the backward hooks
  do not reduce, and the ranks would silently train apart. So the trainable parameters' gradients are
  averaged explicitly after the last micro-batch of an accumulation group: flattened into buckets of
  one dtype (``bucket_mb``), one ``all_reduce(SUM)`` per bucket, divided by the world size. That is
  the quantity DDP computes. Accumulation adds into ``.grad`` locally and nothing is reduced for the
  earlier micro-batches, which is exactly ``no_sync`` on all but the last. Each rank's loss is
  weighted ``W * n_rank / n_global`` before backward (exactly 1 for equal shards), so an uneven last
  batch still averages per sample. A parameter without a gradient on one rank counts as zero there;
  one without a gradient on every rank keeps ``grad=None`` (the optimizer skips it, as in one
  process). Frozen modules (teachers, frozen surrogates) are never reduced.
- **Weights, buffers, EMA, scaler.** :func:`broadcast_modules` copies rank 0's parameters and
  buffers to every rank before the first step. Persistent buffers of trainable modules (running
  statistics) are broadcast from rank 0 at every step, as DDP's ``broadcast_buffers``. Identical
  weights and identical reduced gradients give identical clipping, optimizer, GradScaler (the same
  ``found_inf``) and EMA updates on every rank; the tests check the weights stay equal.
- **Stability decisions.** The loss and its components are all-reduced per micro-batch (weighted by
  samples) before the finiteness check, so a NaN on one rank makes the global loss NaN and every rank
  skips that batch, as one process would for a NaN in its global batch. The logged losses are the
  global batch's, so health records match one process. Time budget and early stop are rank 0's
  decision, broadcast; a signal on any rank stops every rank at the same step boundary.
- **Side effects.** Rank 0 alone prints, writes the log, checkpoints, W&B, plots and reports
  (:func:`ups.training.runs.is_main_process`); validation runs on rank 0 and its metrics are
  broadcast (:func:`run_on_main`); the other ranks wait at the collective.

Random augmentation: each rank > 0 reseeds its global RNGs and the stage's ``torch.Generator``
attributes from ``(seed, rank, step)`` at the start of ``fit`` (:func:`decorrelate_rngs`), so
shards do not share noise draws; rank 0 keeps the single-process streams. A stage whose loss draws
random numbers is therefore the same optimisation in distribution at another world size, and
bitwise only when it draws none (the equality tests use such settings). The training state holds rank
0's RNG states only: after a mid-epoch resume the trainer restores them on every rank, so for the rest
of that epoch ranks > 0 share rank 0's global stream (the stage generators stay decorrelated).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ups.errors import ConfigError, UPSError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# ------------------------------------------------------------------------------------- who am I
def is_active() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def is_main() -> bool:
    return rank() == 0


def env_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun); valid before and after the group."""
    return int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ENV_KEYS)


def local_batch_size(global_batch: int, world: int) -> int:
    """``data.batch_size`` (global) per rank; one-line error when it does not divide evenly."""
    if global_batch % world:
        raise ConfigError(f"config error: data.batch_size={global_batch} is the global batch and must divide "
                          f"evenly over {world} processes; set it to a multiple of {world}")
    return global_batch // world


# ---------------------------------------------------------------------------------- lifecycle
def choose_backend(backend: str) -> str:
    """``auto`` -> ``nccl`` when CUDA is available, else ``gloo``; explicit names checked."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ConfigError("config error: training.distributed.backend=nccl needs CUDA GPUs and an NCCL build of "
                          "torch; use training.distributed.backend=gloo (or auto) on CPU")
    return backend


@contextmanager
def session(dist_cfg: Any):
    """Initialise the process group from torchrun's environment (no-op without it); tear it down after.

    ``dist_cfg``: a ``DistributedConfig`` (``backend``, ``timeout_s``). Re-entrant: an already initialised
    group is used as it is and left alone.
    """
    owned = False
    if launched_by_torchrun() and not dist.is_initialized():
        backend = choose_backend(dist_cfg.backend)
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=dist_cfg.timeout_s))
        owned = True
    try:
        yield
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _device() -> torch.device:
    """Where small collective tensors live for this backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_active():
        dist.barrier()


# ---------------------------------------------------------------------------------- decisions
def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one."""
    if not is_active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def from_main(value: float | bool) -> float | bool:
    """Rank 0's ``value`` on every rank (time budget and its clock: the ranks' clocks differ)."""
    if not is_active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.broadcast(t, src=0)
    return bool(t.item()) if isinstance(value, bool) else float(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable values only)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` computed on rank 0 only, its result broadcast; an error there is raised on every rank."""
    if not is_active():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # re-raised below, after the other ranks are told
            error = err
    message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise UPSError(f"rank 0 failed ({message})")
    return broadcast_object(result)


def first_message(message: str | None) -> str | None:
    """The first non-None ``message`` over the ranks (in rank order), on every rank."""
    if not is_active():
        return message
    gathered: list[str | None] = [None] * world_size()
    dist.all_gather_object(gathered, message)
    return next((m for m in gathered if m is not None), None)


# ---------------------------------------------------------------------------------- weights
def _flat_broadcast(tensors: Sequence[torch.Tensor]) -> None:
    for group in _by_dtype(tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in group]).to(_device())
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def _by_dtype(tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def broadcast_modules(modules: Iterable[nn.Module]) -> None:
    """Copy rank 0's parameters and persistent buffers into every rank's modules."""
    if is_active():
        _flat_broadcast([t for m in modules for t in m.state_dict().values() if t.numel()])


def persistent_buffers(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    """Floating persistent buffers (state_dict entries that are not parameters) of ``modules``."""
    out = []
    for m in modules:
        params = {id(p) for p in m.parameters()}
        names = set(m.state_dict())
        out += [b for n, b in m.named_buffers() if n in names and id(b) not in params and b.is_floating_point()
                and b.numel()]
    return out


def decorrelate_rngs(stage: Any, *, seed: int, step: int) -> None:
    """Ranks > 0: fresh global RNG and stage ``torch.Generator`` streams from ``(seed, rank, step)``."""
    if not is_active() or is_main():
        return
    from ups.checkpoint import seed_everything

    base = (int(seed) * 1_000_003 + rank() * 7_919 + int(step)) % 2**62
    seed_everything(base)
    for i, g in enumerate(v for v in vars(stage).values() if isinstance(v, torch.Generator)):
        g.manual_seed(base + 104_729 * (i + 1))


def weight_spread(modules: Iterable[nn.Module]) -> float:
    """Largest difference over the ranks of per-tensor float64 sums and sums of squares of the modules'
    state (0.0 when every rank holds the same weights; 0.0 in one process)."""
    if not is_active():
        return 0.0
    stats = [v for m in modules for t in m.state_dict().values() if t.is_floating_point()
             for v in (t.double().sum(), t.double().pow(2).sum())]
    if not stats:
        return 0.0
    hi = torch.stack(stats).to(_device())
    lo = hi.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())


# ---------------------------------------------------------------------------------- gradients
def batch_length(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (dicts, lists, tensors)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = batch_length(v)
        if n:
            return n
    return 0


class GradientSync:
    """Averages loss records and gradients of the trainable modules over the ranks (module docstring).

    Every method is a no-op at world size 1, so a single process trains exactly as without it.
    """

    def __init__(self, *, trainable: dict[str, nn.Module], bucket_mb: float = 25.0):
        self.params = [p for m in trainable.values() for p in m.parameters() if p.requires_grad]
        self.buffers = persistent_buffers(trainable.values())
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.active = is_active()

    def reduce_parts(self, parts: dict[str, float], n_local: int) -> tuple[dict[str, float], float]:
        """Sample-weighted global mean of each loss record, and this rank's loss weight ``W n_r / N``."""
        if not self.active:
            return parts, 1.0
        keys = list(parts)
        t = torch.tensor([n_local * parts[k] for k in keys] + [float(n_local)], dtype=torch.float64,
                         device=_device())
        dist.all_reduce(t)
        total = float(t[-1])
        reduced = {k: float(t[i]) / total for i, k in enumerate(keys)}
        return reduced, world_size() * n_local / total

    def reduce_gradients(self) -> None:
        """Average the accumulated gradients over the ranks; broadcast rank 0's running buffers."""
        if not self.active:
            return
        present = torch.tensor([0.0 if p.grad is None else 1.0 for p in self.params], device=_device())
        dist.all_reduce(present)
        used = [p for p, flag in zip(self.params, present.tolist()) if flag > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in self._buckets([p.grad for p in used]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat.div_(world_size())
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        if self.buffers:
            _flat_broadcast(self.buffers)

    def _buckets(self, grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        out: list[list[torch.Tensor]] = []
        for group in _by_dtype(grads):
            bucket, size = [], 0
            for g in group:
                if bucket and size + g.numel() * g.element_size() > self.bucket_bytes:
                    out.append(bucket)
                    bucket, size = [], 0
                bucket.append(g)
                size += g.numel() * g.element_size()
            if bucket:
                out.append(bucket)
        return out


# ---------------------------------------------------------------------------------- launcher
def launch(nproc: int, module_args: list[str]) -> int:
    """``torchrun --standalone --nproc-per-node nproc -m ups MODULE_ARGS``, in this process.

    Returns the exit status: 0, 130 when a rank was interrupted (its message says how to resume),
    else the failing rank's status (its error is printed by that rank).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give at least 1 process")
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "ups",
                                         *module_args])
    try:
        run(args)
    except SignalException:  # the launcher was signalled: the ranks were sent it too, saved and stopped
        return 130
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return 130 if 130 in codes else next((c for c in codes if c), 1)
    return 0
