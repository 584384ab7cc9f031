"""Hyperparameter search and multi-seed runs: choose on validation, test once, report mean and spread.

    search(model, dataset, grid, out_dir, seeds=3)   every setting of ``grid`` (or ``trials`` of them drawn by TPE)
                                                     trained through the :class:`~mmrec_fast.Trainer` with early
                                                     stopping on the model's valid metric, and *no* test
                                                     evaluation; the setting with the best validation score is
                                                     then trained with ``seeds`` seeds, and only those runs are
                                                     evaluated on test
    train_seeds(model, dataset, seeds, ...)          one configuration over several seeds, one run record each,
                                                     and the mean, standard deviation and min-max of every test
                                                     metric

Why: MMRec's quick_start picks the final setting of a grid by its test metric (enoche/MMRec issue 64), which leaks
the test set into model selection, and single-seed figures hide a spread as large as the gaps papers report
(Jinfeng-Xu/MENTOR issue 2: Recall@20 0.1032-0.1054 over 20 runs of one setting).

A setting is ``{name: text}``: each name is a field of the model's ``Config`` (``mmrec-fast models`` lists them)
or one of :data:`TRAIN_FIELDS` (lr, weight_decay, ...), each value the text ``--set`` / ``--grid`` would take, parsed
by the field's type. A model's ``search_space`` is its authors' grid, used when ``grid`` is left out.

The search runs on optuna (an optional dependency: ``pip install optuna``), with its study in
``<out>/search.db`` (SQLite): a second call with the same arguments continues it. Every trial trains in
``<out>/trials/<setting>/`` (run.json, last.pt, best.pt; once a trial has finished its checkpoints are deleted,
unless ``keep_checkpoints`` or it leads the search), so a trial cut off by an interruption resumes from its
last epoch; a trial that raises (out of memory, a non-finite loss, ...) is recorded as failed with its error and the
search goes on. Selection: the highest validation score among the completed trials, ties to the earlier trial.
The chosen setting's seed runs go to ``<out>/chosen/<setting>/seed_<s>/``; their run.json says under ``search``
which search chose the setting and how. The run of the search's own seed is the chosen trial's run (the same setting
and seed, and training is deterministic at a given thread count): its checkpoints move there and it is evaluated on
test instead of trained again.
``<out>/summary.json`` and ``<out>/report.md`` (with charts of the validation score per trial and per
hyperparameter) describe the whole search.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .train import TrainConfig, Trainer, _plain, seed_everything

SEARCH_FORMAT = "mmrec_fast.search/1"
#: TrainConfig fields a setting may hold besides the model's hyperparameters
TRAIN_FIELDS = ("lr", "weight_decay", "batch_size", "optimizer", "negatives")
SAMPLERS = ("grid", "tpe")


# -- settings -----------------------------------------------------------------------------------------------------
def parse_grid(model, texts: list[str]) -> dict[str, list[str]]:
    """``["lr=1e-4,1e-3", "reg_weight=0.1,1"]`` -> ``{"lr": ["1e-4", "1e-3"], "reg_weight": ["0.1", "1"]}``, every
    name and value checked against ``model`` (a class); a name given twice or without values is refused."""
    cls = _model_class(model)
    grid: dict[str, list[str]] = {}
    for text in texts:
        name, equals, values = text.partition("=")
        name = name.strip()
        choices = [value.strip() for value in values.split(",") if value.strip()]
        if not equals or not name or not choices:
            raise ValueError(f"--grid takes name=value,value,..., got {text!r}")
        if name in grid:
            raise ValueError(f"--grid {name} is given twice")
        if len(set(choices)) != len(choices):
            raise ValueError(f"--grid {name}: a value is listed twice in {text!r}")
        grid[name] = choices
    check_space(cls, grid)
    return grid


def check_space(model, grid: dict[str, list[str]]) -> None:
    """Raise ValueError naming the first name or value of ``grid`` that ``model`` (a class) cannot take."""
    cls = _model_class(model)
    if not grid:
        raise ValueError(f"{cls.name}: an empty search space")
    for name, values in grid.items():
        if not values:
            raise ValueError(f"{cls.name}: {name} has no values to search")
        for value in values:
            split_setting(cls, {name: value})


def split_setting(model, setting: dict[str, str]) -> tuple:
    """(the model's Config, {TrainConfig field: value}) of ``setting`` (texts); an unknown name or a bad value raises
    ValueError naming it."""
    cls = _model_class(model)
    model_fields = {spec.name for spec in dataclasses.fields(cls.Config)}
    train_types = {spec.name: spec.type for spec in dataclasses.fields(TrainConfig)}
    model_part, train_part = {}, {}
    for name, text in setting.items():
        if name in model_fields:
            model_part[name] = str(text)
        elif name in TRAIN_FIELDS:
            train_part[name] = _train_value(name, str(text), train_types[name])
        else:
            raise ValueError(f"{cls.name} has no hyperparameter {name!r}: search the model's ({', '.join(sorted(model_fields))}) "
                             f"or training's ({', '.join(TRAIN_FIELDS)})")  # fmt: skip
    return cls.Config().parse(model_part), train_part


def _train_value(name: str, text: str, annotation: str):
    kind = {"int": int, "float": float}.get(annotation.split()[0].rstrip(","), str)
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    TrainConfig(**{name: value})  # raises for an out-of-range or unknown value, naming the field
    return value


def setting_label(setting: dict[str, str]) -> str:
    """``lr=1e-3 reg_weight=1e-4``: how reports and progress lines name a setting."""
    return " ".join(f"{name}={value}" for name, value in setting.items())


def setting_folder(setting: dict[str, str]) -> str:
    """A file name for ``setting`` (``lr=1e-3_reg_weight=1e-4``; characters a file name should not hold become -)."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(f"{name}={value}" for name, value in setting.items()))


# -- one run, several seeds ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunSpec:
    """What every run of a search or a multi-seed training shares: the dataset, the model (class), the fixed
    ``--set`` assignments and training overrides, the backend and device, and how much a run prints."""

    model: type
    dataset: object
    assignments: dict[str, str] = dataclasses.field(default_factory=dict)
    train_overrides: dict = dataclasses.field(default_factory=dict)
    backend: str | None = None
    device: str = "cpu"
    verbose: bool = False
    progress: bool = False

    def train(self, setting: dict[str, str], seed: int, out_dir: Path | None, *, evaluate_test: bool,
              record_extra: dict | None = None, log: Callable[[str], None] | None = None) -> dict:  # fmt: skip
        """The run record of ``setting`` with ``seed``, trained in ``out_dir`` (None: nothing written). A finished
        run found there is read back, an unfinished one resumed from its last.pt, so an interrupted search or
        multi-seed training continues where it stopped."""
        model_config, train_part = split_setting(self.model, {**self.assignments, **setting})
        overrides = {**self.train_overrides, **train_part, "seed": seed}
        if out_dir is not None:
            record = _finished_record(out_dir, evaluate_test)
            if record is not None:
                wanted = {"model": _plain(model_config.to_dict()), "seed": seed, **_plain(train_part)}
                found = {"model": record["model"]["config"], "seed": record["config"]["seed"],
                         **{name: record["config"][name] for name in train_part}}  # fmt: skip
                if found != wanted:
                    raise ValueError(f"{out_dir} holds a finished run of another configuration ({found}, wanted {wanted})")
                return record
        config = TrainConfig.for_model(self.model, **overrides, device=self.device,
                                       out_dir=str(out_dir) if out_dir is not None else None, progress=self.progress,
                                       verbose=self.verbose)  # fmt: skip
        seed_everything(config.seed)
        model = self.model(self.dataset, model_config, backend=self.backend)
        model.check_backend(self.device)
        trainer = Trainer(model, self.dataset, config, overrides=overrides, log=log, record_extra=record_extra)
        if out_dir is not None and (out_dir / "last.pt").is_file():
            trainer.resume(out_dir / "last.pt")
        return trainer.fit(evaluate_test=evaluate_test)


def _finished_record(out_dir: Path, with_test: bool) -> dict | None:
    path = out_dir / "run.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("finished") and (record.get("test") is not None or not with_test):
        return record
    return None


def train_seeds(spec: RunSpec, seeds: list[int], out_dir: Path | None = None, *, setting: dict[str, str] | None = None,
                record_extra: dict | None = None, say: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Train ``setting`` (default: the spec's configuration as it is) once per seed, in ``<out_dir>/seed_<s>/``;
    returns ``{"seeds": [...], "runs": [record, ...], "test": summary}`` with :func:`summarize` of the test
    metrics (also written to ``<out_dir>/seeds.json``)."""
    setting = dict(setting or {})
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    records = []
    for position, seed in enumerate(seeds):
        start = time.perf_counter()
        folder = Path(out_dir) / f"seed_{seed}" if out_dir is not None else None
        record = spec.train(setting, seed, folder, evaluate_test=True, record_extra=record_extra)
        records.append(record)
        metric = record["config"]["valid_metric"]
        say(f"seed {seed} ({position + 1}/{len(seeds)}): test {metric} {record['test'][metric]:.4f}, "
            f"valid {_score(record, metric):.4f}, best epoch {record['best_epoch']} of {record['epochs_run']}, "
            f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    result = {"seeds": list(seeds), "runs": [_run_summary(r) for r in records], "test": summarize([r["test"] for r in records])}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "seeds.json").write_text(json.dumps(_plain(result), indent=1))
    return result


def summarize(metrics: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric over runs: mean, sd (sample standard deviation, n - 1; None for one run), min, max, values."""
    summary = {}
    for name in metrics[0]:
        values = [float(m[name]) for m in metrics]
        summary[name] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                         "min": min(values), "max": max(values), "values": values}  # fmt: skip
    return summary


def summary_text(summary: dict[str, dict], names: tuple[str, ...] | None = None) -> str:
    """Lines ``recall@20  0.0873 ± 0.0030  [0.0834, 0.0907]`` of :func:`summarize`'s result."""
    lines = []
    for name in names or tuple(summary):
        s = summary[name]
        spread = f" ± {s['sd']:.4f}" if s["sd"] is not None else ""
        lines.append(f"{name:12} {s['mean']:.4f}{spread}  [{s['min']:.4f}, {s['max']:.4f}]  (n={len(s['values'])})")
    return "\n".join(lines)


def _score(record: dict, metric: str) -> float:
    return float(record["best_valid"][metric]) if record.get("best_valid") else float("nan")


def _run_summary(record: dict) -> dict:
    return {key: record.get(key) for key in ("started", "finished", "best_epoch", "epochs_run", "median_epoch_seconds",
                                             "best_valid", "test")} | {"seed": record["config"]["seed"]}  # fmt: skip


# -- the search ---------------------------------------------------------------------------------------------------
def search(spec: RunSpec, out_dir, *, grid: dict[str, list[str]] | None = None, sampler: str = "grid",
           trials: int | None = None, seeds: int | list[int] = 3, seed: int | None = None,
           keep_checkpoints: bool = False, say: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Search ``grid`` (default: the model's ``search_space``, its authors' grid) for ``spec``'s model and data,
    then train the chosen setting over ``seeds`` (a count from ``seed``, or a list) and evaluate those runs on test.

    Args:
        spec: the model, data and fixed options every run shares.
        out_dir: where the study, the trials, the chosen runs and the report go; an existing search there of the same
            arguments is continued, one of other arguments refused.
        grid: {name: [value text, ...]}.
        sampler: "grid" (every setting once; ``trials`` defaults to all of them) or "tpe" (optuna's TPE over the
            same choices; ``trials`` required).
        trials: how many trials the search holds in all (counting those of an earlier call), failed ones included.
        seeds: the chosen setting's seeds.
        seed: the seed of every trial's training run and of the TPE sampler (default: the model's training seed).
        keep_checkpoints: keep each finished trial's last.pt and best.pt (default: a finished trial keeps its
            run.json only, the leading one also its checkpoints until a better trial finishes; the chosen trial's
            move to its seed run's folder; the chosen setting's seed runs always keep theirs).
        say: where progress lines go.

    Returns the summary (also ``<out>/summary.json``): the trials, the chosen one and how it was chosen, the seed
    runs and the mean / sd / min / max of each test metric.
    """
    optuna = _optuna()
    cls = spec.model
    grid = {name: list(values) for name, values in (grid or cls.search_space).items()}
    if not grid:
        raise ValueError(f"{cls.name} has no authors' grid (search_space); give --grid name=value,value")
    check_space(cls, grid)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    size = math.prod(len(values) for values in grid.values())
    if trials is None:
        if sampler == "tpe":
            raise ValueError("--sampler tpe needs --trials N")
        trials = size
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    base = TrainConfig.for_model(cls, **spec.train_overrides)
    seed = base.seed if seed is None else int(seed)
    seed_list = list(range(seed, seed + seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be at least 1")
    metric = base.valid_metric
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arguments = {"format": SEARCH_FORMAT, "model": cls.name, "dataset": _plain(spec.dataset.source), "grid": grid,
                 "sampler": sampler, "seed": seed, "assignments": spec.assignments,
                 "train_overrides": _plain(spec.train_overrides), "valid_metric": metric}  # fmt: skip
    _check_same_search(out / "search.json", arguments)
    (out / "search.json").write_text(json.dumps(arguments, indent=1))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chooser = (optuna.samplers.GridSampler(grid, seed=seed) if sampler == "grid" else optuna.samplers.TPESampler(seed=seed))
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{out / 'search.db'}", direction="maximize",
                                sampler=chooser, load_if_exists=True)  # fmt: skip
    _requeue_interrupted(study, optuna, say)

    def objective(trial) -> float:
        setting = {name: trial.suggest_categorical(name, values) for name, values in grid.items()}
        folder = out / "trials" / setting_folder(setting)
        trial.set_user_attr("folder", str(folder.relative_to(out)))
        number = f"{trial.number} ({_counted(study, optuna) + 1}/{trials})"
        say(f"trial {number}: {setting_label(setting)} ...")
        start = time.perf_counter()
        try:
            record = spec.train(setting, seed, folder, evaluate_test=False)
            score = _score(record, metric)
            if not math.isfinite(score):
                raise FloatingPointError(f"the run recorded no validation {metric}")
        except Exception as error:  # recorded as a failed trial (optuna's catch) and the search goes on
            reason = (f"{type(error).__name__}: {error}".splitlines() or [""])[0][:300]
            trial.set_user_attr("error", reason)
            say(f"trial {number}: {setting_label(setting)} failed after {time.perf_counter() - start:.0f} s: {reason}")
            raise
        leader = _leader(study, optuna)  # among the earlier trials
        if not keep_checkpoints and leader is not None:  # only the leading trial keeps its checkpoints
            _drop_checkpoints(out / leader.user_attrs["folder"] if score > leader.value else folder)
        for key in ("best_epoch", "epochs_run", "median_epoch_seconds"):
            trial.set_user_attr(key, record.get(key))
        trial.set_user_attr("seconds", time.perf_counter() - start)
        best = max([t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))] + [score])
        say(f"trial {number}: {setting_label(setting)}: valid {metric} {score:.4f} (best so far {best:.4f}), "
            f"best epoch {record['best_epoch']} of {record['epochs_run']}, {time.perf_counter() - start:.0f} s")  # fmt: skip
        return score

    remaining = trials - _counted(study, optuna)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(Exception,))
    finished = [t for t in study.get_trials() if _state(t, optuna) in ("complete", "failed")]
    complete = [t for t in finished if _state(t, optuna) == "complete"]
    if not complete:
        raise RuntimeError(f"every trial of the search in {out} failed; see {out / 'report.md'}" if finished else
                           f"no trial of the search in {out} finished")  # fmt: skip
    chosen = _leader(study, optuna)  # the best validation score, ties to the earlier trial
    setting = {name: chosen.params[name] for name in grid}
    how = {"search": str(out), "trial": chosen.number, "setting": setting, "valid_metric": metric, "valid": chosen.value,
           "trials_completed": len(complete), "trials_failed": len(finished) - len(complete), "sampler": sampler,
           "search_seed": seed,
           "rule": f"the highest valid {metric} among the completed trials (each trained with seed {seed}; ties to the "
                   "earlier trial); no trial was evaluated on test, only the chosen setting's seed runs"}  # fmt: skip
    say(f"chosen: {setting_label(setting)} (trial {chosen.number}, valid {metric} {chosen.value:.4f}); "
        f"training it with seeds {', '.join(map(str, seed_list))} and evaluating on test")  # fmt: skip
    if seed in seed_list:
        how["trial_run_reused"] = _reuse_chosen_trial(study, out / chosen.user_attrs["folder"],
                                                      out / "chosen" / setting_folder(setting) / f"seed_{seed}", seed, say,
                                                      keep=keep_checkpoints)  # fmt: skip
    seeds_result = train_seeds(spec, seed_list, out / "chosen" / setting_folder(setting), setting=setting, record_extra={"search": how}, say=say)
    summary = {**arguments, "trials": [_trial_row(t, optuna) for t in study.get_trials()], "chosen": how,
               "seeds": seeds_result["seeds"], "runs": seeds_result["runs"], "test": seeds_result["test"]}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(_plain(summary), indent=1))
    from .search_report import write_report

    for line in write_report(summary, out):
        say(line)
    return summary


def _leader(study, optuna):
    """The completed trial with the best validation score, ties to the earlier trial (None before the first)."""
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number), default=None)


def _drop_checkpoints(folder: Path) -> None:
    for name in ("last.pt", "best.pt"):
        (folder / name).unlink(missing_ok=True)


def _reuse_chosen_trial(study, trial_folder: Path, seed_folder: Path, seed: int, say, *, keep: bool) -> bool:
    """The chosen trial trained the chosen setting with the search's seed, so that seed's run is the same run: the
    trial's checkpoints move (``keep``: are copied) to the seed run's folder, where the run resumes, has nothing
    left to train, and is evaluated on test (training is deterministic: a fresh run of that seed on the same number
    of threads gives the same record, tested). False when the trial's last.pt is gone (a search begun before this
    rule, or checkpoints deleted by hand): that seed then trains again. The decision is kept in the study, so a
    resumed call reports the same."""
    reused = study.user_attrs.get("trial_run_reused")
    if reused is None:
        reused = (trial_folder / "last.pt").is_file()
        study.set_user_attr("trial_run_reused", reused)
        say(f"seed {seed} is the chosen trial's own run: its checkpoint is evaluated on test, not trained again" if reused
            else f"the chosen trial's last.pt is gone ({trial_folder}): seed {seed} trains again")  # fmt: skip
    if reused and not (seed_folder / "last.pt").is_file():
        seed_folder.mkdir(parents=True, exist_ok=True)
        for name in ("best.pt", "last.pt"):  # last.pt last: until it is there the move is unfinished
            if (trial_folder / name).is_file():
                (shutil.copy2 if keep else Path.replace)(trial_folder / name, seed_folder / name)
    return reused


def _counted(study, optuna) -> int:
    """Trials that count towards ``trials``: completed ones and those that failed with an error of their own (not
    those cut off by an interruption, which run again)."""
    return sum(_state(t, optuna) in ("complete", "failed") for t in study.get_trials())


def _state(trial, optuna) -> str:
    """complete | failed (the run raised; its error is recorded) | interrupted (the process was killed, the trial
    still RUNNING, or stopped by Ctrl-C: FAIL without an error) | running | waiting."""
    State = optuna.trial.TrialState
    if trial.state == State.COMPLETE:
        return "complete"
    if trial.state == State.FAIL:
        return "failed" if "error" in trial.user_attrs else "interrupted"
    return trial.state.name.lower()


def _requeue_interrupted(study, optuna, say) -> None:
    """Trials an earlier call left interrupted run again: each is marked failed in the study (it cannot be
    continued as an optuna trial) and its setting queued as a new trial, which resumes its run from last.pt."""
    trials = study.get_trials()
    requeued = {t.user_attrs.get("resumes") for t in trials}
    for trial in trials:
        left_running = trial.state == optuna.trial.TrialState.RUNNING
        if trial.number in requeued or not (left_running or _state(trial, optuna) == "interrupted"):
            continue
        if left_running:  # a killed process: the study still holds the trial as running
            _mark_failed(study, trial.number, optuna)
        study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number})
        say(f"resuming the interrupted trial {setting_label(trial.params)}")


def _mark_failed(study, number: int, optuna) -> None:
    """Marks trial ``number`` failed without the sampler's after-trial hook: the grid sampler's would stop the study
    when that trial held the grid's last point, and optuna refuses a stop outside ``optimize``."""
    sampler, study.sampler = study.sampler, optuna.samplers.RandomSampler()
    try:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    finally:
        study.sampler = sampler


def _trial_row(trial, optuna) -> dict:
    return {"number": trial.number, "setting": dict(trial.params), "state": _state(trial, optuna), "valid": trial.value,
            **{key: trial.user_attrs.get(key) for key in ("best_epoch", "epochs_run", "median_epoch_seconds", "seconds",
                                                          "error", "folder")}}  # fmt: skip


def _check_same_search(path: Path, arguments: dict) -> None:
    if not path.is_file():
        return
    earlier = json.loads(path.read_text())
    differ = [key for key in arguments if earlier.get(key) != json.loads(json.dumps(arguments[key]))]
    if differ:
        raise ValueError(f"{path.parent} holds a search with another {differ[0]} ({earlier.get(differ[0])!r}, now "
                         f"{arguments[differ[0]]!r}); use another --out")  # fmt: skip


def _model_class(model) -> type:
    if isinstance(model, str):
        from .models import model_class

        return model_class(model)
    return model


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("mmrec-fast search runs on optuna, an optional dependency: pip install optuna") from None
    return optuna
