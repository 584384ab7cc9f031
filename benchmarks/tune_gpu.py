"""Launch-configuration sweep of the Triton info_nce and knn kernels on a GPU: for each configuration, the time
(median, CUDA events) against the naive torch form in the same run, and the error against float64 (info_nce: the
largest relative error of the loss and both gradients; knn: exact top-k agreement with the reference on dyadic
features, whose scores are exact in any precision with >= 8 mantissa bits, and the largest value error on Gaussian
features). The kernels read their overrides from ``mmrec_fast.kernels.<op>.TUNING``.

    python benchmarks/tune_gpu.py [info_nce] [knn]        (on a machine with a CUDA GPU)
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import mmrec_fast
from mmrec_fast.kernels import info_nce as info_nce_kernels
from mmrec_fast.kernels import topk_scores as topk_kernels
from profile_gpu import wall_ms  # this folder is on sys.path when the script runs

TEMPERATURE = 0.2
results: list[dict] = []


def relative_error(got, truth):
    return ((got.double() - truth).norm() / truth.norm().clamp_min(1e-300)).item()


def naive_info_nce(a, b):
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / TEMPERATURE
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def info_nce_configs(d):
    """The sweep: tile shapes x column splits (None: the default heuristic, kernels.info_nce.PROGRAMS_PER_SM)."""
    shapes = [(64, 64, 4), (128, 64, 8), (64, 32, 4)] if d <= 64 else [(64, 32, 4), (64, 64, 4), (32, 32, 4)]
    for block_m, block_n, warps in shapes:
        for splits in [None, 1, 4, 8, 16]:
            config = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, DOT_PRECISION="tf32x3")
            yield config if splits is None else {**config, "COLUMN_SPLITS": splits}
    yield dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, DOT_PRECISION="tf32x3")
    yield dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, DOT_PRECISION="tf32")


def tune_info_nce():
    for batch, d in [(8192, 64), (8192, 128)]:
        gen = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(batch, d, device="cuda", generator=gen)
        b = torch.randn(batch, d, device="cuda", generator=gen)
        a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
        loss64 = naive_info_nce(a64, b64)
        truth = (loss64.detach(), *torch.autograd.grad(loss64, [a64, b64]))

        def fwd_bwd(fn):
            x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
            loss = fn(x, y)
            return (loss.detach(), *torch.autograd.grad(loss, [x, y]))

        naive_ms = do_bench(lambda: fwd_bwd(naive_info_nce), warmup=50, rep=300, return_mode="median")
        naive_err = max(relative_error(g, t) for g, t in zip(fwd_bwd(naive_info_nce), truth))
        print(f"info_nce B={batch} d={d} fwd+bwd: naive torch {naive_ms:.3f} ms (error {naive_err:.1e})")
        results.append(dict(op="info_nce", batch=batch, d=d, config="naive torch", ms=naive_ms, error=naive_err))
        triton_fn = lambda x, y: mmrec_fast.info_nce(x, y, TEMPERATURE, backend="triton")  # noqa: E731
        for config in info_nce_configs(d):
            info_nce_kernels.TUNING.clear()
            info_nce_kernels.TUNING.update(config)
            try:
                err = max(relative_error(g, t) for g, t in zip(fwd_bwd(triton_fn), truth))
                ms = do_bench(lambda: fwd_bwd(triton_fn), warmup=50, rep=300, return_mode="median")
            except Exception as error:  # a configuration the compiler rejects
                print(f"   {config}: FAILED {type(error).__name__}: {str(error)[:120]}")
                continue
            print(f"   {ms:8.3f} ms  x{naive_ms / ms:5.2f} vs naive  error {err:.1e}  {config}")
            results.append(dict(op="info_nce", batch=batch, d=d, config=config, ms=ms, error=err, vs_naive=naive_ms / ms))
        info_nce_kernels.TUNING.clear()


def knn_configs():
    yield dict(BLOCK_M=32, BLOCK_N=64, BLOCK_D=64, num_warps=4, DOT_PRECISION="ieee")  # the default
    yield dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, num_warps=4, DOT_PRECISION="ieee")
    for block_m, block_n, block_d, warps in [(32, 64, 64, 4), (64, 64, 64, 4), (64, 128, 64, 8), (128, 64, 32, 8), (128, 128, 32, 8)]:
        yield dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, DOT_PRECISION="tf32x3")
    yield dict(BLOCK_M=64, BLOCK_N=128, BLOCK_D=64, num_warps=8, DOT_PRECISION="tf32")


def tune_knn():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_knn import dyadic_features  # exact scores in any precision with >= 8 mantissa bits

    n, d, k = 50_000, 384, 10
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).cuda()
    dyadic = dyadic_features(3000, 384, "duplicated", seed=3).float()
    expected = mmrec_fast.knn(dyadic, k, backend="reference")
    gauss = torch.randn(3000, 384, generator=torch.Generator().manual_seed(1))
    gauss_truth = mmrec_fast.knn(gauss.double(), k, backend="reference")[0]

    def chunked_torch():
        x_hat = F.normalize(x, dim=1)
        for start in range(0, n, 2048):
            torch.topk(x_hat[start : start + 2048] @ x_hat.T, k, dim=-1)

    torch_ms = wall_ms(chunked_torch, rounds=3)
    print(f"knn N={n} d={d} k={k}: torch mm+topk in 2048-row chunks {torch_ms:.1f} ms")
    results.append(dict(op="knn", n=n, d=d, config="torch mm+topk chunks", ms=torch_ms))
    for config in knn_configs():
        topk_kernels.TUNING.clear()
        topk_kernels.TUNING.update(config)
        try:
            values, indices = mmrec_fast.knn(dyadic.cuda(), k, backend="triton")
            exact = bool(torch.equal(indices.cpu(), expected[1]) and torch.equal(values.cpu(), expected[0]))
            value_err = (mmrec_fast.knn(gauss.cuda(), k, backend="triton")[0].cpu().double() - gauss_truth).abs().max().item()
            ms = wall_ms(lambda: mmrec_fast.knn(x, k, backend="triton"), rounds=3)
        except Exception as error:
            print(f"   {config}: FAILED {type(error).__name__}: {str(error)[:120]}")
            continue
        print(f"   {ms:8.1f} ms  x{torch_ms / ms:5.2f} vs torch  exact={exact} max value error {value_err:.1e}  {config}")
        results.append(dict(op="knn", n=n, d=d, config=config, ms=ms, exact=exact, value_error=value_err, vs_torch=torch_ms / ms))
    topk_kernels.TUNING.clear()


if __name__ == "__main__":
    which = sys.argv[1:] or ["info_nce", "knn"]
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    if "info_nce" in which:
        tune_info_nce()
    if "knn" in which:
        tune_knn()
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "tune.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
