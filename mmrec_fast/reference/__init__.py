"""The pure-PyTorch specifications of every op: what "correct" means for the kernels."""

from .info_nce import info_nce
from .knn import knn
from .masked_similarity import masked_similarity
from .propagate import propagate, spmm
from .topk_scores import topk_scores

__all__ = ["info_nce", "knn", "masked_similarity", "propagate", "spmm", "topk_scores"]
