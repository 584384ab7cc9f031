"""Triton path of ``knn``: the masked top-k kernel of kernels/topk_scores.py with queries = keys.

It fuses nothing of its own: the rows come normalised (ops/knn.py, ``normalize_rows``), every N^2 score is
computed (no symmetric half-GEMM as in the native CPU kernel, csrc/cpu/knn.cpp), and ``exclude_self`` masks the
diagonal inside the tile, so no N x N matrix is formed.
"""

from __future__ import annotations

import torch

from .topk_scores import topk_scores


def knn(x_hat: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x_hat: (n, d) float32, rows L2-normalised (zero rows stay zero), contiguous -> (values (n, k) float32
    cosines, descending; indices (n, k) int64, ties to the lower index)."""
    return topk_scores(x_hat, x_hat, k, None, None, exclude_self)
