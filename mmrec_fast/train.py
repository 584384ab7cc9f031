"""Training: epochs of a model's batches, full-ranking validation, early stopping, exact resume, and a JSON record
of every run.

The loop is MMRec's (``src/common/trainer.py``), on the :class:`~mmrec_fast.models.Recommender` interface: every
epoch, ``model.pre_epoch(epoch)``; shuffled training interactions in batches of the model's ``batch_kind`` (BPR
triples with one uniform negative each, or positive pairs; :mod:`mmrec_fast.data.sampler`);
``model.training_step(batch, optimizers)`` per batch (by default: the sum of ``model.losses(batch)``, backward,
step); ``model.post_epoch(epoch)``; validation every ``eval_every`` epochs on ``valid_metric``; training stops after
``patience`` validations without improvement; the best model (by validation) is restored and evaluated on the
test split. Each named loss term's epoch mean is logged.

:meth:`TrainConfig.for_model` starts from the model's ``train_defaults()`` (the authors' optimizer, learning rate,
batch size, valid metric, patience, ...) and applies the caller's overrides; the run record keeps both.

Checkpoints (``<out>/last.pt`` every epoch, ``<out>/best.pt`` at each improvement) hold the model's name, its
``Config``, its state, every optimizer's state, the torch / numpy / Python RNG states, the epoch, the early-stopping
state and the history, so that :meth:`Trainer.resume` continues exactly where an uninterrupted run would be (the
sampler's batches depend only on the seed and the epoch) and :func:`model_from_checkpoint` rebuilds the model.
They contain tensors and plain Python values only and load with ``torch.load(weights_only=True)``; a file that is
not one, or one that does not fit the model or data it is loaded for, is refused with a one-line reason.
``<out>/run.json`` is the run's record (config, the model's train defaults and the overrides, dataset, model
hyperparameters and modalities, per-epoch losses and terms, metrics and times, best epoch, test metrics, versions,
backends, machine), rewritten after every epoch.

Data parallel (several processes in a ``torch.distributed`` process group, e.g. launched by ``torchrun``): every
rank draws the same global batches from the same seed and takes its contiguous shard of each
(:func:`mmrec_fast.distributed.shard`); the model is wrapped in DistributedDataParallel, which averages the
parameter gradients over the ranks, and each rank's loss is scaled by world * n_r / B (n_r of the batch's B rows
are its own) so that the averaged gradient is the single-process gradient of the global batch, for loss terms
that are means over the batch's rows and for terms every rank computes alike (a full-population term). Models with
in-batch negatives (``batch_negatives``: SLMRec) gather them from every rank (``Recommender.batch_info_nce``), so
the negatives are the global batch's; models with their own ``training_step`` (MMSSL) are refused. Validation and test run :func:`mmrec_fast.distributed.evaluate`
(the single-process metrics, bitwise). Rank 0 alone logs and writes checkpoints and run.json; every rank resumes
from the same checkpoint.
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

from . import backends, distributed
from .data import NEGATIVE_POOLS, SAMPLERS, Dataset
from .evaluate import DEFAULT_KS, METRICS, NDCG_FORMS, evaluate

CHECKPOINT_FORMAT = "mmrec_fast.checkpoint/2"
RECORD_FORMAT = "mmrec_fast.run/2"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(parameters, config: TrainConfig, name: str | None = None, **options) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name or config.optimizer]`` over ``parameters`` with the config's lr and weight decay (``options``
    replace them or add others, e.g. betas), in torch's fused form when ``config.fused_optimizer``."""
    options = {"lr": config.lr, "weight_decay": config.weight_decay, **options}
    if config.fused_optimizer:
        options["fused"] = True
    return OPTIMIZERS[name or config.optimizer](parameters, **options)


@dataclass
class TrainConfig:
    """Everything that decides a training run besides the model and the data (MMRec's defaults; a model's
    ``train_defaults()`` replace some of them through :meth:`for_model`)."""

    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # "adam" | "adamw"
    # torch's fused Adam / AdamW: one pass over each tensor instead of a dozen (the same update up to rounding;
    # much faster on large trainable tables, e.g. FREEDOM's 7,050 x 4,096 features, so models with large tables
    # default to it); off by default elsewhere (the for-each form is what the published runs used)
    fused_optimizer: bool = False
    negatives: str = "all"  # BPR negatives drawn from "all" items or "train_items" (MMRec's pool)
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
        if self.negatives not in NEGATIVE_POOLS:
            raise ValueError(f"negatives must be one of {NEGATIVE_POOLS}, got {self.negatives!r}")
        if self.ndcg not in NDCG_FORMS:
            raise ValueError(f"ndcg must be one of {NDCG_FORMS}, got {self.ndcg!r}")
        metric, _, k = self.valid_metric.lower().partition("@")
        if metric not in self.metrics or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"valid_metric {self.valid_metric!r} is not computed: metrics {self.metrics} at ks {self.ks}")
        self.valid_metric = self.valid_metric.lower()
        for name in ("epochs", "batch_size", "patience", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay"):
            if not (getattr(self, name) >= 0 and np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")

    @classmethod
    def for_model(cls, model, **overrides) -> TrainConfig:
        """TrainConfig's defaults, then the model's (class or instance) ``train_defaults()``, then ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"TrainConfig has no field {unknown[0]!r}")
        return cls(**{**model.train_defaults(), **overrides})


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
        model: a :class:`~mmrec_fast.models.Recommender`.
        dataset: the :class:`~mmrec_fast.data.Dataset`.
        config: a :class:`TrainConfig` (None: ``TrainConfig.for_model(model)``, the model's training defaults).
        overrides: the TrainConfig fields the caller set (recorded in run.json beside the model's defaults).
        log: where per-epoch lines go (default: print, through tqdm when bars are shown).
        record_extra: more entries for the run record (e.g. ``{"search": ...}``: how a search chose the setting).
    """

    def __init__(self, model, dataset: Dataset, config: TrainConfig | None = None, *, overrides: dict | None = None,
                 log: Callable[[str], None] | None = None, record_extra: dict | None = None):  # fmt: skip
        from .models import Recommender

        if not isinstance(model, Recommender):
            raise TypeError(f"Trainer trains a mmrec_fast.models.Recommender, got {type(model).__name__}")
        if (model.num_users, model.num_items) != (dataset.num_users, dataset.num_items):
            raise ValueError(f"the model was built for {model.num_users} users x {model.num_items} items, the dataset "
                             f"has {dataset.num_users} x {dataset.num_items}")  # fmt: skip
        self.config = config or TrainConfig.for_model(model, **(overrides or {}))
        self.overrides = dict(overrides or {})
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.model_name = model.name
        self.optimizers = model.optimizers(self.config)
        sampler = SAMPLERS[model.batch_kind]
        options = {"negatives": self.config.negatives} if model.batch_kind == "bpr" else {}
        self.sampler = sampler(dataset.train, dataset.num_users, dataset.num_items, self.config.batch_size,
                               seed=self.config.seed, **options)  # fmt: skip
        self.rank, self.world_size = distributed.world()
        self.data_parallel = self._wrap_data_parallel() if self.world_size > 1 else None
        # Rank 0 writes the checkpoints and the record; the other ranks only train.
        self.out_dir = Path(self.config.out_dir) if self.config.out_dir and self.rank == 0 else None
        self.epoch = -1  # the last finished epoch
        self.history: list[dict] = []
        self.early = _EarlyStopping()
        self.record: dict = {}
        self.record_extra = dict(record_extra or {})
        self._log = log

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self, *, evaluate_test: bool = True) -> dict:
        """Train from the epoch after :attr:`epoch` until ``config.epochs`` or early stopping, restore the best
        model, evaluate it on the test split (unless ``evaluate_test`` is False: a search's trials never look at
        test; the record's ``test`` is then None), and return the run record (also written to ``<out>/run.json``).
        A resumed run that had already stopped early trains no further."""
        config = self.config
        started = self.record.get("started") or _now()
        self.record = self._new_record(started)
        stopped_early = bool(self.history) and "valid" in self.history[-1] and self.early.bad_evaluations >= config.patience
        for epoch in range(self.epoch + 1, config.epochs if not stopped_early else 0):
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
        self.record["test"] = self.evaluate("test") if evaluate_test else None
        self.record["test_seconds"] = time.perf_counter() - start if evaluate_test else None
        self._write_record(stopped_early=stopped_early, finished=True)
        return self.record

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training interactions; returns the epoch's history entry (loss, its terms, time,
        throughput)."""
        from tqdm.auto import tqdm

        self.model.train()
        self.model.pre_epoch(epoch)
        sums: dict[str, float] = {}
        count = 0
        start = time.perf_counter()
        bar = tqdm(total=len(self.sampler), desc=f"epoch {epoch}", unit="batch", leave=False,
                   disable=not self.config.progress, dynamic_ncols=True)  # fmt: skip
        for index, batch in enumerate(self.sampler.epoch(epoch, self.device)):
            try:
                if self.data_parallel is None:
                    values = self.model.training_step(batch, self.optimizers)
                else:
                    values = self._data_parallel_step(batch)
            except FloatingPointError as error:
                bar.close()
                raise FloatingPointError(f"{error} at epoch {epoch}, batch {index}") from None
            rows = batch.shape[1]
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value * rows
            count += rows
            bar.update(1)
            bar.set_postfix(loss=f"{sum(sums.values()) / count:.4f}", inter_per_s=f"{count / (time.perf_counter() - start):.0f}")
        bar.close()
        seconds = time.perf_counter() - start
        self.model.post_epoch(epoch)
        terms = {name: total / count for name, total in sums.items()}
        return {"epoch": epoch, "loss": sum(terms.values()), "losses": terms, "train_seconds": seconds,
                "interactions_per_second": count / seconds}  # fmt: skip

    def evaluate(self, split: str) -> dict[str, float]:
        """The configured metrics of the current model on ``split`` ("valid" | "test")."""
        config = self.config
        run = evaluate if self.world_size == 1 else distributed.evaluate
        return run(self.model, self.dataset, split, ks=config.ks, metrics=config.metrics, ndcg=config.ndcg,
                   batch_size=config.eval_batch_size, backend=config.eval_backend)  # fmt: skip

    # -- data parallel --------------------------------------------------------------------------------------------
    def _wrap_data_parallel(self):
        from .models import Recommender

        model = self.model
        if type(model).training_step is not Recommender.training_step:
            raise ValueError(f"{model.name} has its own training_step; data-parallel training takes models trained "
                             "by the default step (losses, backward, step)")  # fmt: skip
        model.gather_negatives = model.batch_negatives
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # static_graph: every step uses the same parameters (a model's unused ones too), so DDP needs no search
        # for unused parameters each step
        return torch.nn.parallel.DistributedDataParallel(_Losses(model), device_ids=device_ids, static_graph=True)

    def _data_parallel_step(self, batch: torch.Tensor) -> dict[str, float]:
        """The default training step on this rank's shard of the global ``batch`` (3, B) / (2, B): the loss scaled
        by world * n_r / B, gradients averaged by DDP; returns the global batch's loss terms (the n_r / B-weighted
        sum over ranks)."""
        from .models.base import finite_values

        total = batch.shape[1]
        rows = distributed.shard(total)
        share = (rows.stop - rows.start) / total
        local = batch[:, rows]
        if share == 0 and not self.model.gather_negatives:
            # A last batch smaller than the world: this rank runs it at weight 0, to join the gradient all-reduce
            # (a model that gathers negatives runs its empty shard instead: the gathered rows must be the batch's).
            local = batch
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        terms = self.data_parallel(local)
        values = finite_values(terms)
        (sum(terms.values()) * (self.world_size * share)).backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
        weighted = torch.tensor([value * share for value in values.values()], dtype=torch.float64)
        torch.distributed.all_reduce(weighted)
        return dict(zip(values, weighted.tolist()))

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, path, *, best_only: bool = False) -> None:
        """Write a checkpoint to ``path`` (atomically). ``best_only``: just what evaluation needs (the best model)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model_name,
            "model_config": self.model.config.to_dict(),
            "backend": self.model.backend,
            "dataset_source": self.dataset.source,
            "config": _plain(dataclasses.asdict(self.config)),
            "epoch": self.early.best_epoch if best_only else self.epoch,
            "model_state": self.early.best_state if best_only else self.model.state_dict(),
        }
        if not best_only:
            state.update(
                optimizer_states={name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
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
        """Continue the run saved in ``path`` (a ``last.pt``): model, optimizers, RNG states, epoch, early
        stopping and history; the next :meth:`fit` starts at the following epoch. A checkpoint of another model,
        configuration or dataset is refused with the mismatch named."""
        state = load_checkpoint(path)
        if "optimizer_states" not in state:
            raise ValueError(f"{path}: a best-model checkpoint cannot resume training; use last.pt")
        if state["model_name"] != self.model_name:
            raise ValueError(f"{path}: a {state['model_name']} checkpoint, but this trainer trains {self.model_name}")
        if state["dataset_source"] != self.dataset.source:
            raise ValueError(f"{path}: trained on {state['dataset_source']}, not on this dataset ({self.dataset.source})")
        saved, mine = state["model_config"], self.model.config.to_dict()
        differ = [name for name in sorted(set(saved) | set(mine)) if saved.get(name) != mine.get(name)]
        if differ:
            name = differ[0]
            raise ValueError(f"{path}: the checkpoint's {state['model_name']} has {name}={saved.get(name)!r}, this one "
                             f"{name}={mine.get(name)!r}")  # fmt: skip
        load_model_state(self.model, state["model_state"], path)
        if set(state["optimizer_states"]) != set(self.optimizers):
            raise ValueError(f"{path}: optimizers {sorted(state['optimizer_states'])} in the checkpoint, "
                             f"{sorted(self.optimizers)} here")  # fmt: skip
        for name, optimizer in self.optimizers.items():
            try:
                optimizer.load_state_dict(state["optimizer_states"][name])
            except (ValueError, KeyError, RuntimeError) as error:
                raise ValueError(f"{path}: optimizer {name!r} does not fit this model ({error})") from None
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
            "model": self.model.describe(),
            "config": _plain(dataclasses.asdict(self.config)),
            "train_defaults": _plain(self.model.train_defaults()),
            "overrides": _plain(self.overrides),
            "dataset": self.dataset.summary(),
            "environment": environment(self.device, self.model.backend, self.config.eval_backend, self.model.ops),
        }
        if self.world_size > 1:
            record["data_parallel"] = {"world_size": self.world_size,
                                       "process_group_backend": torch.distributed.get_backend()}  # fmt: skip
        if "resumed_from" in self.record:
            record["resumed_from"] = self.record["resumed_from"]
        record.update(_plain(self.record_extra))
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
        line = f"epoch {entry['epoch']:4d}  loss {entry['loss']:.4f}"
        if len(entry["losses"]) > 1:
            line += " (" + ", ".join(f"{name} {value:.4f}" for name, value in entry["losses"].items()) + ")"
        line += (f"  train {entry['train_seconds']:.2f} s ({entry['interactions_per_second'] / 1e3:.1f}k inter/s)")
        if "valid" in entry:
            metric = self.config.valid_metric
            line += f"  valid {metric} {entry['valid'][metric]:.4f} (eval {entry['eval_seconds']:.2f} s)"
            line += "  *" if entry["best"] else ""
        return line

    def _say(self, line: str) -> None:
        if not self.config.verbose or self.rank != 0:
            return
        if self._log is not None:
            self._log(line)
        elif self.config.progress:
            from tqdm.auto import tqdm

            tqdm.write(line)
        else:
            print(line, flush=True)


class _Losses(torch.nn.Module):
    """The module DistributedDataParallel wraps: forward(batch) = model.losses(batch)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.losses(batch)


CHECKPOINT_KEYS = ("model_name", "model_config", "backend", "dataset_source", "config", "epoch", "model_state")


def load_checkpoint(path) -> dict:
    """A checkpoint written by :class:`Trainer` (read with ``weights_only=True``: no arbitrary unpickling); anything
    else is refused with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types, with long texts, for files that are not checkpoints
        text = str(error)
        if "Unsupported global" in text or "This file can still be loaded" in text:
            reason = "it holds Python objects other than tensors and plain values, which are never unpickled"
        elif "WeightsUnpickler error" in text:
            reason = "not a torch.save file: " + text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        else:
            first = text.strip().splitlines()[0] if text.strip() else ""
            reason = f"not a torch.save file: {type(error).__name__}" + (f" {first}" if first else "")
        raise ValueError(f"{path}: not a readable mmrec_fast checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{path}: not an mmrec_fast checkpoint (expected format {CHECKPOINT_FORMAT}"
                         + (f", found {found}" if found else "") + ")")  # fmt: skip
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ValueError(f"{path}: a damaged checkpoint: no {missing[0]!r}")
    if not isinstance(state["model_state"], dict) or not isinstance(state["model_config"], dict):
        raise ValueError(f"{path}: a damaged checkpoint: model_state and model_config must be dictionaries")
    return state


def load_model_state(model, model_state: dict, path) -> None:
    """``model.load_state_dict(model_state)``, refusing a state of other names or shapes with a one-line reason."""
    mine = model.state_dict()
    missing = [name for name in mine if name not in model_state]
    unexpected = [name for name in model_state if name not in mine]
    if missing or unexpected:
        what = f"no {missing[0]!r}" if missing else f"an unexpected {unexpected[0]!r}"
        raise ValueError(f"{path}: the checkpoint's model state does not fit this {type(model).__name__} ({what})")
    for name, tensor in mine.items():
        theirs = model_state[name]
        if not isinstance(theirs, torch.Tensor) or theirs.shape != tensor.shape:
            shape = tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__
            raise ValueError(f"{path}: {name} has shape {shape} in the checkpoint but {tuple(tensor.shape)} in this "
                             f"{type(model).__name__} (another dataset or hyperparameters?)")  # fmt: skip
    model.load_state_dict(model_state)


def model_from_checkpoint(path, dataset=None, *, state: dict | None = None, backend: str | None = None):
    """(model, state): the model of checkpoint ``path`` rebuilt from its name and Config, with its weights, on
    ``dataset`` (default: the dataset the checkpoint names) and ``backend`` (default: the checkpoint's)."""
    from . import data, models

    state = load_checkpoint(path) if state is None else state
    if dataset is None:
        dataset = data.from_source(state["dataset_source"])
    try:
        cls = models.model_class(state["model_name"])
        config = cls.Config.from_dict(state["model_config"])
        model = cls(dataset, config, backend=backend if backend is not None else state["backend"])
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: cannot rebuild the checkpoint's model ({error})") from None
    load_model_state(model, state["model_state"], path)
    return model, state


def environment(device: torch.device, model_backend: str | None = None, eval_backend: str | None = None,
                ops: tuple[str, ...] = ("propagate",)) -> dict:  # fmt: skip
    """Versions, machine and the backend each op resolves to for float32 on ``device``: the model's ``ops`` with
    ``model_backend``, and ``topk_scores`` (which evaluation runs) with ``eval_backend``."""
    import mmrec_fast

    probe = torch.empty(0, device=device)
    resolved = {}
    for name in dict.fromkeys([*ops, "topk_scores"]):
        requested = eval_backend if name == "topk_scores" else model_backend
        try:
            resolved[name] = backends.resolve(backends.OPS[name], probe, requested)
        except backends.BackendUnavailable as error:
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
