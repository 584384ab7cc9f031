"""Compile checks of the CUDA sources with nvcc, for machines (like CI) that have nvcc but no CUDA build of torch.

* tests/fixtures/nvcc_check.cu: the device code of every kernel, instantiated for every dtype, with plain nvcc.
* csrc/cuda/*.cu: the torch bindings, against torch's headers. A CPU build of torch ships the CUDA headers but not
  the header CMake generates for CUDA builds (c10/cuda/impl/cuda_cmake_macros.h); the test writes that one-line
  header into a temporary folder.
Skipped, with a message, where nvcc is absent. Where a CUDA build of torch is installed, the extension itself is
built with these sources, so a failure shows there too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

CUDA_DIR = REPO / "csrc" / "cuda"


def nvcc() -> str:
    found = shutil.which("nvcc") or next(
        (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin").glob("nvcc")), None
    )
    if found is None:
        pytest.skip("nvcc not found: CUDA compile check skipped (install the CUDA toolkit or set CUDA_HOME)")
    return found


ARCH_FLAGS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


def test_device_code_compiles_with_plain_nvcc(tmp_path):
    run([nvcc(), "-std=c++17", "-O3", *ARCH_FLAGS, "-Xcompiler", "-Wall", "-Werror", "all-warnings",
         "-c", str(REPO / "tests" / "fixtures" / "nvcc_check.cu"), "-o", str(tmp_path / "nvcc_check.o")])  # fmt: skip


@pytest.mark.parametrize("source", sorted(p.name for p in CUDA_DIR.glob("*.cu")))
def test_torch_binding_compiles(tmp_path, source):
    compiler = nvcc()
    from torch.utils import cpp_extension

    shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [f"-I{tmp_path / 'shim'}"] + [f"-I{p}" for p in cpp_extension.include_paths()]
    includes.append(f"-I{sysconfig.get_paths()['include']}")
    run([compiler, "-std=c++20", "-O1", "-gencode", "arch=compute_90,code=sm_90", "--expt-relaxed-constexpr",
         *includes, "-DTORCH_EXTENSION_NAME=mmrec_fast_check", "-DMMREC_FAST_WITH_CUDA",
         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-D__CUDA_NO_HALF2_OPERATORS__", "-c", str(CUDA_DIR / source), "-o", str(tmp_path / "binding.o")])  # fmt: skip
