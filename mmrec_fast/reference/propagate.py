"""Reference propagation: the specification of ``propagate`` and ``spmm``, in plain PyTorch.

Short and obviously right: one sparse product is a gather of rows of x scaled by the entries of M and summed into
their rows with ``index_add``; propagation applies it ``len(weights) - 1`` times and sums the weighted layers.
Any dtype, any device, autograd through plain PyTorch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..graph import Graph


def spmm(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """M x.  graph: (m, n); x: (n, d) -> (m, d)."""
    row, col, value = graph.coo(x.dtype)
    out = x.new_zeros(graph.shape[0], x.shape[1])
    return out.index_add(0, row, value.unsqueeze(1) * x[col])


def propagate(graph: Graph, x: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_k weights[k] M^k x.  graph: (n, n) (or (m, n) with one layer and weights[0] == 0); x: (n, d) -> (m, d)."""
    layers = [x]
    for _ in range(len(weights) - 1):
        layers.append(spmm(graph, layers[-1]))
    out = weights[-1] * layers[-1]  # (m, d); kept at weight 0 too, so that out is a function of x for autograd
    for weight, layer in zip(weights[:-1], layers[:-1]):
        if weight != 0:  # a zero weight may sit on a layer of another height (rectangular M, weights [0, 1])
            out = out + weight * layer
    return out
