"""The ops: registration as torch.library operators, autograd, backend dispatch, argument checks."""

from .propagate import propagate, spmm
from .topk_scores import topk_scores

__all__ = ["propagate", "spmm", "topk_scores"]
