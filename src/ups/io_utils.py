"""Atomic file writes and disk checks: nothing already written is lost or half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ups.errors import UPSError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``.

    On any exception the temporary file is removed and ``path`` (if it existed) is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota, read-only or vanished folder: the old file stays as it was
        raise write_error(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_error(path: Path, err: OSError) -> UPSError:
    """One line for a failed write: the file, the system's reason, that nothing old was lost, what to do."""
    if path.is_dir():
        return UPSError(f"cannot write {path}: it is a folder; give a file name, e.g. {path / 'out.hdf5'}")
    reason = err.strerror or str(err) or type(err).__name__
    kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was written"
    return UPSError(f"cannot write {path}: {reason}; {kept} (free disk space or fix the folder's permissions, "
                    "then run again; an interrupted training continues with --resume)")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result over ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and check a file can be written in it; one-line error naming ``what``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ups-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UPSError(f"{what} {path} cannot be written ({reason}); choose a writable folder") from None
    return path


def check_free_disk(path: str | Path, needed_bytes: int, what: str) -> None:
    """Raise a one-line error before long work if ``path``'s disk has less than ``needed_bytes``."""
    path = Path(path)
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise UPSError(
            f"not enough free disk for {what} at {path}: need {needed_bytes / 2**20:.1f} MiB, "
            f"have {free / 2**20:.1f} MiB (free space or choose another directory)"
        )


def file_sha256(path: str | Path, *, chunk: int = 2**22) -> str:
    """The sha256 of a whole file (streamed)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str | Path, *, chunk: int = 2**20) -> dict[str, Any]:
    """Size and sha256 of the first and last ``chunk`` bytes (cheap for multi-GB HDF5 files)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(chunk, size - chunk))
            digest.update(fh.read(chunk))
    return {"path": str(path), "size": size, "sha256_head_tail": digest.hexdigest()}
