"""The backend mechanism: precedence of backend= / use_backend / set_backend / MMREC_FAST_BACKEND, errors for
backends that cannot run, the one-time warning of an automatic fallback, available() and info()."""

from __future__ import annotations

import warnings

import pytest
import torch

import mmrec_fast
from mmrec_fast import Graph, _native, backends


def small_graph():
    return Graph.bipartite([0, 1, 1, 2], [0, 0, 1, 1], 3, 2)


def which_backend_ran(monkeypatch, **call):
    """Run propagate and report the backend the dispatcher chose (by recording resolve's answer)."""
    chosen = []
    original = backends._resolve

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        chosen.append(result)
        return result

    monkeypatch.setattr(backends, "_resolve", spy)
    mmrec_fast.propagate(small_graph(), torch.randn(5, 2, dtype=torch.float64), 2, **call)
    return chosen[-1]


def test_precedence(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert which_backend_ran(monkeypatch, backend="reference") == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert which_backend_ran(monkeypatch) == "reference"
    mmrec_fast.set_backend("reference")
    with mmrec_fast.use_backend(None):
        assert which_backend_ran(monkeypatch) == "reference"  # None in a context defers to the outer choices
    assert mmrec_fast.get_backend() == "reference"
    mmrec_fast.set_backend(None)
    monkeypatch.delenv(backends.ENV_VAR)
    with mmrec_fast.use_backend("reference"):
        assert mmrec_fast.get_backend() == "reference"
        assert which_backend_ran(monkeypatch) == "reference"
    assert mmrec_fast.get_backend() is None


@pytest.mark.skipif("cpu" not in mmrec_fast.available()["native"], reason="native not built")
def test_automatic_choice_on_cpu_is_native_and_explicit_beats_context(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert which_backend_ran(monkeypatch) == "native"
    with mmrec_fast.use_backend("reference"):
        assert which_backend_ran(monkeypatch, backend="native") == "native"


def test_unknown_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        mmrec_fast.set_backend("fast")
    with pytest.raises(ValueError, match="unknown backend"):
        with mmrec_fast.use_backend("gpu"):
            pass
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="environment variable MMREC_FAST_BACKEND"):
        mmrec_fast.propagate(small_graph(), torch.randn(5, 2))


def test_requested_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", "simulated: no compiler")
    with pytest.raises(backends.BackendUnavailable, match="backend 'native' cannot run here: simulated: no compiler"):
        mmrec_fast.propagate(small_graph(), torch.randn(5, 2), backend="native")
    mmrec_fast.set_backend("native")
    with pytest.raises(backends.BackendUnavailable, match="simulated"):
        mmrec_fast.propagate(small_graph(), torch.randn(5, 2))


def test_automatic_fallback_warns_once_with_the_reason(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(_native, "_module", None)
    monkeypatch.setattr(_native, "_error", "simulated: no compiler")
    monkeypatch.setattr(backends, "_warned", set())
    graph, x = small_graph(), torch.randn(5, 2)
    with pytest.warns(RuntimeWarning, match="using the reference backend .* native: simulated: no compiler"):
        out = mmrec_fast.propagate(graph, x, 2)
    torch.testing.assert_close(out, mmrec_fast.propagate(graph, x, 2, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mmrec_fast.propagate(graph, x, 2)  # the second fallback is silent: it was said once


def test_a_backend_limit_is_a_reason_like_any_other(monkeypatch):
    """OpSupport.limits (Triton's k limit in topk_scores and knn): within the limit the backend runs; past it a
    requested backend is a BackendUnavailable naming the limit, an automatic choice falls back with the warning."""
    if not mmrec_fast.available()["native"]:
        pytest.skip("the native extension is not built")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "OPS", dict(backends.OPS))  # the probe op stays out of the real registry
    op = backends.OpSupport("probe", dtypes={("native", "cpu"): (torch.float32,), ("reference", "cpu"): (torch.float32,)},
                            limits={"native": lambda k: None if k <= 4 else f"at most 4, got k={k}"})  # fmt: skip
    x = torch.zeros(1)
    assert backends.resolve(op, x, k=4) == "native"
    with pytest.warns(RuntimeWarning, match="using the reference backend .* native: at most 4, got k=5"):
        assert backends.resolve(op, x, k=5) == "reference"
    with pytest.raises(backends.BackendUnavailable, match="backend 'native' cannot run here: at most 4, got k=9"):
        backends.resolve(op, x, "native", k=9)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    from mmrec_fast import kernels

    monkeypatch.setattr(kernels, "INTERPRETED", False)
    with pytest.raises(backends.BackendUnavailable, match="TRITON_INTERPRET=1"):
        mmrec_fast.propagate(small_graph(), torch.randn(5, 2), backend="triton")


def test_available_and_info():
    runnable = mmrec_fast.available()
    assert set(runnable) == {"reference", "native", "triton"}
    assert "cpu" in runnable["reference"]
    report = mmrec_fast.info()
    assert report["torch"] == torch.__version__
    assert report["backends"] == runnable
    # the automatic choice on a CPU: native where the extension runs, else the reference (never Triton: its CPU
    # path is the interpreter), for every op
    expected = "native" if "cpu" in runnable["native"] else "reference"
    assert report["default_backend"] and all(devices["cpu"] == expected for devices in report["default_backend"].values())
    assert report["native"]["available"] == ("cpu" in runnable["native"])
