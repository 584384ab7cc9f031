"""Property-based tests (hypothesis) of every op against the reference, on random inputs.

* Graph constructors: random COO entries (duplicates, isolated nodes, hubs, rectangular, explicit values of either
  sign), every norm, eps, self-loops and duplicate rule, through every constructor (from_edge_index, bipartite,
  from_scipy COO/CSR/CSC, from_torch COO/CSR), against a dense NumPy construction of the documented matrix; the
  CSR invariants, the transpose, the symmetric flag; an index out of range in any constructor is an error naming
  the argument.
* propagate / spmm: random graphs of the strategy above (0 and 1 nodes, hubs past the 128-edge segment of the
  segmented kernels), 0-3 layers, every combine (weights of either sign and zeros), d from 1, every backend and
  dtype it claims; values and gradients against the float64 reference with the tolerance table of parity.py
  (relative to the size of the terms summed, the propagation of |M|, |x|, |w|), low precision by the error-ratio
  rule.
* info_nce: B from 1, d from 1, every option and reduction, float and tensor temperatures, duplicated and zero rows;
  loss and the gradients of a, b and the temperature.
* knn / knn_graph and topk_scores: exact data (dyadic rows: every score exact in any summation order) on which every
  backend must return exactly the reference's values and indices, ties to the lower index included; random float
  data on which the values agree within tolerance and the indices are consistent with them; exclusions; k = 0,
  0 and 1 rows.
* Determinism: every kernel gives bitwise-identical results on a second call; the native kernels also across
  thread counts (and, for knn / topk_scores, score-tile budgets).

Profiles (tests/conftest.py): "ci", the default, 300 examples a test, derandomised so that CI runs the same
examples every time; ``--hypothesis-profile=long`` for 3000 random examples a test. Kernel calls run on one thread
except in the thread-count checks (on a loaded 2-core machine an OpenMP region of two threads can wait a time
slice, ~25 ms, for its second thread).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hypothesis import assume, given, note
from hypothesis import strategies as st

import mmrec_fast
from mmrec_fast import Graph, backends
from mmrec_fast.ops.topk_scores import TUNING as TILE_TUNING
from mmrec_fast.ops.info_nce import min_temperature
from mmrec_fast.ops.propagate import combine_weights
from mmrec_fast.reference.knn import normalize_rows

from conftest import kernel_backends
from parity import LOW_PRECISION, assert_low_precision, relative_tolerance

KERNELS = kernel_backends("cpu")
NORMS = ("sym", "rw", "left", None)
seeds = st.integers(0, 2**32 - 1)


def claimed(op: str, backend: str) -> tuple[torch.dtype, ...]:
    return backends.OPS[op].dtypes[(backend, "cpu")]


def draw_dtype(data, op: str, backend: str) -> torch.dtype:
    """One of the dtypes `backend` claims for `op` (float32 twice as likely: the dtype models train in)."""
    weighted = (torch.float64, torch.float32, torch.float32, torch.float16, torch.bfloat16)
    return data.draw(st.sampled_from([t for t in weighted if t in claimed(op, backend)]), label=f"{backend} dtype")


@contextlib.contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def tile_bytes(budget: int):
    previous = dict(TILE_TUNING)
    TILE_TUNING["score_tile_bytes"] = budget
    try:
        yield
    finally:
        TILE_TUNING.clear()
        TILE_TUNING.update(previous)


def assert_within(actual: torch.Tensor, gold: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == gold.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(gold.shape)}"
    if gold.numel() == 0:
        return
    error = (actual.double() - gold.double()).abs().max().item()
    assert error <= tol, f"{what}: max error {error:.3e} > tolerance {tol:.3e}"


def repeat(data, backend: str) -> bool:
    """Whether to check a second call for bitwise identity: always on the compiled kernels, one example in three
    in the Triton interpreter (tens of milliseconds a call)."""
    return backend != "triton" or data.draw(st.integers(0, 2), label="repeat the call") == 0


def largest(t: torch.Tensor) -> float:
    """max(1, max |t|): the scale tolerances are relative to (1 for an empty tensor)."""
    return max(1.0, t.double().abs().max().item()) if t.numel() else 1.0


def assert_bitwise(first, second, what: str) -> None:
    for a, b in zip(first, second):
        assert torch.equal(a, b), f"{what}: not bitwise identical"


# -- graphs --------------------------------------------------------------------------------------------------------
@dataclass
class GraphSpec:
    """COO entries and options of a random graph; ``bipartite``: (rows, cols) are (users, items) of a U x I
    interaction list and the graph is the (U + I)-node user-item graph."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray | None
    shape: tuple[int, int]
    norm: str | None
    eps: float
    self_loops: bool
    duplicates: str
    bipartite: bool = False

    def options(self) -> dict:
        return dict(norm=self.norm, eps=self.eps, self_loops=self.self_loops, duplicates=self.duplicates)

    def edge_index(self) -> np.ndarray:
        return np.stack([self.rows, self.cols]).astype(np.int64).reshape(2, -1)

    def build(self) -> Graph:
        if self.bipartite:
            return Graph.bipartite(self.rows, self.cols, *self.shape, **self.options())
        values = None if self.values is None else torch.from_numpy(self.values)
        return Graph.from_edge_index(self.edge_index(), shape=self.shape, values=values, **self.options())


@st.composite
def graph_specs(draw, square: bool | None = None, allow_bipartite: bool = True) -> GraphSpec:
    """Small graphs with duplicated pairs and isolated nodes (most examples), hubs of degree > 128 with more than
    128 nodes (one in eight), bipartite user-item graphs; square or rectangular; every norm, binary or weighted."""
    if square is None:
        square = draw(st.booleans())
    kind = draw(st.sampled_from(["small"] * 5 + ["hub"] + (["bipartite"] * 2 if allow_bipartite and square else [])))
    norm = draw(st.sampled_from(NORMS))
    weighted = kind != "bipartite" and draw(st.booleans())
    if kind == "hub":
        rng = np.random.default_rng(draw(seeds))
        n = draw(st.integers(129, 200))
        m = n if square else draw(st.integers(1, 6))
        degree = draw(st.integers(129, n))
        hub = draw(st.integers(0, m - 1))
        extra = draw(st.integers(0, 30))
        rows = np.concatenate([np.full(degree, hub), rng.integers(0, m, extra)])
        cols = np.concatenate([rng.permutation(n)[:degree], rng.integers(0, n, extra)])
        values = rng.uniform(-2.0 if norm is None else 0.25, 2.0, rows.size) if weighted else None
    else:
        m = draw(st.integers(0, 7))
        n = m if square and kind == "small" else draw(st.integers(0, 7))
        edges = 0 if m == 0 or n == 0 else draw(st.integers(0, 3 * max(m, n)))
        rows = np.array(draw(st.lists(st.integers(0, max(m - 1, 0)), min_size=edges, max_size=edges)), dtype=np.int64)
        cols = np.array(draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=edges, max_size=edges)), dtype=np.int64)
        values = None
        if weighted:
            low = -2.0 if norm is None else 0.25  # the norms need nonnegative degrees
            values = np.array(draw(st.lists(st.floats(low, 2.0), min_size=edges, max_size=edges)), dtype=np.float64)
    nodes = m + n if kind == "bipartite" else m
    self_loops = (square or kind == "bipartite") and nodes > 0 and draw(st.integers(0, 3)) == 0
    duplicates = "sum" if values is not None else draw(st.sampled_from(["sum", "collapse"]))
    eps = draw(st.sampled_from([0.0, 0.0, 1e-8, 0.5]))
    return GraphSpec(rows, cols, values, (m, n), norm, eps, self_loops, duplicates, bipartite=kind == "bipartite")


def dense_spec(rows, cols, values, shape, norm, eps, self_loops, duplicates) -> tuple[np.ndarray, ...]:
    """(pattern, W, M) of the documented construction, densely in float64: the stored pairs; W with repeated pairs
    summed (or collapsed to 1 for a binary graph with duplicates="collapse"), self-loops of value 1 added first;
    M = diag(left) W diag(right)."""
    m, n = shape
    counts, summed = np.zeros((m, n)), np.zeros((m, n))
    np.add.at(counts, (rows, cols), 1.0)
    np.add.at(summed, (rows, cols), 1.0 if values is None else values)
    if self_loops:
        counts[np.arange(m), np.arange(m)] += 1.0
        summed[np.arange(m), np.arange(m)] += 1.0
    pattern = counts > 0
    w = pattern.astype(np.float64) if values is None and duplicates == "collapse" else summed

    def scale(degree, power):
        if eps == 0:  # inf -> 0
            return np.divide(1.0, degree**power, out=np.zeros_like(degree), where=degree != 0)
        return (degree + eps) ** -power

    if norm == "sym":
        return pattern, w, scale(w.sum(1), 0.5)[:, None] * w * scale(w.sum(0), 0.5)[None, :]
    if norm == "rw":
        return pattern, w, scale(w.sum(1), 1.0)[:, None] * w
    if norm == "left":
        return pattern, w, scale(w.sum(1), 0.5)[:, None] * w
    return pattern, w, w


def expected_matrices(spec: GraphSpec) -> tuple[np.ndarray, ...]:
    if not spec.bipartite:
        return dense_spec(spec.rows, spec.cols, spec.values, spec.shape, spec.norm, spec.eps, spec.self_loops,
                          spec.duplicates)  # fmt: skip
    users, items = spec.rows, spec.cols + spec.shape[0]
    size = spec.shape[0] + spec.shape[1]
    return dense_spec(np.concatenate([users, items]), np.concatenate([items, users]), None, (size, size), spec.norm,
                      spec.eps, spec.self_loops, spec.duplicates)  # fmt: skip


def dense(graph: Graph) -> np.ndarray:
    return graph.to_torch(torch.float64).to_dense().numpy()


def absolute(graph: Graph) -> Graph:
    """|M|: the same pattern with |values| (the scales are nonnegative)."""
    values = None if graph.values is None else graph.values.abs()
    return Graph(graph.rowptr, graph.col, values, graph.left, graph.right, shape=graph.shape)


CONSTRUCTORS = ("edge_index", "scipy_coo", "scipy_csr", "scipy_csc", "torch_coo", "torch_csr")


def summed_entries(spec: GraphSpec):
    """The entries as a format that sums repeated pairs on construction (scipy CSR/CSC, torch CSR) stores them:
    one per pair, valued by the sum (the count for a binary graph)."""
    keys, inverse = np.unique(spec.rows * max(spec.shape[1], 1) + spec.cols, return_inverse=True)
    values = np.zeros(keys.size)
    np.add.at(values, inverse, 1.0 if spec.values is None else spec.values)
    return keys // max(spec.shape[1], 1), keys % max(spec.shape[1], 1), values


def construct(spec: GraphSpec, constructor: str) -> tuple[Graph, tuple[np.ndarray, ...]]:
    """The graph of `spec` built through `constructor`, and its expected (pattern, W, M). A matrix whose stored
    values are all 1 is binary (``duplicates`` applies); formats that sum repeated pairs hand over the sums."""
    if constructor == "edge_index":
        return spec.build(), expected_matrices(spec)
    data = np.ones(spec.rows.size) if spec.values is None else spec.values
    if constructor in ("scipy_coo", "torch_coo"):
        rows, cols, stored = spec.rows, spec.cols, data
    else:
        rows, cols, stored = summed_entries(spec)
    values = None if bool(np.all(stored == 1)) else stored
    duplicates = spec.duplicates if values is None else "sum"
    expected = dense_spec(rows, cols, values, spec.shape, spec.norm, spec.eps, spec.self_loops, duplicates)
    options = dict(norm=spec.norm, eps=spec.eps, self_loops=spec.self_loops, duplicates=spec.duplicates)
    if constructor.startswith("scipy"):
        matrix = sp.coo_matrix((data, (spec.rows, spec.cols)), shape=spec.shape)
        matrix = {"scipy_coo": matrix, "scipy_csr": matrix.tocsr(), "scipy_csc": matrix.tocsc()}[constructor]
        return Graph.from_scipy(matrix, **options), expected
    coo = torch.sparse_coo_tensor(torch.from_numpy(spec.edge_index()), torch.from_numpy(data), spec.shape)
    tensor = coo if constructor == "torch_coo" else coo.coalesce().to_sparse_csr()
    return Graph.from_torch(tensor, **options), expected


@given(spec=graph_specs(), constructor=st.sampled_from(CONSTRUCTORS))
def test_graph_constructors_build_the_documented_matrix(spec, constructor):
    if spec.bipartite:
        constructor = "edge_index"
    graph, (pattern, w, expected) = construct(spec, constructor)
    note(f"{constructor} {graph}")
    assert graph.shape == expected.shape
    np.testing.assert_allclose(dense(graph), expected, rtol=1e-12, atol=1e-300)
    # CSR invariants: rowptr from 0 to nnz, nondecreasing; columns strictly increasing within a row (one entry a
    # stored pair, a pair whose values sum to 0 included).
    rowptr, col = graph.rowptr, graph.col.to(torch.int64)
    assert rowptr[0] == 0 and rowptr[-1] == graph.nnz and bool((rowptr[1:] >= rowptr[:-1]).all())
    same_row = graph.row_index()[1:] == graph.row_index()[:-1]
    assert bool((col[1:][same_row] > col[:-1][same_row]).all())
    stored = np.zeros(pattern.shape, dtype=bool)
    stored[graph.row_index().numpy(), col.numpy()] = True
    assert np.array_equal(stored, pattern)
    np.testing.assert_allclose(dense(graph.transpose()), expected.T, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(graph.to_scipy().toarray(), expected, rtol=1e-12, atol=1e-300)
    if w.shape[0] == w.shape[1]:  # the flag is about W (pattern and values), whatever the scales are
        assert graph.symmetric == (np.array_equal(w, w.T) and np.array_equal(pattern, pattern.T))


@given(spec=graph_specs(allow_bipartite=False), constructor=st.sampled_from(CONSTRUCTORS), data=st.data())
def test_an_index_out_of_range_is_an_error_naming_the_argument(spec, constructor, data):
    m, n = spec.shape
    assume(spec.rows.size > 0)
    # scipy checks indices when it builds its compressed formats (its COO arrays are patched afterwards here)
    assume(constructor not in ("scipy_csr", "scipy_csc"))
    position = data.draw(st.integers(0, spec.rows.size - 1))
    axis = data.draw(st.sampled_from([0, 1]))
    bad = data.draw(st.sampled_from([-1, -(2**31), spec.shape[axis], spec.shape[axis] + 5, 2**31 - 1]))
    note(f"entry {position}, axis {axis} -> {bad}")
    rows, cols = spec.rows.copy(), spec.cols.copy()
    (rows if axis == 0 else cols)[position] = bad
    assume(not (constructor == "torch_csr" and axis == 0))  # CSR has no row indices
    with pytest.raises(ValueError, match="holds index") as error:
        if constructor == "edge_index":
            values = None if spec.values is None else torch.from_numpy(spec.values)
            Graph.from_edge_index(np.stack([rows, cols]), shape=spec.shape, values=values)
        elif constructor == "scipy_coo":
            matrix = sp.coo_matrix((np.ones(rows.size), (spec.rows, spec.cols)), shape=spec.shape)
            matrix.row[:], matrix.col[:] = rows, cols  # scipy checks at construction only
            Graph.from_scipy(matrix)
        elif constructor == "torch_coo":
            indices = torch.from_numpy(np.stack([rows, cols]))
            Graph.from_torch(torch.sparse_coo_tensor(indices, torch.ones(rows.size), spec.shape))
        else:
            order = np.argsort(spec.rows, kind="stable")
            crow = np.zeros(m + 1, dtype=np.int64)
            crow[1:] = np.cumsum(np.bincount(spec.rows, minlength=m))
            tensor = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols[order]),
                                             torch.ones(rows.size, dtype=torch.float64), spec.shape)  # fmt: skip
            Graph.from_torch(tensor)
    message = str(error.value)
    assert "\n" not in message and str(bad) in message
    assert any(name in message for name in ("edge_index[", "indices()", "col_indices()", "the matrix's"))


# -- propagate / spmm ----------------------------------------------------------------------------------------------
def layer_weights(data, square: bool):
    if not square:
        return 1, data.draw(st.sampled_from(["last", [0.0, 1.0], [0.0, -0.75], [0.0, 0.0]]))
    num_layers = data.draw(st.integers(0, 3))
    combine = data.draw(st.one_of(
        st.sampled_from(["mean", "sum", "last"]),
        st.lists(st.sampled_from([0.0, 1.0, -0.5, 0.25, 2.0]), min_size=num_layers + 1, max_size=num_layers + 1),
    ))  # fmt: skip
    return num_layers, combine


def propagate_and_grad(graph, x, num_layers, combine, upstream, backend):
    x = x.detach().requires_grad_()
    out = mmrec_fast.propagate(graph, x, num_layers, combine, backend=backend)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


@given(spec=graph_specs(), data=st.data())
def test_propagate_matches_the_reference(spec, data):
    graph = spec.build()
    m, n = graph.shape
    num_layers, combine = layer_weights(data, m == n)
    d = data.draw(st.sampled_from([1, 1, 2, 3, 5, 8]))
    gen = torch.Generator().manual_seed(data.draw(seeds))
    x64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    upstream64 = torch.randn(m, d, generator=gen, dtype=torch.float64)
    note(f"{graph}, norm={spec.norm}, L={num_layers}, combine={combine}, d={d}")
    weights = combine_weights(combine, num_layers)
    # The size of the terms each value sums: sum_k |w_k| |M|^k |x| (and |M^T|^k |upstream| for the gradient).
    magnitude = absolute(graph)
    abs_weights = [abs(w) for w in weights]
    size = largest(mmrec_fast.propagate(magnitude, x64.abs(), num_layers, abs_weights, backend="reference"))
    back = mmrec_fast.propagate(magnitude.T, upstream64.abs(), num_layers, abs_weights, backend="reference")
    grad_size = largest(back)
    degree = int((graph.rowptr[1:] - graph.rowptr[:-1]).max()) if m else 0
    t_degree = int(torch.bincount(graph.col.long(), minlength=n).max()) if n and graph.nnz else 0
    reduction = (max(degree, t_degree) + 1) * max(num_layers, 1)
    for backend in KERNELS:
        dtype = draw_dtype(data, "propagate", backend)
        x, upstream = x64.to(dtype), upstream64.to(dtype)
        with threads(1):
            got = propagate_and_grad(graph, x, num_layers, combine, upstream, backend)
            if repeat(data, backend):
                again = propagate_and_grad(graph, x, num_layers, combine, upstream, backend)
                assert_bitwise(got, again, f"{backend} again")
        gold = propagate_and_grad(graph, x.double(), num_layers, combine, upstream.double(), "reference")
        what = f"{backend}/{dtype}"
        assert got[0].dtype == dtype and got[1].dtype == dtype
        if dtype in LOW_PRECISION:
            plain = propagate_and_grad(graph, x, num_layers, combine, upstream, "reference")
            assert_low_precision(got[0], plain[0], gold[0], what + " values")
            assert_low_precision(got[1], plain[1], gold[1], what + " grad")
        else:
            tol = relative_tolerance(dtype, reduction)
            assert_within(got[0], gold[0], tol * max(1.0, size), what + " values")
            assert_within(got[1], gold[1], tol * max(1.0, grad_size), what + " grad")
        if backend == "native" and data.draw(st.integers(0, 3), label="thread check") == 0:
            for count in (2, 3):
                with threads(count):
                    assert_bitwise(got, propagate_and_grad(graph, x, num_layers, combine, upstream, backend),
                                   f"native on {count} threads")  # fmt: skip


# -- info_nce ------------------------------------------------------------------------------------------------------
def info_nce_and_grads(a, b, t, flags, reduction, upstream, backend):
    normalize, symmetric, intra = flags
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    inputs = [a, b]
    if isinstance(t, torch.Tensor):
        t = t.detach().requires_grad_()
        inputs.append(t)
    loss = mmrec_fast.info_nce(a, b, t, normalize=normalize, symmetric=symmetric, intra_view_negatives=intra,
                               reduction=reduction, backend=backend)  # fmt: skip
    grads = torch.autograd.grad(loss, inputs, upstream.to(loss.dtype))
    return (loss.detach(),) + tuple(grads)


@given(data=st.data())
def test_info_nce_matches_the_reference(data):
    batch, d = data.draw(st.integers(1, 9), label="B"), data.draw(st.sampled_from([1, 1, 2, 3, 5, 8]), label="d")
    flags = tuple(data.draw(st.booleans(), label=name) for name in ("normalize", "symmetric", "intra"))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    temperature = data.draw(st.sampled_from([0.1, 0.2, 0.5, 1.0, 3.0]))
    as_tensor = data.draw(st.booleans(), label="tensor temperature")
    gen = torch.Generator().manual_seed(data.draw(seeds))
    a64 = torch.randn(batch, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    b64 = a64 + 0.7 * torch.randn(batch, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    if batch > 1 and data.draw(st.booleans(), label="duplicated row"):  # false negatives stay in
        a64[batch - 1], b64[batch - 1] = a64[0], b64[0]
    zero_a = data.draw(st.integers(0, batch - 1)) if data.draw(st.integers(0, 4), label="zero row") == 0 else None
    if zero_a is not None:
        a64[zero_a] = 0.0
    upstream64 = torch.rand(batch if reduction == "none" else (), generator=gen, dtype=torch.float64) + 0.5
    note(f"B={batch} d={d} flags={flags} {reduction} t={temperature} tensor={as_tensor} zero row={zero_a}")
    normalize, symmetric, intra = flags
    # Condition: logits up to kappa = max |s_ij| / t; the gradients' rounding scales with it (test_info_nce.py).
    x, y = (F.normalize(a64, dim=1), F.normalize(b64, dim=1)) if normalize else (a64, b64)
    both = torch.cat([x, y])
    kappa = max(1.0, (both @ both.T).abs().max().item() / temperature)
    reduction_length = (2 if intra else 1) * batch + d
    # The temperature gradient sums logit-sized terms (test_info_nce.py): its rounding scales with them.
    weight = upstream64.abs().sum().item() * (batch if reduction == "sum" else 1)
    t_size = max(1.0, weight * kappa / temperature)
    for backend in KERNELS:
        dtype = draw_dtype(data, "info_nce", backend)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        a, b, upstream = a64.to(dtype), b64.to(dtype), upstream64.to(dtype)
        t = torch.tensor(temperature, dtype=acc) if as_tensor else temperature
        if dtype in LOW_PRECISION and zero_a is not None and normalize:
            # Not representable: the gradient of a zero row is upstream / 1e-12 (F.normalize's), past float16's
            # range, and plain low-precision PyTorch (the error-ratio baseline) normalises it to NaN (1e-12
            # underflows). Zero rows are checked in float32 / float64.
            continue
        with threads(1):
            got = info_nce_and_grads(a, b, t, flags, reduction, upstream, backend)
            if repeat(data, backend):
                assert_bitwise(got, info_nce_and_grads(a, b, t, flags, reduction, upstream, backend), f"{backend} again")
        for value in got:
            assert torch.isfinite(value).all(), f"{backend}/{dtype}: non-finite output"
        t_gold = torch.tensor(temperature, dtype=torch.float64) if as_tensor else temperature
        gold = info_nce_and_grads(a.double(), b.double(), t_gold, flags, reduction, upstream.double(), "reference")
        names = ("loss", "grad a", "grad b", "grad temperature")
        what = f"{backend}/{dtype}"
        if dtype in LOW_PRECISION:
            plain = info_nce_and_grads(a, b, t, flags, reduction, upstream, "reference")
            for name, actual, p, g in zip(names, got, plain, gold):
                if name == "grad temperature":
                    if not torch.isfinite(p).all():
                        continue  # plain float16 PyTorch's own temperature gradient can overflow
                    # Returned in float32 but made of float16 rows (the normalised rows are rounded to the input
                    # dtype on every backend): the error-ratio rule with its floor in the inputs' precision, on the
                    # scale of the logit-sized terms the gradient sums (plain PyTorch's error can cancel by luck
                    # on a handful of rows; a float32 floor then asks the kernel for more than its inputs hold).
                    error = (actual.double() - g.double()).abs().max().item()
                    plain_error = (p.double() - g.double()).abs().max().item()
                    floor = 4 * torch.finfo(dtype).eps * t_size
                    assert error <= 2 * plain_error + floor, (
                        f"{what} {name}: error {error:.3e} > 2 x plain {plain_error:.3e} + {floor:.1e}"
                    )
                    continue
                assert_low_precision(actual, p, g, f"{what} {name}")
            continue
        for name, actual, g in zip(names, got, gold):
            k = reduction_length * (batch if name == "grad temperature" else 1)
            tol = relative_tolerance(dtype, k) * kappa
            if name == "grad temperature":  # a sum of logit-sized terms: scaled by them, not by the result
                assert_within(actual, g, tol * t_size, f"{what} {name}")
            elif name == "grad a" and zero_a is not None and normalize:
                # The zero row's gradient is F.normalize's upstream / 1e-12: the rounding of the terms it scales
                # (logit-sized, upstream-weighted) is amplified by 1e12; the other rows keep their own scale.
                zero = torch.arange(batch) == zero_a
                zero_size = max(largest(g[zero]), 1e12 * upstream64.abs().max().item())
                assert_within(actual[zero], g[zero], tol * zero_size, f"{what} {name} (the zero row)")
                assert_within(actual[~zero], g[~zero], tol * largest(g[~zero]), f"{what} {name}")
            else:
                assert_within(actual, g, tol * largest(g), f"{what} {name}")
        if backend == "native" and data.draw(st.integers(0, 3), label="thread check") == 0:
            for count in (2, 3):
                with threads(count):
                    assert_bitwise(got, info_nce_and_grads(a, b, t, flags, reduction, upstream, backend),
                                   f"native on {count} threads")  # fmt: skip


def test_info_nce_rejects_temperatures_below_the_bound_everywhere():
    """The bound is one rule for every backend (checked in the dispatcher): probed at and around it here."""
    a = torch.randn(4, 3)
    bound = min_temperature(torch.float32)
    for backend in ["reference"] + KERNELS:
        with pytest.raises(ValueError, match="temperature must be finite and >= 1e-06"):
            mmrec_fast.info_nce(a, a, bound * (1 - 1e-6), backend=backend)
        assert torch.isfinite(mmrec_fast.info_nce(a, a, bound, backend=backend))


# -- knn / knn_graph -----------------------------------------------------------------------------------------------
@st.composite
def dyadic_rows(draw, n: int, d: int) -> torch.Tensor:
    """(n, d) rows of +-2^e on 1 or 4 coordinates, some rows zero, some repeated: x / ||x|| has entries +-1 or
    +-1/2, so every cosine is exact in any summation order and repeated rows tie exactly."""
    x = torch.zeros(n, d, dtype=torch.float64)
    for i in range(n):
        kind = draw(st.sampled_from(["zero", "copy", "one", "four"] if i else ["zero", "one", "four"]))
        if kind == "copy":
            x[i] = x[draw(st.integers(0, i - 1))]
        elif kind != "zero":
            support = 4 if kind == "four" and d >= 4 else 1
            coordinates = draw(st.lists(st.integers(0, d - 1), min_size=support, max_size=support, unique=True))
            magnitude = 2.0 ** draw(st.integers(-2, 2))  # one per row: its norm is magnitude * sqrt(support)
            for j in coordinates:
                x[i, j] = draw(st.sampled_from([-1.0, 1.0])) * magnitude
    return x


@given(data=st.data())
def test_knn_and_knn_graph_match_the_reference(data):
    n, d = data.draw(st.integers(0, 14), label="n"), data.draw(st.sampled_from([1, 2, 4, 5]), label="d")
    exclude_self = data.draw(st.booleans(), label="exclude_self")
    k = data.draw(st.integers(0, max(n - (1 if exclude_self else 0), 0)), label="k")
    exact = data.draw(st.booleans(), label="exact data")
    if exact:
        x64 = data.draw(dyadic_rows(n, d))
    else:
        gen = torch.Generator().manual_seed(data.draw(seeds))
        x64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    note(f"n={n} d={d} k={k} exclude_self={exclude_self} exact={exact}")
    for backend in KERNELS:
        dtype = draw_dtype(data, "knn", backend)
        x = x64.to(dtype)
        expected = mmrec_fast.knn(x, k, exclude_self=exclude_self, backend="reference")
        with threads(1):
            got = mmrec_fast.knn(x, k, exclude_self=exclude_self, backend=backend)
            if repeat(data, backend):
                assert_bitwise(got, mmrec_fast.knn(x, k, exclude_self=exclude_self, backend=backend), f"{backend} again")
        what = f"knn {backend}/{dtype}"
        if exact:
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), what
        else:
            check_selection(got, expected, x.to(expected[0].dtype), x.to(expected[0].dtype), k, None, what, cosine=True,
                            exclude_diagonal=exclude_self)  # fmt: skip
        if backend == "native" and data.draw(st.integers(0, 3), label="thread check") == 0:
            for count, budget in ((2, 8 * 8 * 4), (3, 16 * 16 * 4), (1, 8 * 8 * 4)):
                with threads(count), tile_bytes(budget):
                    assert_bitwise(got, mmrec_fast.knn(x, k, exclude_self=exclude_self, backend=backend),
                                   f"native knn on {count} threads, {budget}-byte tiles")  # fmt: skip
        if exact and n and data.draw(st.booleans(), label="knn_graph"):
            modalities = [x] + ([data.draw(dyadic_rows(n, 3)).to(dtype)] if data.draw(st.booleans()) else [])
            weights = [data.draw(st.sampled_from([0.1, 0.5, 0.9, 1.0])) for _ in modalities]
            edge_weight = data.draw(st.sampled_from(["binary", "cosine"]))
            norm = data.draw(st.sampled_from(["sym", "rw", None]))
            if edge_weight == "cosine" and any(bool((m_ < 0).any()) for m_ in modalities):
                norm = None  # negative cosines can make negative degrees, an error under "sym" / "rw"
            options = dict(k=k, weights=weights, include_self=not exclude_self, edge_weight=edge_weight, norm=norm)
            note(f"knn_graph {options}")
            reference_graph = mmrec_fast.knn_graph(modalities, backend="reference", **options)
            with threads(1):
                graph = mmrec_fast.knn_graph(modalities, backend=backend, **options)
            np.testing.assert_allclose(dense(graph), dense(reference_graph), rtol=1e-12, atol=0)


def check_selection(got, expected, queries, keys, k, excluded, what, cosine=False, exclude_diagonal=False):
    """Top-k on float data, where near-ties may be ordered either way: the values agree with the reference's
    within tolerance, each returned index is a valid candidate whose score is its value, the rows are sorted, and
    the empty slots (-1, -inf) are exactly the reference's."""
    values, indices = got
    ref_values, ref_indices = expected
    assert values.shape == ref_values.shape and indices.dtype == torch.int64, what
    if values.numel() == 0:
        return
    if cosine:
        queries = keys = normalize_rows(queries.double())
    scores = queries.double() @ keys.double().T
    tol = relative_tolerance(torch.float32 if values.dtype != torch.float64 else torch.float64, queries.shape[1])
    tol *= max(1.0, queries.double().abs().max().item() * keys.double().abs().max().item() * queries.shape[1])
    empty = ref_indices == -1
    assert torch.equal(indices == -1, empty), f"{what}: empty slots differ"
    assert bool((values[empty] == float("-inf")).all()), what
    assert_within(values[~empty], ref_values[~empty], tol, f"{what} values")
    rows = torch.arange(values.shape[0]).unsqueeze(1).expand_as(indices)
    picked = indices[~empty]
    assert_within(values[~empty], scores[rows[~empty], picked], tol, f"{what} values are the scores of the indices")
    assert bool((values[:, 1:] <= values[:, :-1]).all()), f"{what}: not descending"
    for r in range(indices.shape[0]):
        chosen = indices[r][indices[r] >= 0].tolist()
        assert len(set(chosen)) == len(chosen), f"{what}: row {r} repeats an index"
        if exclude_diagonal:
            assert r not in chosen, f"{what}: row {r} is its own neighbour with exclude_self"
        if excluded is not None:
            assert not set(chosen) & excluded.get(r, set()), f"{what}: row {r} returned an excluded key"


# -- topk_scores ---------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_topk_scores_matches_the_reference(data):
    num_queries, num_keys = data.draw(st.integers(0, 12), label="Q"), data.draw(st.integers(0, 14), label="K")
    d = data.draw(st.sampled_from([1, 2, 3, 5]), label="d")
    k = data.draw(st.integers(0, num_keys), label="k")
    exact = data.draw(st.booleans(), label="exact data")
    if exact:  # small integers: every score exact in any order and dtype; many ties
        entries = st.lists(st.integers(-2, 2).map(float), min_size=d, max_size=d)
        q64 = torch.tensor(data.draw(st.lists(entries, min_size=num_queries, max_size=num_queries)), dtype=torch.float64)
        k64 = torch.tensor(data.draw(st.lists(entries, min_size=num_keys, max_size=num_keys)), dtype=torch.float64)
        q64, k64 = q64.reshape(num_queries, d), k64.reshape(num_keys, d)
    else:
        gen = torch.Generator().manual_seed(data.draw(seeds))
        q64 = torch.randn(num_queries, d, generator=gen, dtype=torch.float64)
        k64 = torch.randn(num_keys, d, generator=gen, dtype=torch.float64)
    exclude, excluded = None, None
    if num_queries and num_keys and data.draw(st.booleans(), label="exclusions"):
        pair = st.tuples(st.integers(0, num_queries - 1), st.integers(0, num_keys - 1))
        pairs = data.draw(st.lists(pair, max_size=3 * num_keys))
        if data.draw(st.booleans(), label="every key of row 0") and pairs:  # a row with nothing left
            pairs += [(pairs[0][0], j) for j in range(num_keys)]
        edge_index = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2).T
        excluded = {}
        for r, c in pairs:
            excluded.setdefault(r, set()).add(c)
        as_tensor = data.draw(st.booleans(), label="exclude as a torch sparse tensor")
        if as_tensor:
            exclude = torch.sparse_coo_tensor(edge_index, torch.ones(len(pairs)), (num_queries, num_keys))
        else:
            exclude = Graph.from_edge_index(edge_index, shape=(num_queries, num_keys))
    note(f"Q={num_queries} K={num_keys} d={d} k={k} exact={exact} excluded={excluded}")
    for backend in KERNELS:
        dtype = draw_dtype(data, "topk_scores", backend)
        queries, keys = q64.to(dtype), k64.to(dtype)
        expected = mmrec_fast.topk_scores(queries, keys, k, exclude=exclude, backend="reference")
        with threads(1):
            got = mmrec_fast.topk_scores(queries, keys, k, exclude=exclude, backend=backend)
            if repeat(data, backend):
                again = mmrec_fast.topk_scores(queries, keys, k, exclude=exclude, backend=backend)
                assert_bitwise(got, again, f"{backend} again")
        what = f"topk_scores {backend}/{dtype}"
        if exact:
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), what
        else:
            acc = expected[0].dtype
            check_selection(got, expected, queries.to(acc), keys.to(acc), k, excluded, what)
        if backend == "native" and data.draw(st.integers(0, 3), label="thread check") == 0:
            for count, budget in ((2, 8 * 8 * 4), (3, 16 * 16 * 4), (1, 8 * 8 * 4)):
                with threads(count), tile_bytes(budget):
                    assert_bitwise(got, mmrec_fast.topk_scores(queries, keys, k, exclude=exclude, backend=backend),
                                   f"native topk_scores on {count} threads, {budget}-byte tiles")  # fmt: skip
