"""Reference masked similarity rows: the specification of ``masked_similarity``, in plain PyTorch.

Short and obviously right: the (B, K) score matrix of the queries against every key, the excluded pairs set to
zero, every row L2-normalised as ``F.normalize`` does, then optionally a linear layer. Any dtype, any device,
autograd through plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..graph import Graph


def masked_similarity(queries: torch.Tensor, keys: torch.Tensor, exclude: Graph | None = None,
                      weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """queries: (B, d); keys: (K, d); exclude: (B, K) Graph of the pairs set to zero (values ignored) or None;
    weight: (H, K) or None; bias: (H,) or None.

    Returns r (B, K), r_b = m_b / max(|m_b|, 1e-12) with m_bj = q_b . k_j, or 0 where (b, j) is excluded; with a
    weight, r @ weight^T + bias (B, H)."""
    scores = queries @ keys.T
    if exclude is not None and exclude.nnz:
        row, col, _ = exclude.coo()
        scores = scores.index_put((row, col), scores.new_zeros(()))
    rows = F.normalize(scores, dim=1)
    if weight is None:
        return rows
    return F.linear(rows, weight, bias)
