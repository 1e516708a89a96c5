"""Checkpoints: safetensors + JSON round trip, one-line mismatch errors, weights_only training state."""

import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from ups import checkpoint as ckpt
from ups.errors import CheckpointError, UPSError


def _modules(width: int = 8, seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    return {"encoder": nn.Sequential(nn.Linear(3, width), nn.LayerNorm(width)), "head": nn.Linear(width, 2)}


def test_round_trip_restores_every_tensor_and_meta(tmp_path):
    src, dst = _modules(seed=0), _modules(seed=1)
    ckpt.save_checkpoint(tmp_path / "op_last", src, {"model": "toy", "epoch": 3, "normalizer": {"mean": [0.5]}})
    assert (tmp_path / "op_last.safetensors").is_file() and (tmp_path / "op_last.json").is_file()
    meta = ckpt.load_checkpoint(tmp_path / "op_last", dst)
    assert meta["model"] == "toy" and meta["epoch"] == 3 and meta["normalizer"] == {"mean": [0.5]}
    assert meta["modules"] == {"encoder": 3 * 8 + 8 + 2 * 8, "head": 8 * 2 + 2}
    for name in src:
        for (k, a), (_, b) in zip(src[name].state_dict().items(), dst[name].state_dict().items()):
            assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_keys_are_module_dot_param(tmp_path):
    from safetensors.torch import load_file

    ckpt.save_checkpoint(tmp_path / "x", _modules(), {})
    keys = set(load_file(str(tmp_path / "x.safetensors")))
    assert "encoder.0.weight" in keys and "encoder.1.bias" in keys and "head.weight" in keys


def test_tied_weights_are_saved(tmp_path):
    a = nn.Linear(4, 4)
    b = nn.Linear(4, 4)
    b.weight = a.weight  # shared storage across modules
    ckpt.save_checkpoint(tmp_path / "tied", {"a": a, "b": b}, {})
    c, d = nn.Linear(4, 4), nn.Linear(4, 4)
    ckpt.load_checkpoint(tmp_path / "tied", {"a": c, "b": d})
    assert torch.equal(c.weight, a.weight) and torch.equal(d.weight, a.weight)


def test_checkpoint_of_another_config_fails_in_one_line(tmp_path):
    ckpt.save_checkpoint(tmp_path / "op_best", _modules(width=8), {"model": "upt", "stage": "operator"})
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(tmp_path / "op_best", _modules(width=16))
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert "op_best.safetensors" in msg and "model 'upt'" in msg
    assert "0 missing, 0 unexpected, 5 shape-mismatched" in msg  # 4 encoder tensors + head.weight (bias fits)
    assert "use the config it was trained with" in msg


def test_missing_and_unexpected_modules_are_counted(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", _modules(), {})
    extra = {**_modules(), "decoder": nn.Linear(2, 3)}
    with pytest.raises(CheckpointError, match="2 missing, 0 unexpected, 0 shape-mismatched"):
        ckpt.load_checkpoint(tmp_path / "c", extra)
    meta = ckpt.load_checkpoint(tmp_path / "c", extra, strict=False)  # decoder keeps its weights
    assert meta["format_version"] == ckpt.FORMAT_VERSION
    with pytest.raises(CheckpointError, match="0 missing, 2 unexpected"):
        ckpt.load_checkpoint(tmp_path / "c", {"encoder": _modules()["encoder"]})


def test_missing_and_damaged_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.safetensors") as err:
        ckpt.load_checkpoint(tmp_path / "nope", _modules())
    assert "\n" not in str(err.value)
    ckpt.save_checkpoint(tmp_path / "bad", _modules(), {})
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage" * 3)
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        ckpt.load_checkpoint(tmp_path / "bad", _modules())
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="training state not found"):
        ckpt.load_state(tmp_path / "none_state.pt")


def test_state_round_trip_with_weights_only_restores_rng(tmp_path):
    model = nn.Linear(3, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    torch.rand(3), np.random.rand(), random.random(), np.random.randn()  # advance, incl. numpy's gauss cache
    state = {"optimizer": opt.state_dict(), "rng": ckpt.capture_rng(), "epoch": 2, "best": None}
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(3))
    ckpt.save_state(tmp_path / "s.pt", state)
    loaded = ckpt.load_state(tmp_path / "s.pt")  # uses weights_only=True
    ckpt.restore_rng(loaded["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(3))
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and np.array_equal(expected[3], got[3])
    opt2 = torch.optim.AdamW(nn.Linear(3, 3).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert loaded["epoch"] == 2 and loaded["best"] is None


def test_state_file_with_arbitrary_objects_is_refused(tmp_path):
    torch.save({"x": Fraction(1, 3)}, tmp_path / "evil.pt")  # a pickled class that is not a tensor
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ckpt.load_state(tmp_path / "evil.pt")


def test_checkpoint_error_is_a_ups_error():
    assert issubclass(CheckpointError, UPSError)


def test_estimate_covers_copies_of_the_weights():
    mods = _modules(width=8)
    n_bytes = sum(t.numel() * 4 for m in mods.values() for t in m.state_dict().values())
    assert ckpt.estimate_checkpoint_bytes(mods) == 8 * n_bytes + 2**20
