"""Each benchmark in quick mode (tiny generated data and models, seconds): it runs and its JSON has the keys
the README table and ``make bench`` rely on."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from ups.errors import UPSError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytest.importorskip("neuralop")


@pytest.fixture(autouse=True)
def _bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(name: str, **kw) -> dict:
    pytest.importorskip("ups.data.generate")  # the data generator (feat/pdes) until it is merged
    module = importlib.import_module(name)
    out = module.run(quick=True, **kw)
    json.dumps(out)  # serialisable as the one JSON object the benchmark prints
    return out


def _summary(tmp_path, name: str, out: dict) -> str:
    """The README markdown ``benchmarks/summarize.py`` makes from this benchmark's JSON file alone."""
    import summarize

    (tmp_path / f"{name}.json").write_text(json.dumps(out))
    return summarize.summarize(tmp_path)


MODEL_KEYS = {"model", "params", "steps", "epochs", "train_wall_s", "status", "best_val_rollout_nrmse",
              "rollout_nrmse", "one_step_nrmse", "corr_time", "valid_time", "nrmse_per_step"}


@pytest.mark.slow
def test_accuracy_quick(tmp_path):
    out = _run("bench_accuracy", budget=1.0)
    assert out["benchmark"] == "accuracy" and out["budget_s"] == 1.0
    assert set(out["models"]) == {"ups", "fno", "unet", "fno_b8", "persistence"}  # FNO also at batch 8
    for name in ("ups", "fno", "unet", "fno_b8"):
        m = out["models"][name]
        assert MODEL_KEYS <= set(m), name
        assert m["steps"] >= 1 and m["params"] > 0 and len(m["nrmse_per_step"]) == out["data"]["rollout_steps"]
        assert m["status"] == "time_budget", name  # every model trains for its whole budget, none stops early
    assert out["models"]["fno_b8"]["overrides"] == ["data.batch_size=8"]
    assert out["ratio_ups_over_fno_rollout_nrmse"] == pytest.approx(  # against the better FNO
        out["models"]["ups"]["rollout_nrmse"] / min(out["models"][k]["rollout_nrmse"] for k in ("fno", "fno_b8")))
    assert out["ups_beats_fno"] == (out["ratio_ups_over_fno_rollout_nrmse"] < 1)
    assert out["models"]["persistence"]["rollout_nrmse"] > 0
    table = _summary(tmp_path, "accuracy", out)
    ups = out["models"]["ups"]
    head = (f"| ups | {ups['params']} | {ups['steps']} | {ups['train_cpu_s']:.3g} | {ups['ms_per_step']:.3g} | "
            f"{ups['rollout_nrmse']:.3g} |")
    from10 = ups["rollout_nrmse_from_10"]  # None on the quick data (5 frames)
    row = head + (" — |" if from10 is None else f" {from10:.3g} | {ups['one_step_nrmse']:.3g} |")
    assert row in table and "| persistence | 0 | — |" in table
    assert ("UPS beats FNO" in table) == out["ups_beats_fno"]
    # any-point: UPS and the FNO are scored at every cell without retraining; the U-Net is bound to its grid
    assert out["models"]["ups"]["rollout_nrmse_full_resolution"] > 0
    assert out["models"]["fno"]["rollout_nrmse_full_resolution"] > 0
    assert out["models"]["unet"]["rollout_nrmse_full_resolution"] is None
    assert "training grid" in out["models"]["unet"]["full_resolution_error"]


@pytest.mark.slow
def test_accuracy_budget_curve_quick(tmp_path):
    out = _run("bench_accuracy", budget=0.5, budgets=[0.5, 1.0])
    assert out["budgets"] == [0.5, 1.0] and set(out["budget_curve"]) == {"ups", "fno", "unet", "fno_b8"}
    for curve in out["budget_curve"].values():
        assert set(curve) == {"0.5", "1"} and all(c["rollout_nrmse"] > 0 and c["steps"] >= 1 for c in curve.values())
    assert out["budget_curve"]["ups"]["0.5"]["rollout_nrmse"] == pytest.approx(out["models"]["ups"]["rollout_nrmse"])
    table = _summary(tmp_path, "accuracy", out)
    assert "Budget curve" in table and "| model | 0.5 s | 1 s |" in table


def test_budget_curve_extended_by_a_later_run_reuses_the_earlier_budget(tmp_path):
    first = _run("bench_accuracy", budget=0.5, models=["ups", "fno"])
    later = _run("bench_accuracy", budget=0.5, budgets=[1.0], models=["ups", "fno"], reuse=first)
    assert later["reused"] == {"0.5": ["fno", "ups"]} and later["budgets"] == [0.5, 1.0]
    assert later["trained_together"] == first["trained_together"]  # nothing new at the headline budget
    for key in ("ups", "fno"):  # the reused budget's results are the first run's, the new one is trained
        assert later["budget_curve"][key]["0.5"] == first["budget_curve"][key]["0.5"]
        assert later["budget_curve"][key]["1"]["steps"] >= 1
    from accuracy_common import reused_results

    data = {k: v for k, v in first["data"].items() if k != "rollout_steps"}
    with pytest.raises(UPSError, match="--reuse"):  # other data, none of the models, a quick result in a full run
        reused_results(first, keys=["ups"], data={**data, "train": data["train"] + 1}, quick=True)
    with pytest.raises(UPSError, match="--reuse"):
        reused_results(first, keys=["unet"], data=data, quick=True)
    assert set(reused_results(first, keys=["ups", "unet"], data=data, quick=True)[0.5]) == {"ups"}  # unet: trained
    third = _run("bench_accuracy", budget=0.5, budgets=[1.0, 1.5], models=["ups"], reuse=later)
    assert third["reused"] == {"0.5": ["ups"], "1": ["ups"]}  # the earlier curve point is kept, only 1.5 s trained
    assert third["budget_curve"]["ups"]["1"] == later["budget_curve"]["ups"]["1"]
    assert third["budget_curve"]["ups"]["1.5"]["steps"] >= 1
    with pytest.raises(UPSError, match="--reuse"):
        reused_results(first, keys=["ups"], data=data, quick=False)


def test_budgets_flag_parses_and_rejects_bad_values():
    import argparse

    import bench_accuracy

    assert bench_accuracy.parse_budgets("300,900,1800") == [300.0, 900.0, 1800.0]
    for bad in ("300,abc", "0,900", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--budgets"):
            bench_accuracy.parse_budgets(bad)


@pytest.mark.slow
def test_inference_quick(tmp_path):
    out = _run("bench_inference")
    assert out["benchmark"] == "inference" and out["solver"]["seconds"] > 0
    assert out["solver"]["nrmse_vs_test_data"] < 0.2  # the solver reproduces the test frames
    for part, names in ((out, ("ups", "ups_latent", "fno", "unet", "ups_multi_corrector", "ups_distilled_corrector")),
                        (out["full_resolution"], ("ups", "ups_latent", "fno", "unet"))):
        for name in names:
            m = part["models"][name]
            assert m["seconds"] > 0
            assert m["speedup_vs_solver"] == pytest.approx(part["solver"]["seconds"] / m["seconds"])
    assert out["full_resolution"]["points"] == 4 * out["points"]  # every cell: the quick data's stride is 4
    for part in (out, out["full_resolution"]):  # the solver's own grid: at least the output's, whatever it is
        assert part["solver"]["internal_resolution"] >= part["points"] and part["solver"]["steps_per_frame"] >= 1
    assert f"(internal grid {out['solver']['internal_resolution']} points" in _summary(tmp_path, "inference", out)
    assert out["models"]["ups"]["rollout_mode"] == "reencode_x2"  # configs/burgers1d.yaml's; every other mode too
    assert out["models"]["ups_reencode"]["rollout_mode"] == "reencode"
    assert out["models"]["ups_latent"]["rollout_mode"] == "latent"
    bundled = out["models"]["ups_frames_per_step_4"]  # the same UPS bundled, timed beside it
    assert bundled["frames_per_step"] == 4 and out["models"]["ups"]["frames_per_step"] == 1
    assert bundled["rollout_mode"] == "reencode_x2"
    corrected = out["models"]["ups_multi_corrector"]
    assert corrected["params"] > out["models"]["ups"]["params"]  # the corrector's weights are counted
    assert corrected["rollout_mode"] == "reencode_x2"  # the refiner corrects the model's own rollout
    table = _summary(tmp_path, "inference", out)
    row = f"| ups_multi_corrector | reencode_x2 | 1 | {corrected['params']} | {corrected['ms_per_sample']:.3g} |"
    assert row in table  # one frame per step: the corrector refines every frame
    assert f"at {out['full_resolution']['points']} points" in table


@pytest.mark.slow
def test_training_quick(tmp_path):
    out = _run("bench_training", budget=0.5, processes=())  # torchrun itself: tests/training/test_distributed.py
    assert out["benchmark"] == "training"
    ups, fno = out["models"]["ups"], out["models"]["fno"]
    assert abs(fno["params"] - ups["params"]) <= 0.25 * ups["params"]  # matched sizes
    for m in (ups, fno):
        assert m["samples_per_s"] == pytest.approx(m["steps_per_s"] * m["batch_size"]) and m["peak_rss_mib"] > 0
    assert out["ratio_ups_over_fno_samples_per_s"] == pytest.approx(ups["samples_per_s"] / fno["samples_per_s"])
    table = _summary(tmp_path, "training", out)
    assert f"| fno | {fno['params']} | {fno['ms_per_step']:.3g} | {fno['samples_per_s']:.3g} |" in table


def test_training_scale_out_rate_and_table(tmp_path):
    import bench_training
    import summarize

    log = [{"stage": "operator", "kind": "health", "step": s, "elapsed_s": 0.5 * s} for s in range(1, 11)]
    log.insert(4, {"stage": "operator", "kind": "event", "step": 4})
    rate = bench_training.rate_from_log(log, stage="operator", global_batch=8, skip=3)
    assert rate["steps"] == 6 and rate["seconds"] == pytest.approx(3.0)
    assert rate["samples_per_s"] == pytest.approx(16.0)  # 6 steps x 8 samples in 3 s
    with pytest.raises(RuntimeError, match="only 10 step records"):
        bench_training.rate_from_log(log, stage="operator", global_batch=8, skip=9)
    runs = {str(n): {"processes": n, "global_batch": 8, "steps": 6, "samples_per_s": 16.0 * f, "speedup_vs_1": f}
            for n, f in ((1, 1.0), (2, 1.5))}
    res = {"threads": 1, "points": 32, "ratio_ups_over_fno_samples_per_s": 0.5,
           "models": {"ups": {"params": 10, "samples_per_s": 1.0, "peak_rss_mib": 1.0}},
           "distributed": {"backend": "gloo", "threads_per_process": 1, "stage": "operator",
                           "shared_machine_cores": 2, "runs": runs}}
    (tmp_path / "training.json").write_text(json.dumps(res))
    table = summarize.summarize(tmp_path)
    assert "| 2 | 8 | 6 | 24 | 1.5 |" in table and "shared 2-core machine" in table


def test_benchmarks_refuse_mismatched_data(tmp_path):
    sys.path.insert(0, str(BENCH))
    from peers_common import load_bench_config, same_data

    from ups.errors import UPSError

    a = load_bench_config("fno_burgers1d", quick=True, work=tmp_path)
    b = load_bench_config("unet_burgers1d", quick=True, work=tmp_path, extra=["data.spatial_stride=2"])
    same_data(a, load_bench_config("unet_burgers1d", quick=True, work=tmp_path))
    with pytest.raises(UPSError, match="differ in data.spatial_stride"):
        same_data(a, b)


def test_run_all_loads_modules_whose_functions_reach_worker_processes():
    import pickle

    sys.path.insert(0, str(BENCH))
    import run_all

    module = run_all.load(BENCH / "bench_training.py")
    assert pickle.loads(pickle.dumps(module._measure)) is module._measure  # by reference, importable by name


def test_datagen_quick_reports_every_pde(tmp_path):
    out = _run("bench_datagen")
    assert set(out["pdes"]) == {"burgers1d", "ks1d", "diffusion_reaction1d", "ns2d"}
    assert all(m["samples_per_s"] > 0 and m["samples"] >= 1 for m in out["pdes"].values())
    assert out["samples_per_s"] == out["pdes"]["burgers1d"]["samples_per_s"]
    assert "| ns2d |" in _summary(tmp_path, "datagen", out)


@pytest.mark.slow
@pytest.mark.parametrize("name,pde", [("bench_accuracy_ks", "ks1d"), ("bench_accuracy_ns2d", "ns2d"),
                                      ("bench_accuracy_dr1d", "diffusion_reaction1d")])
def test_other_pde_accuracy_quick(tmp_path, name, pde):
    out = _run(name, budget=1.0)
    # on NS, FNO-2D also trains at UPS's batch size (a peer variant): UPS beats FNO only if it beats both
    variants = {"fno_b4"} if pde == "ns2d" else set()
    assert out["data"]["pde"] == pde and set(out["models"]) == {"ups", "fno", "unet", "persistence"} | variants
    if variants:
        assert out["models"]["fno_b4"]["config"] == "fno_ns2d"
        assert out["models"]["fno_b4"]["overrides"] == ["data.batch_size=4"]
        assert out["ratio_ups_over_fno_rollout_nrmse"] == pytest.approx(
            max(out["ratios"]["ups_over_fno"], out["ratios"]["ups_over_fno_b4"]))
    steps = out["data"]["rollout_steps"]
    for key in ("ups", "fno", "unet"):
        m = out["models"][key]
        assert MODEL_KEYS <= set(m) and len(m["nrmse_per_step"]) == steps
        corr = m["high_corr"]
        assert set(corr) == {"0.8", "0.9"} and corr["0.9"]["steps"] <= corr["0.8"]["steps"]
        assert m["rel_l2_full"] > 0
    for key, ratio in out["ratios"].items():
        peer = key.removeprefix("ups_over_")
        assert ratio == pytest.approx(out["models"]["ups"]["rollout_nrmse"] / out["models"][peer]["rollout_nrmse"])
    table = _summary(tmp_path, out["benchmark"], out)
    assert f"| ups | {out['models']['ups']['params']} |" in table and "corr. > 0.8" in table
    if pde == "ns2d":  # super-resolution: the same test trajectories at twice the resolution, models unchanged
        for key in ("ups", "fno"):
            assert out["models"][key]["superres_points"] == 4 * out["data"]["points"]
            assert out["models"][key]["rollout_nrmse_superres"] > 0
        assert out["models"]["unet"]["rollout_nrmse_superres"] is None
        assert "training grid" in out["models"]["unet"]["superres_error"]
        assert f"at {4 * out['data']['points']} points" in table


@pytest.mark.slow
def test_ns_point_cloud_variant_is_scored_on_the_full_grid_against_ups(tmp_path):
    out = _run("bench_accuracy_ns2d", budget=1.0, models=["ups", "ups_points50"])
    ups, cloud = out["models"]["ups"], out["models"]["ups_points50"]
    assert cloud["overrides"] == ["data.point_subset={fraction: 0.5, min_points: 64}"] and ups["overrides"] == []
    assert len(cloud["nrmse_per_step"]) == out["data"]["rollout_steps"]  # the same full-grid test rollouts
    assert out["ratios"] == {"ups_points50_over_ups": pytest.approx(cloud["rollout_nrmse"] / ups["rollout_nrmse"])}
    assert "UPS_POINTS50 / UPS" in _summary(tmp_path, out["benchmark"], out)


@pytest.mark.slow
def test_accuracy_models_train_side_by_side_in_worker_processes():
    """parallel=2: UPS and FNO train together in two spawned processes (one thread each), then the U-Net; the
    parent's thread setting is untouched."""
    threads = torch.get_num_threads()
    out = _run("bench_accuracy", budget=0.5, parallel=2, models=["ups", "fno"])
    assert out["trained_together"] == [["ups", "fno"]] and set(out["models"]) == {"ups", "fno", "persistence"}
    assert all(out["models"][k]["steps"] >= 1 for k in ("ups", "fno"))
    assert torch.get_num_threads() == threads


def test_accuracy_verdict_against_fno_at_batch_8_alone():
    """A run of UPS and FNO's batch-8 variant only (``--models ups,fno_b8``) still gives the UPS / FNO verdict."""
    out = _run("bench_accuracy", budget=0.5, models=["ups", "fno_b8"])
    assert out["ratio_ups_over_fno_rollout_nrmse"] == pytest.approx(
        out["models"]["ups"]["rollout_nrmse"] / out["models"]["fno_b8"]["rollout_nrmse"])
    assert out["ups_beats_fno"] == (out["ratio_ups_over_fno_rollout_nrmse"] < 1)


def test_accuracy_trains_a_ups_variant_given_on_the_command_line():
    """``--variant NAME=OVERRIDES`` trains a UPS variant beside the chosen models, with its overrides recorded and
    its ratio to UPS reported."""
    out = _run("bench_accuracy", budget=0.5, models=["ups"],
               variants={"ups_k2": ("stages.operator.rollout_steps=2",)})
    assert set(out["models"]) == {"ups", "ups_k2", "persistence"}
    assert out["models"]["ups_k2"]["overrides"] == ["stages.operator.rollout_steps=2"]
    assert out["models"]["ups_k2"]["steps"] >= 1
    assert out["ratios"]["ups_k2_over_ups"] == pytest.approx(
        out["models"]["ups_k2"]["rollout_nrmse"] / out["models"]["ups"]["rollout_nrmse"])


def test_accuracy_variant_flag_parses_and_rejects_bad_input():
    import argparse

    import bench_accuracy

    assert bench_accuracy.parse_variant("ups_k2=stages.operator.rollout_steps=2; training.lr=0.002") == (
        "ups_k2", ("stages.operator.rollout_steps=2", "training.lr=0.002"))
    for bad in ("ups_k2", "ups_k2=", "ups_k2=training.lr", "=training.lr=0.1", "my variant=training.lr=0.1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--variant wants NAME=KEY=VALUE"):
            bench_accuracy.parse_variant(bad)
    with pytest.raises(UPSError, match="--variant fno: that name is taken"):
        bench_accuracy.run(quick=True, variants={"fno": ("training.lr=0.1",)})


def test_a_model_added_to_a_reused_curve_trains_at_the_asked_budget_only(tmp_path):
    first = _run("bench_accuracy", budget=0.5, budgets=[1.0], models=["ups"])
    added = _run("bench_accuracy", budget=0.5, models=["fno"], reuse=first)  # UPS is not named: it comes along
    assert added["reused"] == {"0.5": ["ups"], "1": ["ups"]} and added["trained_together"][-1] == ["fno"]
    assert added["budgets"] == [0.5, 1.0]
    assert set(added["budget_curve"]["fno"]) == {"0.5"}  # not trained at the reused curve's 1 s
    assert added["budget_curve"]["ups"] == first["budget_curve"]["ups"]
    assert added["ratios"]["ups_over_fno"] == pytest.approx(
        first["models"]["ups"]["rollout_nrmse"] / added["models"]["fno"]["rollout_nrmse"])
    table = _summary(tmp_path, "accuracy", added)
    row = next(line for line in table.splitlines() if line.startswith("| fno |") and line.count("|") == 4)
    assert row.endswith("| — |")  # the curve's 1-s cell of a model not trained there is empty


def test_accuracy_rejects_an_unknown_model():
    import bench_accuracy

    from ups.errors import UPSError

    with pytest.raises(UPSError, match="models gno: choose among ups, fno, unet"):
        bench_accuracy.run(quick=True, models=["ups", "gno"])


def test_summarize_writes_the_tables_between_the_readme_markers(tmp_path):
    import summarize

    from ups.errors import UPSError

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{summarize.BEGIN}\nold table\n{summarize.END}\noutro\n")
    summarize.update_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{summarize.BEGIN}\n| new |\n{summarize.END}\noutro\n"
    summarize.update_readme(readme, "| newer |\n")  # idempotent: the markers stay, the old tables go
    assert readme.read_text().count("| new") == 1 and "| newer |" in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(UPSError, match="benchmark-table markers|needs one"):
        summarize.update_readme(readme, "| x |\n")
    assert readme.read_text() == "no markers\n"  # nothing lost


def test_readme_benchmark_tables_are_the_committed_json():
    """The README's tables between the markers are exactly what summarize.py makes from benchmarks/results."""
    import summarize

    results = BENCH / "results"
    if not any((results / f"{n}.json").is_file() for n in summarize.SECTIONS):
        pytest.skip("no benchmark results committed")
    readme = (BENCH.parent / "README.md").read_text()
    block = readme.split(summarize.BEGIN + "\n", 1)[1].split(summarize.END, 1)[0]
    assert block == summarize.summarize(results), "run: python benchmarks/summarize.py --readme README.md"


@pytest.mark.slow
def test_multi_pde_quick(tmp_path):
    """The mixture model trains members x the single models' budget; every model is scored on its PDEs by the
    one scorer, and the README table shows each PDE's three rows and the mixture / single ratios."""
    out = _run("bench_multi_pde", budget=1.0)
    pdes = ["burgers1d", "ks1d", "diffusion_reaction1d"]
    assert out["benchmark"] == "multi_pde" and list(out["per_pde"]) == pdes
    assert set(out["models"]) == {"mixture", *pdes}
    assert out["models"]["mixture"]["budget_s"] == pytest.approx(3 * out["budget_s"])
    assert list(out["models"]["mixture"]["per_pde"]) == pdes
    for pde in pdes:
        single = out["models"][pde]
        assert list(single["per_pde"]) == [pde] and single["budget_s"] == pytest.approx(out["budget_s"])
        assert single["rollout_rules"]["max_principle"] is False  # the mixture's rule (it has none)
        c = out["per_pde"][pde]
        assert c["single"] == single["per_pde"][pde] and c["mixture"] == out["models"]["mixture"]["per_pde"][pde]
        assert c["ratio_mixture_over_single"] == pytest.approx(c["mixture"]["rollout_nrmse"]
                                                               / c["single"]["rollout_nrmse"])
        for m in (c["single"], c["mixture"], c["persistence"]):
            assert m["samples"] == out["data"][pde]["test"] and 0 <= m["diverged"] <= m["samples"]
            assert len(m["nrmse_per_step"]) == out["data"][pde]["rollout_steps"]
            assert 0 <= m["high_corr"]["0.8"]["steps"] <= out["data"][pde]["rollout_steps"]
    for m in out["models"].values():
        assert m["status"] == "time_budget" and m["steps"] >= 1
    table = _summary(tmp_path, "multi_pde", out)
    ks = out["models"]["ks1d"]
    assert f"| ks1d | single | {ks['steps']} |" in table and "| ks1d | persistence | — |" in table
    assert "Mixture / single-PDE rollout nRMSE" in table and "1 CPU seconds on its PDE alone" in table


@pytest.mark.slow
def test_multi_pde_scores_a_mixture_member_as_its_own_data_set(tmp_path):
    """Persistence scored as one member of the mixture (its normaliser, its physical metadata) equals
    persistence scored on that PDE's data set alone."""
    sys.path.insert(0, str(BENCH))
    from bench_multi_pde import mixture_config, single_config
    from peers_common import Bench, evaluate

    from ups.models.persistence import Persistence

    mix = Bench.open(mixture_config(quick=True, work=tmp_path))
    for pde in ("ks1d", "burgers1d"):
        alone = evaluate(Persistence(), Bench.open(single_config(mix.exp, pde)))
        member = evaluate(Persistence(), mix, member=pde)
        for key in ("nrmse", "nrmse_one_step", "corr_time", "rel_l2_full"):
            assert member[key] == pytest.approx(alone[key], rel=1e-6), (pde, key)
        assert member["high_corr"] == alone["high_corr"] and member["samples"] == alone["samples"]


def test_multi_pde_single_config_is_the_mixture_on_one_member(tmp_path):
    from bench_multi_pde import mixture_config, single_config

    from ups.errors import UPSError

    mix = mixture_config(quick=False, work=tmp_path)
    ks = single_config(mix, "ks1d")
    member = next(m for m in mix.data.mixture.members if m.pde == "ks1d")
    assert ks.data.mixture is None and ks.data.pde == "ks1d" and ks.data.test == member.test
    assert Path(ks.data.train).is_absolute() and ks.data.batch_size == mix.data.batch_size
    assert ks.model.params["param_transform"] == "log" and ks.stages["operator"]["max_principle"] is False
    assert ks.training == mix.training and ks.model.params["latent_dim"] == mix.model.params["latent_dim"]
    with pytest.raises(UPSError, match="'advection1d' is not a member of multi1d"):
        single_config(mix, "advection1d")


def test_multi_pde_rejects_a_bad_budget_in_one_line(capsys):
    import bench_multi_pde

    assert bench_multi_pde.main(["--budget", "0", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --budget must be a positive number of CPU seconds, got 0"]


def test_summarize_says_how_many_rollouts_diverged():
    import summarize

    m = {"rollout_nrmse": float("nan"), "rollout_nrmse_finite": 0.0512, "diverged": 2, "samples": 32}
    assert summarize._rollout(m) == "nan (2 of 32 diverged, 0.0512 on the rest)"
    assert summarize._rollout({**m, "rollout_nrmse_finite": None, "diverged": 32}) == "nan (32 of 32 diverged)"
    assert summarize._rollout({**m, "rollout_nrmse": 0.05, "diverged": 0}) == pytest.approx(0.05)
    assert summarize._rollout({"rollout_nrmse": 0.05}) == pytest.approx(0.05)  # older JSON without the count


def test_a_reused_row_is_labelled_only_at_the_budget_it_was_reused_for():
    import summarize

    res = {"budget_s": 900.0, "reused": {"900": ["unet"], "300": ["fno"]}}
    assert summarize._label("unet", res) == "unet (reused)"
    assert summarize._label("fno", res) == "fno"  # reused for the 300-s point of the curve, trained at 900
    assert summarize._label("ups", {"budget_s": 900.0}) == "ups"  # older JSON without the field


def test_ttc_verdict_needs_one_measure_better_and_none_worse():
    """A saturated nRMSE that falls while the correlation shortens is "mixed", not help (the KS run: x0.97, x0.92)."""
    import summarize
    assert summarize.ttc_verdict(0.97, 0.92) == "mixed"
    assert summarize.ttc_verdict(0.97, 1.0) == "helps"
    assert summarize.ttc_verdict(1.0, 1.25) == "helps"
    assert summarize.ttc_verdict(float("nan"), 1.25) == "helps"  # a diverged rollout: judged on correlation alone
    assert summarize.ttc_verdict(1.0, 1.0) == "does not help"
    assert summarize.ttc_verdict(1.02, 0.9) == "does not help"


def test_corrector_calls_count_the_deterministic_levels_and_the_ttc_samples():
    import bench_corrector

    from ups.models.refiner import FieldCorrectedSurrogate, FieldRefiner, RefinerConfig

    refiner = FieldRefiner(channels=1, n_cond=1, spatial_shape=(16,), periodic=True,
                           config=RefinerConfig(width=4, depth=1, steps=3))
    wrapped = FieldCorrectedSurrogate(model=torch.nn.Identity(), corrector=refiner, steps=1)
    assert bench_corrector.corrector_calls(torch.nn.Identity()) == 0
    assert bench_corrector.corrector_calls(wrapped) == 2  # the correction + one denoising level
    assert bench_corrector.corrector_calls(wrapped, 4) == 2 + 3 * 4  # 3 samples through all 3 levels + 1


@pytest.mark.slow
def test_corrector_quick(tmp_path):
    """Both arms train to their CPU budgets, every variant is scored on the whole test trajectories, the
    verdict's ratios are those of the variants, and the README table shows each variant's row."""
    out = _run("bench_corrector", problems=("ks1d",))
    res = out["problems"]["ks1d"]
    v, verdict = res["variants"], res["verdict"]
    subset = " (1 of 2 test trajectories)"  # quick mode scores TTC on one trajectory, with and without it
    assert set(v) == {"operator alone", "operator (its own part of the budget)", "operator + corrector",
                      "operator + distilled corrector", "operator + corrector" + subset,
                      "operator + corrector + TTC best-of-2" + subset}
    for arm in res["training"].values():
        assert all(stage["status"] == "time_budget" and stage["steps"] >= 1 for stage in arm.values())
    steps = res["data"]["rollout_steps"]
    for m in v.values():
        assert len(m["nrmse_per_step"]) == steps and m["cpu_ms_per_step"] > 0
        assert 0 <= m["corr_steps_0.9"] <= m["corr_steps_0.8"] <= steps
    assert v["operator alone"]["corrector_calls"] == 0
    assert 1 <= v["operator + corrector"]["corrector_calls"] <= 4 and v["operator + distilled corrector"][
        "corrector_calls"] <= 2
    ttc, base = v["operator + corrector + TTC best-of-2" + subset], v["operator + corrector" + subset]
    assert ttc["corrector_calls"] == base["corrector_calls"] + 4  # one sample through all K = 3 levels + correction
    assert verdict["ttc_nrmse_ratio"] == pytest.approx(ttc["rollout_nrmse"] / base["rollout_nrmse"])
    assert verdict["nrmse_ratio"] == pytest.approx(v["operator + corrector"]["rollout_nrmse"]
                                                   / v["operator alone"]["rollout_nrmse"])
    assert verdict["corrector_meets_1.2x"] == (verdict["corr_ratio_0.8"] >= 1.2)
    table = _summary(tmp_path, "corrector", out)
    row = v["operator + corrector"]
    assert (f"| operator + corrector | {row['train_cpu_s']:.3g} | {row['corrector_calls']} | "
            f"{row['cpu_ms_per_step']:.3g} | {row['rollout_nrmse']:.3g} |") in table
    assert ("does not meet 1.2x" in table) != verdict["corrector_meets_1.2x"]


def test_corrector_rejects_a_budget_the_corrector_would_fill():
    import bench_corrector

    from ups.errors import UPSError

    with pytest.raises(UPSError, match="corrector seconds 300 must lie between 0 and the budget 300"):
        bench_corrector.make_setup("ks1d", quick=False, budget=300.0, corrector_s=300.0)
    setup = bench_corrector.make_setup("ks1d", quick=False, budget=150.0)  # make bench shares its budget
    default = bench_corrector.SETUPS["ks1d"]
    assert setup.corrector_s == pytest.approx(default.corrector_s / 2) and setup.distill_s == pytest.approx(
        default.distill_s / 2)
    with pytest.raises(UPSError, match="unknown problem 'ns9d'"):
        bench_corrector.make_setup("ns9d", quick=False)


def test_inference_timings_interleave_the_models():
    """Every repeat times every model once, in turn (a machine that drifts during the run favours none), and each
    model's time is its best pass over all the batches."""
    bench_inference = importlib.import_module("bench_inference")
    calls: list[tuple[str, int]] = []
    record = lambda name: lambda u0, *rest: calls.append((name, u0.shape[0]))  # noqa: E731
    data = {"u": torch.zeros(5, 3, 4, 1), "coords": torch.zeros(5, 4, 1), "params": torch.zeros(5, 1),
            "dt": torch.ones(5)}
    best = bench_inference._time_rollouts({"a": record("a"), "b": record("b")}, data, 2, 2)
    assert calls == [("a", 2), ("a", 2), ("a", 1), ("b", 2), ("b", 2), ("b", 1)] * 2  # batches of 2: 2 + 2 + 1
    assert set(best) == {"a", "b"} and all(v >= 0 for v in best.values())


@pytest.mark.slow
def test_corrector_bound_quick(tmp_path):
    """The oracle bound: the solver's step reproduces the data, and scaling the operator's own step error by f scales
    every one-step error by exactly f (a one-step prediction from a true frame carries only its own error)."""
    import bench_corrector_bound

    out = _run("bench_corrector_bound")
    assert out["solver_check"] < 1e-6
    v = out["variants"]
    assert set(v) == set(bench_corrector_bound.ORACLES)
    plain = v["operator, no correction"]["one_step_nrmse"]
    for name, factor in (("error x 0.5", 0.5), ("error x 0.25", 0.25)):
        assert v[name]["one_step_nrmse"] == pytest.approx(factor * plain, rel=1e-3)
    assert v["exact above mode 16"]["one_step_nrmse"] < plain  # the untrained operator errs at every mode
    for name, verdict in out["verdict"].items():
        assert verdict["reaches_target"] == (v[name]["corr_steps_0.8"] >= out["target_corr_steps_0.8"])
    assert out["target_corr_steps_0.8"] == pytest.approx(1.2 * out["operator_alone"]["corr_steps_0.8"])
    table = _summary(tmp_path, "corrector_bound", out)
    assert f"| error x 0.5 | {v['error x 0.5']['rollout_nrmse']:.3g} |" in table


def test_oracle_rollout_without_scaling_is_the_reencoding_rollout():
    import bench_corrector_bound

    from test_fine_grid import tiny_upt
    from ups.rollout import rollout_fn

    model = tiny_upt()
    g = torch.Generator().manual_seed(3)
    x = ((torch.arange(32) + 0.5) / 32).view(1, 32, 1).expand(2, -1, -1)
    u0, params, dt = torch.randn(2, 32, 1, generator=g), torch.full((2, 1), 0.01), torch.full((2,), 0.1)
    oracle = bench_corrector_bound.oracle_rollout_fn(model, None, first=0, end=None, factor=1.0)
    ref = rollout_fn(model, mode="reencode")(u0, x, params, dt, 5)
    got = oracle(u0, x, params, dt, 5)
    assert got.shape == ref.shape == (2, 5, 32, 1)
    assert torch.allclose(got, ref, atol=1e-6)


def test_oracle_bound_refuses_data_off_the_solver_grid():
    from types import SimpleNamespace

    import bench_corrector_bound

    meta = SimpleNamespace(spatial_dims=1, n_channels=1, pde="burgers1d", spatial_shape=(256,), dt=0.05)
    data = SimpleNamespace(generate=SimpleNamespace(params={"nu": 0.01}), spatial_stride=4)
    with pytest.raises(UPSError, match="on the solver's own grid"):
        bench_corrector_bound.ExactStep(SimpleNamespace(meta=meta, exp=SimpleNamespace(data=data), normalizer=None))
