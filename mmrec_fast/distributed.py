"""More than one process: InfoNCE over gathered negatives, the kNN graph and evaluation sharded by rows.

Every function here takes ``group`` (a ``torch.distributed`` process group; None: the default group) and runs on
any backend torch.distributed has (NCCL on GPUs, gloo on CPUs); the communication is torch.distributed's own
collectives. Each rank passes its own rows; the shards may be uneven, and a rank may hold none. Results equal the
single-process op on the concatenated rows (rank 0's rows first):

* :func:`info_nce`: the local rows of ``a`` against the rows of ``b`` of every rank (and, with
  ``intra_view_negatives``, of ``a``), gathered with their gradients flowing back to their owners (OpenCLIP's
  scheme: each rank computes its (n_r, B) block of logits, never the (B, B) matrix, and here not even its own block:
  the log-sum-exp runs over column tiles).
* :func:`knn` / :func:`knn_graph`: each rank ranks its rows against all rows. The rows are replicated (gathered
  once, or already present: every rank of a multimodal model loads the item features): a ring that passes shards
  around would hold 1 / world of them but take world rounds of communication, and the features, not the
  neighbours, are the small part (n d against the n^2 d work). Selection is the one of :func:`mmrec_fast.knn`,
  bitwise: the rows are normalised by the same rule and scored by the same tile GEMM.
* :func:`evaluate`: users ranked in batches, batch b on rank b % world, the per-batch metric sums gathered and added
  in batch order: the same floats as :func:`mmrec_fast.evaluate.evaluate`, to the last bit.

Memory per rank (float32, B rows in all, n_r local, d features): the gathered InfoNCE holds the gathered columns
(B, d) per gathered view (``b``; ``a`` too with ``symmetric`` or ``intra_view_negatives``), their gradient of the same
size in the backward, and one (n_r, c) logit tile of :data:`TILE_BYTES` (1 MiB; c = TILE_BYTES / (4 n_r) columns,
at least one): 4 (2 V B d) + TILE_BYTES bytes with V the views gathered. The sharded kNN graph holds the
replicated features, n d, one score tile per thread in the kernel, and the gathered neighbours, 2 n k per modality
(values float32 + indices int64: 12 n k bytes).

Communication per call, from the shapes: info_nce all-gathers V (B, d) views (each rank receives (B - n_r) d
values per view) and its backward all-reduces the V (B, d) gradients (a ring all-reduce sends and receives
2 (world - 1) / world B d values per view); knn_graph all-gathers (n, k) values and indices per modality;
evaluate gathers a few floats per batch.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import backends
from .backends import accumulation_dtype
from .graph import Graph
from .ops import topk_scores
from .ops.info_nce import REDUCTIONS, _check as _check_info_nce
from .ops.knn import _check_features, _check_k, check_knn_graph_args, graph_from_neighbours
from .reference.knn import normalize_rows

#: The size of the gathered InfoNCE's (n_r, c) logit tile: c = TILE_BYTES / (n_r x the accumulation dtype's size)
#: columns, at least one. A tile that stays in the L2 cache through its passes (product, max, exp, sum; the
#: backward's exp and two products): at B 8,192, d 64 on one Xeon core, 1 MiB tiles (32 columns) ran forward +
#: backward in 0.44 s, 8 MiB (256) in 0.54 s, 64 MiB (2,048) in 1.13 s.
TILE_BYTES = 1 << 20


def _tile_columns(q: torch.Tensor) -> int:
    return max(1, TILE_BYTES // (max(q.shape[0], 1) * q.element_size()))


def world(group=None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def shard(n: int, group=None) -> slice:
    """The rows [n r / W, n (r + 1) / W) of this rank (r of W): the contiguous shard every function here and the
    data-parallel trainer use, rank 0's rows first."""
    rank, size = world(group)
    return slice(n * rank // size, n * (rank + 1) // size)


def _shard_counts(n: int, group) -> list[int]:
    """Every rank's number of rows under :func:`shard` (known to every rank without communication)."""
    _, size = world(group)
    return [n * (r + 1) // size - n * r // size for r in range(size)]


def _own_rows(counts: list[int], group) -> slice:
    """This rank's rows in the rank-ordered concatenation of shards of ``counts`` rows."""
    rank, _ = world(group)
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def _row_counts(n_local: int, device, group) -> list[int]:
    _, size = world(group)
    if size == 1:
        return [n_local]
    counts = torch.tensor([n_local], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(counts) for _ in range(size)]
    dist.all_gather(gathered, counts, group=group)
    return [int(c) for c in gathered]


def _all_gather_rows(x: torch.Tensor, counts: list[int], group) -> torch.Tensor:
    """(n_r, ...) on each rank -> (sum n_r, ...) on every rank, rank order; shards padded to the largest one for
    the collective (all_gather takes equal sizes)."""
    if len(counts) == 1:
        return x
    padded = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


class _GatherRows(torch.autograd.Function):
    """All-gather of rows with the gradient flowing back to their owner: the backward all-reduces (sums) the
    gradients of the gathered rows that every rank computed and keeps its own rows'."""

    @staticmethod
    def forward(ctx, x, counts, group):
        ctx.counts, ctx.group = counts, group
        return _all_gather_rows(x, counts, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        if len(ctx.counts) > 1:
            dist.all_reduce(grad, group=ctx.group)
        return grad[_own_rows(ctx.counts, ctx.group)], None, None


class _RowLogSumExp(torch.autograd.Function):
    """log sum_j exp(q_i . k_j) over the rows of one or more key matrices, one column tile at a time: the (n, B)
    logits are never held; the backward recomputes each tile (p = exp(s - lse) g, dq += p k, dk = p^T q).

    q: (n, d); keys: (B_m, d) each; excluded: per key matrix, the column excluded from row i (offset + i, the
    anchor itself among its own view's rows) as an int offset, or None."""

    @staticmethod
    def forward(ctx, q, excluded, *keys):
        ctx.excluded = excluded
        lse = torch.full((q.shape[0],), -math.inf, dtype=q.dtype, device=q.device)
        columns = _tile_columns(q)
        for key, offset in zip(keys, excluded):
            for start in range(0, key.shape[0], columns):
                tile = _masked_tile(q, key, start, columns, offset)
                lse = torch.logaddexp(lse, torch.logsumexp(tile, dim=1))
        ctx.save_for_backward(q, lse, *keys)
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        q, lse, *keys = ctx.saved_tensors
        grad_q = torch.zeros_like(q)
        grad_keys = []
        columns = _tile_columns(q)
        for key, offset in zip(keys, ctx.excluded):
            grad_key = torch.empty_like(key)
            for start in range(0, key.shape[0], columns):
                p = torch.exp(_masked_tile(q, key, start, columns, offset) - lse[:, None]) * grad_lse[:, None]
                grad_q.addmm_(p, key[start : start + columns])
                grad_key[start : start + columns] = p.T @ q
            grad_keys.append(grad_key)
        return (grad_q, None, *grad_keys)


def _masked_tile(q: torch.Tensor, key: torch.Tensor, start: int, columns: int, offset: Optional[int]) -> torch.Tensor:
    """The logits q @ key[start : start + columns].T, with column offset + i set to -inf in row i."""
    tile = q @ key[start : start + columns].T
    if offset is not None:
        rows = torch.arange(q.shape[0], device=q.device)
        column = rows + offset - start
        inside = (column >= 0) & (column < tile.shape[1])
        tile[rows[inside], column[inside]] = -math.inf
    return tile


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 0.2,
    *,
    normalize: bool = True,
    symmetric: bool = False,
    intra_view_negatives: bool = False,
    reduction: str = "mean",
    group=None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """:func:`mmrec_fast.info_nce` over the rows of every rank: this rank's rows of ``a`` are the anchors, the rows
    of ``b`` of every rank the candidates (and of ``a`` too, with ``intra_view_negatives``).

    Args:
        a, b: (n_r, d) this rank's rows (n_r may differ between ranks and may be 0; B = sum_r n_r >= 1).
        temperature, normalize, symmetric, intra_view_negatives: as in :func:`mmrec_fast.info_nce`.
        reduction: "sum": the sum of this rank's row losses, so that the sum over ranks of the returned values is
            the single-process loss of the concatenated batch, and each rank's input gradients (after every rank's
            backward) are its rows of the single-process gradient. "mean": the same divided by the global B (the
            sum over ranks is the single-process mean). "none": this rank's (n_r,) row losses.
            Under DistributedDataParallel, which averages the parameter gradients over ranks, multiply the returned
            loss by the world size (the data-parallel trainer does) to train as one process on the global batch.
        group: the process group (None: the default one; torch.distributed not initialised: one process).
        backend: None: the column-tiled path (plain torch GEMMs tile by tile, memory O(B d) + TILE_BYTES), or
            "reference": the materialised (n_r, B) logits. There is no fused kernel for a rectangular block yet
            (the native and Triton kernels take the square (B, B) problem); asking for one is an error.

    Returns:
        0-dim (or (n_r,)) in a's dtype.
    """
    if backend not in (None, "reference"):
        raise backends.BackendUnavailable(
            f"distributed.info_nce: backend {backend!r} has no kernel for a rank's (n_r, B) block of logits; "
            "use backend=None (column tiles) or 'reference'"
        )
    counts = _row_counts(a.shape[0], a.device, group)
    total = sum(counts)
    if total == 0:
        raise ValueError("distributed.info_nce: the batch is empty on every rank; InfoNCE needs at least one pair")
    if a.shape[0] > 0:
        _check_info_nce(a, b, temperature, normalize, symmetric, intra_view_negatives, reduction)
    elif reduction not in REDUCTIONS:
        raise ValueError(f"info_nce: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    offset = _own_rows(counts, group).start
    acc = accumulation_dtype(a.dtype)
    x, y = a.to(acc), b.to(acc)
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    t = temperature.to(device=a.device, dtype=acc).reshape(()) if isinstance(temperature, torch.Tensor) else temperature
    all_y = _GatherRows.apply(y, counts, group)
    all_x = _GatherRows.apply(x, counts, group) if (symmetric or intra_view_negatives) else None

    def one_way(anchor, other_all, own_all):
        logits_anchor = anchor / t
        keys, excluded = [other_all], [None]
        if intra_view_negatives:
            keys.append(own_all)
            excluded.append(offset)
        if backend == "reference":
            logits = [logits_anchor @ key.T for key in keys]
            if intra_view_negatives:
                own = torch.arange(anchor.shape[0], device=a.device)
                logits[1] = logits[1].index_put((own, own + offset), torch.tensor(-math.inf, dtype=acc, device=a.device))
            lse = torch.logsumexp(torch.cat(logits, dim=1), dim=1)
        else:
            lse = _RowLogSumExp.apply(logits_anchor, tuple(excluded), *keys)
        positive = (logits_anchor * other_all[offset : offset + anchor.shape[0]]).sum(dim=1)
        return lse - positive

    loss = one_way(x, all_y, all_x)
    if symmetric:
        loss = (loss + one_way(y, all_x, all_y)) / 2
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / total
    return loss.to(a.dtype)


def knn(
    x_local: torch.Tensor, k: int, *, exclude_self: bool = False, group=None, backend: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mmrec_fast.knn` of this rank's rows among the rows of every rank.

    Args:
        x_local: (n_r, d) this rank's rows (rank 0's rows come first in the global numbering).
        k, exclude_self, backend: as in :func:`mmrec_fast.knn` (the backend of the top-k search,
            :func:`mmrec_fast.topk_scores`).

    Returns:
        values (n_r, k), indices (n_r, k) int64 global row indices: the rows of the single-process result, bitwise
        (ties to the lower index).
    """
    _check_features("distributed.knn", "x_local", x_local)
    counts = _row_counts(x_local.shape[0], x_local.device, group)
    with torch.no_grad():
        everyone = _all_gather_rows(x_local.detach(), counts, group)
        return _knn_rows(everyone, _own_rows(counts, group), k, exclude_self, backend)


def _knn_rows(x: torch.Tensor, rows: slice, k, exclude_self: bool, backend) -> tuple[torch.Tensor, torch.Tensor]:
    """The knn rows ``rows`` of the (n, d) x: the normalised rows of :func:`mmrec_fast.knn` scored by topk_scores
    against all rows, the row itself excluded with ``exclude_self``."""
    n = x.shape[0]
    k = _check_k("distributed.knn", k, n, bool(exclude_self))
    x_hat = normalize_rows(x)
    queries = x_hat[rows]
    exclude = None
    if exclude_self and queries.shape[0]:
        own = torch.arange(rows.start, rows.stop, device=x.device)
        exclude = Graph.from_edge_index(
            torch.stack([own - rows.start, own]), shape=(queries.shape[0], n), norm=None
        )
    if queries.shape[0] == 0:
        return x_hat.new_empty(0, k), torch.empty(0, k, dtype=torch.int64, device=x.device)
    return topk_scores(queries, x_hat, k, exclude=exclude, backend=backend)


def knn_graph(
    features: Union[torch.Tensor, Sequence[torch.Tensor]],
    k: int = 10,
    *,
    weights: Optional[Sequence[float]] = None,
    include_self: bool = True,
    edge_weight: str = "binary",
    norm: Optional[str] = "sym",
    eps: Optional[float] = None,
    group=None,
    backend: Optional[str] = None,
) -> Graph:
    """:func:`mmrec_fast.knn_graph` with the top-k search sharded by rows (:func:`shard`).

    ``features`` are every item's features (n, d_m), the same on every rank (replicated: each rank loads them);
    each rank searches the neighbours of its shard of the rows, the neighbours are all-gathered, and every rank
    builds the same (n, n) :class:`~mmrec_fast.Graph`: equal, edge for edge and value for value, to the
    single-process one. Arguments as in :func:`mmrec_fast.knn_graph`.
    """
    modalities, weights, eps, k = check_knn_graph_args(features, k, weights, include_self, edge_weight, norm, eps)
    n = modalities[0].shape[0]
    rows, counts = shard(n, group), _shard_counts(n, group)
    neighbours = []
    with torch.no_grad():
        for x in modalities:
            values, indices = _knn_rows(x.detach(), rows, k, not include_self, backend)
            neighbours.append((_all_gather_rows(values, counts, group), _all_gather_rows(indices, counts, group)))
    return graph_from_neighbours(neighbours, weights, edge_weight, norm, eps)


def evaluate(
    model,
    dataset,
    split: str = "test",
    *,
    exclude: Sequence[str] = ("train",),
    group=None,
    **options,
) -> dict[str, float]:
    """:func:`mmrec_fast.evaluate.evaluate` with the users' batches shared out between the ranks (batch b on rank
    b % world; each rank ranks its batches with :func:`mmrec_fast.topk_scores` against all items): every rank
    returns the single-process metrics, bitwise (the per-batch sums are gathered and added in batch order).

    Every rank passes the same model (replicated parameters, as under DistributedDataParallel), the same dataset
    and the same ``options`` (ks, metrics, ndcg, batch_size, backend of :func:`mmrec_fast.evaluate.evaluate`)."""
    from .evaluate import average_batch_sums, batch_metric_sums, evaluation_pairs

    rank, size = world(group)
    relevant, excluded = evaluation_pairs(dataset, split, exclude)
    sums, num_users = batch_metric_sums(model, relevant, dataset.num_items, exclude=excluded, batches=(rank, size),
                                        **options)  # fmt: skip
    if size > 1:
        parts = [None] * size
        dist.all_gather_object(parts, sums, group=group)
        sums = [item for part in parts for item in part]
    return average_batch_sums(sums, num_users)


__all__ = ["TILE_BYTES", "evaluate", "info_nce", "knn", "knn_graph", "shard", "world"]
