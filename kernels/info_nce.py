"""Triton kernels of InfoNCE with in-batch negatives: flash-style tiles, memory O(B d), no atomics.

Same math as the native kernels (csrc/cpu/info_nce.cpp); s = 1 / t is read from a device pointer (no host sync).
What the kernels fuse and what they follow (Inf-CL, Wang et al., arXiv 2410.17243; FlashAttention-2's online
softmax; flash-decoding's split of the key axis):

* Column splits: one program per BLOCK_M rows leaves most of a GPU idle (B = 8192: 64-128 programs for 132
  multiprocessors), so both tile kernels also cut the columns into runs of whole BLOCK_N tiles (grid axis 1) and
  write per-split partial results; the row-wise epilogues combine them in split order (no atomics, deterministic).
* Row-wise prologue and epilogues, one launch each: ``_normalize_rows_kernel`` (both inputs' rows L2-normalised,
  IEEE sqrt and division as torch, and their inverse norms), ``_loss_rows_kernel`` (the splits' log-sum-exps
  combined, the positive logit, the per-row loss) and ``_finish_grad_kernel`` (the splits' partial gradients
  summed, the normalisation's backward, both sides). They replace some forty small torch ops: a GPU call at
  B = 8192 was host-bound (benchmarks/results/info_nce-h100-2026-11-22.txt). ``fused`` runs forward and
  backward in one call (reduction "mean" / "sum" with a gradient), which saves the second custom op.
* ``_row_lse_kernel``: each program owns BLOCK_M rows of X and walks the rows of Y (and, with intra-view
  negatives, of X itself, the diagonal masked) BLOCK_N at a time: logits = s X_I Y_J^T with ``tl.dot`` (fp32
  accumulation; fp32 inputs as 3xTF32 products on a GPU, fp32-level accuracy, see _config), then the online
  log-sum-exp update. Only the per-row (per-split) lse is written. The b->a (column) log-sum-exps of a symmetric
  loss are the same kernel launched with X and Y swapped: one more GEMM per tile instead of atomics or partial
  column buffers.
* ``_grad_rows_kernel``: the gradient with respect to the rows of X, row-parallel: each program recomputes its
  row tiles, forms dL = w_x g_i (exp(L - lse_x_i) - I) + w_y g_j (exp(L - lse_y_j) - I) in registers and
  accumulates dX_I += dL Y_J; with intra-view negatives dM = w_x (g_i exp(M - lse_x_i) + g_j exp(M - lse_x_j))
  (the diagonal zero) adds dX_I += dM X_J. dA is this kernel on (a, b); dB is the same kernel on (b, a) with the
  roles of the sides swapped (the column-parallel pass of Inf-CL): no atomics, deterministic. X_SIDE / Y_SIDE
  leave out a side whose weight is 0 (the b side of a one-way loss). The same pass sums dL_ij L_ij per row, in
  fp32 before dL is rounded for the second ``tl.dot``: the temperature gradient (sum dL L / (-2 t) over both
  launches) without a cancellation through low-precision rows.
* Not used: the fixed-max trick (running max initialised at the bound 1/t of normalised logits). Its payoff is
  one exp serving both the row and the column sums in one pass; here the column sums come from the swapped
  launch, so it would only skip the per-tile max.

Inputs fp16 / bf16 / fp32 / fp64; fp32 accumulation (fp64 for fp64).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from mmrec_fast.backends import accumulation_dtype

from . import INTERPRETED, TL_DTYPES

NORM_EPS = tl.constexpr(1e-12)  # F.normalize's default


@triton.jit
def _load_rows(ptr, rows, row_mask, dims, dim_mask, d, UPCAST: tl.constexpr):
    """Rows `rows` (BLOCK,) of a (batch, d) row-major matrix, columns `dims`: (BLOCK, BLOCK_D), zero where masked;
    float32 when UPCAST (half-precision inputs)."""
    block = tl.load(ptr + rows[:, None] * d + dims[None, :], mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    if UPCAST:
        block = block.to(tl.float32)
    return block


@triton.jit
def _row_lse_kernel(
    x_ptr, y_ptr, s_ptr, partial_lse_ptr, batch, d, cols_per_split,
    INTRA: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < batch
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < d
    x = _load_rows(x_ptr, rows, row_mask, dims, dim_mask, d, UPCAST)
    s = tl.load(s_ptr).to(ACC)
    m = tl.full([BLOCK_M], float("-inf"), ACC)
    l = tl.zeros([BLOCK_M], ACC)
    col_start = tl.program_id(1) * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, batch)
    for pass_index in range(2 if INTRA else 1):
        other_ptr = y_ptr if pass_index == 0 else x_ptr
        for j0 in range(col_start, col_end, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            col_mask = cols < col_end
            other = _load_rows(other_ptr, cols, col_mask, dims, dim_mask, d, UPCAST)
            logits = tl.dot(x, tl.trans(other), out_dtype=ACC, input_precision=DOT_PRECISION) * s
            valid = row_mask[:, None] & col_mask[None, :]
            if pass_index == 1:  # the self term is not a negative
                valid = valid & (rows[:, None] != cols[None, :])
            logits = tl.where(valid, logits, float("-inf"))
            m_new = tl.maximum(m, tl.max(logits, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(logits - m_safe[:, None]), axis=1)
            m = m_new
    tl.store(partial_lse_ptr + tl.program_id(1) * batch + rows, m + tl.log(l), mask=row_mask)


@triton.jit
def _grad_rows_kernel(
    x_ptr, y_ptr, s_ptr, g_ptr, lse_x_ptr, lse_y_ptr, dx_ptr, dlogit_logit_ptr, weight_x, weight_y, batch, d,
    cols_per_split,
    X_SIDE: tl.constexpr, Y_SIDE: tl.constexpr, INTRA: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < batch
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < d
    x = _load_rows(x_ptr, rows, row_mask, dims, dim_mask, d, UPCAST)
    s = tl.load(s_ptr).to(ACC)
    g_rows = tl.load(g_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    lse_rows = tl.load(lse_x_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    dlogit_logit = tl.zeros([BLOCK_M], ACC)  # sum_j dL_ij L_ij: the temperature gradient, before any rounding
    col_start = tl.program_id(1) * cols_per_split
    col_end = tl.minimum(col_start + cols_per_split, batch)
    # X against Y: the X-side denominators (rows) and, when Y_SIDE, the Y-side ones (columns).
    for j0 in range(col_start, col_end, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        col_mask = cols < col_end
        y = _load_rows(y_ptr, cols, col_mask, dims, dim_mask, d, UPCAST)
        logits = tl.dot(x, tl.trans(y), out_dtype=ACC, input_precision=DOT_PRECISION) * s
        diagonal = rows[:, None] == cols[None, :]
        dl = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        if X_SIDE:
            dl += weight_x * g_rows[:, None] * (tl.exp(logits - lse_rows[:, None]) - tl.where(diagonal, 1.0, 0.0))
        if Y_SIDE:
            g_cols = tl.load(g_ptr + cols, mask=col_mask, other=0.0).to(ACC)
            lse_cols = tl.load(lse_y_ptr + cols, mask=col_mask, other=0.0).to(ACC)
            dl += weight_y * g_cols[None, :] * (tl.exp(logits - lse_cols[None, :]) - tl.where(diagonal, 1.0, 0.0))
        dl = tl.where(row_mask[:, None] & col_mask[None, :], dl, 0.0)
        dlogit_logit += tl.sum(dl * logits, axis=1)
        acc += tl.dot(dl.to(y.dtype), y, out_dtype=ACC, input_precision=DOT_PRECISION)
    # X against X (intra-view negatives): both halves of the symmetric matrix's gradient land on row i.
    if INTRA:
        for j0 in range(col_start, col_end, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            col_mask = cols < col_end
            other = _load_rows(x_ptr, cols, col_mask, dims, dim_mask, d, UPCAST)
            logits = tl.dot(x, tl.trans(other), out_dtype=ACC, input_precision=DOT_PRECISION) * s
            g_cols = tl.load(g_ptr + cols, mask=col_mask, other=0.0).to(ACC)
            lse_cols = tl.load(lse_x_ptr + cols, mask=col_mask, other=0.0).to(ACC)
            dm = weight_x * (
                g_rows[:, None] * tl.exp(logits - lse_rows[:, None]) + g_cols[None, :] * tl.exp(logits - lse_cols[None, :])
            )
            valid = row_mask[:, None] & col_mask[None, :] & (rows[:, None] != cols[None, :])
            dm = tl.where(valid, dm, 0.0)
            dlogit_logit += tl.sum(dm * logits, axis=1)
            acc += tl.dot(dm.to(other.dtype), other, out_dtype=ACC, input_precision=DOT_PRECISION)
    acc = acc * s
    split = tl.program_id(1)
    tl.store(dx_ptr + split * batch * d + rows[:, None] * d + dims[None, :], acc, mask=row_mask[:, None] & dim_mask[None, :])
    tl.store(dlogit_logit_ptr + split * batch + rows, dlogit_logit, mask=row_mask)


@triton.jit
def _storable(value, dst_ptr, BF16_BY_HAND: tl.constexpr):
    """value in dst's dtype. BF16_BY_HAND: Triton 3.9's interpreter truncates fp32 -> bf16 where a GPU rounds to
    nearest even, so there the rounding is done on the bits first (the cast is then exact)."""
    if BF16_BY_HAND:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        value = bits.to(tl.float32, bitcast=True)
    return value.to(dst_ptr.dtype.element_ty)


@triton.jit
def _normalize_block(
    src_ptr, dst_ptr, inv_ptr, rows, row_mask, dims, dim_mask, d, ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr
):
    """dst = src / max(|src|, eps) for the rows `rows` (F.normalize), computed in ACC, stored in dst's dtype;
    1 / max(|src|, eps) to inv_ptr."""
    mask = row_mask[:, None] & dim_mask[None, :]
    block = tl.load(src_ptr + rows[:, None] * d + dims[None, :], mask=mask, other=0.0).to(ACC)
    sum_sq = tl.sum(block * block, axis=1)
    # IEEE square root and division, as torch: Triton's default fp32 ones are approximate, and a row of d = 1 must
    # come out exactly +-1 (its gradient is then exactly 0).
    if ACC == tl.float64:
        norm = tl.maximum(tl.sqrt(sum_sq), tl.full([1], NORM_EPS, ACC))
        x, inv_norm = block / norm[:, None], 1.0 / norm
    else:
        norm = tl.maximum(tl.math.sqrt_rn(sum_sq), tl.full([1], NORM_EPS, ACC))
        x = tl.math.div_rn(block, norm[:, None] + tl.zeros_like(block))  # div_rn does not broadcast
        inv_norm = tl.math.div_rn(tl.zeros_like(norm) + 1.0, norm)
    tl.store(dst_ptr + rows[:, None] * d + dims[None, :], _storable(x, dst_ptr, BF16_BY_HAND), mask=mask)
    tl.store(inv_ptr + rows, inv_norm, mask=row_mask)


@triton.jit
def _normalize_rows_kernel(
    a_ptr, b_ptr, x_ptr, y_ptr, inv_a_ptr, inv_b_ptr, batch, d,
    ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The prologue: both inputs' rows normalised in one launch (BLOCK_R rows a program)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    dims = tl.arange(0, BLOCK_D)
    _normalize_block(a_ptr, x_ptr, inv_a_ptr, rows, rows < batch, dims, dims < d, d, ACC, BF16_BY_HAND)
    _normalize_block(b_ptr, y_ptr, inv_b_ptr, rows, rows < batch, dims, dims < d, d, ACC, BF16_BY_HAND)


@triton.jit
def _combine_splits(partial_ptr, rows, row_mask, batch, splits, ACC: tl.constexpr, BLOCK_R: tl.constexpr):
    """log-sum-exp over the splits of the (splits, batch) partial log-sum-exps, rows `rows`, in split order."""
    m = tl.full([BLOCK_R], float("-inf"), ACC)
    for k in range(0, splits):
        m = tl.maximum(m, tl.load(partial_ptr + k * batch + rows, mask=row_mask, other=0.0))
    l = tl.zeros([BLOCK_R], ACC)
    for k in range(0, splits):
        l += tl.exp(tl.load(partial_ptr + k * batch + rows, mask=row_mask, other=0.0) - m)
    return m + tl.log(l)


@triton.jit
def _loss_rows_kernel(
    x_ptr, y_ptr, s_ptr, partial_lse_a_ptr, partial_lse_b_ptr, lse_a_ptr, lse_b_ptr, loss_ptr, batch, d, splits,
    SYMMETRIC: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The forward's epilogue, row-wise: the splits' log-sum-exps combined, the positive logit s x_i . y_i, and
    loss_i = lse_i - positive_i (symmetric: the mean of both sides')."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < batch
    dims = tl.arange(0, BLOCK_D)
    x = _load_rows(x_ptr, rows, row_mask, dims, dims < d, d, False).to(ACC)
    y = _load_rows(y_ptr, rows, row_mask, dims, dims < d, d, False).to(ACC)
    positive = tl.load(s_ptr).to(ACC) * tl.sum(x * y, axis=1)
    lse_a = _combine_splits(partial_lse_a_ptr, rows, row_mask, batch, splits, ACC, BLOCK_R)
    tl.store(lse_a_ptr + rows, lse_a, mask=row_mask)
    if SYMMETRIC:
        lse_b = _combine_splits(partial_lse_b_ptr, rows, row_mask, batch, splits, ACC, BLOCK_R)
        tl.store(lse_b_ptr + rows, lse_b, mask=row_mask)
        loss = 0.5 * ((lse_a - positive) + (lse_b - positive))
    else:
        loss = lse_a - positive
    tl.store(loss_ptr + rows, loss, mask=row_mask)


@triton.jit
def _finish_grad_side(
    partial_ptr, partial_t_ptr, x_ptr, inv_ptr, out_ptr, rows, row_mask, dims, dim_mask, batch, d, splits,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One side's gradient rows: the splits' partial dX summed in split order, then the normalisation's backward
    (g - x (x . g)) / |a| (g / eps where |a| <= eps), stored in the input's dtype; returns the rows' dL L sums."""
    mask = row_mask[:, None] & dim_mask[None, :]
    grad = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    dlogit_logit = tl.zeros([BLOCK_R], ACC)
    for k in range(0, splits):
        grad += tl.load(partial_ptr + k * batch * d + rows[:, None] * d + dims[None, :], mask=mask, other=0.0)
        dlogit_logit += tl.load(partial_t_ptr + k * batch + rows, mask=row_mask, other=0.0)
    if NORMALIZE:
        x = _load_rows(x_ptr, rows, row_mask, dims, dim_mask, d, False).to(ACC)
        inv_norm = tl.load(inv_ptr + rows, mask=row_mask, other=1.0)
        projected = grad - x * tl.sum(x * grad, axis=1)[:, None]
        clamped = inv_norm >= 1.0 / NORM_EPS
        grad = tl.where(clamped[:, None], grad, projected) * inv_norm[:, None]
    tl.store(out_ptr + rows[:, None] * d + dims[None, :], _storable(grad, out_ptr, BF16_BY_HAND), mask=mask)
    return dlogit_logit


@triton.jit
def _finish_grad_kernel(
    partial_dx_ptr, partial_dy_ptr, partial_tx_ptr, partial_ty_ptr, x_ptr, y_ptr, inv_a_ptr, inv_b_ptr,
    grad_a_ptr, grad_b_ptr, dlogit_logit_ptr, batch, d, splits,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, BF16_BY_HAND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The backward's epilogue, row-wise, both sides in one launch; per-row dL L sums of both sides to
    dlogit_logit_ptr."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < batch
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < d
    t_a = _finish_grad_side(
        partial_dx_ptr, partial_tx_ptr, x_ptr, inv_a_ptr, grad_a_ptr, rows, row_mask, dims, dim_mask, batch, d, splits,
        NORMALIZE, ACC, BF16_BY_HAND, BLOCK_R, BLOCK_D,
    )  # fmt: skip
    t_b = _finish_grad_side(
        partial_dy_ptr, partial_ty_ptr, y_ptr, inv_b_ptr, grad_b_ptr, rows, row_mask, dims, dim_mask, batch, d, splits,
        NORMALIZE, ACC, BF16_BY_HAND, BLOCK_R, BLOCK_D,
    )  # fmt: skip
    tl.store(dlogit_logit_ptr + rows, t_a + t_b, mask=row_mask)


def _config(x: torch.Tensor) -> dict:
    """Accumulation dtype, dot precision, block shapes and warps, chosen on a GPU by the sweeps of
    benchmarks/tune_gpu.py (B = 8192 forward + backward; figures in benchmarks/results/tune-h100-*.txt): fp32 tiles
    as 3xTF32 products (tensor cores, with an error against float64 below exact FMA products') rather than exact
    "ieee" products; with the column splits, 128 x 64 tiles on 8 warps for d <= 64 and 32 x 32 for d <= 128;
    exact products (float64) keep the first sweep's smaller tiles."""
    acc = TL_DTYPES[accumulation_dtype(x.dtype)]
    block_d = max(16, triton.next_power_of_2(x.shape[1]))
    if x.dtype == torch.float64:
        precision = "ieee"
    elif x.dtype == torch.float32:
        precision = "ieee" if INTERPRETED else "tf32x3"
    else:
        precision = "tf32"  # fp16 / bf16 products are exact on the tensor cores whatever this says
    # Triton 3.9's interpreter computes tl.dot on bfloat16 operands wrongly (values ~1e10): there, bf16 tiles are
    # upcast to fp32 after loading (the products of bf16 values are exact in fp32, so the results agree).
    upcast = _interpreter_bf16(x)
    if upcast:
        precision = "ieee"
    if INTERPRETED:  # the interpreter's cost is per program, not per element: larger blocks
        block_m, block_n, warps = 64, 64, 4
    elif precision == "ieee":  # exact products (float64): the first H100 sweep
        block_m, block_n, warps = (64, 64, 4) if block_d <= 64 else ((64, 32, 4) if block_d <= 128 else (32, 32, 4))
    else:  # tensor-core products: the second H100 sweep, with column splits
        block_m, block_n, warps = (128, 64, 8) if block_d <= 64 else (32, 32, 4)
    config = dict(ACC=acc, DOT_PRECISION=precision, UPCAST=upcast, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    return {**config, "num_warps": warps, **TUNING}


#: Overrides of the launch configuration (BLOCK_M, BLOCK_N, DOT_PRECISION, num_warps, num_stages) for tuning runs
#: (benchmarks/tune_gpu.py); empty in normal use.
TUNING: dict = {}


#: Programs per multiprocessor the column split aims at (H100 sweep, benchmarks/tune_gpu.py); in the interpreter,
#: programs in all (so that the tests' batches of ~100 rows take the split path).
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 16
#: The partial dX buffers of the split may take at most this many bytes (beyond it, fewer splits).
SPLIT_BUFFER_BYTES = 128 << 20


def _column_splits(x: torch.Tensor, cfg: dict) -> tuple[int, int]:
    """(splits, columns per split): the grid's second axis. One program per BLOCK_M rows leaves a GPU mostly idle
    (B = 8192 at 64 rows: 128 programs for 132 multiprocessors), so the columns are cut into equal runs of whole
    BLOCK_N tiles, one program each; the partial log-sum-exps and gradients are combined afterwards in split order
    (deterministic, no atomics). TUNING["COLUMN_SPLITS"] sets the count."""
    batch, d = x.shape
    row_blocks = triton.cdiv(batch, cfg["BLOCK_M"])
    col_blocks = triton.cdiv(batch, cfg["BLOCK_N"])
    if "COLUMN_SPLITS" in TUNING:
        wanted = TUNING["COLUMN_SPLITS"]
    else:
        programs = INTERPRETER_PROGRAMS if INTERPRETED else PROGRAMS_PER_SM * _multiprocessors(x.device)
        wanted = triton.cdiv(programs, row_blocks)
    acc_bytes = accumulation_dtype(x.dtype).itemsize  # the partial buffers are in the accumulation dtype
    wanted = max(1, min(wanted, col_blocks, SPLIT_BUFFER_BYTES // max(1, batch * d * acc_bytes)))
    blocks_per_split = triton.cdiv(col_blocks, wanted)
    return triton.cdiv(col_blocks, blocks_per_split), blocks_per_split * cfg["BLOCK_N"]


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_config(x: torch.Tensor) -> tuple[dict, tuple[int, int], int]:
    """(kernel configuration, grid, columns per split)."""
    cfg = _config(x)
    splits, cols_per_split = _column_splits(x, cfg)
    kernel_cfg = {key: value for key, value in cfg.items() if key != "COLUMN_SPLITS"}
    return kernel_cfg, (triton.cdiv(x.shape[0], cfg["BLOCK_M"]), splits), cols_per_split


def _row_config(x: torch.Tensor) -> dict:
    """ACC, BLOCK_R, BLOCK_D (and the interpreter's bf16 rounding) of the row-wise kernels: whole rows, about 2048
    elements a program."""
    cfg = _config(x)
    block_d = triton.next_power_of_2(x.shape[1])
    return dict(ACC=cfg["ACC"], BLOCK_R=max(1, 2048 // block_d), BLOCK_D=block_d)


def _interpreter_bf16(x: torch.Tensor) -> bool:
    """Triton 3.9's interpreter mishandles bfloat16 (tl.dot on bf16 operands, fp32 -> bf16 casts): the tile kernels
    upcast bf16 tiles (UPCAST) and the row kernels round bf16 stores by hand (BF16_BY_HAND) there."""
    return INTERPRETED and x.dtype == torch.bfloat16


def _row_grid(x: torch.Tensor, cfg: dict) -> tuple[int]:
    return (triton.cdiv(x.shape[0], cfg["BLOCK_R"]),)


def _normalized(a, b, normalize):
    """(x, y, 1 / max(|a_i|, eps), 1 / max(|b_i|, eps)): the rows for the logits in the inputs' dtype, computed in
    the accumulation dtype by one launch; with normalize=False a and b themselves (and no norms)."""
    if not normalize:
        return a, b, None, None
    batch, d = a.shape
    acc = accumulation_dtype(a.dtype)
    x, y = torch.empty_like(a), torch.empty_like(b)
    inv_a, inv_b = torch.empty(batch, dtype=acc, device=a.device), torch.empty(batch, dtype=acc, device=a.device)
    cfg = _row_config(a)
    _normalize_rows_kernel[_row_grid(a, cfg)](a, b, x, y, inv_a, inv_b, batch, d, BF16_BY_HAND=_interpreter_bf16(a), **cfg)
    return x, y, inv_a, inv_b


def _partial_row_lse(x, y, s, intra):
    """(splits, B): each split's log-sum-exp over its columns."""
    batch, d = x.shape
    cfg, grid, cols_per_split = _launch_config(x)
    acc = accumulation_dtype(x.dtype)
    partial_lse = torch.empty(grid[1], batch, dtype=acc, device=x.device)
    _row_lse_kernel[grid](x, y, s, partial_lse, batch, d, cols_per_split, INTRA=intra, **cfg)
    return partial_lse


def forward(a, b, temperature, normalize, symmetric, intra):
    """(loss (B,), lse_a (B,), lse_b (B,) or (0,)), all in the accumulation dtype."""
    x, y, _, _ = _normalized(a, b, normalize)
    return _loss(x, y, torch.reciprocal(temperature).reshape(1), symmetric, intra)


def _loss(x, y, s, symmetric, intra):
    """(loss (B,), lse_a (B,), lse_b (B,) or (0,)) from the rows of the logits and s = 1 / t."""
    batch, d = x.shape
    partial_a = _partial_row_lse(x, y, s, intra)
    partial_b = _partial_row_lse(y, x, s, intra) if symmetric else partial_a
    lse_a, loss = torch.empty_like(partial_a[0]), torch.empty_like(partial_a[0])
    lse_b = torch.empty_like(lse_a) if symmetric else lse_a.new_empty(0)
    cfg = _row_config(x)
    _loss_rows_kernel[_row_grid(x, cfg)](
        x, y, s, partial_a, partial_b, lse_a, lse_b, loss, batch, d, partial_a.shape[0], SYMMETRIC=symmetric, **cfg
    )
    return loss, lse_a, lse_b


def _partial_grad_rows(x, y, s, g, lse_x, lse_y, weight_x, weight_y, intra):
    """((splits, B, d), (splits, B)): each split's share of dX (before the normalisation's backward) and of the
    per-row sums dL_ij L_ij."""
    batch, d = x.shape
    cfg, grid, cols_per_split = _launch_config(x)
    partial_dx = torch.empty(grid[1], batch, d, dtype=lse_x.dtype, device=x.device)
    partial_dlogit_logit = torch.empty(grid[1], batch, dtype=lse_x.dtype, device=x.device)
    _grad_rows_kernel[grid](
        x, y, s, g, lse_x, lse_y, partial_dx, partial_dlogit_logit, float(weight_x), float(weight_y), batch, d,
        cols_per_split, X_SIDE=weight_x != 0, Y_SIDE=weight_y != 0, INTRA=intra, **cfg
    )
    return partial_dx, partial_dlogit_logit


def backward(grad_loss, a, b, temperature, lse_a, lse_b, normalize, symmetric, intra):
    """(grad_a, grad_b, grad_temperature) of sum_i grad_loss_i loss_i."""
    x, y, inv_a, inv_b = _normalized(a, b, normalize)
    s = torch.reciprocal(temperature).reshape(1)
    return _gradients(a, b, x, y, inv_a, inv_b, temperature, s, grad_loss.to(lse_a.dtype).contiguous(), lse_a, lse_b, symmetric, intra)


def fused(a, b, temperature, normalize, symmetric, intra, weights):
    """(sum_i weights_i loss_i, grad_a, grad_b, grad_temperature) of that sum, in one call: the forward and the
    backward passes back to back, the normalised rows made once (the op behind reduction="mean"/"sum" when a
    gradient is needed; its backward only scales the three gradients)."""
    x, y, inv_a, inv_b = _normalized(a, b, normalize)
    s = torch.reciprocal(temperature).reshape(1)
    loss, lse_a, lse_b = _loss(x, y, s, symmetric, intra)
    grad_a, grad_b, grad_t = _gradients(a, b, x, y, inv_a, inv_b, temperature, s, weights, lse_a, lse_b, symmetric, intra)
    return torch.dot(weights, loss), grad_a, grad_b, grad_t


def _gradients(a, b, x, y, inv_a, inv_b, temperature, s, g, lse_a, lse_b, symmetric, intra):
    """(grad_a, grad_b, grad_temperature) of sum_i g_i loss_i, given the rows x, y of the logits (inv_a / inv_b:
    the inverse norms, None without normalisation) and the log-sum-exps."""
    batch, d = a.shape
    w_a, w_b = (0.5, 0.5) if symmetric else (1.0, 0.0)
    lse_b_or_a = lse_b if symmetric else lse_a  # never read in the one-way case (weight 0, no Y side)
    # dX: rows of a against b (columns: the b->a side when symmetric) and, intra, against a.
    dx, tx = _partial_grad_rows(x, y, s, g, lse_a, lse_b_or_a, w_a, w_b, intra)
    # dY: the same kernel with the sides swapped; in the one-way case the b side has no denominators of its own.
    if symmetric:
        dy, ty = _partial_grad_rows(y, x, s, g, lse_b, lse_a, w_b, w_a, intra)
    else:
        dy, ty = _partial_grad_rows(y, x, s, g, lse_a, lse_a, 0.0, w_a, False)
    grad_a, grad_b, dlogit_logit = torch.empty_like(a), torch.empty_like(b), torch.empty_like(g)
    normalize = inv_a is not None
    cfg = _row_config(a)
    # Without normalisation the inverse-norm pointers are not read: g stands in for them.
    _finish_grad_kernel[_row_grid(a, cfg)](
        dx, dy, tx, ty, x, y, inv_a if normalize else g, inv_b if normalize else g, grad_a, grad_b, dlogit_logit,
        batch, d, dx.shape[0], NORMALIZE=normalize, BF16_BY_HAND=_interpreter_bf16(a), **cfg,
    )  # fmt: skip
    # dloss/ds = sum over every logit of dL L / s; the two launches see each logit's full gradient once each
    # (intra: both halves of M on each row), so their per-row sums add up to twice that sum: dloss/dt is
    # -(sum dL L) / (2 t).
    grad_t = dlogit_logit.sum().div(temperature).mul(-0.5)
    return grad_a, grad_b, grad_t.to(temperature.dtype)
