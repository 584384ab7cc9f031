"""Smoke tests of the ``mmrec-fast`` command line: train (synthetic default and a data directory), evaluate a
checkpoint, resume, ``--set`` and its one-line errors, ``models``, and the errors for a bad path or an unknown
model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from mmrec_fast.cli import main
from mmrec_fast.models import MODELS

from test_data import write_mmrec

FAST = ["--epochs", "2", "--no-progress", "--ks", "5,20", "--set", "dim=16"]


def test_train_on_the_synthetic_default_then_evaluate_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lightgcn", "--synthetic", "small", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "synthetic-small" in printed and "epoch    1" in printed
    assert re.search(r"test metrics of the best model \(epoch \d, by recall@20 on valid\)", printed)
    assert re.search(r"recall\s+\d\.\d{4}\s+\d\.\d{4}", printed)
    assert re.search(r"time per epoch: \d+\.\d\d s training", printed)
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["name"] == "lightgcn" and record["epochs_run"] == 2

    threads = torch.get_num_threads()
    try:
        assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    row = re.search(r"recall\s+(\d\.\d{4})\s+(\d\.\d{4})", printed)
    assert row and float(row.group(2)) == pytest.approx(record["test"]["recall@20"], abs=5e-5)

    assert main(["train", "--model", "lightgcn", "--synthetic", "small", "--out", str(out), "--resume", str(out / "last.pt"),
                 *FAST[:1], "3", *FAST[2:]]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "epoch    2" in printed and "epoch    1 " not in printed


def test_train_on_a_data_directory(tmp_path, capsys):
    directory = write_mmrec(tmp_path / "toy")
    assert main(["train", "--model", "lightgcn", "--data", str(directory), "--epochs", "1", "--no-progress", "--ks", "1,2", "--valid-metric", "ndcg@2"]) == 0
    assert "Dataset('toy'" in capsys.readouterr().out


def test_errors(tmp_path, capsys):
    assert main(["train", "--model", "lightgcn", "--data", str(tmp_path / "absent"), *FAST]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--model", "lightgcn", "--data", str(tmp_path / "empty"), *FAST]) == 2
    assert "no <name>.inter file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mmgcn"])
    assert exit_info.value.code == 2
    assert f"invalid choice: 'mmgcn' (choose from {', '.join(sorted(MODELS))})" in capsys.readouterr().err.replace("'", "").replace("mmgcn", "'mmgcn'")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "absent.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["train", "--model", "lightgcn", "--synthetic", "small", "--valid-metric", "recall@10", *FAST]) == 2
    assert "valid_metric 'recall@10' is not computed" in capsys.readouterr().err


def test_info_and_bench_still_work(capsys):
    import mmrec_fast

    assert main(["info"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(mmrec_fast.info(), default=str))
    assert printed["mmrec_fast"] == mmrec_fast.__version__
    for key in ("torch", "backends", "default_backend", "native"):
        assert printed[key] == expected[key], key
    assert main(["bench", "no_such_op"]) == 2
    assert "unknown benchmark 'no_such_op'" in capsys.readouterr().err


def test_console_script():
    script = shutil.which("mmrec-fast")
    command = [script] if script else [sys.executable, "-m", "mmrec_fast"]
    result = subprocess.run(command + ["train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and f"--model {{{','.join(sorted(MODELS))}}}" in result.stdout


def test_set_and_its_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "lightgcn", "--synthetic", "small", "--out", str(out), "--set", "num_layers=1",
                 "--set", "init=xavier", "--lr", "2e-3", *FAST]) == 0  # fmt: skip
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["config"] == {"dim": 16, "num_layers": 1, "reg_weight": 1e-4, "init": "xavier", "l2": "squared"}
    assert record["config"]["lr"] == 2e-3 and record["overrides"] == {"epochs": 2, "lr": 2e-3, "ks": [5, 20]}
    capsys.readouterr()
    for assignment, message in [
        ("layers=2", "LightGCN.Config has no hyperparameter 'layers'; it has dim, init, l2, num_layers, reg_weight"),
        ("dim=sixteen", "dim must be an integer, got 'sixteen'"),
        ("dim=0", "dim must be >= 1, got 0"),
        ("init=kaiming", "init must be one of 'normal', 'xavier'; got 'kaiming'"),
        ("reg_weight=nan", "reg_weight must be a finite number, got nan"),
        ("dim", "--set takes name=value, got 'dim'"),
    ]:
        assert main(["train", "--model", "lightgcn", "--synthetic", "small", *FAST, "--set", assignment]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"mmrec-fast train: error: {message}", err


def test_models_lists_every_model_with_its_hyperparameters(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{sorted(MODELS)[0]}: ") and "\nlightgcn: LightGCN" in printed
    assert "slmrec: SLMRec" in printed and "--set ssl_alpha" in printed and "0.1" in printed
    assert "training defaults: --optimizer adam, --lr 0.01, --weight-decay 0.0001" in printed
    assert "item features: image, audio, text" in printed


def test_user_errors_are_one_line(tmp_path, capsys):
    import torch

    cases = [(["--device", "bogus"], "--device 'bogus' is not a device (cpu, cuda, cuda:1, ...)")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: "))

    for extra, message in cases:
        assert main(["train", "--model", "lightgcn", "--synthetic", "small", *FAST, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mmrec-fast train: error: {message}") and "\n" not in err, err
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk")
    for path in (tmp_path / "run.json", tmp_path / "junk.pt"):
        assert main(["evaluate", "--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mmrec-fast evaluate: error: {path}: not a readable mmrec_fast checkpoint") and "\n" not in err, err


def test_help_is_plain_text_with_every_default(capsys):
    """--help renders without reST markup, and every option of train says its default (or that the model's
    training default applies)."""
    for argv, least in ((["--help"], 0), (["train", "--help"], 15), (["evaluate", "--help"], 6), (["search", "--help"], 18)):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        printed = capsys.readouterr().out
        assert "``" not in printed and ":func:" not in printed, printed
        options = re.split(r"\n  (?=-)", printed.split("options:", 1)[1])[1:]
        assert len(options) > least
        for option in options:
            if option.startswith(("-h", "--resume", "--no-progress", "--set", "--model", "--checkpoint", "--verbose", "--out DIR  ")):
                continue
            assert "default" in " ".join(option.split()), (argv, option)


def test_a_backend_that_cannot_run_here_is_one_line(capsys, monkeypatch):
    """--backend triton on a CPU outside the Triton interpreter (the tests run inside it, so it is switched off)."""
    import torch

    from mmrec_fast import kernels

    if torch.cuda.is_available():
        pytest.skip("Triton runs on this machine's GPU")
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    assert main(["train", "--model", "lightgcn", "--synthetic", "small", *FAST, "--backend", "triton"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmrec-fast train: error: propagate: backend 'triton' cannot run here") and "\n" not in err, err


def test_train_seeds_and_search(tmp_path, capsys):
    """train --seeds: one run per seed and the summary; search: trials, the chosen setting over seeds, the report;
    a second search call continues (nothing is trained again)."""
    pytest.importorskip("optuna")
    out = tmp_path / "seeds"
    assert main(["train", "--model", "lightgcn", "--synthetic", "small", "--out", str(out), "--seeds", "2", "--seed", "5", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "test metrics over 2 seeds" in printed and re.search(r"recall@20 +0\.\d{4} ± 0\.\d{4}", printed)
    assert sorted(p.name for p in out.iterdir()) == ["seed_5", "seed_6", "seeds.json"]
    assert main(["train", "--model", "lightgcn", "--synthetic", "small", "--seeds", "2", "--resume", "x", *FAST]) == 2
    assert "--seeds does not take --resume" in capsys.readouterr().err

    out = tmp_path / "search"
    argv = ["search", "--model", "lightgcn", "--synthetic", "small", "--out", str(out), "--grid", "num_layers=1,2",
            "--grid", "lr=1e-3", "--seeds", "2", *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "(2/2)" in printed and "chosen: num_layers=" in printed and "test metrics over seeds 0, 1" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    best = max(summary["trials"], key=lambda t: (t["valid"], -t["number"]))
    assert summary["chosen"]["setting"] == best["setting"]
    assert (out / "report.md").is_file()
    assert main(argv) == 0
    assert "trial 0 (1/" not in capsys.readouterr().out  # resumed: the finished trials are not run again
    assert main(["search", "--model", "lightgcn", "--synthetic", "small", "--grid", "num_layers=1", *FAST]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["search", "--model", "lightgcn", "--synthetic", "small", "--out", str(tmp_path / "x"), "--grid", "colour=red", *FAST]) == 2
    assert "no hyperparameter 'colour'" in capsys.readouterr().err
