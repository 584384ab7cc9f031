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
