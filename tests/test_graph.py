"""Graph: constructors, every normalisation and eps variant against an independent scipy construction,
duplicates, transpose, conversions, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import mmrec_fast
from mmrec_fast import Graph

from conftest import data_root


def interactions(num_users=30, num_items=20, num_edges=120, seed=0, duplicates=True):
    """Random (users, items) with some repeated pairs, plus a user and an item without interactions."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users - 1, num_edges)  # user num_users - 1 is isolated
    items = rng.integers(0, num_items - 1, num_edges)  # item num_items - 1 is isolated
    if duplicates:
        users[:5], items[:5] = users[5:10], items[5:10]
    return users, items


def scipy_bipartite(users, items, num_users, num_items, binary):
    """[[0, R], [R^T, 0]] with R summed (or binarised) counts, built with scipy alone."""
    r = sp.coo_matrix((np.ones(len(users)), (users, items)), shape=(num_users, num_items)).tocsr()
    r.sum_duplicates()
    if binary:
        r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]]).tocsr()


def scipy_scale(degree, power, eps):
    with np.errstate(divide="ignore"):
        scale = np.power(degree + eps, -power)
    scale[np.isinf(scale)] = 0.0
    return scale


def assert_same_matrix(graph: Graph, expected: sp.spmatrix):
    got = graph.to_scipy()
    assert got.shape == expected.shape
    diff = abs(got - expected)
    assert diff.nnz == 0 or diff.max() <= 1e-12 * max(1.0, abs(expected).max())


@pytest.mark.parametrize("eps", [0.0, 1e-8, 1e-7])
@pytest.mark.parametrize("duplicates", ["sum", "collapse"])
def test_bipartite_sym_matches_scipy(eps, duplicates):
    users, items = interactions()
    g = Graph.bipartite(users, items, 30, 20, norm="sym", eps=eps, duplicates=duplicates)
    a = scipy_bipartite(users, items, 30, 20, binary=duplicates == "collapse")
    d = scipy_scale(np.asarray(a.sum(1)).ravel(), 0.5, eps)
    assert_same_matrix(g, sp.diags(d) @ a @ sp.diags(d))
    assert g.symmetric and g.shape == (50, 50)
    assert g.left is not None and g.right is not None
    assert (g.values is None) == (duplicates == "collapse")  # the repeated pairs make W weighted under "sum"


def test_duplicates_sum_keeps_multiplicity_collapse_binarises():
    users, items = np.array([0, 0, 0, 1]), np.array([1, 1, 0, 1])
    summed = Graph.bipartite(users, items, 2, 2, norm=None, duplicates="sum")
    collapsed = Graph.bipartite(users, items, 2, 2, norm=None, duplicates="collapse")
    assert summed.to_scipy()[0, 3] == 2.0 and collapsed.to_scipy()[0, 3] == 1.0
    assert summed.nnz == collapsed.nnz == 6
    assert collapsed.values is None and summed.values is not None


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_rw_with_self_loops_is_lattice_form(eps):
    users, items = interactions(seed=1)
    g = Graph.bipartite(users, items, 30, 20, norm="rw", eps=eps, self_loops=True, duplicates="collapse")
    a = scipy_bipartite(users, items, 30, 20, binary=True) + sp.eye(50)
    d = scipy_scale(np.asarray(a.sum(1)).ravel(), 1.0, eps)
    assert_same_matrix(g, sp.diags(d) @ a)
    assert g.right is None


def test_left_norm_rectangular_is_mmssl_form():
    users, items = interactions(seed=2, duplicates=False)
    ui = Graph.from_edge_index(np.stack([users, items]), shape=(30, 20), norm="left", eps=1e-8)
    iu = Graph.from_edge_index(np.stack([items, users]), shape=(20, 30), norm="left", eps=1e-8)
    r = sp.coo_matrix((np.ones(len(users)), (users, items)), shape=(30, 20)).tocsr()
    assert_same_matrix(ui, sp.diags(np.power(np.asarray(r.sum(1)).ravel() + 1e-8, -0.5)) @ r)
    assert_same_matrix(iu, sp.diags(np.power(np.asarray(r.sum(0)).ravel() + 1e-8, -0.5)) @ r.T)
    assert not ui.symmetric and ui.shape == (30, 20)


def test_rectangular_sym_uses_row_and_column_degrees():
    users, items = interactions(seed=3)
    g = Graph.from_edge_index(np.stack([users, items]), shape=(30, 20), norm="sym")
    r = sp.coo_matrix((np.ones(len(users)), (users, items)), shape=(30, 20)).tocsr()
    r.sum_duplicates()
    dr, dc = scipy_scale(np.asarray(r.sum(1)).ravel(), 0.5, 0), scipy_scale(np.asarray(r.sum(0)).ravel(), 0.5, 0)
    assert_same_matrix(g, sp.diags(dr) @ r @ sp.diags(dc))


def test_norm_none_keeps_values():
    m = sp.random(12, 9, density=0.3, random_state=0, format="csr")
    g = Graph.from_scipy(m)
    assert_same_matrix(g, m)
    assert g.left is None and g.right is None


def test_isolated_node_gets_zero_scale_with_eps_zero_and_finite_with_eps():
    users, items = interactions()
    g0 = Graph.bipartite(users, items, 30, 20, eps=0.0)
    g1 = Graph.bipartite(users, items, 30, 20, eps=1e-7)
    assert g0.left[29].item() == 0.0 and g0.left[49].item() == 0.0
    assert g1.left[29].item() == pytest.approx(1e-7 ** -0.5)


def test_from_torch_coo_and_csr_and_scipy_agree():
    m = sp.random(15, 15, density=0.2, random_state=1, format="coo")
    coo = torch.sparse_coo_tensor(np.stack([m.row, m.col]), m.data, m.shape)
    g_coo, g_csr, g_sp = Graph.from_torch(coo), Graph.from_torch(coo.coalesce().to_sparse_csr()), Graph.from_scipy(m)
    for g in (g_coo, g_csr):
        assert_same_matrix(g, g_sp.to_scipy())


def test_from_torch_uncoalesced_duplicates_are_summed():
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 0, 1], [1, 1, 0]]), torch.tensor([1.0, 2.0, 5.0]), (2, 2))
    g = Graph.from_torch(coo)
    assert g.to_scipy()[0, 1] == 3.0 and g.nnz == 2


def test_to_torch_round_trip_and_layouts():
    users, items = interactions()
    g = Graph.bipartite(users, items, 30, 20)
    dense = torch.from_numpy(g.to_scipy().toarray())
    assert torch.allclose(g.to_torch(torch.float64).to_dense(), dense)
    assert torch.allclose(g.to_torch(torch.float64, layout=torch.sparse_csr).to_dense(), dense)
    with pytest.raises(ValueError, match="layout"):
        g.to_torch(layout=torch.strided)


def test_transpose_is_cached_and_correct():
    m = sp.random(7, 11, density=0.4, random_state=2, format="csr")
    g = Graph.from_scipy(m, norm="sym")
    t = g.transpose()
    assert t is g.T and t.T is g
    assert_same_matrix(t, g.to_scipy().T.tocsr())


def test_symmetric_flag_detected_for_generic_square_graphs():
    a = sp.random(10, 10, density=0.3, random_state=3, format="csr")
    assert (a != a.T).nnz > 0
    assert Graph.from_scipy(a + a.T).symmetric
    assert not Graph.from_scipy(a).symmetric
    pattern = (a + a.T).tocsr()
    pattern.data[:] = 1.0
    weighted = pattern.copy()
    weighted.data = np.arange(1, weighted.nnz + 1, dtype=np.float64)  # symmetric pattern, asymmetric values
    assert Graph.from_scipy(pattern).symmetric
    assert not Graph.from_scipy(weighted).symmetric


def test_to_same_device_is_identity():
    users, items = interactions()
    g = Graph.bipartite(users, items, 30, 20)
    assert g.to("cpu") is g


def test_raw_constructor_validates():
    with pytest.raises(ValueError, match="rowptr must have"):
        Graph(torch.tensor([0, 1]), torch.tensor([0]), shape=(2, 2))
    with pytest.raises(ValueError, match="col holds index 5"):
        Graph(torch.tensor([0, 1, 1]), torch.tensor([5]), shape=(2, 2))
    with pytest.raises(ValueError, match="nondecreasing"):
        Graph(torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]), shape=(3, 3))
    with pytest.raises(ValueError, match="end at nnz"):
        Graph(torch.tensor([0, 1, 3]), torch.tensor([0, 1]), shape=(2, 2))
    with pytest.raises(TypeError, match="integer"):
        Graph(torch.tensor([0.0, 1.0]), torch.tensor([0]), shape=(1, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        Graph(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([float("nan")]), shape=(1, 1))
    with pytest.raises(ValueError, match="left must have shape"):
        Graph(torch.tensor([0, 1]), torch.tensor([0]), left=torch.ones(3), shape=(1, 1))


def test_out_of_range_ids_raise_naming_the_argument():
    with pytest.raises(ValueError, match="users holds index 30"):
        Graph.bipartite([0, 30], [0, 1], 30, 20)
    with pytest.raises(ValueError, match="items holds index -1"):
        Graph.bipartite([0, 1], [0, -1], 30, 20)
    with pytest.raises(ValueError, match=r"edge_index\[1\] holds index 9"):
        Graph.from_edge_index([[0, 1], [2, 9]], shape=(4, 9))
    with pytest.raises(ValueError, match="same length"):
        Graph.bipartite([0, 1, 2], [0, 1], 30, 20)
    with pytest.raises(ValueError, match=r"shape \(2, E\)"):
        Graph.from_edge_index(torch.zeros(3, 4, dtype=torch.long))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="norm must be one of"):
        Graph.bipartite([0], [0], 1, 1, norm="symmetric")
    with pytest.raises(ValueError, match="duplicates must be one of"):
        Graph.bipartite([0], [0], 1, 1, duplicates="max")
    with pytest.raises(ValueError, match="eps must be"):
        Graph.bipartite([0], [0], 1, 1, eps=-1.0)
    with pytest.raises(ValueError, match="self_loops needs a square graph"):
        Graph.from_edge_index([[0], [1]], shape=(2, 3), self_loops=True)
    with pytest.raises(ValueError, match="collapse"):
        Graph.from_edge_index([[0], [1]], values=torch.tensor([2.0]), duplicates="collapse")


def test_values_requiring_grad_are_rejected():
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        Graph.from_edge_index([[0, 1], [1, 0]], values=values)
    with pytest.raises(ValueError, match="requires grad"):
        Graph.from_torch(torch.sparse_coo_tensor([[0, 1], [1, 0]], values, (2, 2)))
    with pytest.raises(ValueError, match="requires grad"):
        Graph(torch.tensor([0, 1, 2]), torch.tensor([1, 0]), values, shape=(2, 2))


def test_from_torch_rejects_dense():
    with pytest.raises(TypeError, match="sparse COO or CSR"):
        Graph.from_torch(torch.ones(2, 2))


def test_baby_train_graph_statistics():
    root = data_root()
    if root is None or not (root / "baby" / "baby.inter").exists():
        pytest.skip("../shared/data/baby/baby.inter not present (set MMREC_FAST_DATA)")
    table = np.loadtxt(root / "baby" / "baby.inter", skiprows=1, dtype=np.int64)
    num_users, num_items = int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1
    train = table[table[:, 2] == 0]
    g = Graph.bipartite(train[:, 0], train[:, 1], num_users, num_items)
    assert g.shape == (26495, 26495) and g.nnz == 237102
    a = scipy_bipartite(train[:, 0], train[:, 1], num_users, num_items, binary=False)
    d = scipy_scale(np.asarray(a.sum(1)).ravel(), 0.5, 0.0)
    assert_same_matrix(g, sp.diags(d) @ a @ sp.diags(d))


# -- indices out of range in torch / scipy sparse matrices (torch and scipy do not check them by default) -----------
def _coo(rows, cols, shape=(3, 3)):
    return torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.ones(len(rows)), shape)


def _scipy_coo_with(row=None, col=None):
    """A valid 3 x 3 scipy COO matrix whose first entry's index is then overwritten (scipy checks at construction
    only)."""
    m = sp.coo_matrix((np.ones(2), (np.array([0, 1]), np.array([1, 0]))), shape=(3, 3))
    if row is not None:
        m.row[0] = row
    if col is not None:
        m.col[0] = col
    return m


def test_column_index_past_the_last_column_is_an_error_not_another_row():
    """(0, 3) in a 3 x 3 matrix used to become (1, 0) (key row * n + col), silently."""
    with pytest.raises(ValueError, match=r"from_torch: tensor.indices\(\)\[1\] .* holds index 3, outside \[0, 3\)"):
        Graph.from_torch(_coo([0, 1], [3, 0]))
    csr = torch.sparse_csr_tensor(torch.tensor([0, 1, 2, 2]), torch.tensor([3, 0]), torch.ones(2), (3, 3))
    with pytest.raises(ValueError, match=r"from_torch: tensor.col_indices\(\) .* holds index 3, outside \[0, 3\)"):
        Graph.from_torch(csr)
    with pytest.raises(ValueError, match=r"from_scipy: the matrix's column indices .* holds index 3"):
        Graph.from_scipy(_scipy_coo_with(col=3))
    with pytest.raises(ValueError, match="holds index 3"):
        mmrec_fast.spmm(_coo([0, 1], [3, 0]), torch.ones(3, 2))
    with pytest.raises(ValueError, match="holds index 3"):
        mmrec_fast.topk_scores(torch.randn(3, 2), torch.randn(3, 2), 2, exclude=_coo([0, 1], [3, 0]))


def test_negative_and_out_of_range_indices_name_the_argument():
    for rows, cols, what, bad in [([3, 1], [0, 0], r"indices\(\)\[0\]", 3), ([-1, 1], [0, 0], r"indices\(\)\[0\]", -1),
                                  ([0, 1], [-1, 0], r"indices\(\)\[1\]", -1)]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"from_torch: tensor.{what} .* holds index {bad}, outside"):
            Graph.from_torch(_coo(rows, cols))
    csr = torch.sparse_csr_tensor(torch.tensor([0, 1, 2, 2]), torch.tensor([-1, 0]), torch.ones(2), (3, 3))
    with pytest.raises(ValueError, match=r"tensor.col_indices\(\) .* holds index -1"):
        Graph.from_torch(csr)
    with pytest.raises(ValueError, match="from_scipy: the matrix's row indices .* holds index -1"):
        Graph.from_scipy(_scipy_coo_with(row=-1))
    with pytest.raises(ValueError, match="from_scipy: the matrix's row indices .* holds index 7"):
        Graph.from_scipy(_scipy_coo_with(row=7))
    with pytest.raises(ValueError, match="from_scipy: the matrix's column indices .* holds index -1"):
        Graph.from_scipy(_scipy_coo_with(col=-1))


def test_malformed_csr_pointers_name_the_argument():
    def csr(crow, col):
        return torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col), torch.ones(len(col)), (3, 3),
                                       check_invariants=False)  # fmt: skip

    with pytest.raises(ValueError, match=r"from_torch: tensor.crow_indices\(\) must be nondecreasing"):
        Graph.from_torch(csr([0, 2, 1, 2], [0, 0]))
    with pytest.raises(ValueError, match=r"from_torch: tensor.crow_indices\(\) must start at 0 and end at nnz = 2"):
        Graph.from_torch(csr([0, 1, 2, 5], [0, 0]))
    with pytest.raises(ValueError, match=r"from_torch: tensor.crow_indices\(\) must start at 0"):
        Graph.from_torch(csr([-1, 1, 2, 2], [0, 0]))
    m = sp.csr_matrix((np.ones(2), np.array([1, 0]), np.array([0, 1, 2, 2])), shape=(3, 3))
    m.indptr[1] = 3  # [0, 3, 2, 2]: scipy's tocoo used to give two entries in row 0
    with pytest.raises(ValueError, match=r"from_scipy: the matrix's indptr \(csr\) must be nondecreasing"):
        Graph.from_scipy(m)
    for fmt in ("csr", "csc"):
        m = sp.random(3, 4, density=0.5, random_state=0, format=fmt)
        m.indices[0] = 7
        with pytest.raises(ValueError, match=rf"from_scipy: the matrix's indices \({fmt}.* holds index 7"):
            Graph.from_scipy(m)
        m.indices[0] = -2
        with pytest.raises(ValueError, match=rf"from_scipy: the matrix's indices \({fmt}.* holds index -2"):
            Graph.from_scipy(m)


def test_meta_tensors_are_rejected_naming_the_argument():
    meta_index = torch.zeros(2, 3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="edge_index is a meta tensor"):
        Graph.from_edge_index(meta_index)
    with pytest.raises(ValueError, match="edge_index is a meta tensor"):
        Graph.from_edge_index(meta_index, shape=(3, 3))
    with pytest.raises(ValueError, match="values is a meta tensor"):
        Graph.from_edge_index(torch.zeros(2, 3, dtype=torch.long), values=torch.ones(3, device="meta"), num_nodes=3)
    with pytest.raises(ValueError, match="users is a meta tensor"):
        Graph.bipartite(meta_index[0], meta_index[1], 2, 2)
    with pytest.raises(ValueError, match="rowptr is a meta tensor"):
        Graph(torch.zeros(4, dtype=torch.long, device="meta"), torch.zeros(0, dtype=torch.long), shape=(3, 3))
    with pytest.raises(ValueError, match="from_torch: tensor is a meta tensor"):
        Graph.from_torch(_coo([0, 1], [1, 0]).to("meta"))
    with pytest.raises(ValueError, match="knn: x is a meta tensor"):
        mmrec_fast.knn(torch.zeros(5, 3, device="meta"), 2)
    with pytest.raises(ValueError, match="knn_graph: features is a meta tensor"):
        mmrec_fast.knn_graph(torch.zeros(5, 3, device="meta"), 2)
    with pytest.raises(ValueError, match=r"knn_graph: features\[1\] is a meta tensor"):
        mmrec_fast.knn_graph([torch.ones(5, 3), torch.ones(5, 3, device="meta")], 2)


# -- keep_edges: keep some entries and renormalise (FREEDOM's per-epoch pruned graph) ------------------------------
def test_keep_edges_undirected_is_the_bipartite_graph_of_the_kept_pairs():
    users, items = interactions(duplicates=False)
    g = Graph.bipartite(users, items, 30, 20, norm="sym", eps=1e-7, duplicates="collapse")
    user_entries = int(g.rowptr[30])  # the entries of the user rows come first: one per distinct (user, item) pair
    chosen = torch.randperm(user_entries, generator=torch.Generator().manual_seed(0))[: user_entries // 3]
    pruned = g.keep_edges(chosen, norm="sym", eps=1e-7, undirected=True)
    # the kept interactions, from the CSR rows of the user block, rebuilt from scratch with scipy
    rows, cols, _ = g.coo()
    kept_users, kept_items = rows[chosen].numpy(), cols[chosen].numpy() - 30
    a = scipy_bipartite(kept_users, kept_items, 30, 20, binary=True)
    d = scipy_scale(np.asarray(a.sum(1)).ravel(), 0.5, 1e-7)
    assert_same_matrix(pruned, sp.diags(d) @ a @ sp.diags(d))
    assert pruned.nnz == 2 * len(chosen) and pruned.symmetric and pruned.values is None
    # FREEDOM's values: (deg_u + 1e-7)^-1/2 (deg_i + 1e-7)^-1/2 with the degrees of the kept edges only
    deg_u = np.bincount(kept_users, minlength=30)
    deg_i = np.bincount(kept_items, minlength=20)
    r, c, v = pruned.coo()
    upper = r < 30
    expected = (deg_u[r[upper].numpy()] + 1e-7) ** -0.5 * (deg_i[c[upper].numpy() - 30] + 1e-7) ** -0.5
    np.testing.assert_allclose(v[upper].numpy(), expected, rtol=1e-14)
    # naming an edge by its other direction, or by both, keeps the same graph; the source graph is unchanged
    keys = (rows * 50 + cols).tolist()
    mirrors = torch.tensor([keys.index(int(c) * 50 + int(r)) for r, c in zip(rows[chosen], cols[chosen])])
    assert bool((mirrors >= user_entries).all())
    assert_same_matrix(g.keep_edges(mirrors, eps=1e-7, undirected=True), pruned.to_scipy())
    assert_same_matrix(g.keep_edges(torch.cat([chosen, mirrors]), eps=1e-7, undirected=True), pruned.to_scipy())
    assert g.nnz == 2 * user_entries and g.keep_edges(chosen, eps=1e-7).nnz == len(chosen)  # directed: one way only


def test_keep_edges_directed_keeps_exactly_the_named_entries_with_their_values():
    m = sp.random(8, 12, density=0.5, random_state=4, format="csr")
    g = Graph.from_scipy(m, norm="sym", eps=0.0)
    keep = torch.tensor([0, 3, 3, 7, g.nnz - 1])
    for norm, eps in [("sym", 0.0), ("left", 1e-8), ("rw", 0.0), (None, 0.0)]:
        pruned = g.keep_edges(keep, norm=norm, eps=eps)
        w = m.tocoo()
        mask = np.zeros(w.nnz, dtype=bool)
        mask[keep.numpy()] = True  # scipy's csr order is the graph's CSR order (sorted columns within a row)
        kept = sp.csr_matrix((w.data[mask], (w.row[mask], w.col[mask])), shape=m.shape)
        rows, cols = scipy_scale(np.asarray(kept.sum(1)).ravel(), 1.0 if norm == "rw" else 0.5, eps), None
        if norm == "sym":
            cols = scipy_scale(np.asarray(kept.sum(0)).ravel(), 0.5, eps)
        expected = kept if norm is None else sp.diags(rows) @ kept
        if cols is not None:
            expected = expected @ sp.diags(cols)
        assert_same_matrix(pruned, sp.csr_matrix(expected))
        assert pruned.nnz == 4 and pruned.shape == (8, 12)


def test_keep_edges_checks_its_arguments():
    users, items = interactions()
    g = Graph.bipartite(users, items, 30, 20)
    with pytest.raises(ValueError, match=f"index holds index {g.nnz}, outside \\[0, {g.nnz}\\)"):
        g.keep_edges(torch.tensor([0, g.nnz]))
    with pytest.raises(TypeError, match="index must hold integer indices"):
        g.keep_edges(torch.tensor([0.5]))
    directed = Graph.from_scipy(sp.random(6, 6, density=0.5, random_state=1, format="csr"))
    with pytest.raises(ValueError, match="undirected=True\\) needs a symmetric graph"):
        directed.keep_edges(torch.tensor([0]), undirected=True)
    empty = g.keep_edges(torch.empty(0, dtype=torch.int64), undirected=True)
    assert empty.nnz == 0 and empty.shape == g.shape


def test_graph_saves_and_loads_with_weights_only(tmp_path):
    """torch.save / torch.load(weights_only=True) round-trip (code that caches its graph, as FREEDOM's mm_adj,
    needs it): every array, the scalings and the symmetry come back, caches are rebuilt, products agree bitwise;
    a tampered file is rejected by the constructor's checks."""
    graph = Graph.bipartite(torch.tensor([0, 1, 1, 3]), torch.tensor([0, 0, 2, 1]), 4, 3, norm="sym", eps=1e-7)
    weighted = Graph.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]]), values=torch.tensor([0.5, 2.0, 3.0]), shape=(3, 4))
    graph.transpose()  # a cache that must not travel
    path = tmp_path / "graphs.pt"
    torch.save({"graph": graph, "weighted": weighted}, path)
    loaded = torch.load(path, weights_only=True)
    for name, original in (("graph", graph), ("weighted", weighted)):
        copy = loaded[name]
        assert isinstance(copy, Graph) and copy.shape == original.shape and copy.symmetric == original.symmetric
        for field in ("rowptr", "col", "values", "left", "right"):
            a, b = getattr(copy, field), getattr(original, field)
            assert (a is None and b is None) or torch.equal(a, b), field
    x = torch.randn(7, 5, dtype=torch.float64)
    assert torch.equal(mmrec_fast.propagate(loaded["graph"], x, 2), mmrec_fast.propagate(graph, x, 2))
    state = graph.__getstate__()
    state["col"] = state["col"].clone()
    state["col"][0] = 99
    torch.save(state, path)
    tampered = Graph.__new__(Graph)
    with pytest.raises(ValueError, match="col holds index 99"):
        tampered.__setstate__(torch.load(path, weights_only=True))
