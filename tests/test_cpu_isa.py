"""The CPU variants of the native kernels (baseline, avx2, avx512; csrc/common/isa.h).

The rest of the suite runs the variant the extension picks (the best this CPU has). Here every variant this CPU
can run is checked against the reference on each op (values and gradients, float64 and float32, ties, zero rows,
exclusions, hubs), for determinism across thread counts, and the vector variants against each other bitwise: avx2
and avx512 compute every score and sum in the same order with the same fused multiply-adds, so their results are
identical, which carries the whole suite's checks on one of them over to the other. The baseline has no FMA and
differs in the last bits; it is checked against the reference only.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mmrec_fast
from mmrec_fast import Graph, _native

from parity import assert_matches

NATIVE = mmrec_fast.available()["native"]
pytestmark = pytest.mark.skipif(not NATIVE, reason="native backend not built")
VARIANTS = _native.cpu_isas() if NATIVE else []


@pytest.fixture(params=["baseline", "avx2", "avx512"])
def variant(request):
    """Runs the test on one CPU variant (skipped where this CPU or build cannot run it), restoring the choice."""
    if request.param not in VARIANTS:
        pytest.skip(f"this CPU / build cannot run the {request.param} variant (it runs {VARIANTS})")
    saved = _native.cpu_isa()
    _native.set_cpu_isa(request.param)
    yield request.param
    _native.set_cpu_isa(saved)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _knn_input(dtype):
    x = torch.randn(203, 37, generator=_generator(0), dtype=torch.float64)
    x[17] = 0.0  # a zero row
    x[50] = x[3]  # exact ties
    x[120] = x[3]
    return x.to(dtype)


def _graph():
    g = _generator(1)
    users = torch.cat([torch.randint(0, 61, (400,), generator=g), torch.zeros(300, dtype=torch.long)])  # a hub
    items = torch.randint(0, 45, (700,), generator=g)
    return Graph.bipartite(users, items, 61 + 3, 45, norm="sym", eps=1e-8, duplicates="sum")  # 3 isolated users


def _exclusions():
    g = _generator(3)
    users, items = torch.randint(0, 77, (300,), generator=g), torch.randint(0, 203, (300,), generator=g)
    return Graph.from_edge_index(torch.stack([users, items]), shape=(77, 203))


def _run_all(dtype, backend="native"):
    """Every op's results and gradients on fixed inputs of ``dtype``, by name; the reference runs on the same
    values in float64."""
    cast = (lambda t: t.double()) if backend == "reference" else (lambda t: t)  # noqa: E731
    out = {}
    x = cast(_knn_input(dtype))
    out["knn values"], out["knn indices"] = mmrec_fast.knn(x, 7, backend=backend)
    out["knn exclude_self indices"] = mmrec_fast.knn(x, 7, exclude_self=True, backend=backend)[1]
    queries = cast(torch.randn(77, 37, generator=_generator(2), dtype=dtype))
    out["topk_scores values"], out["topk_scores indices"] = mmrec_fast.topk_scores(
        queries, x, 9, exclude=_exclusions(), backend=backend
    )
    for symmetric, intra in [(False, False), (True, True)]:
        a = cast(torch.randn(150, 33, generator=_generator(5), dtype=dtype)).requires_grad_()
        b = cast(torch.randn(150, 33, generator=_generator(6), dtype=dtype)).requires_grad_()
        t = cast(torch.tensor(0.3, dtype=dtype)).requires_grad_()
        loss = mmrec_fast.info_nce(a, b, t, symmetric=symmetric, intra_view_negatives=intra, backend=backend)
        loss.backward()
        tag = f"info_nce symmetric={symmetric} intra={intra}"
        out[f"{tag} loss"], out[f"{tag} grad a"], out[f"{tag} grad b"], out[f"{tag} grad t"] = (
            loss.detach(), a.grad, b.grad, t.grad)  # fmt: skip
    graph = _graph()
    h = cast(torch.randn(graph.shape[1], 70, generator=_generator(7), dtype=dtype)).requires_grad_()
    y = mmrec_fast.propagate(graph, h, num_layers=3, backend=backend)
    (y * cast(torch.linspace(-1, 1, y.numel(), dtype=dtype)).view_as(y)).sum().backward()
    out["propagate"], out["propagate grad"] = y.detach(), h.grad
    return out


# Reduction lengths of the float32 tolerance: the feature width (scores), B x d (InfoNCE), degree x layers.
REDUCTION = {"knn": 37, "topk_scores": 37, "info_nce": 150 * 33, "propagate": 300 * 3}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_variant_matches_reference(variant, dtype):
    got, gold = _run_all(dtype), _run_all(dtype, backend="reference")
    for name, value in got.items():
        if name.endswith("indices"):
            if dtype == torch.float64:  # float32 may order near-ties differently from the float64 reference
                assert torch.equal(value, gold[name]), f"{variant}: {name}"
            continue
        assert_matches(value, gold[name], dtype, REDUCTION[name.split()[0]], f"{variant}: {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_selection_at_every_k_around_vector_and_batch_widths(variant, dtype):
    """topk_scores and knn exactly the reference's at k on both sides of 8, 16 and 32 (the vector widths and the
    two-vector candidate batches of tile_topk.h), with small integer scores (every score exact, long runs of ties
    broken by the lower index), so that batches hold tied candidates, fill whole vectors and straddle them."""
    g = _generator(11)
    keys = torch.randint(-2, 3, (300, 6), generator=g).to(dtype)
    queries = torch.randint(-2, 3, (45, 6), generator=g).to(dtype)
    queries[0] = 0.0  # every score of this row ties
    for k in (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 120, 300):
        values, indices = mmrec_fast.topk_scores(queries, keys, k, backend="native")
        gold_values, gold_indices = mmrec_fast.topk_scores(queries, keys, k, backend="reference")
        assert torch.equal(indices, gold_indices), f"{variant}: topk_scores k={k}"
        assert torch.equal(values, gold_values), f"{variant}: topk_scores k={k}"
    # rows of four +-1 among 8 coordinates: norm 2, so the normalised rows and their cosines are exact too
    support = torch.rand(140, 8, generator=g).argsort(dim=1)[:, :4]
    signs = torch.randint(0, 2, (140, 4), generator=g).to(dtype) * 2 - 1
    rows = torch.zeros(140, 8, dtype=dtype).scatter_(1, support, signs)
    for k in (1, 9, 16, 17, 33, 64, 100):
        assert torch.equal(mmrec_fast.knn(rows, k, exclude_self=True, backend="native")[1],
                           mmrec_fast.knn(rows, k, exclude_self=True, backend="reference")[1]), f"{variant}: knn k={k}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_variant_deterministic_across_threads(variant, dtype):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_all(dtype)
        torch.set_num_threads(2)
        two = _run_all(dtype)
    finally:
        torch.set_num_threads(saved)
    for name in one:
        assert torch.equal(one[name], two[name]), f"{variant}: {name} differs between 1 and 2 threads"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_avx2_and_avx512_are_bitwise_equal(dtype):
    if not {"avx2", "avx512"} <= set(VARIANTS):
        pytest.skip(f"needs both the avx2 and the avx512 variants (this CPU runs {VARIANTS})")
    saved = _native.cpu_isa()
    try:
        results = {}
        for name in ("avx2", "avx512"):
            _native.set_cpu_isa(name)
            results[name] = _run_all(dtype)
    finally:
        _native.set_cpu_isa(saved)
    for name in results["avx2"]:
        assert torch.equal(results["avx2"][name], results["avx512"][name]), f"{name}: avx2 != avx512"


def test_switching_variants_takes_effect():
    """The baseline (no FMA) rounds differently from the vector variants: a switch that did not reach the kernels
    would make the comparisons above vacuous."""
    if len(VARIANTS) < 2:
        pytest.skip(f"one variant only ({VARIANTS})")
    saved = _native.cpu_isa()
    x = torch.randn(300, 200, generator=_generator(8))
    try:
        values = {}
        for name in ("baseline", VARIANTS[-1]):
            _native.set_cpu_isa(name)
            assert _native.cpu_isa() == name
            values[name] = mmrec_fast.knn(x, 5, backend="native")[0]
    finally:
        _native.set_cpu_isa(saved)
    assert not torch.equal(values["baseline"], values[VARIANTS[-1]])


def test_the_best_variant_runs_by_default():
    if os.environ.get("MMREC_FAST_CPU_ISA"):
        pytest.skip("MMREC_FAST_CPU_ISA forces a variant")
    assert VARIANTS[0] == "baseline"
    assert _native.cpu_isa() == VARIANTS[-1]
    assert mmrec_fast.info()["native"]["cpu_isa"] == VARIANTS[-1]


def test_unknown_or_unrunnable_variant_is_refused():
    with pytest.raises(ValueError, match="unknown CPU variant 'avx9'"):
        _native.set_cpu_isa("avx9")
    missing = [name for name in ("avx2", "avx512") if name not in VARIANTS]
    if missing:
        with pytest.raises(ValueError, match="cannot run here"):
            _native.set_cpu_isa(missing[0])
    assert _native.cpu_isa() in VARIANTS


def _python(code: str, env_value: str):
    env = dict(os.environ, MMREC_FAST_CPU_ISA=env_value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_environment_variable_forces_a_variant():
    code = "import mmrec_fast._native as n; print(n.cpu_isa())"
    done = _python(code, "baseline")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "baseline"
    done = _python(code, "avx9")
    assert done.returncode != 0 and "unknown CPU variant 'avx9'" in done.stderr
