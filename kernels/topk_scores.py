"""Triton kernel of masked inner-product top-k: ``topk_scores`` and, on row-normalised inputs with the diagonal
left out or not, ``knn`` (one kernel serves both ops; kernels/knn.py calls :func:`topk_scores` with queries = keys).

Each program owns BLOCK_M query rows and walks the keys BLOCK_N at a time (tile-and-select, the same mechanism as
the CPU kernels in csrc/common/tile_topk.h):

1. scores of the tile with ``tl.dot`` over BLOCK_D slices, fp32 accumulation, on a GPU as 3xTF32 products (tensor
   cores at fp32-level accuracy, not plain TF32: selection needs fp32 scores), in the interpreter exact products;
   inputs are fp32, the op upcasts fp16/bf16;
2. mask: columns past K, the diagonal (knn with exclude_self) and the row's excluded pairs, walked from its sorted
   CSR row with a cursor that advances with the tiles (the MMRec evaluator's ``scores[mask] = -1e10``, fused);
3. select: each (score, index) is packed into one int64 key, the score's order-preserving integer image in the
   high 32 bits and ``0xFFFFFFFF - index`` in the low 32, so that one integer comparison orders by (score
   descending, index ascending): the tie rule costs nothing, and keys are unique. Each row keeps its best K_PAD
   keys, unsorted, in registers; while some row has a tile key above its worst kept key, the row's best tile key
   replaces its worst kept key (one max and one min reduction a step; a step per insertion, and insertions are
   rare once the rows have filled: about k ln(K / k) per row over all tiles). The kept keys are emitted in order
   at the end by k max-extractions. (Triton's bitonic ``tl.sort``/``tl.topk`` would do a tile's top-k in
   O(log^2) steps on a GPU, but they run element by element in the interpreter that tests this kernel here; the
   builtin max/min reductions run as array operations in both.)

Only the (BLOCK_M, BLOCK_N) tile and the (BLOCK_M, K_PAD) running keys live in the program: no Q x K matrix.
k is limited to :data:`MAX_K` (register budget of the running keys).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import INTERPRETED

#: Largest k the Triton kernel takes (K_PAD = next power of two >= k keys per row live in registers).
MAX_K = 1024
_SENTINEL = tl.constexpr(-(2**63))  # below every packed key; empty slots hold _SENTINEL + slot (keys stay unique)


@triton.jit
def _ordered_bits(x):
    """fp32 -> int32 whose signed order is x's order (-0.0 is canonicalised to +0.0 first)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _topk_scores_kernel(
    q_ptr, k_ptr, rowptr_ptr, col_ptr, out_values_ptr, out_index_ptr,
    num_queries, num_keys, d, k,
    HAS_EXCLUDE: tl.constexpr, EXCLUDE_DIAGONAL: tl.constexpr, K_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < num_queries
    offs_d = tl.arange(0, BLOCK_D)
    slots = tl.arange(0, K_PAD)
    best = tl.full((BLOCK_M, K_PAD), _SENTINEL, tl.int64) + slots.to(tl.int64)[None, :]  # kept keys, unsorted
    worst = tl.min(best, axis=1)
    if HAS_EXCLUDE:
        cursor = tl.load(rowptr_ptr + rows, mask=row_mask, other=0)
        row_end = tl.load(rowptr_ptr + rows + 1, mask=row_mask, other=0)
    for col0 in range(0, num_keys, BLOCK_N):
        cols = col0 + tl.arange(0, BLOCK_N)
        col_mask = cols < num_keys
        scores = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            d_mask = d0 + offs_d < d
            a = tl.load(
                q_ptr + rows.to(tl.int64)[:, None] * d + (d0 + offs_d)[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0,
            )  # fmt: skip
            b = tl.load(
                k_ptr + cols.to(tl.int64)[None, :] * d + (d0 + offs_d)[:, None],
                mask=col_mask[None, :] & d_mask[:, None], other=0.0,
            )  # fmt: skip
            scores = tl.dot(a, b, scores, input_precision=DOT_PRECISION)
        keep = row_mask[:, None] & col_mask[None, :]
        if EXCLUDE_DIAGONAL:
            keep = keep & (rows[:, None] != cols[None, :])
        if HAS_EXCLUDE:
            # Excluded columns of each row inside [col0, col0 + BLOCK_N), one entry per row per step (a 2-D compare:
            # the 3-D (rows, entries, columns) form crashed Triton 3.6's layout pass on sm_90).
            excluded = tl.load(col_ptr + cursor, mask=cursor < row_end, other=0)
            in_tile = (cursor < row_end) & (excluded < col0 + BLOCK_N)
            while tl.max(in_tile.to(tl.int32), axis=0) > 0:
                keep = keep & ~((excluded[:, None] == cols[None, :]) & in_tile[:, None])
                cursor += in_tile.to(cursor.dtype)
                excluded = tl.load(col_ptr + cursor, mask=cursor < row_end, other=0)
                in_tile = (cursor < row_end) & (excluded < col0 + BLOCK_N)
        keys = (_ordered_bits(scores).to(tl.int64) << 32) | (0xFFFFFFFF - cols.to(tl.int64))[None, :]
        keys = tl.where(keep, keys, _SENTINEL)
        tile_best = tl.max(keys, axis=1)
        while tl.max((tile_best > worst).to(tl.int32), axis=0) > 0:
            insert = tile_best > worst
            best = tl.where((best == worst[:, None]) & insert[:, None], tile_best[:, None], best)
            keys = tl.where((keys == tile_best[:, None]) & insert[:, None], _SENTINEL, keys)
            tile_best = tl.max(keys, axis=1)
            worst = tl.min(best, axis=1)
    # Emit the kept keys best first: k max-extractions.
    for t in range(0, k):
        key = tl.max(best, axis=1)
        best = tl.where(best == key[:, None], _SENTINEL, best)
        high = (key >> 32).to(tl.int32)
        value = (high ^ ((high >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        index = 0xFFFFFFFF - (key & 0xFFFFFFFF)
        empty = (key < _SENTINEL + K_PAD) | (value == float("-inf"))
        out_offsets = rows.to(tl.int64) * k + t
        tl.store(out_values_ptr + out_offsets, tl.where(empty, float("-inf"), value), mask=row_mask)
        tl.store(out_index_ptr + out_offsets, tl.where(empty, -1, index), mask=row_mask)


def _launch_config(d: int, k_pad: int) -> dict:
    """Block shapes, warps and dot precision, chosen on a GPU by the sweep of benchmarks/tune_gpu.py (knn N=50,000
    d=384 k=10; figures in benchmarks/results/tune-h100-*.txt): fp32 tiles as 3xTF32 products (tensor cores, error
    at fp32 level, exact on the dyadic parity features) rather than exact FMA products ("ieee"), and 128 x 128
    tiles where the kept keys are few (k <= 16); more kept keys per row need smaller row blocks (registers)."""
    if INTERPRETED:  # the interpreter's cost is per program and per loop step: larger blocks, numpy products
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_D=min(max(triton.next_power_of_2(d), 16), 512), DOT_PRECISION="ieee")
    if k_pad <= 16:
        block_m, block_n, block_d, warps = 128, 128, 32, 8
    elif k_pad <= 64:
        block_m, block_n, block_d, warps = 64, 64, 64, 4
    else:
        block_m, block_n, block_d, warps = 32, 64, 64, 4
    block_d = min(max(triton.next_power_of_2(d), 16), block_d)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT_PRECISION="tf32x3", num_warps=warps)


#: Overrides of the launch configuration (BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION, num_warps, num_stages) for
#: tuning runs (benchmarks/tune_gpu.py); empty in normal use.
TUNING: dict = {}


def launch_config(d: int, k_pad: int) -> dict:
    """The launch configuration (the kernel takes fp32 rows only), with the TUNING overrides applied."""
    return {**_launch_config(d, k_pad), **TUNING}


def topk_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    exclude_rowptr: torch.Tensor | None = None,
    exclude_col: torch.Tensor | None = None,
    exclude_diagonal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (Q, d) and keys (K, d) float32; 0 <= k <= min(K, MAX_K); exclude_rowptr (Q + 1,) int64 and
    exclude_col (nnz,) int32 sorted within each row, or None; exclude_diagonal leaves out pairs (i, i).

    Returns values (Q, k) float32, descending, and indices (Q, k) int64, ties to the lower index; slots past a
    row's remaining candidates hold (-inf, -1)."""
    if k > MAX_K:
        raise ValueError(f"the Triton top-k kernel takes k <= {MAX_K}, got k={k}")
    queries, keys = queries.contiguous(), keys.contiguous()
    num_queries, d = queries.shape
    num_keys = keys.shape[0]
    values = torch.empty(num_queries, k, dtype=torch.float32, device=queries.device)
    indices = torch.empty(num_queries, k, dtype=torch.int64, device=queries.device)
    if num_queries == 0 or k == 0:
        return values, indices
    k_pad = max(2, triton.next_power_of_2(k))
    has_exclude = exclude_rowptr is not None
    config = launch_config(d, k_pad)
    grid = (triton.cdiv(num_queries, config["BLOCK_M"]),)
    _topk_scores_kernel[grid](
        queries, keys, exclude_rowptr if has_exclude else values, exclude_col if has_exclude else values,
        values, indices, num_queries, num_keys, d, k,
        HAS_EXCLUDE=has_exclude, EXCLUDE_DIAGONAL=bool(exclude_diagonal), K_PAD=k_pad, **config,
    )  # fmt: skip
    return values, indices
