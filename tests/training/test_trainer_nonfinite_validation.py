"""A diverged validation (NaN) never leaves a stage without a best checkpoint, and is reported."""

import json
import math

from tests.training.toy_training import run_toy

from ups.checkpoint import checkpoint_exists


def test_nan_validation_keeps_a_best_checkpoint_until_a_finite_one(tmp_path):
    _, summary = run_toy(tmp_path, stage_kw={"val_script": [math.nan, math.nan, 0.5]}, epochs=3)
    assert checkpoint_exists(tmp_path / "checkpoints" / "toy_best")
    assert summary["best_metric"] == 0.5 and summary["best_epoch"] == 2
    events = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    warned = [e for e in events if e.get("event") == "nonfinite_validation"]
    assert len(warned) == 1 and warned[0]["epoch"] == 0  # said once: later NaNs do not overwrite it
