"""Run directories, their metadata and logs, signals, and the rank-0 rule for side effects.

A run directory holds ``config.yaml`` (the resolved experiment config), ``meta.json`` (git commit,
package versions, torch threads and device, config hash, data fingerprints, start time),
``train_log.jsonl`` (one JSON object per line: health, epoch, event and warning records, each with its
``stage``) and ``checkpoints/``. Under ``torch.distributed`` only rank 0 writes or prints.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import threading
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ups.errors import UPSError
from ups.io_utils import atomic_write_json, atomic_write_text, ensure_writable_dir
from ups.rundir import RunFiles

RESUME_HINT = "ups train CONFIG --resume RUN_DIR"
_PACKAGES = ("ups", "torch", "numpy", "h5py", "safetensors", "pydantic", "pyyaml", "tqdm", "wandb")


def is_main_process() -> bool:
    """True unless ``torch.distributed`` is initialised and this process is not rank 0."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TrainingInterrupted(Exception):  # noqa: N818  (a status, not an error: the CLI exits 130)
    """Raised by ``Trainer.fit`` after SIGINT/SIGTERM once ``last`` and the training state are saved.

    Not a :class:`UPSError`: the CLI turns it into exit status 130 and prints its one-line message.
    """

    exit_code = 130

    def __init__(self, run_dir: Path, stage: str, step: int):
        self.run_dir, self.stage, self.step = Path(run_dir), stage, step
        super().__init__(f"interrupted at step {step} of stage '{stage}'; resume with: "
                         f"{RESUME_HINT.replace('RUN_DIR', str(run_dir))}")


# ------------------------------------------------------------------------------------ metadata
def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit of the repository holding ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_meta() -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


class RunDir(RunFiles):
    """Paths of one run directory (named in ``ups.rundir.RunFiles``), created or opened for training."""

    @classmethod
    def create(cls, out_dir: str | Path, name: str | None, exp: Any, *,
               data_fingerprints: dict[str, Any] | None = None) -> RunDir:
        """Make a new run directory ``out_dir/name`` (a numeric suffix if taken; ``name=None``: config
        name + timestamp) and write ``config.yaml`` and ``meta.json``. ``exp``: an ``ExperimentConfig``."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / (name or f"{getattr(exp, 'name', 'run')}_{stamp}")
        path, n = base, 1
        while path.exists() and any(path.iterdir()):
            path, n = base.with_name(f"{base.name}-{n}"), n + 1
        run = cls(path)
        if is_main_process():
            ensure_writable_dir(run.checkpoints, "the run directory's checkpoint folder")
            atomic_write_text(run.config_path, exp.to_yaml())
            meta = {"name": path.name, "start_time": _dt.datetime.now().astimezone().isoformat(),
                    "cwd": str(Path.cwd()),  # relative data paths of config.yaml are relative to it
                    "config_hash": exp.config_hash(), "data": data_fingerprints or {}, **environment_meta()}
            atomic_write_json(run.meta_path, meta)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (for ``--resume``); one-line error when it is not one."""
        run = cls(Path(path))
        if not run.config_path.is_file():
            raise UPSError(f"{path} is not a run directory (no config.yaml); pass the directory a run created")
        return run


# ------------------------------------------------------------------------------------ the log
class JsonlLog:
    """Appends one JSON object per line (rank 0 only); flushed after every record."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.enabled = is_main_process()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        path = Path(path)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop this stage's records written after global step ``step`` (work redone on resume)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in self.read(self.path) if r.get("stage") != stage or r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


# ------------------------------------------------------------------------------------ signals
class SignalFlag:
    """Context manager: SIGINT/SIGTERM set ``self.signum`` instead of killing the process.

    The trainer polls it at step boundaries. A second signal restores the default behaviour (a second
    Ctrl-C raises ``KeyboardInterrupt`` at once), except under torchrun, where one Ctrl-C reaches a rank
    twice (from the terminal and from the launcher) and the launcher enforces its own deadline.
    Outside the main thread it installs nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: Ctrl-C reaches the ranks and the launcher,
                return  # which passes it on again; the launcher kills ranks that do not stop in time itself
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self._restore()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


# ----------------------------------------------------------------------------------- feedback
class Reporter:
    """Progress and messages: a tqdm bar per epoch on a terminal, plain lines otherwise (rank 0 only).

    ``mode``: ``auto`` (bar when stderr is a TTY, else lines), ``bar``, ``lines`` or ``none``.
    Warnings go to stderr in every mode (also ``none``): they matter more than progress.
    """

    MININTERVAL = 0.1  # seconds between bar refreshes

    def __init__(self, mode: str = "auto"):
        self.main = is_main_process()
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if self.main else "none"
        self._bar = None

    def start_epoch(self, total: int | None, desc: str) -> None:
        if self.mode == "bar":
            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=self.MININTERVAL)

    def advance(self, postfix: dict[str, str] | None = None) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def line(self, message: str) -> None:
        if self.mode == "bar":
            tqdm.write(message)
        elif self.mode == "lines":
            print(message, flush=True)

    def warn(self, message: str) -> None:
        if self.main:
            tqdm.write(f"warning: {message}", file=sys.stderr)


class WandbLogger:
    """Weights & Biases behind ``config.wandb.enabled``; optional import, rank 0 only.

    One W&B run per process (= per pipeline): an already active ``wandb.run`` is reused, else one is
    started; the trainer never finishes it (call :func:`finish_wandb` at the end of the pipeline, or
    let wandb's exit hook do it). Metrics are logged as ``{prefix}/{field}``.
    """

    def __init__(self, wandb_cfg: Any, *, prefix: str, run_dir: Path, config: dict[str, Any], reporter: Reporter):
        self.prefix, self.run = prefix, None
        if not wandb_cfg.enabled or not is_main_process():
            return
        try:
            import wandb
        except ImportError:
            reporter.warn("wandb is not installed; W&B logging is off (pip install 'ups[wandb]')")
            return
        if wandb.run is None:
            wandb.init(project=wandb_cfg.project, mode=wandb_cfg.mode, dir=str(run_dir), name=Path(run_dir).name,
                       config=config)
        self.run = wandb.run

    def log(self, record: dict[str, Any]) -> None:
        if self.run is None:
            return
        flat: dict[str, float] = {}
        for key, value in record.items():
            if isinstance(value, dict):
                flat.update({f"{self.prefix}/{key}/{k}": v for k, v in value.items() if _is_number(v)})
            elif _is_number(value):
                flat[f"{self.prefix}/{key}"] = value
        if flat:
            self.run.log(flat)


def finish_wandb() -> None:
    """Finish the active W&B run, if wandb is installed and a run is active."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.run.finish()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
