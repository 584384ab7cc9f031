"""How close the GEMM-bound CPU kernels come to the machine's best sgemm rate, measured on the machine at hand.

Rates in GFLOP/s, float32, the threads torch uses (set OMP_NUM_THREADS to choose):
  * the best BLAS sgemm: torch.mm (MKL or OpenBLAS, whatever torch links) at 4096^3 and at each op's own shape,
    and faiss-cpu's exact IndexFlatIP search where faiss is installed (its GEMM + selection);
  * knn, (7,050 x 4,096) and (50,000 x 384), k 10: the symmetric half of X X^T that its schedule computes,
    n (n + 1) / 2 dot products of d multiply-adds, counted as n^2 d flops;
  * topk_scores, Baby-sized (19,445 x 7,050), d 64, k 50: 2 Q K d flops;
  * info_nce forward + backward, SLMRec form, B 8,192, d 64: three B x B x d products (logits, dX, dY), 6 B^2 d.
Each op's rate is also given as a share of the best sgemm rate of the run (the issue's target is >= 90%).

As a pytest file (`mmrec-fast bench cpu_peak`) each case is a benchmark of its own group with its rate in
``extra_info["gflop_per_s"]``; as a script, `python benchmarks/bench_cpu_peak.py [--out FILE]` prints (and writes)
the table with the CPU model and the ISA the extension was built for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmrec_fast  # noqa: E402

from conftest import DEVICE, machine_description  # noqa: E402


def _features(n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def cases() -> dict:
    """name -> (function to time, flops of one call, what its rate is compared with)."""
    big = _features(4096, 4096)
    image, text = _features(7050, 4096), _features(50000, 384)
    users, items = _features(19445, 64), _features(7050, 64)
    a, b = _features(8192, 64).requires_grad_(), _features(8192, 64).requires_grad_()

    def nce():
        mmrec_fast.info_nce(a, b, 0.2, backend="native").backward()
        a.grad = b.grad = None

    out = {
        "sgemm torch.mm 4096^3": (lambda: big @ big, 2 * 4096**3),
        "sgemm torch.mm 7,050 x 4,096 x 7,050": (lambda: image @ image.T, 2 * 7050 * 7050 * 4096),
        "sgemm torch.mm 50,000 x 384 x 8,192 (a row chunk)": (lambda: text @ text[:8192].T, 2 * 50000 * 8192 * 384),
        "sgemm torch.mm 19,445 x 64 x 7,050": (lambda: users @ items.T, 2 * 19445 * 7050 * 64),
        "sgemm torch.mm 8,192 x 64 x 8,192": (lambda: a.detach() @ b.detach().T, 2 * 8192 * 8192 * 64),
        "knn native (7,050 x 4,096), k 10": (lambda: mmrec_fast.knn(image, 10, backend="native"), 7050 * 7050 * 4096),
        "knn native (50,000 x 384), k 10": (lambda: mmrec_fast.knn(text, 10, backend="native"), 50000 * 50000 * 384),
        "topk_scores native (19,445 x 7,050), d 64, k 50": (
            lambda: mmrec_fast.topk_scores(users, items, 50, backend="native"), 2 * 19445 * 7050 * 64),
        "info_nce native fwd + bwd, B 8,192, d 64": (nce, 6 * 8192 * 8192 * 64),
    }  # fmt: skip
    try:
        import faiss

        def flat_ip(x):
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x.numpy())
            index.search(x.numpy(), 10)

        out["faiss IndexFlatIP (7,050 x 4,096), k 10"] = (lambda: flat_ip(image), 2 * 7050 * 7050 * 4096)
    except ImportError:
        pass
    return out


def median_seconds(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


NAMES = [
    "sgemm torch.mm 4096^3", "sgemm torch.mm 7,050 x 4,096 x 7,050", "sgemm torch.mm 50,000 x 384 x 8,192 (a row chunk)",
    "sgemm torch.mm 19,445 x 64 x 7,050", "sgemm torch.mm 8,192 x 64 x 8,192", "faiss IndexFlatIP (7,050 x 4,096), k 10",
    "knn native (7,050 x 4,096), k 10", "knn native (50,000 x 384), k 10", "topk_scores native (19,445 x 7,050), d 64, k 50",
    "info_nce native fwd + bwd, B 8,192, d 64",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_rate(benchmark, name):
    if DEVICE != "cpu":
        pytest.skip("a CPU benchmark")
    available = cases()
    if name not in available:
        pytest.skip(f"{name}: not installed here")
    if not mmrec_fast.available()["native"] and "native" in name:
        pytest.skip("the native extension is not built")
    fn, flops = available[name]
    benchmark.group = f"cpu peak: {name}"
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    benchmark.extra_info["gflop_per_s"] = flops / benchmark.stats.stats.median / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    rates = {}
    for name, (fn, flops) in cases().items():
        rates[name] = flops / median_seconds(fn, args.rounds) / 1e9
    best = max(rate for name, rate in rates.items() if not name.startswith(("knn", "topk", "info_nce")))
    lines = [f"machine: {machine_description()}; extension built for {mmrec_fast.info()['native'].get('cpu_isa')}",
             f"GFLOP/s, float32, medians of {args.rounds}; share = rate / best sgemm rate of this run ({best:.1f})", ""]
    for name in NAMES:
        if name in rates:
            share = "" if name.startswith(("sgemm", "faiss")) else f"   {100 * rates[name] / best:5.1f}% of the best sgemm"
            lines.append(f"  {name:<52} {rates[name]:8.1f}{share}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
