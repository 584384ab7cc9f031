"""What topk_scores and knn share: the native kernels' score-tile budget and the Triton operator.

Both ops run on one tile-and-select mechanism: csrc/common/tile_topk.h on the CPU (knn.cpp and topk_scores.cpp are
its two schedules) and the one Triton kernel of kernels/topk_scores.py, registered here as
``mmrec_fast::topk_scores_triton`` (knn calls it with queries = keys and the diagonal optionally left out).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .. import backends

#: Per-thread budget in bytes of the score tile of the native CPU kernels of topk_scores and knn; 0 means the
#: kernels' default, 256 KiB (a 256 x 256 float32 tile, which shares a 512 KiB L2 with the panels it streams).
#: The tile edge is the largest multiple of 8 whose square tile fits. Tests lower it to run many tiles on small
#: inputs; results do not depend on it.
SCORE_TILE_BYTES = 0

_TRITON_OP = "mmrec_fast::topk_scores_triton"


@torch.library.custom_op(_TRITON_OP, mutates_args=())
def _topk_scores_triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    exclude_rowptr: Optional[torch.Tensor],
    exclude_col: Optional[torch.Tensor],
    exclude_diagonal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from mmrec_fast.kernels import topk_scores as triton_topk_scores

    return triton_topk_scores.topk_scores(queries, keys, k, exclude_rowptr, exclude_col, exclude_diagonal)


@torch.library.register_fake(_TRITON_OP)
def _topk_scores_triton_fake(queries, keys, k, exclude_rowptr, exclude_col, exclude_diagonal):
    shape = (queries.shape[0], k)
    return queries.new_empty(shape, dtype=torch.float32), queries.new_empty(shape, dtype=torch.int64)


def triton_k_limit(op_name: str, k: int, backend: Optional[str]) -> str:
    """'triton' if the Triton kernel takes k; else 'reference' with a warning when the choice was automatic, or a
    BackendUnavailable error when Triton was requested."""
    from mmrec_fast.kernels.topk_scores import MAX_K

    if k <= MAX_K:
        return "triton"
    reason = f"the Triton kernel keeps at most {MAX_K} candidates per row in registers, got k={k}"
    if (backend or backends.get_backend()) is not None:
        raise backends.BackendUnavailable(f"{op_name}: backend 'triton' cannot run here: {reason}")
    warnings.warn(f"mmrec_fast.{op_name}: using the reference backend because {reason}", RuntimeWarning, stacklevel=3)
    return "reference"
