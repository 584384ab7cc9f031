"""The dense-batch full-ranking evaluator: the baseline of ``bench_train.py``.

It models the approach of MMRec's evaluator (enoche/MMRec) as its documentation and behaviour describe it, and is
written here from that description: no code of MMRec's is in it. The users of a split are ranked in batches; each
batch gets a dense (batch, I) score matrix, its users' training items are set to -1e10, and ``torch.topk`` takes the
top max(ks); then a Python loop goes over every user and tests each retrieved item against the user's held-out
items, kept as a numpy array as MMRec keeps them (so each test is a scan of that array, which is what makes MMRec's
loop slow: a Python set here would time a faster evaluator than the one modelled), and numpy turns the (users, max(ks)) hit matrix into the metrics, averaged over users and rounded to 4
decimals (as MMRec reports them). The metric definitions are MMRec's (the ones ``mmrec_fast.evaluate`` follows):

    recall@k    = hits@k / n                                 n = the user's held-out items
    precision@k = hits@k / k
    ndcg@k      = DCG@k / IDCG@k,  DCG@k = sum_{r <= k, hit} 1 / log2(r + 1),  IDCG@k over min(n, k) hits
    map@k       = sum_{r <= k, hit} (hits@r / r) / min(n, k)

What is not modelled: MMRec's ``full_sort_predict`` reruns the model's forward pass for every batch; here every
batch reads the same given embeddings (the input ``mmrec_fast.evaluate`` gets too).
"""

from __future__ import annotations

import numpy as np
import torch


class DenseBatchEvaluator:
    """Precomputes, once and untimed, the split's users (in order of first appearance), each batch's training-item
    mask (row in the batch, item) and each user's held-out item set.

    Args:
        dataset: a :class:`mmrec_fast.data.Dataset`.
        split: "valid" or "test".
        batch_size: users per dense score matrix (MMRec's default eval batch: 4096).
    """

    def __init__(self, dataset, split: str, batch_size: int = 4096):
        heldout = dataset.split(split)
        order = heldout.users.numpy()
        _, first = np.unique(order, return_index=True)
        self.users = torch.from_numpy(order[np.sort(first)].copy())  # (N,)
        self.heldout = {user: np.asarray(items) for user, items in _items_by_user(heldout).items()}  # (n,) each
        seen = _items_by_user(dataset.train)
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (users, mask rows, mask items)
        for start in range(0, len(self.users), batch_size):
            users = self.users[start : start + batch_size]
            rows = [row for row, user in enumerate(users.tolist()) for _ in seen.get(user, ())]
            items = [item for user in users.tolist() for item in seen.get(user, ())]
            self.batches.append((users, torch.tensor(rows, dtype=torch.long), torch.tensor(items, dtype=torch.long)))

    def __call__(self, user_embeddings: torch.Tensor, item_embeddings: torch.Tensor,
                 ks: tuple[int, ...] = (5, 10, 20, 50)) -> dict[str, float]:  # fmt: skip
        """user_embeddings (U, d), item_embeddings (I, d) -> {"recall@k", "ndcg@k", "precision@k", "map@k"}."""
        depth = max(ks)
        ranked = []
        for users, mask_rows, mask_items in self.batches:
            scores = user_embeddings[users] @ item_embeddings.T  # (batch, I)
            scores[mask_rows, mask_items] = -1e10
            ranked.append(torch.topk(scores, depth, dim=1).indices)
        ranked_lists = torch.cat(ranked).cpu().numpy()
        hits = np.zeros((len(ranked_lists), depth))  # (N, depth)
        for n, (user, items) in enumerate(zip(self.users.tolist(), ranked_lists)):
            relevant = self.heldout[user]
            hits[n] = [item in relevant for item in items]  # numpy's `in`: a scan of the user's array per item
        return _metrics(hits, np.array([len(self.heldout[u]) for u in self.users.tolist()]), ks)


def _items_by_user(interactions) -> dict[int, list[int]]:
    """user -> its items, in file order."""
    grouped: dict[int, list[int]] = {}
    for user, item in zip(interactions.users.tolist(), interactions.items.tolist()):
        grouped.setdefault(user, []).append(item)
    return grouped


def _metrics(hits: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """hits (N, depth) of 0 / 1 by rank, relevant (N,) held-out counts -> the user-averaged metrics, 4 decimals."""
    rank = np.arange(1, hits.shape[1] + 1)
    discount = 1.0 / np.log2(rank + 1)
    found = hits.cumsum(axis=1)  # hits@r for r = 1..depth
    values: dict[str, np.ndarray] = {}
    for k in ks:
        capped = np.minimum(relevant, k)
        values[f"recall@{k}"] = found[:, k - 1] / relevant
        values[f"ndcg@{k}"] = (hits[:, :k] @ discount[:k]) / np.cumsum(discount)[capped - 1]
        values[f"precision@{k}"] = found[:, k - 1] / k
        values[f"map@{k}"] = (hits[:, :k] * found[:, :k] / rank[:k]).sum(axis=1) / capped
    order = [f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in ks]
    return {name: round(float(values[name].mean()), 4) for name in order}
