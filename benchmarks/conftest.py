"""Shared pieces of the microbenchmarks: data, synthetic graphs, peak-memory measurement, and the ratio table.

Run from the repository root:  pytest benchmarks/bench_<op>.py  (or `mmrec-fast bench <op>`).
Each benchmark group holds mmrec_fast and its baselines on the same input in the same run; at the end a table
prints each group's medians and the speedup of mmrec_fast (median of the baseline / median of mmrec_fast).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the benchmarks run

#: OpenBLAS cores whose kernels use AVX2 or AVX-512 (openblas_get_corename's names, lower case)
_VECTOR_CORES = {"haswell", "zen", "excavator", "skylakex", "cooperlake", "sapphirerapids"}
_PROBE_OPENBLAS = """
import ctypes, faiss
path = next(line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line)
name = ctypes.CDLL(path).openblas_get_corename
name.restype = ctypes.c_char_p
print(name().decode())
"""


def faiss_openblas_core() -> str | None:
    """Let faiss-cpu's bundled OpenBLAS use this CPU's vector kernels; returns the core it uses (None: no faiss).

    faiss-cpu's wheels bundle an OpenBLAS (0.3.15 in faiss-cpu 1.15.1) that picks its kernels by CPU model, and a
    model newer than it knows falls back to the SSE3 "Prescott" kernels: on the Emerald Rapids VM (family 6, model
    207) faiss's IndexFlatIP ran 29 GFLOP/s on 7,050 x 4,096 so, 144 with the AVX-512 kernels, which would make
    faiss a straw man. Unless OPENBLAS_CORETYPE is set, a subprocess loads faiss and asks its OpenBLAS for the core
    it chose; if that core has neither AVX2 nor AVX-512 kernels while the CPU has the instructions,
    OPENBLAS_CORETYPE is set to SkylakeX (AVX-512F) or Haswell (AVX2) in this process, before faiss is loaded here.
    A core OpenBLAS did recognise is left as it is."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("faiss") is None:
        return None
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        return f"{forced} (OPENBLAS_CORETYPE)"
    probe = subprocess.run([sys.executable, "-c", _PROBE_OPENBLAS], capture_output=True, text=True)
    detected = probe.stdout.strip() if probe.returncode == 0 else ""
    if not detected:
        return "unknown (the OpenBLAS probe failed)"
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        flags = set(next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), []))
    best = "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else None
    if best is None or detected.lower() in _VECTOR_CORES:
        return detected
    os.environ["OPENBLAS_CORETYPE"] = best
    return f"{best} (forced: OpenBLAS chose {detected} on this CPU)"


FAISS_OPENBLAS_CORE = faiss_openblas_core()


def synchronize():
    """Wait for the GPU's queued work, so that a timed call includes it (no-op on the CPU)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def benchmarked_backends(op: str) -> list[str]:
    """The mmrec_fast backends timed for `op` here: those that implement it on DEVICE and can run, leaving out the
    reference and the Triton interpreter (a correctness tool, not a speed one)."""
    import mmrec_fast

    runnable, implemented = mmrec_fast.available(), mmrec_fast.backends.OPS[op].dtypes
    return [
        b for b in ("native", "triton")
        if DEVICE in runnable[b] and (b, DEVICE) in implemented and not (b == "triton" and DEVICE == "cpu")
    ]  # fmt: skip


def data_root() -> Path | None:
    for candidate in (os.environ.get("MMREC_FAST_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def baby_train_interactions():
    """(users, items, num_users, num_items) of the real Amazon Baby train split; skips when absent."""
    root = data_root()
    path = root / "baby" / "baby.inter" if root else None
    if path is None or not path.exists():
        pytest.skip("../shared/data/baby/baby.inter not present (set MMREC_FAST_DATA)")
    table = np.loadtxt(path, skiprows=1, dtype=np.int64)
    train = table[table[:, 2] == 0]
    return train[:, 0], train[:, 1], int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1


def powerlaw_interactions(num_users: int, num_items: int, num_interactions: int, exponent: float = 1.1, seed: int = 0):
    """num_interactions distinct (user, item) pairs whose user activity and item popularity follow Zipf-like power
    laws: pairs are drawn independently and repeats dropped (first draws kept) until there are enough."""
    rng = np.random.default_rng(seed)

    def zipf_probabilities(size):
        p = 1.0 / np.arange(1, size + 1) ** exponent
        return rng.permutation(p / p.sum())

    user_p, item_p = zipf_probabilities(num_users), zipf_probabilities(num_items)
    keys = np.empty(0, dtype=np.int64)
    while True:
        users = rng.choice(num_users, num_interactions, p=user_p)
        items = rng.choice(num_items, num_interactions, p=item_p)
        keys = np.concatenate([keys, users.astype(np.int64) * num_items + items])
        _, first = np.unique(keys, return_index=True)
        if first.size >= num_interactions:
            break
    keys = keys[np.sort(first)[:num_interactions]]
    return keys // num_items, keys % num_items, num_users, num_items


def peak_tensor_memory(fn) -> tuple[float, float]:
    """(live tensor bytes when fn starts, peak live tensor bytes while it runs), from the profiler's memory timeline.

    Counts CPU tensors torch allocates (not allocator slack or library scratch such as MKL's). On a GPU: torch's
    allocated device memory before fn and its peak while fn runs (the caching allocator's own statistics)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(start), float(torch.cuda.max_memory_allocated())
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    timeline = MemoryProfileTimeline(prof._memory_profile())
    _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
    totals = np.asarray(sizes, dtype=np.float64).sum(axis=1)
    return float(totals[0]), float(totals.max())


def machine_description() -> str:
    """The machine line of the ratio table: CPU, cores, torch threads, the GPU benchmarked on, torch version."""
    from mmrec_fast.train import machine

    return f"{machine('cuda' if torch.cuda.is_available() else 'cpu')}; torch {torch.__version__}"


def pytest_benchmark_update_machine_info(config, machine_info):
    """The JSON record (--benchmark-json) names the machine as the ratio table does (report.py reads it)."""
    machine_info["mmrec_fast"] = machine_description()
    if FAISS_OPENBLAS_CORE:
        machine_info["faiss_openblas_core"] = FAISS_OPENBLAS_CORE


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from report import Case, case_label, memory_text, speedups

    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list[Case]] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or "", []).append(Case(case_label(bench.name), bench.stats.median, dict(bench.extra_info)))
    write = terminalreporter.write_line
    write("")
    write(f"mmrec_fast ratios (median of baseline / median of mmrec_fast; > 1 means mmrec_fast is faster)")
    write(f"machine: {machine_description()}")
    for group, cases in groups.items():
        pairs = speedups(cases)
        write("")
        write(f"{group}")
        for case in sorted(cases, key=lambda c: c.median):
            line = f"  {case.label:<42} median {case.median * 1e3:10.2f} ms"
            memory = memory_text(case)
            line += f"   peak extra {memory}" if memory else ""
            ratios = ", ".join(f"{o.short}: {r:6.2f}x" for o, b, r in pairs if b is case)
            line += f"   speedup of {ratios}" if ratios else ""
            write(line)
