"""Preflight before the first step: will one rank's peak memory fit (one measured dry-run batch)?

:func:`check_memory` runs one forward and backward of the stage's loss on the first items of the
training set (the rank's batch size, the configured precision), then puts everything back: gradients,
buffers (running statistics), the global RNGs and the stage's ``torch.Generator`` states, so training
is unchanged by it. What it measures:

- CUDA: the growth of ``max_memory_allocated`` during the dry run, plus optimizer state not yet
  allocated (two moments for Adam/AdamW, one for SGD momentum), against ``memory_fraction`` of the
  GPU's free memory (each rank has its own GPU).
- CPU: the growth of the process's peak RSS (``ru_maxrss``, an upper bound when the process peaked
  earlier) plus the same optimizer state, times the ranks on this machine (they share its memory),
  against ``memory_fraction`` of ``MemAvailable``.

When it does not fit it fails on every rank with one line naming the settings to change. Free disk
for checkpoints is checked by the trainer (:func:`ups.io_utils.check_free_disk`).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

import torch

from ups import checkpoint as ckpt
from ups.errors import UPSError
from ups.training import distributed

GIB = 2**30


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _available_host_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _optimizer_state_bytes(trainer: Any) -> int:
    """Bytes of optimizer moments still to be allocated at the first step."""
    if trainer.optimizer.state:
        return 0
    per = {"adamw": 2, "adam": 2, "sgd": 1 if trainer.train_cfg.momentum > 0 else 0}[trainer.train_cfg.optimizer]
    return per * sum(p.numel() * p.element_size() for g in trainer.optimizer.param_groups for p in g["params"])


def _dry_batch(loader: Any) -> Any | None:
    """The rank's first batch size of items 0.. of the loader's dataset (no loader RNG consumed)."""
    dataset, collate_fn = getattr(loader, "dataset", None), getattr(loader, "collate_fn", None)
    size = getattr(loader, "batch_size", None)
    if dataset is None or collate_fn is None or not size or not hasattr(dataset, "__len__") or not len(dataset):
        return None
    return collate_fn([dataset[i] for i in range(min(size, len(dataset)))])


def measure_peak_growth(trainer: Any, batch: Any, move: Callable[[Any, torch.device], Any]) -> int:
    """Bytes one training batch adds at its peak (activations + gradients), measured; state restored.
    ``move(batch, device)`` puts a batch on the device (the trainer's ``to_device``)."""
    device = trainer.device
    rng = ckpt.capture_rng()
    gens = [(g, g.get_state()) for g in vars(trainer.stage).values() if isinstance(g, torch.Generator)]
    buffers = [(b, b.detach().clone()) for m in trainer.modules.values() for b in m.buffers()]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_bytes()
    try:
        with trainer.precision.autocast():
            out = trainer.stage.loss(move(batch, device), epoch=trainer.epoch, step=trainer.step)
        out["loss"].float().backward()
        peak = (torch.cuda.max_memory_allocated(device) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for g, state in gens:
            g.set_state(state)
        ckpt.restore_rng(rng)
    return max(0, peak - before)


def check_memory(trainer: Any, loader: Any, *, move: Callable[[Any, torch.device], Any]) -> None:
    """Fail in one line, on every rank, when the measured peak per rank will not fit."""
    batch = _dry_batch(loader)
    message = None
    if batch is not None:
        need = measure_peak_growth(trainer, batch, move) + _optimizer_state_bytes(trainer)
        frac = trainer.train_cfg.distributed.memory_fraction
        if trainer.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(trainer.device)
            have, where, ranks = frac * free, f"GPU {trainer.device}", 1
        else:
            avail = _available_host_bytes()
            have = None if avail is None else frac * avail
            where, ranks = "this machine", distributed.local_world_size()
        if have is not None and need * ranks > have:
            world = distributed.world_size()
            message = (f"preflight: stage '{trainer.name}' needs about {need / GIB:.2f} GiB per process ({ranks} "
                       f"process(es) on {where}) for a batch of {distributed.batch_length(batch)} samples, but "
                       f"{have / GIB:.2f} GiB is available (training.distributed.memory_fraction={frac}); lower "
                       f"data.batch_size (the global batch over {world} process(es)), use training.precision=bf16, "
                       "or add GPUs/machines (training.distributed.preflight=false skips this check)")
    message = distributed.first_message(message)
    if message is not None:
        raise UPSError(message)
