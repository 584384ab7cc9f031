"""Triton kernels of fused multi-layer sparse propagation.

Same math and the same Horner chain as the native kernels (csrc/cpu/propagate.cpp):
    h_L = w_L x,   h_k = w_k x + M h_{k+1},   out = h_0,     M = diag(left) W diag(right),
with buffers holding u = right * h so that each step is a gather-sum over W and a fused epilogue
    dst_i = row_scale_i * sum_e W_ie src_{col_e} + x_coef * x_scale_i * x_i.
Each program owns ROWS_PER_PROGRAM whole rows (CSR row split: no atomics, deterministic) and a BLOCK_D slice of the
columns; it walks a row's edges BLOCK_E at a time, gathering a (BLOCK_E, BLOCK_D) tile of source rows (the Triton
form of GE-SpMM's coalesced row caching: the edge indices are loaded as one vector, the rows as one 2-D gather)
and reducing it in fp32 (fp64 for fp64 inputs). Inputs fp16 / bf16 / fp32 / fp64.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl


@triton.jit
def _propagate_step_kernel(
    rowptr_ptr, col_ptr, values_ptr, src_ptr, row_scale_ptr, x_ptr, x_scale_ptr, dst_ptr,
    x_coef, num_rows, d,
    HAS_VALUES: tl.constexpr, HAS_ROW_SCALE: tl.constexpr, HAS_X: tl.constexpr, HAS_X_SCALE: tl.constexpr,
    ACC: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d
    for r in range(ROWS_PER_PROGRAM):
        row = (tl.program_id(0) * ROWS_PER_PROGRAM + r).to(tl.int64)
        if row < num_rows:
            start = tl.load(rowptr_ptr + row)
            end = tl.load(rowptr_ptr + row + 1)
            acc = tl.zeros([BLOCK_D], dtype=ACC)
            for e0 in range(start, end, BLOCK_E):
                edges = e0 + tl.arange(0, BLOCK_E)
                edge_mask = edges < end
                src_rows = tl.load(col_ptr + edges, mask=edge_mask, other=0).to(tl.int64)
                tile = tl.load(
                    src_ptr + src_rows[:, None] * d + cols[None, :],
                    mask=edge_mask[:, None] & col_mask[None, :],
                    other=0.0,
                ).to(ACC)
                if HAS_VALUES:
                    weight = tl.load(values_ptr + edges, mask=edge_mask, other=0.0).to(ACC)
                    tile = tile * weight[:, None]
                acc += tl.sum(tile, axis=0)
            if HAS_ROW_SCALE:
                acc = acc * tl.load(row_scale_ptr + row).to(ACC)
            if HAS_X:
                x_row = tl.load(x_ptr + row * d + cols, mask=col_mask, other=0.0).to(ACC)
                coef = x_coef
                if HAS_X_SCALE:
                    coef = coef * tl.load(x_scale_ptr + row).to(ACC)
                acc += coef * x_row
            tl.store(dst_ptr + row * d + cols, acc.to(dst_ptr.dtype.element_ty), mask=col_mask)


def _launch_step(rowptr, col, values, src, row_scale, x, x_scale, x_coef, dst):
    num_rows, d = dst.shape
    if num_rows == 0 or d == 0:
        return
    block_d = min(triton.next_power_of_2(d), 128)
    rows_per_program = 4
    grid = (triton.cdiv(num_rows, rows_per_program), triton.cdiv(d, block_d))
    dummy = dst  # placeholder pointer for absent optional inputs (never read: the HAS_* flags are False)
    _propagate_step_kernel[grid](
        rowptr, col, values if values is not None else dummy, src,
        row_scale if row_scale is not None else dummy, x if x is not None else dummy,
        x_scale if x_scale is not None else dummy, dst,
        float(x_coef), num_rows, d,
        HAS_VALUES=values is not None, HAS_ROW_SCALE=row_scale is not None, HAS_X=x is not None,
        HAS_X_SCALE=x_scale is not None, ACC=tl.float64 if dst.dtype == torch.float64 else tl.float32,
        ROWS_PER_PROGRAM=rows_per_program, BLOCK_E=32, BLOCK_D=block_d,
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
    w_last = weights[num_layers]
    gather_from_x = right is None and w_last == 1.0
    out = torch.empty(m, d, dtype=x.dtype, device=x.device)
    pingpong = torch.empty(n, d, dtype=x.dtype, device=x.device) if num_layers >= 2 or not gather_from_x else None
    buffers = (out, pingpong)  # u_k lives in buffers[k % 2]
    if left is not None and right is not None:
        mid_scale = left * right
    else:
        mid_scale = left if left is not None else right
    src = x
    if not gather_from_x:
        src = buffers[num_layers % 2]
        scale = right.unsqueeze(1) * w_last if right is not None else w_last
        torch.mul(x, scale, out=src)
    for k in range(num_layers - 1, -1, -1):
        last = k == 0
        dst = buffers[k % 2]
        _launch_step(
            rowptr, col, values, src,
            row_scale=left if last else mid_scale,
            x=x if weights[k] != 0 else None,
            x_scale=None if last else right,
            x_coef=weights[k],
            dst=dst,
        )  # fmt: skip
        src = dst
    return out
