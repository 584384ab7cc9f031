"""Models, all on one interface (:class:`Recommender`, see :mod:`mmrec_fast.models.base`): MMRec's
``calculate_loss(batch)`` / ``full_sort_predict(users)`` plus named ``losses``, ``embeddings()`` for full-ranking
evaluation through ``topk_scores``, a ``Config`` of hyperparameters with the authors' defaults and
``train_defaults()``.

:data:`MODELS` maps the names the command line, checkpoints and run records use to the trainable classes.
"""

from __future__ import annotations

from .base import ConfigError, ModelConfig, Recommender, option
from .freedom import FREEDOM
from .lightgcn import LightGCN
from .mentor import MENTOR
from .mmssl import MMSSL
from .popularity import Popularity
from .slmrec import SLMRec

#: name -> trainable model class
MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (LightGCN, SLMRec, FREEDOM, MENTOR, MMSSL)}


def model_class(name: str) -> type[Recommender]:
    """The class of model ``name`` (a key of :data:`MODELS`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build(name: str, dataset, config: ModelConfig | dict | None = None, *, backend: str | None = None,
          **changes) -> Recommender:  # fmt: skip
    """Model ``name`` for ``dataset``: its ``Config`` from ``config`` (a Config, a dict as ``Config.to_dict()``
    gives, or None for the defaults) with ``changes`` applied."""
    cls = model_class(name)
    if isinstance(config, dict):
        config = cls.Config.from_dict(config)
    return cls(dataset, config, backend=backend, **changes)


__all__ = ["ConfigError", "FREEDOM", "LightGCN", "MENTOR", "MMSSL", "MODELS", "ModelConfig", "Popularity", "Recommender", "SLMRec", "build",
           "model_class", "option"]  # fmt: skip
