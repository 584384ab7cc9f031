"""topk_scores: fused score + mask-out-known-items + top-k for full-ranking evaluation.

Dispatch and argument checks. Backends:

* reference (mmrec_fast/reference/topk_scores.py): the materialised Q x K specification.
* native (CPU, csrc/cpu/topk_scores.cpp on the tile-and-select machinery of csrc/common/tile_topk.h): GEMM tiles,
  excluded pairs masked in the tile, per-row sorted running top-k; one score tile per thread, never Q x K.
* triton (kernels/topk_scores.py; the same kernel serves knn): tl.dot tiles, exclusion mask, running top-k in
  registers. This is the backend that serves CUDA tensors (there is no native CUDA kernel for this op).

The kernels compute scores in float32 (float64 for float64 inputs; the native kernel takes float64, the Triton
kernel does not), from inputs upcast the way the reference upcasts them. Selection runs without autograd
(evaluation); results are constants.

Non-finite scores have no order every backend agrees on (the native kernel dropped NaN rows and keys, the
reference ranked NaN first), so there are none: NaN or inf in the queries or keys is an error, and so are inputs
large enough that a score could overflow (max|q| * max|k| * d above half the score dtype's largest value: it
bounds every score and every partial sum, |sum_l q_l k_l| <= d max|q| max|k|). The only -inf is an excluded
pair's.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .. import _native, backends, reference
from ..backends import accumulation_dtype
from ..graph import Graph

#: Tuning of the native CPU kernels of topk_scores and knn (both are schedules of csrc/common/tile_topk.h), read
#: at every call, as the Triton kernels read ``mmrec_fast.kernels.<op>.TUNING``: "score_tile_bytes", the
#: per-thread budget of the score tile (absent or 0: the kernels' default, 256 KiB, a 256 x 256 float32 tile that
#: shares a 512 KiB L2 with the panels it streams; the tile edge is the largest multiple of 8 whose square tile
#: fits). Tests lower it to run many tiles on small inputs; results do not depend on it.
TUNING: dict = {}


def score_tile_bytes() -> int:
    """The native kernels' score-tile budget (TUNING["score_tile_bytes"], 0: their default)."""
    return int(TUNING.get("score_tile_bytes", 0))


def triton_k_limit(k: int) -> str | None:
    """Why the Triton kernel cannot take ``k`` (it keeps the running top-k in registers), or None: the Triton
    backend's limit in the support tables of topk_scores and knn."""
    from mmrec_fast.kernels.topk_scores import MAX_K

    return None if k <= MAX_K else f"the Triton kernel keeps at most {MAX_K} candidates per row in registers, got k={k}"


SUPPORT = backends.OpSupport(
    "topk_scores",
    dtypes={
        ("reference", "cpu"): backends.FLOAT_DTYPES,
        ("reference", "cuda"): backends.FLOAT_DTYPES,
        ("native", "cpu"): backends.FLOAT_DTYPES,  # float16 / bfloat16 are upcast to float32 first
        ("triton", "cpu"): (torch.float16, torch.bfloat16, torch.float32),
        ("triton", "cuda"): (torch.float16, torch.bfloat16, torch.float32),
    },
    preference={"cpu": ("native", "reference"), "cuda": ("triton", "reference")},
    limits={"triton": triton_k_limit},
)

_TRITON_OP = "mmrec_fast::topk_scores_triton"


@torch.library.custom_op(_TRITON_OP, mutates_args=())
def _topk_scores_triton(
    queries: torch.Tensor, keys: torch.Tensor, k: int, exclude_rowptr: Optional[torch.Tensor],
    exclude_col: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    from mmrec_fast.kernels import topk_scores as triton_topk_scores

    return triton_topk_scores.topk_scores(queries, keys, k, exclude_rowptr, exclude_col, False)


@torch.library.register_fake(_TRITON_OP)
def _topk_scores_triton_fake(queries, keys, k, exclude_rowptr, exclude_col):
    shape = (queries.shape[0], k)
    return queries.new_empty(shape, dtype=torch.float32), queries.new_empty(shape, dtype=torch.int64)


def _register_native() -> None:
    @torch.library.register_fake("mmrec_fast::topk_scores")
    def _fake(queries, keys, k, exclude_rowptr, exclude_col, tile_bytes):
        shape = (queries.shape[0], k)
        return queries.new_empty(shape), queries.new_empty(shape, dtype=torch.int64)


_native.on_load(_register_native)


def exclusion_csr(graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR of an exclusion graph as the kernels take it: (rowptr (Q + 1,) int64, col (nnz,) int32 with the
    columns sorted within each row)."""
    col = graph.col
    if graph.nnz > 1:
        key = graph.row_index() * max(graph.shape[1], 1) + col.to(torch.int64)
        if not bool((key[1:] >= key[:-1]).all()):
            col = col[torch.argsort(key, stable=True)]
    return graph.rowptr, col.contiguous()


def _exclusion_graph(exclude, shape) -> Optional[Graph]:
    if exclude is None:
        return None
    if isinstance(exclude, torch.Tensor) and exclude.layout in (torch.sparse_coo, torch.sparse_csr):
        exclude = Graph.from_torch(exclude.detach())
    if not isinstance(exclude, Graph):
        raise TypeError(f"topk_scores: exclude must be a Graph, a torch sparse COO/CSR tensor or None, got {type(exclude).__name__}")
    if exclude.shape != shape:
        raise ValueError(f"topk_scores: exclude has shape {exclude.shape}, expected (num_queries, num_keys) = {shape}")
    return exclude


def _check_finite_scores(queries: torch.Tensor, keys: torch.Tensor) -> None:
    """The rule of the module docstring: finite inputs, and no score that can overflow (one host sync)."""
    if torch.compiler.is_compiling():  # a data-dependent check: skipped while torch.compile traces (as knn's)
        return
    zero = torch.zeros((), dtype=torch.float64, device=queries.device)
    largest = torch.stack([x.detach().abs().amax().double() if x.numel() else zero for x in (queries, keys)]).tolist()
    for name, value in zip(("queries", "keys"), largest):
        if not math.isfinite(value):
            raise ValueError(f"topk_scores: {name} holds NaN or inf (scores must be finite to be ranked)")
    acc = accumulation_dtype(queries.dtype)
    bound, limit = largest[0] * largest[1] * queries.shape[1], torch.finfo(acc).max / 2
    if bound > limit:
        raise ValueError(
            f"topk_scores: queries and keys are too large for {acc} scores: max|q| * max|k| * d = {bound:.3g} > "
            f"{limit:.3g}, so a score could overflow to inf or NaN; scale them down"
        )


def topk_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude: Union[Graph, torch.Tensor, None] = None,
    backend: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner-product top-k of each query among all keys, known pairs excluded, without a Q x K score matrix
    (on the fast backends).

    Args:
        queries: (Q, d) floating, finite, e.g. user embeddings.
        keys: (K, d) floating, finite, same dtype and device, e.g. item embeddings. Inputs with
            max|q| * max|k| * d above half the largest float32 (float64 for float64 inputs) are an error: a score
            could overflow.
        k: 0 <= k <= K.
        exclude: (Q, K) Graph or torch sparse tensor whose stored entries are removed before selection (e.g. the
            users' training items; values are ignored), or None.
        backend: "reference" | "native" | "triton" | None (see :mod:`mmrec_fast.backends`). The native and Triton
            kernels never form the Q x K matrix (one score tile per thread / program); the Triton kernel takes
            k <= 1024.

    Returns:
        values: (Q, k) scores, descending; float64 for float64 inputs, else float32.
        indices: (Q, k) int64 key indices; ties go to the lower index; -1 (with value -inf) where a row has fewer
        than k keys left after exclusion.
    """
    backends.check_float_matrix("topk_scores", "queries", queries, "(Q, d)")
    backends.check_float_matrix("topk_scores", "keys", keys, "(K, d)")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"topk_scores: queries have d={queries.shape[1]} but keys have d={keys.shape[1]}")
    if queries.dtype != keys.dtype or queries.device != keys.device:
        raise ValueError(
            f"topk_scores: queries ({queries.dtype}, {queries.device}) and keys ({keys.dtype}, {keys.device}) "
            "must share dtype and device"
        )
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0:
        raise ValueError(f"topk_scores: k must be an integer >= 0, got {k!r}")
    if k > keys.shape[0]:
        raise ValueError(f"topk_scores: k={k} is larger than the number of keys ({keys.shape[0]})")
    backends.check_has_data("topk_scores: queries", queries)
    _check_finite_scores(queries, keys)
    graph = _exclusion_graph(exclude, (queries.shape[0], keys.shape[0]))
    if graph is not None and graph.device != queries.device:
        raise ValueError(f"topk_scores: exclude is on {graph.device} but queries are on {queries.device}")
    k = int(k)
    chosen = backends.resolve(SUPPORT, queries, backend, k=k)
    with torch.no_grad():
        if chosen == "reference":
            return reference.topk_scores(queries, keys, k, graph)
        acc = accumulation_dtype(queries.dtype)
        queries, keys = queries.detach().to(acc).contiguous(), keys.detach().to(acc).contiguous()
        rowptr, col = exclusion_csr(graph) if graph is not None else (None, None)
        if chosen == "native":
            return torch.ops.mmrec_fast.topk_scores(queries, keys, k, rowptr, col, score_tile_bytes())
        return torch.ops.mmrec_fast.topk_scores_triton(queries, keys, k, rowptr, col)
