"""topk_scores microbenchmark (the masked top-k of full-ranking evaluation), float32, against its baselines in
the same run.

19,445 users x 7,050 items (Baby's interactions; synthetic 64-d embeddings), k = 50, the real Baby training items
excluded. Baselines: MMRec's evaluation, torch matmul + ``scores[train] = -1e10`` + topk, over the whole U x I
matrix and in MMRec's batches of 4,096 users. Peak memory: each implementation also runs once in a fresh
subprocess (benchmarks/peak_memory.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmrec_fast  # noqa: E402
from mmrec_fast import Graph  # noqa: E402

from conftest import DEVICE, baby_train_interactions, benchmarked_backends, synchronize  # noqa: E402
from peak_memory import PEAK_KEY, peak_memory_mb, report_peak  # noqa: E402

TOPK_K, TOPK_DIM = 50, 64
MMREC_EVAL_BATCH = 4096
_baby: dict = {}


def baby_scoring_inputs():
    """(user embeddings (U, 64), item embeddings (I, 64), train Graph (U, I), train (rows, cols) int64)."""
    if not _baby:
        users, items, num_users, num_items = baby_train_interactions()
        g = torch.Generator().manual_seed(1)
        _baby["users"] = torch.randn(num_users, TOPK_DIM, generator=g).to(DEVICE)
        _baby["items"] = torch.randn(num_items, TOPK_DIM, generator=g).to(DEVICE)
        _baby["train"] = Graph.from_edge_index(np.stack([users, items]), shape=(num_users, num_items)).to(DEVICE)
        row, col, _ = _baby["train"].coo()
        _baby["pairs"] = (row, col)
    return _baby["users"], _baby["items"], _baby["train"], _baby["pairs"]


def torch_score_mask_topk(users, items, pairs, k, batch=None):
    """MMRec's evaluation: scores = u @ i^T, scores[train] = -1e10, topk (all users at once, or in batches)."""
    row, col = pairs
    if batch is None:
        scores = users @ items.T
        scores[row, col] = -1e10
        return torch.topk(scores, k, dim=-1)
    values, indices = [], []
    bounds = torch.searchsorted(row, torch.arange(0, users.shape[0] + batch, batch, device=row.device))
    for b, start in enumerate(range(0, users.shape[0], batch)):
        scores = users[start : start + batch] @ items.T
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        scores[row[lo:hi] - start, col[lo:hi]] = -1e10
        v, i = torch.topk(scores, k, dim=-1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def topk_implementation(name: str):
    if name == "torch matmul+mask+topk (all users)":
        return lambda u, i, g, p: torch_score_mask_topk(u, i, p, TOPK_K)
    if name == "torch matmul+mask+topk (MMRec batches of 4096)":
        return lambda u, i, g, p: torch_score_mask_topk(u, i, p, TOPK_K, MMREC_EVAL_BATCH)
    backend = name.split()[-1]
    if backend not in benchmarked_backends("topk_scores"):
        pytest.skip(f"{name} is not benchmarked on {DEVICE} here (not implemented or built there, or the Triton interpreter)")
    return lambda u, i, g, p: mmrec_fast.topk_scores(u, i, TOPK_K, exclude=g, backend=backend)


def _peak_rss_main(impl: str) -> None:
    inputs = baby_scoring_inputs()
    fn = topk_implementation(impl)
    report_peak(lambda: fn(*inputs))


TOPK_IMPLS = [
    "mmrec_fast native",
    "mmrec_fast triton",
    "torch matmul+mask+topk (all users)",
    "torch matmul+mask+topk (MMRec batches of 4096)",
]


@pytest.mark.parametrize("impl", TOPK_IMPLS)
def test_topk_scores(benchmark, impl):
    fn = topk_implementation(impl)
    users, items, train, pairs = baby_scoring_inputs()
    benchmark.group = (
        f"topk_scores top-{TOPK_K}, Baby {users.shape[0]:,} users x {items.shape[0]:,} items, d={TOPK_DIM}, "
        f"{train.nnz:,} training pairs excluded, float32, {DEVICE}"
    )
    benchmark.extra_info[PEAK_KEY] = peak_memory_mb(__file__, impl)

    def run():
        out = fn(users, items, train, pairs)
        synchronize()
        return out

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--peak-rss":
    _peak_rss_main(sys.argv[2])
