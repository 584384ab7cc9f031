"""The model layer: :class:`Recommender`, the one interface every model has, and :class:`ModelConfig`, the base of
every model's hyperparameters.

The trainer, the evaluator, the command line and checkpoints use only what is defined here:

* ``Model.Config``: a frozen dataclass of every hyperparameter with the authors' default, each field declared with
  :func:`option` (default, one line of help, range); validated on construction; ``mmrec-fast train --set
  name=value`` parses into it (:meth:`ModelConfig.parse`), checkpoints store it (:meth:`ModelConfig.to_dict`) and
  rebuild the model from it.
* ``Model.train_defaults()``: the :class:`~mmrec_fast.TrainConfig` fields the authors' code uses (optimizer, lr,
  weight decay, batch size, valid metric, patience); the trainer starts from them.
* ``Model.batch_kind``: "bpr" (batches (3, B) [users; positives; sampled negatives]) or "pairs" ((2, B) [users;
  positives]); the trainer picks the sampler from it.
* ``losses(batch) -> {name: scalar}``: the named terms of the loss, each as it enters the sum (weights applied);
  ``calculate_loss(batch)`` is their sum (MMRec's entry point).
* ``embeddings() -> (users (U, d), items (I, d))``: what full-ranking evaluation ranks by (score = dot product,
  through ``topk_scores``); ``full_sort_predict(users)`` gives MMRec's (B, I) score rows.
* ``pre_epoch(epoch)`` / ``post_epoch(epoch)`` hooks; ``optimizers(train_config)`` and
  ``training_step(batch, optimizers)``, which a model with more than one optimizer overrides.
* Graphs (:class:`~mmrec_fast.Graph`) assigned as attributes move with ``model.to(device)``; constant item features
  are non-persistent buffers (they come from the dataset, not from the checkpoint).
* Item features of any non-empty subset of the dataset's modalities (``Config.modalities``; None: every modality
  the model can use that the dataset has); ``model.modalities`` says which were used, and a model says clearly when
  it needs one the dataset does not have.
* ``backend=`` (``"reference" | "native" | "triton" | None``) switches every op the model calls (``Model.ops``
  names them).
* :class:`LastBatchScoring`: the base of a model whose authors rank by the last training batch's embeddings
  (``Config.score_on``).
* ``Model.search_space``: the authors' hyperparameter grid (``mmrec-fast search`` without --grid searches it).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from ..backends import BACKENDS
from ..graph import Graph

BATCH_KINDS = ("bpr", "pairs")


def option(default, help: str, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None):  # fmt: skip
    """A :class:`ModelConfig` field: its default, one line of help, and its range (``minimum <= value <=
    maximum``, ``value > above``), checked on construction."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum, "maximum": maximum, "above": above})


class ConfigError(ValueError):
    """A hyperparameter name or value is not valid; the message names it and says what is expected."""


@dataclass(frozen=True)
class ModelConfig:
    """The base of every model's ``Config``: a frozen dataclass whose fields are declared with :func:`option`.

    Every field's value is checked against its annotation (int, float, bool, str, ``Literal[...]`` choices,
    ``tuple[str, ...]``, optionally ``| None``) and its range when the config is made.
    """

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            value = _check_value(spec.name, getattr(self, spec.name), self.hints()[spec.name], spec.metadata)
            object.__setattr__(self, spec.name, value)

    @classmethod
    def hints(cls) -> dict[str, Any]:
        """Field name -> resolved type annotation."""
        cached = cls.__dict__.get("_hints")
        if cached is None:
            cached = typing.get_type_hints(cls)
            setattr(cls, "_hints", cached)  # a class attribute, not a field
        return cached

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes`` (names are checked: an unknown one raises :class:`ConfigError`)."""
        names = {spec.name for spec in dataclasses.fields(self)}
        unknown = [name for name in changes if name not in names]
        if unknown:
            raise ConfigError(f"{type(self).__qualname__} has no hyperparameter {unknown[0]!r}; it has "
                              f"{', '.join(sorted(names)) or 'none'}")  # fmt: skip
        return dataclasses.replace(self, **changes)

    def parse(self, assignments: dict[str, str]) -> ModelConfig:
        """A copy with ``{name: text}`` parsed by each field's type (``--set name=value`` on the command line):
        ints, floats (``1e-4``), booleans (true/false/1/0/yes/no), choices, comma-separated tuples, ``none``."""
        names = {spec.name for spec in dataclasses.fields(self)}
        changes = {}
        for name, text in assignments.items():
            if name not in names:
                self.replace(**{name: None})  # raises the unknown-name error
            changes[name] = _parse_text(name, text, self.hints()[name])
        return self.replace(**changes)

    def to_dict(self) -> dict:
        """Field name -> plain Python value (tuples stay tuples), for checkpoints and run records."""
        return {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The config of ``values`` (as :meth:`to_dict` gives); unknown or missing names raise ConfigError."""
        names = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{cls.__qualname__} has no hyperparameter {unknown[0]!r}")
        return cls(**values)

    @classmethod
    def describe(cls) -> list[dict]:
        """One entry per field: name, type (as text), default, help."""
        return [{"name": spec.name, "type": _type_text(cls.hints()[spec.name]), "default": spec.default,
                 "help": spec.metadata.get("help", "")} for spec in dataclasses.fields(cls)]  # fmt: skip


# -- checking and parsing field values ----------------------------------------------------------------------------
def _optional(hint) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arguments) != len(typing.get_args(hint)):
            return (arguments[0] if len(arguments) == 1 else typing.Union[tuple(arguments)]), True
    return hint, False


def _type_text(hint) -> str:
    base, nullable = _optional(hint)
    if typing.get_origin(base) is Literal:
        text = " | ".join(repr(a) for a in typing.get_args(base))
    elif typing.get_origin(base) is tuple:
        text = f"tuple of {typing.get_args(base)[0].__name__}"
    else:
        text = base.__name__
    return text + (" | None" if nullable else "")


def _check_value(name: str, value, hint, metadata) -> Any:
    base, nullable = _optional(hint)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{name} must be {_type_text(hint)}, got None")
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
        return value
    if origin is tuple:
        element = typing.get_args(base)[0]
        if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(isinstance(v, element) for v in value):
            raise ConfigError(f"{name} must be a tuple of {element.__name__}, got {value!r}")
        return tuple(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        value = float(value)
    elif base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    minimum, maximum, above = metadata.get("minimum"), metadata.get("maximum"), metadata.get("above")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value!r}")
    if above is not None and not value > above:
        raise ConfigError(f"{name} must be > {above}, got {value!r}")
    return value


def _parse_text(name: str, text: str, hint) -> Any:
    base, nullable = _optional(hint)
    stripped = text.strip()
    if nullable and stripped.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(base)
    if origin is Literal:
        return stripped.lower() if stripped.lower() in typing.get_args(base) else stripped
    if origin is tuple:
        return tuple(part.strip() for part in stripped.split(",") if part.strip())
    if base is bool:
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if base is int:
        try:
            return int(stripped)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    if base is float:
        try:
            return float(stripped)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {text!r}") from None
    return stripped


# -- the model interface ------------------------------------------------------------------------------------------
class Recommender(torch.nn.Module):
    """The base class of every model (see the module docstring for the interface).

    Args:
        dataset: the :class:`~mmrec_fast.data.Dataset` (counts, training interactions, item features).
        config: the model's ``Config`` (None: the defaults).
        backend: the backend of every op the model calls ("reference" | "native" | "triton" | None: automatic).
        **changes: hyperparameters that replace the config's (``LightGCN(dataset, dim=32)``).

    Subclasses set the class attributes below and implement ``losses`` and ``embeddings``.
    """

    #: the name the command line, checkpoints and run records use
    name: ClassVar[str] = ""
    #: one line of help (``mmrec-fast models``)
    summary: ClassVar[str] = ""
    #: the hyperparameters' dataclass
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    #: "bpr" (users, positives, sampled negatives) or "pairs" (users, positives)
    batch_kind: ClassVar[str] = "bpr"
    #: whether a loss term contrasts the batch's rows with each other (in-batch negatives, through
    #: :meth:`batch_info_nce`): such a term is not a mean of per-row terms, and in data-parallel training its
    #: negatives are gathered from every rank
    batch_negatives: ClassVar[bool] = False
    #: set by the data-parallel trainer on a model with ``batch_negatives``: :meth:`batch_info_nce` gathers
    gather_negatives: bool = False
    #: the item-feature modalities the model can use, in the order it uses them (() for a model without features)
    supported_modalities: ClassVar[tuple[str, ...]] = ()
    #: the mmrec_fast ops the model calls in training (``backend=`` must run each of them on the model's device)
    ops: ClassVar[tuple[str, ...]] = ("propagate", "info_nce", "knn", "topk_scores")
    #: the authors' hyperparameter grid, {Config field or TrainConfig field: (value text, ...)}: what ``mmrec-fast
    #: search`` searches when no --grid is given ({}: the authors ship none)
    search_space: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: where the grid comes from (file of the authors' repository, or the paper's section)
    search_space_source: ClassVar[str] = ""

    def __init__(self, dataset, config: ModelConfig | None = None, *, backend: str | None = None, **changes):
        super().__init__()
        self._graphs: dict[str, Graph] = {}
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__}: config must be a {self.Config.__qualname__}, got {type(config).__name__}")
        self.config = config.replace(**changes) if changes else config
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"{type(self).__name__}: unknown backend {backend!r}; expected one of {BACKENDS} or None")
        self.backend = backend
        self.num_users, self.num_items = int(dataset.num_users), int(dataset.num_items)
        self.modalities = self._choose_modalities(dataset)

    # -- what subclasses implement ------------------------------------------------------------------------------
    @classmethod
    def train_defaults(cls) -> dict:
        """The :class:`~mmrec_fast.TrainConfig` fields the authors' code sets (optimizer, lr, weight_decay,
        batch_size, valid_metric, patience, ...); the rest keep TrainConfig's defaults (MMRec's)."""
        return {}

    def losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch: (3, B) or (2, B) int64 (see ``batch_kind``) -> {term name: 0-dim tensor}, weights applied."""
        raise NotImplementedError(f"{type(self).__name__} does not define losses()")

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)) to rank by dot product, without autograd."""
        raise NotImplementedError(f"{type(self).__name__} does not define embeddings()")

    # -- what the trainer and evaluator call ----------------------------------------------------------------------
    def calculate_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The sum of :meth:`losses` (MMRec's entry point)."""
        return sum(self.losses(batch).values())

    def full_sort_predict(self, users) -> torch.Tensor:
        """users: (B,) int64 (or MMRec's ``[users, ...]``) -> (B, I) scores against every item."""
        users = users[0] if isinstance(users, (list, tuple)) else users
        user_embeddings, item_embeddings = self.embeddings()
        return user_embeddings[users] @ item_embeddings.T

    def batch_info_nce(self, a: torch.Tensor, b: torch.Tensor, temperature, **options) -> torch.Tensor:
        """:func:`mmrec_fast.info_nce` over the batch's rows a, b (B, d) (in-batch negatives), on the model's
        backend, ``options`` as there (the mean reduction). In data-parallel training (:attr:`gather_negatives`)
        a and b are this rank's n_r rows and the negatives are every rank's (:func:`mmrec_fast.distributed.info_nce`):
        the value is this rank's mean row loss (0 without rows), which the trainer's weight world * n_r / B turns
        into this rank's share of the global batch's loss."""
        from .. import distributed
        from ..ops import info_nce

        if not self.gather_negatives:
            return info_nce(a, b, temperature, backend=self.backend, **options)
        backend = "reference" if self.backend == "reference" else None  # the gathered block has no kernel backend
        return distributed.info_nce(a, b, temperature, reduction="sum", backend=backend, **options) / max(a.shape[0], 1)

    def pre_epoch(self, epoch: int) -> None:
        """Called before epoch ``epoch``'s first batch (model in training mode)."""

    def post_epoch(self, epoch: int) -> None:
        """Called after epoch ``epoch``'s last batch, before validation."""

    def optimizers(self, train_config) -> dict[str, torch.optim.Optimizer]:
        """name -> optimizer; by default one, ``train_config.optimizer`` over every trainable parameter."""
        from ..train import make_optimizer

        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(f"{type(self).__name__} has no trainable parameters")
        return {"model": make_optimizer(parameters, train_config)}

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns each loss term's value. The default: zero every optimizer's
        gradients, sum :meth:`losses`, backward, step every optimizer (a non-finite loss raises
        FloatingPointError before anything is updated)."""
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        terms = self.losses(batch)
        values = finite_values(terms)
        sum(terms.values()).backward()
        for optimizer in optimizers.values():
            optimizer.step()
        return values

    def check_backend(self, device: torch.device | str) -> None:
        """Raise BackendUnavailable (one line, naming the op and why) if ``self.backend`` cannot run one of the
        model's ops on ``device`` in float32."""
        from .. import backends

        probe = torch.empty(0, device=device)
        for name in self.ops:
            backends.resolve(backends.OPS[name], probe, self.backend)

    def describe(self) -> dict:
        """What run records say about the model: name, hyperparameters, modalities, backend, parameter count."""
        return {"name": self.name, "config": self.config.to_dict(), "modalities": list(self.modalities),
                "backend": self.backend, "parameters": sum(p.numel() for p in self.parameters())}  # fmt: skip

    # -- item features --------------------------------------------------------------------------------------------
    def _choose_modalities(self, dataset) -> tuple[str, ...]:
        supported = self.supported_modalities
        requested = getattr(self.config, "modalities", None)
        if not supported:
            return ()
        have = tuple(m for m in supported if m in dataset.features)
        if requested is None:
            if not have:
                raise ValueError(f"{type(self).__name__} needs item features of at least one of {', '.join(supported)}; "
                                 f"dataset {dataset.name!r} has {_listing(dataset.features) or 'none'}")  # fmt: skip
            return have
        if not requested:
            raise ValueError(f"{type(self).__name__}: modalities must name at least one of {', '.join(supported)}")
        for modality in requested:
            if modality not in supported:
                raise ValueError(f"{type(self).__name__} cannot use modality {modality!r}; it uses {', '.join(supported)}")
            if modality not in dataset.features:
                raise ValueError(f"{type(self).__name__}: modality {modality!r} requested, but dataset {dataset.name!r} "
                                 f"has {_listing(dataset.features) or 'no item features'}")  # fmt: skip
        if len(set(requested)) != len(requested):
            raise ValueError(f"{type(self).__name__}: modalities {requested} name one twice")
        return tuple(m for m in supported if m in requested)  # the model's order

    # -- graphs move with the module ------------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, Graph):
            self.__dict__["_graphs"][name] = value
            return
        graphs = self.__dict__.get("_graphs")
        if graphs is not None and name in graphs:
            del graphs[name]
        super().__setattr__(name, value)

    def __getattr__(self, name: str):
        graphs = self.__dict__.get("_graphs")
        if graphs is not None and name in graphs:
            return graphs[name]
        return super().__getattr__(name)

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        for name, graph in self._graphs.items():
            # fn is what .to()/.cuda()/.double() apply to tensors; a probe on the graph's device says where it goes
            self._graphs[name] = graph.to(fn(torch.empty(0, device=graph.device)).device)
        return module

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())


class LastBatchScoring(Recommender):
    """A :class:`Recommender` that ranks, as its authors' code does, by the embeddings of the **last training
    batch** (SLMRec, MENTOR): computed in that batch's forward pass, before its optimizer step.

    ``losses`` hands what it computed to :meth:`remember_last_batch` (in training mode only); :meth:`post_epoch`
    (and :meth:`embeddings`) turn it into the cached tables through the subclass's :meth:`cached_tables`. The tables
    are buffers, so a checkpoint carries them. ``Config.score_on`` = "cached" (the authors') ranks by them,
    "fresh" by a new forward pass (the subclass's ``forward() -> (users, items)``); an untrained model has no
    tables yet and is ranked fresh.
    """

    def _init_last_batch_tables(self, user_width: int, item_width: int) -> None:
        """Register the (U, user_width) and (I, item_width) tables (zero, not yet valid)."""
        self.register_buffer("cached_users", torch.zeros(self.num_users, user_width))
        self.register_buffer("cached_items", torch.zeros(self.num_items, item_width))
        self.register_buffer("cache_valid", torch.zeros((), dtype=torch.bool))
        self._last_batch: tuple[torch.Tensor, ...] | None = None

    def remember_last_batch(self, *tensors: torch.Tensor) -> None:
        """Keep (detached) what :meth:`cached_tables` needs from this training batch; a tensor the optimizer step
        changes in place (a parameter) must come as a clone."""
        if self.training:
            self._last_batch = tuple(t.detach() for t in tensors)

    def cached_tables(self, *remembered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`remember_last_batch` kept -> (users (U, user_width), items (I, item_width))."""
        raise NotImplementedError(f"{type(self).__name__} does not define cached_tables()")

    def _materialise_cache(self) -> None:
        if self._last_batch is None:
            return
        with torch.no_grad():
            users, items = self.cached_tables(*self._last_batch)
            self.cached_users.copy_(users)
            self.cached_items.copy_(items)
            self.cache_valid.fill_(True)
        self._last_batch = None

    def post_epoch(self, epoch: int) -> None:
        self._materialise_cache()

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.score_on == "cached":
            self._materialise_cache()
            if bool(self.cache_valid):
                return self.cached_users.clone(), self.cached_items.clone()
        with torch.no_grad():
            return self.forward()


def rows(matrix: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """matrix[index] (rows; matrix (n, d), index (B,) int64 -> (B, d)) with a deterministic backward.

    Every model gathers its batch rows through this: the backward of ``matrix[index]`` accumulates repeated indices
    with atomic adds on the CPU once it has 32k elements and more than one thread (float32), so training would not
    be bitwise reproducible; ``index_select``'s backward adds them in order."""
    return torch.index_select(matrix, 0, index)


def finite_values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """{name: float} of the loss terms (one device sync); raises FloatingPointError naming them if the sum is not
    finite."""
    values = dict(zip(terms, torch.stack([t.detach().to(torch.float64) for t in terms.values()]).tolist()))
    total = sum(values.values())
    if not math.isfinite(total):
        shown = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
        raise FloatingPointError(f"the loss is {total} ({shown})")
    return values


def _listing(features) -> str:
    return ", ".join(f"{m} ({f.shape[1]}-d)" for m, f in features.items())
