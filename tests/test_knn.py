"""knn and knn_graph: every backend against the reference (exactly where the scores are exact in floating point,
ties included; within the parity tolerance otherwise), the reference against an independent brute force, the tie
rule on duplicated rows, zero rows, many tiles (N not a multiple of any tile), determinism across runs, thread
counts and tile budgets, bad input, and knn_graph against independent scipy constructions of the FREEDOM/MENTOR
and LATTICE graphs.

Why two kinds of agreement: a dense matrix product (MKL, numpy's BLAS) does not compute every entry by the same
sequence of operations, so two identical rows can get scores that differ in the last bit, and which of them a
reference ranks first is then decided by rounding, not by the tie rule (seen at d = 4096 in float32 and float64).
The data of the exact tests is built so that every score is exact in any summation order (dyadic rows: entries
+-c on 1, 4 or 16 coordinates, so x / ||x|| has entries +-1, +-1/2, +-1/4 and every partial sum is a multiple of
1/16): there every backend must return exactly the reference's values and indices, ties included. On general
data the neighbours must agree up to near-ties within the parity tolerance. The kernels themselves give identical
rows bitwise identical scores (one FMA chain per score), which test_duplicated_rows_tie_exactly checks directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import mmrec_fast
from mmrec_fast import backends
from mmrec_fast.reference.knn import normalize_rows

from conftest import assert_same_results_across_threads_and_tile_budgets, backend_device_pairs
from parity import relative_tolerance

PAIRS = backend_device_pairs("knn")
NATIVE = [p for p in PAIRS if p[0] == "native"]
needs_native = pytest.mark.skipif(not NATIVE, reason="native backend not built")


def claims(backend: str, device: str, dtype: torch.dtype) -> bool:
    return dtype in backends.OPS["knn"].dtypes[(backend, device)]


# -- features ------------------------------------------------------------------------------------------------------
def dyadic_features(n: int, d: int, kind: str, seed: int = 0) -> torch.Tensor:
    """(n, d) float64 rows whose cosine similarities are exact in any summation order (see the module docstring).

    kind: "random" (independent sparse sign patterns), "clustered" (a few centres; members flip signs of some
    coordinates of their centre), "duplicated" (random rows, a third of them copies of others, across the whole
    index range). Every kind also has zero rows, and a few rows scaled by a power of two (same direction)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d))
    supports = [s for s in (1, 4, 16) if s <= d]

    def random_row():
        row = np.zeros(d)
        support = rng.choice(supports)
        row[rng.choice(d, support, replace=False)] = rng.choice([-3.0, 3.0], support)
        return row

    if kind == "clustered":
        centres = [random_row() for _ in range(max(1, n // 25))]
        for i in range(n):
            row = centres[rng.integers(len(centres))].copy()
            nonzero = np.flatnonzero(row)
            flip = nonzero[rng.random(nonzero.size) < 0.2]
            row[flip] *= -1
            x[i] = row
    else:
        for i in range(n):
            x[i] = random_row()
        if kind == "duplicated" and n > 3:
            copies = rng.choice(n, n // 3, replace=False)
            x[copies] = x[rng.choice(n, n // 3)]
    if n > 4:
        x[rng.choice(n, max(1, n // 20), replace=False)] *= 2.0 ** rng.integers(-3, 4)
        x[rng.choice(n, max(1, n // 30), replace=False)] = 0.0
    return torch.from_numpy(x)


def float_features(n: int, d: int, kind: str, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """General floating-point rows: "random" Gaussian, "clustered" (Gaussian blobs), "duplicated" (a third copies);
    a few zero rows."""
    g = torch.Generator().manual_seed(seed)
    if kind == "clustered":
        centres = torch.randn(max(1, n // 25), d, generator=g, dtype=torch.float64)
        x = centres[torch.randint(len(centres), (n,), generator=g)] + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        if kind == "duplicated" and n > 3:
            x[torch.randperm(n, generator=g)[: n // 3]] = x[torch.randint(n, (n // 3,), generator=g)]
    if n > 4:
        x[torch.randperm(n, generator=g)[: max(1, n // 30)]] = 0.0
    return x.to(dtype)


# -- checks --------------------------------------------------------------------------------------------------------
def knn_on(device, x, k, **kwargs):
    """mmrec_fast.knn of x moved to `device`; the results back on the CPU."""
    values, indices = mmrec_fast.knn(x.to(device), k, **kwargs)
    return values.cpu(), indices.cpu()


def assert_exactly_reference(x, k, exclude_self, backend, dtype, device="cpu"):
    values, indices = knn_on(device, x, k, exclude_self=exclude_self, backend=backend)
    expected_values, expected_indices = mmrec_fast.knn(x, k, exclude_self=exclude_self, backend="reference")
    assert values.dtype == expected_values.dtype and indices.dtype == torch.int64
    assert values.shape == (x.shape[0], k) and indices.shape == (x.shape[0], k)
    mismatched = (indices != expected_indices).any(dim=1).nonzero().flatten().tolist()
    assert not mismatched, f"{backend}: rows {mismatched[:5]} differ: {indices[mismatched[0]].tolist()} vs {expected_indices[mismatched[0]].tolist()}"
    assert torch.equal(values, expected_values)


def assert_same_neighbours(x, k, exclude_self, values, indices):
    """Neighbours agree with the float64 truth up to near-ties: each reported value is the true cosine of its index
    within tolerance; values are descending; indices are distinct, in range (self excluded if asked); and every
    true neighbour missing from a row ties, within tolerance, with the row's k-th value."""
    n, d = x.shape
    x_hat = normalize_rows(x.double())
    truth = x_hat @ x_hat.T
    if exclude_self:
        truth.fill_diagonal_(float("-inf"))
    tol = relative_tolerance(torch.float32 if values.dtype == torch.float32 else torch.float64, d)
    assert values.shape == indices.shape == (n, k)
    assert bool((indices >= 0).all() and (indices < n).all())
    if k == 0:
        return
    assert bool((values[:, 1:] <= values[:, :-1]).all()), "values must be descending"
    sorted_indices = indices.sort(dim=1).values
    assert bool((sorted_indices[:, 1:] != sorted_indices[:, :-1]).all()), "indices must be distinct within a row"
    if exclude_self:
        assert not bool((indices == torch.arange(n)[:, None]).any())
    reported_truth = truth.gather(1, indices)
    assert (values.double() - reported_truth).abs().max().item() <= tol
    true_values, true_indices = torch.sort(truth, dim=1, descending=True, stable=True)
    assert (values.double() - true_values[:, :k]).abs().max().item() <= 2 * tol
    kth = true_values[:, k - 1]
    for row in range(n):
        missing = set(true_indices[row, :k].tolist()) - set(indices[row].tolist())
        for j in missing:
            assert truth[row, j].item() <= kth[row].item() + 2 * tol, f"row {row} misses neighbour {j}"


def brute_force(x: torch.Tensor, k: int, exclude_self: bool):
    """Independent per-row Python computation in float64: sort (-cosine, index) pairs."""
    rows = x.double().tolist()
    norms = [sum(v * v for v in row) ** 0.5 for row in rows]
    values, indices = [], []
    for i, row in enumerate(rows):
        candidates = []
        for j, other in enumerate(rows):
            if exclude_self and j == i:
                continue
            dot = sum(a * b for a, b in zip(row, other))
            cosine = dot / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else 0.0
            candidates.append((-cosine, j))
        candidates.sort()
        values.append([-c for c, _ in candidates[:k]])
        indices.append([j for _, j in candidates[:k]])
    return torch.tensor(values, dtype=torch.float64), torch.tensor(indices, dtype=torch.int64).reshape(len(rows), k)


# -- the reference -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exclude_self", [False, True])
def test_reference_matches_brute_force(exclude_self):
    x = dyadic_features(40, 16, "duplicated", seed=3)
    x[7] = x[30]  # a duplicate after the row it copies and one before
    x[31] = x[30]
    for k in (1, 5, 39):
        values, indices = mmrec_fast.knn(x, k, exclude_self=exclude_self, backend="reference")
        expected_values, expected_indices = brute_force(x, k, exclude_self)
        assert torch.equal(indices, expected_indices)
        torch.testing.assert_close(values, expected_values, rtol=0, atol=1e-15)


def test_reference_zero_rows_have_similarity_zero_not_nan():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    values, indices = mmrec_fast.knn(x, 4, backend="reference")
    assert not torch.isnan(values).any()
    assert indices[0].tolist() == [0, 1, 2, 3]  # all ties at 0: lower index first
    assert values[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert indices[1].tolist()[:3] == [1, 0, 2]  # cos(1, 0) = cos(1, 2) = 0 -> the zero row (index 0) first


# -- parity --------------------------------------------------------------------------------------------------------
NATIVE_SHAPES = [(1, 1), (7, 3), (100, 1), (100, 128), (333, 3), (333, 128), (123, 4096)]
TRITON_SHAPES = [(1, 1), (7, 3), (70, 1), (90, 128), (40, 4096)]


def shapes_for(backend):
    return NATIVE_SHAPES if backend == "native" else TRITON_SHAPES


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_exact_agreement_with_reference_ties_included(backend, device, kind, exclude_self, small_tiles):
    for n, d in shapes_for(backend):
        x = dyadic_features(n, d, kind, seed=n + d).float()
        for k in (1, 10, 50):
            if k <= n - exclude_self:
                assert_exactly_reference(x, k, exclude_self, backend, torch.float32, device)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_exact_agreement_at_the_default_tile_budget(backend, device):
    n = 600 if backend == "native" else 140  # more than two default tiles (Triton: two column tiles, three row blocks)
    x = dyadic_features(n, 64, "duplicated", seed=5).float()
    for k in (1, 10, 50):
        assert_exactly_reference(x, k, False, backend, torch.float32, device)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_native_diagonal_tiles_compute_their_upper_triangle_and_mirror_it(monkeypatch, dtype, exclude_self):
    # 200 x 200 float32 tiles (edge 192 or 160 with 16-wide panels, 192 with 8-wide ones): a diagonal tile spans
    # several micro-kernel blocks on either side of its diagonal, so some are skipped and their scores mirrored;
    # 451 rows end on a partial tile, and "duplicated" rows tie across the diagonal
    from mmrec_fast.ops.topk_scores import TUNING

    monkeypatch.setitem(TUNING, "score_tile_bytes", 200 * 200 * 4)
    x = dyadic_features(451, 40, "duplicated", seed=11).to(dtype)
    for k in (1, 10, 50):
        assert_exactly_reference(x, k, exclude_self, "native", dtype)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_exact_agreement_in_other_dtypes(backend, device, dtype, small_tiles):
    if not claims(backend, device, dtype):
        with pytest.raises(backends.BackendUnavailable, match=f"takes .*got {str(dtype).replace('torch.', '')}"):
            mmrec_fast.knn(torch.zeros(3, 2, dtype=dtype, device=device), 1, backend=backend)
        return
    x = dyadic_features(90, 16, "duplicated", seed=11).to(dtype)  # dyadic rows are exact in half precision too
    for k in (1, 10, 50):
        assert_exactly_reference(x, k, False, backend, dtype, device)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("kind", ["random", "clustered", "duplicated"])
def test_float_features_match_up_to_near_ties(backend, device, kind, small_tiles):
    for n, d in shapes_for(backend):
        for dtype in (torch.float32, torch.float64):
            if not claims(backend, device, dtype):
                continue
            x = float_features(n, d, kind, seed=n * d, dtype=dtype)
            for k in (1, 10, 50):
                if k <= n:
                    values, indices = knn_on(device, x, k, backend=backend)
                    assert values.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
                    assert_same_neighbours(x, k, False, values, indices)


@pytest.mark.parametrize("backend,device", NATIVE or [pytest.param("native", "cpu", marks=pytest.mark.skip("native not built"))])
def test_duplicated_rows_tie_exactly_and_a_row_can_fall_out_of_its_own_top_k(backend, device, small_tiles):
    """Identical rows (e.g. items whose missing image was filled with the mean vector) score bitwise equal against
    every row in the native kernel (one FMA chain per score, whatever the tile); the lower index wins, so with
    k = 2 the third copy lists the first two copies, not itself. (Neither the reference's dense product nor the
    Triton interpreter's numpy matmul promise bitwise equal scores for identical rows: for them the tie rule holds
    among equal computed scores, which the last check of this test and the exact tests cover.)"""
    x = float_features(200, 384, "random", seed=2)
    copies = [5, 60, 61, 150, 199]  # across tiles of 24 rows
    x[copies] = x[copies[0]].clone()
    values, indices = mmrec_fast.knn(x, 6, backend=backend)
    for row in copies:
        assert indices[row, :5].tolist() == copies
        assert bool((values[row, :5] == values[row, 0]).all()) and values[row, 5] < values[row, 0]
    values, indices = mmrec_fast.knn(x, 2, backend=backend)
    assert indices[150].tolist() == [5, 60] and indices[5].tolist() == [5, 60]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_equal_scores_are_ordered_by_index(backend, device, small_tiles):
    x = float_features(200, 48, "duplicated", seed=2)
    values, indices = knn_on(device, x, 50, backend=backend)
    same = values[:, 1:] == values[:, :-1]
    assert bool(same.any())
    assert bool((indices[:, 1:][same] > indices[:, :-1][same]).all())


@pytest.mark.parametrize("backend,device", PAIRS)
def test_zero_rows(backend, device, small_tiles):
    x = float_features(80, 32, "random", seed=4)
    zero = [0, 33, 79]
    x[zero] = 0.0
    values, indices = knn_on(device, x, 10, backend=backend)
    assert not torch.isnan(values).any()
    for row in zero:  # similarity 0 to every row: the ten lowest indices
        assert indices[row].tolist() == list(range(10)) and values[row].abs().max().item() == 0.0
    assert_same_neighbours(x, 10, False, values, indices)
    values, indices = knn_on(device, torch.zeros(30, 5), 29, exclude_self=True, backend=backend)
    assert indices[0].tolist() == list(range(1, 30)) and indices[29].tolist() == list(range(29))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_edge_sizes_and_non_contiguous_input(backend, device):
    values, indices = knn_on(device, torch.randn(5, 3), 0, backend=backend)
    assert values.shape == (5, 0) and indices.shape == (5, 0)
    values, indices = knn_on(device, torch.randn(0, 3), 0, backend=backend)
    assert values.shape == (0, 0)
    values, indices = knn_on(device, torch.randn(4, 0), 4, backend=backend)  # d = 0: all zero rows
    assert indices.tolist() == [[0, 1, 2, 3]] * 4 and values.abs().max().item() == 0.0
    wide = torch.zeros(90, 32)
    wide[:, ::2] = dyadic_features(90, 16, "random", seed=8).float()
    x = wide.to(device)[:, ::2]
    assert not x.is_contiguous()
    got = [t.cpu() for t in mmrec_fast.knn(x, 10, backend=backend)]
    expected = mmrec_fast.knn(x.cpu().contiguous(), 10, backend="reference")
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


# -- determinism ---------------------------------------------------------------------------------------------------
@needs_native
def test_native_is_bitwise_deterministic_across_runs_threads_and_tile_budgets(monkeypatch):
    x = float_features(500, 96, "duplicated", seed=9)
    assert_same_results_across_threads_and_tile_budgets(monkeypatch, lambda: mmrec_fast.knn(x, 10, backend="native"))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_repeated_runs_are_bitwise_identical(backend, device):
    x = float_features(150, 40, "clustered", seed=10).to(device)
    first = mmrec_fast.knn(x, 10, backend=backend)
    second = mmrec_fast.knn(x, 10, backend=backend)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# -- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference"] + [b for b, dev in PAIRS if dev == "cpu"])
def test_zero_rows_with_exclude_self_and_k_zero(backend):
    """k = 0 of 0 rows with exclude_self was "k=0 is larger than the number of other rows (n - 1 = -1)" (and the
    native operator's "must be in [0, -1]"): zero neighbours of no row is a valid, empty answer."""
    values, indices = mmrec_fast.knn(torch.zeros(0, 3), 0, exclude_self=True, backend=backend)
    assert values.shape == indices.shape == (0, 0)
    assert mmrec_fast.knn_graph(torch.zeros(0, 3), 0, include_self=False, backend=backend).shape == (0, 0)
    with pytest.raises(ValueError, match="k=1 is larger than the number of other rows"):
        mmrec_fast.knn(torch.zeros(1, 3), 1, exclude_self=True, backend=backend)


def test_bad_input_raises_clear_errors():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"k=6 is larger than the number of rows \(n = 5\)"):
        mmrec_fast.knn(x, 6)
    with pytest.raises(ValueError, match=r"k=5 is larger than the number of other rows \(n - 1 = 4, exclude_self=True\)"):
        mmrec_fast.knn(x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        mmrec_fast.knn(x, -1)
    with pytest.raises(ValueError, match="k must be an integer"):
        mmrec_fast.knn(x, 2.0)
    with pytest.raises(ValueError, match=r"x must be 2-D \(n, d\)"):
        mmrec_fast.knn(x[0], 1)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        mmrec_fast.knn(x.long(), 1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        mmrec_fast.knn(x.numpy(), 1)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x holds NaN or inf"):
        mmrec_fast.knn(bad, 1)
    with pytest.raises(ValueError, match="unknown backend"):
        mmrec_fast.knn(x, 1, backend="cuda")


@needs_native
def test_native_operator_checks_its_arguments():
    op = torch.ops.mmrec_fast.knn
    with pytest.raises(RuntimeError, match="k=4 must be in"):
        op(torch.randn(3, 2), 4, False, 0)
    with pytest.raises(RuntimeError, match="must be float32 or float64"):
        op(torch.randn(3, 2).half(), 1, False, 0)
    with pytest.raises(RuntimeError, match="2-D"):
        op(torch.randn(3), 1, False, 0)


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p[0] == "triton"] or [pytest.param("triton", "cpu", marks=pytest.mark.skip("triton not runnable"))])
@pytest.mark.parametrize("block_m,block_n,block_d", [(128, 128, 32), (64, 64, 64), (32, 64, 64)])
def test_triton_gpu_block_shapes(backend, device, block_m, block_n, block_d, monkeypatch):
    """The GPU's launch shapes (kernels.topk_scores._launch_config, by k) on whatever runs Triton here, the
    interpreter included: exact agreement with the reference, ties included, d spanning several BLOCK_D slices."""
    from mmrec_fast.kernels import topk_scores as kernels

    for name, value in (("BLOCK_M", block_m), ("BLOCK_N", block_n), ("BLOCK_D", block_d)):
        monkeypatch.setitem(kernels.TUNING, name, value)
    assert kernels.launch_config(80, 64)["BLOCK_M"] == block_m
    x = dyadic_features(300, 80, "duplicated", seed=13).float()
    for k in (1, 10, 50):
        assert_exactly_reference(x, k, True, backend, torch.float32, device)


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p[0] == "triton"] or [pytest.param("triton", "cpu", marks=pytest.mark.skip("triton not runnable"))])
def test_triton_k_limit_is_a_clear_error(backend, device):
    from mmrec_fast.kernels.topk_scores import MAX_K

    with pytest.raises(backends.BackendUnavailable, match=f"at most {MAX_K} candidates"):
        mmrec_fast.knn(torch.randn(MAX_K + 2, 2, device=device), MAX_K + 1, backend="triton")


# -- torch.compile -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", NATIVE or [pytest.param("native", "cpu", marks=pytest.mark.skip("native not built"))])
def test_torch_compile(backend, device):
    x = float_features(60, 8, "random", seed=12)

    def neighbours(x):
        return mmrec_fast.knn(x * 2.0, 5, backend=backend)

    compiled = torch.compile(neighbours, backend="aot_eager", fullgraph=True)
    got, expected = compiled(x), neighbours(x)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


# -- knn_graph -----------------------------------------------------------------------------------------------------
def scipy_knn_matrix(x: np.ndarray, k: int, include_self: bool, edge_weight: str) -> sp.csr_matrix:
    """Independent construction of one modality's kNN matrix A (n x n): cosine by numpy, neighbours by a lexsort
    of (-cosine, index), zero rows with cosine 0 to everything."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x_hat = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    cosine = x_hat @ x_hat.T
    n = x.shape[0]
    rows, cols, vals = [], [], []
    for i in range(n):
        scores = cosine[i].copy()
        candidates = np.arange(n)
        if not include_self:
            scores, candidates = np.delete(scores, i), np.delete(candidates, i)
        order = np.lexsort((candidates, -scores))[:k]
        rows += [i] * k
        cols += candidates[order].tolist()
        vals += (np.ones(k) if edge_weight == "binary" else scores[order]).tolist()
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def freedom_normalise(a: sp.csr_matrix, eps: float) -> sp.csr_matrix:
    """FREEDOM/MENTOR compute_normalized_laplacian: row_sum = eps + A.sum(-1); value = r^-1/2[row] * r^-1/2[col]."""
    r = np.power(np.asarray(a.sum(axis=1)).ravel() + eps, -0.5)
    coo = a.tocoo()
    return sp.csr_matrix((r[coo.row] * coo.data * r[coo.col], (coo.row, coo.col)), shape=a.shape)


def lattice_normalise(a: sp.csr_matrix) -> sp.csr_matrix:
    """LATTICE compute_normalized_laplacian: D^-1/2 A D^-1/2, D the row sums, inf -> 0."""
    with np.errstate(divide="ignore"):
        d = np.power(np.asarray(a.sum(axis=1)).ravel(), -0.5)
    d[np.isinf(d)] = 0.0
    return sp.diags(d) @ a @ sp.diags(d)


def assert_same_matrix(graph, expected: sp.spmatrix, atol=1e-12):
    got = graph.to_scipy()
    assert got.shape == expected.shape
    difference = abs(got - expected)
    assert (difference.max() if difference.nnz else 0.0) <= atol
    assert (got != 0).sum() == (expected != 0).sum()


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + PAIRS)
def test_knn_graph_freedom_mentor_form(backend, device):
    # Dyadic features: exact cosines, so the neighbour sets are the same in numpy whatever the ties.
    image = dyadic_features(120, 64, "duplicated", seed=20)
    text = dyadic_features(120, 16, "clustered", seed=21)
    k = 10
    graph = mmrec_fast.knn_graph([image.float().to(device), text.float().to(device)], k=k, weights=[0.1, 0.9], backend=backend).to("cpu")
    a_image = scipy_knn_matrix(image.numpy(), k, True, "binary")
    a_text = scipy_knn_matrix(text.numpy(), k, True, "binary")
    expected = 0.1 * freedom_normalise(a_image, 1e-7) + 0.9 * freedom_normalise(a_text, 1e-7)
    assert_same_matrix(graph, expected)
    # Every single-modality edge is exactly the FREEDOM/MENTOR value 1/(k + 1e-7).
    single = mmrec_fast.knn_graph(text.float().to(device), k=k, backend=backend).to("cpu")
    _, _, value = single.coo()
    assert single.nnz == 120 * k
    torch.testing.assert_close(value, torch.full_like(value, 1 / (k + 1e-7)), rtol=1e-15, atol=0)
    # Fused: 0.1, 0.9 or (an edge of both modalities, summed) 1.0 times 1/(k + 1e-7).
    _, _, fused = graph.coo()
    levels = torch.tensor([0.1, 0.9, 1.0], dtype=torch.float64) / (k + 1e-7)
    assert bool(torch.isclose(fused[:, None], levels[None, :], rtol=1e-14, atol=0).any(dim=1).all())
    assert bool(torch.isclose(fused, levels[2], rtol=1e-14, atol=0).any())  # some edges are in both


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + PAIRS)
def test_knn_graph_lattice_form(backend, device):
    g = torch.Generator().manual_seed(22)
    # Nonnegative features (like CNN outputs), so every degree is positive; dyadic, so the cosines are exact and
    # the neighbour sets match numpy's whatever the ties. Item 17 has no image: its image row is zero.
    image = dyadic_features(90, 48, "duplicated", seed=25).abs()
    text = dyadic_features(90, 24, "clustered", seed=26).abs()
    image[17] = 0.0
    for dtype in (torch.float32, torch.float64):
        if backend != "reference" and not claims(backend, device, dtype):
            continue
        graph = mmrec_fast.knn_graph([image.to(device, dtype), text.to(device, dtype)], k=10, weights=[0.5, 0.5],
                                     edge_weight="cosine", backend=backend).to("cpu")  # fmt: skip
        text_part = lattice_normalise(scipy_knn_matrix(text.numpy(), 10, True, "cosine"))
        expected = 0.5 * lattice_normalise(scipy_knn_matrix(image.numpy(), 10, True, "cosine")) + 0.5 * text_part
        atol = 1e-12 if dtype == torch.float64 else 1e-6
        got = graph.to_scipy()
        assert abs(got - expected).max() <= atol
        assert abs(got[17] - 0.5 * text_part[17]).max() <= atol  # the zero image row adds zeros, not NaN
    # Gaussian float64 features (no exact ties to worry about at this size) through the native/reference path.
    if claims(backend, "cpu", torch.float64) or backend == "reference":
        g = torch.Generator().manual_seed(22)
        image, text = torch.rand(90, 48, generator=g, dtype=torch.float64), torch.rand(90, 24, generator=g, dtype=torch.float64)
        graph = mmrec_fast.knn_graph([image, text], k=10, weights=[0.3, 0.7], edge_weight="cosine", backend=backend)
        expected = 0.3 * lattice_normalise(scipy_knn_matrix(image.numpy(), 10, True, "cosine")) + 0.7 * lattice_normalise(
            scipy_knn_matrix(text.numpy(), 10, True, "cosine")
        )
        assert_same_matrix(graph, expected)


def test_knn_graph_norms_self_and_eps():
    x = dyadic_features(60, 16, "random", seed=23)
    k = 4
    a = scipy_knn_matrix(x.numpy(), k, False, "binary")
    assert_same_matrix(mmrec_fast.knn_graph(x, k, include_self=False, norm=None), a)
    rw = sp.diags(1 / np.asarray(a.sum(axis=1)).ravel()) @ a
    assert_same_matrix(mmrec_fast.knn_graph(x, k, include_self=False, norm="rw", eps=0), rw)
    assert_same_matrix(mmrec_fast.knn_graph(x, k, include_self=False, eps=0.5), freedom_normalise(a, 0.5))
    graph = mmrec_fast.knn_graph(x, k, include_self=False)
    assert not bool((graph.row_index() == graph.col.long()).any())
    cosine = scipy_knn_matrix(x.numpy(), k, True, "cosine")
    assert_same_matrix(mmrec_fast.knn_graph(x, k, edge_weight="cosine", norm=None), cosine)


def test_knn_graph_zero_rows_are_not_everyones_neighbour():
    x = dyadic_features(50, 16, "random", seed=24)
    x[0] = 0.0
    graph = mmrec_fast.knn_graph(x, 5, norm=None)
    row, col, _ = graph.coo()
    assert col[row == 0].tolist() == [0, 1, 2, 3, 4]  # all similarities 0: the lowest indices
    assert int((col == 0).sum()) < 50  # unlike the references' NaN row, which every item picks
    cosine = mmrec_fast.knn_graph(x, 5, edge_weight="cosine")
    _, _, value = cosine.coo()
    assert not torch.isnan(value).any() and value[cosine.row_index() == 0].abs().max().item() == 0.0


def test_knn_graph_bad_input():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"features\[1\] has 9 rows but features\[0\] has 10"):
        mmrec_fast.knn_graph([x, torch.randn(9, 4)], 3)
    with pytest.raises(ValueError, match="1 weights for 2 modalities"):
        mmrec_fast.knn_graph([x, x], 3, weights=[1.0])
    with pytest.raises(ValueError, match="edge_weight must be one of"):
        mmrec_fast.knn_graph(x, 3, edge_weight="gaussian")
    with pytest.raises(ValueError, match="norm must be one of"):
        mmrec_fast.knn_graph(x, 3, norm="left")
    with pytest.raises(ValueError, match="empty list"):
        mmrec_fast.knn_graph([], 3)
    with pytest.raises(ValueError, match=r"k=10 is larger than the number of other rows"):
        mmrec_fast.knn_graph(x, 10, include_self=False)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        mmrec_fast.knn_graph(x, 3, eps=-1.0)
    with pytest.raises(ValueError, match="weights must be finite"):
        mmrec_fast.knn_graph([x, x], 3, weights=[1.0, float("inf")])
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # each row's only other neighbour has cosine -1
    with pytest.raises(ValueError, match="nonnegative row degrees"):
        mmrec_fast.knn_graph(opposite, 1, edge_weight="cosine", include_self=False)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_native_normalises_while_packing_bitwise(dtype):
    """The native op divides the rows by their norms as it packs them: bitwise the kernel on normalize_rows(x)."""
    from mmrec_fast.reference.knn import normalize_rows

    x = torch.randn(150, 29, generator=torch.Generator().manual_seed(5)).to(dtype)
    x[7] = 0.0  # a zero row: similarity 0 to everything
    x[40] = x[3] * 3  # a multiple of another row
    values, indices = mmrec_fast.knn(x, 12, backend="native")
    x_hat = normalize_rows(x).contiguous()
    want_values, want_indices = torch.ops.mmrec_fast.knn(x_hat, 12, False, 0, None)
    assert torch.equal(values, want_values) and torch.equal(indices, want_indices)


@needs_native
def test_native_finiteness_check_survives_overflowing_norms():
    """Finite rows whose norm overflows are no error (the check falls back to the entries); a NaN still is."""
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(6))
    x[2] = 3e38  # finite, norm inf in float32
    mmrec_fast.knn(x, 3, backend="native")
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match="holds NaN or inf"):
        mmrec_fast.knn(x, 3, backend="native")
