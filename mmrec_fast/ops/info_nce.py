"""info_nce: registration, autograd, dispatch and argument checks.

Operators (schemas in csrc/mmrec_fast.cpp for the native ones; the Triton ones are Python custom ops of the same
form), a, b: (B, d), temperature: 0-dim tensor in the accumulation dtype, on a's device:

    info_nce(a, b, temperature, normalize, symmetric, intra_view_negatives) -> (loss (B,), lse_a (B,), lse_b)
        (all three in the accumulation dtype: float32 for float16 / bfloat16 inputs, so that a reduction and the
        per-row weights its backward hands back stay in float32)
    info_nce_backward(grad_loss (B,), a, b, temperature, lse_a, lse_b, ...) -> (grad_a, grad_b, grad_temperature)
    info_nce_fused(a, b, temperature, ..., weights (B,)) -> (sum_i weights_i loss_i, grad_a, grad_b, grad_temperature)

``info_nce`` saves only the inputs and the per-row log-sum-exps (lse_b: the b->a ones, (0,) unless symmetric); its
backward recomputes the logit tiles. ``info_nce_fused`` (native CPU, and Triton as ``info_nce_fused_triton``)
computes the gradient in the forward: it runs when the reduction is "mean" or "sum" and a gradient is needed, and
its backward only scales the saved gradients by grad_output. On the CPU it reuses the forward's tiles
(csrc/cpu/info_nce.cpp says why, with the measurements); on a GPU it runs the same kernels as the two-op path but
in one call, which saves the host the second custom op and its autograd node (a GPU call at B = 8192 is
host-bound: benchmarks/results/info_nce-h100-*.txt). The loss is reduced here, in Python, for
``info_nce``; backward is not itself differentiable (no double backward).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .. import _native, backends, reference
from ..backends import accumulation_dtype

SUPPORT = backends.OpSupport(
    "info_nce",
    dtypes={
        ("reference", "cpu"): backends.FLOAT_DTYPES,
        ("reference", "cuda"): backends.FLOAT_DTYPES,
        ("native", "cpu"): (torch.float32, torch.float64),
        ("triton", "cpu"): backends.FLOAT_DTYPES,
        ("triton", "cuda"): backends.FLOAT_DTYPES,
    },
    # No native CUDA kernel for this op: Triton serves the GPU.
    preference={"cpu": ("native", "reference"), "cuda": ("triton", "reference")},
)

REDUCTIONS = ("mean", "sum", "none")

#: The smallest temperature info_nce takes (for float16 inputs: float16's smallest normal number, 6.1e-5, if
#: larger; see :func:`min_temperature`). Below it the float32 logits of unit rows, up to 1 / t, keep no digit of
#: the loss (their ulp is 0.06 at 1e6), and 1 / t^2 in the temperature gradient heads for overflow; at a subnormal
#: t (1e-40 in float32) the logits overflow and every backend returned NaN. Temperatures in use are 0.05 to 1.
MIN_TEMPERATURE = 1e-6


def min_temperature(dtype: torch.dtype) -> float:
    """max(MIN_TEMPERATURE, the smallest normal number of ``dtype``): for float16 inputs 6.1e-5, where the
    logits (up to 1 / t) and the losses (up to ~2 / t), float16 on the reference backend and in the returned
    loss, stay below float16's 65504."""
    return max(MIN_TEMPERATURE, torch.finfo(dtype).tiny)
_FORWARD_TRITON = "mmrec_fast::info_nce_triton"
_BACKWARD_TRITON = "mmrec_fast::info_nce_backward_triton"
_FUSED_TRITON = "mmrec_fast::info_nce_fused_triton"


@torch.library.custom_op(_FORWARD_TRITON, mutates_args=())
def _info_nce_triton(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, normalize: bool, symmetric: bool, intra_view_negatives: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mmrec_fast.kernels import info_nce as triton_info_nce

    return triton_info_nce.forward(a, b, temperature, normalize, symmetric, intra_view_negatives)


@torch.library.custom_op(_BACKWARD_TRITON, mutates_args=())
def _info_nce_backward_triton(
    grad_loss: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, lse_a: torch.Tensor,
    lse_b: torch.Tensor, normalize: bool, symmetric: bool, intra_view_negatives: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    from mmrec_fast.kernels import info_nce as triton_info_nce

    return triton_info_nce.backward(grad_loss, a, b, temperature, lse_a, lse_b, normalize, symmetric, intra_view_negatives)


@torch.library.custom_op(_FUSED_TRITON, mutates_args=())
def _info_nce_fused_triton(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, normalize: bool, symmetric: bool,
    intra_view_negatives: bool, weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    from mmrec_fast.kernels import info_nce as triton_info_nce

    return triton_info_nce.fused(a, b, temperature, normalize, symmetric, intra_view_negatives, weights)


def _forward_fake(a, b, temperature, normalize, symmetric, intra_view_negatives):
    batch, acc = a.shape[0], accumulation_dtype(a.dtype)
    return a.new_empty(batch, dtype=acc), a.new_empty(batch, dtype=acc), a.new_empty(batch if symmetric else 0, dtype=acc)


def _backward_fake(grad_loss, a, b, temperature, lse_a, lse_b, normalize, symmetric, intra_view_negatives):
    return torch.empty_like(a), torch.empty_like(b), temperature.new_empty(())


def _fused_fake(a, b, temperature, normalize, symmetric, intra_view_negatives, weights):
    return a.new_empty(()), torch.empty_like(a), torch.empty_like(b), temperature.new_empty(())


def _forward_setup_context(ctx, inputs, output):
    a, b, temperature, normalize, symmetric, intra = inputs
    _, lse_a, lse_b = output
    ctx.save_for_backward(a, b, temperature, lse_a, lse_b)
    ctx.flags = (normalize, symmetric, intra)


def _backward_through(backward_op):
    def backward(ctx, grad_loss, _grad_lse_a, _grad_lse_b):
        a, b, temperature, lse_a, lse_b = ctx.saved_tensors
        grad_a, grad_b, grad_t = backward_op(grad_loss.contiguous(), a, b, temperature, lse_a, lse_b, *ctx.flags)
        return grad_a, grad_b, grad_t, None, None, None

    return backward


def _fused_setup_context(ctx, inputs, output):
    _, grad_a, grad_b, grad_t = output
    ctx.save_for_backward(grad_a, grad_b, grad_t)


def _fused_backward(ctx, grad_loss, _ga, _gb, _gt):
    grad_a, grad_b, grad_t = ctx.saved_tensors
    return grad_a * grad_loss, grad_b * grad_loss, grad_t * grad_loss, None, None, None, None


def _register_triton() -> None:
    torch.library.register_fake(_FORWARD_TRITON)(_forward_fake)
    torch.library.register_fake(_BACKWARD_TRITON)(_backward_fake)
    torch.library.register_fake(_FUSED_TRITON)(_fused_fake)
    torch.library.register_autograd(
        _FORWARD_TRITON, _backward_through(torch.ops.mmrec_fast.info_nce_backward_triton), setup_context=_forward_setup_context
    )
    torch.library.register_autograd(_FUSED_TRITON, _fused_backward, setup_context=_fused_setup_context)


def _register_native() -> None:
    torch.library.register_fake("mmrec_fast::info_nce")(_forward_fake)
    torch.library.register_fake("mmrec_fast::info_nce_backward")(_backward_fake)
    torch.library.register_fake("mmrec_fast::info_nce_fused")(_fused_fake)
    torch.library.register_autograd(
        "mmrec_fast::info_nce", _backward_through(torch.ops.mmrec_fast.info_nce_backward), setup_context=_forward_setup_context
    )
    torch.library.register_autograd("mmrec_fast::info_nce_fused", _fused_backward, setup_context=_fused_setup_context)


_register_triton()
_native.on_load(_register_native)


def _check(a, b, temperature, normalize, symmetric, intra_view_negatives, reduction) -> None:
    for name, t in (("a", a), ("b", b)):
        backends.check_float_matrix("info_nce", name, t, "(B, d)")
    if a.shape != b.shape:
        raise ValueError(f"info_nce: a and b must have the same shape (B, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError("info_nce: the batch is empty (B = 0); InfoNCE needs at least one positive pair")
    if a.shape[1] == 0:
        raise ValueError("info_nce: the embeddings are empty (d = 0)")
    if a.dtype != b.dtype:
        raise TypeError(f"info_nce: a and b must share a dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"info_nce: a is on {a.device} but b is on {b.device}; move one with .to()")
    for name, flag in (("normalize", normalize), ("symmetric", symmetric), ("intra_view_negatives", intra_view_negatives)):
        if not isinstance(flag, bool):
            raise TypeError(f"info_nce: {name} must be a bool, got {flag!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"info_nce: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    bound = min_temperature(a.dtype)
    bad = (f"info_nce: temperature must be finite and >= {bound:.3g} for {a.dtype} inputs "
           f"(max(1e-6, the smallest normal {a.dtype}))")  # fmt: skip
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1:
            raise ValueError(f"info_nce: temperature must be a float or a 0-dim tensor, got shape {tuple(temperature.shape)}")
        if not temperature.is_floating_point():
            raise TypeError(f"info_nce: a temperature tensor must be floating point, got {temperature.dtype}")
        if temperature.device != a.device and temperature.device.type != "cpu":
            raise ValueError(f"info_nce: temperature is on {temperature.device} but a is on {a.device}")
        if not torch.compiler.is_compiling():
            # The bound rounded to the tensor's dtype (1e-6 in float32 is 9.99999997e-07), so that a tensor made
            # from the bound itself passes, here and in the native operator's check.
            held = float(torch.tensor(bound, dtype=temperature.dtype))
            if temperature.device.type == "cpu":
                value = float(temperature.detach())
                if not (value >= held and math.isfinite(value)):
                    raise ValueError(f"{bad}, got {value}")
            else:  # no host sync: checked on the device
                ok = (temperature.detach() >= held) & torch.isfinite(temperature.detach())
                torch._assert_async(ok.reshape(()), bad)
    elif isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        if not (temperature >= bound and math.isfinite(temperature)):
            raise ValueError(f"{bad}, got {temperature}")
    else:
        raise TypeError(f"info_nce: temperature must be a float or a 0-dim tensor, got {type(temperature).__name__}")


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 0.2,
    *,
    normalize: bool = True,
    symmetric: bool = False,
    intra_view_negatives: bool = False,
    reduction: str = "mean",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives, in memory O(B d) on the native and Triton backends.

    Row i of ``a`` and row i of ``b`` are a positive pair; every other row of ``b`` (and, with
    ``intra_view_negatives``, every other row of ``a``) is a negative:

        loss_i = -log( exp(s_ii / t) / (sum_j exp(s_ij / t) + [intra] sum_{j != i} exp(s(a_i, a_j) / t)) )

    with s_ij = a_i . b_j, computed as ``logsumexp`` minus the positive logit (the exact log-softmax, stable for any
    t >= :func:`min_temperature`). ``symmetric`` averages it with the same loss with a and b swapped (CLIP). Repeated rows stay in as false
    negatives, as in the models.

    Args:
        a: (B, d) float16 / bfloat16 / float32 / float64 (native CPU: float32 / float64), any strides.
        b: (B, d), same dtype and device as a.
        temperature: t >= 1e-6 (6.1e-5 for float16 inputs, :func:`min_temperature`), finite; a float or a 0-dim
            tensor; a tensor that requires grad gets its gradient.
        normalize: L2-normalise the rows first, inside the op (as ``F.normalize(x, dim=1)``: x / max(|x|, 1e-12),
            so a zero row has similarity 0 with everything, never NaN); gradients flow through it. False: raw
            dot-product logits.
        symmetric: average the a->b and b->a losses.
        intra_view_negatives: the GRACE form: the other rows of the anchor's own view join the denominator
            (the self term excluded).
        reduction: "mean" | "sum" -> 0-dim tensor, "none" -> (B,) per-row losses.
        backend: "reference" | "native" | "triton" | None (see :mod:`mmrec_fast.backends`). CPU: native, GPU:
            Triton (there is no native CUDA kernel for this op).

    Returns:
        The loss in a's dtype (computed with float32 accumulation, float64 for float64).

    How the models map onto it:
        * SLMRec main loss: ``info_nce(u, i, 0.2)`` (normalised, one-way, mean; CrossEntropyLoss over
          ``normalize(u) @ normalize(i).T / 0.2``). SLMRec FAC: ``info_nce(x, y, ssl_temp, normalize=False)``.
        * MMSSL: ``info_nce(z1, z2, 0.5, intra_view_negatives=True)``. MMSSL computes
          ``-log(p_i + 1e-8)``; this op computes ``-log(p_i)`` exactly. The two differ by log(1 + 1e-8 / p_i):
          below 2e-5 for any p_i >= 5e-4 (p_i >= 1 / (2B) whenever the positive is at least as similar as the
          average negative at B = 1024), and MMSSL's form saturates at -log(1e-8) = 18.4 where this one does not.
        * MENTOR: ``info_nce(n1_users, n2_users, t)`` with all U users (full population, B = U; O(B d) memory),
          same for items. MENTOR takes exp without subtracting the max: the same math, which overflows in
          float32 for t < ~0.0115; this op does not.
        * CLIP-style symmetric losses: ``symmetric=True``.

    When a gradient is needed and the reduction is "mean" or "sum", the forward also computes the gradient (the
    backward then only scales it); with "none" the backward recomputes the tiles.
    """
    _check(a, b, temperature, normalize, symmetric, intra_view_negatives, reduction)
    chosen = backends.resolve(SUPPORT, a, backend)
    if chosen == "reference":
        return reference.info_nce(a, b, temperature, normalize, symmetric, intra_view_negatives, reduction)
    acc = accumulation_dtype(a.dtype)
    if isinstance(temperature, torch.Tensor):
        t = temperature.reshape(()).to(device=a.device, dtype=acc)
    else:
        # torch.full fills on the device; torch.tensor copies from pageable host memory, which is ordered with the
        # stream's work (193 us a call on the H100's host in the profile, against ~12 us for a small torch op).
        t = torch.full((), float(temperature), dtype=acc, device=a.device)
    a, b = a.contiguous(), b.contiguous()
    needs_grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or t.requires_grad)
    if needs_grad and reduction != "none":
        batch = a.shape[0]
        weights = torch.full((batch,), 1.0 / batch if reduction == "mean" else 1.0, dtype=acc, device=a.device)
        fused = torch.ops.mmrec_fast.info_nce_fused if chosen == "native" else torch.ops.mmrec_fast.info_nce_fused_triton
        loss = fused(a, b, t, normalize, symmetric, intra_view_negatives, weights)[0]
        return loss.to(a.dtype)
    op = torch.ops.mmrec_fast.info_nce if chosen == "native" else torch.ops.mmrec_fast.info_nce_triton
    rows = op(a, b, t, normalize, symmetric, intra_view_negatives)[0]  # in the accumulation dtype
    if reduction == "mean":
        rows = rows.mean()
    elif reduction == "sum":
        rows = rows.sum()
    return rows.to(a.dtype)


class InfoNCE(torch.nn.Module):
    """:func:`info_nce` as a module, for model code: ``loss = InfoNCE(0.2)(user_emb, item_emb)``.

    Args:
        temperature: initial t >= 1e-6 (float).
        learnable_temperature: hold t as a parameter (``self.temperature``) that receives its gradient.
        normalize, symmetric, intra_view_negatives, reduction, backend: as in :func:`info_nce`.

    forward(a (B, d), b (B, d)) -> 0-dim loss ((B,) with reduction="none").
    """

    def __init__(
        self,
        temperature: float = 0.2,
        *,
        learnable_temperature: bool = False,
        normalize: bool = True,
        symmetric: bool = False,
        intra_view_negatives: bool = False,
        reduction: str = "mean",
        backend: Optional[str] = None,
    ):
        super().__init__()
        if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
                and temperature >= MIN_TEMPERATURE and math.isfinite(temperature)):  # fmt: skip
            raise ValueError(f"InfoNCE: temperature must be a finite float >= {MIN_TEMPERATURE:g}, got {temperature!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"InfoNCE: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if learnable_temperature:
            self.temperature = torch.nn.Parameter(torch.tensor(float(temperature)))
        else:
            self.temperature = float(temperature)
        self.normalize, self.symmetric, self.intra_view_negatives = normalize, symmetric, intra_view_negatives
        self.reduction, self.backend = reduction, backend

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return info_nce(
            a, b, self.temperature, normalize=self.normalize, symmetric=self.symmetric,
            intra_view_negatives=self.intra_view_negatives, reduction=self.reduction, backend=self.backend,
        )  # fmt: skip

    def extra_repr(self) -> str:
        t = self.temperature if isinstance(self.temperature, float) else f"{self.temperature.item():g} (learnable)"
        return (
            f"temperature={t}, normalize={self.normalize}, symmetric={self.symmetric}, "
            f"intra_view_negatives={self.intra_view_negatives}, reduction={self.reduction!r}"
        )
