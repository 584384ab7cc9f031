"""Full-ranking evaluation: Recall, NDCG, Precision and MAP at several K, every item a candidate, known items out.

The protocol is MMRec's (``src/common/trainer.py`` ``evaluate``, ``src/utils/topk_evaluator.py``,
``src/utils/metrics.py``): the users evaluated are those with at least one item in the evaluated split; each is
ranked against all items with their training items excluded (valid items are *not* excluded at test time, nor
test items at validation); metrics are averaged over the evaluated users. With R_u the user's relevant items
(distinct pairs of the split), hits h_1..h_K in the top K = max(ks):

* Recall@k = sum_{j<=k} h_j / |R_u|;  Precision@k = sum_{j<=k} h_j / k;
* NDCG@k = DCG@k / IDCG@k, DCG@k = sum_{j<=k} h_j / log2(j + 1), IDCG@k the DCG of n ideal hits, with
  n = min(|R_u|, k) (``ndcg="mmrec"``, the standard form) or n = min(hits in the top K, k) (``ndcg="ngcf"``:
  the NGCF/MMSSL code's ``ndcg_at_k``, which builds the ideal list from the retrieved hit vector and so
  inflates NDCG; 0 when nothing is retrieved);
* MAP@k = sum_{j<=k} h_j * Precision@j / min(k, |R_u|)   (MMRec's ``map_``).

Ranking goes through :func:`mmrec_fast.topk_scores` (score + exclude + top-k without a U x I matrix on the fast
backends), a batch of users at a time. A score function (an MMRec model's ``full_sort_predict``, say) is ranked from
its (B, I) score rows with the same rules (excluded items out, ties to the lower item index).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .backends import accumulation_dtype
from .data.dataset import SPLITS, Dataset, Interactions
from .graph import Graph
from .ops import topk_scores
from .reference.topk_scores import rank_scores

DEFAULT_KS = (5, 10, 20, 50)
METRICS = ("recall", "ndcg", "precision", "map")
NDCG_FORMS = ("mmrec", "ngcf")


def rank_metrics(hits: torch.Tensor, num_relevant: torch.Tensor, ks: Sequence[int] = DEFAULT_KS,
                 metrics: Sequence[str] = METRICS, ndcg: str = "mmrec") -> dict[str, torch.Tensor]:  # fmt: skip
    """Per-user metrics from hit indicators.

    Args:
        hits: (B, K) bool, hits[b, j] = the item ranked j + 1 for user b is relevant; K = max(ks).
        num_relevant: (B,) integer |R_u| >= 1.
        ks, metrics, ndcg: as in :func:`evaluate`.

    Returns:
        "<metric>@<k>" -> (B,) float64 per-user values.
    """
    _check_options(ks, metrics, ndcg)
    num_users, depth = hits.shape
    if depth != max(ks):
        raise ValueError(f"hits has {depth} columns but max(ks) = {max(ks)}")
    h = hits.to(torch.float64)
    relevant = num_relevant.to(device=h.device, dtype=torch.float64)
    ranks = torch.arange(1, depth + 1, device=h.device, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1)
    found = h.cumsum(1)  # (B, K) hits within the top j
    dcg = (h * discount).cumsum(1)
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # ideal[n] = DCG of n hits at the top
    average_precision_sum = (h * found / ranks).cumsum(1)
    out = {}
    for metric in metrics:
        for k in ks:
            if metric == "recall":
                value = found[:, k - 1] / relevant
            elif metric == "precision":
                value = found[:, k - 1] / k
            elif metric == "ndcg":
                ideal_hits = relevant if ndcg == "mmrec" else found[:, -1]
                idcg = ideal[ideal_hits.clamp(max=k).to(torch.int64)]
                value = torch.where(idcg > 0, dcg[:, k - 1] / idcg.clamp(min=1e-300), torch.zeros_like(idcg))
            else:  # map
                value = average_precision_sum[:, k - 1] / relevant.clamp(max=k)
            out[f"{metric}@{k}"] = value
    return out


def evaluate(
    model,
    dataset: Dataset,
    split: str = "test",
    *,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = METRICS,
    ndcg: str = "mmrec",
    exclude: Sequence[str] = ("train",),
    batch_size: int = 4096,
    backend: str | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``split`` of ``dataset``, averaged over the split's users.

    Args:
        model: one of
            * a :class:`~mmrec_fast.models.Recommender`: ranked by its ``embeddings()`` (score = dot product)
              through :func:`mmrec_fast.topk_scores`, in eval mode (its training mode is restored after);
            * a pair ``(user_embeddings (U, d), item_embeddings (I, d))``, the same;
            * a function ``users (B,) int64 -> (B, I) scores``, e.g. an MMRec model's ``full_sort_predict``
              (called with the user ids on the CPU; it moves them where it needs).
        dataset: the :class:`~mmrec_fast.data.Dataset`.
        split: "valid" | "test".
        ks: cut-offs, e.g. (5, 10, 20, 50).
        metrics: any of "recall", "ndcg", "precision", "map".
        ndcg: "mmrec" (standard IDCG) | "ngcf" (MMSSL's form; see the module docstring).
        exclude: the splits whose pairs are removed from every user's ranking (MMRec: ("train",)).
        batch_size: users ranked at once.
        backend: the backend of ``topk_scores`` (None: automatic).

    Returns:
        {"recall@20": ..., ...}: floats, metric-major in the order of ``metrics`` then ``ks``.
    """
    relevant, excluded = evaluation_pairs(dataset, split, exclude)
    return ranking_metrics(model, relevant, dataset.num_items, exclude=excluded, ks=ks, metrics=metrics,
                           ndcg=ndcg, batch_size=batch_size, backend=backend)  # fmt: skip


def evaluation_pairs(dataset: Dataset, split: str, exclude: Sequence[str] = ("train",)) -> tuple[Interactions, Graph | None]:
    """:func:`evaluate`'s data: (the pairs of ``split``, the (U, I) Graph of the pairs of the ``exclude`` splits
    or None)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for name in exclude:
        if name not in SPLITS:
            raise ValueError(f"exclude names splits {SPLITS}, got {name!r}")
    if tuple(exclude) == ("train",):
        excluded = dataset.train_matrix
    elif exclude:
        parts = [dataset.split(name) for name in exclude]
        excluded = Interactions(torch.cat([p.users for p in parts]), torch.cat([p.items for p in parts])).matrix(
            dataset.num_users, dataset.num_items
        )
    else:
        excluded = None
    return dataset.split(split), excluded


def ranking_metrics(
    model,
    relevant: Interactions,
    num_items: int,
    *,
    exclude: Graph | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = METRICS,
    ndcg: str = "mmrec",
    batch_size: int = 4096,
    backend: str | None = None,
) -> dict[str, float]:
    """:func:`evaluate` on explicit data: ``relevant`` pairs (each user's relevant items) and an (U, I)
    ``exclude`` :class:`~mmrec_fast.Graph` of pairs to leave out of the rankings (or None)."""
    sums, num_users = batch_metric_sums(model, relevant, num_items, exclude=exclude, ks=ks, metrics=metrics,
                                        ndcg=ndcg, batch_size=batch_size, backend=backend)  # fmt: skip
    return average_batch_sums(sums, num_users)


def batch_metric_sums(
    model,
    relevant: Interactions,
    num_items: int,
    *,
    exclude: Graph | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = METRICS,
    ndcg: str = "mmrec",
    batch_size: int = 4096,
    backend: str | None = None,
    batches: tuple[int, int] = (0, 1),
) -> tuple[list[tuple[int, dict[str, float]]], int]:
    """The users of :func:`ranking_metrics` in batches of ``batch_size``, and for the batches b with
    b % batches[1] == batches[0] (all of them by default; one rank's share in
    :func:`mmrec_fast.distributed.evaluate`) the sum of each metric over the batch's users.

    Returns ([(b, {"recall@20": sum, ...}), ...], number of users evaluated in all batches)."""
    _check_options(ks, metrics, ndcg)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    depth = max(ks)
    if depth > num_items:
        raise ValueError(f"max(ks) = {depth} is larger than the number of items ({num_items})")
    if len(relevant) == 0:
        raise ValueError("ranking_metrics: no relevant pairs, so no user to evaluate")
    truth = relevant.unique_pairs(num_items)
    users, num_relevant = torch.unique_consecutive(truth.users, return_counts=True)
    truth_keys = truth.users * num_items + truth.items  # sorted
    ranker = _Ranker(model, num_items, backend)
    sums = []
    mine, every = batches
    with torch.no_grad():
        for index, start in enumerate(range(0, users.numel(), batch_size)):
            if index % every != mine:
                continue
            batch = users[start:start + batch_size]
            rows = None if exclude is None else _rows_of(exclude, batch)
            top = ranker.top(batch, depth, rows).cpu()  # (B, K) item ids, -1 where nothing is left
            keys = batch.unsqueeze(1) * num_items + top
            position = torch.searchsorted(truth_keys, keys).clamp(max=truth_keys.numel() - 1)
            hits = (truth_keys[position] == keys) & (top >= 0)
            per_user = rank_metrics(hits, num_relevant[start:start + batch_size], ks, metrics, ndcg)
            sums.append((index, {name: float(values.sum()) for name, values in per_user.items()}))
    ranker.close()
    return sums, users.numel()


def average_batch_sums(sums: list[tuple[int, dict[str, float]]], num_users: int) -> dict[str, float]:
    """The metrics from every batch's sums (:func:`batch_metric_sums`), added in batch order."""
    total = None
    for _, batch_sums in sorted(sums, key=lambda item: item[0]):
        total = dict(batch_sums) if total is None else {name: total[name] + batch_sums[name] for name in total}
    return {name: value / num_users for name, value in total.items()}


class _Ranker:
    """The top-k items of a batch of users for each kind of model that :func:`evaluate` accepts."""

    def __init__(self, model, num_items: int, backend: str | None):
        from .models import Recommender

        self.model, self.backend, self.was_training, self.scores = model, backend, None, None
        if isinstance(model, Recommender):
            self.was_training = model.training
            model.eval()
            with torch.no_grad():
                self.user_embeddings, self.item_embeddings = model.embeddings()
        elif isinstance(model, (tuple, list)) and len(model) == 2 and all(isinstance(t, torch.Tensor) for t in model):
            self.user_embeddings, self.item_embeddings = model
        elif callable(model):
            self.scores, self.user_embeddings, self.item_embeddings = model, None, None
        else:
            raise TypeError("evaluate: model must be a mmrec_fast.models.Recommender, a pair (user_embeddings, "
                            f"item_embeddings) or a function users -> (B, I) scores; got {type(model).__name__}")  # fmt: skip
        if self.item_embeddings is not None and self.item_embeddings.shape[0] != num_items:
            raise ValueError(f"evaluate: {self.item_embeddings.shape[0]} item embeddings for {num_items} items")

    def top(self, users: torch.Tensor, k: int, exclude: Graph | None) -> torch.Tensor:
        """users: (B,) int64 -> (B, k) int64 item ids (-1 where fewer than k items remain)."""
        if self.user_embeddings is not None:
            device = self.user_embeddings.device
            queries = self.user_embeddings[users.to(device)]
            exclude = None if exclude is None else exclude.to(device)
            return topk_scores(queries, self.item_embeddings, k, exclude=exclude, backend=self.backend)[1]
        scores = self.scores(users).detach()
        if scores.dim() != 2 or scores.shape[0] != users.numel():
            raise ValueError(f"evaluate: the score function gave shape {tuple(scores.shape)} for {users.numel()} users")
        return rank_scores(scores.to(accumulation_dtype(scores.dtype), copy=True), k, exclude)[1]

    def close(self) -> None:
        if self.was_training:
            self.model.train()


def _rows_of(matrix: Graph, rows: torch.Tensor) -> Graph:
    """The (B, n) graph of rows ``rows`` ((B,) int64) of the binary (m, n) ``matrix``."""
    rows = rows.to(matrix.device)
    starts = matrix.rowptr[rows]
    counts = matrix.rowptr[rows + 1] - starts
    rowptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=matrix.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    within = torch.arange(int(rowptr[-1]), device=matrix.device) - torch.repeat_interleave(rowptr[:-1], counts)
    col = matrix.col[torch.repeat_interleave(starts, counts) + within]
    return Graph(rowptr, col, shape=(rows.numel(), matrix.shape[1]))


def _check_options(ks, metrics, ndcg) -> None:
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be among {METRICS}, got {list(metrics)!r}")
    if ndcg not in NDCG_FORMS:
        raise ValueError(f"ndcg must be one of {NDCG_FORMS}, got {ndcg!r}")
