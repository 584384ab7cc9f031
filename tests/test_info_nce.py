"""info_nce: parity of the loss and of the gradients (a, b, and a tensor temperature) of every backend against the
reference, for every variant (normalize x symmetric x intra_view_negatives x reduction) and the dtypes each backend
claims; odd and degenerate shapes; zero and duplicated rows; extreme temperatures against a float64 log-sum-exp;
gradcheck; determinism; O(B) saved tensors; bad input; torch.compile; the module; the reference itself against the
models' own formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import mmrec_fast
from mmrec_fast import backends
from mmrec_fast.ops import info_nce as info_nce_ops  # noqa: F401  (the module registers the ops)

from conftest import backend_device_pairs
from parity import LOW_PRECISION, assert_low_precision, assert_matches, assert_parity, relative_tolerance

PAIRS = backend_device_pairs("info_nce")
VARIANTS = list(itertools.product([True, False], [False, True], [False, True]))  # normalize, symmetric, intra
VARIANT_IDS = [f"{'norm' if n else 'raw'}-{'sym' if s else 'oneway'}-{'intra' if i else 'inter'}" for n, s, i in VARIANTS]
REDUCTIONS = ["mean", "sum", "none"]


def claimed_dtypes(backend: str, device: str) -> tuple[torch.dtype, ...]:
    return backends.OPS["info_nce"].dtypes[(backend, device)]


def interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def reduction_length(batch: int, d: int, intra: bool) -> int:
    """Terms in the longest sum behind a value: a denominator (B or 2B exps) after d-term dot products."""
    return (2 if intra else 1) * batch + d


def make_inputs(batch, d, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, d, generator=gen, dtype=torch.float64) * scale
    b = (a + 0.7 * torch.randn(batch, d, generator=gen, dtype=torch.float64)) * scale  # correlated positives
    return a, b


def loss_and_grads(backend, device, a, b, temperature, variant, reduction, upstream):
    """The loss and its gradients w.r.t. a, b and the (tensor) temperature."""
    normalize, symmetric, intra = variant
    a = a.detach().to(device).requires_grad_()
    b = b.detach().to(device).requires_grad_()
    t = temperature.detach().to(device).requires_grad_()
    loss = mmrec_fast.info_nce(
        a, b, t, normalize=normalize, symmetric=symmetric, intra_view_negatives=intra, reduction=reduction, backend=backend
    )
    grads = torch.autograd.grad(loss, [a, b, t], upstream.to(device=device, dtype=loss.dtype))
    return (loss,) + grads


def temperature_gradient_scale(a, b, temperature, variant, reduction, upstream) -> float:
    """The size of the terms the temperature gradient sums: it is sum_i g_i (E_p[logit_i] - logit_ii) / t, a
    difference of logit-sized terms, whose rounding scales with |logit| / t, not with the (possibly ~0) result."""
    normalize, symmetric, intra = variant
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    na, nb = a.norm(dim=1).max().item(), b.norm(dim=1).max().item()
    largest = max(na * nb, na * na if intra else 0.0, nb * nb if intra and symmetric else 0.0) / temperature
    weight = upstream.abs().sum().item() * (a.shape[0] if reduction == "sum" else 1)
    return weight * largest / temperature


def check_parity(backend, device, dtype, batch, d, variant, reduction, temperature=0.3, seed=0, scale=None):
    """Loss and gradients of `backend` against the float64 reference on the same (rounded) inputs (parity.py's
    rules). Raw (unnormalised) inputs default to rows of norm ~1, so that logits are O(1 / t) as with normalised
    ones; the tolerances are relative to the outputs, the temperature gradient's to the terms it sums."""
    if scale is None:
        scale = 1.0 if variant[0] else d**-0.5
    a64, b64 = make_inputs(batch, d, seed, scale)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(seed + 1)
    upstream64 = torch.rand(batch if reduction == "none" else (), generator=gen, dtype=torch.float64) + 0.5
    a, b, upstream = a64.to(dtype), b64.to(dtype), upstream64.to(dtype)
    t = torch.tensor(temperature, dtype=acc)
    k = reduction_length(batch, d, variant[2])

    def run(backend, device, a, b, upstream):
        return loss_and_grads(backend, device, a, b, t.to(torch.float64 if a.dtype == torch.float64 else acc), variant,
                              reduction, upstream)  # fmt: skip

    def rescale(name, actual, gold, k):
        if name != "grad temperature":
            return actual, gold, k
        # a sum over every logit (B denominators of k terms), of logit-sized terms
        size = max(1.0, temperature_gradient_scale(a.double(), b.double(), temperature, variant, reduction, upstream.double()))
        return (actual.double() / size).to(actual.dtype), gold / size, batch * k

    assert_parity(run, backend, device, (a, b, upstream), ("loss", "grad a", "grad b", "grad temperature"), k,
                  f"{backend}/{device}/{dtype}/B={batch}/d={d}/{variant}/{reduction}/t={temperature}", rescale)  # fmt: skip


# -- parity: every variant and reduction ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_variants(backend, device, variant, reduction):
    for dtype in (torch.float64, torch.float32):
        check_parity(backend, device, dtype, 17, 7, variant, reduction)
    if not interpreted(backend, device):
        check_parity(backend, device, torch.float32, 128, 64, variant, reduction)


# -- parity: shapes ------------------------------------------------------------------------------------------------
SHAPES = [(batch, d) for batch in (1, 2, 3, 17, 128, 1000) for d in (1, 7, 64, 128)]
# The interpreter runs every program in Python: a trimmed set that still has B = 1, odd B and d, and a full tile.
INTERPRETER_SHAPES = [(1, 7), (2, 1), (3, 64), (17, 7), (70, 128)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("batch,d", SHAPES)
def test_parity_shapes(backend, device, batch, d):
    if interpreted(backend, device) and (batch, d) not in INTERPRETER_SHAPES:
        pytest.skip("the Triton interpreter runs the trimmed shape set")
    # The SLMRec form in both precisions, and the most general form (all three options) in float64.
    check_parity(backend, device, torch.float32, batch, d, (True, False, False), "mean", temperature=0.2)
    check_parity(backend, device, torch.float64, batch, d, (True, True, True), "none", temperature=0.5)


TRITON = [p for p in PAIRS if p[0] == "triton"] or [pytest.param("triton", "cpu", marks=pytest.mark.skip("triton not runnable"))]


@pytest.mark.parametrize("backend,device", TRITON)
@pytest.mark.parametrize("block_m,block_n", [(128, 64), (64, 32), (32, 32), (32, 64)])
@pytest.mark.parametrize("column_splits", [1, 3])
def test_triton_gpu_block_shapes(backend, device, block_m, block_n, column_splits, monkeypatch):
    """The GPU's launch shapes (kernels.info_nce._config: 128 x 64 at d <= 64, 32 x 32 above with tensor-core
    products, 64 x 32 for exact ones; rows and columns of different block sizes) on whatever runs Triton here, the
    interpreter included, for every variant; the columns
    in one run or cut into up to three (the last one shorter, or fewer splits where there are fewer column tiles)."""
    from mmrec_fast.kernels import info_nce as kernels

    monkeypatch.setitem(kernels.TUNING, "BLOCK_M", block_m)
    monkeypatch.setitem(kernels.TUNING, "BLOCK_N", block_n)
    monkeypatch.setitem(kernels.TUNING, "COLUMN_SPLITS", column_splits)
    assert (kernels._config(torch.zeros(1, 33))["BLOCK_M"], kernels._config(torch.zeros(1, 33))["BLOCK_N"]) == (block_m, block_n)
    splits, cols_per_split = kernels._column_splits(torch.zeros(70, 33), kernels._config(torch.zeros(1, 33)))
    assert splits == min(column_splits, -(-70 // block_n)) and (splits - 1) * cols_per_split < 70 <= splits * cols_per_split
    for variant in [(True, False, False), (True, True, True), (False, True, False)]:
        check_parity(backend, device, torch.float32, 70, 33, variant, "none")
        check_parity(backend, device, torch.float64, 45, 7, variant, "mean")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("variant", [(True, False, False), (True, True, True), (False, False, False)], ids=str)
def test_parity_low_precision(backend, device, dtype, variant):
    if dtype not in claimed_dtypes(backend, device):
        pytest.skip(f"{backend} info_nce on {device} does not claim {dtype}")
    check_parity(backend, device, dtype, 40, 24, variant, "mean")
    check_parity(backend, device, dtype, 17, 7, variant, "none")


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p[0] == "native"])
def test_parity_fused_path_at_strip_and_group_boundaries(backend, device):
    """Sizes that cross the native kernel's row blocks (128), chunks (512) and groups, in both code paths (the
    fused forward+gradient for mean/sum, the recomputing backward for none)."""
    for batch, variant in [(513, (True, False, True)), (1300, (True, False, False)), (700, (False, True, True))]:
        for reduction in ("mean", "none"):
            check_parity(backend, device, torch.float64, batch, 5, variant, reduction, seed=batch)


# -- degenerate rows, extreme temperatures -------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("variant", [(True, False, False), (True, True, True)], ids=str)
def test_zero_and_duplicated_rows(backend, device, variant):
    """Repeated users stay in as false negatives; zero rows normalise to 0 (similarity 0), never NaN, and their
    gradient is F.normalize's (upstream / eps)."""
    a, b = make_inputs(12, 6, seed=3)
    a[4] = a[1]  # a duplicated user
    b[4] = b[1]
    a[7] = 0.0  # zero rows
    b[9] = 0.0
    for dtype in (torch.float64, torch.float32):
        t = torch.tensor(0.3, dtype=dtype)
        upstream = torch.rand(12, dtype=torch.float64).to(dtype)
        got = loss_and_grads(backend, device, a.to(dtype), b.to(dtype), t, variant, "none", upstream)
        gold = loss_and_grads("reference", "cpu", a, b, t.double(), variant, "none", upstream.double())
        k = reduction_length(12, 6, variant[2])
        assert_matches(got[0].cpu(), gold[0], dtype, k, "loss")
        for name, actual, g, zero in (("grad a", got[1], gold[1], 7), ("grad b", got[2], gold[2], 9)):
            actual = actual.cpu()
            assert torch.isfinite(actual).all(), name
            keep = torch.ones(12, dtype=torch.bool)
            keep[zero] = False
            assert_matches(actual[keep], g[keep], dtype, k, name + " (nonzero rows)")
            assert_matches(actual[zero], g[zero], dtype, k, name + " (the zero row)")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("temperature", [1e-3, 1e4])
@pytest.mark.parametrize("normalize", [True, False])
def test_extreme_temperatures_against_float64_logsumexp(backend, device, temperature, normalize):
    """Logits of +-1000 (t = 1e-3) or ~1e-4 (t = 1e4): float32 exp without a max would overflow or lose everything;
    the kernels must stay finite and match the float64 log-sum-exp reference."""
    variant = (normalize, True, True)
    check_parity(backend, device, torch.float64, 33, 9, variant, "none", temperature=temperature)
    # float32 (and low precision where claimed) on the same inputs. The softmax's condition number for relative
    # perturbations of the logits is their size, kappa = max |logit| (1e3 at t = 1e-3): float32 is held to the
    # table's tolerance times kappa; float16 / bfloat16 to the error-ratio rule against plain PyTorch.
    dtypes = (torch.float32,) + (tuple(d for d in LOW_PRECISION if d in claimed_dtypes(backend, device)) if normalize else ())
    a, b = make_inputs(33, 9)
    names = ("loss", "grad a", "grad b", "grad temperature")
    for dtype in dtypes:
        t = torch.tensor(temperature)
        one = torch.tensor(1.0)
        got = loss_and_grads(backend, device, a.to(dtype), b.to(dtype), t, variant, "mean", one)
        for value in got:
            assert torch.isfinite(value).all(), f"{dtype}: non-finite at t={temperature}"
        a_gold, b_gold = a.to(dtype).double(), b.to(dtype).double()
        gold = loss_and_grads("reference", "cpu", a_gold, b_gold, t.double(), variant, "mean", one.double())
        if dtype == torch.float32:
            x, y = (F.normalize(a_gold, dim=1), F.normalize(b_gold, dim=1)) if normalize else (a_gold, b_gold)
            kappa = max(1.0, (torch.cat([x, y]) @ torch.cat([x, y]).T).abs().max().item() / temperature)
            t_size = max(1.0, temperature_gradient_scale(a_gold, b_gold, temperature, variant, "mean", one.double()))
            k = reduction_length(33, 9, True)
            for name, actual, g in zip(names, got, gold):
                size = t_size if name == "grad temperature" else max(1.0, g.abs().max().item())
                error = (actual.double().cpu() - g).abs().max().item()
                tol = relative_tolerance(torch.float32, 33 * k if name == "grad temperature" else k) * size * kappa
                assert error <= tol, f"float32 t={temperature} {name}: error {error:.3e} > {tol:.3e} (kappa {kappa:.0f})"
        else:
            plain = loss_and_grads("reference", "cpu", a.to(dtype), b.to(dtype), t, variant, "mean", one)
            for name, actual, p, g in zip(names, got, plain, gold):
                if torch.isfinite(p).all():  # plain PyTorch's own temperature gradient is NaN in float16 at t=1e-3
                    assert_low_precision(actual.cpu(), p, g, f"{dtype} t={temperature} {name}")
    if temperature == 1e-3 and normalize:  # the check above can fail: plain float32 exp overflows here
        a, b = make_inputs(33, 9)
        logits = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T / temperature
        assert not torch.isfinite(torch.log(torch.exp(logits).sum(1))).all()


@pytest.mark.parametrize("backend", ["reference"] + [b for b, dev in PAIRS if dev == "cpu"])
def test_subnormal_and_tiny_temperatures_are_rejected_on_every_backend(backend):
    """t = 1e-40 (subnormal in float32) made the logits overflow and every backend return NaN: every backend now
    rejects any t below min_temperature(dtype) with the bound in the message, and is finite at the bound."""
    from mmrec_fast.ops.info_nce import min_temperature

    a, b = make_inputs(16, 5, seed=4)
    for dtype in claimed_dtypes(backend, "cpu"):
        bound = min_temperature(dtype)
        assert bound == (6.103515625e-05 if dtype == torch.float16 else 1e-6)
        # (A float32 tensor of the bound itself holds 9.99999997e-07: the bound is compared in the tensor's dtype.)
        for t in (1e-40, 1e-300, bound * 0.99, torch.tensor(1e-40), torch.tensor(bound * 0.99, dtype=torch.float64)):
            with pytest.raises(ValueError, match=f"temperature must be finite and >= {bound:.3g} for {dtype}"):
                mmrec_fast.info_nce(a.to(dtype), b.to(dtype), t, backend=backend)
        x, y = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
        t = torch.tensor(bound, dtype=torch.float64 if dtype == torch.float64 else torch.float32, requires_grad=True)
        loss = mmrec_fast.info_nce(x, y, t, symmetric=True, intra_view_negatives=True, backend=backend)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
        if dtype != torch.float16:  # plain float16 PyTorch's own temperature gradient overflows (see above)
            assert torch.isfinite(t.grad)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_large_raw_logits(backend, device):
    """Unnormalised inputs of norm ~15 (logits ~1e3, past float64's exp range): only the running max keeps these
    finite."""
    check_parity(backend, device, torch.float64, 21, 5, (False, True, True), "mean", temperature=0.2, scale=6.0)


# -- gradcheck -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("variant", [(True, False, False), (True, True, True), (False, True, False), (False, False, True)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_fp64(backend, device, variant, reduction):
    normalize, symmetric, intra = variant
    a, b = make_inputs(6, 3, seed=5)
    inputs = (
        a.to(device).requires_grad_(),
        b.to(device).requires_grad_(),
        torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True),
    )

    def fn(x, y, t):
        return mmrec_fast.info_nce(x, y, t, normalize=normalize, symmetric=symmetric, intra_view_negatives=intra, reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


# -- determinism ---------------------------------------------------------------------------------------------------
def run_all_paths(backend, a, b):
    """Values and gradients of the fused path (mean) and of the recomputing one (none), symmetric + intra too."""
    results = []
    for variant, reduction in [((True, False, False), "mean"), ((True, False, True), "none"), ((False, True, True), "sum")]:
        t = torch.tensor(0.25, device=a.device, requires_grad=True)
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = mmrec_fast.info_nce(x, y, t, normalize=variant[0], symmetric=variant[1], intra_view_negatives=variant[2], reduction=reduction, backend=backend)
        upstream = torch.linspace(0.5, 1.5, loss.numel(), device=loss.device).reshape(loss.shape)
        results.append((loss, *torch.autograd.grad(loss, [x, y, t], upstream)))
    return results


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_native_cpu_is_bitwise_deterministic_across_runs_and_thread_counts():
    a, b = make_inputs(1100, 33, seed=7)
    a, b = a.float(), b.float()
    threads = torch.get_num_threads()
    runs = []
    try:
        for num_threads in (threads, threads, 1, 2):
            torch.set_num_threads(num_threads)
            runs.append(run_all_paths("native", a, b))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for got, first in zip(run, runs[0]):
            for x, y in zip(got, first):
                assert torch.equal(x, y)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_repeated_runs_are_bitwise_identical(backend, device):
    a, b = make_inputs(70, 16, seed=8)
    first = run_all_paths(backend, a.float().to(device), b.float().to(device))
    again = run_all_paths(backend, a.float().to(device), b.float().to(device))
    for got, ref in zip(again, first):
        for x, y in zip(got, ref):
            assert torch.equal(x, y)


# -- memory: O(B) statistics, never B x B --------------------------------------------------------------------------
def saved_tensor_shapes(backend, reduction, symmetric=False):
    batch, d = 256, 8
    a = torch.randn(batch, d, requires_grad=True)
    b = torch.randn(batch, d, requires_grad=True)
    t = torch.tensor(0.2, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        loss = mmrec_fast.info_nce(a, b, t, symmetric=symmetric, intra_view_negatives=True, reduction=reduction, backend=backend)
    loss.sum().backward()
    assert a.grad is not None and b.grad is not None and t.grad is not None
    return [tuple(x.shape) for x in saved]


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p[1] == "cpu"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_saves_only_inputs_and_per_row_statistics(backend, device, reduction, symmetric):
    """The backward keeps the (B, d) inputs or gradients and (B,) log-sum-exps: nothing of size B x B."""
    shapes = saved_tensor_shapes(backend, reduction, symmetric)
    assert shapes, "nothing saved: the check would pass vacuously"
    assert all(torch.Size(s).numel() <= 256 * 8 for s in shapes), shapes


def test_reference_saves_batch_by_batch_logits():
    """The check above can fail: the reference keeps its (B, B) logits for autograd."""
    shapes = saved_tensor_shapes("reference", "mean")
    assert any(torch.Size(s).numel() >= 256 * 256 for s in shapes), shapes


# -- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        mmrec_fast.info_nce(a, torch.randn(6, 4))
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        mmrec_fast.info_nce(a, torch.randn(5, 3))
    with pytest.raises(ValueError, match="a must be 2-D"):
        mmrec_fast.info_nce(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="b must be 2-D"):
        mmrec_fast.info_nce(a, torch.randn(5, 4, 1))
    with pytest.raises(ValueError, match="B = 0"):
        mmrec_fast.info_nce(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match="d = 0"):
        mmrec_fast.info_nce(torch.randn(3, 0), torch.randn(3, 0))
    for bad in (0.0, -0.2, float("nan"), float("inf"), torch.tensor(0.0), torch.tensor(-1.0), torch.tensor(float("nan"))):
        with pytest.raises(ValueError, match="temperature must be finite and >= 1e-06"):
            mmrec_fast.info_nce(a, b, bad)
    with pytest.raises(TypeError, match="temperature must be a float or a 0-dim tensor"):
        mmrec_fast.info_nce(a, b, True)
    with pytest.raises(TypeError, match="temperature must be a float or a 0-dim tensor"):
        mmrec_fast.info_nce(a, b, "0.2")
    with pytest.raises(ValueError, match="temperature must be a float or a 0-dim tensor, got shape \\(2,\\)"):
        mmrec_fast.info_nce(a, b, torch.tensor([0.2, 0.3]))
    with pytest.raises(TypeError, match="temperature tensor must be floating point"):
        mmrec_fast.info_nce(a, b, torch.tensor(1))
    with pytest.raises(TypeError, match="a must be float16, bfloat16, float32 or float64"):
        mmrec_fast.info_nce(torch.ones(5, 4, dtype=torch.int64), b)
    with pytest.raises(TypeError, match="a and b must share a dtype"):
        mmrec_fast.info_nce(a, b.double())
    with pytest.raises(ValueError, match="a is on cpu but b is on meta"):
        mmrec_fast.info_nce(a, torch.empty(5, 4, device="meta"))
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        mmrec_fast.info_nce(a.numpy(), b)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        mmrec_fast.info_nce(a, b, reduction="avg")
    with pytest.raises(TypeError, match="symmetric must be a bool"):
        mmrec_fast.info_nce(a, b, symmetric=1)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        mmrec_fast.info_nce(a, b, backend="cuda")


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_native_cpu_rejects_half_precision_when_asked_explicitly():
    a = torch.randn(4, 3, dtype=torch.float16)
    with pytest.raises(backends.BackendUnavailable, match="takes float32, float64, got float16"):
        mmrec_fast.info_nce(a, a, backend="native")


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_native_operators_check_their_arguments():
    """Direct callers of torch.ops.mmrec_fast.info_nce* get errors, not crashes."""
    a, b, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor(0.2)
    op = torch.ops.mmrec_fast.info_nce
    with pytest.raises(RuntimeError, match="a and b must both be \\(B, d\\)"):
        op(a, torch.randn(5, 3), t, True, False, False)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(a.half(), b.half(), t, True, False, False)
    for bad in (-1.0, 1e-40, 5e-7):
        with pytest.raises(RuntimeError, match="temperature must be finite and >= 1e-06"):
            op(a, b, torch.tensor(bad), True, False, False)
    with pytest.raises(RuntimeError, match="B must be > 0"):
        op(a[:0], b[:0], t, True, False, False)
    with pytest.raises(RuntimeError, match="weights must hold B values"):
        torch.ops.mmrec_fast.info_nce_fused(a, b, t, True, False, False, torch.ones(3))
    loss, lse_a, lse_b = op(a, b, t, True, False, False)
    with pytest.raises(RuntimeError, match="lse_b B \\(symmetric\\) or 0"):
        torch.ops.mmrec_fast.info_nce_backward(torch.ones(4), a, b, t, lse_a, lse_b, True, True, False)


# -- torch.compile -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", PAIRS or [pytest.param("native", "cpu", marks=pytest.mark.skip("no kernel backend here"))])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile(backend, device, reduction):
    a0, b0 = make_inputs(40, 8, seed=11)
    a0, b0 = a0.float().to(device), b0.float().to(device)

    def model(x, w, t):
        loss = mmrec_fast.info_nce(x @ w, b0, t, intra_view_negatives=True, reduction=reduction, backend=backend)
        return loss.sum()

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    w = torch.randn(8, 8, device=device, requires_grad=True)
    t = torch.tensor(0.3, device=device, requires_grad=True)
    got = compiled(a0, w, t)
    got_grads = torch.autograd.grad(got, [w, t])
    expected = model(a0, w, t)
    expected_grads = torch.autograd.grad(expected, [w, t])
    torch.testing.assert_close(got, expected)
    for x, y in zip(got_grads, expected_grads):
        torch.testing.assert_close(x, y)


# -- the module ----------------------------------------------------------------------------------------------------
def test_module_matches_the_function_and_learns_its_temperature():
    a, b = make_inputs(20, 6, seed=12)
    module = mmrec_fast.InfoNCE(0.3, learnable_temperature=True, symmetric=True)
    assert isinstance(module.temperature, torch.nn.Parameter)
    loss = module(a, b)
    loss.backward()
    expected = mmrec_fast.info_nce(a, b, 0.3, symmetric=True, backend="reference")
    torch.testing.assert_close(loss, expected)
    assert module.temperature.grad is not None and module.temperature.grad.item() != 0
    assert "learnable" in repr(module)
    fixed = mmrec_fast.InfoNCE(0.5, intra_view_negatives=True, reduction="none")
    assert fixed(a, b).shape == (20,)
    for bad in (0.0, 1e-40, 5e-7):
        with pytest.raises(ValueError, match="temperature must be a finite float >= 1e-06"):
            mmrec_fast.InfoNCE(bad)


# -- the reference against the models' own formulas ---------------------------------------------------------------
def test_reference_is_slmrec_cross_entropy():
    a, b = make_inputs(30, 8, seed=13)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.2
    expected = F.cross_entropy(logits, torch.arange(30))
    assert_matches(mmrec_fast.info_nce(a, b, 0.2, backend="reference"), expected, torch.float64, 1)
    raw = F.cross_entropy(a @ b.T / 0.5, torch.arange(30))  # FAC: no normalisation
    assert_matches(mmrec_fast.info_nce(a, b, 0.5, normalize=False, backend="reference"), raw, torch.float64, 1)
    clip = (F.cross_entropy(logits, torch.arange(30)) + F.cross_entropy(logits.T, torch.arange(30))) / 2
    assert_matches(mmrec_fast.info_nce(a, b, 0.2, symmetric=True, backend="reference"), clip, torch.float64, 1)


def test_reference_is_mmssl_grace_form_without_its_epsilon():
    """MMSSL: -log(e^{s(z1_i,z2_i)/t} / (sum_j e^{s(z1_i,z1_j)/t} + sum_j e^{s(z1_i,z2_j)/t} - e^{s(z1_i,z1_i)/t}) + 1e-8);
    info_nce drops the 1e-8, which changes the loss by less than 2e-5 here (B = 1024, t = 0.5, as in MMSSL)."""
    a, b = make_inputs(1024, 64, seed=14)
    z1, z2 = F.normalize(a, dim=1), F.normalize(b, dim=1)
    refl, between = torch.exp(z1 @ z1.T / 0.5), torch.exp(z1 @ z2.T / 0.5)
    p = between.diag() / (refl.sum(1) + between.sum(1) - refl.diag())
    exact = -torch.log(p).mean()
    mmssl = -torch.log(p + 1e-8).mean()
    got = mmrec_fast.info_nce(a, b, 0.5, intra_view_negatives=True, backend="reference")
    assert_matches(got, exact, torch.float64, 1)
    assert 0 < (exact - mmssl).item() < 2e-5


def test_reference_is_mentor_form():
    """MENTOR: mean -log(exp(cos_ii / t) / sum_j exp(cos_ij / t)), exp without max subtraction."""
    a, b = make_inputs(50, 16, seed=15)
    cos = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    expected = (-torch.log(torch.exp(cos.diag() / 0.4) / torch.exp(cos / 0.4).sum(1))).mean()
    assert_matches(mmrec_fast.info_nce(a, b, 0.4, backend="reference"), expected, torch.float64, 1)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_non_contiguous_inputs(backend, device):
    a, b = make_inputs(19, 10, seed=16)
    x, y = a.to(device)[:, ::2], b.to(device).T.contiguous().T[:, 1::2]
    assert not x.is_contiguous() and not y.is_contiguous()
    got = mmrec_fast.info_nce(x, y, 0.3, symmetric=True, reduction="none", backend=backend)
    expected = mmrec_fast.info_nce(x.cpu().contiguous(), y.cpu().contiguous(), 0.3, symmetric=True, reduction="none", backend="reference")
    assert_matches(got.cpu(), expected, torch.float64, reduction_length(19, 5, False))
