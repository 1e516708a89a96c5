"""Where ``ups eval --data FILE`` writes, and how it says which samples it evaluated and why."""

from pathlib import Path

import numpy as np

from helpers import write_pdebench_file, write_ups_file
from ups.config import load_config
from ups.eval.run_eval import _data_config, eval_out_dir


def test_pdebench_file_is_split_as_pdebench_does_and_the_reason_is_given(tmp_path):
    exp = load_config(None, [])
    src = write_pdebench_file(tmp_path, np.zeros((20, 3, 8), dtype=np.float32))
    data_cfg, split, rule = _data_config(exp, str(src), "test")
    assert data_cfg.pdebench_file == str(src) and split == "test" and "first 10%" in rule
    data_cfg, split, rule = _data_config(exp, str(src), "all")
    assert data_cfg.test == str(src) and data_cfg.pdebench_file is None and "every sample" in rule
    ours = write_ups_file(tmp_path / "ours.hdf5", np.zeros((3, 3, 8), dtype=np.float32))
    data_cfg, split, rule = _data_config(exp, str(ours), "val")
    assert data_cfg.test == str(ours) and split == "test" and "written by ups" in rule


def test_output_folder_never_is_the_runs_own_report(tmp_path):
    run = tmp_path / "run"
    assert eval_out_dir(run, data="/d/other.h5", split="test", out=None) == run / "eval_other_test"
    assert eval_out_dir(run, data="/d/other.h5", split="all", out=str(tmp_path / "x")) == tmp_path / "x"
    assert eval_out_dir(run, data=None, split="test", out=None) == Path(run)
