"""InfoNCE microbenchmarks: the SLMRec form (normalised rows, t = 0.2, one-way, mean), float32, forward and
forward + backward, B in {1024, 2048, 8192} x d in {64, 128}, and MENTOR's full-population form (all U = 19,445
users of Baby, d = 128), with peak extra tensor memory (MB) of each forward + backward.

Baseline in the same run: the naive PyTorch form, ``F.cross_entropy(normalize(a) @ normalize(b).T / t, arange(B))``
(materialises B x B logits and their gradient). mmrec_fast native runs twice in forward + backward: "fused"
(reduction="mean": the gradient is computed in the forward, the backward scales it) and "recompute"
(reduction="none" then .mean(): the forward saves log-sum-exps, the backward recomputes the tiles) — the two designs
csrc/cpu/info_nce.cpp chooses between.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmrec_fast

from conftest import DEVICE, benchmarked_backends, peak_tensor_memory, synchronize

TEMPERATURE = 0.2
MENTOR_USERS = 19_445  # users of Amazon Baby: MENTOR's InfoNCE runs over all of them every batch


def naive(a, b):
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / TEMPERATURE
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def implementations() -> dict:
    impls = {"naive torch (normalize, mm, cross_entropy)": naive}
    for backend in benchmarked_backends("info_nce"):
        impls[f"mmrec_fast {backend} fused"] = (lambda be: lambda a, b: mmrec_fast.info_nce(a, b, TEMPERATURE, backend=be))(backend)
        impls[f"mmrec_fast {backend} recompute"] = (
            lambda be: lambda a, b: mmrec_fast.info_nce(a, b, TEMPERATURE, reduction="none", backend=be).mean()
        )(backend)
    return impls


IMPL_NAMES = [
    "mmrec_fast native fused", "mmrec_fast native recompute", "mmrec_fast triton fused", "mmrec_fast triton recompute",
    "naive torch (normalize, mm, cross_entropy)",
]  # fmt: skip


def select(name):
    impls = implementations()
    if name not in impls:
        pytest.skip(f"{name} does not run on {DEVICE} here")
    return impls[name]


def inputs(batch, d, requires_grad):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(batch, d, generator=gen).to(DEVICE).requires_grad_(requires_grad)
    b = torch.randn(batch, d, generator=gen).to(DEVICE).requires_grad_(requires_grad)
    return a, b


def rounds_for(batch):
    if DEVICE == "cuda":  # milliseconds per call on a GPU
        return 50 if batch <= 8192 else 20
    return 20 if batch <= 2048 else (5 if batch <= 8192 else 3)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("batch", [1024, 2048, 8192])
@pytest.mark.parametrize("impl", [n for n in IMPL_NAMES if not n.endswith("recompute")])
def test_forward(benchmark, batch, d, impl):
    fn = select(impl)
    a, b = inputs(batch, d, requires_grad=False)
    benchmark.group = f"info_nce forward, SLMRec form, B={batch}, d={d}, t={TEMPERATURE}, float32, {DEVICE}"

    def run():
        out = fn(a, b)
        synchronize()
        return out

    benchmark.pedantic(run, rounds=rounds_for(batch), warmup_rounds=3 if DEVICE == "cuda" else 1)


def forward_backward(benchmark, fn, batch, d, group):
    a, b = inputs(batch, d, requires_grad=True)
    benchmark.group = group

    def run():
        fn(a, b).backward()
        synchronize()
        a.grad = b.grad = None

    run()
    start, peak = peak_tensor_memory(run)
    benchmark.extra_info["peak_extra_mb"] = (peak - start) / 2**20
    benchmark.pedantic(run, rounds=rounds_for(batch), warmup_rounds=2 if DEVICE == "cuda" else 0)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("batch", [1024, 2048, 8192])
@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_forward_backward(benchmark, batch, d, impl):
    group = f"info_nce forward+backward, SLMRec form, B={batch}, d={d}, t={TEMPERATURE}, float32, {DEVICE}"
    forward_backward(benchmark, select(impl), batch, d, group)


@pytest.mark.parametrize("users", [MENTOR_USERS])
@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_full_population_forward_backward(benchmark, impl, users):
    group = f"info_nce forward+backward, MENTOR full population, U={users:,}, d=128, t={TEMPERATURE}, float32, {DEVICE}"
    forward_backward(benchmark, select(impl), users, 128, group)
