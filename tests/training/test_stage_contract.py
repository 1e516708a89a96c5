"""The Stage contract is code: every registered stage implements build/train_window/val_window, and a
stage that leaves one out cannot be instantiated."""

from __future__ import annotations

import pytest

import ups.training  # noqa: F401  (fills the registry)
from ups.config import load_config
from ups.training.stage import STAGES, Stage


def test_a_stage_without_windows_or_build_is_abstract():
    class Partial(Stage):
        def modules(self):
            return {}

        def trainable_modules(self):
            return []

        def loss(self, batch, *, epoch, step):
            return {}

        def validate(self, loader):
            return {"val_metric": 0.0}

    with pytest.raises(TypeError, match="build|train_window|val_window"):
        Partial()
    assert {"build", "train_window", "val_window"} <= Partial.__abstractmethods__


@pytest.mark.parametrize("name", STAGES.names())
def test_every_stage_reads_its_typed_section(name):
    cls = STAGES.get(name)
    assert not getattr(cls, "__abstractmethods__", None)
    model = "fno" if name == "baseline" else "upt"
    if model == "fno":
        pytest.importorskip("neuralop")
    exp = load_config(None, [f"model.name={model}", f"stages.{name}={{}}"])
    typed = cls.stage_config(exp)
    assert isinstance(typed, cls.config_class)
    assert typed.model_dump() == exp.stages[name]  # the section as validated when the config loaded
    window = cls.train_window(typed)
    assert window is None or window >= 2
