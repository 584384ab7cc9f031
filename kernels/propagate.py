"""Triton kernels of fused multi-layer sparse propagation.

Same math and the same Horner chain as the native kernels (csrc/cpu/propagate.cpp):
    h_L = w_L x,   h_k = w_k x + M h_{k+1},   out = h_0,     M = diag(left) W diag(right),
with intermediate buffers holding u = right * h, so each step is a gather-sum over W and a fused epilogue
    dst_i = row_scale_i * sum_e (W_ie src_scale_{col_e}) src_{col_e} + x_coef * x_scale_i * x_i;
the first step gathers x itself with src_scale = w_L right.

Each program owns BLOCK_M whole rows (CSR row split: no atomics, each row summed in a fixed order, deterministic)
and a BLOCK_D slice of the columns. Rows are visited in order of decreasing degree (the row swizzle of Sputnik,
Gale et al. SC'20), so the rows of a block have similar degrees and a power-law hub shares its block with other
long rows instead of stalling short ones. A block walks its rows' edges BLOCK_E at a time: the (BLOCK_M, BLOCK_E)
edge indices are loaded at once and the source rows gathered as one (BLOCK_M, BLOCK_E, BLOCK_D) tile, coalesced
along d (GE-SpMM's all-columns-per-row, with BLOCK_E rows in flight per row for memory-level parallelism), then
reduced over the edges. Accumulation in fp32 (fp64 for fp64 inputs). Inputs fp16 / bf16 / fp32 / fp64.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from . import INTERPRETED


@triton.jit
def _propagate_step_kernel(
    order_ptr, rowptr_ptr, col_ptr, values_ptr, src_ptr, src_scale_ptr, row_scale_ptr, x_ptr, x_scale_ptr, dst_ptr,
    x_coef_ptr, num_rows, d,
    HAS_VALUES: tl.constexpr, HAS_SRC_SCALE: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, HAS_X: tl.constexpr,
    HAS_X_SCALE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    slots = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = slots < num_rows
    rows = tl.load(order_ptr + slots, mask=row_mask, other=0).to(tl.int64)
    start = tl.load(rowptr_ptr + rows, mask=row_mask, other=0)
    degree = tl.load(rowptr_ptr + rows + 1, mask=row_mask, other=0) - start
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    for e0 in range(0, tl.max(degree, axis=0), BLOCK_E):
        offsets = e0 + tl.arange(0, BLOCK_E)
        edge_mask = offsets[None, :] < degree[:, None]  # (BLOCK_M, BLOCK_E)
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
    if HAS_ROW_SCALE:
        acc = acc * tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0).to(ACC)[:, None]
    out_offsets = rows[:, None] * d + cols[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if HAS_X:
        coef = tl.zeros([BLOCK_M], dtype=ACC) + tl.load(x_coef_ptr).to(ACC)  # a pointer: a float argument is fp32
        if HAS_X_SCALE:
            coef = coef * tl.load(x_scale_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        acc += coef[:, None] * tl.load(x_ptr + out_offsets, mask=out_mask, other=0.0).to(ACC)
    tl.store(dst_ptr + out_offsets, acc.to(dst_ptr.dtype.element_ty), mask=out_mask)


def _launch_step(order, rowptr, col, values, src, src_scale, row_scale, x, x_scale, x_coef, dst):
    """One step; x_coef is a one-element tensor in the accumulation dtype (or None when x is None)."""
    num_rows, d = dst.shape
    if num_rows == 0 or d == 0:
        return
    # The interpreter's cost is per program, not per element: it runs the same kernel on larger row blocks.
    block_m, block_e = (64, 16) if INTERPRETED else (8, 16)
    block_d = min(triton.next_power_of_2(d), 64)
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(d, block_d))
    dummy = dst  # placeholder pointer for absent optional inputs (never read: their HAS_* flag is False)
    _propagate_step_kernel[grid](
        order, rowptr, col, dummy if values is None else values, src, dummy if src_scale is None else src_scale,
        dummy if row_scale is None else row_scale, dummy if x is None else x, dummy if x_scale is None else x_scale,
        dst, dummy if x_coef is None else x_coef, num_rows, d,
        HAS_VALUES=values is not None, HAS_SRC_SCALE=src_scale is not None, HAS_ROW_SCALE=row_scale is not None,
        HAS_X=x is not None, HAS_X_SCALE=x_scale is not None,
        ACC=tl.float64 if dst.dtype == torch.float64 else tl.float32, BLOCK_M=block_m, BLOCK_E=block_e, BLOCK_D=block_d,
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
    # Rows by decreasing degree (stable, so the schedule is deterministic).
    order = torch.argsort(rowptr[1:] - rowptr[:-1], descending=True, stable=True)
    out = torch.empty(m, d, dtype=x.dtype, device=x.device)
    buffers = (out, torch.empty(n, d, dtype=x.dtype, device=x.device) if num_layers >= 2 else None)  # u_k: [k % 2]
    if left is not None and right is not None:
        mid_scale = left * right
    else:
        mid_scale = left if left is not None else right
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
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
            order, rowptr, col, values,
            src=x if first else buffers[(k + 1) % 2],
            src_scale=first_scale if first else None,
            row_scale=left if last else mid_scale,
            x=x if weights[k] != 0 else None,
            x_scale=None if last else right,
            x_coef=coefs[k : k + 1] if weights[k] != 0 else None,
            dst=buffers[k % 2],
        )  # fmt: skip
    return out
