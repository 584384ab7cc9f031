"""The native extension's loading paths: the JIT build used when no prebuilt mmrec_fast._C is importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

# Run in a fresh interpreter in which importing the prebuilt mmrec_fast._C fails, as on an install without it.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys, warnings

    class NoPrebuilt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmrec_fast._C":
                raise ImportError("prebuilt extension hidden by the test")
            return None

    sys.meta_path.insert(0, NoPrebuilt())
    import torch, mmrec_fast
    from mmrec_fast import Graph, _native

    graph = Graph.bipartite([0, 1, 2, 2], [0, 1, 0, 1], 3, 2)
    x = torch.randn(5, 4, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mmrec_fast.propagate(graph, x, 2, backend="native")
    ref = mmrec_fast.propagate(graph, x, 2, backend="reference")
    print(json.dumps({"status": _native.status(), "max_error": (out - ref).abs().max().item(),
                      "warnings": [str(w.message) for w in caught]}))
    """
)


def test_jit_build_when_no_prebuilt_extension(tmp_path):
    env = {**os.environ, "MMREC_FAST_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"]["available"] and report["status"]["how"] == "jit", report
    assert str(tmp_path / "cache") in report["status"]["file"]
    assert report["max_error"] < 1e-12
    assert any("JIT-building" in w for w in report["warnings"]), report["warnings"]
