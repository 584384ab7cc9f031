"""BPR training batches with uniform negatives, vectorised and reproducible.

MMRec's loader draws each negative in a Python rejection loop (``_sample_neg_ids``: draw, test membership in the
user's set, redraw). Here a whole epoch's negatives are drawn at once and exactly, without rejection: for a user u
with sorted positives p_0 < ... < p_{d-1}, the r-th item that is not a positive is

    n_r = r + #{t : p_t - t <= r}

(p_t - t counts the non-positives below p_t), so drawing r uniformly in [0, I - d) draws uniformly among the
non-positives. One ``searchsorted`` over the keys u * I + (p_t - t), which are sorted across users, does it for
every interaction of the epoch.

Batches are MMRec's: a (3, B) int64 tensor [users; positive items; negative items] (``interaction[0]``,
``interaction[1]``, ``interaction[2]`` in MMRec models). Epoch e's batches are a function of (seed, e) only, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .dataset import DataError, Interactions


class BPRSampler:
    """Shuffled training interactions, each with one uniform negative item that the user has not interacted with.

    Args:
        train: the training :class:`Interactions` (E pairs; every pair is one row of an epoch, repeats included).
        num_users, num_items: U and I.
        batch_size: B; the last batch of an epoch may be smaller.
        seed: with the epoch number, determines the order and the negatives.
        shuffle: shuffle the interactions every epoch (else keep their order).
    """

    def __init__(self, train: Interactions, num_users: int, num_items: int, batch_size: int = 2048, *,
                 seed: int = 0, shuffle: bool = True):  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(train) == 0:
            raise DataError("BPRSampler: no training interactions")
        self.train, self.num_users, self.num_items = train, int(num_users), int(num_items)
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        positives = train.unique_pairs(self.num_items)  # sorted by (user, item)
        counts = torch.bincount(positives.users, minlength=self.num_users)
        full = torch.nonzero(counts >= self.num_items).flatten()
        if full.numel():
            raise DataError(f"BPRSampler: user {int(full[0])} has interacted with all {self.num_items} items; no negative exists")
        self.positive_counts = counts  # (U,) int64
        self.rowptr = torch.zeros(self.num_users + 1, dtype=torch.int64)
        self.rowptr[1:] = torch.cumsum(counts, 0)
        local = torch.arange(positives.users.numel()) - self.rowptr[positives.users]
        # u * I + (p_t - t): sorted, because p_t - t lies in [0, I - d_u] within each user's block
        self.adjusted_keys = positives.users * self.num_items + (positives.items - local)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.train) // self.batch_size)

    def generator(self, epoch: int) -> torch.Generator:
        """The random stream of ``epoch`` (depends on the seed and the epoch only)."""
        seed = int(np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n,) int64 items drawn uniformly among the items each of ``users`` ((n,) int64) has not interacted with."""
        span = (self.num_items - self.positive_counts[users]).to(torch.float64)
        rank = torch.minimum((torch.rand(users.shape, generator=generator, dtype=torch.float64) * span).to(torch.int64),
                             span.to(torch.int64) - 1)  # fmt: skip
        below = torch.searchsorted(self.adjusted_keys, users * self.num_items + rank, right=True) - self.rowptr[users]
        return rank + below

    def epoch(self, epoch: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """The batches of epoch ``epoch``: (3, B) int64 tensors [users; positives; negatives] on ``device``."""
        generator = self.generator(epoch)
        order = torch.randperm(len(self.train), generator=generator) if self.shuffle else torch.arange(len(self.train))
        users, items = self.train.users[order], self.train.items[order]
        table = torch.stack([users, items, self.negatives(users, generator)])
        for start in range(0, table.shape[1], self.batch_size):
            yield table[:, start:start + self.batch_size].to(device, non_blocking=True)
