"""``training.compile``: compiled training steps match eager ones, the cache directory is used, and every way
compilation can fail leaves an eager run with one warning line."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_operator_stage import build

from ups.models import compile as compile_mod
from ups.models.compile import CompiledMethod, compiler_missing
from ups.simulator import Simulator
from ups.training.trainer import Trainer

# the tests that really compile need inductor's C++ compiler; the fallback without one is tested below
needs_compiler = pytest.mark.skipif(compiler_missing(torch.device("cpu")) is not None,
                                    reason="no C++ compiler for torch.compile on CPU")


def _train(tmp_path, name: str, **training) -> tuple[torch.nn.Module, dict]:
    exp, st, train, val = build(tmp_path / name, rollout_steps=1, inverse_loss_frequency=1)
    torch.manual_seed(0)
    cfg = exp.stage_training("operator").model_copy(update={"epochs": 2, **training})
    summary = Trainer(stage=st, config=cfg, run_dir=tmp_path / name / "run").fit(train, val)
    return st.model, summary


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@needs_compiler
def test_compiled_training_matches_eager_and_leaves_the_plain_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    torch.manual_seed(1)
    eager, _ = _train(tmp_path, "eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(1)
    cache = tmp_path / "cache"
    compiled, summary = _train(tmp_path, "compiled", compile=True, compile_cache=str(cache))
    assert summary["status"] == "completed"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3  # encode, step and decode were compiled
    assert any(cache.iterdir())  # inductor wrote its cache where it was told
    assert "torch.compile" not in capsys.readouterr().err  # no fallback warning
    # the same run up to the order of floating-point operations inside the fused kernels: the weights differ
    # by a small part of what training changed (Adam magnifies rounding in the tiniest gradients)
    torch.manual_seed(1)
    _, initial, _, _ = build(tmp_path / "initial", rollout_steps=1, inverse_loss_frequency=1)
    assert _max_diff(eager, compiled) < 0.1 * _max_diff(eager, initial.model)
    assert not any(isinstance(v, CompiledMethod) for v in vars(compiled).values())  # unwrapped after fit


@needs_compiler
def test_compiled_methods_give_the_eager_loss_and_gradients(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    _, st, train, _ = build(tmp_path, rollout_steps=1, inverse_loss_frequency=1, inverse_loss_warmup_epochs=0)
    batch = next(iter(train))

    def loss_and_grads():
        st.model.zero_grad()
        gen = st.generator.get_state()
        loss = st.loss(batch, epoch=1, step=0)["loss"]
        st.generator.set_state(gen)  # the same query subset and noise for the second call
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in st.model.named_parameters()}

    eager_loss, eager_grads = loss_and_grads()
    with compile_mod.compiled(st.modules(), enabled=True, device=torch.device("cpu"), cache=str(tmp_path / "c"),
                              warn=pytest.fail):
        assert isinstance(st.model.encode, CompiledMethod)
        compiled_loss, compiled_grads = loss_and_grads()
    assert not isinstance(st.model.encode, CompiledMethod)
    assert math.isclose(compiled_loss, eager_loss, rel_tol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_failing_compilation_trains_eagerly_with_one_warning_per_method(tmp_path, capsys, monkeypatch):
    def broken(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("backend exploded\nsecond line")
        return call

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch.manual_seed(1)
    eager, _ = _train(tmp_path, "eager")
    monkeypatch.setattr(compile_mod.torch, "compile", broken)
    torch.manual_seed(1)
    fallen, summary = _train(tmp_path, "fallen", compile=True, compile_cache=str(tmp_path / "cache"))
    assert summary["status"] == "completed"
    sa, sb = eager.state_dict(), fallen.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # bit for bit: the fallback is the eager computation
    warnings = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert sorted(w.split(" of ")[1].split(" ")[0] for w in warnings) == ["model.decode_frames", "model.encode",
                                                                          "model.step"]
    assert all("RuntimeError: backend exploded); it runs eagerly" in w for w in warnings)


def test_without_a_cpp_compiler_nothing_is_compiled(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compile_mod, "compiler_missing", lambda device: "no C++ compiler (test)")
    def refuse(fn, **options):
        raise AssertionError("compiled")

    monkeypatch.setattr(compile_mod.torch, "compile", refuse)
    _, summary = _train(tmp_path, "plain", compile=True)
    assert summary["status"] == "completed"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "training.compile" in line]
    assert warnings == ["warning: training.compile: no C++ compiler (test); training eagerly"]


def test_cache_directory_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    assert compile_mod.set_cache_dir(None) == tmp_path / "user"  # the user's variable wins over the default
    assert compile_mod.set_cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"  # an explicit setting wins
    assert (tmp_path / "cfg").is_dir()
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_mod.set_cache_dir(None) == tmp_path / "home" / ".cache" / "ups" / "torchinductor"


@needs_compiler
def test_simulator_compile_rolls_out_as_the_eager_model(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache, kept out of the user's home
    _, st, _, val = build(tmp_path, rollout_steps=1)
    batch = next(iter(val))
    u0 = st.normalizer.denormalize(batch["u"][:, 0]).flatten(1, -2)  # [B, N, C] physical
    coords = batch["coords"].flatten(1, -2)  # [B, N, d]
    eager = Simulator(model=st.model, normalizer=st.normalizer, meta=st.meta).rollout(
        u0, 4, params=batch["params"], coords=coords)
    holder = torch.nn.ModuleDict({"op": copy.deepcopy(st.model)})  # the operator is found inside what wraps it
    assert compile_mod.compile_for_inference(holder, device=torch.device("cpu"), warn=pytest.fail)
    assert all(isinstance(vars(holder["op"])[m], CompiledMethod) for m in ("encode", "step", "decode_frames"))
    sim = Simulator(model=st.model, normalizer=st.normalizer, meta=st.meta, compile=True)
    assert all(isinstance(vars(st.model)[m], CompiledMethod) for m in ("encode", "step", "decode_frames"))
    torch._dynamo.utils.counters.clear()
    fast = sim.rollout(u0, 4, params=batch["params"], coords=coords)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3  # compiled under inference_mode
    assert (tmp_path / "home" / ".cache" / "ups" / "torchinductor").is_dir()
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)


def test_simulator_compile_without_a_compiler_warns_and_rolls_out_eagerly(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compile_mod, "compiler_missing", lambda device: "no C++ compiler (test)")
    _, st, _, _ = build(tmp_path, rollout_steps=1)
    sim = Simulator(model=st.model, normalizer=st.normalizer, meta=st.meta, compile=True)
    assert not any(isinstance(v, CompiledMethod) for v in vars(sim.model).values())
    assert capsys.readouterr().err.strip() == "warning: compile: no C++ compiler (test); rolling out eagerly"
