"""The loop: model selection on the validation metric, early stopping, budgets, freezing, accumulation,
schedulers, optimizers, EMA."""

import pytest
import torch
import toy_training as toy

from ups import checkpoint as ckpt
from ups.errors import ConfigError, UPSError
from ups.training.ema import EMA
from ups.training.optim import warmup_cosine_factor
from ups.training.runs import JsonlLog
from ups.training.trainer import Trainer


def _epochs(run_dir):
    return [r for r in JsonlLog.read(run_dir / "train_log.jsonl") if r["kind"] == "epoch"]


class Snapshots(Trainer):
    """Keeps the weights the trainer validated at each epoch end (hook: ``on_epoch_end``)."""

    def on_epoch_end(self, val):
        ctx = self.ema.applied() if self.ema is not None else torch.no_grad()
        with ctx:
            self.snapshots = getattr(self, "snapshots", []) + [toy.weights(self.stage)]
        super().on_epoch_end(val)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_model_selection_uses_the_validation_metric(tmp_path, ema_decay):
    script = [3.0, 2.5, 2.0, 1.0, 2.8]  # best at epoch 3; the training loss is lowest at epoch 1
    torch.manual_seed(0)
    stage = toy.ToyStage(val_script=script)
    train, val = toy.loaders()
    trainer = Snapshots(stage=stage, config=toy.toy_config(epochs=5, ema_decay=ema_decay), run_dir=tmp_path)
    summary = trainer.fit(train, val)
    losses = [r["loss"] for r in _epochs(tmp_path)]
    assert losses.index(min(losses)) != 3  # the training loss would have chosen another epoch
    assert summary["best_epoch"] == 3 and summary["best_metric"] == 1.0
    meta = ckpt.read_checkpoint_meta(tmp_path / "checkpoints" / "toy_best")
    assert meta["epoch"] == 3 and meta["val_metric"] == 1.0 and meta["model"] == "toy_mlp"
    assert meta["weights"] == ("ema" if ema_decay else "live")
    fresh = toy.ToyStage(seed=7)
    ckpt.load_checkpoint(tmp_path / "checkpoints" / "toy_best", fresh.modules())
    assert toy.max_abs_diff(toy.weights(fresh), trainer.snapshots[3]) == 0.0
    ckpt.load_checkpoint(tmp_path / "checkpoints" / "toy_last", fresh.modules())
    assert toy.max_abs_diff(toy.weights(fresh), toy.weights(stage)) == 0.0  # last = live weights
    assert (tmp_path / "checkpoints" / "toy_ema.safetensors").is_file() == bool(ema_decay)


def test_early_stopping_and_target(tmp_path):
    _, s = toy.run_toy(tmp_path / "a", epochs=10, early_stopping_patience=2,
                       stage_kw={"val_script": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]})
    assert (s["status"], s["epochs"], s["best_epoch"]) == ("early_stopped", 3, 0)
    _, s = toy.run_toy(tmp_path / "b", epochs=10, target_metric=1.5,
                       stage_kw={"val_script": [3, 1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]})
    assert (s["status"], s["epochs"], s["best_metric"]) == ("target_reached", 2, 1.0)


def test_max_steps_and_time_budget_stop_cleanly(tmp_path):
    _, s = toy.run_toy(tmp_path / "steps", epochs=10, max_steps=10)
    assert (s["status"], s["step"], s["epochs"]) == ("max_steps", 10, 2)
    assert s["last_val"] is not None  # the partial epoch is validated and checkpointed
    assert ckpt.read_checkpoint_meta(tmp_path / "steps" / "checkpoints" / "toy_last")["step"] == 10
    # an injected clock that advances 0.125 s per batch: the 1.0 s budget is spent by step 8 (8 batches/epoch)
    _, s = toy.run_toy(tmp_path / "time", epochs=100, time_budget_s=1.0, clock=toy.FakeClock(tick=0.125))
    assert (s["status"], s["step"], s["epochs"]) == ("time_budget", 8, 1)
    ticks_accounted = round(s["elapsed_s"] / 0.125)  # the budget counts the fake clock's ticks, one per batch
    assert ticks_accounted == 8


def test_frozen_modules_do_not_change_and_stay_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    stage = toy.ToyStage()
    teacher = {k: v.clone() for k, v in stage.teacher.state_dict().items()}
    trainer = Trainer(stage=stage, config=toy.toy_config(epochs=1), run_dir=tmp_path)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["encoder", "head", "decoder"]
    trainer.fit(*toy.loaders())
    assert not any(p.requires_grad for p in stage.teacher.parameters())
    assert all(torch.equal(v, teacher[k]) for k, v in stage.teacher.state_dict().items())
    assert stage.teacher_training is False and stage.encoder.training


def _sgd_plain(**kw):
    return {"epochs": 2, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 0.05,
            "scheduler": "none", "warmup_steps": 0, "grad_clip": None, **kw}


@pytest.mark.parametrize(("n", "small", "accum", "big"), [(64, 8, 2, 16), (24, 8, 4, 24)])
def test_gradient_accumulation_equals_a_big_batch(tmp_path, n, small, accum, big):
    # (24, 8, 4): a short last group of 3 batches is averaged over the 3 it has
    a, _ = toy.run_toy(tmp_path / "a", data_kw={"n_train": n, "batch_size": small, "shuffle": False},
                       **_sgd_plain(grad_accum=accum))
    b, _ = toy.run_toy(tmp_path / "b", data_kw={"n_train": n, "batch_size": big, "shuffle": False}, **_sgd_plain())
    assert toy.max_abs_diff(toy.weights(a), toy.weights(b)) < 1e-6


def test_plateau_scheduler_halves_lr_after_patience_and_cooldown(tmp_path):
    toy.run_toy(tmp_path, epochs=11, scheduler="plateau", lr=1e-3, stage_kw={"val_script": [1.0] * 11})
    lrs = [r["lr"] for r in _epochs(tmp_path)]
    # patience 3: the 4th bad epoch (4) halves it; cooldown 1 then 4 more bad epochs (6..9) halve it again
    assert lrs == pytest.approx([1e-3] * 5 + [5e-4] * 5 + [2.5e-4])


def test_step_scheduler_and_cosine_with_warmup(tmp_path):
    toy.run_toy(tmp_path / "step", epochs=6, scheduler="step", step_size=2, step_gamma=0.5, lr=1e-3)
    assert [r["lr"] for r in _epochs(tmp_path / "step")] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert warmup_cosine_factor(0, warmup=4, total=100, min_ratio=0.1) == pytest.approx(0.25)
    assert warmup_cosine_factor(3, warmup=4, total=100, min_ratio=0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(52, warmup=4, total=100, min_ratio=0.1) == pytest.approx(0.55)
    assert warmup_cosine_factor(100, warmup=4, total=100, min_ratio=0.1) == pytest.approx(0.1)
    toy.run_toy(tmp_path / "cos", epochs=2, lr=1e-3, warmup_steps=4, min_lr_ratio=0.1, health_every=1)
    lrs = [r["lr"] for r in JsonlLog.read(tmp_path / "cos" / "train_log.jsonl") if r["kind"] == "health"]
    expected = [1e-3 * warmup_cosine_factor(k, warmup=4, total=16, min_ratio=0.1) for k in range(16)]
    assert lrs == pytest.approx(expected)


def test_cosine_anneals_on_the_wall_clock_when_the_budget_binds(tmp_path):
    # the step fraction (0.1) is behind the clock (0.5): the clock sets the progress, 0.1 + 0.9 * 0.5
    assert warmup_cosine_factor(14, warmup=4, total=104, min_ratio=0.1, clock=lambda: 0.5) == pytest.approx(0.55)
    assert warmup_cosine_factor(54, warmup=4, total=104, min_ratio=0.1, clock=lambda: 0.0) == pytest.approx(0.55)
    assert warmup_cosine_factor(5, warmup=4, total=104, min_ratio=0.1, clock=lambda: 3.0) == pytest.approx(0.1)
    # a budget far shorter than the step horizon: the last logged LR is already near the floor
    # (an injected clock: 1/64 s per batch, so the 0.5 s budget ends at step 32 whatever the machine's load)
    kw = {"epochs": 1000, "lr": 1e-3, "min_lr_ratio": 0.1, "time_budget_s": 0.5, "health_every": 1,
          "warmup_steps": 0}
    _, s = toy.run_toy(tmp_path / "t", clock=toy.FakeClock(tick=1 / 64), **kw)
    lrs = [r["lr"] for r in JsonlLog.read(tmp_path / "t" / "train_log.jsonl") if r["kind"] == "health"]
    assert (s["status"], s["step"]) == ("time_budget", 32)
    expected = [1e-3 * warmup_cosine_factor(k, warmup=0, total=8000, min_ratio=0.1, clock=lambda k=k: k / 32)
                for k in range(32)]
    assert lrs == pytest.approx(expected) and lrs[0] > 9e-4 and lrs[-1] < 1.5e-4
    _, s = toy.run_toy(tmp_path / "off", anneal_on_time_budget=False, clock=toy.FakeClock(tick=1 / 64), **kw)
    lrs = [r["lr"] for r in JsonlLog.read(tmp_path / "off" / "train_log.jsonl") if r["kind"] == "health"]
    assert lrs[-1] > 9e-4  # steps alone: 1000 epochs are far away


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                            ("sgd", torch.optim.SGD)])
def test_optimizer_selection(tmp_path, name, cls):
    trainer = Trainer(stage=toy.ToyStage(), config=toy.toy_config(optimizer=name), run_dir=tmp_path)
    assert type(trainer.optimizer) is cls


def test_ema_follows_the_formula_and_swaps_back():
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA({"m": lin}, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update()  # decay min(0.5, 1/10) = 0.1: shadow = 0.1*0 + 0.9*1
    assert float(ema.shadow["m.weight"]) == pytest.approx(0.9)
    ema.update()  # decay min(0.5, 2/11): shadow = 2/11*0.9 + 9/11*1
    assert float(ema.shadow["m.weight"]) == pytest.approx(2 / 11 * 0.9 + 9 / 11)
    with ema.applied():
        assert lin.weight.item() == pytest.approx(ema.shadow["m.weight"].item())
    assert torch.equal(lin.weight, torch.ones_like(lin.weight))  # the swap restores the very tensor fill_ set
    other = EMA({"m": torch.nn.Linear(1, 1, bias=False)}, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2 and torch.equal(other.shadow["m.weight"], ema.shadow["m.weight"])


def test_stage_mistakes_are_one_line_errors(tmp_path):
    stage = toy.ToyStage()
    stage.trainable = ["encoder", "nope"]
    with pytest.raises(ConfigError, match=r"trainable modules \['nope'\]"):
        Trainer(stage=stage, config=toy.toy_config(), run_dir=tmp_path)

    class NoMetric(toy.ToyStage):
        def validate(self, loader):
            return {"val_loss": 1.0}

    with pytest.raises(UPSError, match="returned no 'val_metric'"):
        Trainer(stage=NoMetric(), config=toy.toy_config(epochs=1), run_dir=tmp_path).fit(*toy.loaders())


def test_zero_epochs_is_a_clean_skip(tmp_path):
    _, s = toy.run_toy(tmp_path, epochs=0)
    assert s["status"] == "skipped" and s["step"] == 0 and s["best_metric"] is None
    assert not (tmp_path / "checkpoints" / "toy_last.safetensors").exists()
