"""Persistence, the trivial baseline: ``u_{t+1} = u_t``. Registered so every report can include it."""

from __future__ import annotations

import torch
from torch import nn

from ups.config import Strict
from ups.data.metadata import DatasetMetadata
from ups.models import MODELS


class PersistenceConfig(Strict):
    """Persistence has no parameters."""


@MODELS.register("persistence")
class Persistence(nn.Module):
    """Predicts that nothing changes. Has no trainable parameters."""

    config_class = PersistenceConfig

    @classmethod
    def from_config(cls, meta: DatasetMetadata, params: dict) -> Persistence:
        return cls()

    def predict_next(
        self, u: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dt: torch.Tensor
    ) -> torch.Tensor:
        """One step. u: [B, N, C] (normalised); coords: [B, N, d]; params: [B, P]; dt: [B] -> [B, N, C]."""
        return u.clone()
