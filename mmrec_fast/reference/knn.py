"""Reference exact cosine kNN: the specification of ``knn``.

Normalises the rows (x / ||x||, as MMRec's FREEDOM/MENTOR/LATTICE do, except that a zero row stays zero instead of
becoming NaN), forms the full N x N cosine matrix (materialised: this is the specification, not the fast path) and
sorts each row by descending similarity with a stable sort, so ties go to the lower index.
"""

from __future__ import annotations

import torch

from ..backends import accumulation_dtype


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """x: (n, d) floating -> (n, 1) L2 norms of the rows, in the accumulation dtype: the divisors of normalize_rows
    (the native knn divides by them while it packs the rows)."""
    return torch.norm(x.to(accumulation_dtype(x.dtype)), p=2, dim=-1, keepdim=True)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """x: (n, d) floating -> (n, d) rows divided by their L2 norm, in the accumulation dtype; zero rows stay zero.

    The same expression as the references (``x.div(torch.norm(x, p=2, dim=-1, keepdim=True))``) on every row with
    a nonzero norm. Every backend of ``knn`` selects among the products of these rows."""
    x = x.to(accumulation_dtype(x.dtype))
    norm = row_norms(x)
    return torch.where(norm > 0, x.div(norm), torch.zeros_like(x))


def knn(x: torch.Tensor, k: int, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, d) floating; 0 <= k <= n (n - 1 with exclude_self).

    Returns (values (n, k) cosine similarities in the accumulation dtype, descending; indices (n, k) int64, ties to
    the lower index)."""
    x_hat = normalize_rows(x)
    scores = x_hat @ x_hat.T
    if exclude_self:
        scores.fill_diagonal_(float("-inf"))
    values, indices = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]
