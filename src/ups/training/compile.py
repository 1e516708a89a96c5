"""``training.compile``: ``torch.compile`` of the methods a model names in ``compile_methods``, for training.

A model lists the methods its stages call (``UPT``: ``encode``, ``step``, ``decode``; the grid peers:
``grid_forward``). While a trainer runs, each of them is replaced on the instance by a :class:`CompiledMethod`
that calls the compiled code when gradients are on (training steps) and the eager method otherwise
(validation, whose shapes differ and would only add compilations). The trainer removes the wrappers when it
stops, so checkpoints, state dicts and the evaluation after training see the plain model.

Falling back cleanly: on CPU without a C++ compiler nothing is compiled (one warning); a compilation that
fails warns once and that method runs eagerly from then on. Inductor's cache goes to ``training.compile_cache``
(default ``~/.cache/ups/torchinductor``, kept across runs; ``TORCHINDUCTOR_CACHE_DIR`` set by the user wins
over the default), so a second run of the same model compiles from the cache. Measured in README "Cheaper
steps": it helps UPS's training step and slows the FNO's, so the shipped FNO configs leave it off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_CACHE = Path("~/.cache/ups/torchinductor")


class CompiledMethod:
    """``method`` compiled for calls with gradients enabled; eager otherwise and after a failed compilation."""

    def __init__(self, method: Callable[..., Any], *, label: str, warn: Callable[[str], None]):
        self.eager = method
        self.compiled = torch.compile(method)
        self.label, self.warn = label, warn
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed or not torch.is_grad_enabled():
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # an unsupported operation or a broken toolchain: this method runs eagerly
            self.failed = True
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            self.warn(f"torch.compile of {self.label} failed ({type(exc).__name__}: {reason}); it runs eagerly")
            return self.eager(*args, **kwargs)


def compiler_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here (no C++ compiler on CPU), or None."""
    if device.type != "cpu":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # inductor raises its own error types when no compiler is found
        return f"no C++ compiler for torch.compile on CPU ({type(exc).__name__}); install g++ or clang++"
    return None


def set_cache_dir(cache: str | None) -> Path:
    """Inductor's cache directory: ``cache``, else a user-set ``TORCHINDUCTOR_CACHE_DIR``, else the default."""
    if cache is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    path = Path(cache).expanduser() if cache is not None else DEFAULT_CACHE.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


@contextmanager
def compiled(modules: dict[str, nn.Module], *, enabled: bool, device: torch.device, cache: str | None,
             warn: Callable[[str], None]) -> Iterator[None]:
    """While inside, the ``compile_methods`` of every module in ``modules`` are compiled (when ``enabled``)."""
    why = compiler_missing(device) if enabled else None
    if why is not None:
        warn(f"training.compile: {why}; training eagerly")
    if not enabled or why is not None:
        yield
        return
    set_cache_dir(cache)
    wrapped: list[tuple[nn.Module, str]] = []
    for name, module in modules.items():
        for method in getattr(module, "compile_methods", ()):
            setattr(module, method, CompiledMethod(getattr(module, method), label=f"{name}.{method}", warn=warn))
            wrapped.append((module, method))
    try:
        yield
    finally:  # checkpoints and whatever runs after training see the plain modules
        for module, method in wrapped:
            if isinstance(module.__dict__.get(method), CompiledMethod):
                del module.__dict__[method]
