"""The stability contract under injected faults: NaN losses, inf gradients, LR spikes; precision modes."""

import math

import pytest
import torch
import toy_training as toy

from ups.training.optim import SCALER_SETTINGS, Precision, adam_implementation, clip_gradients
from ups.training.runs import JsonlLog
from ups.training.trainer import Trainer


def _finite(stage) -> bool:
    return all(torch.isfinite(v).all() for v in toy.weights(stage).values())


def _events(run_dir, name):
    return [r for r in JsonlLog.read(run_dir / "train_log.jsonl") if r.get("event") == name]


def test_nan_loss_batches_are_skipped_counted_and_harmless(tmp_path):
    _, clean = toy.run_toy(tmp_path / "clean", epochs=10)
    stage, hurt = toy.run_toy(tmp_path / "nan", epochs=10, faults={"nan_loss_at_batch": [5, 30]})
    assert hurt["status"] == "completed" and hurt["skipped_batches"] == 2 and hurt["skipped_steps"] == 0
    assert [e["batch"] for e in _events(tmp_path / "nan", "nonfinite_loss")] == [5, 30]
    epochs = [r for r in JsonlLog.read(tmp_path / "nan" / "train_log.jsonl") if r["kind"] == "epoch"]
    assert [r["skipped_batches"] for r in epochs[:4]] == [1, 0, 0, 1]  # 8 batches per epoch
    assert _finite(stage)
    clean_val, hurt_val = clean["last_val"]["val_metric"], hurt["last_val"]["val_metric"]
    assert abs(hurt_val - clean_val) <= 0.05 * clean_val


def _optimizer_steps(trainer: Trainer) -> int:
    return int(max(s["step"] for s in trainer.optimizer.state.values()))


def test_inf_gradient_fp32_skips_the_step(tmp_path):
    torch.manual_seed(0)
    stage = toy.ToyStage()
    train, val = toy.loaders()
    trainer = Trainer(stage=stage, config=toy.toy_config(epochs=2, faults={"inf_grad_at_step": [3, 9]}),
                      run_dir=tmp_path)
    summary = trainer.fit(train, val)
    assert summary["skipped_steps"] == 2 and summary["step"] == 16
    assert _optimizer_steps(trainer) == 14  # AdamW counted only the steps it took
    events = _events(tmp_path, "nonfinite_grad")
    assert [(e["step"], e["scale_before"], e["scale_after"]) for e in events] == [(3, 1.0, 1.0), (9, 1.0, 1.0)]
    assert _finite(stage)


def test_inf_gradient_fp16_cuts_the_scaler_scale_tenfold(tmp_path):
    torch.manual_seed(0)
    stage = toy.ToyStage()
    train, val = toy.loaders()
    train_cfg = toy.toy_config(epochs=2, precision="fp16", health_every=2, faults={"inf_grad_at_step": [3]})
    trainer = Trainer(stage=stage, config=train_cfg, run_dir=tmp_path)
    scaler = trainer.precision.scaler
    assert (scaler.get_scale(), scaler.get_growth_factor(), scaler.get_backoff_factor(),
            scaler.get_growth_interval()) == (1024.0, 1.5, 0.5, 200)
    summary = trainer.fit(train, val)
    assert summary["skipped_steps"] == 1 and _optimizer_steps(trainer) == 15
    (event,) = _events(tmp_path, "nonfinite_grad")
    assert (event["step"], event["scale_before"], event["scale_after"]) == (3, 1024.0, pytest.approx(102.4))
    scales = {r["step"]: r["scaler_scale"] for r in JsonlLog.read(tmp_path / "train_log.jsonl")
              if r["kind"] == "health"}
    assert scales[2] == 1024.0 and scales[4] == pytest.approx(102.4) and scales[16] == pytest.approx(102.4)
    assert stage.autocast_dtype == torch.float16
    assert _finite(stage)


def test_scale_cut_has_a_floor_of_one():
    p = Precision("fp16", torch.device("cpu"))
    model = torch.nn.Linear(2, 1)
    p.backward(model(torch.ones(1, 2)).sum())  # initialises the scale tensor
    seen = [p.backoff()[1] for _ in range(5)]
    assert seen == pytest.approx([102.4, 10.24, 1.024, 1.0, 1.0])
    assert Precision("fp32", torch.device("cpu")).backoff() == (1.0, 1.0)
    assert SCALER_SETTINGS == {"init_scale": 1024.0, "growth_factor": 1.5, "backoff_factor": 0.5,
                               "growth_interval": 200}


class UpdateTracker(Trainer):
    """Records the norm of every parameter update (a subclass hook, as stages or users would write)."""

    updates: list[tuple[int, float]]

    def optimizer_step(self) -> None:
        before = torch.cat([p.detach().flatten().clone() for g in self.optimizer.param_groups for p in g["params"]])
        step = self.step
        super().optimizer_step()
        after = torch.cat([p.detach().flatten() for g in self.optimizer.param_groups for p in g["params"]])
        self.updates = getattr(self, "updates", []) + [(step, float((after - before).norm()))]


def test_lr_spike_is_held_by_clipping_and_training_recovers(tmp_path):
    common = {"epochs": 20, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 1e-3,
              "scheduler": "none", "warmup_steps": 0, "grad_clip": 1.0}
    _, clean = toy.run_toy(tmp_path / "clean", **common)
    torch.manual_seed(0)
    stage = toy.ToyStage()
    train, val = toy.loaders()
    spike = {"start": 10, "length": 20, "factor": 1000.0}
    trainer = UpdateTracker(stage=stage, config=toy.toy_config(**common, faults={"lr_spike": spike}),
                            run_dir=tmp_path / "spike")
    summary = trainer.fit(train, val)
    during = [norm for step, norm in trainer.updates if 10 <= step < 30]
    assert len(during) == 20 and max(during) <= 1e-3 * 1000 * 1.0 * (1 + 1e-5)  # lr * factor * max_norm
    assert max(during) > 0.5  # the spike really happened (clipped updates near the bound)
    assert max(norm for step, norm in trainer.updates if step >= 30) < 0.01
    lrs = {r["step"]: r["lr"] for r in JsonlLog.read(tmp_path / "spike" / "train_log.jsonl") if r["kind"] == "health"}
    assert lrs[12] == pytest.approx(1.0) and lrs[40] == pytest.approx(1e-3)  # logged lr shows the spike
    assert _finite(stage)
    assert summary["last_val"]["val_metric"] <= 2 * clean["last_val"]["val_metric"]


def test_lr_spike_with_default_adamw_recovers(tmp_path):
    common = {"epochs": 20, "lr": 1e-4, "scheduler": "none"}
    _, clean = toy.run_toy(tmp_path / "clean", **common)
    stage, hurt = toy.run_toy(tmp_path / "spike", **common,
                              faults={"lr_spike": {"start": 10, "length": 20, "factor": 1000.0}})
    assert _finite(stage)
    assert hurt["last_val"]["val_metric"] <= 2 * clean["last_val"]["val_metric"]


def test_bf16_autocast_runs_on_cpu(tmp_path):
    _, fp32 = toy.run_toy(tmp_path / "fp32", epochs=4)
    stage, bf16 = toy.run_toy(tmp_path / "bf16", epochs=4, precision="bf16")
    assert stage.autocast_dtype == torch.bfloat16
    assert _finite(stage) and bf16["skipped_batches"] == 0
    assert bf16["last_val"]["val_metric"] == pytest.approx(fp32["last_val"]["val_metric"], rel=0.1)


def _group(*grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    return {"params": params}


def test_global_and_per_group_clipping_by_hand():
    groups = [_group(torch.tensor([3.0, 0.0])), _group(torch.tensor([0.0, 4.0]))]
    norm, clipped = clip_gradients(groups, 1.0, per_group=False)
    assert (norm, clipped) == (pytest.approx(5.0), True)
    assert torch.allclose(groups[0]["params"][0].grad, torch.tensor([0.6, 0.0]), atol=1e-5)
    assert torch.allclose(groups[1]["params"][0].grad, torch.tensor([0.0, 0.8]), atol=1e-5)
    groups = [_group(torch.tensor([3.0, 0.0])), _group(torch.tensor([0.0, 0.5]))]
    norm, clipped = clip_gradients(groups, 1.0, per_group=True)
    assert norm == pytest.approx(math.sqrt(9.25)) and clipped
    assert torch.allclose(groups[0]["params"][0].grad, torch.tensor([1.0, 0.0]), atol=1e-5)
    assert torch.equal(groups[1]["params"][0].grad, torch.tensor([0.0, 0.5]))  # under the limit: untouched
    groups = [_group(torch.tensor([0.3, 0.4]))]
    assert clip_gradients(groups, 1.0, per_group=False) == (pytest.approx(0.5), False)
    groups = [_group(torch.tensor([float("inf"), 1.0]))]
    norm, clipped = clip_gradients(groups, 1.0, per_group=False)
    assert math.isinf(norm) and not clipped and groups[0]["params"][0].grad[1] == 1.0


def test_complex_gradients_clip_by_their_modulus():
    # |3 + 4i| = 5 and |0 + 12i| = 12: the global norm is 13; clipped to 1.0, every entry scales by 1/13
    groups = [_group(torch.tensor([3 + 4j, 12j], dtype=torch.complex64)), _group(torch.tensor([0.0]))]
    norm, clipped = clip_gradients(groups, 1.0, per_group=False)
    assert (norm, clipped) == (pytest.approx(13.0), True)
    assert torch.allclose(groups[0]["params"][0].grad, torch.tensor([3 + 4j, 12j]) / 13, atol=1e-6)


def test_adam_is_fused_for_real_weights_and_foreach_for_complex_ones():
    real = [{"name": "a", "params": [torch.nn.Parameter(torch.randn(3, 2))]}]
    mixed = [{"name": "a", "params": [torch.nn.Parameter(torch.randn(3, 2)),
                                      torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))]}]
    assert adam_implementation(real) == {"fused": True}
    assert adam_implementation(mixed) == {"foreach": True}
    # the fused and the per-tensor loop take the same steps (up to rounding), complex weights through foreach
    for groups, kw in ((real, {"fused": True}), (mixed, {"foreach": True})):
        twins = [torch.nn.Parameter(p.detach().clone()) for p in groups[0]["params"]]
        fast = torch.optim.AdamW(groups[0]["params"], lr=0.1, weight_decay=0.01, **kw)
        loop = torch.optim.AdamW(twins, lr=0.1, weight_decay=0.01, foreach=False)
        for step in range(3):
            for p, q in zip(groups[0]["params"], twins):
                p.grad = torch.full_like(p, 0.5 * (step + 1))
                q.grad = p.grad.clone()
            fast.step()
            loop.step()
        for p, q in zip(groups[0]["params"], twins):
            assert torch.allclose(p, q, atol=1e-6)
