"""The parity rules of DESIGN.md, in one place.

* float64: each backend matches the float64 reference to 1e-10, relative to the largest reference magnitude.
* float32: a tolerance scaled by the reduction length K: 8 * eps32 * sqrt(K), relative to the largest magnitude
  (random rounding errors grow like sqrt(K)).
* float16 / bfloat16: the error-ratio rule (FlashAttention's): the kernel's error against the float32-accurate
  reference is at most twice the error of plain PyTorch (the reference run in the same low precision), plus a
  floor of a few ulps of the output scale for results where plain PyTorch happens to be exact.
Gradients are checked with the same rules.
"""

from __future__ import annotations

import math

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def relative_tolerance(dtype: torch.dtype, reduction_length: int) -> float:
    """Tolerance relative to the largest reference magnitude, for float64 / float32 results."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 8 * torch.finfo(torch.float32).eps * math.sqrt(max(reduction_length, 1))
    raise ValueError(f"{dtype} uses the error-ratio rule (assert_low_precision)")


def assert_matches(actual: torch.Tensor, gold: torch.Tensor, dtype: torch.dtype, reduction_length: int, what: str = ""):
    """|actual - gold| <= tol(dtype, K) * max(1, max|gold|), everywhere; gold computed in float64."""
    assert actual.shape == gold.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(gold.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    if gold.numel() == 0:
        return
    error = (actual.double().cpu() - gold.double().cpu()).abs().max().item()
    scale = max(1.0, gold.abs().max().item())
    tol = relative_tolerance(dtype, reduction_length) * scale
    assert error <= tol, f"{what}: max error {error:.3e} > tolerance {tol:.3e} ({dtype}, K={reduction_length})"


def assert_low_precision(actual: torch.Tensor, plain: torch.Tensor, gold: torch.Tensor, what: str = ""):
    """Error-ratio rule: max|actual - gold| <= 2 max|plain - gold| + floor, with `plain` the plain-PyTorch result
    in the same low precision and `gold` a float32-or-better result."""
    assert actual.shape == gold.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(gold.shape)}"
    assert actual.dtype == plain.dtype, f"{what}: dtype {actual.dtype} != {plain.dtype}"
    if gold.numel() == 0:
        return
    gold = gold.double().cpu()
    error = (actual.double().cpu() - gold).abs().max().item()
    plain_error = (plain.double().cpu() - gold).abs().max().item()
    floor = 4 * torch.finfo(actual.dtype).eps * max(1.0, gold.abs().max().item())
    assert error <= 2 * plain_error + floor, (
        f"{what}: max error {error:.3e} > 2 x plain PyTorch error {plain_error:.3e} + {floor:.1e} ({actual.dtype})"
    )


def assert_parity(run, backend: str, device: str, inputs: tuple, names: tuple[str, ...], reduction_length, what: str,
                  rescale=None) -> None:  # fmt: skip
    """The parity check every op's tests share: ``run(backend, device, *inputs) -> tuple of tensors`` (named
    ``names``) on ``backend`` / ``device`` against the float64 reference on the same (already rounded) inputs; in
    float16 / bfloat16, the error-ratio rule against the reference run in that precision (``plain``).

    Args:
        inputs: CPU tensors in the dtype under test (the dtype of ``inputs[0]``).
        reduction_length: K of the float32 / float64 tolerance (an int, or ``name -> int``).
        rescale: ``(name, actual, gold) -> (actual, gold, K)`` for a result whose natural scale is not its own
            magnitude (info_nce's temperature gradient); None: compared as they are.
    """
    dtype = inputs[0].dtype
    got = run(backend, device, *inputs)
    gold = run("reference", "cpu", *(x.double() for x in inputs))
    for name, value in zip(names, got):
        assert torch.isfinite(value).all(), f"{what} {name}: non-finite output"
        assert value.device.type == device, f"{what} {name}: on {value.device}, not {device}"
    if dtype in LOW_PRECISION:
        plain = run("reference", "cpu", *inputs)
        for name, actual, p, g in zip(names, got, plain, gold):
            assert_low_precision(actual.cpu(), p, g, f"{what} {name}")
        return
    for name, actual, g in zip(names, got, gold):
        k = reduction_length(name) if callable(reduction_length) else reduction_length
        actual, g = actual.cpu(), g.to(actual.dtype)
        if rescale is not None:
            actual, g, k = rescale(name, actual, g, k)
        assert_matches(actual, g, dtype, k, f"{what} {name}")
