"""The ops: registration as torch.library operators, autograd, backend dispatch, argument checks."""

from .info_nce import InfoNCE, info_nce
from .propagate import propagate, spmm
from .topk_scores import topk_scores

__all__ = ["InfoNCE", "info_nce", "propagate", "spmm", "topk_scores"]
