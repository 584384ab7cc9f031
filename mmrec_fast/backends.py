"""Backend selection: ``reference`` | ``native`` | ``triton``, one mechanism for every op.

The backend an op runs on is, in order of precedence:

1. the op's ``backend=`` argument;
2. the innermost :func:`use_backend` context;
3. :func:`set_backend`;
4. the environment variable ``MMREC_FAST_BACKEND``;
5. automatic: the first backend in the op's preference list for the tensor's device that can run it
   (CPU: native, then reference; CUDA: the fastest measured for that op, then the others).

A backend chosen by 1-4 that cannot run raises :class:`BackendUnavailable` saying why. An automatic choice that
has to pass over the op's preferred backend warns once (per op, device and dtype) with the reason: a fallback is
never silent. :func:`available` says which backends run on which device now.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import _native

BACKENDS = ("reference", "native", "triton")
ENV_VAR = "MMREC_FAST_BACKEND"

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_matrix(op_name: str, name: str, t, dims: str = "(n, d)") -> None:
    """The argument check every op makes of its dense inputs: a 2-D torch.Tensor of one of FLOAT_DTYPES."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op_name}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{op_name}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dim() != 2:
        raise ValueError(f"{op_name}: {name} must be 2-D {dims}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op_name}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_has_data(what: str, t) -> None:
    """Meta tensors have a shape and no data: ops that must read their values (range and finiteness checks, graph
    construction) reject them with this error instead of torch's "Tensor.item() cannot be called on meta tensors".
    (Under torch.compile inputs are fake tensors on their real device, not meta tensors: unaffected.)"""
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        raise ValueError(f"{what} is a meta tensor (a shape without data); pass a CPU or CUDA tensor")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every op (and its reference) computes in for inputs of ``dtype``: float64 for float64, else float32
    (float16 / bfloat16 are upcast); the rule is written here once."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this op on this device/dtype; the message says why."""


@dataclass(frozen=True)
class OpSupport:
    """What each backend implements for one op.

    dtypes: (backend, device type) -> dtypes of the op's floating inputs that the backend accepts there.
    preference: device type -> backends to try, in order, when none is requested.
    limits: backend -> ``check(**sizes) -> None | reason``: what a backend cannot take of a call's sizes (Triton's
        top-k keeps k in registers); the op passes the sizes to :func:`resolve`, and a limit is treated like any
        other reason the backend cannot run (an error if requested, a warned fallback if chosen automatically).
    """

    name: str
    dtypes: dict[tuple[str, str], tuple[torch.dtype, ...]]
    preference: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"cpu": ("native", "reference"), "cuda": ("native", "triton", "reference")}
    )
    limits: dict[str, Callable[..., str | None]] = field(default_factory=dict)


    def __post_init__(self):
        OPS[self.name] = self


#: Every op's support table, by op name (filled as the op modules are imported).
OPS: dict[str, OpSupport] = {}

_global_backend: str | None = None
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("mmrec_fast_backend", default=None)
_warned: set[tuple] = set()


def _validate(name: str | None, where: str) -> str | None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {BACKENDS} or None")
    return name


def set_backend(name: str | None) -> None:
    """Set the backend every op uses when its ``backend=`` is None (None: automatic)."""
    global _global_backend
    _global_backend = _validate(name, "set_backend")


def get_backend() -> str | None:
    """The backend requested by :func:`use_backend`, :func:`set_backend` or ``MMREC_FAST_BACKEND`` (None: auto)."""
    return (
        _context_backend.get()
        or _global_backend
        or _validate(os.environ.get(ENV_VAR) or None, f"environment variable {ENV_VAR}")
    )


@contextlib.contextmanager
def use_backend(name: str | None):
    """Context manager: ops inside run on ``name`` unless they pass ``backend=`` themselves."""
    token = _context_backend.set(_validate(name, "use_backend"))
    try:
        yield
    finally:
        _context_backend.reset(token)


def triton_status(device_type: str) -> str | None:
    """None if Triton kernels can run on this device type, else the reason they cannot."""
    try:
        from mmrec_fast import kernels
    except ImportError as error:
        return f"triton is not importable ({error})"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device"
    if device_type == "cpu":
        return None if kernels.INTERPRETED else "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1 before import)"
    return f"Triton kernels do not run on {device_type}"


def _unavailable_reason(op: OpSupport, backend: str, device_type: str, dtype: torch.dtype, sizes: tuple) -> str | None:
    dtypes = op.dtypes.get((backend, device_type))
    if dtypes is None:
        return f"{op.name} has no {backend} implementation for {device_type} tensors"
    if dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"the {backend} {op.name} on {device_type} takes {names}, got {str(dtype).replace('torch.', '')}"
    if backend == "native":
        try:
            _native.load()
        except _native.NativeUnavailable as error:
            return str(error)
        if device_type == "cuda" and not _native.with_cuda():
            return "the native extension was built without CUDA kernels"
    if backend == "triton":
        status = triton_status(device_type)
        if status is not None:
            return status
    limit = op.limits.get(backend)
    return limit(**dict(sizes)) if limit is not None else None


def resolve(op: OpSupport, tensor: torch.Tensor, backend: str | None = None, **sizes: int) -> str:
    """The backend that runs ``op`` on ``tensor`` (its device and dtype) and a call of ``sizes`` (checked against
    ``op.limits``), following the precedence above.

    Under ``torch.compile`` the choice is made once, when the function is traced.
    """
    return _resolve(op.name, tensor.device.type, tensor.dtype, backend, tuple(sorted(sizes.items())))


@torch.compiler.assume_constant_result
def _resolve(op_name: str, device_type: str, dtype: torch.dtype, backend: str | None, sizes: tuple = ()) -> str:
    op = OPS[op_name]
    requested = _validate(backend, op.name) or get_backend()
    if requested is not None:
        reason = _unavailable_reason(op, requested, device_type, dtype, sizes)
        if reason is not None:
            raise BackendUnavailable(f"{op.name}: backend {requested!r} cannot run here: {reason}")
        return requested
    preference = op.preference.get(device_type)
    if preference is None:
        raise BackendUnavailable(f"{op.name}: no backend for {device_type} tensors")
    reasons = []
    # Backends the op does not implement on this device are not fallbacks: they are left out silently.
    for candidate in (b for b in preference if (b, device_type) in op.dtypes):
        reason = _unavailable_reason(op, candidate, device_type, dtype, sizes)
        if reason is None:
            if reasons:
                key = (op.name, device_type, dtype, candidate)
                if key not in _warned:
                    _warned.add(key)
                    warnings.warn(
                        f"mmrec_fast.{op.name}: using the {candidate} backend on {device_type} {dtype} because "
                        + "; ".join(reasons),
                        RuntimeWarning,
                        stacklevel=4,
                    )
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise BackendUnavailable(f"{op.name}: no backend can run on {device_type} {dtype}: " + "; ".join(reasons))


def available() -> dict[str, list[str]]:
    """Backend -> device types it can run on now (``"cpu"`` for Triton means its interpreter)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {"reference": list(devices), "native": [], "triton": []}
    if _native.is_available():
        result["native"] = ["cpu"] + (["cuda"] if "cuda" in devices and _native.with_cuda() else [])
    result["triton"] = [d for d in devices if triton_status(d) is None]
    return result
