"""The benchmark report (benchmarks/report.py, ``mmrec-fast bench report``): pairing, speed-ups, the page, the
charts, and its errors."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO
from mmrec_fast.cli import main

sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402


def record(tmp_path, name="run"):
    benchmarks = [
        {"group": "propagate, baby", "name": "test_p[mmrec_fast native-baby]", "stats": {"median": 0.010},
         "extra_info": {"peak_extra_mb": 12.5}},
        {"group": "propagate, baby", "name": "test_p[torch.sparse.mm-baby]", "stats": {"median": 0.040},
         "extra_info": {"peak_extra_mb": 100.0}},
        {"group": "propagate, baby", "name": "test_p[scipy-baby]", "stats": {"median": 0.005}, "extra_info": {}},
        {"group": "knn", "name": "test_k[mmrec_fast native-x]", "stats": {"median": 2.0}, "extra_info": {}},
        {"group": "knn", "name": "test_k[mmrec_fast triton-x]", "stats": {"median": 4.0}, "extra_info": {}},
        {"group": "knn", "name": "test_k[dense torch-x]", "stats": {"median": 8.0}, "extra_info": {}},
    ]  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"machine_info": {"mmrec_fast": "Test CPU, 2 cores, 1 torch threads"}, "benchmarks": benchmarks}))
    return path


def test_pairing_and_speedups():
    cases = [report.Case("mmrec_fast native-a", 1.0), report.Case("mmrec_fast triton-a", 2.0), report.Case("torch-a", 4.0)]
    assert [(o.short, b.short, r) for o, b, r in report.speedups(cases)] == [
        ("mmrec_fast native", "torch", 4.0), ("mmrec_fast triton", "torch", 2.0)]  # fmt: skip
    assert report.case_label("test_x[mmrec_fast native-baby]") == "mmrec_fast native-baby"


def test_page_and_charts(tmp_path):
    pytest.importorskip("matplotlib")
    page = report.write_report(record(tmp_path), tmp_path / "out")
    text = page.read_text()
    assert "Machine: Test CPU, 2 cores, 1 torch threads." in text
    assert "| torch.sparse.mm-baby | 40.00 ms | 100.0 MB | mmrec_fast native: 4.00x |" in text
    assert "| scipy-baby | 5.00 ms | — | mmrec_fast native: 0.50x |" in text  # a slower case is shown as such
    assert "| dense torch-x | 8.00 s | — | mmrec_fast native: 4.00x; mmrec_fast triton: 2.00x |" in text
    for chart in ("run-speedup.png", "run-memory.png"):
        assert f"![speed-up]({chart})" in text
        assert (tmp_path / "out" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    text = report.write_report(record(tmp_path, "bare")).read_text()
    assert "Charts not drawn: matplotlib is not installed" in text and ".png" not in text
    assert not list(tmp_path.glob("*.png"))


def test_cli(tmp_path, capsys):
    path = record(tmp_path)
    assert main(["bench", "report", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "run-report.md").is_file()
    capsys.readouterr()
    (tmp_path / "junk.json").write_text("{}")
    for argv, message in ((["bench", "report", str(tmp_path / "missing.json")], "no such file"),
                          (["bench", "report", str(tmp_path / "junk.json")], "not a pytest-benchmark record"),
                          (["bench", "report"], "give one pytest-benchmark JSON record")):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mmrec-fast bench report: error:") and message in err and "\n" not in err, err
