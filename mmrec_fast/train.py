"""Training: BPR epochs, full-ranking validation, early stopping, exact resume, and a JSON record of every run.

The loop is MMRec's (``src/common/trainer.py``): every epoch, shuffled training interactions in batches with one
uniform negative each (:class:`~mmrec_fast.data.BPRSampler`), ``loss = model.calculate_loss(batch)``, Adam;
validation every ``eval_every`` epochs on ``valid_metric``; training stops after ``patience`` validations without
improvement; the best model (by validation) is restored and evaluated on the test split.

Models need ``calculate_loss(batch)`` (batch: (3, B) int64 [users; positives; negatives]) and either
``embeddings()`` or ``full_sort_predict(users)`` (see :func:`mmrec_fast.evaluate.evaluate`); MMRec's optional
``pre_epoch_processing()`` / ``post_epoch_processing()`` hooks are called when present.

Checkpoints (``<out>/last.pt`` every epoch, ``<out>/best.pt`` at each improvement) hold the model, the optimizer,
the torch / numpy / Python RNG states, the epoch, the early-stopping state and the history, so that
:meth:`Trainer.resume` continues exactly where an uninterrupted run would be (the sampler's batches depend only on
the seed and the epoch). They contain tensors and plain Python values only and load with
``torch.load(weights_only=True)``. ``<out>/run.json`` is the run's record (config, dataset, per-epoch losses,
metrics and times, best epoch, test metrics, versions, backends, machine), rewritten after every epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import backends
from .data import BPRSampler, Dataset
from .evaluate import DEFAULT_KS, METRICS, NDCG_FORMS, evaluate

CHECKPOINT_FORMAT = "mmrec_fast.checkpoint/1"
RECORD_FORMAT = "mmrec_fast.run/1"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class TrainConfig:
    """Everything that decides a training run besides the model and the data (MMRec's defaults)."""

    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # "adam" | "adamw"
    valid_metric: str = "recall@20"
    patience: int = 20  # validations without improvement before stopping
    eval_every: int = 1  # epochs between validations
    ks: tuple[int, ...] = DEFAULT_KS
    metrics: tuple[str, ...] = METRICS
    ndcg: str = "mmrec"  # "mmrec" | "ngcf"
    eval_batch_size: int = 4096
    eval_backend: str | None = None  # topk_scores backend (None: automatic)
    seed: int = 0
    device: str = "cpu"
    out_dir: str | None = None  # checkpoints and run.json; None: nothing is written
    progress: bool = True  # tqdm bar per epoch
    verbose: bool = True  # one line per epoch

    def __post_init__(self):
        self.ks, self.metrics = tuple(int(k) for k in self.ks), tuple(self.metrics)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.ndcg not in NDCG_FORMS:
            raise ValueError(f"ndcg must be one of {NDCG_FORMS}, got {self.ndcg!r}")
        metric, _, k = self.valid_metric.lower().partition("@")
        if metric not in self.metrics or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"valid_metric {self.valid_metric!r} is not computed: metrics {self.metrics} at ks {self.ks}")
        self.valid_metric = self.valid_metric.lower()
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random generators (model initialisation, dropout, ...)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _EarlyStopping:
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_evaluations: int = 0
    best_state: dict | None = field(default=None, repr=False)


class Trainer:
    """Trains ``model`` on ``dataset`` with ``config`` (see the module docstring).

    Args:
        model: a torch module with ``calculate_loss`` and ``embeddings`` or ``full_sort_predict``.
        dataset: the :class:`~mmrec_fast.data.Dataset`.
        config: a :class:`TrainConfig`.
        model_name: the name checkpoints record to rebuild the model (default: the class name, lower case).
        log: where per-epoch lines go (default: print, through tqdm when bars are shown).
    """

    def __init__(self, model: torch.nn.Module, dataset: Dataset, config: TrainConfig | None = None, *,
                 model_name: str | None = None, log: Callable[[str], None] | None = None):  # fmt: skip
        self.config = config or TrainConfig()
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.model_name = model_name or type(model).__name__.lower()
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        self.optimizer = OPTIMIZERS[self.config.optimizer](parameters, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.sampler = BPRSampler(dataset.train, dataset.num_users, dataset.num_items, self.config.batch_size,
                                  seed=self.config.seed)  # fmt: skip
        self.out_dir = Path(self.config.out_dir) if self.config.out_dir else None
        self.epoch = -1  # the last finished epoch
        self.history: list[dict] = []
        self.early = _EarlyStopping()
        self.record: dict = {}
        self._log = log

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train from the epoch after :attr:`epoch` until ``config.epochs`` or early stopping, restore the best
        model, evaluate it on the test split, and return the run record (also written to ``<out>/run.json``)."""
        config = self.config
        started = self.record.get("started") or _now()
        self.record = self._new_record(started)
        stopped_early = False
        for epoch in range(self.epoch + 1, config.epochs):
            entry = self.train_epoch(epoch)
            if (epoch + 1) % config.eval_every == 0 or epoch == config.epochs - 1:
                start = time.perf_counter()
                valid = self.evaluate("valid")
                entry["eval_seconds"] = time.perf_counter() - start
                entry["valid"] = valid
                score = valid[config.valid_metric]
                entry["best"] = score > self.early.best_score
                if entry["best"]:
                    self.early = _EarlyStopping(score, epoch, 0, copy.deepcopy(self.model.state_dict()))
                else:
                    self.early.bad_evaluations += 1
            self.epoch = epoch
            self.history.append(entry)
            self._say(self._epoch_line(entry))
            stopped_early = "valid" in entry and self.early.bad_evaluations >= config.patience
            if self.out_dir is not None:
                self.save_checkpoint(self.out_dir / "last.pt")
                if entry.get("best"):
                    self.save_checkpoint(self.out_dir / "best.pt", best_only=True)
                self._write_record(stopped_early=stopped_early)
            if stopped_early:
                self._say(f"early stop: no {config.valid_metric} improvement in {config.patience} validation(s); "
                          f"best epoch {self.early.best_epoch}")  # fmt: skip
                break
        if self.early.best_state is not None:
            self.model.load_state_dict(self.early.best_state)
        start = time.perf_counter()
        test = self.evaluate("test")
        self.record["test_seconds"] = time.perf_counter() - start
        self.record["test"] = test
        self._write_record(stopped_early=stopped_early, finished=True)
        return self.record

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training interactions; returns the epoch's history entry (loss, time, throughput)."""
        from tqdm.auto import tqdm

        self.model.train()
        if hasattr(self.model, "pre_epoch_processing"):
            self.model.pre_epoch_processing()
        total, count = 0.0, 0
        start = time.perf_counter()
        bar = tqdm(total=len(self.sampler), desc=f"epoch {epoch}", unit="batch", leave=False,
                   disable=not self.config.progress, dynamic_ncols=True)  # fmt: skip
        for index, batch in enumerate(self.sampler.epoch(epoch, self.device)):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.model.calculate_loss(batch)
            value = float(loss.detach())
            if not np.isfinite(value):
                bar.close()
                raise FloatingPointError(f"the loss is {value} at epoch {epoch}, batch {index}")
            loss.backward()
            self.optimizer.step()
            total += value * batch.shape[1]
            count += batch.shape[1]
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4f}", inter_per_s=f"{count / (time.perf_counter() - start):.0f}")
        bar.close()
        seconds = time.perf_counter() - start
        if hasattr(self.model, "post_epoch_processing"):
            self.model.post_epoch_processing()
        return {"epoch": epoch, "loss": total / count, "train_seconds": seconds, "interactions_per_second": count / seconds}

    def evaluate(self, split: str) -> dict[str, float]:
        """The configured metrics of the current model on ``split`` ("valid" | "test")."""
        config = self.config
        return evaluate(self.model, self.dataset, split, ks=config.ks, metrics=config.metrics, ndcg=config.ndcg,
                        batch_size=config.eval_batch_size, backend=config.eval_backend)  # fmt: skip

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, path, *, best_only: bool = False) -> None:
        """Write a checkpoint to ``path`` (atomically). ``best_only``: just what evaluation needs (the best model)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model_name,
            "hyperparameters": _hyperparameters(self.model),
            "dataset_source": self.dataset.source,
            "config": _plain(dataclasses.asdict(self.config)),
            "epoch": self.epoch,
            "model_state": self.early.best_state if best_only else self.model.state_dict(),
        }
        if not best_only:
            state.update(
                optimizer_state=self.optimizer.state_dict(),
                rng=_rng_state(),
                early_stopping={"best_score": self.early.best_score, "best_epoch": self.early.best_epoch,
                                "bad_evaluations": self.early.bad_evaluations, "best_state": self.early.best_state},  # fmt: skip
                history=self.history,
                started=self.record.get("started"),
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)

    def resume(self, path) -> None:
        """Continue the run saved in ``path`` (a ``last.pt``): model, optimizer, RNG states, epoch, early
        stopping and history; the next :meth:`fit` starts at the following epoch."""
        state = load_checkpoint(path)
        if "optimizer_state" not in state:
            raise ValueError(f"{path}: a best-model checkpoint cannot resume training; use last.pt")
        if state["model_name"] != self.model_name:
            raise ValueError(f"{path}: a {state['model_name']} checkpoint, but this trainer trains {self.model_name}")
        if state["dataset_source"] != self.dataset.source:
            raise ValueError(f"{path}: trained on {state['dataset_source']}, not on this dataset ({self.dataset.source})")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        _set_rng_state(state["rng"])
        early = state["early_stopping"]
        self.early = _EarlyStopping(early["best_score"], early["best_epoch"], early["bad_evaluations"], early["best_state"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.record = {"started": state.get("started"), "resumed_from": str(path)}

    # -- the record -----------------------------------------------------------------------------------------------
    def _new_record(self, started: str) -> dict:
        record = {
            "format": RECORD_FORMAT,
            "started": started,
            "model": {"name": self.model_name, "hyperparameters": _hyperparameters(self.model),
                      "parameters": sum(p.numel() for p in self.model.parameters())},  # fmt: skip
            "config": _plain(dataclasses.asdict(self.config)),
            "dataset": self.dataset.summary(),
            "environment": environment(self.device, getattr(self.model, "backend", None), self.config.eval_backend),
        }
        if "resumed_from" in self.record:
            record["resumed_from"] = self.record["resumed_from"]
        return record

    def _write_record(self, *, stopped_early: bool, finished: bool = False) -> None:
        epochs = list(self.history)
        train_seconds = [e["train_seconds"] for e in epochs]
        self.record.update(
            epochs=epochs,
            epochs_run=len(epochs),
            mean_epoch_seconds=float(np.mean(train_seconds)) if train_seconds else None,
            median_epoch_seconds=float(np.median(train_seconds)) if train_seconds else None,
            best_epoch=self.early.best_epoch if self.early.best_epoch >= 0 else None,
            best_valid=next((e["valid"] for e in epochs if e["epoch"] == self.early.best_epoch), None),
            stopped_early=stopped_early,
            finished=_now() if finished else None,
        )
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            temporary = self.out_dir / "run.json.tmp"
            temporary.write_text(json.dumps(_plain(self.record), indent=1))
            os.replace(temporary, self.out_dir / "run.json")

    def _epoch_line(self, entry: dict) -> str:
        line = (f"epoch {entry['epoch']:4d}  loss {entry['loss']:.4f}  train {entry['train_seconds']:.2f} s "
                f"({entry['interactions_per_second'] / 1e3:.1f}k inter/s)")  # fmt: skip
        if "valid" in entry:
            metric = self.config.valid_metric
            line += f"  valid {metric} {entry['valid'][metric]:.4f} (eval {entry['eval_seconds']:.2f} s)"
            line += "  *" if entry["best"] else ""
        return line

    def _say(self, line: str) -> None:
        if not self.config.verbose:
            return
        if self._log is not None:
            self._log(line)
        elif self.config.progress:
            from tqdm.auto import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)


def load_checkpoint(path) -> dict:
    """A checkpoint written by :class:`Trainer` (read with ``weights_only=True``: no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files that are not checkpoints
        raise ValueError(f"{path}: not a readable mmrec_fast checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an mmrec_fast checkpoint (expected format {CHECKPOINT_FORMAT})")
    return state


def environment(device: torch.device, model_backend: str | None = None, eval_backend: str | None = None) -> dict:
    """Versions, machine and the backend each op resolves to for float32 on ``device``."""
    import mmrec_fast

    probe = torch.empty(0, device=device)
    resolved = {}
    for name, requested in (("propagate", model_backend), ("topk_scores", eval_backend)):
        try:
            resolved[name] = backends.resolve(backends.OPS[name], probe, requested)
        except (backends.BackendUnavailable, KeyError) as error:
            resolved[name] = f"unavailable ({error})"
    return {
        "mmrec_fast": mmrec_fast.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": machine(device),
        "backends": resolved,
    }


def machine(device: torch.device | str = "cpu") -> str:
    """CPU model, core count, torch threads, and the GPU when ``device`` is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if torch.device(device).type == "cuda":
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text


def _hyperparameters(model) -> dict:
    return model.hyperparameters() if hasattr(model, "hyperparameters") else {}


def _rng_state() -> dict:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},  # fmt: skip
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    """JSON-able copy: tuples become lists, tensors and numpy scalars become numbers or lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
