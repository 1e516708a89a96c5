"""ups.allocator: freed memory stays in the process, so steps that reuse big buffers stop faulting pages in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

# A rollout-like step (8 MB and 2-4 MB intermediates, made and freed every call); prints the minor page faults
# per step in steady state, the pages the step's intermediates span, and whether the settings are in force.
SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from ups.allocator import retain_freed_memory
    applied = retain_freed_memory()
    torch.set_num_threads(1)
    x, w = torch.randn(32, 512, 4, 32), torch.randn(32, 64)
    def step():
        a = x * 1.5                                   # [32, 512, 4, 32]: 8 MB
        b = (a * x).sum(2)                            # [32, 512, 32]
        return torch.nn.functional.gelu(b @ w).sum()  # [32, 512, 64]
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    pages = (2 * x.numel() + 32 * 512 * 32 + 2 * 32 * 512 * 64) * 4 // 4096
    print(int(applied), faults, pages)
""")


def _run(env_value: str | None) -> tuple[bool, float, int]:
    env = {k: v for k, v in os.environ.items() if k != "UPS_RETAIN_FREED_MEMORY"}
    if env_value is not None:
        env["UPS_RETAIN_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    applied, faults, pages = out.stdout.split()
    return applied == "1", float(faults), int(pages)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_retained_memory_stops_page_faults():
    applied, faults, pages = _run(None)
    assert applied
    # without the settings glibc returns the 8 MB blocks to the kernel and every step faults ~all its pages in
    # again (~4,000 of ~6,600 here); with them the blocks are reused
    assert faults < 0.25 * pages, f"{faults} page faults per step for {pages} pages of intermediates"


def test_environment_turns_it_off():
    applied, _, _ = _run("0")
    assert not applied


def test_applied_once_per_process(monkeypatch):
    from ups import allocator

    calls = []
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_apply", lambda: calls.append(1) or True)
    assert allocator.retain_freed_memory() and allocator.retain_freed_memory()
    assert calls == [1]
