"""Peak memory of one call, measured in a fresh interpreter (shared by the benchmarks that report it).

The parent runs ``python <bench file> --peak-rss <args...>``; the child builds the call from the args and hands it
to :func:`report_peak`, which prints the call's extra peak memory as one JSON line: on the CPU the peak resident set
(VmHWM, reset just before the call) minus the resident set before it (everything the call allocates: torch tensors,
faiss and BLAS buffers, allocator slack); on a GPU torch's peak allocated device memory minus what was allocated
before the call (after one call to compile the Triton kernels). In MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

import mmrec_fast
from conftest import DEVICE

#: the benchmark record's key of the figure: device memory on a GPU, resident set on the CPU
PEAK_KEY = "peak_extra_mb" if DEVICE == "cuda" else "peak_rss_mb"


def peak_memory_mb(script: str, *args: str) -> float | None:
    """Run ``script --peak-rss *args`` in a fresh interpreter; the MB it reports (None without /proc)."""
    if not Path("/proc/self/status").exists():
        return None
    result = subprocess.run([sys.executable, script, "--peak-rss", *args], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_mb"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def report_peak(run: Callable[[], object]) -> None:
    """The child's side: call ``run()`` once and print ``{"peak_extra_mb": ...}``."""
    mmrec_fast._native.is_available()  # load the extension before measuring
    if DEVICE == "cuda":
        run()  # compile the Triton kernels first
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        print(json.dumps({"peak_extra_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}))
        return
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    run()
    print(json.dumps({"peak_extra_mb": (_status_kb("VmHWM") - before) / 1024}))
