"""The popularity ranker: every user gets the items with the most training interactions (the baseline a
collaborative model must beat)."""

from __future__ import annotations

import torch


class Popularity:
    """score(u, i) = number of training interactions of item i; no parameters, nothing to train.

    Args:
        num_users, num_items: U and I.
        train: the training :class:`~mmrec_fast.data.Interactions`.
    """

    def __init__(self, num_users: int, num_items: int, train):
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.counts = torch.bincount(train.items, minlength=self.num_items).to(torch.float32)  # (I,)

    @classmethod
    def from_dataset(cls, dataset) -> Popularity:
        return cls(dataset.num_users, dataset.num_items, dataset.train)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, 1) ones, items (I, 1) counts): dot products are the item counts."""
        return torch.ones(self.num_users, 1), self.counts.unsqueeze(1)
