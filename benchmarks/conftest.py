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
