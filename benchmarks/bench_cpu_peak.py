"""How close the GEMM-bound CPU kernels come to the machine's best sgemm rate, measured on the machine at hand.

Rates in GFLOP/s, float32, the threads torch uses (set OMP_NUM_THREADS to choose):
  * the best BLAS sgemm: torch.mm (MKL or OpenBLAS, whatever torch links) at 4096^3 and at each op's own shape,
    and faiss-cpu's exact IndexFlatIP search where faiss is installed (its GEMM + selection), given the rows normalised;
  * knn, (7,050 x 4,096) and (50,000 x 384), k 10: the symmetric half of X X^T that its schedule computes,
    n (n + 1) / 2 dot products of d multiply-adds, counted as n^2 d flops;
  * topk_scores, Baby-sized (19,445 x 7,050), k 50, at d 64 (the models' embeddings) and d 384 (the issue's
    GEMM-bound depth): 2 Q K d flops;
  * info_nce forward + backward, SLMRec form, B 8,192, at d 64 and d 384: three B x B x d products (logits, dX,
    dY), 6 B^2 d.
Each op's rate is also given as a share of the best sgemm rate of the run (the issue's target is >= 90%). The
native ops run once per CPU variant this machine can run (avx2, avx512: csrc/common/isa.h; the scalar baseline is
left out), and knn is also timed as the bare kernel on rows already normalised (what faiss is given) and as a
ratio to faiss, where faiss is installed (with its bundled OpenBLAS on this CPU's vector kernels:
conftest.faiss_openblas_core, whose answer the table's header gives).

As a pytest file (`mmrec-fast bench cpu_peak`) each case is a benchmark of its own group with its rate in
``extra_info["gflop_per_s"]``; as a script, `python benchmarks/bench_cpu_peak.py [--rounds N] [--out FILE]` prints
(and writes) the table with the CPU model and the variants measured: medians of N rounds, each round running every
case once in turn, so that a host whose load drifts over minutes moves all of a run's cases alike.
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

from conftest import DEVICE, FAISS_OPENBLAS_CORE, machine_description  # noqa: E402


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def cases() -> dict:
    """name -> (function to time, flops of one call). Native ops are named with "{isa}", run per variant."""
    # every tensor its own seed (until 2026-12-07 all had seed 0: info_nce's positives were its anchors and
    # topk_scores' items the first users; the rates hardly move, but the inputs were not a real batch)
    big = _features(4096, 4096, 0)
    image, text = _features(7050, 4096, 1), _features(50000, 384, 2)
    image_hat = torch.nn.functional.normalize(image, dim=1).contiguous()
    text_hat = torch.nn.functional.normalize(text, dim=1).contiguous()
    users = {d: _features(19445, d, 3) for d in (64, 384)}
    items = {d: _features(7050, d, 4) for d in (64, 384)}
    anchors = {d: _features(8192, d, 5).requires_grad_() for d in (64, 384)}
    positives = {d: _features(8192, d, 6).requires_grad_() for d in (64, 384)}

    def nce(d):
        a, b = anchors[d], positives[d]

        def step():
            mmrec_fast.info_nce(a, b, 0.2, backend="native").backward()
            a.grad = b.grad = None

        return step

    out = {
        "sgemm torch.mm 4096^3": (lambda: big @ big, 2 * 4096**3),
        "sgemm torch.mm 7,050 x 4,096 x 7,050": (lambda: image @ image.T, 2 * 7050 * 7050 * 4096),
        "sgemm torch.mm 50,000 x 384 x 8,192 (a row chunk)": (lambda: text @ text[:8192].T, 2 * 50000 * 8192 * 384),
        **{f"sgemm torch.mm 19,445 x {d} x 7,050": (lambda d=d: users[d] @ items[d].T, 2 * 19445 * 7050 * d)
           for d in (64, 384)},
        **{f"sgemm torch.mm 8,192 x {d} x 8,192": (lambda d=d: anchors[d].detach() @ positives[d].detach().T,
                                                   2 * 8192 * 8192 * d) for d in (64, 384)},
        "knn {isa} (7,050 x 4,096), k 10": (lambda: mmrec_fast.knn(image, 10, backend="native"), 7050 * 7050 * 4096),
        "knn {isa} kernel on normalised rows (7,050 x 4,096)": (
            lambda: torch.ops.mmrec_fast.knn(image_hat, 10, False, 0), 7050 * 7050 * 4096),
        "knn {isa} (50,000 x 384), k 10": (lambda: mmrec_fast.knn(text, 10, backend="native"), 50000 * 50000 * 384),
        **{f"topk_scores {{isa}} (19,445 x 7,050), d {d}, k 50": (
            lambda d=d: mmrec_fast.topk_scores(users[d], items[d], 50, backend="native"), 2 * 19445 * 7050 * d)
           for d in (64, 384)},
        **{f"info_nce {{isa}} fwd + bwd, B 8,192, d {d}": (nce(d), 6 * 8192 * 8192 * d) for d in (64, 384)},
    }  # fmt: skip
    try:
        import faiss

        def flat_ip(x):
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x.numpy())
            index.search(x.numpy(), 10)

        out["faiss IndexFlatIP (7,050 x 4,096), k 10"] = (lambda: flat_ip(image_hat), 2 * 7050 * 7050 * 4096)
        out["faiss IndexFlatIP (50,000 x 384), k 10"] = (lambda: flat_ip(text_hat), 2 * 50000 * 50000 * 384)
    except ImportError:
        pass
    return out


def variants() -> list[str]:
    """The vector variants of the native CPU kernels this machine runs (the baseline when there is none)."""
    from mmrec_fast import _native

    found = [name for name in _native.cpu_isas() if name != "baseline"]
    return found or ["baseline"]


def run_native(name: str, fn, isa: str):
    """fn on variant isa for a native case, as it is otherwise; restores the variant."""
    if "{isa}" not in name:
        return fn
    from mmrec_fast import _native

    def on_variant():
        saved = _native.cpu_isa()
        _native.set_cpu_isa(isa)
        try:
            fn()
        finally:
            _native.set_cpu_isa(saved)

    return on_variant


def interleaved_medians(fns: dict, rounds: int) -> dict:
    """label -> median seconds of fns[label] over `rounds` rounds, each round calling every fn once in turn (after
    one warm-up call each): on a shared host whose load drifts over minutes, every case sees the same drift, so the
    ratios of one run hold even when its absolute rates move."""
    times = {label: [] for label in fns}
    for label, fn in fns.items():
        fn()
    for round_number in range(rounds):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
        print(f"  round {round_number + 1} of {rounds} done", file=sys.stderr, flush=True)
    return {label: sorted(t)[len(t) // 2] for label, t in times.items()}


NAMES = [
    "sgemm torch.mm 4096^3", "sgemm torch.mm 7,050 x 4,096 x 7,050", "sgemm torch.mm 50,000 x 384 x 8,192 (a row chunk)",
    "sgemm torch.mm 19,445 x 64 x 7,050", "sgemm torch.mm 19,445 x 384 x 7,050", "sgemm torch.mm 8,192 x 64 x 8,192",
    "sgemm torch.mm 8,192 x 384 x 8,192", "faiss IndexFlatIP (7,050 x 4,096), k 10", "faiss IndexFlatIP (50,000 x 384), k 10",
    "knn {isa} (7,050 x 4,096), k 10", "knn {isa} kernel on normalised rows (7,050 x 4,096)",
    "knn {isa} (50,000 x 384), k 10", "topk_scores {isa} (19,445 x 7,050), d 64, k 50",
    "topk_scores {isa} (19,445 x 7,050), d 384, k 50", "info_nce {isa} fwd + bwd, B 8,192, d 64",
    "info_nce {isa} fwd + bwd, B 8,192, d 384",
]  # fmt: skip
ISAS = ["avx2", "avx512", "baseline"]


def _is_op(name: str) -> bool:
    return "{isa}" in name


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_rate(benchmark, name, isa):
    if DEVICE != "cpu":
        pytest.skip("a CPU benchmark")
    if not _is_op(name) and isa != ISAS[0]:
        pytest.skip("a baseline rate: measured once")
    available = cases()
    if name not in available:
        pytest.skip(f"{name}: not installed here")
    if _is_op(name) and not mmrec_fast.available()["native"]:
        pytest.skip("the native extension is not built")
    if _is_op(name) and isa not in variants():
        pytest.skip(f"the {isa} variant is not measured here (this machine: {variants()})")
    fn, flops = available[name]
    benchmark.group = f"cpu peak: {name.format(isa=isa) if _is_op(name) else name}"
    benchmark.pedantic(run_native(name, fn, isa), rounds=3, warmup_rounds=1)
    benchmark.extra_info["gflop_per_s"] = flops / benchmark.stats.stats.median / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    available = cases()
    fns, flops = {}, {}
    for name in NAMES:
        if name not in available:
            continue
        fn, count = available[name]
        for isa in variants() if _is_op(name) else [None]:
            label = name.format(isa=isa) if isa else name
            fns[label], flops[label] = run_native(name, fn, isa), count
    seconds = interleaved_medians(fns, args.rounds)
    rates = {label: flops[label] / seconds[label] / 1e9 for label in fns}
    best = max(rate for label, rate in rates.items() if label.startswith(("sgemm", "faiss")))
    lines = [f"machine: {machine_description()}; CPU variants measured: {', '.join(variants())}"
             + (f"; faiss's OpenBLAS core: {FAISS_OPENBLAS_CORE}" if FAISS_OPENBLAS_CORE else ""),
             f"GFLOP/s, float32, medians of {args.rounds} interleaved rounds; share = rate / best sgemm rate of this run ({best:.1f})", ""]
    for label, rate in rates.items():
        share = "" if label.startswith(("sgemm", "faiss")) else f"   {100 * rate / best:5.1f}% of the best sgemm"
        for shape in ("(7,050 x 4,096)", "(50,000 x 384)"):
            faiss_seconds = seconds.get(f"faiss IndexFlatIP {shape}, k 10")
            if faiss_seconds and label.startswith("knn") and shape in label:
                share += f"   {faiss_seconds / seconds[label]:4.2f}x faster than faiss"
        lines.append(f"  {label:<60} {rate:8.1f}{share}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
