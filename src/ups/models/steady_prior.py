"""The steady-prior network: ``S`` residual drift steps in latent space towards the steady state.

``z_{k+1} = z_k + g_theta(z_k | k, params)``, ``k = 0 .. S-1``; ``g`` is a stack of adaptive-layer-norm
blocks (as in the corrector), zero-initialised so the untrained prior is the identity. Trained by the
``steady_prior`` stage (``ups.training.stages.steady_prior``); used by ``Simulator.steady_state``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ups.config import Strict
from ups.models.corrector import AdaLNBlock, timestep_embedding


class SteadyPriorNetConfig(Strict):
    num_steps: int = Field(4, ge=1, le=16)
    width: int = Field(64, ge=4)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    attention: bool = True



class SteadyPrior(nn.Module):
    """``S`` residual drift steps in latent space. z: [B, L, D]; params: [B, P] -> [B, L, D]."""

    def __init__(self, *, latent_dim: int, n_params: int, config: SteadyPriorNetConfig | None = None):
        super().__init__()
        config = config or SteadyPriorNetConfig()
        self.config, self.latent_dim, self.n_params = config, latent_dim, n_params
        w = config.width
        self.inp = nn.Linear(latent_dim, w)
        self.step_mlp = nn.Sequential(nn.Linear(32, w), nn.SiLU(), nn.Linear(w, w))
        self.param_mlp = nn.Sequential(nn.Linear(n_params, w), nn.SiLU(), nn.Linear(w, w)) if n_params else None
        self.blocks = nn.ModuleList(AdaLNBlock(width=w, heads=config.heads, mlp_ratio=config.mlp_ratio,
                                               attention=config.attention) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w, elementwise_affine=False)
        self.out = nn.Linear(w, latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def drift(self, z: torch.Tensor, k: int, params: torch.Tensor | None) -> torch.Tensor:
        """g(z | k, params). z: [B, L, D]; params: [B, P] -> [B, L, D]."""
        kk = torch.full((z.shape[0],), k / self.config.num_steps, device=z.device)
        c = self.step_mlp(timestep_embedding(kk, 32).to(z.dtype))
        if self.param_mlp is not None and params is not None:
            c = c + self.param_mlp(params.to(z.dtype))
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.norm(h))

    def forward(self, z: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        for k in range(self.config.num_steps):
            z = z + self.drift(z, k, params)
        return z


def steady_state(model: nn.Module, prior: SteadyPrior, u0: torch.Tensor, coords: torch.Tensor,
                 params: torch.Tensor | None = None, coords_q: torch.Tensor | None = None) -> torch.Tensor:
    """The prior's steady state of ``u0`` [B, N, C] (normalised) at ``coords`` [B, N, d], decoded at
    ``coords_q`` [B, Q, d] (default: ``coords``); params [B, P] -> [B, Q, C] (normalised)."""
    z = prior(model.encode(u0, coords), params)
    return model.decode(z, coords if coords_q is None else coords_q)
