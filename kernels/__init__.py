"""Triton kernels of mmrec_fast, one module per op (installed as ``mmrec_fast.kernels``).

On a machine without a GPU they run in the Triton interpreter on CPU tensors when ``TRITON_INTERPRET=1`` is set
before this package is imported; :data:`INTERPRETED` records which mode the kernels were compiled in.
"""

import triton

try:
    INTERPRETED = bool(triton.knobs.runtime.interpret)
except AttributeError:  # older Triton without knobs
    import os

    INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

import torch
import triton.language as tl

#: torch dtype -> Triton dtype, for the accumulation dtype a kernel computes in (mmrec_fast.backends.accumulation_dtype)
TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}
