"""``torch.compile`` of the methods a model names in ``compile_methods``: for training (``training.compile``) and
for inference (``Simulator(compile=True)``, ``ups infer --compile``).

A model lists the methods its stages call (``UPT``: ``encode``, ``step``, ``decode_frames``; the grid peers:
``grid_forward``). While a trainer runs, each of them is replaced on the instance by a :class:`CompiledMethod`
that calls the compiled code when gradients are on (training steps) and the eager method otherwise
(validation, whose shapes differ and would only add compilations). The trainer removes the wrappers when it
stops, so checkpoints, state dicts and the evaluation after training see the plain model.

Falling back cleanly: on CPU without a C++ compiler nothing is compiled (one warning); a compilation that
fails warns once and that method runs eagerly from then on. Inductor's cache goes to ``training.compile_cache``
(default ``~/.cache/ups/torchinductor``, kept across runs; ``TORCHINDUCTOR_CACHE_DIR`` set by the user wins
over the default), so a second run of the same model compiles from the cache. Measured in README "Cheaper
steps".

For inference the wrappers stay on the model and compile every call (no gradients needed); a rollout is a fixed
sequence of the same shapes, so after the first batch the compiled kernels are reused.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_CACHE = Path("~/.cache/ups/torchinductor")


class CompiledMethod:
    """``method`` compiled for calls with gradients enabled (``inference``: for every call); eager otherwise and
    after a failed compilation."""

    def __init__(self, method: Callable[..., Any], *, label: str, warn: Callable[[str], None],
                 inference: bool = False):
        self.eager = method
        self.compiled = torch.compile(method, dynamic=False)  # static kernels; a new shape (the last batch) recompiles
        self.label, self.warn, self.inference = label, warn, inference
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed or not (self.inference or torch.is_grad_enabled()):
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


def print_warning(message: str) -> None:
    """The default ``warn``: one ``warning: ...`` line on stderr (the trainer passes its reporter's instead)."""
    print(f"warning: {message}", file=sys.stderr)


def _ready(device: torch.device, cache: str | None, *, warn: Callable[[str], None], what: str, fallback: str) -> bool:
    """Whether inductor can compile here: if so its cache directory is set, else one ``what: why; fallback`` warning."""
    why = compiler_missing(device)
    if why is not None:
        warn(f"{what}: {why}; {fallback}")
        return False
    set_cache_dir(cache)
    return True


def _wrap(modules: dict[str, nn.Module], *, inference: bool, warn: Callable[[str], None]) -> list[tuple]:
    """Replace every listed ``compile_methods`` entry by a :class:`CompiledMethod` (not twice) -> what was wrapped."""
    # the spectral layers' complex multiplies stay eager kernels inside the compiled graph; measured as a whole the
    # compiled UPS step is still faster (README "Cheaper steps"), so inductor's per-process notice is not shown
    warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
    wrapped: list[tuple[nn.Module, str]] = []
    for name, module in modules.items():
        for method in getattr(module, "compile_methods", ()):
            if not isinstance(module.__dict__.get(method), CompiledMethod):
                setattr(module, method, CompiledMethod(getattr(module, method), label=f"{name}.{method}", warn=warn,
                                                       inference=inference))
                wrapped.append((module, method))
    return wrapped


@contextmanager
def compiled(modules: dict[str, nn.Module], *, enabled: bool, device: torch.device, cache: str | None,
             warn: Callable[[str], None]) -> Iterator[None]:
    """While inside, the ``compile_methods`` of every module in ``modules`` are compiled for the calls with
    gradients (training steps), when ``enabled``."""
    if not (enabled and _ready(device, cache, warn=warn, what="training.compile", fallback="training eagerly")):
        yield
        return
    wrapped = _wrap(modules, inference=False, warn=warn)
    try:
        yield
    finally:  # checkpoints and whatever runs after training see the plain modules
        for module, method in wrapped:
            if isinstance(module.__dict__.get(method), CompiledMethod):
                del module.__dict__[method]


def compile_for_inference(model: nn.Module, *, device: torch.device, cache: str | None = None,
                          warn: Callable[[str], None] = print_warning) -> bool:
    """Compile ``model``'s ``compile_methods`` for every call from now on (rollouts under ``inference_mode``; the
    first rollout of each batch shape pays the compilation). False, with one warning, where nothing can compile."""
    if not _ready(device, cache, warn=warn, what="compile", fallback="rolling out eagerly"):
        return False
    # the model itself, or the operator inside a corrected surrogate (``WrappedSurrogate.model``)
    _wrap({name or "model": m for name, m in model.named_modules() if getattr(type(m), "compile_methods", ())},
          inference=True, warn=warn)
    return True
