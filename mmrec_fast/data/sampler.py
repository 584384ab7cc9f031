"""Training batches, vectorised and reproducible: shuffled positive pairs, with or without sampled negatives.

* :class:`PairSampler`: (2, B) int64 batches [users; positive items] (SLMRec's in-batch InfoNCE needs no sampled
  negatives; the original's ``PointwiseSamplerV2``).
* :class:`BPRSampler`: (3, B) [users; positives; negatives], one uniform negative per row (MMRec's
  ``TrainDataLoader``; ``interaction[0..2]`` in MMRec models).
* :class:`UserSampler`: (3, B) as BPRSampler's, but B distinct users drawn uniformly a batch, each with one random
  positive (MMSSL's ``sample``).

MMRec's loader draws each negative in a Python rejection loop (``_sample_neg_ids``: draw, test membership in the
user's set, redraw). Here a whole epoch's negatives are drawn at once and exactly, without rejection: with the
candidate items c_0 < ... < c_{C-1} (every item, or MMRec's pool: the items seen in training) and, for a user u,
the candidate ranks q_0 < ... < q_{d-1} of its positives, the r-th candidate that is not a positive has rank

    n_r = r + #{t : q_t - t <= r}

(q_t - t counts the non-positive candidates below q_t), so drawing r uniformly in [0, C - d) draws uniformly
among the non-positives. One ``searchsorted`` over the keys u * C + (q_t - t), which are sorted across users, does
it for every interaction of the epoch.

Epoch e's batches are a function of (seed, e) only, so a resumed run sees exactly the batches an uninterrupted one
would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .dataset import DataError, Interactions

NEGATIVE_POOLS = ("all", "train_items")


class PairSampler:
    """Shuffled training interactions in batches of (users, positive items).

    Args:
        train: the training :class:`Interactions` (E pairs; every pair is one row of an epoch, repeats included).
        num_users, num_items: U and I.
        batch_size: B; the last batch of an epoch may be smaller.
        seed: with the epoch number, determines the order (and the negatives of :class:`BPRSampler`).
        shuffle: shuffle the interactions every epoch (else keep their order).
    """

    rows = 2

    def __init__(self, train: Interactions, num_users: int, num_items: int, batch_size: int = 2048, *,
                 seed: int = 0, shuffle: bool = True):  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(train) == 0:
            raise DataError(f"{type(self).__name__}: no training interactions")
        self.train, self.num_users, self.num_items = train, int(num_users), int(num_items)
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.train) // self.batch_size)

    def generator(self, epoch: int) -> torch.Generator:
        """The random stream of ``epoch`` (depends on the seed and the epoch only)."""
        seed = int(np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def table(self, epoch: int) -> torch.Tensor:
        """(rows, E) int64: the epoch's rows in order."""
        generator = self.generator(epoch)
        order = torch.randperm(len(self.train), generator=generator) if self.shuffle else torch.arange(len(self.train))
        return self._rows(self.train.users[order], self.train.items[order], generator)

    def _rows(self, users: torch.Tensor, items: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([users, items])

    def epoch(self, epoch: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """The batches of epoch ``epoch``: (rows, B) int64 tensors on ``device``."""
        table = self.table(epoch)
        for start in range(0, table.shape[1], self.batch_size):
            yield table[:, start:start + self.batch_size].to(device, non_blocking=True)


class BPRSampler(PairSampler):
    """Shuffled training interactions, each with one uniform negative item that the user has not interacted with.

    Args:
        train, num_users, num_items, batch_size, seed, shuffle: as :class:`PairSampler`.
        negatives: the pool negatives are drawn from: "all" items, or "train_items" (the items with a training
            interaction: MMRec's ``TrainDataLoader``, which samples from the training frame's item ids).
    """

    rows = 3

    def __init__(self, train: Interactions, num_users: int, num_items: int, batch_size: int = 2048, *,
                 seed: int = 0, shuffle: bool = True, negatives: str = "all"):  # fmt: skip
        super().__init__(train, num_users, num_items, batch_size, seed=seed, shuffle=shuffle)
        if negatives not in NEGATIVE_POOLS:
            raise ValueError(f"negatives must be one of {NEGATIVE_POOLS}, got {negatives!r}")
        self.negative_pool = negatives
        if negatives == "all":
            self.candidates = torch.arange(self.num_items)
        else:
            self.candidates = torch.unique(train.items)  # sorted
        num_candidates = self.candidates.numel()
        rank_of = torch.full((self.num_items,), -1, dtype=torch.int64)
        rank_of[self.candidates] = torch.arange(num_candidates)
        positives = train.unique_pairs(self.num_items)  # sorted by (user, item), so by (user, candidate rank)
        counts = torch.bincount(positives.users, minlength=self.num_users)
        full = torch.nonzero(counts >= num_candidates).flatten()
        if full.numel():
            raise DataError(f"BPRSampler: user {int(full[0])} has interacted with all {num_candidates} candidate items; "
                            "no negative exists")  # fmt: skip
        self.positive_counts = counts  # (U,) int64
        self.rowptr = torch.zeros(self.num_users + 1, dtype=torch.int64)
        self.rowptr[1:] = torch.cumsum(counts, 0)
        local = torch.arange(positives.users.numel()) - self.rowptr[positives.users]
        # u * C + (q_t - t): sorted, because q_t - t lies in [0, C - d_u] within each user's block
        self.adjusted_keys = positives.users * num_candidates + (rank_of[positives.items] - local)

    def negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n,) int64 items drawn uniformly among the candidates each of ``users`` ((n,) int64) has not interacted
        with."""
        num_candidates = self.candidates.numel()
        span = (num_candidates - self.positive_counts[users]).to(torch.float64)
        rank = torch.minimum((torch.rand(users.shape, generator=generator, dtype=torch.float64) * span).to(torch.int64),
                             span.to(torch.int64) - 1)  # fmt: skip
        below = torch.searchsorted(self.adjusted_keys, users * num_candidates + rank, right=True) - self.rowptr[users]
        return self.candidates[rank + below]

    def _rows(self, users: torch.Tensor, items: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([users, items, self.negatives(users, generator)])


class UserSampler(BPRSampler):
    """MMSSL's batches (``MMSSL/utility/load_data.py`` ``sample``, ``main.py`` L322-336): (3, B) [users; positives;
    negatives] with B distinct users drawn uniformly among those with training items (with replacement when B is
    larger than their number), one positive drawn uniformly among each user's distinct training items and one
    negative uniformly among the items the user has not interacted with; ``len(train) // B + 1`` batches an epoch,
    every one full. Each user counts the same however many items it has (the interaction samplers weight users by
    their activity: the mean activity of a sampled TikTok user is 294 interactions, of a TikTok user 6.4).

    Args:
        train, num_users, num_items, batch_size, seed: as :class:`PairSampler` (``shuffle`` is ignored: the draws
            are random).
        negatives: as :class:`BPRSampler` (MMSSL: "all").
    """

    rows = 3

    def __init__(self, train: Interactions, num_users: int, num_items: int, batch_size: int = 1024, *,
                 seed: int = 0, shuffle: bool = True, negatives: str = "all"):  # fmt: skip
        super().__init__(train, num_users, num_items, batch_size, seed=seed, shuffle=shuffle, negatives=negatives)
        self.active_users = torch.nonzero(self.positive_counts > 0).flatten()
        self.positive_items = train.unique_pairs(self.num_items).items  # sorted by user: rows of self.rowptr

    def __len__(self) -> int:
        return len(self.train) // self.batch_size + 1

    def table(self, epoch: int) -> torch.Tensor:
        generator = self.generator(epoch)
        count, size = self.active_users.numel(), self.batch_size
        picks = [torch.randperm(count, generator=generator)[:size] if size <= count
                 else torch.randint(count, (size,), generator=generator) for _ in range(len(self))]  # fmt: skip
        users = self.active_users[torch.cat(picks)]
        degree = self.positive_counts[users]
        offset = torch.minimum((torch.rand(users.shape, generator=generator, dtype=torch.float64) * degree).to(torch.int64),
                               degree - 1)  # fmt: skip
        positives = self.positive_items[self.rowptr[users] + offset]
        return torch.stack([users, positives, self.negatives(users, generator)])


#: a model's ``batch_kind`` -> the sampler of its batches
SAMPLERS = {"bpr": BPRSampler, "pairs": PairSampler, "users": UserSampler}
