"""Loading of the native extension (C++ CPU kernels, CUDA kernels where compiled).

Order: the prebuilt ``mmrec_fast._C`` (built by ``pip install --no-build-isolation -e .``); else a JIT build of the
same sources with ``torch.utils.cpp_extension.load`` into a cache directory (``MMREC_FAST_CACHE`` or
``~/.cache/mmrec_fast``), once, on first use; else the native backend is unavailable and :func:`load` raises
:class:`NativeUnavailable` with the reason. ``MMREC_FAST_NO_JIT=1`` disables the JIT build.

The CPU kernels are compiled for several instruction sets (baseline, AVX2 + FMA, AVX-512; csrc/common/isa.h) and
the best one the CPU has runs; ``MMREC_FAST_CPU_ISA=baseline|avx2|avx512`` forces one when the extension loads (an
unknown name, or one this CPU cannot run, raises ValueError), :func:`set_cpu_isa` switches later (tests,
benchmarks) and :func:`cpu_isa` says which one runs.

Ops register their fake implementations and autograd formulas on the native operators through
:func:`on_load`, so those registrations happen exactly when the operators come into existence.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

from . import _build


class NativeUnavailable(RuntimeError):
    """The native extension could not be loaded; the message says why."""


_lock = threading.RLock()
_module = None
_how: str | None = None  # "prebuilt" | "jit"
_error: str | None = None
_callbacks: list[Callable[[], None]] = []


def on_load(callback: Callable[[], None]) -> None:
    """Run ``callback`` once the extension is loaded (now, if it already is)."""
    with _lock:
        _callbacks.append(callback)
        if _module is not None:
            callback()


def _cache_dir(params: dict) -> Path:
    import torch

    digest = hashlib.sha256()
    for source in params["sources"]:
        digest.update(Path(source).read_bytes())
    for header in sorted(_build.CSRC.rglob("*.h*")):  # csrc/common/*.h, csrc/cuda/*.cuh
        digest.update(header.read_bytes())
    digest.update(" ".join(params["extra_cflags"] + params["extra_cuda_cflags"]).encode())
    digest.update(torch.__version__.encode())
    root = Path(os.environ.get("MMREC_FAST_CACHE", Path.home() / ".cache" / "mmrec_fast"))
    return root / f"ext-{digest.hexdigest()[:16]}"


def _jit_build():
    from torch.utils import cpp_extension

    params = _build.get_build_parameters()
    missing = [s for s in params["sources"] if not Path(s).exists()]
    if missing:
        raise NativeUnavailable(f"no prebuilt mmrec_fast._C and no sources to JIT-build it from ({missing[0]} missing)")
    build_dir = _cache_dir(params)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob("*.so")):
        warnings.warn(
            f"mmrec_fast: no prebuilt extension; JIT-building the native kernels into {build_dir} "
            "(once, two to three minutes: three CPU variants). "
            "Install with `pip install --no-build-isolation -e .` to build ahead of time.",
            stacklevel=4,
        )
    return cpp_extension.load(
        name="mmrec_fast_jit_C",
        sources=params["sources"],
        extra_cflags=params["extra_cflags"],
        extra_cuda_cflags=params["extra_cuda_cflags"],
        extra_ldflags=params["extra_ldflags"],
        build_directory=str(build_dir),
        with_cuda=params["with_cuda"],
        is_python_module=True,
    )


def load():
    """Return the loaded extension module, loading or JIT-building it on first call.

    Raises :class:`NativeUnavailable` (with the reason) when neither a prebuilt nor a JIT-built extension can be
    loaded; the failure is remembered, so later calls raise at once.
    """
    global _module, _how, _error
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise NativeUnavailable(_error)
        import torch  # noqa: F401  (the extension links against the loaded torch)

        try:
            from . import _C as module  # type: ignore[attr-defined]

            how = "prebuilt"
        except ImportError as prebuilt_error:
            if os.environ.get("MMREC_FAST_NO_JIT") == "1":
                _error = f"mmrec_fast._C is not importable ({prebuilt_error}) and MMREC_FAST_NO_JIT=1"
                raise NativeUnavailable(_error) from None
            try:
                module = _jit_build()
                how = "jit"
            except Exception as jit_error:  # a compiler error, a missing toolchain, ...
                _error = (
                    f"mmrec_fast._C is not importable ({prebuilt_error}) and the JIT build failed: "
                    f"{type(jit_error).__name__}: {str(jit_error).strip().splitlines()[-1] if str(jit_error).strip() else ''}"
                )
                raise NativeUnavailable(_error) from jit_error
        forced = os.environ.get("MMREC_FAST_CPU_ISA")
        if forced:  # an unknown name, or a variant this CPU or build cannot run, is an error (ValueError)
            module.set_cpu_isa(forced)
        _module, _how = module, how
        for callback in _callbacks:
            callback()
        return _module


def is_available() -> bool:
    """Whether the extension is loaded or can be loaded (this may trigger the one-time JIT build)."""
    try:
        load()
        return True
    except NativeUnavailable:
        return False


def with_cuda() -> bool:
    """Whether the loaded extension has CUDA kernels."""
    return is_available() and bool(getattr(_module, "with_cuda", 0))


def cpu_isa() -> str:
    """The instruction-set variant the CPU kernels run: "baseline", "avx2" or "avx512" (loads the extension)."""
    return load().cpu_isa()


def cpu_isas() -> list[str]:
    """The variants this CPU and build can run, best last (loads the extension)."""
    return list(load().cpu_isas())


def set_cpu_isa(name: str) -> None:
    """Run the CPU kernels' variant ``name`` from now on (ValueError if unknown or not runnable here)."""
    load().set_cpu_isa(name)


def status() -> dict:
    """What was built and how it was loaded (tries to load first)."""
    available = is_available()
    return {
        "available": available,
        "how": _how,
        "error": _error,
        "with_cuda": bool(getattr(_module, "with_cuda", 0)) if available else False,
        "cpu_isa": _module.cpu_isa() if available else None,
        "cpu_isas": _module.cpu_isas() if available else [],
        "file": getattr(_module, "__file__", None) if available else None,
    }
