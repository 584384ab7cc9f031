"""Where the time of one GPU propagate or info_nce call goes: wall time per call against the summed time of its GPU
kernels (from torch.profiler), and the kernels by total time. The gap between the two is launch and host overhead.

    python benchmarks/profile_gpu.py [baby|powerlaw-200k|info_nce ...]      (on a machine with a CUDA GPU)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile



def wall_ms(fn, rounds=30):
    """Median wall time of fn() in ms, the GPU synchronised before and after each call (also used by tune_gpu.py)."""
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def report(name, impl, what, call, top=4):
    """Print the wall time of call() and its GPU kernels by total time."""
    call()
    wall = wall_ms(call)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 5 / 1e3
    print(f"{name:14s} {impl:34s} {what:17s} wall {wall:8.3f} ms   GPU kernels {gpu_ms:8.3f} ms")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"{'':20s}{e.self_device_time_total / 5 / 1e3:8.3f} ms  x{e.count // 5:<3d} {e.key[:90]}")


def profile_propagate(name):
    from bench_propagate import DIM, graph_named, implementations

    graph = graph_named(name)
    x = torch.randn(graph.shape[0], DIM, device="cuda", requires_grad=True)
    upstream = torch.randn_like(x)
    for impl, fn in implementations(graph).items():
        for what, call in (("forward", lambda: fn(x)), ("forward+backward", lambda: fn(x).backward(upstream))):
            report(name, impl, what, call)
            x.grad = None


def profile_info_nce(batch=8192, d=64):
    from bench_info_nce import implementations

    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(batch, d, device="cuda", generator=gen, requires_grad=True)
    b = torch.randn(batch, d, device="cuda", generator=gen, requires_grad=True)
    from mmrec_fast.kernels import info_nce as kernels

    for tuning in ({}, {"DOT_PRECISION": "tf32"}):  # the configuration, then plain TF32 products (the MMA's share)
        kernels.TUNING.clear()
        kernels.TUNING.update(tuning)
        for impl, fn in implementations().items():
            if "native" in impl or ("naive" in impl and tuning):
                continue
            for what, call in (("forward", lambda: fn(a, b)), ("forward+backward", lambda: fn(a, b).backward())):
                report(f"info_nce-{batch}-{d}", f"{impl} {tuning or ''}", what, call, top=20)
                a.grad = b.grad = None
    kernels.TUNING.clear()


def main(names):
    # Imported here, not at the top: tune_gpu.py imports wall_ms from this module without the benchmarks' conftest.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for name in names:
        if name == "info_nce":
            profile_info_nce()
        else:
            profile_propagate(name)


if __name__ == "__main__":
    main(sys.argv[1:] or ["baby", "powerlaw-200k"])
