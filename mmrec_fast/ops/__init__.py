"""The ops: registration as torch.library operators, autograd, backend dispatch, argument checks."""

from .propagate import propagate, spmm

__all__ = ["propagate", "spmm"]
