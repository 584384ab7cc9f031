"""The ops: registration as torch.library operators, autograd, backend dispatch, argument checks."""

from .knn import knn, knn_graph
from .propagate import propagate, spmm
from .topk_scores import topk_scores

__all__ = ["knn", "knn_graph", "propagate", "spmm", "topk_scores"]
