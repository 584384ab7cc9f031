"""The pure-PyTorch specifications of every op: what "correct" means for the kernels."""

from .propagate import propagate, spmm

__all__ = ["propagate", "spmm"]
