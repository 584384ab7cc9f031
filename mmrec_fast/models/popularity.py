"""The popularity ranker: every user gets the items with the most training interactions (the baseline a
collaborative model must beat)."""

from __future__ import annotations

import torch

from .base import Recommender


class Popularity(Recommender):
    """score(u, i) = number of training interactions of item i; no parameters, nothing to train.

    Args:
        dataset: its training interactions give the counts.
    """

    name = "popularity"
    summary = "the most popular items for everyone (no parameters; the floor a model must beat)"
    ops = ()

    def __init__(self, dataset, config=None, *, backend: str | None = None):
        super().__init__(dataset, config, backend=backend)
        self.register_buffer("counts", torch.bincount(dataset.train.items, minlength=self.num_items).to(torch.float32))  # (I,)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, 1) ones, items (I, 1) counts): dot products are the item counts."""
        return self.counts.new_ones(self.num_users, 1), self.counts.unsqueeze(1)
