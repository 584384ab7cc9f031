"""masked_similarity: the L2-normalised rows of a masked similarity matrix, optionally through a linear layer, without
the (B, K) matrix on the fast backends when a layer follows.

    m_bj = q_b . k_j, or 0 where (b, j) is excluded        (B, K)
    r_b  = m_b / max(|m_b|, 1e-12)                           (F.normalize)
    masked_similarity(q, k, exclude)                 -> r                      (B, K)
    masked_similarity(q, k, exclude, weight, bias)   -> r @ weight^T + bias    (B, H)

This is MMSSL's ``u_sim_calculation`` (``MMSSL/main.py`` L283-298: the batch users' scores against every item,
times ``1 - R[users]`` from a dense copy of the interaction rows, row-normalised) and, with a weight, the first
layer of its discriminator applied to those rows, which is all the discriminator reads of them.

Backends:

* ``reference`` (mmrec_fast/reference/masked_similarity.py): the dense (B, K) scores, the excluded pairs zeroed,
  ``F.normalize``, then ``F.linear``.
* ``native`` (and ``triton``, which runs the same code: the work is dense GEMMs, which torch's BLAS / cuBLAS do
  best, and O(nnz H) gathers): with a weight W (H, K), the low-rank form. m_b = q_b K^T - e_b, where e_b holds the
  scores s_bj = q_b . k_j of the excluded pairs only, so

      m_b W^T  = q_b (W K)^T - sum_{(b, j) excluded} s_bj W_:j         B d H + H K d + nnz H
      |m_b|^2  = q_b (K^T K) q_b^T - sum_{(b, j) excluded} s_bj^2       in float64 (for float32 inputs too)

  instead of the B K (d + H) of the dense form: at MMSSL's sizes (B = 2048, K = 6,710, H = 1,677, d = 64) 25 times
  fewer operations, and no (B, K) tensor forward or backward. Autograd runs through these products (no saved
  (B, K) activations). Without a weight the (B, K) rows are the result, computed as the reference computes them.
  The float64 norms keep the subtraction exact where the excluded scores carry most of a row's norm; a row whose
  masked scores are all zero has norm 0 on every backend (and the reference's F.normalize gives it zeros).

Gradients flow to queries, keys, weight and bias (first order; the result is not differentiated twice).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import backends, reference
from ..graph import Graph
from .propagate import spmm

SUPPORT = backends.OpSupport(
    "masked_similarity",
    dtypes={
        ("reference", "cpu"): backends.FLOAT_DTYPES,
        ("reference", "cuda"): backends.FLOAT_DTYPES,
        ("native", "cpu"): (torch.float32, torch.float64),
        ("native", "cuda"): (torch.float32, torch.float64),
        ("triton", "cpu"): (torch.float32, torch.float64),
        ("triton", "cuda"): (torch.float32, torch.float64),
    },
    preference={"cpu": ("native", "reference"), "cuda": ("native", "triton", "reference")},
)


def _check(queries, keys, exclude, weight, bias) -> None:
    backends.check_float_matrix("masked_similarity", "queries", queries, "(B, d)")
    backends.check_float_matrix("masked_similarity", "keys", keys, "(K, d)")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"masked_similarity: queries have d={queries.shape[1]} but keys have d={keys.shape[1]}")
    if queries.dtype != keys.dtype or queries.device != keys.device:
        raise ValueError(f"masked_similarity: queries ({queries.dtype}, {queries.device}) and keys ({keys.dtype}, "
                         f"{keys.device}) must share dtype and device")  # fmt: skip
    shape = (queries.shape[0], keys.shape[0])
    if exclude is not None:
        if not isinstance(exclude, Graph):
            raise TypeError(f"masked_similarity: exclude must be a mmrec_fast.Graph or None, got {type(exclude).__name__}")
        if exclude.shape != shape:
            raise ValueError(f"masked_similarity: exclude has shape {exclude.shape}, expected (B, K) = {shape}")
        if exclude.device != queries.device:
            raise ValueError(f"masked_similarity: exclude is on {exclude.device} but queries are on {queries.device}")
    if weight is None:
        if bias is not None:
            raise ValueError("masked_similarity: a bias needs a weight")
        return
    backends.check_float_matrix("masked_similarity", "weight", weight, "(H, K)")
    if weight.shape[1] != keys.shape[0]:
        raise ValueError(f"masked_similarity: weight has {weight.shape[1]} columns but there are {keys.shape[0]} keys")
    if weight.dtype != queries.dtype or weight.device != queries.device:
        raise ValueError(f"masked_similarity: weight ({weight.dtype}, {weight.device}) must have the queries' dtype and "
                         f"device ({queries.dtype}, {queries.device})")  # fmt: skip
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"masked_similarity: bias must have shape ({weight.shape[0]},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")  # fmt: skip
        if bias.dtype != queries.dtype or bias.device != queries.device:
            raise ValueError("masked_similarity: bias must have the queries' dtype and device")


def masked_similarity(
    queries: torch.Tensor,
    keys: torch.Tensor,
    exclude: Optional[Graph] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Rows of L2-normalised similarities with the excluded pairs zeroed, or those rows through a linear layer.

    Args:
        queries: (B, d) float16 / bfloat16 / float32 / float64 (native: float32 / float64), e.g. a batch's users.
        keys: (K, d), same dtype and device, e.g. every item.
        exclude: (B, K) :class:`~mmrec_fast.Graph` whose stored pairs are set to zero before the normalisation
            (values ignored; e.g. the batch users' training items), or None.
        weight: (H, K) or None; bias: (H,) or None (only with a weight).
        backend: "reference" | "native" | "triton" | None (see the module docstring).

    Returns:
        (B, K) rows r (no weight), or (B, H) = r @ weight^T + bias, in the queries' dtype.
    """
    _check(queries, keys, exclude, weight, bias)
    chosen = backends.resolve(SUPPORT, queries, backend)
    if chosen == "reference" or weight is None:
        return reference.masked_similarity(queries, keys, exclude, weight, bias)
    return _low_rank(queries, keys, exclude, weight, bias, chosen)


def _low_rank(queries, keys, exclude, weight, bias, backend) -> torch.Tensor:
    """r @ weight^T + bias without the (B, K) matrix (see the module docstring)."""
    wide = torch.float64
    q64, k64 = queries.to(wide), keys.to(wide)
    full = ((q64 @ (k64.T @ k64)) * q64).sum(1)  # (B,) |q_b K^T|^2
    out = queries @ (weight @ keys).T  # (B, H) q_b (W K)^T
    if exclude is not None and exclude.nnz:
        row, col = exclude.row_index(), exclude.col.to(torch.int64)
        known = (q64.index_select(0, row) * k64.index_select(0, col)).sum(1)  # (nnz,) the excluded scores
        full = full - torch.zeros_like(full).index_add(0, row, known.square())
        out = out - _ExcludedColumns.apply(known.to(queries.dtype), weight.T, exclude, backend)
    positive = full > 0
    norm = torch.where(positive, torch.where(positive, full, torch.ones_like(full)).sqrt(), torch.zeros_like(full))
    out = out * (1.0 / norm.clamp_min(1e-12)).to(queries.dtype).unsqueeze(1)
    return out if bias is None else out + bias


#: entries per chunk of the sampled products in :class:`_ExcludedColumns`' backward (chunk x H elements at a time)
CHUNK_ELEMENTS = 1 << 22


class _ExcludedColumns(torch.autograd.Function):
    """c_b = sum_{(b, j) excluded} s_bj W_:j, (B, H), from s (nnz,) and W^T (K, H): the sparse-dense product S W^T
    of the excluded pairs with their scores as values, by :func:`mmrec_fast.spmm` (the values carry gradients,
    which a Graph's do not, hence this function). The backward: W^T's gradient S^T grad by spmm again, the
    values' the sampled products grad_b . W_:j, in chunks of entries (no (nnz, H) tensor: nnz is the batch's
    training pairs, 300k for 1,024 interactions of TikTok, whose heavy users come often)."""

    @staticmethod
    def forward(ctx, known, weight_t, exclude, backend):
        weight_t = weight_t.contiguous()
        graph = Graph(exclude.rowptr, exclude.col, known.detach(), shape=exclude.shape)
        ctx.save_for_backward(known, weight_t)
        ctx.graph, ctx.backend = graph, backend
        return spmm(graph, weight_t, backend=backend)

    @staticmethod
    def backward(ctx, grad):
        known, weight_t = ctx.saved_tensors
        grad = grad.contiguous()
        grad_known = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = spmm(ctx.graph.transpose(), grad, backend=ctx.backend)
        if ctx.needs_input_grad[0]:
            row, col = ctx.graph.row_index(), ctx.graph.col.to(torch.int64)
            grad_known = torch.empty_like(known)
            step = max(1, CHUNK_ELEMENTS // max(weight_t.shape[1], 1))
            for start in range(0, row.numel(), step):
                part = slice(start, start + step)
                grad_known[part] = (grad.index_select(0, row[part]) * weight_t.index_select(0, col[part])).sum(1)
        return grad_known, grad_weight, None, None
