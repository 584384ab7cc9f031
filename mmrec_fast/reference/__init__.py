"""The pure-PyTorch specifications of every op: what "correct" means for the kernels."""

from .knn import knn
from .propagate import propagate, spmm
from .topk_scores import topk_scores

__all__ = ["knn", "propagate", "spmm", "topk_scores"]
