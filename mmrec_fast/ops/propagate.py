"""propagate and spmm: registration, autograd, dispatch and argument checks.

Both are one operator, ``mmrec_fast::propagate`` (native, csrc/) and ``mmrec_fast::propagate_triton`` (kernels/),
of schema

    (x (n, d), rowptr, col, values?, left?, right?, t_rowptr?, t_col?, t_values?, weights float[]) -> (m, d)

computing sum_k weights[k] M^k x for M = diag(left) W diag(right) (see :class:`mmrec_fast.Graph`). ``spmm`` is
the one-layer case ``weights = [0, 1]``. The backward is the same operator on M^T = diag(right) W^T diag(left)
with the same weights (propagation is linear: d/dx sum_k w_k M^k x = sum_k w_k (M^T)^k), so it saves no
activations; W^T is W itself for symmetric graphs and the graph's cached transpose otherwise. The backward is
itself differentiable (double backward works).
"""

from __future__ import annotations

import numbers
import weakref
from typing import Optional, Sequence, Union

import torch

from .. import _native, backends, reference
from ..graph import Graph

SUPPORT = backends.OpSupport(
    "propagate",
    dtypes={
        ("reference", "cpu"): backends.FLOAT_DTYPES,
        ("reference", "cuda"): backends.FLOAT_DTYPES,
        ("native", "cpu"): (torch.float32, torch.float64),
        ("native", "cuda"): backends.FLOAT_DTYPES,
        ("triton", "cpu"): backends.FLOAT_DTYPES,
        ("triton", "cuda"): backends.FLOAT_DTYPES,
    },
)

_TRITON_OP = "mmrec_fast::propagate_triton"


@torch.library.custom_op(_TRITON_OP, mutates_args=())
def _propagate_triton(
    x: torch.Tensor,
    rowptr: torch.Tensor,
    col: torch.Tensor,
    values: Optional[torch.Tensor],
    left: Optional[torch.Tensor],
    right: Optional[torch.Tensor],
    t_rowptr: Optional[torch.Tensor],
    t_col: Optional[torch.Tensor],
    t_values: Optional[torch.Tensor],
    weights: Sequence[float],
) -> torch.Tensor:
    from mmrec_fast.kernels import propagate as triton_propagate

    return triton_propagate.propagate(x, rowptr, col, values, left, right, weights)


def _fake(x, rowptr, col, values, left, right, t_rowptr, t_col, t_values, weights):
    return x.new_empty(rowptr.shape[0] - 1, x.shape[1])


def _setup_context(ctx, inputs, output):
    _, rowptr, col, values, left, right, t_rowptr, t_col, t_values, weights = inputs
    ctx.graph = (rowptr, col, values, left, right, t_rowptr, t_col, t_values)
    ctx.weights = weights


def _backward_through(op):
    def backward(ctx, grad):
        rowptr, col, values, left, right, t_rowptr, t_col, t_values = ctx.graph
        if t_rowptr is None:  # W symmetric: M^T = diag(right) W diag(left)
            transposed = (rowptr, col, values, right, left, None, None, None)
        else:
            transposed = (t_rowptr, t_col, t_values, right, left, rowptr, col, values)
        grad_x = op(grad.contiguous(), *transposed, ctx.weights)
        return (grad_x,) + (None,) * 9

    return backward


def _register(name: str) -> None:
    torch.library.register_fake(name)(_fake)
    op = getattr(torch.ops.mmrec_fast, name.split("::")[1])
    torch.library.register_autograd(name, _backward_through(op), setup_context=_setup_context)


_register(_TRITON_OP)
_native.on_load(lambda: _register("mmrec_fast::propagate"))


def _operator(backend: str):
    return torch.ops.mmrec_fast.propagate if backend == "native" else torch.ops.mmrec_fast.propagate_triton


def combine_weights(combine: Union[str, Sequence[float]], num_layers: int) -> list[float]:
    """The num_layers + 1 layer weights of ``combine``: "mean" | "sum" | "last" | a sequence of floats."""
    if not isinstance(num_layers, numbers.Integral) or isinstance(num_layers, bool) or num_layers < 0:
        raise ValueError(f"num_layers must be an integer >= 0, got {num_layers!r}")
    num_layers = int(num_layers)
    if isinstance(combine, str):
        if combine == "mean":
            return [1.0 / (num_layers + 1)] * (num_layers + 1)
        if combine == "sum":
            return [1.0] * (num_layers + 1)
        if combine == "last":
            return [0.0] * num_layers + [1.0]
        raise ValueError(f"combine must be 'mean', 'sum', 'last' or a sequence of weights, got {combine!r}")
    if isinstance(combine, torch.Tensor):
        if combine.requires_grad:
            raise ValueError("combine weights that require grad are not supported; pass floats")
        combine = combine.tolist()
    weights = [float(w) for w in combine]
    if len(weights) != num_layers + 1:
        raise ValueError(f"combine has {len(weights)} weights; num_layers={num_layers} needs num_layers + 1 = {num_layers + 1}")
    if not all(abs(w) < float("inf") for w in weights):
        raise ValueError(f"combine weights must be finite, got {weights}")
    return weights


def _check(graph: Graph, x: torch.Tensor, weights: list[float], op_name: str) -> None:
    if not isinstance(graph, Graph):
        raise TypeError(f"{op_name}: graph must be a mmrec_fast.Graph, got {type(graph).__name__}")
    backends.check_float_matrix(op_name, "x", x)
    if x.device != graph.device:
        raise ValueError(f"{op_name}: x is on {x.device} but the graph is on {graph.device}; move one with .to()")
    m, n = graph.shape
    if x.shape[0] != n:
        raise ValueError(f"{op_name}: x has {x.shape[0]} rows but the graph has {n} columns (shape {graph.shape})")
    num_layers = len(weights) - 1
    if m != n and (num_layers > 1 or weights[0] != 0):
        raise ValueError(
            f"{op_name}: a rectangular graph {graph.shape} allows one layer with zero weight on the input "
            f"(combine='last'), got num_layers={num_layers}, weights={weights}"
        )


def propagate(
    graph: Graph,
    x: torch.Tensor,
    num_layers: int = 3,
    combine: Union[str, Sequence[float]] = "mean",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Multi-layer propagation over a normalised graph, combined over layers: sum_k w_k M^k x.

    Args:
        graph: (n, n) :class:`Graph` M (an (m, n) graph with ``num_layers=1, combine="last"``).
        x: (n, d) float16 / bfloat16 / float32 / float64, any strides; gradients flow to it.
        num_layers: L >= 0.
        combine: "mean" (w_k = 1 / (L + 1), LightGCN/SLMRec/FREEDOM), "sum" (w_k = 1, MENTOR), "last"
            (only M^L x), or L + 1 floats.
        backend: "reference" | "native" | "triton" | None (see :mod:`mmrec_fast.backends`).

    Returns:
        (m, d) tensor of x's dtype. The native and Triton kernels accumulate in fp32 (fp64 for fp64), keep two
        (n, d) buffers whatever L is (on a GPU also a scratch of at most 2 nnz / 128 rows: the partial sums of
        rows longer than 128 edges), and their backward saves nothing but the graph.
    """
    weights = combine_weights(combine, num_layers)
    _check(graph, x, weights, "propagate")
    chosen = backends.resolve(SUPPORT, x, backend)
    if chosen == "reference":
        return reference.propagate(graph, x, weights)
    return _operator(chosen)(x.contiguous(), *graph.kernel_args(x.dtype), weights)


# Graphs converted from torch sparse tensors by spmm, by id of the tensor, with the tensor's version counter (an
# in-place change of the tensor invalidates the entry); entries leave when their tensor is freed.
_converted: dict[int, tuple[int, Graph]] = {}


def _graph_of(adj: Union[Graph, torch.Tensor]) -> Graph:
    if isinstance(adj, Graph):
        return adj
    if not isinstance(adj, torch.Tensor) or adj.layout not in (torch.sparse_coo, torch.sparse_csr):
        raise TypeError(f"spmm: adj must be a Graph or a torch sparse COO/CSR tensor, got {getattr(adj, 'layout', type(adj).__name__)}")
    key, version = id(adj), adj._version
    cached = _converted.get(key)
    if cached is None or cached[0] != version:
        if cached is None:
            weakref.finalize(adj, _converted.pop, key, None)
        _converted[key] = (version, Graph.from_torch(adj))
    return _converted[key][1]


def spmm(adj: Union[Graph, torch.Tensor], x: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """One sparse x dense product M x, a drop-in for ``torch.sparse.mm(adj, x)``.

    Args:
        adj: (m, n) :class:`Graph`, or a torch sparse COO/CSR tensor (converted once and cached while the tensor
            lives and is not modified in place; its values must not require grad).
        x: (n, d) floating tensor; gradients flow to it.
        backend: as in :func:`propagate`.

    Returns:
        (m, d) tensor of x's dtype.

    Raises:
        TypeError: x is sparse (sparse @ sparse is not supported: use ``torch.sparse.mm``), or adj is a torch tensor
            of another dtype than x (as ``torch.sparse.mm``; a :class:`Graph` has no dtype and serves every one).
    """
    if isinstance(x, torch.Tensor) and x.layout != torch.strided:
        raise TypeError(f"spmm: x must be a dense (strided) tensor, got layout {x.layout}; sparse @ sparse is not "
                        f"supported (torch.sparse.mm computes it)")  # fmt: skip
    if isinstance(adj, torch.Tensor) and isinstance(x, torch.Tensor) and adj.dtype != x.dtype:
        raise TypeError(f"spmm: adj is {adj.dtype} and x is {x.dtype}; as torch.sparse.mm, both must have one dtype "
                        f"(convert one of them, or pass a mmrec_fast.Graph, which serves every dtype)")  # fmt: skip
    return propagate(_graph_of(adj), x, 1, "last", backend=backend)
