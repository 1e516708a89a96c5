"""The one generic trainer: every stage runs on it (``ups.training.stage`` has the Stage contract).

``Trainer(stage=..., config=..., run_dir=...).fit(train_loader, val_loader)`` owns the loop: epochs,
gradient accumulation, optimizer and LR schedule (``optim``), mixed precision and the stability
contract, EMA (``ema``), health records and warnings (``health``), checkpoints and resume
(``checkpoint``), signals, progress and W&B (``runs``). Behaviour is extended by subclassing the hook
methods: ``train_one_epoch``, ``train_one_batch``, ``optimizer_step``, ``validate``, ``on_epoch_end``,
``save_checkpoints``.

Choices worth knowing:
- Validation, model selection and ``{stage}_best`` use the EMA weights when EMA is on (they are the
  weights a user would deploy); ``{stage}_last`` holds the live weights (training resumes from them),
  ``{stage}_ema`` the EMA weights at the last checkpoint. Validation runs without autocast.
- A fresh ``fit`` seeds torch, numpy and ``random`` with ``config.seed`` (build the stage's modules
  after seeding yourself if their initialisation must be reproducible too).
- ``step`` counts optimizer-step boundaries, including skipped ones; the LR schedule advances on each.
  A group of accumulated batches whose losses were all non-finite makes no step at all.
- Stop conditions (``max_steps``, ``time_budget_s``) are checked after each optimizer step; the
  current epoch is then validated and checkpointed, so a run stops cleanly slightly after its budget.
- SIGINT/SIGTERM: at the next step boundary ``last`` and the training state are saved and
  :class:`~ups.training.runs.TrainingInterrupted` is raised (the CLI exits 130 with its message).
- Resume restores weights (kept inside the atomically written state file, so they always match it),
  optimizer, schedule, scaler, EMA, health accumulators, counters, the wall-clock seconds spent (the
  time budget and the clock-annealed schedule continue where they were) and the RNG states: global,
  the loader's own generators (``DataLoader.generator``, its sampler's) and the stage's
  (``Stage.rng_state``). Mid-epoch, the epoch's loader is re-created from the RNG states at the epoch
  start and the consumed batches are re-read (not trained on), so the data order and the final weights
  equal an uninterrupted run's. ``set_epoch(epoch)`` is called each epoch on everything in the loader
  that has it (sampler, batch sampler, dataset: the random sub-cell offsets change every epoch).
- ``clock`` (default :data:`default_clock`, ``time.monotonic``) is the only clock the trainer reads.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ups import checkpoint as ckpt
from ups.config import TrainingConfig
from ups.data.datasets import set_loader_epoch
from ups.errors import ConfigError, UPSError
from ups.io_utils import check_free_disk
from ups.models.compile import compiled
from ups.training import distributed
from ups.training.ema import EMA
from ups.training.health import HealthMonitor
from ups.training.optim import Precision, build_optimizer, build_scheduler, clip_gradients
from ups.training.preflight import check_memory
from ups.training.runs import JsonlLog, Reporter, RunDir, SignalFlag, TrainingInterrupted, WandbLogger, is_main_process
from ups.training.stage import Stage

default_clock: Callable[[], float] = time.monotonic  # the trainer's clock unless one is passed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch dict/list to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class DeviceLoader:
    """Iterates a loader and moves each batch to ``device`` (what ``Stage.validate`` receives)."""

    def __init__(self, loader: Iterable, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator:
        return (to_device(b, self.device) for b in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


class Trainer:
    """Trains one stage; see the module docstring. ``fit`` returns the final summary dict."""

    def __init__(self, *, stage: Stage, config: TrainingConfig, run_dir: str | Path, resume: bool = False,
                 log_prefix: str | None = None, clock: Callable[[], float] | None = None):
        self.stage, self.train_cfg, self.resume = stage, config, resume
        self.clock = clock or default_clock  # seconds; injectable so tests can check the budget accounting
        self.name = stage.name
        self.run = RunDir(Path(run_dir))
        self.prefix = log_prefix or stage.name
        self.device = resolve_device(config.device)
        self.reporter = Reporter(config.progress)
        self.log = JsonlLog(self.run.log_path)
        self.modules = stage.modules()
        self.trainable = list(stage.trainable_modules())
        unknown = sorted(set(self.trainable) - set(self.modules))
        if unknown:
            raise ConfigError(f"stage '{self.name}' declares trainable modules {unknown} it does not have "
                              f"(modules: {sorted(self.modules)})")
        for name, module in self.modules.items():
            module.requires_grad_(name in self.trainable)
        stage.to(self.device)
        distributed.broadcast_modules(self.modules.values())  # every rank starts from rank 0's weights
        self.optimizer = build_optimizer(self.modules, self.trainable, config)
        self.precision = Precision(config.precision, self.device, warn=self.reporter.warn)
        trained = {n: self.modules[n] for n in self.trainable}
        self.ema = EMA(trained, decay=config.ema_decay) if config.ema_decay else None
        self.sync = distributed.GradientSync(trainable=trained)
        self.monitor = HealthMonitor(stage=self.name, grad_norm_warn=config.grad_norm_warn,
                                     clip_ratio_warn=config.clip_ratio_warn,
                                     inverse_ratio_warn=config.inverse_ratio_warn)
        self.scheduler = None
        self.wandb: WandbLogger | None = None
        self.epoch = self.batch_in_epoch = self.step = self.global_batch = 0
        self.skipped_batches = self.skipped_steps = self.bad_validations = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.last_val: dict[str, float] | None = None
        self.elapsed_s = 0.0
        self.stop_reason: str | None = None
        self._accum = 0
        self._last_lrs: dict[str, float] = {}
        self._epoch_start_rng: dict | None = None
        self._epoch_start_loader_rng: list[torch.Tensor] = []
        self._train_loader: Iterable | None = None
        self._signals = SignalFlag()
        self._warned: set[tuple[str, int]] = set()
        self._postfix: dict[str, str] = {}
        self._t0 = self.clock()

    # ------------------------------------------------------------------------------ the loop
    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None) -> dict[str, Any]:
        """Train until ``epochs``, early stopping, target, ``max_steps`` or ``time_budget_s``."""
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg, self._total_steps(train_loader),
                                         clock=self._budget_fraction if self.train_cfg.time_budget_s else None)
        if not self.resume:
            ckpt.seed_everything(self.train_cfg.seed)
        resume_rng = self._restore(train_loader) if self.resume else None
        check_free_disk(self.run.checkpoints, ckpt.estimate_checkpoint_bytes(self.modules),
                        f"the checkpoints of stage '{self.name}'")
        if self.train_cfg.distributed.preflight:
            check_memory(self, train_loader, move=to_device)
        distributed.decorrelate_rngs(self.stage, seed=self.train_cfg.seed, step=self.step)
        self.wandb = WandbLogger(self.train_cfg.wandb, prefix=self.prefix, run_dir=self.run.path,
                                 config=self.train_cfg.model_dump(mode="json"), reporter=self.reporter)
        self._t0 = self.clock() - self.elapsed_s
        self._train_loader = train_loader
        with self._signals, compiled(self.modules, enabled=self.train_cfg.compile, device=self.device,
                                     cache=self.train_cfg.compile_cache, warn=self.reporter.warn):
            while self.epoch < self.train_cfg.epochs and self.stop_reason is None:
                self.stage.on_epoch_start(self.epoch)
                self._set_train_mode(True)
                self.train_one_epoch(train_loader, resume_rng=resume_rng)
                resume_rng = None
                due = (self.epoch + 1) % self.train_cfg.val_every == 0 or self.epoch + 1 == self.train_cfg.epochs
                val = self.validate(val_loader) if (due or self.stop_reason) else None
                self.on_epoch_end(val)
                self._check_interrupt()
        return self.summary()

    def train_one_epoch(self, loader: Iterable, *, resume_rng: dict | None = None) -> None:
        """One pass over ``loader`` (from batch ``batch_in_epoch`` when resuming mid-epoch)."""
        set_loader_epoch(loader, self.epoch)
        if resume_rng is not None:
            ckpt.restore_rng(resume_rng["epoch_start"])
            ckpt.load_loader_rng(loader, resume_rng["loader_epoch_start"])
        self._epoch_start_rng = ckpt.capture_rng()
        self._epoch_start_loader_rng = ckpt.loader_rng(loader)
        iterator = iter(loader)
        if resume_rng is not None:
            for _ in range(self.batch_in_epoch):
                next(iterator)
            ckpt.restore_rng(resume_rng["current"])
            ckpt.load_loader_rng(loader, resume_rng["loader_current"])
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        self.reporter.start_epoch(total, f"{self.prefix} {self.epoch + 1}/{self.train_cfg.epochs}")
        try:
            for batch in iterator:
                self.train_one_batch(batch)
                self.batch_in_epoch += 1
                self.reporter.advance(self._postfix)
                if self.batch_in_epoch % self.train_cfg.grad_accum == 0:
                    self.optimizer_step()
                    if self._after_step():
                        break
            else:
                if self._accum:
                    self.optimizer_step()
                    self._after_step()
        finally:
            self.reporter.end_epoch()

    def train_one_batch(self, batch: Any) -> bool:
        """Forward and backward of one batch; False when its loss was non-finite (skipped)."""
        batch = to_device(batch, self.device)
        with self.precision.autocast():
            out = self.stage.loss(batch, epoch=self.epoch, step=self.step)
        loss = out["loss"]
        if self.global_batch in self.train_cfg.faults.nan_loss_at_batch and self.train_cfg.faults.nan_loss_rank in (
                None, distributed.rank()):
            loss = loss * float("nan")
        parts = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
        parts["loss"] = float(loss.detach())
        parts, weight = self.sync.reduce_parts(parts, distributed.batch_length(batch))  # global batch's losses
        self.global_batch += 1
        if self.global_batch - 1 == self.train_cfg.faults.sigterm_at_batch:
            os.kill(os.getpid(), signal.SIGTERM)  # handled like a user's: at the next step boundary
        if not math.isfinite(parts["loss"]):
            self.skipped_batches += 1
            self.monitor.add_skipped_batch()
            self._event("nonfinite_loss", f"non-finite loss {parts['loss']} at batch {self.global_batch - 1}; "
                        "batch skipped before backward", batch=self.global_batch - 1)
            return False
        self.precision.backward(loss.float() * weight / self.train_cfg.grad_accum)
        self.monitor.add_loss(parts)
        self._accum += 1
        self._postfix["loss"] = f"{parts['loss']:.3g}"
        return True

    def optimizer_step(self) -> None:
        """Unscale, check, clip and apply the accumulated gradients (or skip them when non-finite)."""
        count, self._accum = self._accum, 0
        if count == 0:
            return
        self.sync.reduce_gradients()  # mean over the ranks, once per accumulation group (= no_sync before)
        if count < self.train_cfg.grad_accum:  # a short last group: average over the batches it has
            for p in self._params():
                p.grad.mul_(self.train_cfg.grad_accum / count)
        if self.step in self.train_cfg.faults.inf_grad_at_step:
            next(self._params()).grad.fill_(float("inf"))
        self.precision.unscale(self.optimizer)
        norm, clipped = clip_gradients(self.optimizer.param_groups, self.train_cfg.grad_clip,
                                       per_group=self.train_cfg.clip_per_group)
        if math.isfinite(norm):
            with self._lr_spike():
                self._last_lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
                self.precision.step(self.optimizer)
            if self.ema is not None:
                self.ema.update()
            self.monitor.add_step(norm, clipped=clipped)
            self._postfix.update(lr=f"{next(iter(self._last_lrs.values())):.2e}", grad=f"{norm:.3g}")
        else:
            before, after = self.precision.backoff()
            self.skipped_steps += 1
            self.monitor.add_skipped_step()
            self._event("nonfinite_grad", f"non-finite gradient norm at step {self.step}; step skipped, "
                        f"scale {before:g} -> {after:g}", scale_before=before, scale_after=after)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.after_step()
        self.step += 1
        if self.step % self.train_cfg.health_every == 0:
            self._emit(self.monitor.window_record(self._context()))

    def validate(self, loader: Iterable | None) -> dict[str, float] | None:
        """The stage's validation (EMA weights when enabled, eval mode, no grad, no autocast)."""
        if loader is None:
            return None
        self._set_train_mode(False)
        try:
            with (self.ema.applied() if self.ema is not None else nullcontext()), torch.no_grad():
                metrics = distributed.run_on_main(lambda: self.stage.validate(DeviceLoader(loader, self.device)))
        finally:
            self._set_train_mode(True)
        if "val_metric" not in metrics:
            raise UPSError(f"stage '{self.name}' validate() returned no 'val_metric' (got {sorted(metrics)}); "
                           "fix the stage")
        return {k: float(v) for k, v in metrics.items()}

    def on_epoch_end(self, val: dict[str, float] | None) -> None:
        """Epoch record, LR schedule, model selection, early stopping, checkpoints."""
        metric = val["val_metric"] if val else None
        self.last_val = val
        self.scheduler.after_epoch(metric)
        improved = metric is not None and math.isfinite(metric) and (
            self.best_metric is None or metric < self.best_metric)
        if improved:
            self.best_metric, self.best_epoch, self.bad_validations = metric, self.epoch, 0
            self.save_checkpoints("best")
        elif metric is not None:
            self.bad_validations += 1
            if self.best_metric is None and not self.run.has_stage(self.name, "best"):
                # a diverged validation (NaN/inf) must not leave later stages without a checkpoint: keep
                # these weights as 'best' until a finite validation replaces them, and say so
                self._event("nonfinite_validation", f"{self.name} epoch {self.epoch}: validation metric is {metric}; "
                                       "keeping these weights as best until a finite validation")
                self.save_checkpoints("best")
        record = self.monitor.epoch_record(self._context())
        record.update({**(val or {}), "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                       "improved": improved})
        self._emit(record)
        patience = self.train_cfg.early_stopping_patience
        if self.stop_reason is None and patience is not None and self.bad_validations >= patience:
            self.stop_reason = "early_stopped"
        target = self.train_cfg.target_metric
        if self.stop_reason is None and target is not None and self.best_metric is not None \
                and self.best_metric <= target:
            self.stop_reason = "target_reached"
        self.epoch += 1
        self.batch_in_epoch = 0
        self.save_checkpoints("last")

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoints(self, which: str) -> None:
        """``best``: the validated weights; ``last``: live weights, EMA weights and the training state."""
        if not is_main_process():
            return
        meta = {**self.stage.checkpoint_meta(), "stage": self.name, "epoch": self.epoch, "step": self.step,
                "val": self.last_val, "val_metric": (self.last_val or {}).get("val_metric")}
        ema_ctx = self.ema.applied() if self.ema is not None else nullcontext()
        if which == "best":
            with ema_ctx:
                ckpt.save_checkpoint(self.run.stage_stem(self.name, "best"), self.modules,
                                     {**meta, "kind": "best", "weights": "ema" if self.ema else "live"})
            return
        ckpt.save_checkpoint(self.run.stage_stem(self.name, "last"), self.modules,
                             {**meta, "kind": "last", "weights": "live"})
        if self.ema is not None:
            with ema_ctx:
                ckpt.save_checkpoint(self.run.stage_stem(self.name, "ema"), self.modules,
                                     {**meta, "kind": "ema", "weights": "ema"})
        ckpt.save_state(self.run.state_path(self.name), self._state())

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "global_batch": self.global_batch, "skipped_batches": self.skipped_batches,
            "skipped_steps": self.skipped_steps, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "bad_validations": self.bad_validations, "stop_reason": self.stop_reason,
            "elapsed_s": self.clock() - self._t0, "last_val": self.last_val,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "precision": self.precision.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "monitor": self.monitor.state_dict(), "rng": ckpt.capture_rng(),
            "epoch_start_rng": self._epoch_start_rng if self.batch_in_epoch else None,
            "epoch_start_loader_rng": self._epoch_start_loader_rng if self.batch_in_epoch else None,
            "loader_rng": ckpt.loader_rng(self._train_loader), "stage_rng": self.stage.rng_state(),
            "last_lrs": self._last_lrs, "training_config": self.train_cfg.model_dump(mode="json"),
            "modules": ckpt.module_tensors(self.modules),
        }

    def _restore(self, loader: Iterable) -> dict | None:
        """Load ``last`` + the state file; returns the RNG states a mid-epoch resume needs (else None).

        Restored here: the stage's own generators (``Stage.load_rng_state``) and, at an epoch boundary,
        the global and loader RNGs; mid-epoch ``train_one_epoch`` restores the epoch-start states,
        re-reads the consumed batches and then restores the current ones."""
        state_path = self.run.state_path(self.name)
        state = ckpt.load_state(state_path)
        # the live weights travel inside the (atomically written) state file, so they always match it
        ckpt.load_tensors(self.modules, state["modules"], source=f"training state {state_path}")
        self._check_config(state["training_config"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as err:
            raise ckpt.CheckpointError(f"training state of stage '{self.name}' in {self.run.checkpoints} does not fit "
                                       f"this optimizer/scheduler ({err}); resume with the run's own config") from None
        self.precision.load_state_dict(state["precision"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.monitor.load_state_dict(state["monitor"])
        for key in ("epoch", "batch_in_epoch", "step", "global_batch", "skipped_batches", "skipped_steps",
                    "best_metric", "best_epoch", "bad_validations", "elapsed_s", "last_val"):
            setattr(self, key, state[key])
        self._last_lrs = dict(state["last_lrs"])
        self.stop_reason = None
        self.log.truncate_after(self.name, self.step)
        self._event("resumed", f"resumed stage '{self.name}' at epoch {self.epoch} step {self.step}")
        self.stage.load_rng_state(state.get("stage_rng") or {})
        if not self.batch_in_epoch:
            ckpt.restore_rng(state["rng"])
            ckpt.load_loader_rng(loader, state.get("loader_rng"))
            return None
        return {"epoch_start": state["epoch_start_rng"], "current": state["rng"],
                "loader_epoch_start": state.get("epoch_start_loader_rng"), "loader_current": state.get("loader_rng")}

    # ------------------------------------------------------------------------------ helpers
    def _check_config(self, saved: dict[str, Any]) -> None:
        """Warn when a resumed run's training config differs in fields that change the result."""
        free = {"epochs", "max_steps", "time_budget_s", "progress", "wandb", "faults", "early_stopping_patience",
                "target_metric", "device", "health_every", "distributed"}
        now = self.train_cfg.model_dump(mode="json")
        changed = sorted(k for k in now if k not in free and saved.get(k) != now[k])
        if changed:
            self.reporter.warn(f"resuming stage '{self.name}' with changed training settings {changed}; the result "
                               "will differ from an uninterrupted run")

    def summary(self) -> dict[str, Any]:
        status = self.stop_reason or ("completed" if self.train_cfg.epochs > 0 else "skipped")
        out = {"stage": self.name, "kind": "summary", "status": status, "epochs": self.epoch, "step": self.step,
               "best_metric": self.best_metric, "best_epoch": self.best_epoch,
               "skipped_batches": self.skipped_batches, "skipped_steps": self.skipped_steps,
               "elapsed_s": round(self.clock() - self._t0, 3), "last_val": self.last_val,
               "run_dir": str(self.run.path)}
        self.log.write(out)
        return out

    def _after_step(self) -> bool:
        """Checks at a step boundary: interruption (raises), max_steps, time budget. True: stop the epoch."""
        self._check_interrupt()
        if self.train_cfg.max_steps is not None and self.step >= self.train_cfg.max_steps:
            self.stop_reason = "max_steps"
        elif self.train_cfg.time_budget_s is not None and distributed.from_main(
                self.clock() - self._t0 >= self.train_cfg.time_budget_s):  # rank 0's clock decides
            self.stop_reason = "time_budget"
        return self.stop_reason is not None

    def _budget_fraction(self) -> float:
        """Fraction of ``time_budget_s`` used so far (0 before ``fit`` starts the clock)."""
        if self._t0 is None or not self.train_cfg.time_budget_s:
            return 0.0
        return distributed.from_main((self.clock() - self._t0) / self.train_cfg.time_budget_s)

    def _check_interrupt(self) -> None:
        if not distributed.any_rank(self._signals.signum is not None):  # a signal to any rank stops all
            return
        self.save_checkpoints("last")
        distributed.barrier()  # rank 0's checkpoint is on disk before any rank exits
        signame = self._signals.name or "a signal to another rank"
        saved = self.run.stage_stem(self.name, "last").name
        self._event("interrupted", f"{signame} received; saved {saved} at step {self.step}")
        error = TrainingInterrupted(self.run.path, self.name, self.step)
        self.reporter.warn(str(error))
        raise error

    def _total_steps(self, loader: Iterable) -> int:
        if hasattr(loader, "__len__"):
            per_epoch = math.ceil(len(loader) / self.train_cfg.grad_accum)  # type: ignore[arg-type]
            total = per_epoch * self.train_cfg.epochs
            return min(total, self.train_cfg.max_steps) if self.train_cfg.max_steps else max(total, 1)
        if self.train_cfg.max_steps:
            return self.train_cfg.max_steps
        raise ConfigError("the training loader has no length: set training.max_steps so the LR schedule "
                          "knows its horizon")

    def _params(self) -> Iterator[torch.nn.Parameter]:
        return (p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None)

    def _set_train_mode(self, training: bool) -> None:
        for name, module in self.modules.items():
            module.train(training and name in self.trainable)

    @contextmanager
    def _lr_spike(self):
        spike = self.train_cfg.faults.lr_spike
        active = spike is not None and spike.start <= self.step < spike.start + spike.length
        saved = [g["lr"] for g in self.optimizer.param_groups]
        if active:
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * spike.factor
        try:
            yield
        finally:
            for g, lr in zip(self.optimizer.param_groups, saved):
                g["lr"] = lr

    def _context(self) -> dict[str, Any]:
        lrs = self._last_lrs or {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        return {"epoch": self.epoch, "step": self.step, "lr": next(iter(lrs.values())), "lrs": lrs,
                "scaler_scale": self.precision.scale, "elapsed_s": round(self.clock() - self._t0, 3)}

    def _event(self, event: str, message: str, **fields: Any) -> None:
        self.log.write({"stage": self.name, "kind": "event", "event": event, "epoch": self.epoch,
                        "step": self.step, "message": message, **fields})
        self.reporter.warn(message) if event.startswith("nonfinite") else self.reporter.line(message)

    def _emit(self, record: dict[str, Any]) -> None:
        """Write a health/epoch record and its warnings; print a line; send it to W&B."""
        self.log.write(record)
        for warning in self.monitor.warnings(record):
            self.log.write(warning)
            key = (warning["condition"], warning["epoch"])
            if key not in self._warned:  # print each condition once per epoch; the log has them all
                self._warned.add(key)
                self.reporter.warn(warning["warning"])
        if self.wandb is not None:
            self.wandb.log(record)
        if record["kind"] == "epoch" or self.reporter.mode == "lines":
            self.reporter.line(_format_line(record, self.prefix, self.train_cfg.epochs))


def _format_line(r: dict[str, Any], prefix: str, epochs: int) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    head = f"{prefix} epoch {r['epoch'] + 1}/{epochs}" if r["kind"] == "epoch" else f"{prefix} step"
    parts = [head, f"step {r['step']}", f"loss {num(r['loss'])}"]
    if r["kind"] == "epoch":
        parts.append(f"val {num(r.get('val_metric'))} (best {num(r.get('best_metric'))})")
    parts += [f"lr {r['lr']:.3g}", f"grad {num(r['grad_norm_mean'])}/{num(r['grad_norm_max'])}",
              f"clip {100 * r['clip_ratio']:.0f}%", f"skipped {r['skipped_batches']}b/{r['skipped_steps']}s",
              f"{r['elapsed_s']:.1f}s"]
    return " | ".join(parts)
