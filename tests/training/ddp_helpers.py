"""Tiny data + configs for the multi-process tests, and torchrun in a subprocess (gloo, one thread each)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from tests.helpers import write_ups_file

TINY_UPT = ["model.name=upt", "model.params.latent_dim=8", "model.params.num_supernodes=4", "model.params.heads=2",
            "model.params.operator_depth=1", "model.params.kernel_hidden=8", "model.params.decoder_hidden=8"]
# no random augmentation in the loss, so runs at different world sizes are the same optimisation bitwise
# up to float summation order (a permutation of the query points changes only that order)
OPERATOR = ["stages.operator.rollout_steps=1", "stages.operator.random_shift=false",
            "stages.operator.query_fraction=1.0", *TINY_UPT]
# the corrector stages, tiny (diff_residual's running statistics are broadcast from rank 0)
CORRECTORS = ["stages.diff_residual.corrector={width: 8, depth: 1, heads: 2}", "stages.diff_residual.stats_batches=2",
              "stages.diff_residual.residual_iters=2", "stages.consistency_distill={distill_num_taus: 1}",
              "stages.steady_prior.prior={width: 8, depth: 1, heads: 2}"]
BASELINE = ["model.name=unet1d", "model.params.width=4", "model.params.depth=1", "stages.baseline={}"]


def write_data(folder: Path, *, samples: int = 8, frames: int = 9, points: int = 16) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    x = (np.arange(points) + 0.5) / points
    paths = {}
    for i, split in enumerate(("train", "val")):
        n = samples if split == "train" else 2
        amp = rng.uniform(0.5, 1.5, size=(n, 1, 1))
        u = amp * np.sin(2 * np.pi * (x[None, None, :] - 0.1 * np.arange(frames)[None, :, None]))
        paths[split] = write_ups_file(folder / f"{split}.hdf5", u.astype(np.float32), seed=i)
    return paths


def config_file(folder: Path, data: dict[str, Path], extra: list[str]) -> Path:
    """A YAML config (through ``ups config``'s loader) for a tiny run; ``extra`` are dotted overrides."""
    from ups.config import load_config

    overrides = [f"data.train={data['train']}", f"data.val={data['val']}", "data.batch_size=8",
                 "data.random_offset=false", "training.epochs=2", "training.progress=lines", "training.lr=3e-3",
                 "training.warmup_steps=0", "training.health_every=1", "eval.batch_size=2", *extra]
    path = folder / "config.yaml"
    path.write_text(load_config(None, overrides).to_yaml())
    return path


def torchrun(nproc: int, args: list[str], *, cwd: Path) -> subprocess.Popen:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m ups ARGS`` (a free port each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ups", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal job


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_step(log: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``train_log.jsonl`` until a record reaches ``step`` (or the process ends)."""
    import json

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if log.is_file():
            for line in log.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if rec.get("step", -1) >= step:
                    return
        time.sleep(0.02)


def weights(run: Path, stem: str) -> dict:
    return load_file(str(run / "checkpoints" / f"{stem}.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
