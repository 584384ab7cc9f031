"""Build of mmrec_fast and its extension mmrec_fast._C.

Install with the torch you already have (the build compiles against it):

    pip install torch==2.13.0            # or a CUDA build of torch on a GPU machine
    pip install --no-build-isolation -e .

``--no-build-isolation`` matters: with build isolation pip would install a second torch into a throw-away build
environment and compile against that one. CUDA kernels are compiled only when torch is a CUDA build and nvcc is
found (see mmrec_fast/_build.py); ``MMREC_FAST_NO_CUDA=1`` skips them. ``MMREC_FAST_NO_EXTENSION=1`` installs the
pure-Python package only (the extension is then JIT-built on first use).
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _load_build_module():
    spec = importlib.util.spec_from_file_location("mmrec_fast_build", ROOT / "mmrec_fast" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ext_modules, cmdclass = [], {}
if os.environ.get("MMREC_FAST_NO_EXTENSION") != "1":
    from torch.utils import cpp_extension

    params = _load_build_module().get_build_parameters()
    Extension = cpp_extension.CUDAExtension if params["with_cuda"] else cpp_extension.CppExtension
    sources = [os.path.relpath(s, ROOT) for s in params["sources"]]
    ext_modules.append(
        Extension(
            name="mmrec_fast._C",
            sources=sources,
            extra_compile_args={"cxx": params["extra_cflags"], "nvcc": params["extra_cuda_cflags"]},
            extra_link_args=params["extra_ldflags"],
        )
    )
    cmdclass["build_ext"] = cpp_extension.BuildExtension.with_options(use_ninja=True)

setup(
    packages=["mmrec_fast", "mmrec_fast.ops", "mmrec_fast.reference", "mmrec_fast.kernels", "mmrec_fast.data", "mmrec_fast.models"],
    package_dir={"mmrec_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
