"""diff_residual -> consistency_distill on a toy frozen surrogate, through the real trainer and checkpoints;
the steady prior on forced diffusion; missing prerequisites fail with one line."""

import math
import os

import pytest
import torch
from torch import nn

from ups.checkpoint import checkpoint_exists, load_checkpoint, read_checkpoint_meta, save_checkpoint
from ups.config import Strict, load_config
from ups.data.metadata import DatasetMetadata
from ups.data.pdes.forced_diffusion import ForcedDiffusion
from ups.errors import CheckpointError, ConfigError
from ups.models import MODELS
from ups.models.corrector import CorrectedSurrogate, Corrector, CorrectorConfig
from ups.training.stage import STAGES
from ups.training.stages.consistency_distill import ConsistencyDistillConfig, ConsistencyDistillStage
from ups.training.stages.diff_residual import DiffResidualStage
from ups.training.stages.steady_prior import SteadyPrior, SteadyPriorConfig, SteadyPriorNetConfig, SteadyPriorStage
from ups.training.trainer import Trainer

N, L, D = 16, 4, 4  # points, latent tokens, latent width (a token = a patch of 4 points)


class ToyLatentConfig(Strict):
    pass


@MODELS.register("toy_latent")
class ToyLatent(nn.Module):
    """Exactly invertible patch encoder (a fixed orthogonal mix), and a deliberately crude operator:
    the latent step is the identity (persistence), so the residual is the whole one-step change."""

    config_class = ToyLatentConfig
    latent_dim, num_latents = D, L

    def __init__(self):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))
        self.mix = nn.Parameter(q)

    @classmethod
    def from_config(cls, meta, params):
        return cls()

    def encode(self, u, coords):  # u [B, N, 1] -> [B, L, D]
        return u.reshape(u.shape[0], L, D) @ self.mix

    def step(self, z, params, dt):  # [B, L, D] -> [B, L, D]
        return z.clone()

    def decode(self, z, coords_q, u_q=None):  # [B, L, D] -> [B, N, 1]
        return (z @ self.mix.T).reshape(z.shape[0], N, 1)


META = DatasetMetadata(pde="toy", spatial_dims=1, spatial_shape=(N,), n_channels=1, n_frames=2, dt=0.1,
                       param_names=("nu",))


def toy_batches(n_batches: int, batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Pairs (u_t, u_{t+1}) of a periodic diffusion-with-drift map on 16 points, random smooth u_t."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.arange(N) + 0.5) / N
    out = []
    for _ in range(n_batches):
        k = torch.randint(1, 4, (batch, 3), generator=g)
        a = torch.randn(batch, 3, generator=g)
        u0 = (a[:, :, None] * torch.sin(2 * math.pi * k[:, :, None] * x + a[:, :1, None])).sum(1)
        lap = torch.roll(u0, 1, -1) + torch.roll(u0, -1, -1) - 2 * u0
        u1 = u0 + 0.2 * lap + 0.1 * (torch.roll(u0, 1, -1) - u0)
        out.append({"u": torch.stack([u0, u1], 1)[..., None], "coords": x.expand(batch, N)[..., None],
                    "params": torch.full((batch, 1), 0.1), "dt": torch.full((batch,), 0.1)})
    return out


def train_cfg(**kw):
    from ups.config import TrainingConfig

    base = dict(epochs=6, lr=3e-3, weight_decay=0.0, ema_decay=0.9, progress="none", device="cpu", seed=0,
                warmup_steps=0)
    return TrainingConfig(**{**base, **kw})


def experiment(**stages):
    exp = load_config(None, ["model.name=toy_latent"])
    exp.stages.update(stages)
    return exp


def test_stages_are_registered_with_their_prerequisites():
    assert STAGES.get("diff_residual").requires == ("operator",)
    assert STAGES.get("consistency_distill").requires == ("diff_residual",)
    assert STAGES.get("steady_prior").requires == ("operator",)
    exp = load_config(None, ["model.name=persistence", "stages.diff_residual.tau_distribution=beta",
                             "stages.consistency_distill.distill_num_taus=2", "stages.steady_prior.training.epochs=0"])
    assert exp.stages["diff_residual"]["tau_distribution"] == "beta"
    assert exp.stage_training("steady_prior").epochs == 0


@pytest.mark.parametrize("stage,needs", [("diff_residual", "operator"), ("consistency_distill", "diff_residual"),
                                         ("steady_prior", "operator")])
def test_missing_prerequisite_checkpoint_is_one_line(tmp_path, stage, needs):
    with pytest.raises(CheckpointError) as err:
        STAGES.get(stage).from_experiment(experiment(), meta=META, normalizer=None, run_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and f"--stage {needs}" in msg and stage in msg


def test_diff_residual_refuses_an_operator_that_advances_several_frames_per_step(tmp_path):
    exp = load_config(None, ["model.name=upt", "model.params.frames_per_step=4"])
    with pytest.raises(ConfigError) as err:  # refused before any checkpoint is looked for
        DiffResidualStage.from_experiment(exp, meta=META, normalizer=None, run_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "frames_per_step" in msg and "advances 4" in msg
    bundled = MODELS.get("upt").from_config(META, {"frames_per_step": 2})
    with pytest.raises(ConfigError, match="advances 2"):  # nor can a corrector be put beside one at inference
        CorrectedSurrogate(model=bundled, corrector=Corrector(latent_dim=bundled.latent_dim, n_cond=2))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """An operator checkpoint, then diff_residual trained by the trainer into the same run directory."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoints" / "operator_best", {"model": ToyLatent()}, {"stage": "operator"})
    torch.manual_seed(0)
    cor = CorrectorConfig(width=32, depth=2, heads=4, steps=4)
    exp = experiment(diff_residual={"space": "latent", "corrector": cor.model_dump(), "stats_batches": 4})
    stage = DiffResidualStage.from_experiment(exp, meta=META, normalizer=None, run_dir=run)
    train, val = toy_batches(24, 32, seed=1), toy_batches(4, 64, seed=2)
    before = stage.validate(val)
    summary = Trainer(stage=stage, config=train_cfg(), run_dir=run).fit(train, val)
    return {"run": run, "exp": exp, "before": before, "after": stage.validate(val), "summary": summary,
            "stage": stage}


def test_diff_residual_learns_the_residual_and_checkpoints_it(trained_run):
    run, before, after = trained_run["run"], trained_run["before"], trained_run["after"]
    assert before["val_latent_rel_err"] == pytest.approx(1.0)  # untrained corrector: no correction
    assert after["val_latent_rel_err"] < 0.2, after  # the refined prediction removes most of the error
    assert after["val_one_step_nrmse"] < 0.5 * after["val_one_step_nrmse_operator"]
    for kind in ("best", "ema", "last"):
        assert checkpoint_exists(run / "checkpoints" / f"diff_residual_{kind}")
    # the residual statistics travel with the weights
    cor = Corrector(latent_dim=D, n_cond=2, config=CorrectorConfig(width=32, depth=2, heads=4, steps=4))
    meta = load_checkpoint(run / "checkpoints" / "diff_residual_best", {"model": ToyLatent(), "corrector": cor})
    assert int(cor.stats_updates) == 4 and float(cor.res_std.min()) > 0.01 and meta["corrector_kind"] == "multi"
    assert torch.equal(cor.res_std, trained_run["stage"].corrector.res_std)


def distill_stage(run, exp, **kw) -> ConsistencyDistillStage:
    exp = exp.model_copy(deep=True)
    exp.stages["consistency_distill"] = ConsistencyDistillConfig(**kw).model_dump()
    return ConsistencyDistillStage.from_experiment(exp, meta=META, normalizer=None, run_dir=run)


def test_distillation_keeps_the_correction_and_matches_the_teacher(trained_run):
    torch.manual_seed(1)
    stage = distill_stage(trained_run["run"], trained_run["exp"], distill_num_taus=3, distill_micro_batch=16)
    val = toy_batches(4, 64, seed=3)  # held out
    # a fresh student is a copy of the teacher: its 1-step sample is a crude version of the 4-step one
    start = stage.compare(val, generator=torch.Generator().manual_seed(0))
    Trainer(stage=stage, config=train_cfg(epochs=4, lr=1e-3), run_dir=trained_run["run"]).fit(
        toy_batches(24, 32, seed=4), val)
    for generator in (None, torch.Generator().manual_seed(0)):  # deterministic and stochastic samplers
        end = stage.compare(val, generator=generator)
        assert 0.5 < end["val_norm_ratio"] < 1.5, end  # not collapsed
        assert end["val_distill_rel_err"] < 0.25, end  # much closer to the teacher than zero correction (1.0)
    assert end["val_distill_rel_err"] <= start["val_distill_rel_err"]
    assert checkpoint_exists(trained_run["run"] / "checkpoints" / "consistency_distill_best")


def test_teacher_runs_once_per_batch_and_micro_batching_gives_the_same_gradient(trained_run):
    stage = distill_stage(trained_run["run"], trained_run["exp"], distill_num_taus=3, distill_micro_batch=0)
    calls = []
    hook = stage.teacher.register_forward_hook(lambda *a: calls.append(1))
    batch = toy_batches(1, 8, seed=5)[0]
    torch.manual_seed(7)
    full = stage.loss(batch, epoch=0, step=0)["loss"]
    assert len(calls) == stage.teacher_steps  # one K-step sample, reused by the 3 taus
    hook.remove()
    full.backward()
    g_full = [p.grad.clone() for p in stage.student.parameters()]
    stage.student.zero_grad()
    stage.stage_cfg = stage.stage_cfg.model_copy(update={"distill_micro_batch": 3})
    torch.manual_seed(7)
    micro = stage.loss(batch, epoch=0, step=0)["loss"]
    micro.backward()
    assert torch.allclose(full, micro, rtol=1e-5)
    for a, p in zip(g_full, stage.student.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-7)


def test_compile_option_puts_its_cache_where_configured(trained_run, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    stage = distill_stage(trained_run["run"], trained_run["exp"], compile=True,
                          compile_cache_dir=str(tmp_path / "cc"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cc").resolve()) and (tmp_path / "cc").is_dir()
    assert stage._jump is not stage.student.clean_estimate


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    """diff_residual in physical space (the default) on the toy surrogate, through the trainer."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("field_run")
    save_checkpoint(run / "checkpoints" / "operator_best", {"model": ToyLatent()}, {"stage": "operator"})
    torch.manual_seed(0)
    exp = experiment(diff_residual={"refiner": {"width": 16, "depth": 1, "kernel": 3, "steps": 2},
                                    "stats_batches": 4})
    stage = DiffResidualStage.from_experiment(exp, meta=META, normalizer=None, run_dir=run)
    val = toy_batches(4, 64, seed=2)
    before = stage.validate(val)
    Trainer(stage=stage, config=train_cfg(epochs=4), run_dir=run).fit(toy_batches(24, 32, seed=1), val)
    return {"run": run, "exp": exp, "before": before, "after": stage.validate(val), "stage": stage}


def test_field_refiner_stage_corrects_the_decoded_field_and_checkpoints_it(field_run):
    from ups.models.refiner import FieldCorrectedSurrogate
    from ups.rundir import with_corrector

    before, after = field_run["before"], field_run["after"]
    assert before["val_rollout_ratio"] == pytest.approx(1.0)  # untrained: exactly the operator
    assert after["val_rollout_ratio"] < 0.3, after  # the toy operator (persistence) misses the whole change
    stage_cfg = DiffResidualStage.stage_config(field_run["exp"])
    assert DiffResidualStage.train_window(stage_cfg) == 4  # pushforward_steps 3 + 1
    # validation picks how many of the K = 2 denoising levels inference uses: the lowest rollout ratio
    ratios = [after[f"val_rollout_ratio_k{k}"] for k in range(3)]
    assert after["val_rollout_ratio"] == pytest.approx(min(ratios)) and ratios[int(after["val_levels"])] == min(ratios)
    wrapped = with_corrector(ToyLatent(), field_run["run"], "multi")
    saved = read_checkpoint_meta(field_run["run"] / "checkpoints" / "diff_residual_best")
    assert isinstance(wrapped, FieldCorrectedSurrogate) and wrapped.steps == int(saved["val"]["val_levels"])
    assert saved["network_calls"] == wrapped.steps + 1
    torch.testing.assert_close(wrapped.corrector.res_scale, field_run["stage"].corrector.res_scale)


def test_rollout_pairs_start_teacher_forced_then_follow_the_operator():
    from ups.training.stages.diff_residual import rollout_pairs

    batch = toy_batches(1, 3, seed=6)[0]
    u = batch["u"]  # [3, 2, 16, 1]
    three = {**batch, "u": torch.cat([u, u[:, 1:], u[:, 1:]], dim=1)}  # a window of 4 frames
    pairs = rollout_pairs(ToyLatent().requires_grad_(False), three)
    assert pairs["u_prev"].shape == (9, N, 1) and pairs["cond"].shape == (9, 2)
    torch.testing.assert_close(pairs["u_prev"][:3], u[:, 0])  # j = 0: the true frame
    # the toy operator is persistence: every rollout state is the first frame, every truth the next frame
    torch.testing.assert_close(pairs["u_prev"][3:], u[:, 0].repeat(2, 1, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairs["u_true"][3:6], u[:, 1])


def test_field_distillation_keeps_the_correction_in_one_call(field_run):
    torch.manual_seed(1)
    stage = distill_stage(field_run["run"], field_run["exp"], student_steps=1)
    saved = read_checkpoint_meta(field_run["run"] / "checkpoints" / "diff_residual_best")
    assert stage.physical and stage.teacher_steps == saved["refine_steps"]
    val = toy_batches(4, 64, seed=3)
    Trainer(stage=stage, config=train_cfg(epochs=3, lr=1e-3), run_dir=field_run["run"]).fit(
        toy_batches(24, 32, seed=4), val)
    end = stage.compare(val)
    assert 0.5 < end["val_norm_ratio"] < 1.5, end  # not collapsed to zero correction
    assert end["val_distill_rel_err"] < 0.1, end  # the 1-call student reproduces the 3-call teacher
    assert end["val_rollout_ratio"] < 0.3, end
    # a student with no correction would score exactly 1
    torch.nn.init.zeros_(stage.student.net.out.weight)
    torch.nn.init.zeros_(stage.student.net.out.bias)
    assert stage.compare(val)["val_distill_rel_err"] == pytest.approx(1.0)
    meta = read_checkpoint_meta(field_run["run"] / "checkpoints" / "consistency_distill_best")
    assert meta["corrector_kind"] == "distilled" and meta["refine_steps"] == 0 and meta["space"] == "physical"


# --------------------------------------------------------------------------------- steady prior
class PointIdentity(nn.Module):
    """A frozen 'surrogate' whose latent is the field itself, 64 points -> 8 tokens of 8 values."""

    latent_dim, num_latents = 8, 8

    def encode(self, u, coords):
        return u.reshape(u.shape[0], 8, 8)

    def decode(self, z, coords_q, u_q=None):
        return z.reshape(z.shape[0], 64, 1)


def steady_batches(n_batches: int, batch: int, seed: int):
    pde = ForcedDiffusion()
    p = pde.make_params(resolution=64, frames=11, t_end=4.0, D=0.05, k=0.0, forcing_amp=1.0)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        traj = pde.solve(pde.sample_initial(batch, generator=g, grid=p.grid), params=p).float()  # [B, T, X]
        out.append({"u": traj[..., None], "coords": p.x.float().expand(batch, 64)[..., None],
                    "params": torch.tensor([[0.05, 0.0, 1.0]]).expand(batch, 3), "dt": torch.full((batch,), p.dt)})
    return out, pde, p


def test_steady_prior_beats_the_initial_state_on_forced_diffusion(tmp_path):
    torch.manual_seed(0)
    train, _, _ = steady_batches(16, 16, seed=1)
    val, pde, p = steady_batches(2, 32, seed=2)
    exact = pde.steady_state(val[0]["u"][:, 0, :, 0].double(), params=p)  # [B, X]
    assert torch.allclose(val[0]["u"][:, -1, :, 0].double(), exact, atol=1e-3)  # the last frame is steady
    prior = SteadyPrior(latent_dim=8, n_params=3, config=SteadyPriorNetConfig(num_steps=4, width=32, depth=2))
    stage = SteadyPriorStage(model=PointIdentity(), prior=prior, stage_cfg=SteadyPriorConfig(inputs_per_item=4))
    before = stage.validate(val)
    assert before["val_steady_nrmse"] == pytest.approx(before["val_initial_nrmse"], rel=1e-6)  # identity at start
    Trainer(stage=stage, config=train_cfg(epochs=8, ema_decay=None), run_dir=tmp_path).fit(train, val)
    after = stage.validate(val)
    assert after["val_steady_nrmse"] < 0.5 * after["val_initial_nrmse"], after


def test_decoded_residual_target_is_the_correction_the_decoder_needs():
    from ups.training.stages.diff_residual import decoded_residual, latent_pair

    torch.manual_seed(0)
    batch = toy_batches(1, 8, seed=3)[0]
    toy = ToyLatent().requires_grad_(False)
    pair = latent_pair(toy, batch)
    # an exactly invertible linear decoder: the decoded target is the encoded residual E(u1) - z_pred
    r = decoded_residual(toy, pair, iters=30, reg=0.0)
    torch.testing.assert_close(r, pair["z_true"] - pair["z_pred"], atol=1e-4, rtol=1e-4)
    # a nonlinear UPT decoder: r* fits u1 far better than no correction and than the encoded residual
    meta = DatasetMetadata(pde="burgers1d", spatial_dims=1, spatial_shape=(N,), n_channels=1, n_frames=2, dt=0.1,
                           param_names=("nu",))
    upt = MODELS.get("upt").from_config(meta, {"latent_dim": 8, "num_supernodes": 4, "heads": 2,
                                               "operator_depth": 1}).requires_grad_(False)
    pair = latent_pair(upt, batch)

    def misfit(r):
        return float((upt.decode(pair["z_pred"] + r, pair["x"], pair["u0"]) - pair["u1"]).pow(2).mean())

    r = decoded_residual(upt, pair, iters=30, reg=1e-3)
    zero, encoded = misfit(torch.zeros_like(r)), misfit(pair["z_true"] - pair["z_pred"])
    assert misfit(r) < 0.5 * min(zero, encoded), (misfit(r), zero, encoded)


def test_field_validation_can_rank_by_high_correlation_time(field_run):
    """select_by corr_time: val_metric is operator / corrected correlation steps, the levels minimise it (ties by
    the nRMSE ratio), and the operator's steps are those of ``ups.eval.metrics.corr_time`` on its own rollout."""
    from ups.eval.metrics import corr_time
    from ups.rollout import flatten_points, rollout

    stage = field_run["stage"]
    stage.stage_cfg = stage.stage_cfg.model_copy(update={"select_by": "corr_time", "corr_threshold": 0.9})
    val = toy_batches(4, 64, seed=2)
    out = stage.validate(val)
    keys = [(out[f"val_corr_ratio_k{k}"], out[f"val_rollout_ratio_k{k}"]) for k in range(3)]
    assert keys[int(out["val_levels"])] == min(keys) and out["val_metric"] == out["val_corr_ratio"]
    for k in range(3):
        assert out[f"val_corr_ratio_k{k}"] == pytest.approx(out["val_corr_steps_operator"]
                                                            / max(out[f"val_corr_steps_k{k}"], 1.0))
    preds, truth = [], []
    for batch in val:
        u, x = flatten_points(batch["u"], batch["coords"])
        preds.append(rollout(stage.model, u[:, 0], x, batch["params"], batch["dt"], u.shape[1] - 1)[:, 1:])
        truth.append(u[:, 1:])
    assert out["val_corr_steps_operator"] == pytest.approx(corr_time(torch.cat(preds), torch.cat(truth), 0.9))
    stage.stage_cfg = stage.stage_cfg.model_copy(update={"select_by": "rollout_nrmse", "corr_threshold": 0.8})
