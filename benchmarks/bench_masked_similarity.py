"""masked_similarity microbenchmark at MMSSL's TikTok sizes, float32, forward + backward, against the authors' dense
form in the same run, with peak extra tensor memory (MB).

The discriminator's first layer on the masked, row-normalised user-item similarities: B = 1,024 batch users
against K = 6,710 items (TikTok), d = 64, H = 1,677 (= K / 4), each user's training items excluded (the synthetic
TikTok-sized interactions). Implementations:
  * the authors' dense form (MMSSL ``u_sim_calculation`` and ``D``'s first ``Linear``): scores = q K^T, times
    1 - R[users] from a dense copy of the users' interaction rows, F.normalize, F.linear;
  * the reference backend (the dense (B, K) scores with the excluded pairs zeroed from the CSR, no dense R copy);
  * mmrec_fast native: the low-rank form, no (B, K) tensor forward or backward (ops/masked_similarity.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmrec_fast
from mmrec_fast.data import synthetic

from conftest import DEVICE, benchmarked_backends, peak_tensor_memory, synchronize

BATCH, DIM = 1024, 64
_inputs: dict = {}


def inputs():
    """(queries (B, d), keys (K, d), weight (H, K), bias (H,), exclude Graph (B, K), dense 0/1 rows (B, K))."""
    if not _inputs:
        data = synthetic("tiktok-like", feature_dims={}, seed=0)
        num_items = data.num_items
        g = torch.Generator().manual_seed(0)
        users = torch.randperm(data.num_users, generator=g)[:BATCH]
        train = data.train_matrix  # (U, I)
        rows = torch.zeros(data.num_users, dtype=torch.bool)
        rows[users] = True
        position = torch.full((data.num_users,), -1, dtype=torch.int64)
        position[users] = torch.arange(BATCH)
        row, col, _ = train.coo()
        keep = rows[row]
        pairs = torch.stack([position[row[keep]], col[keep]])
        exclude = mmrec_fast.Graph.from_edge_index(pairs, shape=(BATCH, num_items))
        dense = torch.zeros(BATCH, num_items)
        dense[pairs[0], pairs[1]] = 1.0
        hidden = num_items // 4
        _inputs.update(
            queries=torch.randn(BATCH, DIM, generator=g), keys=torch.randn(num_items, DIM, generator=g),
            weight=torch.randn(hidden, num_items, generator=g) * num_items**-0.5, bias=torch.zeros(hidden),
            exclude=exclude, dense=dense,
        )  # fmt: skip
        for name in ("queries", "keys", "weight", "bias", "dense"):
            _inputs[name] = _inputs[name].to(DEVICE)
        _inputs["exclude"] = exclude.to(DEVICE)
    return _inputs


def authors_dense(q, k, w, b, exclude, dense):
    scores = (q @ k.T) * (1 - dense)
    return F.linear(F.normalize(scores, p=2, dim=1), w, b)


def implementation(name: str):
    if name == "authors' dense form (1 - R[users])":
        return authors_dense
    backend = "reference" if name.startswith("reference") else name.split()[-1]
    if backend != "reference" and backend not in benchmarked_backends("masked_similarity"):
        pytest.skip(f"{name} does not run on {DEVICE} here")
    return lambda q, k, w, b, exclude, dense: mmrec_fast.masked_similarity(q, k, exclude, w, b, backend=backend)


IMPLS = ["mmrec_fast native", "reference backend (dense, masked from the CSR)", "authors' dense form (1 - R[users])"]


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, impl):
    fn = implementation(impl)
    x = inputs()
    q, k, w, b = (x[name].clone().requires_grad_() for name in ("queries", "keys", "weight", "bias"))
    benchmark.group = (f"masked_similarity + linear forward+backward, MMSSL TikTok sizes: B={BATCH}, K={k.shape[0]:,}, "
                       f"d={DIM}, H={w.shape[0]:,}, {x['exclude'].nnz:,} pairs excluded, float32, {DEVICE}")  # fmt: skip

    def run():
        fn(q, k, w, b, x["exclude"], x["dense"]).square().sum().backward()
        synchronize()
        q.grad = k.grad = w.grad = b.grad = None

    run()
    start, peak = peak_tensor_memory(run)
    benchmark.extra_info["peak_extra_mb"] = (peak - start) / 2**20
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
