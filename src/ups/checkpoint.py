"""Checkpoints: weights as safetensors + JSON metadata, training state loaded with ``weights_only``.

Layout (``docs/ARCHITECTURE.md``): ``{stem}.safetensors`` holds every module's ``state_dict`` under
keys ``"{module}.{param}"``; ``{stem}.json`` holds what rebuilds the modules (model, config, data
metadata, normaliser, stage, epoch, metric). The training state (optimizer, scheduler, scaler, EMA,
RNG states, counters) is one ``torch.save`` file holding only tensors and plain Python values, read
back with ``torch.load(weights_only=True)``: nothing arbitrary is ever unpickled. Every write is a
temporary file renamed into place.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ups.errors import CheckpointError
from ups.io_utils import atomic_write_json, atomic_write_with

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"


def _paths(stem: str | Path) -> tuple[Path, Path]:
    stem = str(stem)
    return Path(stem + WEIGHTS_SUFFIX), Path(stem + META_SUFFIX)


def checkpoint_exists(stem: str | Path) -> bool:
    weights, meta = _paths(stem)
    return weights.is_file() and meta.is_file()


def module_tensors(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """All state tensors of ``modules`` on the CPU, keyed ``"module.param"``, none sharing memory."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            t = value.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            out[f"{name}.{key}"] = t.clone() if ptr in seen else t
            seen.add(ptr)
    return out


def save_checkpoint(path_stem: str | Path, modules: dict[str, nn.Module], meta: dict[str, Any]) -> None:
    """Write ``{path_stem}.safetensors`` (weights) and ``{path_stem}.json`` (``meta`` + bookkeeping)."""
    weights_path, meta_path = _paths(path_stem)
    tensors = module_tensors(modules)
    atomic_write_with(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "ups"}))
    shapes = {name: sum(int(p.numel()) for p in m.parameters()) for name, m in modules.items()}
    full = {"format_version": FORMAT_VERSION, "modules": shapes, **meta}
    atomic_write_json(meta_path, full)


def read_checkpoint_meta(path_stem: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (one-line :class:`CheckpointError` when missing or damaged)."""
    _, meta_path = _paths(path_stem)
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint metadata not found: {meta_path} (check the run directory and stage name)")
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint metadata {meta_path} is damaged ({err}); delete it and retrain") from None


def _describe(meta: dict[str, Any]) -> str:
    what = [f"{k} '{meta[k]}'" for k in ("stage", "model") if isinstance(meta.get(k), str)]
    return f" (written for {', '.join(what)})" if what else ""


def load_checkpoint(path_stem: str | Path, modules: dict[str, nn.Module], *, strict: bool = True) -> dict[str, Any]:
    """Load weights into ``modules`` and return the checkpoint's metadata.

    ``strict``: every module tensor must be in the checkpoint and every checkpoint tensor must belong to
    a module; otherwise modules absent from the checkpoint keep their weights and extra tensors are
    ignored. A shape mismatch always fails. Failures are one line naming the checkpoint, the counts of
    missing/unexpected/mismatching tensors, one example, and what to do.
    """
    weights_path, _ = _paths(path_stem)
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint not found: {weights_path} (check the run directory and stage name)")
    meta = read_checkpoint_meta(path_stem)
    try:
        saved = load_file(str(weights_path))
    except Exception as err:  # safetensors raises several types for damaged files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {weights_path} cannot be read ({first}); delete it and retrain") from None
    load_tensors(modules, saved, source=f"checkpoint {weights_path}{_describe(meta)}", strict=strict)
    return meta


def load_tensors(modules: dict[str, nn.Module], saved: dict[str, torch.Tensor], *, source: str,
                 strict: bool = True) -> None:
    """Copy ``saved`` (keys ``"module.param"``) into ``modules``; one-line error naming ``source``."""
    expected = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(saved) if tuple(expected[k].shape) != tuple(saved[k].shape))
    if mismatched or (strict and (missing or unexpected)):
        if mismatched:
            k = mismatched[0]
            example = f"e.g. '{k}' is {list(saved[k].shape)} there, {list(expected[k].shape)} here"
        else:
            example = f"e.g. '{(missing or unexpected)[0]}' is {'missing' if missing else 'unexpected'}"
        raise CheckpointError(
            f"{source} does not fit these modules: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} shape-mismatched tensors ({example}); it comes from another model or config: "
            "use the config it was trained with (see its .json) or retrain"
        )
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}
        if sub or strict:
            module.load_state_dict(sub, strict=strict)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ------------------------------------------------------------------------------ training state
def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and ``random`` as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader draws from (its own, its sampler's), once each, in a fixed order."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    found: dict[int, torch.Generator] = {}
    for owner in (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator):
            found.setdefault(id(gen), gen)
    return list(found.values())


def loader_rng(loader: Any) -> list[torch.Tensor]:
    """The states of the loader's generators (order and shuffling draws), for the training state."""
    return [g.get_state() for g in _loader_generators(loader)] if loader is not None else []


def load_loader_rng(loader: Any, states: list[torch.Tensor] | None) -> None:
    """Inverse of :func:`loader_rng`; a different number of generators is a one-line error."""
    if states is None:
        return
    gens = _loader_generators(loader)
    if len(gens) != len(states):
        raise CheckpointError(f"the training state holds {len(states)} data-loader generator states but this "
                                   f"loader has {len(gens)}; resume with the run's own config")
    for gen, state in zip(gens, states):
        gen.set_state(state)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` a training state (tensors and plain values only), atomically."""
    atomic_write_with(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``; one-line error when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"training state not found: {path} (the run never reached its first checkpoint; start it again "
            "without --resume)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged file or disallowed objects
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"training state {path} cannot be read safely ({first[:200]}); start without --resume"
        ) from None


def estimate_checkpoint_bytes(modules: dict[str, nn.Module], *, copies: int = 8) -> int:
    """Bytes the checkpoints of a stage need: ``copies`` x the weights (last, best, EMA, optimizer moments,
    EMA shadow in the state file) plus 1 MiB of metadata."""
    weights = sum(t.numel() * t.element_size() for m in modules.values() for t in m.state_dict().values())
    return copies * int(weights) + 2**20
