"""The ops: registration as torch.library operators, autograd, backend dispatch, argument checks."""

from .info_nce import InfoNCE, info_nce
from .knn import knn, knn_graph
from .masked_similarity import masked_similarity
from .propagate import propagate, spmm
from .topk_scores import topk_scores

__all__ = ["InfoNCE", "info_nce", "knn", "knn_graph", "masked_similarity", "propagate", "spmm", "topk_scores"]
