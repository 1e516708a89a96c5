"""Exponential moving average of the trainable weights.

The shadow weights follow ``shadow <- d * shadow + (1 - d) * param`` after every optimizer step, with
the usual warm start ``d = min(decay, (1 + n) / (10 + n))`` (``n`` = updates so far) so that early
shadows are not dominated by the random initialisation. Only parameters are averaged; buffers (e.g.
normalisation statistics) are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ups.errors import CheckpointError


class EMA:
    """Shadow copies of the parameters of ``modules`` (the trainable ones), keyed ``"module.param"``."""

    def __init__(self, modules: dict[str, nn.Module], *, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must lie in (0, 1)")
        self.decay = decay
        self.num_updates = 0
        self._modules = modules
        self.shadow = {key: p.detach().clone() for key, p in self._params()}

    def _params(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, module in self._modules.items():
            for pname, p in module.named_parameters():
                yield f"{name}.{pname}", p

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for key, p in self._params():
            self.shadow[key].lerp_(p.detach().to(self.shadow[key].dtype), 1.0 - decay)
        self.num_updates += 1

    @contextmanager
    def applied(self):
        """Temporarily put the EMA weights into the modules (validation, saving); restore afterwards."""
        backup = {}
        with torch.no_grad():
            for key, p in self._params():
                backup[key] = p.detach().clone()
                p.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self._params():
                    p.copy_(backup[key])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise CheckpointError(
                f"EMA state holds {len(shadow)} tensors for other parameters than the {len(self.shadow)} "
                "trainable ones (the state file belongs to another model; start without --resume)"
            )
        for key, value in shadow.items():
            self.shadow[key].copy_(value)
        self.num_updates = int(state["num_updates"])
