"""Models, with MMRec's interface (``calculate_loss(batch)``, ``full_sort_predict(users)``) plus ``embeddings()``
for full-ranking evaluation through ``topk_scores``.

:data:`MODELS` maps the names the command line and checkpoints use to the classes; each has
``from_dataset(dataset, **hyperparameters)`` and ``hyperparameters()``.
"""

from .lightgcn import LightGCN
from .popularity import Popularity

#: name -> trainable model class
MODELS = {"lightgcn": LightGCN}


def build(name: str, dataset, **hyperparameters):
    """The model ``name`` (a key of :data:`MODELS`) for ``dataset``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name].from_dataset(dataset, **hyperparameters)


__all__ = ["LightGCN", "MODELS", "Popularity", "build"]
