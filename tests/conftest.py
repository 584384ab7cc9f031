"""Test configuration shared by every test module.

* Without a GPU, Triton kernels run in the Triton interpreter on CPU tensors: TRITON_INTERPRET=1 is set here,
  before anything imports mmrec_fast.kernels (Triton reads it when the kernels are defined).
* ``device`` / ``backend`` parameters come from what can actually run here (mmrec_fast.available()), so the same
  suite runs the GPU parity tests on a GPU machine and the interpreter tests on a CPU machine.
* Real data is found through MMREC_FAST_DATA or ../shared/data next to the repository; tests that need it skip
  with a message where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mmrec_fast  # noqa: E402

# Hypothesis profiles of the property tests (tests/test_properties.py). "ci", the default: 300 examples a test,
# derandomised (CI runs the same examples every run, so a failure reproduces) and no example database; no deadline
# (the Triton interpreter takes tens of milliseconds a call, and a loaded machine more). "long"
# (--hypothesis-profile=long): 3000 random examples a test, failures remembered in .hypothesis/.
try:
    from hypothesis import HealthCheck, settings

    _SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, database=None,
                              suppress_health_check=_SLOW, print_blob=True)  # fmt: skip
    settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=_SLOW, print_blob=True)
    settings.load_profile("ci")
except ImportError:  # hypothesis is a test dependency; without it only test_properties.py fails to import
    pass

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """The shared data folder (MMREC_FAST_DATA, else ../shared/data beside the repository), or None."""
    candidates = [os.environ.get("MMREC_FAST_DATA"), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if _HAS_CUDA else [])


def kernel_backends(device: str) -> list[str]:
    """The non-reference backends that run on `device` here."""
    runnable = mmrec_fast.available()
    return [b for b in ("native", "triton") if device in runnable[b]]


def backend_device_pairs(op: str) -> list[tuple[str, str]]:
    """(backend, device) pairs that run here and that `op` implements (info_nce, knn and topk_scores have no native
    CUDA kernel: Triton serves the GPU)."""
    implemented = mmrec_fast.backends.OPS[op].dtypes
    return [(b, dev) for dev in devices() for b in kernel_backends(dev) if (b, dev) in implemented]


def on_device(device: str, *tensors):
    """The tensors moved to `device` (None stays None); one tensor in, one out."""
    moved = tuple(t if t is None else t.to(device) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


@pytest.fixture(autouse=True)
def _reset_backend_choice():
    """Every test starts and ends with the automatic backend choice."""
    mmrec_fast.set_backend(None)
    yield
    mmrec_fast.set_backend(None)


# -- the tile-and-select kernels (knn, topk_scores) -----------------------------------------------------------------
@pytest.fixture
def small_tiles(monkeypatch):
    """24 x 24 float32 score tiles (the float64 edge is the largest multiple of 8 that fits: 16), so that inputs of a
    few hundred rows run many tiles and, for knn, many round-robin rounds."""
    from mmrec_fast.ops.topk_scores import TUNING

    monkeypatch.setitem(TUNING, "score_tile_bytes", 24 * 24 * 4)


def assert_same_results_across_threads_and_tile_budgets(monkeypatch, run):
    """run() -> (values, indices) is bitwise identical run to run, for 1-3 threads and for several tile budgets."""
    from mmrec_fast.ops.topk_scores import TUNING

    results = []
    threads = torch.get_num_threads()
    try:
        for num_threads, tile_bytes in ((threads, 0), (threads, 0), (1, 0), (2, 0), (2, 40 * 40 * 4), (3, 8 * 8 * 4)):
            torch.set_num_threads(num_threads)
            monkeypatch.setitem(TUNING, "score_tile_bytes", tile_bytes)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for values, indices in results[1:]:
        assert torch.equal(values, results[0][0]) and torch.equal(indices, results[0][1])
