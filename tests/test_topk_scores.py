"""topk_scores: the reference semantics (tie rule, exclusion, rows with fewer than k candidates) and bad input.
Kernel backends are checked against the reference here as they are added."""

from __future__ import annotations

import pytest
import torch

import mmrec_fast
from mmrec_fast import Graph


def brute_force(queries, keys, k, excluded_pairs):
    """Independent per-row Python computation: sort (-score, index) pairs."""
    values, indices = [], []
    for q in range(queries.shape[0]):
        candidates = [(-(queries[q] @ keys[j]).item(), j) for j in range(keys.shape[0]) if (q, j) not in excluded_pairs]
        candidates.sort()
        row = candidates[:k] + [(float("inf"), -1)] * (k - len(candidates[:k]))
        values.append([-s for s, _ in row])
        indices.append([j for _, j in row])
    return torch.tensor(values, dtype=torch.float64), torch.tensor(indices)


def test_reference_matches_brute_force_with_ties_and_exclusions():
    torch.manual_seed(0)
    queries = torch.randint(-2, 3, (9, 4)).double()  # small integers: many exact ties
    keys = torch.randint(-2, 3, (12, 4)).double()
    keys[7] = keys[2]  # duplicated key rows tie exactly
    pairs = [(0, 1), (0, 2), (3, 7)] + [(8, j) for j in range(12)]  # row 8 excludes everything
    exclude = Graph.from_edge_index(torch.tensor(pairs).T, shape=(9, 12))
    for k in (1, 5, 12):
        values, indices = mmrec_fast.topk_scores(queries, keys, k, exclude=exclude, backend="reference")
        expected_values, expected_indices = brute_force(queries, keys, k, set(pairs))
        assert torch.equal(indices, expected_indices)
        assert torch.equal(values, expected_values)
    assert (indices[8] == -1).all()


def test_bad_input():
    q, keys = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="k=6 is larger than the number of keys"):
        mmrec_fast.topk_scores(q, keys, 6)
    with pytest.raises(ValueError, match="d=4 but keys have d=3"):
        mmrec_fast.topk_scores(q, torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="k must be an integer"):
        mmrec_fast.topk_scores(q, keys, -1)
    with pytest.raises(ValueError, match="exclude has shape"):
        mmrec_fast.topk_scores(q, keys, 2, exclude=Graph.from_edge_index([[0], [0]], shape=(3, 4)))
    with pytest.raises(ValueError, match="must share dtype"):
        mmrec_fast.topk_scores(q, keys.double(), 2)
    with pytest.raises(ValueError, match="2-D"):
        mmrec_fast.topk_scores(q[0], keys, 2)


# -- kernel backends against the reference -------------------------------------------------------------------------
# As in test_knn.py: on dyadic data (entries +-c on 1, 4 or 16 coordinates, c a power of two) every score is exact in
# any summation order, so every backend must return exactly the reference's values and indices, ties included; on
# general float data the top-k must agree up to near-ties within the parity tolerance.

import numpy as np  # noqa: E402

from mmrec_fast import backends  # noqa: E402

from conftest import assert_same_results_across_threads_and_tile_budgets, backend_device_pairs, data_root, on_device  # noqa: E402
from parity import relative_tolerance  # noqa: E402

PAIRS = backend_device_pairs("topk_scores")
NATIVE = [p for p in PAIRS if p[0] == "native"]
needs_native = pytest.mark.skipif(not NATIVE, reason="native backend not built")


def dyadic(n: int, d: int, seed: int, duplicate: bool = True) -> torch.Tensor:
    """(n, d) float64 rows of +-2^e on 1, 4 or 16 coordinates (exact products and sums); some rows duplicated."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d))
    for i in range(n):
        support = rng.choice([s for s in (1, 4, 16) if s <= d])
        x[i, rng.choice(d, support, replace=False)] = rng.choice([-1.0, 1.0], support) * 2.0 ** rng.integers(-2, 3)
    if duplicate and n > 3:
        x[rng.choice(n, n // 4, replace=False)] = x[rng.choice(n, n // 4)]
    return torch.from_numpy(x)


def exclusion_graph(num_queries: int, num_keys: int, seed: int) -> Graph:
    """Random pairs with duplicates, an empty row (0), a row excluding every key (1), a row excluding all but two
    keys (2), and a row whose exclusions straddle the tile boundaries (3)."""
    rng = np.random.default_rng(seed)
    rows = list(rng.integers(0, num_queries, 3 * num_queries))
    cols = list(rng.integers(0, num_keys, 3 * num_queries))
    pairs = [(r, c) for r, c in zip(rows, cols) if r != 0]
    pairs += [(1, j) for j in range(num_keys)]
    pairs += [(2, j) for j in range(num_keys) if j not in (0, num_keys - 1)]
    pairs += [(3, j) for j in range(num_keys) if j % 24 in (0, 7, 8, 23)]
    pairs += pairs[:10]  # repeated pairs
    edges = torch.tensor([(r, c) for r, c in pairs if r < num_queries], dtype=torch.int64).reshape(-1, 2)
    return Graph.from_edge_index(edges.T, shape=(num_queries, num_keys))


def topk_scores_on(device, queries, keys, k, exclude=None, **kwargs):
    """mmrec_fast.topk_scores with the inputs moved to `device`; the results back on the CPU."""
    exclude = exclude.to(device) if exclude is not None else None
    values, indices = mmrec_fast.topk_scores(queries.to(device), keys.to(device), k, exclude=exclude, **kwargs)
    return values.cpu(), indices.cpu()


def assert_exactly_reference(queries, keys, k, exclude, backend, device="cpu"):
    values, indices = topk_scores_on(device, queries, keys, k, exclude, backend=backend)
    expected_values, expected_indices = mmrec_fast.topk_scores(queries, keys, k, exclude=exclude, backend="reference")
    assert values.dtype == expected_values.dtype and indices.dtype == torch.int64
    mismatched = (indices != expected_indices).any(dim=1).nonzero().flatten().tolist()
    assert not mismatched, f"{backend}: rows {mismatched[:5]} differ: {indices[mismatched[0]].tolist()} vs {expected_indices[mismatched[0]].tolist()}"
    assert torch.equal(values, expected_values)
    return values, indices


NATIVE_SIZES = [(1, 1, 1), (5, 7, 3), (70, 100, 1), (70, 333, 64), (130, 50, 128), (40, 120, 4096)]
TRITON_SIZES = [(1, 1, 1), (5, 7, 3), (70, 150, 64), (20, 60, 4096)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("with_exclude", [False, True])
def test_exact_agreement_with_reference(backend, device, with_exclude, small_tiles):
    for q, num_keys, d in NATIVE_SIZES if backend == "native" else TRITON_SIZES:
        queries, keys = dyadic(q, d, seed=q + d).float(), dyadic(num_keys, d, seed=num_keys * d).float()
        exclude = exclusion_graph(q, num_keys, seed=q) if with_exclude else None
        for k in (1, 10, 50):
            if k <= num_keys:
                values, indices = assert_exactly_reference(queries, keys, k, exclude, backend, device)
                if with_exclude and q > 2:
                    assert (indices[1] == -1).all() and (values[1] == float("-inf")).all()  # every key excluded
                    assert set(indices[2, :2].tolist()) <= {0, num_keys - 1} and (indices[2, 2:] == -1).all()


@pytest.mark.parametrize("backend,device", PAIRS)
def test_exclude_as_torch_sparse_and_unsorted_graph(backend, device, small_tiles):
    queries, keys = dyadic(30, 16, seed=1).float(), dyadic(90, 16, seed=2).float()
    graph = exclusion_graph(30, 90, seed=3)
    expected = mmrec_fast.topk_scores(queries, keys, 20, exclude=graph, backend="reference")
    row, col, _ = graph.coo()
    coo = torch.sparse_coo_tensor(torch.stack([row, col]), torch.ones(row.numel()), (30, 90))
    order = torch.randperm(graph.nnz, generator=torch.Generator().manual_seed(0))
    shuffled_within_rows = torch.argsort(row[order] * 90 + 0 * col[order], stable=True)  # rows sorted, cols not
    unsorted = Graph(graph.rowptr, col[order][shuffled_within_rows], shape=(30, 90))
    assert not bool((unsorted.col[1:].long() >= unsorted.col[:-1].long()).all())
    for exclude in (coo, coo.to_sparse_csr(), unsorted):
        got = topk_scores_on(device, queries, keys, 20, exclude, backend=backend)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_exact_agreement_in_other_dtypes(backend, device, dtype, small_tiles):
    if dtype not in backends.OPS["topk_scores"].dtypes[(backend, device)]:
        with pytest.raises(backends.BackendUnavailable, match=f"got {str(dtype).replace('torch.', '')}"):
            mmrec_fast.topk_scores(*on_device(device, torch.zeros(2, 2, dtype=dtype), torch.zeros(3, 2, dtype=dtype)), 1, backend=backend)
        return
    queries, keys = dyadic(50, 16, seed=4).to(dtype), dyadic(80, 16, seed=5).to(dtype)
    exclude = exclusion_graph(50, 80, seed=6)
    for k in (1, 10, 50):
        assert_exactly_reference(queries, keys, k, exclude, backend, device)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_float_data_matches_up_to_near_ties(backend, device, small_tiles):
    g = torch.Generator().manual_seed(7)
    for dtype in (torch.float32, torch.float64):
        if dtype not in backends.OPS["topk_scores"].dtypes[(backend, device)]:
            continue
        queries = torch.randn(60, 64, generator=g, dtype=torch.float64)
        keys = torch.randn(200, 64, generator=g, dtype=torch.float64)
        exclude = exclusion_graph(60, 200, seed=8)
        values, indices = topk_scores_on(device, queries.to(dtype), keys.to(dtype), 50, exclude, backend=backend)
        truth = queries @ keys.T
        row, col, _ = exclude.coo()
        truth[row, col] = float("-inf")
        true_values, true_indices = torch.sort(truth, dim=1, descending=True, stable=True)
        tol = relative_tolerance(dtype, 64) * truth[truth > float("-inf")].abs().max().item()
        finite = values > float("-inf")
        assert torch.equal(finite, true_values[:, :50] > float("-inf"))
        assert torch.equal(indices == -1, ~finite)
        assert (values[finite].double() - true_values[:, :50][finite]).abs().max().item() <= tol
        assert (values[finite].double() - truth.gather(1, indices.clamp(min=0))[finite]).abs().max().item() <= tol
        for r in range(60):  # neighbours missing from a row tie with its k-th value within tolerance
            kth = true_values[r, 49].item()
            for j in set(true_indices[r, :50].tolist()) - set(indices[r].tolist()):
                assert truth[r, j].item() <= kth + 2 * tol


def test_baby_training_items_excluded():
    """The evaluation shape: Baby users (a slice) against all 7,050 items, d = 64, k = 50, real training items
    excluded, float64 (exact agreement expected: no ties in Gaussian embeddings)."""
    root = data_root()
    if root is None or not (root / "baby" / "baby.inter").exists():
        pytest.skip("../shared/data/baby/baby.inter not present (set MMREC_FAST_DATA)")
    if not NATIVE:
        pytest.skip("native backend not built")
    table = np.loadtxt(root / "baby" / "baby.inter", skiprows=1, dtype=np.int64)
    train = table[table[:, 2] == 0]
    num_users, num_items = int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1
    users = train[:, 0] < 1500
    exclude = Graph.from_edge_index(torch.from_numpy(train[users][:, :2].T.copy()), shape=(1500, num_items))
    g = torch.Generator().manual_seed(9)
    user_emb = torch.randn(1500, 64, generator=g, dtype=torch.float64)
    item_emb = torch.randn(num_items, 64, generator=g, dtype=torch.float64)
    expected = mmrec_fast.topk_scores(user_emb, item_emb, 50, exclude=exclude, backend="reference")
    got = mmrec_fast.topk_scores(user_emb, item_emb, 50, exclude=exclude, backend="native")
    assert torch.equal(got[1], expected[1])
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    excluded = set(zip(train[users][:, 0].tolist(), train[users][:, 1].tolist()))
    assert not any((u, i) in excluded for u, row in enumerate(got[1].tolist()) for i in row)


# -- memory, determinism, operator checks --------------------------------------------------------------------------
@needs_native
def test_native_never_allocates_a_score_matrix():
    """Peak torch allocation while the native kernel runs stays far below one Q x K float32 matrix."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    queries, keys = torch.randn(3000, 32), torch.randn(4000, 32)
    exclude = exclusion_graph(3000, 4000, seed=10)
    mmrec_fast.topk_scores(queries, keys, 50, exclude=exclude, backend="native")  # warm the graph's caches
    peaks = {}
    for backend in ("native", "reference"):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
            mmrec_fast.topk_scores(queries, keys, 50, exclude=exclude, backend=backend)
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        totals = np.asarray(sizes, dtype=np.float64).sum(axis=1)
        peaks[backend] = totals.max() - totals[0]
    score_matrix = 3000 * 4000 * 4
    assert peaks["reference"] >= score_matrix  # the measurement sees a score matrix when there is one
    assert peaks["native"] < score_matrix / 4, f"native peak {peaks['native'] / 1e6:.1f} MB"


@needs_native
def test_native_is_bitwise_deterministic_across_runs_threads_and_tile_budgets(monkeypatch):
    queries, keys = torch.randn(400, 48), torch.randn(700, 48)
    exclude = exclusion_graph(400, 700, seed=11)
    assert_same_results_across_threads_and_tile_budgets(monkeypatch, lambda: mmrec_fast.topk_scores(queries, keys, 20, exclude=exclude, backend="native"))


@needs_native
def test_native_operator_checks_its_arguments():
    op = torch.ops.mmrec_fast.topk_scores
    q, keys = torch.randn(2, 3), torch.randn(4, 3)
    rowptr = torch.tensor([0, 2, 3])
    with pytest.raises(RuntimeError, match="sorted key indices"):
        op(q, keys, 1, rowptr, torch.tensor([3, 1, 0], dtype=torch.int32), 0)
    with pytest.raises(RuntimeError, match="sorted key indices"):
        op(q, keys, 1, rowptr, torch.tensor([1, 4, 0], dtype=torch.int32), 0)
    with pytest.raises(RuntimeError, match="exclude_rowptr must be int64 of shape"):
        op(q, keys, 1, torch.tensor([0, 3]), torch.tensor([1, 2, 0], dtype=torch.int32), 0)
    with pytest.raises(RuntimeError, match="k=5 must be in"):
        op(q, keys, 5, None, None, 0)
    with pytest.raises(RuntimeError, match="must both be float32 or both float64"):
        op(q, keys.double(), 1, None, None, 0)


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p[0] == "triton"] or [pytest.param("triton", "cpu", marks=pytest.mark.skip("triton not runnable"))])
def test_triton_k_limit_is_a_clear_error(backend, device):
    from mmrec_fast.kernels.topk_scores import MAX_K

    with pytest.raises(backends.BackendUnavailable, match=f"at most {MAX_K} candidates"):
        mmrec_fast.topk_scores(*on_device(device, torch.randn(2, 2), torch.randn(MAX_K + 1, 2)), MAX_K + 1, backend="triton")


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + PAIRS)
def test_non_finite_scores_are_an_error_on_every_backend(backend, device):
    """One rule for NaN: there are no non-finite scores. The native kernel dropped NaN rows and keys and the
    reference ranked NaN first; now NaN / inf inputs, and inputs whose scores could overflow, are errors everywhere."""
    dtype = torch.float32
    for bad in (float("nan"), float("inf"), float("-inf")):
        for name in ("queries", "keys"):
            q, keys = torch.randn(4, 3, dtype=dtype), torch.randn(6, 3, dtype=dtype)
            (q if name == "queries" else keys)[1, 2] = bad
            with pytest.raises(ValueError, match=f"topk_scores: {name} holds NaN or inf"):
                mmrec_fast.topk_scores(*on_device(device, q, keys), 2, backend=backend)
    with pytest.raises(ValueError, match="keys holds NaN"):  # even with no query to rank for
        mmrec_fast.topk_scores(*on_device(device, torch.randn(0, 3), torch.full((2, 3), float("nan"))), 1, backend=backend)
    # Finite inputs whose float32 scores overflow: 1e20 * 1e20 * 2 = inf, and inf - inf = NaN.
    q = torch.tensor([[1e20, 1e20]])
    keys = torch.tensor([[1e20, -1e20], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"too large for torch.float32 scores: max\|q\| \* max\|k\| \* d = 2e\+40"):
        mmrec_fast.topk_scores(*on_device(device, q, keys), 1, backend=backend)
    if backend in ("reference", "native"):  # float64 scores hold them
        values, indices = mmrec_fast.topk_scores(*on_device(device, q.double(), keys.double()), 2, backend=backend)
        assert indices.tolist() == [[1, 0]] and values[0, 1].item() == 0.0
