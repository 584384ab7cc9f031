"""propagate / spmm: parity of values and gradients of every backend against the reference, on every dtype the
backend claims; odd widths, isolated nodes, a hub, duplicates, self-loops, weighted non-symmetric and rectangular
graphs, the real Baby graph; gradcheck; determinism; no saved activations; bad input; torch.compile; the
reference itself against an independent scipy computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import mmrec_fast
from mmrec_fast import Graph, backends
from mmrec_fast.ops import propagate as propagate_ops  # noqa: F401  (the module registers the ops)

from conftest import backend_device_pairs, data_root, kernel_backends
from parity import LOW_PRECISION, assert_matches, assert_parity

PAIRS = backend_device_pairs("propagate")
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def claimed(dtypes=ALL_DTYPES):
    """(backend, device, dtype) for every kernel backend that runs here and every dtype it claims."""
    support = mmrec_fast.backends.OPS["propagate"].dtypes
    return [(b, dev, dt) for b, dev in PAIRS for dt in dtypes if dt in support[(b, dev)]]


# -- graphs -------------------------------------------------------------------------------------------------------
def bipartite_graph(num_users=40, num_items=30, num_edges=160, seed=0) -> Graph:
    """LightGCN/SLMRec form: sym norm, repeated pairs summed, one isolated user and one isolated item."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users - 1, num_edges)
    items = rng.integers(0, num_items - 1, num_edges)
    users[:6], items[:6] = users[6:12], items[6:12]
    return Graph.bipartite(users, items, num_users, num_items, norm="sym", eps=0.0, duplicates="sum")


def self_loop_graph(seed=1) -> Graph:
    """LATTICE's D^-1 (A + I): row-normalised with self-loops (not symmetric as a matrix)."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 25, 90), rng.integers(0, 20, 90)
    return Graph.bipartite(users, items, 25, 20, norm="rw", self_loops=True, duplicates="collapse")


def weighted_graph(n=45, seed=2) -> Graph:
    """A weighted, non-symmetric square matrix (the backward needs the cached transpose), with empty rows."""
    m = sp.random(n, n, density=0.08, random_state=seed, format="lil")
    m[3, :] = 0  # an empty row
    m = m.tocsr()
    m.eliminate_zeros()
    return Graph.from_scipy(m, norm="sym", eps=1e-8)


def hub_graph(hub_degree=5000, seed=3) -> Graph:
    """A user connected to `hub_degree` items (degree >= 5,000) plus sparse random interactions."""
    rng = np.random.default_rng(seed)
    num_users, num_items = 60, hub_degree + 10
    users = np.concatenate([np.zeros(hub_degree, dtype=np.int64), rng.integers(1, num_users, 300)])
    items = np.concatenate([np.arange(hub_degree), rng.integers(0, num_items, 300)])
    return Graph.bipartite(users, items, num_users, num_items, norm="sym", eps=1e-8)


def rectangular_graph(seed=4) -> Graph:
    """MMSSL's ui = D_u^-1/2 R (users x items), left-normalised with +1e-8."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 35, 150), rng.integers(0, 22, 150)
    return Graph.from_edge_index(np.stack([users, items]), shape=(36, 22), norm="left", eps=1e-8)


SQUARE_GRAPHS = {"bipartite": bipartite_graph, "self_loops": self_loop_graph, "weighted": weighted_graph}


def reduction_length(graph: Graph, num_layers: int) -> int:
    degree = (graph.rowptr[1:] - graph.rowptr[:-1]).max().item() if graph.nnz else 0
    return (degree + 1) * max(num_layers, 1)


# -- the parity check ---------------------------------------------------------------------------------------------
def check_parity(graph, backend, device, dtype, d, num_layers=3, combine="mean", seed=0):
    """Values and gradients of `backend` against the float64 reference on the same (rounded) inputs (parity.py's
    rules)."""
    gen = torch.Generator().manual_seed(seed)
    x64 = torch.randn(graph.shape[1], d, generator=gen, dtype=torch.float64)
    upstream64 = torch.randn(graph.shape[0], d, generator=gen, dtype=torch.float64)

    def run(backend, device, x, upstream):
        x = x.to(device).requires_grad_()
        out = mmrec_fast.propagate(graph.to(device), x, num_layers, combine, backend=backend)
        (grad,) = torch.autograd.grad(out, x, upstream.to(device))
        return out.detach(), grad

    assert_parity(run, backend, device, (x64.to(dtype), upstream64.to(dtype)), ("values", "grad"),
                  reduction_length(graph, num_layers), f"{backend}/{device}/{dtype}/d={d}/L={num_layers}/{combine}")  # fmt: skip


# Low precision at d in {7, 64, 130} (odd, one full chunk, chunks + remainder) keeps the interpreter run short.
PARITY_CASES = [(b, dev, dt, d) for b, dev, dt in claimed() for d in (1, 7, 32, 64, 130)
                if dt not in LOW_PRECISION or d in (7, 64, 130)]  # fmt: skip


@pytest.mark.parametrize("backend,device,dtype,d", PARITY_CASES, ids=str)
@pytest.mark.parametrize("graph_kind", sorted(SQUARE_GRAPHS))
def test_parity(backend, device, dtype, d, graph_kind):
    check_parity(SQUARE_GRAPHS[graph_kind](), backend, device, dtype, d)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize(
    "num_layers,combine",
    [(0, "mean"), (1, "mean"), (2, "sum"), (3, "last"), (3, [0.5, -0.25, 0.0, 2.0]), (4, [0.0, 0.0, 1.0, 0.0, 0.0]), (3, "sum")],
)
def test_combinations(backend, device, num_layers, combine):
    for dtype in (torch.float64, torch.float32):
        check_parity(bipartite_graph(), backend, device, dtype, 5, num_layers, combine)
    check_parity(weighted_graph(), backend, device, torch.float64, 3, num_layers, combine)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + PAIRS)
@pytest.mark.parametrize("num_layers", [0, 1, 3])
def test_all_zero_weights_give_zeros_with_a_gradient(backend, device, num_layers):
    """combine = [0, ..., 0] is the zero map: the output is zeros that require grad, and backward gives a zero
    gradient (the reference returned a fresh zeros tensor without grad_fn, so backward raised)."""
    graphs = [bipartite_graph()] + ([rectangular_graph()] if num_layers == 1 else [])
    for graph in (g.to(device) for g in graphs):
        x = torch.randn(graph.shape[1], 4, device=device, requires_grad=True)
        out = mmrec_fast.propagate(graph, x, num_layers, [0.0] * (num_layers + 1), backend=backend)
        assert out.shape == (graph.shape[0], 4) and out.requires_grad
        assert torch.equal(out, torch.zeros_like(out))
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


def segment_boundary_graph(seed=5) -> Graph:
    """Users whose degrees sit on and around multiples of the GPU kernels' edge segment (128 edges per warp or
    program; longer rows are summed in pieces): 0, 1, 127, 128, 129, 255, 256, 257, 300, weighted, not symmetric."""
    rng = np.random.default_rng(seed)
    degrees = [0, 1, 127, 128, 129, 255, 256, 257, 300, 0, 3]
    num_items = 320
    users = np.concatenate([np.full(k, u, dtype=np.int64) for u, k in enumerate(degrees)])
    items = np.concatenate([rng.permutation(num_items)[:k] for k in degrees])
    values = rng.uniform(0.5, 1.5, users.size)
    return Graph.from_edge_index(np.stack([users, items]), values=torch.from_numpy(values), shape=(len(degrees), num_items), norm=None)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_around_the_segment_length(backend, device, dtype):
    graph = segment_boundary_graph()
    for d in (1, 64, 130):
        check_parity(graph, backend, device, dtype, d, num_layers=1, combine="last")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_hub_of_degree_5000(backend, device):
    graph = hub_graph()
    assert (graph.rowptr[1:] - graph.rowptr[:-1]).max().item() >= 5000
    check_parity(graph, backend, device, torch.float32, 7, num_layers=2)
    check_parity(graph, backend, device, torch.float64, 3, num_layers=1)


@pytest.mark.parametrize("backend,device,dtype", claimed(), ids=str)
def test_rectangular_spmm(backend, device, dtype):
    check_parity(rectangular_graph(), backend, device, dtype, 9, num_layers=1, combine="last")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("norm", ["sym", "rw", "left", None])
@pytest.mark.parametrize("shape", [(36, 22), (22, 36)])
def test_rectangular_spmm_every_norm(backend, device, norm, shape):
    """One layer of an (m, n) graph with both scale vectors (norm="sym": left (m,), right (n,)): the chain must not
    form the intermediate steps' left * right (it raised "size of tensor a (m) must match ... b (n)")."""
    rng = np.random.default_rng(6)
    rows, cols = rng.integers(0, shape[0], 120), rng.integers(0, shape[1], 120)
    graph = Graph.from_edge_index(np.stack([rows, cols]), shape=shape, norm=norm)
    for dtype in (torch.float64, torch.float32):
        check_parity(graph, backend, device, dtype, 5, num_layers=1, combine="last")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_spmm_matches_torch_sparse_mm(backend, device):
    m = sp.random(30, 20, density=0.15, random_state=5, format="coo")
    for dtype in (torch.float32, torch.float64):
        coo = torch.sparse_coo_tensor(np.stack([m.row, m.col]), m.data, m.shape, dtype=dtype, device=device)
        x = torch.randn(20, 6, dtype=dtype, device=device)
        for adj in (coo, coo.coalesce().to_sparse_csr()):
            expected = torch.sparse.mm(adj, x)
            got = mmrec_fast.spmm(adj, x, backend=backend)
            assert_matches(got, expected.double(), dtype, 20)


def test_spmm_caches_the_converted_tensor_and_sees_in_place_changes():
    from mmrec_fast.ops.propagate import _graph_of

    coo = torch.sparse_coo_tensor([[0, 1], [1, 0]], [1.0, 2.0], (2, 2)).coalesce()
    first = _graph_of(coo)
    assert _graph_of(coo) is first
    coo.mul_(3.0)  # in place: the cached conversion is stale
    x = torch.eye(2)
    assert torch.equal(mmrec_fast.spmm(coo, x, backend="reference"), torch.sparse.mm(coo, x))
    assert _graph_of(coo) is not first


@pytest.mark.parametrize("backend,device", PAIRS)
def test_gradcheck_fp64(backend, device):
    for graph, num_layers, combine in [
        (bipartite_graph(12, 9, 40), 2, "mean"),
        (weighted_graph(14), 3, [0.3, -1.0, 0.5, 2.0]),
        (rectangular_graph(), 1, "last"),
    ]:
        g = graph.to(device)
        x = torch.randn(g.shape[1], 3, dtype=torch.float64, device=device, requires_grad=True)
        fn = lambda t: mmrec_fast.propagate(g, t, num_layers, combine, backend=backend)  # noqa: E731
        # fast_mode checks random projections of the Jacobian: the same test, fewer calls in the interpreter.
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        if graph.shape[0] == graph.shape[1]:
            assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_saves_no_activations(backend, device):
    """The backward keeps the graph only: no (n, d) tensor is saved, whatever the number of layers."""
    graph = bipartite_graph().to(device)
    x = torch.randn(graph.shape[0], 16, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = mmrec_fast.propagate(graph, x, 3, backend=backend)
    assert not [t for t in saved if t.dim() == 2], [tuple(t.shape) for t in saved]
    out.sum().backward()
    assert x.grad is not None


def test_reference_saves_layer_activations():
    """The check above can fail: the reference keeps every layer for autograd."""
    graph = bipartite_graph()
    x = torch.randn(graph.shape[0], 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        mmrec_fast.propagate(graph, x, 3, backend="reference")
    assert [t for t in saved if t.dim() == 2]


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_native_cpu_is_bitwise_deterministic_across_runs_and_thread_counts():
    graph = hub_graph(hub_degree=5000)
    x = torch.randn(graph.shape[0], 64, requires_grad=True)
    outs, grads = [], []
    threads = torch.get_num_threads()
    try:
        for num_threads in (threads, threads, 1, 2):
            torch.set_num_threads(num_threads)
            out = mmrec_fast.propagate(graph, x, 3, backend="native")
            (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
            outs.append(out)
            grads.append(grad)
    finally:
        torch.set_num_threads(threads)
    for out, grad in zip(outs[1:], grads[1:]):
        assert torch.equal(out, outs[0]) and torch.equal(grad, grads[0])


@pytest.mark.parametrize("backend,device", PAIRS)
def test_repeated_runs_are_bitwise_identical(backend, device):
    graph = weighted_graph().to(device)
    x = torch.randn(graph.shape[0], 33, device=device)
    first = mmrec_fast.propagate(graph, x, 3, backend=backend)
    assert torch.equal(mmrec_fast.propagate(graph, x, 3, backend=backend), first)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_non_contiguous_input(backend, device):
    graph = bipartite_graph().to(device)
    wide = torch.randn(graph.shape[0], 20, dtype=torch.float64, device=device)
    x = wide[:, ::2]
    assert not x.is_contiguous()
    got = mmrec_fast.propagate(graph, x, 2, backend=backend)
    expected = mmrec_fast.propagate(graph, x.contiguous(), 2, backend="reference")
    assert_matches(got, expected, torch.float64, 20)


def test_baby_graph_parity():
    root = data_root()
    if root is None or not (root / "baby" / "baby.inter").exists():
        pytest.skip("../shared/data/baby/baby.inter not present (set MMREC_FAST_DATA)")
    table = np.loadtxt(root / "baby" / "baby.inter", skiprows=1, dtype=np.int64)
    train = table[table[:, 2] == 0]
    graph = Graph.bipartite(train[:, 0], train[:, 1], int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1)
    pairs = [(b, dev) for b, dev in PAIRS if not (b == "triton" and dev == "cpu")]  # the interpreter is too slow here
    if not pairs:
        pytest.skip("no compiled kernel backend here")
    for backend, device in pairs:
        check_parity(graph, backend, device, torch.float32, 64, num_layers=3)


# -- the reference against an independent scipy computation -----------------------------------------------------
@pytest.mark.parametrize("builder", [bipartite_graph, self_loop_graph, weighted_graph, rectangular_graph])
def test_reference_matches_scipy(builder):
    graph = builder()
    m, n = graph.shape
    matrix = graph.to_scipy()
    x = np.random.default_rng(0).standard_normal((n, 4))
    if m == n:
        layers = [x]
        for _ in range(3):
            layers.append(matrix @ layers[-1])
        expected = 0.1 * layers[0] + 0.2 * layers[1] + 0.3 * layers[2] + 0.4 * layers[3]
        got = mmrec_fast.propagate(graph, torch.from_numpy(x), 3, [0.1, 0.2, 0.3, 0.4], backend="reference")
    else:
        expected = matrix @ x
        got = mmrec_fast.spmm(graph, torch.from_numpy(x), backend="reference")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


# -- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    graph = bipartite_graph()
    n = graph.shape[0]
    x = torch.randn(n, 4)
    with pytest.raises(ValueError, match="2-D"):
        mmrec_fast.propagate(graph, torch.randn(n))
    with pytest.raises(ValueError, match="x has 5 rows but the graph has 70 columns"):
        mmrec_fast.propagate(graph, torch.randn(5, 4))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        mmrec_fast.propagate(graph, torch.ones(n, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="is on meta but the graph is on cpu"):
        mmrec_fast.propagate(graph, torch.empty(n, 4, device="meta"))
    for bad_layers in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_layers must be an integer"):
            mmrec_fast.propagate(graph, x, bad_layers)
    with pytest.raises(ValueError, match="combine must be"):
        mmrec_fast.propagate(graph, x, 2, "avg")
    with pytest.raises(ValueError, match="needs num_layers \\+ 1 = 3"):
        mmrec_fast.propagate(graph, x, 2, [0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        mmrec_fast.propagate(graph, x, 1, [float("inf"), 1.0])
    with pytest.raises(ValueError, match="require grad"):
        mmrec_fast.propagate(graph, x, 1, torch.tensor([0.5, 0.5], requires_grad=True))
    with pytest.raises(TypeError, match="must be a mmrec_fast.Graph"):
        mmrec_fast.propagate(graph.to_torch(), x)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        mmrec_fast.propagate(graph, x.numpy())
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        mmrec_fast.propagate(graph, x, backend="cuda")


def test_rectangular_graph_allows_one_layer_only():
    graph = rectangular_graph()
    x = torch.randn(graph.shape[1], 3)
    with pytest.raises(ValueError, match="rectangular graph"):
        mmrec_fast.propagate(graph, x, 2, "mean")
    with pytest.raises(ValueError, match="rectangular graph"):
        mmrec_fast.propagate(graph, x, 1, "mean")


@pytest.mark.parametrize("backend", [b for b in kernel_backends("cpu") if b == "native"])
def test_native_cpu_rejects_half_precision_when_asked_explicitly(backend):
    graph = bipartite_graph()
    x = torch.randn(graph.shape[0], 4, dtype=torch.float16)
    with pytest.raises(backends.BackendUnavailable, match="takes float32, float64, got float16"):
        mmrec_fast.propagate(graph, x, backend=backend)


def test_spmm_rejects_dense_and_trainable_sparse():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="Graph or a torch sparse"):
        mmrec_fast.spmm(torch.eye(2), x)
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        mmrec_fast.spmm(torch.sparse_coo_tensor([[0, 1], [1, 0]], values, (2, 2)), x)


def test_spmm_edges_behave_as_torch_sparse_mm():
    """sparse @ sparse: a clear error (torch's contiguity message before); a sparse tensor and a dense operand of
    different dtypes: an error naming both, where torch.sparse.mm raises too (it used to run in x's dtype)."""
    coo = torch.sparse_coo_tensor([[0, 1], [1, 0]], [1.0, 2.0], (2, 2))
    with pytest.raises(TypeError, match="sparse @ sparse is not supported"):
        mmrec_fast.spmm(coo, coo)
    x64 = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        torch.sparse.mm(coo, x64)  # the behaviour mirrored
    with pytest.raises(TypeError, match="adj is torch.float32 and x is torch.float64"):
        mmrec_fast.spmm(coo, x64)
    with pytest.raises(TypeError, match="adj is torch.float32 and x is torch.float64"):
        mmrec_fast.spmm(coo.to_sparse_csr(), x64)
    # a Graph has no dtype: it serves each
    graph = Graph.from_torch(coo)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 3, dtype=dtype)
        assert torch.equal(mmrec_fast.spmm(graph, x, backend="reference"), torch.sparse.mm(coo.to(dtype), x))
    with pytest.raises(TypeError, match="dense \\(strided\\) tensor"):
        mmrec_fast.propagate(graph, coo, 1)


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_native_operator_checks_its_arguments():
    """Direct callers of torch.ops.mmrec_fast.propagate get errors, not crashes."""
    graph = bipartite_graph()
    rowptr, col, values, left, right, *_ = graph.kernel_args(torch.float32)
    x = torch.randn(graph.shape[0], 4)
    op = torch.ops.mmrec_fast.propagate
    with pytest.raises(RuntimeError, match="left must have dtype Float"):
        op(x, rowptr, col, values, left.double(), right, None, None, None, [0.5, 0.5])
    with pytest.raises(RuntimeError, match="col must be a contiguous 1-D int32"):
        op(x, rowptr, col.long(), values, left, right, None, None, None, [0.5, 0.5])
    with pytest.raises(RuntimeError, match="weights must hold"):
        op(x, rowptr, col, values, left, right, None, None, None, [])


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_native_operator_checks_the_csr_it_gathers_through():
    """Columns out of range and a rowptr ending past nnz segfaulted; negative columns and a decreasing rowptr gave
    garbage. Each is a one-line error now, also after a valid call with the same tensors (checked pairs are
    remembered with their version counters: an in-place change is checked again) and for inference tensors."""
    op = torch.ops.mmrec_fast.propagate
    x = torch.randn(3, 2)

    def call(rowptr, col, weights=(0.0, 1.0)):
        return op(x, torch.tensor(rowptr), torch.tensor(col, dtype=torch.int32), None, None, None, None, None, None,
                  list(weights))  # fmt: skip

    for col, bad in (([1, 3], 3), ([1, 1 << 30], 1 << 30), ([-1, 0], -1), ([0, -(1 << 31)], -(1 << 31))):
        with pytest.raises(RuntimeError, match=rf"col must hold column indices in \[0, 3\) \(the rows of x\), got {bad}"):
            call([0, 1, 2, 2], col)
    with pytest.raises(RuntimeError, match="rowptr must run from 0 to nnz = 2, got 0 .. 100"):
        call([0, 1, 2, 100], [1, 0])
    with pytest.raises(RuntimeError, match="rowptr must run from 0 to nnz = 2, got 1 .. 2"):
        call([1, 1, 2, 2], [1, 0])
    with pytest.raises(RuntimeError, match="rowptr must be nondecreasing"):
        call([0, 2, 1, 2], [1, 0], (0.5, 0.25, 0.25))
    rowptr, col = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0], dtype=torch.int32)
    good = op(x, rowptr, col, None, None, None, None, None, None, [0.0, 1.0])
    assert torch.equal(good, torch.stack([x[1], x[0], torch.zeros(2)]))
    assert torch.equal(op(x, rowptr, col, None, None, None, None, None, None, [0.0, 1.0]), good)  # remembered
    with pytest.raises(RuntimeError, match="col must hold column indices in \\[0, 1\\) \\(the rows of x\\), got 1"):
        op(x[:1], rowptr, col, None, None, None, None, None, None, [0.0, 1.0])  # the same CSR, another n
    col[0] = 5  # in place: checked again
    with pytest.raises(RuntimeError, match="got 5"):
        op(x, rowptr, col, None, None, None, None, None, None, [0.0, 1.0])
    rowptr[1] = 3
    col[0] = 1
    with pytest.raises(RuntimeError, match="rowptr must be nondecreasing"):
        op(x, rowptr, col, None, None, None, None, None, None, [0.0, 1.0])
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="got 7"):
            call([0, 1, 2, 2], [1, 7])


# -- torch.compile -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p[0] == "native"] or [pytest.param("native", "cpu", marks=pytest.mark.skip("native not built"))])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile(backend, device, compile_backend):
    graph = bipartite_graph().to(device)

    def model(x, w):
        return (mmrec_fast.propagate(graph, x @ w, 3, "mean", backend=backend) ** 2).sum()

    compiled = torch.compile(model, backend=compile_backend, fullgraph=True)
    x = torch.randn(graph.shape[0], 8, device=device)
    w = torch.randn(8, 8, device=device, requires_grad=True)
    got = compiled(x, w)  # traced before any eager call has filled the graph's caches
    (got_grad,) = torch.autograd.grad(got, w)
    expected = model(x, w)
    (expected_grad,) = torch.autograd.grad(expected, w)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)
