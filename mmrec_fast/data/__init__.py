"""Datasets: the MMRec and MMSSL formats, synthetic data with the structure of real data, and BPR batches.

* :func:`load` / :func:`load_mmrec` / :func:`load_mmssl`: read a dataset directory (never unpickling anything).
* :func:`synthetic`: a generated dataset with latent-factor structure, power-law degrees and real sizes (the
  embedded default).
* :class:`Dataset`: what all of them return; :class:`Interactions`: (user, item) pairs.
* :class:`PairSampler` / :class:`BPRSampler`: shuffled (user, positive[, negative]) batches, vectorised and seeded;
  :class:`UserSampler`: MMSSL's batches of distinct uniformly drawn users.
"""

from .dataset import SPLITS, DataError, Dataset, Interactions
from .loaders import MODALITIES, from_source, load, load_mmrec, load_mmssl
from .sampler import NEGATIVE_POOLS, SAMPLERS, BPRSampler, PairSampler, UserSampler
from .synthetic import DEFAULT_PRESET, PRESETS, synthetic

__all__ = [
    "BPRSampler",
    "NEGATIVE_POOLS",
    "PairSampler",
    "SAMPLERS",
    "UserSampler",
    "DEFAULT_PRESET",
    "DataError",
    "Dataset",
    "Interactions",
    "MODALITIES",
    "PRESETS",
    "SPLITS",
    "from_source",
    "load",
    "load_mmrec",
    "load_mmssl",
    "synthetic",
]
