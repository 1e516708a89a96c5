"""Stage 1, ``operator``: encoder, operator and decoder of the latent surrogate train together.

Loss (every term mean-reduced, logged unweighted under its own name)::

    lambda_forward * L_forward + w_enc * L_inv_enc + w_dec * L_inv_dec
        + lambda_rollout * L_rollout + lambda_spectral * L_spectral

- ``L_forward``: the decoded one-step prediction against the true next field (normalised space),
  optionally plus ``latent_forward_weight * |z_pred - E(u_next)|^2``;
- ``L_inv_enc = |D(E(u)) - u|^2`` at a random subset of the points (the decoder inverts the encoder);
- ``L_inv_dec = |E(D(z)) - sg(z)|^2`` on the predicted latent (the encoder inverts the decoder);
- ``L_rollout``: steps 2..K of a K-step rollout (``rollout_mode``) decoded against the truth, with K
  growing from 1 to ``rollout_steps`` over ``rollout_ramp_steps`` optimiser steps;
- ``L_spectral``: relative spectral energy error over the spatial axes of every predicted frame.
``w_enc``/``w_dec`` follow the trainer's curriculum (0, linear ramp, base, capped). Training inputs
get Gaussian noise (``input_noise``) and, on periodic domains, a random translation against the
supernode lattice (``random_shift``), which is the same as drawing the supernodes at random.
Validation: full autoregressive rollouts, scored in physical space (``val_rollout_nrmse``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ups.data.metadata import DatasetMetadata
from ups.data.pdes import has_maximum_principle
from ups.models import MODELS
from ups.rollout import flatten_points, rollout_scores
from ups.training.stage import STAGES, Stage, StageConfig


class OperatorStageConfig(StageConfig):
    """Settings of the operator stage (``stages.operator`` in an experiment config)."""

    lambda_forward: float = Field(1.0, ge=0)
    lambda_rollout: float = Field(1.0, ge=0)
    lambda_spectral: float = Field(0.0, ge=0)
    latent_forward_weight: float = Field(0.0, ge=0)
    inverse_loss_base: float = Field(0.1, ge=0)
    inverse_loss_warmup_epochs: int = Field(1, ge=0)
    inverse_loss_max_weight: float = Field(0.1, ge=0)
    rollout_steps: int = Field(4, ge=1)  # K, the longest unroll (the training window is K + 1 frames)
    rollout_ramp_steps: int = Field(2000, ge=0)  # optimiser steps over which K grows from 1
    rollout_mode: Literal["reencode", "latent"] = "reencode"
    max_principle: bool = True  # keep rollouts in the initial range when the PDE has a maximum principle
    detach_between_steps: bool = False  # pushforward trick: gradients through the last step only
    input_noise: float = Field(0.0, ge=0)  # std of the noise on the first input frame (normalised)
    random_shift: bool = True
    query_fraction: float = Field(0.5, gt=0, le=1)  # points used by L_inv_enc


def unroll_length(cfg: OperatorStageConfig, step: int) -> int:
    """K at optimiser step ``step``: 1 at the start, ``rollout_steps`` after ``rollout_ramp_steps``."""
    if cfg.rollout_ramp_steps == 0:
        return cfg.rollout_steps
    frac = min(1.0, step / cfg.rollout_ramp_steps)
    return 1 + int(frac * (cfg.rollout_steps - 1) + 1e-9)


def spectral_error(pred: torch.Tensor, true: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Relative spectral energy error over the spatial axes, averaged over the other axes.

    pred, true: [B, T, N, C] with N = prod(spatial) points of a regular grid -> scalar.
    """
    dims = tuple(range(2, 2 + len(spatial)))
    shape = pred.shape[:2] + tuple(spatial) + pred.shape[-1:]
    e_pred = torch.fft.rfftn(pred.reshape(shape), dim=dims).abs().pow(2)
    e_true = torch.fft.rfftn(true.reshape(shape), dim=dims).abs().pow(2)
    return ((e_pred - e_true).abs().sum(dims) / e_true.sum(dims).clamp_min(1e-8)).mean()


def random_translation(coords: torch.Tensor, domain: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Shift every sample's points by one random vector, wrapped into the periodic box.

    coords: [B, N, d]; domain: [d, 2] (lo, hi) -> [B, N, d].
    """
    lo, hi = domain[:, 0].to(coords), domain[:, 1].to(coords)
    shift = torch.rand(coords.shape[0], 1, coords.shape[-1], generator=generator).to(coords) * (hi - lo)
    return lo + torch.remainder(coords - lo + shift, hi - lo)


def operator_losses(model: nn.Module, batch: dict[str, torch.Tensor], *, cfg: OperatorStageConfig, unroll: int,
                    w_enc: float, w_dec: float, spatial: tuple[int, ...], domain: torch.Tensor | None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The operator-stage loss on one batch (``u`` [B, W >= unroll + 1, *spatial, C], ``coords``,
    ``params`` [B, P], ``dt`` [B]); returns the weighted total under ``loss`` and each term."""
    u, x = flatten_points(batch["u"], batch["coords"])  # [B, W, N, C], [B, N, d]
    if domain is not None and cfg.random_shift:
        x = random_translation(x, domain, generator)
    params, dt = batch["params"], batch["dt"]
    u0 = u[:, 0]
    if cfg.input_noise > 0:
        u0 = u0 + cfg.input_noise * torch.randn(u0.shape, generator=generator).to(u0)
    z = z0 = model.encode(u0, x)
    cur, preds, reencoded = u0, [], []
    z_first = None
    for k in range(unroll):
        z_next = model.step(z, params, dt)
        z_first = z_next if k == 0 else z_first
        nxt = model.decode(z_next, x, cur)
        preds.append(nxt)
        if cfg.rollout_mode == "reencode" and (k + 1 < unroll or w_dec > 0 or cfg.latent_forward_weight > 0):
            reencoded.append(model.encode(nxt, x))
        z = reencoded[-1] if cfg.rollout_mode == "reencode" and k + 1 < unroll else z_next
        cur = nxt
        if cfg.detach_between_steps and k + 1 < unroll:
            z, cur = z.detach(), cur.detach()
    pred = torch.stack(preds, dim=1)  # [B, K, N, C]
    true = u[:, 1:unroll + 1]
    out = {"loss_forward": F.mse_loss(pred[:, 0], true[:, 0])}
    if cfg.latent_forward_weight > 0:
        out["loss_latent"] = F.mse_loss(z_first, model.encode(u[:, 1], x).detach())
    out["loss_rollout"] = F.mse_loss(pred[:, 1:], true[:, 1:]) if unroll > 1 else pred.new_zeros(())
    out["loss_spectral"] = spectral_error(pred, true, spatial)
    n = u.shape[2]
    q = max(1, int(round(cfg.query_fraction * n)))
    idx = torch.randperm(n, generator=generator)[:q].to(u.device)
    out["loss_inv_enc"] = F.mse_loss(model.decode(z0, x[:, idx]), u0[:, idx])
    z_re = reencoded[0] if reencoded else model.encode(pred[:, 0], x)
    out["loss_inv_dec"] = F.mse_loss(z_re, z_first.detach())
    total = (cfg.lambda_forward * (out["loss_forward"] + cfg.latent_forward_weight * out.get("loss_latent", 0.0))
             + w_enc * out["loss_inv_enc"] + w_dec * out["loss_inv_dec"]
             + cfg.lambda_rollout * out["loss_rollout"] + cfg.lambda_spectral * out["loss_spectral"])
    out["loss"] = total
    return out


@STAGES.register("operator")
class OperatorStage(Stage):
    """Trains the whole latent surrogate (module ``model``) end to end."""

    name: ClassVar[str] = "operator"
    config_class: ClassVar[type[StageConfig]] = OperatorStageConfig
    val_metric: ClassVar[str] = "val_rollout_nrmse"

    def __init__(self, *, model: nn.Module, stage_cfg: OperatorStageConfig, meta: DatasetMetadata, normalizer,
                 model_name: str, model_params: dict, seed: int = 0):
        self.model = model
        self.cfg = stage_cfg
        self.meta = meta
        self.normalizer = normalizer
        self.model_name, self.model_params = model_name, model_params
        periodic = meta.boundary == "periodic"
        self.domain = torch.tensor(meta.domain, dtype=torch.float32) if periodic else None
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.weights = (0.0, 0.0)
        self.max_principle = stage_cfg.max_principle and has_maximum_principle(meta.pde)

    @classmethod
    def build(cls, *, cfg, meta: DatasetMetadata, normalizer, run_dir: Path | None = None) -> OperatorStage:
        model = MODELS.get(cfg.model.name).from_config(meta, cfg.model.params)
        stage_cfg = cls.stage_config(cfg)
        return cls(model=model, stage_cfg=stage_cfg, meta=meta, normalizer=normalizer, model_name=cfg.model.name,
                   model_params=cfg.model.params, seed=cfg.training.seed)

    @classmethod
    def train_window(cls, cfg) -> int:
        return cls.stage_config(cfg).rollout_steps + 1

    @classmethod
    def val_window(cls, cfg) -> int | None:
        return None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable_modules(self) -> list[str]:
        return ["model"]

    def inverse_weights(self, epoch: int) -> tuple[float, float]:
        """(w_enc, w_dec) at ``epoch`` from the trainer's curriculum helper."""
        from ups.training.curriculum import inverse_loss_weight

        w = inverse_loss_weight(epoch, base=self.cfg.inverse_loss_base, warmup=self.cfg.inverse_loss_warmup_epochs,
                                max_weight=self.cfg.inverse_loss_max_weight)
        return w, w

    def rng_state(self) -> dict[str, Any]:
        """The generator of the random shifts, input noise and query subsets (saved for exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.weights = self.inverse_weights(epoch)

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        w_enc, w_dec = self.inverse_weights(epoch)
        out = operator_losses(self.model, batch, cfg=self.cfg, unroll=unroll_length(self.cfg, step), w_enc=w_enc,
                              w_dec=w_dec, spatial=self.meta.spatial_shape, domain=self.domain,
                              generator=self.generator)
        out["w_inv_enc"] = torch.tensor(w_enc, dtype=torch.float64)
        out["w_inv_dec"] = torch.tensor(w_dec, dtype=torch.float64)
        out["unroll"] = torch.tensor(float(unroll_length(self.cfg, step)))
        return out

    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = next(self.model.parameters()).device
        scores = rollout_scores(self.model, loader, self.normalizer.denormalize, mode=self.cfg.rollout_mode,
                                device=device, max_principle=self.max_principle)
        return {"val_metric": scores["nrmse"], "val_rollout_nrmse": scores["nrmse"],
                "val_one_step_nrmse": scores["one_step"], "val_persistence_nrmse": scores["persistence"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        """What ``Simulator.from_run`` needs: model name and parameters, data metadata, normaliser."""
        return {"model": self.model_name, "model_params": self.model_params, "rollout_mode": self.cfg.rollout_mode,
                "max_principle": self.max_principle,
                "data_meta": self.meta.to_dict(), "normalizer": self.normalizer.to_dict()}

