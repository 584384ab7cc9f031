"""Hyperparameter search and multi-seed runs: selection looks at validation only (a case where valid and test prefer
different settings), only the chosen setting is evaluated on test, the search resumes after an interruption (also
in the middle of a trial), failed trials are recorded and the search goes on, every model's authors' grid parses,
and train --seeds reports mean / sd / min-max."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from mmrec_fast.data import synthetic
from mmrec_fast.models import MODELS, ModelConfig, Recommender, option
from mmrec_fast.search import RunSpec, parse_grid, search, setting_folder, split_setting, summarize, train_seeds
from mmrec_fast.train import Trainer

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={}, seed=5)


class Oracle(Recommender):
    """Ranks a user's items of one split first: ``prefer="valid"`` scores the user's validation items highest,
    ``prefer="test"`` the test items, ``prefer="none"`` neither; ``prefer="boom"`` fails in training (as a run out of
    memory would). ``interrupt_once[prefer] = epoch``: raise KeyboardInterrupt once at that epoch (an interrupted
    process); ``killed_once[prefer] = epoch``: raise SystemExit there, which optuna does not catch, so the trial is
    left RUNNING in the study (a killed process)."""

    name = "oracle"
    ops = ()
    runs: list[tuple[str, int]] = []  # (prefer, seed) of every training run started
    interrupt_once: dict = {}
    killed_once: dict = {}

    @dataclass(frozen=True)
    class Config(ModelConfig):
        prefer: Literal["valid", "test", "none", "boom"] = option("none", "which split's items to rank first")
        noise: float = option(0.0, "weight of a random score", minimum=0.0)

    def __init__(self, dataset, config=None, *, backend=None, **changes):
        super().__init__(dataset, config, backend=backend, **changes)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        scores = torch.rand(self.num_users, self.num_items) * self.config.noise
        if self.config.prefer in ("valid", "test"):
            split = dataset.split(self.config.prefer)
            scores[split.users, split.items] += 1.0
        self.register_buffer("scores", scores)
        self.epochs_trained = 0

    def pre_epoch(self, epoch):
        Oracle.runs.append((self.config.prefer, torch.initial_seed()))
        if self.config.prefer == "boom":
            raise RuntimeError("CUDA out of memory (simulated)")
        if Oracle.interrupt_once.get(self.config.prefer) == epoch:
            del Oracle.interrupt_once[self.config.prefer]
            raise KeyboardInterrupt
        if Oracle.killed_once.get(self.config.prefer) == epoch:
            del Oracle.killed_once[self.config.prefer]
            raise SystemExit("killed")

    def losses(self, batch):
        return {"zero": self.weight.square().sum()}

    def embeddings(self):
        return self.scores, torch.eye(self.num_items)


def spec(dataset, **overrides) -> RunSpec:
    return RunSpec(Oracle, dataset, train_overrides={"epochs": 3, "patience": 1, "batch_size": 512, "ks": (5, 20),
                                                     **overrides})  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_oracle():
    Oracle.runs.clear()
    Oracle.interrupt_once.clear()
    Oracle.killed_once.clear()


def test_selection_uses_validation_and_only_the_chosen_setting_sees_test(dataset, tmp_path, monkeypatch):
    splits = []
    original = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split: (splits.append((self.model.config.prefer, split)), original(self, split))[1])
    lines = []
    summary = search(spec(dataset), tmp_path, grid={"prefer": ["test", "none", "valid"]}, seeds=2, say=lines.append)
    # valid prefers "valid", test prefers "test": a search that looked at test would choose "test"
    by_setting = {t["setting"]["prefer"]: t["valid"] for t in summary["trials"]}
    assert by_setting["valid"] > by_setting["none"] and by_setting["valid"] > by_setting["test"]
    assert summary["chosen"]["setting"] == {"prefer": "valid"}
    assert {(prefer, split) for prefer, split in splits if split == "test"} == {("valid", "test")}
    assert sum(split == "test" for _, split in splits) == 2  # once per seed of the chosen setting
    for trial in summary["trials"]:
        record = json.loads((tmp_path / trial["folder"] / "run.json").read_text())
        assert record["test"] is None and record["finished"]
        assert not (tmp_path / trial["folder"] / "last.pt").exists()  # a finished trial keeps its run.json only
    assert (tmp_path / "chosen" / "prefer=valid" / "seed_0" / "best.pt").is_file()
    test_runs = [json.loads((tmp_path / "chosen" / "prefer=valid" / f"seed_{s}" / "run.json").read_text()) for s in summary["seeds"]]
    assert summary["seeds"] == [0, 1]
    assert [r["config"]["seed"] for r in test_runs] == [0, 1]
    assert all(r["search"]["setting"] == {"prefer": "valid"} and r["search"]["trials_completed"] == 3 for r in test_runs)
    assert summary["test"]["recall@20"]["values"] == [r["test"]["recall@20"] for r in test_runs]
    # the chosen setting's test recall is below the test-preferring one's (which is never evaluated on test)
    assert summary["test"]["recall@20"]["mean"] < 1.0
    report = (tmp_path / "report.md").read_text()
    assert "prefer=valid **chosen**" in report and "recall@20" in report
    assert (tmp_path / "search_trials.png").stat().st_size > 0 and (tmp_path / "search_parameters.png").stat().st_size > 0
    assert any("(3/3)" in line and "valid recall@20" in line for line in lines)


def test_the_chosen_trials_run_is_its_seeds_run(dataset, tmp_path):
    lines = []
    summary = search(spec(dataset), tmp_path, grid={"prefer": ["none", "valid", "test"]}, seeds=2, say=lines.append)
    assert summary["chosen"]["setting"] == {"prefer": "valid"} and summary["chosen"]["trial_run_reused"]
    assert any("seed 0 is the chosen trial's own run" in line for line in lines)
    trial = json.loads((tmp_path / "trials" / "prefer=valid" / "run.json").read_text())
    assert Oracle.runs.count(("valid", 0)) == trial["epochs_run"]  # the trial's epochs only: seed 0 was not retrained
    assert Oracle.runs.count(("valid", 1)) > 0  # seed 1 was trained
    seed_run = tmp_path / "chosen" / "prefer=valid" / "seed_0"
    assert (seed_run / "last.pt").is_file() and (seed_run / "best.pt").is_file()
    assert not (tmp_path / "trials" / "prefer=valid" / "last.pt").exists()  # moved, not copied
    record = json.loads((seed_run / "run.json").read_text())
    assert record["search"]["trial_run_reused"] and record["resumed_from"].endswith("last.pt")
    assert record["epochs"] == trial["epochs"] and record["test"] == summary["runs"][0]["test"]


def test_only_the_leading_trial_keeps_its_checkpoints(dataset, tmp_path, monkeypatch):
    def holding():
        return {f.name for f in (tmp_path / "trials").glob("*") if (f / "last.pt").is_file()}

    seen = []  # which trial folders hold a last.pt as each run starts
    original = RunSpec.train
    monkeypatch.setattr(RunSpec, "train", lambda self, *args, **options: (seen.append(holding()), original(self, *args, **options))[1])
    summary = search(spec(dataset), tmp_path, grid={"prefer": ["none", "valid", "test"]}, seeds=[5], say=lambda line: None)
    order = [t["setting"]["prefer"] for t in sorted(summary["trials"], key=lambda t: t["number"])]
    valid = {t["setting"]["prefer"]: t["valid"] for t in summary["trials"]}
    for position in (1, 2, 3):  # before the 2nd and 3rd trial and the seed run: only the leader so far
        leader = max(order[:position], key=lambda p: (valid[p], -order.index(p)))
        assert seen[position] == {f"prefer={leader}"}
    # seed 5 is not the search's seed (0): nothing is reused and the chosen trial keeps its checkpoints
    assert "trial_run_reused" not in summary["chosen"] and holding() == {"prefer=valid"}


def test_a_reused_trial_run_equals_a_fresh_run_of_its_seed(dataset, tmp_path):
    # the reuse rests on training being deterministic: a real model's fresh seed-0 run gives the same record
    model_spec = RunSpec(MODELS["lightgcn"], dataset, train_overrides={"epochs": 3, "patience": 2, "batch_size": 128, "ks": (5, 20)})
    summary = search(model_spec, tmp_path / "search", grid={"reg_weight": ["1e-2", "1e-4"]}, seeds=1, say=lambda line: None)
    assert summary["chosen"]["trial_run_reused"]
    fresh = model_spec.train(summary["chosen"]["setting"], 0, tmp_path / "fresh", evaluate_test=True)
    assert fresh["test"] == summary["runs"][0]["test"]
    reused = json.loads((tmp_path / "search" / "chosen" / setting_folder(summary["chosen"]["setting"]) / "seed_0" / "run.json").read_text())
    assert [e["loss"] for e in reused["epochs"]] == [e["loss"] for e in fresh["epochs"]]


def test_ties_go_to_the_earlier_trial(dataset, tmp_path):
    summary = search(spec(dataset), tmp_path, grid={"noise": ["0", "0.0"]}, seeds=1, keep_checkpoints=True, say=lambda line: None)
    assert all((tmp_path / t["folder"] / "best.pt").is_file() for t in summary["trials"])
    first = min(summary["trials"], key=lambda t: t["number"])
    assert summary["trials"][0]["valid"] == summary["trials"][1]["valid"]
    assert summary["chosen"]["trial"] == first["number"]


def test_a_failed_trial_is_recorded_and_the_search_goes_on(dataset, tmp_path):
    summary = search(spec(dataset), tmp_path, grid={"prefer": ["boom", "valid", "none"]}, seeds=1, say=lambda line: None)
    states = {t["setting"]["prefer"]: t for t in summary["trials"]}
    assert states["boom"]["state"] == "failed" and "out of memory" in states["boom"]["error"]
    assert states["valid"]["state"] == states["none"]["state"] == "complete"
    assert summary["chosen"]["setting"] == {"prefer": "valid"} and summary["chosen"]["trials_failed"] == 1
    assert "out of memory" in (tmp_path / "report.md").read_text()


def test_resume_continues_the_search_and_an_interrupted_trial(dataset, tmp_path):
    grid = {"prefer": ["none", "valid", "test"]}
    first = search(spec(dataset), tmp_path, grid=grid, trials=1, seeds=1, say=lambda line: None)
    assert len(first["trials"]) == 1
    done = first["trials"][0]["setting"]["prefer"]
    trained = len(Oracle.runs)
    Oracle.interrupt_once.update({prefer: 1 for prefer in grid["prefer"] if prefer != done})  # cut off after epoch 0
    with pytest.raises(KeyboardInterrupt):
        search(spec(dataset), tmp_path, grid=grid, seeds=1, say=lambda line: None)
    (cut,) = [prefer for prefer in grid["prefer"] if prefer != done and prefer not in Oracle.interrupt_once]
    Oracle.interrupt_once.clear()
    lines = []
    summary = search(spec(dataset), tmp_path, grid=grid, seeds=1, say=lines.append)
    assert any(f"resuming the interrupted trial prefer={cut}" in line for line in lines)
    rows = summary["trials"]
    assert sorted(t["state"] for t in rows) == ["complete", "complete", "complete", "interrupted"]
    assert sorted(t["setting"]["prefer"] for t in rows if t["state"] == "complete") == ["none", "test", "valid"]
    # the first call's trial was not trained again, and the cut-off one went on from its last.pt (epoch 0 done)
    later_trials = Oracle.runs[trained:-1]  # the last run is the chosen setting's seed run
    assert done not in {prefer for prefer, _ in later_trials}
    record = json.loads((tmp_path / "trials" / f"prefer={cut}" / "run.json").read_text())
    assert record["resumed_from"].endswith("last.pt") and record["epochs"][0]["epoch"] == 0 and record["finished"]
    assert summary["chosen"]["setting"] == {"prefer": "valid"}
    assert json.loads((tmp_path / "chosen" / "prefer=valid" / "seed_0" / "run.json").read_text())["model"]["config"]["prefer"] == "valid"
    # a search of other arguments is refused in the same folder
    with pytest.raises(ValueError, match="another grid"):
        search(spec(dataset), tmp_path, grid={"prefer": ["none", "valid"]}, seeds=1, say=lambda line: None)


def test_resume_after_a_process_killed_in_the_grids_last_trial(dataset, tmp_path):
    # the killed trial is left RUNNING and holds the grid's last point: marking it failed must not make the grid
    # sampler stop a study that is not optimising (optuna raises there)
    grid = {"prefer": ["none", "valid"]}
    first = search(spec(dataset), tmp_path, grid=grid, trials=1, seeds=1, say=lambda line: None)
    (last,) = [prefer for prefer in grid["prefer"] if prefer != first["trials"][0]["setting"]["prefer"]]
    Oracle.killed_once[last] = 1
    with pytest.raises(SystemExit):
        search(spec(dataset), tmp_path, grid=grid, seeds=1, say=lambda line: None)
    lines = []
    summary = search(spec(dataset), tmp_path, grid=grid, seeds=1, say=lines.append)
    assert any(f"resuming the interrupted trial prefer={last}" in line for line in lines)
    assert sorted(t["state"] for t in summary["trials"]) == ["complete", "complete", "interrupted"]
    record = json.loads((tmp_path / "trials" / f"prefer={last}" / "run.json").read_text())
    assert record["resumed_from"].endswith("last.pt") and record["finished"]
    assert summary["chosen"]["setting"] == {"prefer": "valid"}


def test_tpe_sampler_and_train_fields(dataset, tmp_path):
    summary = search(spec(dataset), tmp_path, grid={"prefer": ["none", "valid"], "lr": ["1e-3", "1e-2"]},
                     sampler="tpe", trials=3, seed=4, seeds=1, say=lambda line: None)  # fmt: skip
    assert len(summary["trials"]) == 3 and summary["chosen"]["search_seed"] == 4
    chosen = "_".join(f"{k}={v}" for k, v in summary["chosen"]["setting"].items())
    record = json.loads((tmp_path / "chosen" / chosen / "seed_4" / "run.json").read_text())
    assert record["config"]["lr"] == float(summary["chosen"]["setting"]["lr"]) and record["config"]["seed"] == 4
    with pytest.raises(ValueError, match="needs --trials"):
        search(spec(dataset), tmp_path / "other", grid={"prefer": ["none"]}, sampler="tpe", say=lambda line: None)


def test_grid_parsing_refuses_what_the_model_cannot_take():
    assert parse_grid(Oracle, ["prefer=valid,test", "lr=1e-4, 1e-3"]) == {"prefer": ["valid", "test"], "lr": ["1e-4", "1e-3"]}
    for texts, message in ((["prefer"], "name=value"), (["colour=red"], "no hyperparameter 'colour'"),
                           (["prefer=valid,maybe"], "must be one of"), (["lr=fast"], "lr must be a number"),
                           (["lr=-1"], "lr must be"), (["noise=1,1"], "listed twice"),
                           (["noise=1", "noise=2"], "given twice"), (["batch_size=0"], "batch_size must be")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_grid(Oracle, texts)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_authors_grid_parses(name, dataset, tmp_path):
    cls = MODELS[name]
    assert cls.search_space_source, f"{name} does not say where its grid comes from"
    if not cls.search_space:  # the authors ship none: the source says so, and search asks for --grid
        assert cls.search_space_source.startswith("none")
        with pytest.raises(ValueError, match="give --grid"):
            search(RunSpec(cls, dataset), tmp_path, say=lambda line: None)
        return
    for field, values in cls.search_space.items():
        for value in values:
            split_setting(cls, {field: value})


def test_train_seeds_summary(dataset, tmp_path):
    result = train_seeds(spec(dataset, epochs=1), [3, 7], tmp_path, setting={"prefer": "valid", "noise": "0.5"}, say=lambda line: None)
    records = [json.loads((tmp_path / f"seed_{s}" / "run.json").read_text()) for s in (3, 7)]
    values = [r["test"]["ndcg@20"] for r in records]
    assert values[0] != values[1]  # the seed changes the model (its random scores)
    s = result["test"]["ndcg@20"]
    assert s["values"] == values and s["min"] == min(values) and s["max"] == max(values)
    assert s["mean"] == pytest.approx(sum(values) / 2) and s["sd"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert json.loads((tmp_path / "seeds.json").read_text())["seeds"] == [3, 7]
    # a second call reads the finished runs back instead of training again
    count = len(Oracle.runs)
    assert train_seeds(spec(dataset, epochs=1), [3, 7], tmp_path, setting={"prefer": "valid", "noise": "0.5"},
                       say=lambda line: None)["test"] == result["test"]  # fmt: skip
    assert len(Oracle.runs) == count
    assert summarize([{"m": 1.0}])["m"]["sd"] is None
