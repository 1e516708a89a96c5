"""Health records in train_log.jsonl: every field, correct values, and each warning when its condition holds."""

import pytest
import toy_training as toy

from ups.training.health import HEALTH_FIELDS
from ups.training.runs import JsonlLog


def _log(run_dir, kind):
    return [r for r in JsonlLog.read(run_dir / "train_log.jsonl") if r["kind"] == kind]


def test_every_health_field_is_logged_per_window_and_epoch(tmp_path):
    toy.run_toy(tmp_path, epochs=3, health_every=4, precision="fp16")
    health, epochs = _log(tmp_path, "health"), _log(tmp_path, "epoch")
    assert [r["step"] for r in health] == [4, 8, 12, 16, 20, 24] and len(epochs) == 3
    for record in health + epochs:
        assert record["stage"] == "toy"
        for name in HEALTH_FIELDS:
            assert record[name] is not None, (name, record)
        assert set(record["components"]) == {"loss_forward", "loss_inv_enc"}
        assert record["grad_norm_max"] >= record["grad_norm_mean"] > 0
        assert 0.0 <= record["clip_ratio"] <= 1.0
        assert record["scaler_scale"] == 1024.0 and set(record["lrs"]) == {"encoder", "head", "decoder"}
        comps = record["components"]
        assert record["inverse_forward_ratio"] == pytest.approx(comps["loss_inv_enc"] / comps["loss_forward"])
    for epoch in epochs:
        assert "val_metric" in epoch and "val_loss" in epoch and "best_metric" in epoch


def test_inverse_forward_ratio_uses_the_logged_weights():
    from ups.training.health import _Totals

    totals = _Totals(batches=2, components={"loss_forward": 0.2, "loss_inv_enc": 4.0, "loss_inv_dec": 2.0,
                                            "w_inv_enc": 0.02, "w_inv_dec": 0.2})
    # means: forward 0.1, inv_enc 2.0 x w 0.01, inv_dec 1.0 x w 0.1 -> (0.02 + 0.1) / 0.1
    assert totals.summary()["inverse_forward_ratio"] == pytest.approx(1.2)


def test_components_computed_on_some_batches_are_averaged_over_those_batches():
    from ups.training.health import HealthMonitor

    mon = HealthMonitor(stage="operator", grad_norm_warn=10.0, clip_ratio_warn=0.5, inverse_ratio_warn=0.2)
    for i in range(4):  # inverse loss on every 2nd batch only (inverse_loss_frequency = 2)
        parts = {"loss": 1.0, "loss_forward": 0.1}
        if i % 2 == 0:
            parts |= {"loss_inv_enc": 0.3 + 0.2 * i, "w_inv_enc": 0.01}
        mon.add_loss(parts)
    comps = mon.window.summary()["components"]
    assert comps["loss_inv_enc"] == pytest.approx(0.5) and comps["w_inv_enc"] == pytest.approx(0.01)
    assert mon.window.summary()["inverse_forward_ratio"] == pytest.approx(0.05)


def test_epoch_record_aggregates_the_epoch(tmp_path):
    toy.run_toy(tmp_path, epochs=1, health_every=2, grad_clip=None)
    health, (epoch,) = _log(tmp_path, "health"), _log(tmp_path, "epoch")
    assert epoch["loss"] == pytest.approx(sum(r["loss"] for r in health) / len(health))  # equal windows
    assert epoch["grad_norm_max"] == pytest.approx(max(r["grad_norm_max"] for r in health))
    assert epoch["clip_ratio"] == 0.0 and epoch["steps_taken"] == 8


def _warnings(run_dir):
    return {r["condition"]: r for r in _log(run_dir, "warning")}


def test_each_warning_appears_when_its_condition_holds(tmp_path, capsys):
    # grad norms are ~0.5-1.5, every step is clipped at 1e-3, and the inverse loss is ~4x the forward loss
    toy.run_toy(tmp_path, epochs=1, grad_norm_warn=0.01, grad_clip=1e-3, clip_ratio_warn=0.5,
                inverse_ratio_warn=0.2)
    warnings = _warnings(tmp_path)
    assert set(warnings) == {"grad_norm", "clip_ratio", "inverse_ratio"}
    assert warnings["clip_ratio"]["value"] == 1.0 and warnings["clip_ratio"]["threshold"] == 0.5
    assert warnings["grad_norm"]["value"] > 0.01 and warnings["inverse_ratio"]["value"] > 0.2
    for w in warnings.values():
        assert w["stage"] == "toy" and w["warning"].startswith("toy epoch 0")
    err = capsys.readouterr().err
    assert "warning: toy epoch 0" in err and "clip ratio 1 > 0.5" in err


def test_no_warning_when_conditions_do_not_hold(tmp_path):
    toy.run_toy(tmp_path, epochs=1, grad_norm_warn=100.0, grad_clip=None, inverse_ratio_warn=100.0)
    assert _warnings(tmp_path) == {}


def test_plain_lines_when_not_a_terminal(tmp_path, capsys):
    toy.run_toy(tmp_path, epochs=2, progress="auto", health_every=100)
    out = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in out if line.startswith("toy epoch")]
    assert len(epoch_lines) == 2 and "val " in epoch_lines[0] and "lr " in epoch_lines[0]
    assert "grad " in epoch_lines[0] and "clip " in epoch_lines[0]
