"""Training health: what the trainer logs every ``health_every`` steps and every epoch, and warnings.

A record (one line of ``train_log.jsonl``) holds ``HEALTH_FIELDS``: the mean total loss and the mean of
each loss component, mean and max pre-clip gradient norm, the fraction of optimizer steps that were
clipped, the batches skipped for a non-finite loss and the steps skipped for a non-finite gradient
norm, the learning rate (first group; ``lrs`` has every group), the scaler scale (1.0 without fp16
scaling), and the ratio of the summed inverse losses (``loss_inv_*``, each times its weight ``w_inv_*``
when the stage logs one: what the optimiser actually sees) to ``loss_forward`` when the stage reports
both (else null). Warnings are separate records with a ``warning`` field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

HEALTH_FIELDS = ("loss", "components", "grad_norm_mean", "grad_norm_max", "clip_ratio", "skipped_batches",
                 "skipped_steps", "lr", "lrs", "scaler_scale", "inverse_forward_ratio")


@dataclass
class _Totals:
    """Running sums over a window (health interval or epoch)."""

    loss_sum: float = 0.0
    batches: int = 0
    components: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # batches that reported each component
    grad_sum: float = 0.0
    grad_max: float = 0.0
    steps: int = 0  # optimizer steps taken (finite gradient norm)
    clipped: int = 0
    skipped_batches: int = 0
    skipped_steps: int = 0

    def summary(self) -> dict[str, Any]:
        # each component is averaged over the batches that computed it (a stage may compute a term on
        # every N-th batch only, e.g. the operator stage's inverse losses)
        comps = {k: v / self.counts.get(k, self.batches) for k, v in self.components.items()} if self.batches else {}
        forward = comps.get("loss_forward")
        inverse = [v * comps.get("w_inv" + k[len("loss_inv"):], 1.0) for k, v in comps.items()
                   if k.startswith("loss_inv")]
        ratio = sum(inverse) / forward if forward and inverse and forward > 0 else None
        return {
            "loss": self.loss_sum / self.batches if self.batches else None,
            "components": comps,
            "grad_norm_mean": self.grad_sum / self.steps if self.steps else None,
            "grad_norm_max": self.grad_max if self.steps else None,
            "clip_ratio": self.clipped / self.steps if self.steps else 0.0,
            "steps_taken": self.steps,
            "skipped_batches": self.skipped_batches,
            "skipped_steps": self.skipped_steps,
            "inverse_forward_ratio": ratio,
        }


class HealthMonitor:
    """Accumulates per-batch losses and per-step gradient norms into window and epoch summaries."""

    def __init__(self, *, stage: str, grad_norm_warn: float, clip_ratio_warn: float, inverse_ratio_warn: float):
        self.stage = stage
        self.thresholds = {"grad_norm": grad_norm_warn, "clip_ratio": clip_ratio_warn,
                           "inverse_ratio": inverse_ratio_warn}
        self.window, self.epoch = _Totals(), _Totals()

    def _both(self):
        return (self.window, self.epoch)

    def add_loss(self, parts: dict[str, float]) -> None:
        """``parts``: the stage's loss dict as floats (``loss`` + components) of one finite batch."""
        for t in self._both():
            t.loss_sum += parts["loss"]
            t.batches += 1
            for key, value in parts.items():
                if key != "loss":
                    t.components[key] = t.components.get(key, 0.0) + value
                    t.counts[key] = t.counts.get(key, 0) + 1

    def add_skipped_batch(self) -> None:
        for t in self._both():
            t.skipped_batches += 1

    def add_step(self, grad_norm: float, *, clipped: bool) -> None:
        """A step with a finite pre-clip gradient norm (``math.inf``/NaN: use :meth:`add_skipped_step`)."""
        for t in self._both():
            t.grad_sum += grad_norm
            t.grad_max = max(t.grad_max, grad_norm)
            t.steps += 1
            t.clipped += int(clipped)

    def add_skipped_step(self) -> None:
        for t in self._both():
            t.skipped_steps += 1

    def _record(self, totals: _Totals, kind: str, context: dict[str, Any]) -> dict[str, Any]:
        return {"stage": self.stage, "kind": kind, **context, **totals.summary()}

    def window_record(self, context: dict[str, Any]) -> dict[str, Any]:
        """Summary since the last window record (``context``: epoch, step, lr, lrs, scaler_scale...)."""
        record = self._record(self.window, "health", context)
        self.window = _Totals()
        return record

    def epoch_record(self, context: dict[str, Any]) -> dict[str, Any]:
        record = self._record(self.epoch, "epoch", context)
        self.window, self.epoch = _Totals(), _Totals()
        return record

    def warnings(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Warning records for the conditions ``record`` meets (clip ratio: epoch records only)."""
        checks = [("grad_norm", record.get("grad_norm_max"), "max gradient norm"),
                  ("inverse_ratio", record.get("inverse_forward_ratio"), "inverse/forward loss ratio")]
        if record["kind"] == "epoch":
            checks.append(("clip_ratio", record.get("clip_ratio"), "clip ratio"))
        out = []
        for name, value, what in checks:
            limit = self.thresholds[name]
            if value is not None and math.isfinite(value) and value > limit:
                message = (f"{self.stage} epoch {record['epoch']} step {record['step']}: {what} "
                           f"{value:.4g} > {limit:.4g}")
                out.append({"stage": self.stage, "kind": "warning", "warning": message, "condition": name,
                            "value": value, "threshold": limit, "epoch": record["epoch"], "step": record["step"]})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"window": asdict(self.window), "epoch": asdict(self.epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window, self.epoch = _Totals(**state["window"]), _Totals(**state["epoch"])
