"""knn and knn_graph: exact cosine k nearest neighbours and the kNN semantic item graph, without N x N matrices.

Backends of ``knn``:

* reference (mmrec_fast/reference/knn.py): normalise, the full N x N cosine matrix, stable sort.
* native (CPU, csrc/cpu/knn.cpp on the tile-and-select machinery of csrc/common/tile_topk.h shared with
  topk_scores): symmetric blocked GEMM (only the block pairs I <= J; each score feeds the top-k of both its row
  and its column) with per-row sorted running top-k, lock-free round-robin schedule over the block pairs.
* triton (kernels/knn.py: the kernel of topk_scores, kernels/topk_scores.py, with queries = keys and the diagonal
  optionally left out): serves CUDA tensors (there is no native CUDA kernel for this op); it computes all N^2
  scores.

Every backend selects among the products of the same normalised rows (:func:`mmrec_fast.reference.knn.normalize_rows`)
in float32 (float64 for float64 inputs). ``knn_graph`` is plain PyTorch on top of ``knn`` (O(N k) work) and builds a
:class:`mmrec_fast.Graph`.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch

from .. import _native, backends, reference
from ..graph import Graph, degree_scale
from ..reference.knn import normalize_rows, row_norms
from .topk_scores import score_tile_bytes, triton_k_limit

SUPPORT = backends.OpSupport(
    "knn",
    dtypes={
        ("reference", "cpu"): backends.FLOAT_DTYPES,
        ("reference", "cuda"): backends.FLOAT_DTYPES,
        ("native", "cpu"): backends.FLOAT_DTYPES,  # float16 / bfloat16 rows are normalised in float32 first
        ("triton", "cpu"): (torch.float16, torch.bfloat16, torch.float32),
        ("triton", "cuda"): (torch.float16, torch.bfloat16, torch.float32),
    },
    preference={"cpu": ("native", "reference"), "cuda": ("triton", "reference")},
    limits={"triton": triton_k_limit},
)

_TRITON_OP = "mmrec_fast::knn_triton"


@torch.library.custom_op(_TRITON_OP, mutates_args=())
def _knn_triton(x_hat: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from mmrec_fast.kernels import knn as triton_knn

    return triton_knn.knn(x_hat, k, exclude_self)


@torch.library.register_fake(_TRITON_OP)
def _knn_triton_fake(x_hat, k, exclude_self):
    shape = (x_hat.shape[0], k)
    return x_hat.new_empty(shape, dtype=torch.float32), x_hat.new_empty(shape, dtype=torch.int64)


EDGE_WEIGHTS = ("binary", "cosine")
KNN_GRAPH_NORMS = ("sym", "rw", None)


def _register_native() -> None:
    @torch.library.register_fake("mmrec_fast::knn")
    def _fake(x, k, exclude_self, tile_bytes, row_norms):
        return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)


_native.on_load(_register_native)


def _check_k(op_name: str, k, n: int, exclude_self: bool) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0:
        raise ValueError(f"{op_name}: k must be an integer >= 0, got {k!r}")
    limit = max(n - 1, 0) if exclude_self else n  # k = 0 of zero rows is no neighbour of nothing: fine
    if k > limit:
        if exclude_self:
            what = f"the number of other rows (n - 1 = {n - 1}, exclude_self=True)"
        else:
            what = f"the number of rows (n = {n})"
        raise ValueError(f"{op_name}: k={k} is larger than {what}")
    return int(k)


def _check_feature_matrix(op_name: str, name: str, x) -> None:
    """The checks of the features x that read no values: a float matrix with data (not a meta tensor)."""
    backends.check_float_matrix(op_name, name, x)
    backends.check_has_data(f"{op_name}: {name}", x)


def _check_finite(op_name: str, name: str, x, norms: Optional[torch.Tensor] = None) -> None:
    """x holds no NaN or inf. With its row norms (``row_norms(x)``) the check reads the norms instead of x: a NaN or
    inf entry makes its row's norm NaN or inf, so finite norms mean finite rows (and x itself is read only when some
    norm is not finite, which an overflow of finite values can also cause)."""
    # A data-dependent check: skipped while torch.compile traces (compiled callers get no NaN/inf error).
    if torch.compiler.is_compiling() or not x.numel():
        return
    if norms is not None and bool(torch.isfinite(norms).all()):
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{op_name}: {name} holds NaN or inf")


def _check_features(op_name: str, name: str, x) -> None:
    """All the checks of the features x."""
    _check_feature_matrix(op_name, name, x)
    _check_finite(op_name, name, x)


def knn(
    x: torch.Tensor, k: int, *, exclude_self: bool = False, backend: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k of each row of x among the rows of x, without an N x N matrix (on the fast backends).

    Args:
        x: (n, d) float16 / bfloat16 / float32 / float64, any strides, finite. Rows are compared by cosine
            similarity x_i . x_j / (||x_i|| ||x_j||); a zero row has similarity 0 to every row (itself included),
            never NaN.
        k: 0 <= k <= n (n - 1 with ``exclude_self``).
        exclude_self: leave each row out of its own candidates. Without it the row is a candidate like any other
            (as in FREEDOM/MENTOR/LATTICE): usually its own first neighbour, but identical rows tie with it, and
            the tie goes to the lower index, so a row can fall out of its own top-k.
        backend: "reference" | "native" | "triton" | None (see :mod:`mmrec_fast.backends`).

    Returns:
        values: (n, k) cosine similarities, descending; float32 (float64 for float64 inputs). Constants (no
            gradient); a differentiable version for learned graphs is ``(x_hat[:, None] * x_hat[indices]).sum(-1)``.
        indices: (n, k) int64; among equal similarities the lower index comes first, on every backend.
    """
    _check_feature_matrix("knn", "x", x)
    k = _check_k("knn", k, x.shape[0], bool(exclude_self))
    chosen = backends.resolve(SUPPORT, x, backend, k=k)
    with torch.no_grad():
        if chosen == "native":
            # The kernel divides the rows by their norms while it packs them (bitwise normalize_rows' x / norm):
            # one pass over x for the norms instead of normalize_rows' three and the finiteness check's one.
            x_acc = x.detach().to(backends.accumulation_dtype(x.dtype)).contiguous()
            norms = row_norms(x_acc)
            _check_finite("knn", "x", x, norms)
            return torch.ops.mmrec_fast.knn(x_acc, k, bool(exclude_self), score_tile_bytes(), norms.view(-1))
        _check_finite("knn", "x", x)
        if chosen == "reference":
            return reference.knn(x, k, bool(exclude_self))
        x_hat = normalize_rows(x.detach()).contiguous()
        return torch.ops.mmrec_fast.knn_triton(x_hat, k, bool(exclude_self))


def knn_graph(
    features: Union[torch.Tensor, Sequence[torch.Tensor]],
    k: int = 10,
    *,
    weights: Optional[Sequence[float]] = None,
    include_self: bool = True,
    edge_weight: str = "binary",
    norm: Optional[str] = "sym",
    eps: Optional[float] = None,
    backend: Optional[str] = None,
) -> Graph:
    """The kNN semantic item graph of FREEDOM / MENTOR / DRAGON / LATTICE, from per-modality item features.

    For each modality m: the k most cosine-similar items of every item (:func:`knn`), edges i -> j weighted 1
    (``"binary"``) or by the cosine similarity (``"cosine"``), normalised with D_m the ROW sums of that modality's
    matrix A_m (out-degrees, on both sides, as the references compute it); the modalities' normalised matrices are
    then summed with ``weights``, an edge present in several modalities getting the sum of its values:

        M = sum_m weights[m] * N_m,   N_m = (D_m + eps)^-1/2 A_m (D_m + eps)^-1/2   (norm="sym")
                                      N_m = (D_m + eps)^-1 A_m                      (norm="rw")
                                      N_m = A_m                                     (norm=None)

    Args:
        features: (n, d_m) floating tensor, or a list of them (one per modality, same n, same device; d_m may
            differ). Finite.
        k: neighbours per item, 0 <= k <= n (n - 1 without ``include_self``).
        weights: one float per modality (default: 1 / number of modalities).
        include_self: the item itself is a candidate (the references' behaviour); False: k other items.
        edge_weight: "binary" or "cosine".
        norm: "sym", "rw" or None.
        eps: added to every degree before the power; None: the reference's, 1e-7 for "binary" (FREEDOM/MENTOR's
            ``row_sum = 1e-7 + sum``) and 0 for "cosine" (LATTICE); with eps = 0 a zero degree gets scale 0
            (LATTICE's ``d_inv_sqrt[isinf] = 0``). A negative degree (cosine edges with negative similarities)
            is an error under "sym" and "rw".
        backend: the backend of :func:`knn`.

    Returns:
        (n, n) :class:`Graph` with explicit values (float64; no scaling vectors), not symmetric in general.

    How the models' code maps onto the arguments:

    * FREEDOM / MENTOR / DRAGON (``get_knn_adj_mat`` + ``compute_normalized_laplacian``, then
      ``mm_image_weight * image_adj + (1 - mm_image_weight) * text_adj``, ``knn_k = 10``, ``mm_image_weight =
      0.1``): ``knn_graph([image_feat, text_feat], k=10, weights=[0.1, 0.9])`` (the defaults: binary edges, "sym",
      eps 1e-7, self a candidate). Every row has exactly k edges, so every edge value is
      ``(k + 1e-7)^-1/2 * (k + 1e-7)^-1/2 = 1 / (k + 1e-7)`` (here in float64; the original's float32 arithmetic
      rounds 10 + 1e-7 to 10 and lands within an ulp of 0.1), and an edge found in both modalities gets
      0.1 / (k + 1e-7) + 0.9 / (k + 1e-7). One modality: ``knn_graph(feat, k=10)``.
    * LATTICE's frozen "original" graph (``build_sim`` -> ``build_knn_neighbourhood`` ->
      ``compute_normalized_laplacian`` per modality, fused as ``weight[0] * image_adj + weight[1] * text_adj``
      with ``weight = softmax(modal_weight)``, [0.5, 0.5] at initialisation): ``knn_graph([image_feat, text_feat],
      k=10, weights=[0.5, 0.5], edge_weight="cosine")``: cosine values D^-1/2 S D^-1/2 with D the row sums of the
      kNN-sparsified similarity, eps 0. (LATTICE's per-epoch learned graph is built from trainable features and
      needs gradients through the cosine values, and it normalises after fusing; it is not this function.)

    Deliberate difference: the references compute x / ||x|| with no epsilon, so an all-zero feature row (an item
    without features) gives a NaN row of similarities, ``torch.topk`` ranks NaN above everything, and that item
    becomes a neighbour of every item (FREEDOM's and MENTOR's ``build_sim`` / ``build_knn_neighbourhood``). Here a zero row has similarity 0 to all
    items: it is nobody's special neighbour, and its own neighbours are the k lowest-indexed items with its best
    similarity 0 (all items tie at 0); with cosine edges its row is then zero.
    """
    modalities, weights, eps, k = check_knn_graph_args(features, k, weights, include_self, edge_weight, norm, eps)
    neighbours = [knn(x, k, exclude_self=not include_self, backend=backend) for x in modalities]
    return graph_from_neighbours(neighbours, weights, edge_weight, norm, eps)


def check_knn_graph_args(features, k, weights, include_self, edge_weight, norm, eps):
    """knn_graph's argument checks and defaults (shared with :func:`mmrec_fast.distributed.knn_graph`) ->
    (modalities: list of (n, d_m) tensors, weights: list of floats, eps: float, k: int)."""
    op_name = "knn_graph"
    modalities = [features] if isinstance(features, torch.Tensor) else list(features)
    if not modalities:
        raise ValueError(f"{op_name}: features is an empty list; pass at least one (n, d) tensor")
    for m, x in enumerate(modalities):
        _check_features(op_name, f"features[{m}]" if len(modalities) > 1 else "features", x)
    n, device = modalities[0].shape[0], modalities[0].device
    for m, x in enumerate(modalities[1:], start=1):
        if x.shape[0] != n:
            raise ValueError(
                f"{op_name}: features[{m}] has {x.shape[0]} rows but features[0] has {n} "
                "(the modalities describe the same items)"
            )
        if x.device != device:
            raise ValueError(f"{op_name}: features[{m}] is on {x.device} but features[0] is on {device}")
    if weights is None:
        weights = [1.0 / len(modalities)] * len(modalities)
    if isinstance(weights, torch.Tensor):
        if weights.requires_grad:
            raise ValueError(f"{op_name}: weights that require grad are not supported (graphs are constants)")
        weights = weights.tolist()
    weights = [float(w) for w in weights]
    if len(weights) != len(modalities):
        raise ValueError(f"{op_name}: {len(weights)} weights for {len(modalities)} modalities")
    if not all(abs(w) < float("inf") for w in weights):
        raise ValueError(f"{op_name}: weights must be finite, got {weights}")
    if edge_weight not in EDGE_WEIGHTS:
        raise ValueError(f"{op_name}: edge_weight must be one of {EDGE_WEIGHTS}, got {edge_weight!r}")
    if norm not in KNN_GRAPH_NORMS:
        raise ValueError(f"{op_name}: norm must be one of {KNN_GRAPH_NORMS}, got {norm!r}")
    if eps is None:
        eps = 1e-7 if edge_weight == "binary" else 0.0
    eps = float(eps)
    if not (eps >= 0 and eps < float("inf")):
        raise ValueError(f"{op_name}: eps must be a finite number >= 0, got {eps}")
    k = _check_k(op_name, k, n, not include_self)
    return modalities, weights, eps, k


def graph_from_neighbours(neighbours, weights, edge_weight: str, norm, eps: float) -> Graph:
    """The (n, n) kNN graph of :func:`knn_graph` from each modality's :func:`knn` result.

    neighbours: one (similarity (n, k), indices (n, k)) pair per modality; weights: one float per modality."""
    n, k = neighbours[0][1].shape
    device = neighbours[0][1].device
    rows = torch.arange(n, device=device).repeat_interleave(k)
    all_rows, all_cols, all_values = [], [], []
    for (similarity, indices), weight in zip(neighbours, weights):
        cols = indices.reshape(-1)
        if edge_weight == "binary":
            value = torch.ones(n * k, dtype=torch.float64, device=device)
        else:
            value = similarity.reshape(-1).to(torch.float64)
        degree = value.view(n, k).sum(dim=1)  # row sums: every row of A_m has exactly k entries
        if norm == "sym":
            scale = degree_scale(degree, 0.5, eps, "row")
            value = scale[rows] * value * scale[cols]
        elif norm == "rw":
            value = degree_scale(degree, 1.0, eps, "row")[rows] * value
        all_rows.append(rows)
        all_cols.append(cols)
        all_values.append(weight * value)
    return Graph.from_edge_index(
        torch.stack([torch.cat(all_rows), torch.cat(all_cols)]),
        num_nodes=n,
        values=torch.cat(all_values),
        norm=None,
        duplicates="sum",
    )
