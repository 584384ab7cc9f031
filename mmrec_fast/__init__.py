"""mmrec_fast: fused kernels for multimodal self-supervised recommendation.

Ops (each with ``backend="reference" | "native" | "triton" | None``):

* :func:`propagate` / :func:`spmm`: sparse normalised graph propagation over a :class:`Graph`.
* :func:`info_nce` / :class:`InfoNCE`: InfoNCE with in-batch negatives, fused, memory O(B d).
* :func:`topk_scores`: score + exclude known pairs + top-k, for full-ranking evaluation.
* :func:`knn` / :func:`knn_graph`: exact cosine kNN and the kNN semantic item graph (FREEDOM/MENTOR/LATTICE).
* :func:`masked_similarity`: normalised masked similarity rows, optionally through a linear layer without the
  (B, K) matrix (MMSSL's discriminator inputs).

Models and training: :mod:`mmrec_fast.data` (MMRec / MMSSL loaders, synthetic data, BPR sampler),
:mod:`mmrec_fast.models` (LightGCN, ...), :mod:`mmrec_fast.evaluate` (full-ranking metrics),
:class:`Trainer` / :class:`TrainConfig` (:mod:`mmrec_fast.train`), and the ``mmrec-fast`` command line.
More than one process: :mod:`mmrec_fast.distributed` (gathered InfoNCE, sharded kNN graph and evaluation) and
data-parallel training under ``torchrun``.

See README.md for the table of ops x backends x dtypes.
"""

from __future__ import annotations

import platform

import torch

from . import _native, backends
from .backends import available, get_backend, set_backend, use_backend
from .graph import Graph
from .ops import InfoNCE, info_nce, knn, knn_graph, masked_similarity, propagate, spmm, topk_scores
from . import data, distributed, evaluate, models  # noqa: E402  (after the ops they use)
from .train import TrainConfig, Trainer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "InfoNCE",
    "TrainConfig",
    "Trainer",
    "available",
    "backends",
    "data",
    "distributed",
    "evaluate",
    "get_backend",
    "info",
    "info_nce",
    "knn",
    "knn_graph",
    "masked_similarity",
    "models",
    "propagate",
    "set_backend",
    "spmm",
    "topk_scores",
    "use_backend",
]


def info() -> dict:
    """Versions, what was built, and which backend runs each op on each device (loads the extension)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    native = _native.status()
    runnable = available()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    defaults = {}
    for support in backends.OPS.values():
        defaults[support.name] = {}
        for device in devices:
            probe = torch.empty(0, device=device)
            try:
                defaults[support.name][device] = backends.resolve(support, probe)
            except backends.BackendUnavailable as error:
                defaults[support.name][device] = f"none ({error})"
    return {
        "mmrec_fast": __version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "native": native,
        "backends": runnable,
        "default_backend": defaults,
        "requested_backend": get_backend(),
    }
