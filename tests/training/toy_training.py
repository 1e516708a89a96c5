"""A toy stage for the trainer tests: a tiny encoder/head/decoder MLP on synthetic regression data.

Batches are dicts ``x [B, 4]``, ``y [B, 1]``. ``y = sin(x @ a) @ b + noise`` (fixed seeds). The
stage reports ``loss_forward`` (MSE of ``head(encoder(x))`` against ``y``) and ``loss_inv_enc``
(MSE of ``decoder(encoder(x))`` against ``x``), weighted by the curriculum helper, so every health
field is exercised. A frozen ``teacher`` module checks that frozen weights never change.

Run as a script (the SIGTERM test): ``python toy_training.py RUN_DIR JSON_OVERRIDES [--resume]``;
prints the summary as JSON, exits 130 when interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ups.config import TrainingConfig
from ups.training.curriculum import inverse_loss_weight
from ups.training.runs import TrainingInterrupted
from ups.training.stage import Stage
from ups.training.trainer import Trainer


class ToyData(Dataset):
    """``n`` samples of ``x [4]``, ``y [1]`` from a fixed random nonlinear map plus noise."""

    def __init__(self, n: int, *, seed: int, noise: float = 0.05):
        g = torch.Generator().manual_seed(1234)  # the same map for every split
        a, b = torch.randn(4, 8, generator=g), torch.randn(8, 1, generator=g) / 3
        gs = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=gs)
        self.y = torch.sin(self.x @ a) @ b + noise * torch.randn(n, 1, generator=gs)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def loaders(n_train: int = 64, n_val: int = 64, batch_size: int = 8, shuffle: bool = True
            ) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(ToyData(n_train, seed=1), batch_size=batch_size, shuffle=shuffle)
    val = DataLoader(ToyData(n_val, seed=2), batch_size=32, shuffle=False)
    return train, val


class FakeClock:
    """A clock for the trainer that only moves when told (each toy loss advances it by ``tick`` seconds)."""

    def __init__(self, start: float = 0.0, *, tick: float = 0.0):
        self.now, self.tick = float(start), float(tick)

    def __call__(self) -> float:
        return self.now

    def advance(self) -> None:
        self.now += self.tick


class ToyStage(Stage):
    name = "toy"

    def __init__(self, *, seed: int = 0, width: int = 16, inv_base: float = 0.1, inv_warmup: int = 1,
                 inv_max: float = 1.0, val_script: list[float] | None = None, sleep_s: float = 0.0,
                 dropout: float = 0.0, clock: FakeClock | None = None):
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Dropout(dropout))
        self.head = nn.Linear(width, 1)
        self.decoder = nn.Linear(width, 4)
        self.teacher = nn.Linear(4, 1)
        self.inv = {"base": inv_base, "warmup": inv_warmup, "max_weight": inv_max}
        self.val_script, self.sleep_s, self.clock = val_script, sleep_s, clock
        self.validations = 0
        self.trainable = ["encoder", "head", "decoder"]

    @classmethod
    def build(cls, *, stage_cfg, exp, meta=None, normalizer=None, run_dir=None) -> ToyStage:
        return cls(seed=exp.training.seed)

    @classmethod
    def train_window(cls, stage_cfg) -> None:
        return None  # items are (x, y) pairs, not frames

    @classmethod
    def val_window(cls, stage_cfg) -> None:
        return None

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "head": self.head, "decoder": self.decoder, "teacher": self.teacher}

    def trainable_modules(self) -> list[str]:
        return list(self.trainable)

    def loss(self, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.clock is not None:
            self.clock.advance()
        z = self.encoder(batch["x"])
        self.autocast_dtype = z.dtype  # bf16/fp16 under autocast
        self.teacher_training = self.teacher.training
        forward = ((self.head(z) - batch["y"]) ** 2).mean()
        inv = ((self.decoder(z) - batch["x"]) ** 2).mean()
        weight = inverse_loss_weight(epoch, **self.inv)
        return {"loss": forward + weight * inv, "loss_forward": forward, "loss_inv_enc": inv}

    def validate(self, loader) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in loader:
            pred = self.head(self.encoder(batch["x"]))
            total += float(((pred - batch["y"]) ** 2).sum())
            n += len(batch["y"])
        self.validations += 1
        val_loss = total / n
        if self.val_script is not None:
            return {"val_metric": self.val_script[self.validations - 1], "val_loss": val_loss}
        return {"val_metric": val_loss, "val_loss": val_loss}

    def checkpoint_meta(self) -> dict:
        return {"model": "toy_mlp", "width": self.head.in_features}


def toy_config(**overrides) -> TrainingConfig:
    base = {"epochs": 6, "lr": 3e-3, "device": "cpu", "progress": "none", "health_every": 4, "ema_decay": None,
            "warmup_steps": 4, "seed": 0, "inverse_ratio_warn": 100.0}
    return TrainingConfig(**{**base, **overrides})


def weights(stage: ToyStage) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.detach().clone() for m, mod in stage.modules().items() for k, v in mod.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def run_toy(run_dir: Path, *, resume: bool = False, stage_kw: dict | None = None, data_kw: dict | None = None,
            log_prefix: str | None = None, clock: FakeClock | None = None,
            **train_overrides) -> tuple[ToyStage, dict]:
    """Train a fresh toy stage (seeded) and return it with the trainer's summary (``clock``: the trainer's
    clock, advanced by the stage's loss)."""
    torch.manual_seed(0)
    stage = ToyStage(**(stage_kw or {}), clock=clock)
    train, val = loaders(**(data_kw or {}))
    trainer = Trainer(stage=stage, config=toy_config(**train_overrides), run_dir=run_dir, resume=resume,
                      log_prefix=log_prefix, clock=clock)
    summary = trainer.fit(train, val)
    return stage, summary


def main(argv: list[str]) -> int:
    run_dir, overrides = Path(argv[0]), json.loads(argv[1])
    stage_kw = overrides.pop("stage_kw", {})
    try:
        stage, summary = run_toy(run_dir, resume="--resume" in argv, stage_kw=stage_kw, **overrides)
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    torch.save(weights(stage), run_dir / "final_weights.pt")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
