"""Reference masked top-k scoring: the specification of ``topk_scores``.

Scores every query against every key (Q x K, materialised: this is the specification, not the fast path), sets
excluded pairs to -inf, and sorts each row by descending score with a stable sort, so ties go to the lower key
index. Slots beyond the candidates a row has left get index -1 and value -inf.
"""

from __future__ import annotations

import torch

from ..backends import accumulation_dtype
from ..graph import Graph


def topk_scores(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: Graph | None = None):
    """queries: (Q, d); keys: (K, d); exclude: (Q, K) Graph of pairs to leave out, or None.

    Returns (values (Q, k) in the accumulation dtype (float64 for float64 inputs, else float32),
    indices (Q, k) int64)."""
    acc = accumulation_dtype(queries.dtype)
    return rank_scores(queries.to(acc) @ keys.to(acc).T, k, exclude)


def rank_scores(scores: torch.Tensor, k: int, exclude: Graph | None = None):
    """The ranking rule of every top-k in mmrec_fast, written once: scores (Q, K) (overwritten where excluded) ->
    (values (Q, k), indices (Q, k) int64): excluded pairs get -inf, each row is sorted by descending score with
    ties to the lower index (a stable sort), and an index whose value is -inf (fewer than k keys left) is -1."""
    if exclude is not None:
        row, col, _ = exclude.to(scores.device).coo()
        scores[row, col] = float("-inf")
    values, indices = torch.sort(scores, dim=1, descending=True, stable=True)
    values, indices = values[:, :k], indices[:, :k]
    return values, indices.masked_fill(values == float("-inf"), -1)
