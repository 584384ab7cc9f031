"""Build parameters of the C++/CUDA extension ``mmrec_fast._C``.

One function, :func:`get_build_parameters`, is shared by ``setup.py`` (ahead-of-time build with ninja) and by
:mod:`mmrec_fast._native` (JIT build with ``torch.utils.cpp_extension.load`` when no prebuilt extension is
importable), so both builds compile the same sources with the same flags.

This module imports nothing from the package: ``setup.py`` loads it by path.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

#: Repository root (the folder holding ``csrc/``) when running from a source checkout or an editable install.
REPO_ROOT = Path(__file__).resolve().parent.parent
CSRC = REPO_ROOT / "csrc"


def cpu_isa_flags() -> list[str]:
    """Compiler flags for the instruction set of the baseline CPU kernels: none.

    The baseline compilation of every kernel (csrc/cpu/<op>.cpp) runs on any CPU of the architecture; the AVX2 and
    AVX-512 variants (csrc/cpu/isa/, :func:`cpu_variants_built`) get their instruction sets from target pragmas, and
    the extension picks one when it loads (csrc/common/isa.h). ``MMREC_FAST_CPU_ARCH`` raises the baseline: a
    ``-march`` value such as ``native`` or ``x86-64-v3`` (the extension then needs that CPU), or ``none``.
    """
    override = os.environ.get("MMREC_FAST_CPU_ARCH")
    if override and override != "none":
        return [f"-march={override}"]
    return []


def cpu_variants_built() -> bool:
    """Whether the AVX2 and AVX-512 variants are compiled in: on x86-64, unless ``MMREC_FAST_CPU_VARIANTS=0``."""
    if os.environ.get("MMREC_FAST_CPU_VARIANTS") == "0":
        return False
    return platform.machine() in ("x86_64", "AMD64")


def cuda_build_possible() -> tuple[bool, str]:
    """Whether CUDA sources can be compiled: a CUDA build of torch and nvcc (CUDA_HOME) are both needed."""
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("MMREC_FAST_NO_CUDA") == "1":
        return False, "MMREC_FAST_NO_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU build (torch.version.cuda is None)"
    if cpp_extension.CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(cpp_extension.CUDA_HOME, "bin")) is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc in {cpp_extension.CUDA_HOME}"


def get_build_parameters() -> dict:
    """Sources, flags and defines of ``mmrec_fast._C``.

    Returns a dict with keys ``sources`` (absolute paths), ``extra_cflags``, ``extra_cuda_cflags``,
    ``extra_ldflags``, ``with_cuda`` (bool) and ``cuda_reason`` (why CUDA is or is not built).
    The C++ sources are ``csrc/mmrec_fast.cpp`` (schemas), ``csrc/cpu/*.cpp`` and, on x86-64, their AVX2 and
    AVX-512 variants ``csrc/cpu/isa/*.cpp`` (csrc/common/isa.h); the CUDA bindings
    ``csrc/cuda/*.cu`` are added only when :func:`cuda_build_possible` says so; headers shared by several ops
    are in ``csrc/common/``. (The torch-free nvcc compile check is a test fixture: ``tests/fixtures/nvcc_check.cu``.)
    """
    with_cuda, cuda_reason = cuda_build_possible()
    sources = [CSRC / "mmrec_fast.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    cflags = ["-O3", "-std=c++20", "-fopenmp", *cpu_isa_flags()]
    if cpu_variants_built():
        sources += sorted((CSRC / "cpu" / "isa").glob("*.cpp"))
        cflags.append("-DMMREC_FAST_WITH_CPU_VARIANTS")
    cuda_cflags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    if with_cuda:
        sources += sorted((CSRC / "cuda").glob("*.cu"))
        cflags.append("-DMMREC_FAST_WITH_CUDA")
        cuda_cflags.append("-DMMREC_FAST_WITH_CUDA")
    return {
        "sources": [str(p) for p in sources],
        "extra_cflags": cflags,
        "extra_cuda_cflags": cuda_cflags,
        "extra_ldflags": ["-fopenmp"],
        "with_cuda": with_cuda,
        "cuda_reason": cuda_reason,
    }
