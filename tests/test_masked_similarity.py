"""masked_similarity: the reference against the authors' dense form (scores times 1 - R, F.normalize, a Linear), the
native / Triton low-rank form against the reference (values and every gradient, float64 and float32, excluded
pairs repeated or empty, zero rows, the chunked backward), that it holds no (B, K) tensor, and bad input."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import mmrec_fast
from mmrec_fast import Graph, masked_similarity

from conftest import kernel_backends
from parity import assert_matches

masked_similarity_module = importlib.import_module("mmrec_fast.ops.masked_similarity")  # (the package's name is the function)


def problem(B=13, K=40, d=8, H=10, pairs=60, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    rows, cols = torch.randint(0, B, (pairs,), generator=generator), torch.randint(0, K, (pairs,), generator=generator)
    exclude = Graph.from_edge_index(torch.stack([rows, cols]), shape=(B, K), duplicates="collapse")
    return make(B, d), make(K, d), exclude, make(H, K), make(H)


def authors_form(queries, keys, exclude, weight=None, bias=None):
    """u_sim_calculation: scores times (1 - R[users]) from a dense 0/1 matrix, F.normalize; then a Linear."""
    mask = torch.zeros(queries.shape[0], keys.shape[0], dtype=queries.dtype)
    if exclude is not None:
        row, col, _ = exclude.coo()
        mask[row, col] = 1
    rows = F.normalize(torch.mm(queries, keys.T) * (1 - mask), p=2, dim=1)
    return rows if weight is None else F.linear(rows, weight, bias)


def test_the_reference_is_the_authors_form():
    queries, keys, exclude, weight, bias = problem()
    for args in ((exclude,), (exclude, weight, bias), (exclude, weight), (None, weight, bias)):
        got = masked_similarity(queries, keys, *args, backend="reference")
        torch.testing.assert_close(got, authors_form(queries, keys, *args), rtol=1e-14, atol=1e-15)
    rows = masked_similarity(queries, keys, exclude, backend="reference")
    row, col, _ = exclude.coo()
    assert (rows[row, col] == 0).all() and torch.allclose(rows.norm(dim=1), torch.ones(13, dtype=torch.float64))


def _compare(backend, queries, keys, exclude, weight, bias, dtype, transposed=False):
    inputs = [queries, keys, weight] + ([bias] if bias is not None else [])
    if transposed:  # a weight stored as its transpose (K, H), as MMSSL's discriminator keeps W_1
        weight_t = weight.detach().T.contiguous().requires_grad_()
        inputs[2], weight = weight_t, weight_t.T
    results = {}
    for name in ("reference", backend):
        out = masked_similarity(queries, keys, exclude, weight, bias, backend=name)
        cotangent = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(out.dtype)
        results[name] = (out, torch.autograd.grad((out * cotangent).sum(), inputs))
    (gold, gold_grads), (got, got_grads) = results["reference"], results[backend]
    reduction = keys.shape[0] * queries.shape[1]
    assert_matches(got, gold.double(), dtype, reduction, "values")
    for name, g, w in zip(("queries", "keys", "weight", "bias"), got_grads, gold_grads):
        assert_matches(g, w.double(), dtype, reduction, name)


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_rank_form_matches_reference(backend, dtype):
    queries, keys, exclude, weight, bias = problem(dtype=dtype)
    _compare(backend, queries, keys, exclude, weight, bias, dtype)
    _compare(backend, queries, keys, exclude, weight, None, dtype, transposed=True)
    _compare(backend, queries, keys, None, weight, bias, dtype)
    empty = Graph.from_edge_index(torch.zeros(2, 0, dtype=torch.int64), shape=exclude.shape)
    _compare(backend, queries, keys, empty, weight, bias, dtype)


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
def test_zero_rows_repeated_queries_and_chunks(backend, monkeypatch):
    monkeypatch.setattr(masked_similarity_module, "CHUNK_ELEMENTS", 7)  # many chunks of the sampled products
    queries, keys, _, weight, bias = problem(B=6)
    with torch.no_grad():
        queries[0] = 0  # a zero query: zero row, norm 0
        queries[3] = queries[2]  # a user twice, with the same excluded items (a batch row per appearance)
    pairs = [(1, j) for j in range(40) if j != 5] + [(2, 3), (2, 9), (3, 3), (3, 9), (4, 0)]  # row 1: one item left
    exclude = Graph.from_edge_index(torch.tensor(pairs).T, shape=(6, 40))
    _compare(backend, queries, keys, exclude, weight, bias, torch.float64)
    rows = masked_similarity(queries, keys, exclude, backend="reference")
    assert (rows[0] == 0).all() and rows[1, 5].abs() == 1
    out = masked_similarity(queries, keys, exclude, weight, bias, backend=backend)
    torch.testing.assert_close(out[0], bias, rtol=0, atol=0)  # a zero row gives the bias exactly
    torch.testing.assert_close(out[2], out[3], rtol=0, atol=0)


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
def test_no_batch_by_keys_tensor_on_the_low_rank_path(backend):
    """At B = 256, K = 20,000, H = 32 a (B, K) float32 tensor is 20 MiB; the low-rank path's largest are (K, H) and
    (K, d) float64 (2.4 MiB)."""
    from torch.profiler import ProfilerActivity, profile

    B, K, d, H = 256, 20_000, 16, 32
    queries, keys, _, weight, bias = problem(B=B, K=K, d=d, H=H, pairs=1, dtype=torch.float32)
    rows, cols = torch.arange(B).repeat_interleave(30), torch.randint(0, K, (30 * B,))
    exclude = Graph.from_edge_index(torch.stack([rows, cols]), shape=(B, K), duplicates="collapse")

    def largest(name):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = masked_similarity(queries, keys, exclude, weight, bias, backend=name)
            out.sum().backward()
        return max(e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")

    assert largest(backend) <= K * max(H * 4, d * 8) * 1.01 < B * K * 4 / 4
    assert largest("reference") >= B * K * 4  # the probe sees the reference's (B, K) scores


def test_bad_input():
    queries, keys, exclude, weight, bias = problem()
    with pytest.raises(ValueError, match="queries have d=8 but keys have d=3"):
        masked_similarity(queries, keys[:, :3], exclude)
    with pytest.raises(ValueError, match=r"exclude has shape \(13, 41\), expected \(B, K\) = \(13, 40\)"):
        masked_similarity(queries, keys, Graph.from_edge_index([[0], [0]], shape=(13, 41)))
    with pytest.raises(TypeError, match="exclude must be a mmrec_fast.Graph or None"):
        masked_similarity(queries, keys, exclude.to_torch())
    with pytest.raises(ValueError, match="weight has 39 columns but there are 40 keys"):
        masked_similarity(queries, keys, exclude, weight[:, :39])
    with pytest.raises(ValueError, match="a bias needs a weight"):
        masked_similarity(queries, keys, exclude, None, bias)
    with pytest.raises(ValueError, match=r"bias must have shape \(10,\)"):
        masked_similarity(queries, keys, exclude, weight, bias[:3])
    with pytest.raises(ValueError, match="must share dtype and device"):
        masked_similarity(queries, keys.float(), exclude)
    with pytest.raises(ValueError, match="weight .* must have the queries' dtype"):
        masked_similarity(queries, keys, exclude, weight.float())
    with pytest.raises(ValueError, match="2-D"):
        masked_similarity(queries[0], keys, exclude)
    with pytest.raises(mmrec_fast.backends.BackendUnavailable, match="native masked_similarity on cpu takes float32, float64"):
        masked_similarity(queries.half(), keys.half(), exclude, backend="native")
