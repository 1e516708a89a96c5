"""`ups train`: one run directory, stage prerequisites, resume that skips finished stages."""

import json

import numpy as np
import pytest
from tests.helpers import write_ups_file

from ups.cli import main
from ups.config import load_config
from ups.errors import CheckpointError, ConfigError
from ups.training.launch import stages_to_run, train

TINY_MODEL = ["model.name=upt", "model.params.latent_dim=8", "model.params.num_supernodes=4",
              "model.params.heads=2", "model.params.operator_depth=1", "model.params.kernel_hidden=8",
              "model.params.decoder_hidden=8"]


def _config(tmp_path, extra=()):
    rng = np.random.default_rng(0)
    x = (np.arange(16) + 0.5) / 16
    paths = {}
    for i, split in enumerate(("train", "val")):
        amp = rng.uniform(0.5, 1.5, size=(4, 1, 1))
        u = amp * np.sin(2 * np.pi * (x[None, None, :] - 0.1 * np.arange(6)[None, :, None]))
        paths[split] = write_ups_file(tmp_path / f"{split}.hdf5", u.astype(np.float32), seed=i)
    overrides = [f"data.train={paths['train']}", f"data.val={paths['val']}", "data.batch_size=4",
                 f"run.out_dir={tmp_path / 'runs'}", "run.name=tiny", "training.epochs=1",
                 "training.progress=none", "stages.operator.rollout_steps=1", *TINY_MODEL, *extra]
    return load_config(None, overrides)


def test_train_writes_a_self_describing_run(tmp_path):
    run = train(_config(tmp_path, ["stages.operator={}"]))
    for name in ("config.yaml", "meta.json", "normalizer.json", "data_meta.json", "train_log.jsonl",
                 "checkpoints/operator_best.safetensors", "checkpoints/operator_best.json"):
        assert (run / name).is_file(), name
    done = json.loads((run / "stages_done.json").read_text())
    assert done["operator"]["status"] == "completed" and done["operator"]["epochs"] == 1
    # resuming a finished run trains nothing more and keeps the checkpoint as it is
    before = (run / "checkpoints/operator_best.safetensors").read_bytes()
    assert train(_config(tmp_path, ["stages.operator={}"]), resume=run) == run
    assert (run / "checkpoints/operator_best.safetensors").read_bytes() == before


def test_stage_order_skips_zero_epoch_stages(tmp_path):
    exp = _config(tmp_path, ["stages.baseline={}", "stages.operator={}",
                             "stages.baseline.training={epochs: 0}"])
    assert stages_to_run(exp, "all") == ["operator"]
    with pytest.raises(ConfigError, match="no section"):
        stages_to_run(_config(tmp_path, ["stages.operator={}"]), "baseline")


def test_stage_without_its_prerequisite_fails_in_one_line(tmp_path, capsys):
    if "diff_residual" not in __import__("ups.training.stage", fromlist=["STAGES"]).STAGES:
        pytest.skip("diff_residual stage not registered")
    with pytest.raises(CheckpointError, match="needs the 'operator' checkpoint"):
        train(_config(tmp_path, ["stages.operator={}", "stages.diff_residual={}"]), stage="diff_residual")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(_config(tmp_path, ["stages.operator={}", "stages.diff_residual={}"]).to_yaml())
    assert main(["train", str(cfg_path), "--stage", "diff_residual"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "operator" in err[0]
