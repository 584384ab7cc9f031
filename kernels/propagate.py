"""Triton kernels of fused multi-layer sparse propagation.

Same math and the same Horner chain as the native kernels (csrc/cpu/propagate.cpp):
    h_L = w_L x,   h_k = w_k x + M h_{k+1},   out = h_0,     M = diag(left) W diag(right),
with intermediate buffers holding u = right * h, so each step is a gather-sum over W and a fused epilogue
    dst_i = row_scale_i * sum_e (W_ie src_scale_{col_e}) src_{col_e} + x_coef * x_scale_i * x_i;
the first step gathers x itself with src_scale = w_L right.

Work split (the same as the CUDA kernels, csrc/cuda/propagate.cuh): edge segments of at most SEGMENT_EDGES edges
of one row. A program owns BLOCK_M segments and a BLOCK_D slice of the columns; a row of one segment is summed and
written with its epilogue, a longer row (a power-law hub) is cut into segments whose partial sums go to a scratch
buffer, added in segment order by a second kernel (no atomics, fixed order: deterministic). So no program walks
more than SEGMENT_EDGES edges, whatever the degree distribution. A program walks its segments' edges BLOCK_E at a
time: the (BLOCK_M, BLOCK_E) edge indices are loaded at once and the source rows gathered as one
(BLOCK_M, BLOCK_E, BLOCK_D) tile, coalesced along d (GE-SpMM's all-columns-per-row, with BLOCK_E rows in flight per
segment for memory-level parallelism), then reduced over the edges. Accumulation in fp32 (fp64 for fp64 inputs).
Inputs fp16 / bf16 / fp32 / fp64. The segment tables are built on the device with torch ops, without a host sync
(grids are sized by bounds; programs past the true totals exit).
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from mmrec_fast.backends import accumulation_dtype

from . import INTERPRETED, TL_DTYPES


#: Edges per segment: rows with more are summed in pieces (the CUDA kernels use the same length).
SEGMENT_EDGES = 128


@triton.jit
def _epilogue(acc, rows, row_mask, cols, col_mask, row_scale_ptr, x_ptr, x_scale_ptr, x_coef_ptr, dst_ptr, d,
              HAS_ROW_SCALE: tl.constexpr, HAS_X: tl.constexpr, HAS_X_SCALE: tl.constexpr, ACC: tl.constexpr):
    """dst[rows] = row_scale * acc + x_coef * x_scale * x[rows] for the masked (rows, cols)."""
    if HAS_ROW_SCALE:
        acc = acc * tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0).to(ACC)[:, None]
    out_offsets = rows[:, None] * d + cols[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if HAS_X:
        coef = tl.zeros(rows.shape, dtype=ACC) + tl.load(x_coef_ptr).to(ACC)  # a pointer: a float argument is fp32
        if HAS_X_SCALE:
            coef = coef * tl.load(x_scale_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        acc += coef[:, None] * tl.load(x_ptr + out_offsets, mask=out_mask, other=0.0).to(ACC)
    tl.store(dst_ptr + out_offsets, acc.to(dst_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _segments_of(degree, SEGMENT: tl.constexpr):
    return tl.where(degree <= SEGMENT, 1, (degree + SEGMENT - 1) // SEGMENT)


@triton.jit
def _propagate_segments_kernel(
    seg_row_ptr, seg_incl_ptr, partial_incl_ptr, partials_ptr,
    rowptr_ptr, col_ptr, values_ptr, src_ptr, src_scale_ptr, row_scale_ptr, x_ptr, x_scale_ptr, x_coef_ptr, dst_ptr,
    num_rows, d,
    HAS_VALUES: tl.constexpr, HAS_SRC_SCALE: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, HAS_X: tl.constexpr,
    HAS_X_SCALE: tl.constexpr, ACC: tl.constexpr, SEGMENT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    slots = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    seg_mask = slots < tl.load(seg_incl_ptr + num_rows - 1)  # the true number of segments
    rows = tl.load(seg_row_ptr + slots, mask=seg_mask, other=0).to(tl.int64)
    row_begin = tl.load(rowptr_ptr + rows, mask=seg_mask, other=0)
    row_end = tl.load(rowptr_ptr + rows + 1, mask=seg_mask, other=0)
    segments = _segments_of(row_end - row_begin, SEGMENT)
    index = slots - (tl.load(seg_incl_ptr + rows, mask=seg_mask, other=0) - segments)  # segment within its row
    start = row_begin + index * SEGMENT
    length = tl.where(seg_mask, tl.minimum(row_end - start, SEGMENT), 0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    for e0 in range(0, tl.max(length, axis=0), BLOCK_E):
        offsets = e0 + tl.arange(0, BLOCK_E)
        edge_mask = offsets[None, :] < length[:, None]  # (BLOCK_M, BLOCK_E)
        edges = start[:, None] + offsets[None, :]
        src_rows = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
        tile = tl.load(
            src_ptr + src_rows[:, :, None] * d + cols[None, None, :],
            mask=edge_mask[:, :, None] & col_mask[None, None, :],
            other=0.0,
        ).to(ACC)  # (BLOCK_M, BLOCK_E, BLOCK_D)
        if HAS_VALUES:
            tile = tile * tl.load(values_ptr + edges, mask=edge_mask, other=0.0).to(ACC)[:, :, None]
        if HAS_SRC_SCALE:
            tile = tile * tl.load(src_scale_ptr + src_rows, mask=edge_mask, other=0.0).to(ACC)[:, :, None]
        acc += tl.sum(tile, axis=1)
    single = seg_mask & (segments == 1)
    _epilogue(acc, rows, single, cols, col_mask, row_scale_ptr, x_ptr, x_scale_ptr, x_coef_ptr, dst_ptr, d,
              HAS_ROW_SCALE, HAS_X, HAS_X_SCALE, ACC)  # fmt: skip
    # Segments of long rows: the partial sum to its slot (the row's first slot + its index).
    piece = seg_mask & (segments > 1)
    slot = tl.load(partial_incl_ptr + rows, mask=piece, other=0) - segments + index
    tl.store(partials_ptr + slot[:, None] * d + cols[None, :], acc, mask=piece[:, None] & col_mask[None, :])


@triton.jit
def _finish_long_rows_kernel(
    long_rows_ptr, long_incl_ptr, partial_incl_ptr, partials_ptr,
    rowptr_ptr, row_scale_ptr, x_ptr, x_scale_ptr, x_coef_ptr, dst_ptr, num_rows, d,
    HAS_ROW_SCALE: tl.constexpr, HAS_X: tl.constexpr, HAS_X_SCALE: tl.constexpr, ACC: tl.constexpr,
    SEGMENT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Long rows: their segments' partial sums added in segment order, then the epilogue."""
    slots = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = slots < tl.load(long_incl_ptr + num_rows - 1)  # the true number of long rows
    rows = tl.load(long_rows_ptr + slots, mask=row_mask, other=0).to(tl.int64)
    segments = _segments_of(tl.load(rowptr_ptr + rows + 1, mask=row_mask, other=0) - tl.load(rowptr_ptr + rows, mask=row_mask, other=0), SEGMENT)
    segments = tl.where(row_mask, segments, 0)
    first = tl.load(partial_incl_ptr + rows, mask=row_mask, other=0) - segments
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    for i in range(0, tl.max(segments, axis=0)):
        mask = (i < segments)[:, None] & col_mask[None, :]
        acc += tl.load(partials_ptr + (first + i)[:, None] * d + cols[None, :], mask=mask, other=0.0)
    _epilogue(acc, rows, row_mask, cols, col_mask, row_scale_ptr, x_ptr, x_scale_ptr, x_coef_ptr, dst_ptr, d,
              HAS_ROW_SCALE, HAS_X, HAS_X_SCALE, ACC)  # fmt: skip


class _Segments:
    """The segment tables of one CSR, built with torch ops on its device (no host sync).

    seg_incl (m,): inclusive count of segments over rows; seg_row (max_segments,): row of each segment;
    partial_incl (m,): inclusive count of the long rows' partial slots; long_incl (m,): inclusive count of long
    rows; long_rows (max_long,): row of each long row by rank. The max_* sizes are bounds from nnz alone."""

    def __init__(self, rowptr: torch.Tensor, nnz: int):
        m = rowptr.numel() - 1
        degree = rowptr[1:] - rowptr[:-1]
        segments = torch.where(degree <= SEGMENT_EDGES, 1, (degree + SEGMENT_EDGES - 1) // SEGMENT_EDGES)
        is_long = segments > 1
        self.seg_incl = segments.cumsum(0)
        self.partial_incl = (segments * is_long).cumsum(0)
        self.long_incl = is_long.cumsum(0)
        self.max_segments = m + nnz // SEGMENT_EDGES
        self.max_long = nnz // (SEGMENT_EDGES + 1)
        self.max_partials = self.max_long + nnz // SEGMENT_EDGES
        ids = torch.arange(max(self.max_segments, self.max_long), device=rowptr.device)
        self.seg_row = torch.searchsorted(self.seg_incl, ids[: self.max_segments], right=True)
        self.long_rows = torch.searchsorted(self.long_incl, ids[: self.max_long], right=True)


def _launch_step(segments, rowptr, col, values, src, src_scale, row_scale, x, x_scale, x_coef, dst, partials):
    """One step; x_coef is a one-element tensor in the accumulation dtype (or None when x is None)."""
    num_rows, d = dst.shape
    if num_rows == 0 or d == 0:
        return
    # The interpreter's cost is per program, not per element: it runs the same kernel on larger blocks.
    block_m, block_e = (64, 16) if INTERPRETED else (8, 16)
    block_d = min(triton.next_power_of_2(d), 64)
    dummy = dst  # placeholder pointer for absent optional inputs (never read: their HAS_* flag is False)
    acc = TL_DTYPES[accumulation_dtype(dst.dtype)]
    epilogue_args = (
        dummy if row_scale is None else row_scale, dummy if x is None else x, dummy if x_scale is None else x_scale,
        dummy if x_coef is None else x_coef, dst,
    )  # fmt: skip
    flags = dict(HAS_ROW_SCALE=row_scale is not None, HAS_X=x is not None, HAS_X_SCALE=x_scale is not None, ACC=acc,
                 SEGMENT=SEGMENT_EDGES)  # fmt: skip
    grid = (triton.cdiv(segments.max_segments, block_m), triton.cdiv(d, block_d))
    _propagate_segments_kernel[grid](
        segments.seg_row, segments.seg_incl, segments.partial_incl, partials,
        rowptr, col, dummy if values is None else values, src, dummy if src_scale is None else src_scale,
        *epilogue_args, num_rows, d,
        HAS_VALUES=values is not None, HAS_SRC_SCALE=src_scale is not None, **flags,
        BLOCK_M=block_m, BLOCK_E=block_e, BLOCK_D=block_d,
    )  # fmt: skip
    if segments.max_long:
        grid = (triton.cdiv(segments.max_long, block_m), triton.cdiv(d, block_d))
        _finish_long_rows_kernel[grid](
            segments.long_rows, segments.long_incl, segments.partial_incl, partials, rowptr, *epilogue_args,
            num_rows, d, **flags, BLOCK_M=block_m, BLOCK_D=block_d,
        )  # fmt: skip


def propagate(
    x: torch.Tensor,
    rowptr: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor | None,
    left: torch.Tensor | None,
    right: torch.Tensor | None,
    weights: Sequence[float],
) -> torch.Tensor:
    """sum_k weights[k] M^k x.  x: (n, d); rowptr (m + 1,) int64; col (nnz,) int32; values (nnz,), left (m,),
    right (n,) in the accumulation dtype or None. Returns (m, d) in x's dtype."""
    x = x.contiguous()
    num_layers = len(weights) - 1
    m, (n, d) = rowptr.numel() - 1, x.shape
    if num_layers == 0:
        return x * weights[0]
    segments = _Segments(rowptr, col.numel())  # shared by every step
    acc_dtype = accumulation_dtype(x.dtype)
    partials = torch.empty(max(segments.max_partials, 1), d, dtype=acc_dtype, device=x.device)
    out = torch.empty(m, d, dtype=x.dtype, device=x.device)
    buffers = (out, torch.empty(n, d, dtype=x.dtype, device=x.device) if num_layers >= 2 else None)  # u_k: [k % 2]
    # Row scale of the intermediate steps (chains of >= 2 layers, square graphs only; one layer of an (m, n)
    # graph has none, and left (m,) and right (n,) do not multiply).
    if num_layers < 2:
        mid_scale = None
    elif left is not None and right is not None:
        mid_scale = left * right
    else:
        mid_scale = left if left is not None else right
    coefs = torch.tensor(weights, dtype=acc_dtype).to(x.device)  # one copy for all steps (fp64 stays fp64)
    w_last = weights[num_layers]
    if right is not None:
        first_scale = right * w_last
    elif w_last != 1.0:
        first_scale = torch.full((n,), w_last, dtype=acc_dtype, device=x.device)
    else:
        first_scale = None
    for k in range(num_layers - 1, -1, -1):
        first, last = k == num_layers - 1, k == 0
        _launch_step(
            segments, rowptr, col, values,
            src=x if first else buffers[(k + 1) % 2],
            src_scale=first_scale if first else None,
            row_scale=left if last else mid_scale,
            x=x if weights[k] != 0 else None,
            x_scale=None if last else right,
            x_coef=coefs[k : k + 1] if weights[k] != 0 else None,
            dst=buffers[k % 2],
            partials=partials,
        )  # fmt: skip
    return out
