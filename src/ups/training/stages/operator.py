"""Stage 1, ``operator``: encoder, operator and decoder of the latent surrogate train together.

Loss (every term mean-reduced, logged unweighted under its own name)::

    lambda_forward * L_forward + w_enc * L_inv_enc + w_dec * L_inv_dec
        + lambda_rollout * L_rollout + lambda_spectral * L_spectral

- ``L_forward``: the decoded one-step prediction against the true next field (normalised space),
  optionally plus ``latent_forward_weight * |z_pred - E(u_next)|^2``;
- ``L_inv_enc = |D(E(u)) - u|^2`` at a random subset of the points (the decoder inverts the encoder;
  normalised fields, so already scale-free);
- ``L_inv_dec = |E(D(z)) - sg(z)|^2 / var(sg(z))`` on the predicted latent (the encoder inverts the
  decoder), relative to the latent's spread so that its size does not depend on the latent's arbitrary scale;
- ``L_rollout``: steps 2..K of a K-step rollout (``rollout_mode``) decoded against the truth, with K
  growing from 1 to ``rollout_steps`` over ``rollout_ramp_steps`` optimiser steps;
- ``L_spectral``: relative spectral energy error over the spatial axes of every predicted frame.
``w_enc``/``w_dec`` follow the trainer's curriculum (0, linear ramp, base, capped); the inverse terms are
computed on every ``inverse_loss_frequency``-th batch only, and their weights are scaled down on a batch
where they would exceed ``inverse_loss_balance`` times the forward loss (the effective weights are logged
as ``w_inv_*``, the curriculum's as ``w_curriculum``). A term whose weight is 0 is not computed. Training inputs
get Gaussian noise (``input_noise``) and, on periodic domains, a random translation against the
supernode lattice (``random_shift``), which is the same as drawing the supernodes at random.
Validation: full autoregressive rollouts, scored in physical space (``val_rollout_nrmse``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.autograd.profiler import record_function

from ups.config import ExperimentConfig
from ups.data.metadata import DatasetMetadata
from ups.data.pdes import has_maximum_principle
from ups.errors import ConfigError
from ups.models import MODELS
from ups.rollout import decode_frames, flatten_points, frames_per_step, parse_mode, rollout_scores
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
    # rollouts in training unrolls, validation and every later use of the run: "reencode", "latent", or
    # "reencode_xR" (the state on a grid R times finer than the data's; training unrolls re-encode at the data points)
    rollout_mode: str = "reencode"
    max_principle: bool = True  # keep rollouts in the initial range when the PDE has a maximum principle
    detach_between_steps: bool = False  # pushforward trick: gradients through the last step only
    input_noise: float = Field(0.0, ge=0)  # std of the noise on the first input frame (normalised)
    random_shift: bool = True
    # with random_shift: samples whose points are translates of each other land on one point set (shared geometry).
    # Burgers at 900 s: 23 % more steps, test rollout nRMSE 0.0087 against 0.0102; KS at 300 s: 14 % more steps,
    # correlation time 216 against 206 steps; diffusion-reaction at 150 s: 18 % more steps, 0.0062 against 0.0071
    # (on in those three configs); off by default until measured in 2D
    shared_shift: bool = False
    query_fraction: float = Field(0.5, gt=0, le=1)  # points used by L_inv_enc
    inverse_loss_frequency: int = Field(1, ge=1)  # the inverse losses on every N-th batch only (the seeds' N)
    # cap on the weighted inverse losses, as a fraction of the forward loss (None: no cap): the weights are
    # scaled down on batches where w * L_inv would exceed it, so the inverse terms never dominate
    inverse_loss_balance: float | None = Field(0.1, gt=0)

    @field_validator("rollout_mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        parse_mode(mode)  # a ConfigError naming the allowed modes
        return mode


def unroll_length(stage_cfg: OperatorStageConfig, step: int) -> int:
    """K at optimiser step ``step``: 1 at the start, ``rollout_steps`` after ``rollout_ramp_steps``."""
    if stage_cfg.rollout_ramp_steps == 0:
        return stage_cfg.rollout_steps
    frac = min(1.0, step / stage_cfg.rollout_ramp_steps)
    return 1 + int(frac * (stage_cfg.rollout_steps - 1) + 1e-9)


def spectral_error(pred: torch.Tensor, true: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Relative spectral energy error over the spatial axes, averaged over the other axes.

    pred, true: [B, T, N, C] with N = prod(spatial) points of a regular grid -> scalar.
    """
    dims = tuple(range(2, 2 + len(spatial)))
    shape = pred.shape[:2] + tuple(spatial) + pred.shape[-1:]
    e_pred = torch.fft.rfftn(pred.reshape(shape), dim=dims).abs().pow(2)
    e_true = torch.fft.rfftn(true.reshape(shape), dim=dims).abs().pow(2)
    return ((e_pred - e_true).abs().sum(dims) / e_true.sum(dims).clamp_min(1e-8)).mean()


def random_translation(coords: torch.Tensor, domain: torch.Tensor, generator: torch.Generator | None,
                       shared: bool = False) -> torch.Tensor:
    """Shift every sample's points by one random vector, wrapped into the periodic box.

    coords: [B, N, d]; domain: [d, 2] (lo, hi) -> [B, N, d]. shared: when the samples' points are translates of each
    other (a strided grid at per-sample sub-cell offsets), every sample is moved onto the first one's shifted points:
    each sample's shift is still uniform on the box, and the batch shares one point set, so the model computes its
    geometry once (``ups.models.layers.shared_rows``). Other point sets get independent shifts as without it.
    """
    lo, hi = domain[:, 0].to(coords), domain[:, 1].to(coords)
    shift = torch.rand(coords.shape[0], 1, coords.shape[-1], generator=generator).to(coords) * (hi - lo)
    if shared:
        rel = coords - coords[:, :1]
        if coords.shape[0] > 1 and torch.allclose(rel, rel[:1].expand_as(rel), atol=1e-6):
            return (lo + torch.remainder(coords[:1] - lo + shift[:1], hi - lo)).expand_as(coords).contiguous()
    return lo + torch.remainder(coords - lo + shift, hi - lo)


def encode_points(model: nn.Module, u: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``model.encode`` of u [B, N, C] at x [B, N, d], passing the point mask [B, N] only when there is one
    (latent models that never see point clouds need not take it) -> z [B, L, D]."""
    return model.encode(u, x) if mask is None else model.encode(u, x, mask)


def _unroll(model: nn.Module, u0: torch.Tensor, x: torch.Tensor, params: torch.Tensor, dt: torch.Tensor, *,
            stage_cfg: OperatorStageConfig, unroll: int, keep_reencoded: bool,
            mask: torch.Tensor | None = None) -> dict:
    """K = ``unroll`` steps from u0 [B, N, C] at x [B, N, d] (real points: mask [B, N] or None) -> ``z0``
    [B, L, D], ``z_first`` (first predicted latent), ``preds`` [B, K * F, N, C] (F frames per step) and
    ``reencoded`` (E of the last frame of each step, when computed)."""
    z = z0 = encode_points(model, u0, x, mask)
    reencode = parse_mode(stage_cfg.rollout_mode)[0] == "reencode"
    cur, preds, reencoded = u0, [], []
    z_first = None
    for k in range(unroll):
        z_next = model.step(z, params, dt)
        z_first = z_next if k == 0 else z_first
        frames = decode_frames(model, z_next, x, cur)  # [B, F, N, C]
        preds.append(frames)
        nxt = frames[:, -1]
        if reencode and (k + 1 < unroll or keep_reencoded):
            reencoded.append(encode_points(model, nxt, x, mask))
        z = reencoded[-1] if reencode and k + 1 < unroll else z_next
        cur = nxt
        if stage_cfg.detach_between_steps and k + 1 < unroll:
            z, cur = z.detach(), cur.detach()
    return {"z0": z0, "z_first": z_first, "preds": torch.cat(preds, dim=1), "reencoded": reencoded}


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE over the real points only. pred, target: [B, ..., N, C]; mask: [B, N] bool (True = real point) or
    None (every point real: plain ``F.mse_loss``) -> scalar, the mean over real points, channels and the
    axes between."""
    if mask is None:
        return F.mse_loss(pred, target)
    weight = mask.reshape(mask.shape[0], *([1] * (pred.dim() - 3)), mask.shape[1], 1).to(pred.dtype)
    count = weight.expand_as(pred).sum()
    return ((pred - target).pow(2) * weight).sum() / count.clamp_min(1)


def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-free MSE: ``mean (pred - target)^2 / (var(target) + 1e-6)`` (target detached).

    pred, target: same shape, e.g. latents [B, L, D] -> scalar. Multiplying both by a constant leaves it
    unchanged, so the inverse-decoding loss does not depend on the arbitrary scale of the latent."""
    target = target.detach()
    return F.mse_loss(pred, target) / (target.var() + 1e-6)


def balanced_weights(forward: torch.Tensor, terms: dict[str, tuple[float, torch.Tensor]],
                     cap: float | None) -> dict[str, float]:
    """Weights of the inverse terms (name -> (weight, loss)), scaled down together so that their weighted sum
    is at most ``cap`` times the forward loss (values only; no gradient flows through the scaling)."""
    weighted = sum(w * float(v.detach()) for w, v in terms.values())
    scale = 1.0
    if cap is not None and weighted > 0:
        scale = min(1.0, cap * float(forward.detach()) / weighted)
    return {k: w * scale for k, (w, _) in terms.items()}


def operator_losses(model: nn.Module, batch: dict[str, torch.Tensor], *, stage_cfg: OperatorStageConfig, unroll: int,
                    w_enc: float, w_dec: float, spatial: tuple[int, ...], domain: torch.Tensor | None,
                    generator: torch.Generator | None = None, step: int = 0) -> dict[str, torch.Tensor]:
    """The operator-stage loss on one batch (``u`` [B, W >= unroll * F + 1, *spatial, C], F the model's frames per
    step; ``coords``, ``params`` [B, P], ``dt`` [B]; point clouds: ``u`` [B, W, N, C], ``coords`` [B, N, d] and
    ``mask`` [B, N], every term then a mean over the real points); returns the weighted total under ``loss``, each
    computed term and the effective inverse weights ``w_inv_enc`` / ``w_inv_dec``. Terms whose weight is 0 are not
    computed; the inverse terms only on every ``inverse_loss_frequency``-th ``step``."""
    u, x = flatten_points(batch["u"], batch["coords"])  # [B, W, N, C], [B, N, d]
    if domain is not None and stage_cfg.random_shift:
        x = random_translation(x, domain, generator, stage_cfg.shared_shift)
    params, dt, mask = batch["params"], batch["dt"], batch.get("mask")
    if mask is not None and stage_cfg.lambda_spectral > 0:
        raise ConfigError("lambda_spectral needs whole grids, but this batch holds point clouds (data.point_subset)")
    u0 = u[:, 0]
    if stage_cfg.input_noise > 0:
        u0 = u0 + stage_cfg.input_noise * torch.randn(u0.shape, generator=generator).to(u0)
    if step % stage_cfg.inverse_loss_frequency:
        w_enc = w_dec = 0.0
    with record_function("loss: forward + rollout"):
        r = _unroll(model, u0, x, params, dt, stage_cfg=stage_cfg, unroll=unroll,
                    keep_reencoded=w_dec > 0 or stage_cfg.latent_forward_weight > 0, mask=mask)
        pred, z_first = r["preds"], r["z_first"]  # [B, K * F, N, C], [B, L, D]
        per_step = frames_per_step(model)
        true = u[:, 1:unroll * per_step + 1]
        out = {"loss_forward": masked_mse(pred[:, :per_step], true[:, :per_step], mask)}
        out["loss_rollout"] = (masked_mse(pred[:, per_step:], true[:, per_step:], mask) if unroll > 1
                               else pred.new_zeros(()))
    if stage_cfg.latent_forward_weight > 0:
        with record_function("loss: latent"):
            # z_first holds the first step's last frame
            out["loss_latent"] = F.mse_loss(z_first, encode_points(model, u[:, per_step], x, mask).detach())
    total = stage_cfg.lambda_forward * (out["loss_forward"]
                                        + stage_cfg.latent_forward_weight * out.get("loss_latent", 0.0))
    total = total + stage_cfg.lambda_rollout * out["loss_rollout"]
    if stage_cfg.lambda_spectral > 0:
        with record_function("loss: spectral"):
            out["loss_spectral"] = spectral_error(pred, true, spatial)
        total = total + stage_cfg.lambda_spectral * out["loss_spectral"]
    inverse = {}
    if w_enc > 0:
        with record_function("loss: inv_enc"):
            n = u.shape[2]
            q = max(1, int(round(stage_cfg.query_fraction * n)))
            idx = torch.randperm(n, generator=generator)[:q].to(u.device)
            sub = None if mask is None else mask[:, idx]
            inverse["enc"] = (w_enc, masked_mse(model.decode(r["z0"], x[:, idx]), u0[:, idx], sub))
    if w_dec > 0:
        with record_function("loss: inv_dec"):
            z_re = r["reencoded"][0] if r["reencoded"] else encode_points(model, pred[:, per_step - 1], x, mask)
            inverse["dec"] = (w_dec, relative_mse(z_re, z_first))
    weights = balanced_weights(out["loss_forward"], inverse, stage_cfg.inverse_loss_balance)
    for key, (_, value) in inverse.items():
        out[f"loss_inv_{key}"] = value
        out[f"w_inv_{key}"] = torch.tensor(weights[key], dtype=torch.float64)  # after balancing
        total = total + weights[key] * value
    out["loss"] = total
    return out


@STAGES.register("operator")
class OperatorStage(Stage):
    """Trains the whole latent surrogate (module ``model``) end to end."""

    name: ClassVar[str] = "operator"
    config_class: ClassVar[type[StageConfig]] = OperatorStageConfig
    val_metric: ClassVar[str] = "val_rollout_nrmse"
    point_clouds: ClassVar[bool] = True
    mixtures: ClassVar[bool] = True  # trains on a data mixture (mixed batches, per-member validation)

    def __init__(self, *, model: nn.Module, stage_cfg: OperatorStageConfig, meta: DatasetMetadata, normalizer,
                 model_name: str, model_params: dict, seed: int = 0):
        self.model = model
        self.stage_cfg = stage_cfg
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
    def build(cls, *, stage_cfg: OperatorStageConfig, exp: ExperimentConfig, meta: DatasetMetadata, normalizer,
              run_dir: Path | None = None) -> OperatorStage:
        model_cfg = exp.model
        model = MODELS.get(model_cfg.name).from_config(meta, model_cfg.params)
        return cls(model=model, stage_cfg=stage_cfg, meta=meta, normalizer=normalizer, model_name=model_cfg.name,
                   model_params=model_cfg.params, seed=exp.training.seed)

    @classmethod
    def train_window(cls, stage_cfg: OperatorStageConfig) -> int:
        return stage_cfg.rollout_steps + 1

    def training_window(self) -> int:
        """K steps of F frames each (the model's ``frames_per_step``), plus the input frame."""
        return self.stage_cfg.rollout_steps * frames_per_step(self.model) + 1

    @classmethod
    def val_window(cls, stage_cfg: OperatorStageConfig) -> int | None:
        return None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable_modules(self) -> list[str]:
        return ["model"]

    def inverse_weights(self, epoch: int) -> tuple[float, float]:
        """(w_enc, w_dec) at ``epoch`` from the trainer's curriculum helper."""
        from ups.training.curriculum import inverse_loss_weight

        stage_cfg = self.stage_cfg
        w = inverse_loss_weight(epoch, base=stage_cfg.inverse_loss_base, warmup=stage_cfg.inverse_loss_warmup_epochs,
                                max_weight=stage_cfg.inverse_loss_max_weight)
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
        out = operator_losses(self.model, batch, stage_cfg=self.stage_cfg, unroll=unroll_length(self.stage_cfg, step),
                              w_enc=w_enc, w_dec=w_dec, spatial=self.meta.spatial_shape, domain=self.domain,
                              generator=self.generator, step=step)
        out["w_curriculum"] = torch.tensor(w_enc, dtype=torch.float64)  # before balancing and frequency
        out["unroll"] = torch.tensor(float(unroll_length(self.stage_cfg, step)))
        return out

    def validate(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        device = next(self.model.parameters()).device
        scores = rollout_scores(self.model, loader, self.normalizer.denormalize, mode=self.stage_cfg.rollout_mode,
                                device=device, max_principle=self.max_principle)
        names = (self.meta.extra.get("mixture") or {}).get("names", [])  # a data mixture: per-member scores too
        per_member = {f"val_rollout_nrmse_{names[m]}": v["nrmse"] for m, v in scores.get("per_member", {}).items()}
        return {"val_metric": scores["nrmse"], "val_rollout_nrmse": scores["nrmse"],
                "val_one_step_nrmse": scores["one_step"], "val_persistence_nrmse": scores["persistence"], **per_member}

    def checkpoint_meta(self) -> dict[str, Any]:
        """What ``Simulator.from_run`` needs: model name and parameters, data metadata, normaliser."""
        return {"model": self.model_name, "model_params": self.model_params,
                "rollout_mode": self.stage_cfg.rollout_mode,
                "max_principle": self.max_principle,
                "data_meta": self.meta.to_dict(), "normalizer": self.normalizer.to_dict()}

