"""The cloud and cluster launch files: SkyPilot task, SLURM template, and the start-or-resume script.

The SkyPilot task is checked against the task schema SkyPilot documents (docs.skypilot.co,
reference/yaml-spec: top-level fields, resources, autostop, job_recovery, file_mounts), written out
below, and with SkyPilot's own parser when its package is installed (``pip install 'ups[cloud]'``).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
TASK = DEPLOY / "skypilot" / "train.yaml"
SBATCH = DEPLOY / "slurm" / "train.sbatch"
SCRIPT = DEPLOY / "torchrun_ups.sh"

# The documented task schema (fields and their types), as far as this task uses it
TOP = {"name": str, "workdir": str, "num_nodes": int, "resources": dict, "envs": dict, "secrets": dict,
       "file_mounts": dict, "setup": str, "run": str, "config": dict}
RESOURCES = {"infra": str, "cloud": str, "region": str, "zone": str, "accelerators": (str, dict, list),
             "accelerator_args": dict, "cpus": (str, int, float), "memory": (str, int, float),
             "instance_type": str, "use_spot": bool, "disk_size": int, "disk_tier": str, "network_tier": str,
             "ports": (int, str, list), "image_id": (str, dict), "labels": dict, "autostop": (bool, int, str, dict),
             "any_of": list, "ordered": list, "job_recovery": (str, dict), "max_hourly_cost": (int, float)}
AUTOSTOP = {"idle_minutes": int, "down": bool, "wait_for": str, "hook": str, "hook_timeout": int}
JOB_RECOVERY = {"strategy": str, "max_restarts_on_errors": int}
STRATEGIES = {"FAILOVER", "EAGER_NEXT_REGION"}
MOUNT = {"name": str, "source": (str, list), "store": str, "mode": str, "persistent": bool}
MODES = {"MOUNT", "COPY", "MOUNT_CACHED"}


def _check(section: dict, schema: dict, where: str) -> None:
    for key, value in section.items():
        assert key in schema, f"{where}.{key} is not a documented field"
        assert value is None or isinstance(value, schema[key]), f"{where}.{key}: {type(value).__name__}"


def test_skypilot_task_follows_the_documented_schema():
    task = yaml.safe_load(TASK.read_text())
    _check(task, TOP, "task")
    res = task["resources"]
    _check(res, RESOURCES, "resources")
    assert re.fullmatch(r"[A-Za-z0-9-]+:\d+", res["accelerators"])  # NAME:COUNT, overridden by --gpus
    _check(res["autostop"], AUTOSTOP, "resources.autostop")
    _check(res["job_recovery"], JOB_RECOVERY, "resources.job_recovery")
    assert res["job_recovery"]["strategy"] in STRATEGIES
    assert res["use_spot"] is True and res["autostop"]["down"] is True  # spot, and released when done
    envs = task["envs"]
    assert all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in envs.items())
    for target, mount in task["file_mounts"].items():
        assert target.startswith("/")
        if isinstance(mount, dict):
            _check(mount, MOUNT, f"file_mounts.{target}")
            assert mount["mode"] in MODES
    used = set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(task["file_mounts"])))
    assert used <= set(envs), f"file_mounts use undefined envs {used - set(envs)}"
    assert envs["UPS_BUCKET"] is None  # required at launch (SkyPilot refuses a null env left unset)


def test_skypilot_task_installs_syncs_and_resumes_from_the_bucket():
    task = yaml.safe_load(TASK.read_text())
    assert "make install" in task["setup"]
    runs = next(t for t, m in task["file_mounts"].items() if isinstance(m, dict) and m.get("name") == "${UPS_BUCKET}")
    assert task["file_mounts"][runs]["mode"].startswith("MOUNT")
    assert f"UPS_RUN_DIR={runs}/" in task["run"] and "deploy/torchrun_ups.sh" in task["run"]
    assert "SKYPILOT_NUM_GPUS_PER_NODE" in task["run"] and "SKYPILOT_NODE_RANK" in task["run"]


def test_skypilot_parser_accepts_the_task():
    sky = pytest.importorskip("sky", reason="SkyPilot is an optional extra: pip install 'ups[cloud]'")
    task = sky.Task.from_yaml_config(yaml.safe_load(TASK.read_text()), env_overrides=[("UPS_BUCKET", "b")])
    assert task.num_nodes == 1 and "torchrun_ups.sh" in task.run


def _script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "UPS_DRY_RUN": "1", "UPS_CONFIG": "configs/burgers1d.yaml", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, cwd=tmp_path)


def test_start_or_resume_script(tmp_path):
    run = tmp_path / "bucket" / "run"
    fresh = _script(tmp_path, UPS_RUN_DIR=str(run), UPS_OVERRIDES="training.epochs=3")
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.split()[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=gpu", "--standalone", "-m",
                                        "ups", "train", "configs/burgers1d.yaml", "training.epochs=3", "--run-dir",
                                        str(run)]
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    again = _script(tmp_path, UPS_RUN_DIR=str(run), UPS_COMMAND="pipeline", NNODES="2", NPROC="4", NODE_RANK="1",
                    MASTER_ADDR="10.0.0.1")
    lines = again.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"-m ups train configs/burgers1d.yaml --resume {run}")
    assert "--nnodes=2 --node-rank=1 --master-addr=10.0.0.1 --master-port=29500" in lines[0]
    (run / "report.html").write_text("")
    assert "is finished" in _script(tmp_path, UPS_RUN_DIR=str(run), UPS_COMMAND="pipeline").stdout
    bad = _script(tmp_path, UPS_RUN_DIR=str(run), UPS_COMMAND="deploy")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: UPS_COMMAND=deploy: use train or pipeline"
    missing = _script(tmp_path, UPS_RUN_DIR="")
    assert missing.returncode != 0 and "UPS_RUN_DIR" in missing.stderr


def test_slurm_template():
    text = SBATCH.read_text()
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.M))
    assert {"nodes", "gpus-per-node", "time", "signal", "requeue"} <= set(opts)
    assert opts["signal"].startswith("TERM@")  # SIGTERM before the limit: one checkpoint, then requeue
    assert "scontrol requeue" in text and "deploy/torchrun_ups.sh" in text and "make install" in text
