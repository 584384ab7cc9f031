"""Full-ranking metrics against an independent per-user Python computation, and the evaluation protocol
(which items are excluded, which users are evaluated, both model interfaces)."""

from __future__ import annotations

import math

import pytest
import torch

from mmrec_fast.data import Dataset, Interactions
from mmrec_fast.evaluate import evaluate, rank_metrics, ranking_metrics
from mmrec_fast.models import Popularity, Recommender

KS = (1, 3, 5, 10)


def per_user_metrics(user_emb, item_emb, relevant, excluded, ks, ndcg):
    """The independent computation: plain Python per user, straight from the definitions.

    relevant, excluded: dict user -> set of items. Returns metric@k -> mean over the users of ``relevant``."""
    sums = {}
    num_items = item_emb.shape[0]
    for user, truth in relevant.items():
        candidates = [i for i in range(num_items) if i not in excluded.get(user, set())]
        scores = {i: float(sum(a * b for a, b in zip(user_emb[user].tolist(), item_emb[i].tolist()))) for i in candidates}
        ranking = sorted(candidates, key=lambda i: (-scores[i], i))[: max(ks)]  # ties: lower item first
        hits = [1 if i in truth else 0 for i in ranking]
        for k in ks:
            top = hits[:k]
            found = sum(top)
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(top))
            ideal_count = min(len(truth), k) if ndcg == "mmrec" else min(sum(hits), k)
            idcg = sum(1 / math.log2(j + 2) for j in range(ideal_count))
            precisions = [sum(top[: j + 1]) / (j + 1) for j in range(len(top))]
            values = {
                "recall": found / len(truth),
                "precision": found / k,
                "ndcg": dcg / idcg if idcg > 0 else 0.0,
                "map": sum(p for p, h in zip(precisions, top) if h) / min(k, len(truth)),
            }
            for name, value in values.items():
                sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + value
    return {name: total / len(relevant) for name, total in sums.items()}


def as_sets(interactions: Interactions) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in zip(interactions.users.tolist(), interactions.items.tolist()):
        out.setdefault(u, set()).add(i)
    return out


def toy_dataset(num_users=23, num_items=17, seed=0) -> Dataset:
    """Random splits, with some users absent from test, a repeated test pair, and a user whose training items
    leave fewer than max(KS) candidates."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(num_users * num_items, generator=g)[: num_users * num_items // 3]
    users, items = keys // num_items, keys % num_items
    labels = torch.randint(0, 3, (keys.numel(),), generator=g)
    labels[users == 5] = 0  # user 5: no valid or test items -> not evaluated
    full = torch.arange(num_items)
    users = torch.cat([users, torch.full((num_items - 3,), 7), torch.tensor([7, 7, 8, 8])])
    items = torch.cat([items, full[3:], torch.tensor([0, 0, 1, 1])])  # user 7 has 3 candidates left
    labels = torch.cat([labels, torch.zeros(num_items - 3, dtype=torch.int64), torch.tensor([2, 2, 2, 2])])
    split = [Interactions(users[labels == c], items[labels == c]) for c in range(3)]
    return Dataset("toy", num_users, num_items, *split)


@pytest.mark.parametrize("ndcg", ["mmrec", "ngcf"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_metrics_match_the_per_user_computation(ndcg, split):
    dataset = toy_dataset()
    g = torch.Generator().manual_seed(1)
    # small integers: many exact score ties, which must go to the lower item index
    user_emb = torch.randint(-2, 3, (dataset.num_users, 4), generator=g).double()
    item_emb = torch.randint(-2, 3, (dataset.num_items, 4), generator=g).double()
    got = evaluate((user_emb, item_emb), dataset, split, ks=KS, ndcg=ndcg, batch_size=4)  # several user batches
    want = per_user_metrics(user_emb, item_emb, as_sets(dataset.split(split)), as_sets(dataset.train), KS, ndcg)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), name


def test_valid_items_are_not_excluded_at_test_time_unless_asked():
    dataset = toy_dataset()
    user_emb = torch.randn(dataset.num_users, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    item_emb = torch.randn(dataset.num_items, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    default = evaluate((user_emb, item_emb), dataset, "test", ks=KS)
    both = evaluate((user_emb, item_emb), dataset, "test", ks=KS, exclude=("train", "valid"))
    excluded = as_sets(dataset.train)
    assert default == pytest.approx(per_user_metrics(user_emb, item_emb, as_sets(dataset.test), excluded, KS, "mmrec"))
    for user, items in as_sets(dataset.valid).items():
        excluded.setdefault(user, set()).update(items)
    assert both == pytest.approx(per_user_metrics(user_emb, item_emb, as_sets(dataset.test), excluded, KS, "mmrec"))
    assert default != both


class Fixed(Recommender):
    """A model with given embeddings (and a parameter, so it has a training mode to keep)."""

    name = "fixed"

    def __init__(self, dataset, user_emb, item_emb):
        super().__init__(dataset)
        self.user_emb, self.item_emb = torch.nn.Parameter(user_emb), torch.nn.Parameter(item_emb)

    def embeddings(self):
        return self.user_emb.detach(), self.item_emb.detach()


def test_every_model_form_agrees_and_the_training_mode_is_kept():
    dataset = toy_dataset(seed=4)
    g = torch.Generator().manual_seed(5)
    user_emb, item_emb = torch.randint(-1, 2, (dataset.num_users, 3), generator=g).float(), torch.randint(-1, 2, (dataset.num_items, 3), generator=g).float()
    model = Fixed(dataset, user_emb, item_emb)
    seen_modes = []

    def scores(users):  # an MMRec-style full_sort_predict
        seen_modes.append(model.training)
        return user_emb[users] @ item_emb.T

    by_model = evaluate(model, dataset, ks=KS)
    assert model.training  # evaluated in eval mode, then put back
    assert by_model == evaluate(scores, dataset, ks=KS) == evaluate((user_emb, item_emb), dataset, ks=KS)
    assert by_model == evaluate(model.full_sort_predict, dataset, ks=KS)
    model.eval()
    evaluate(model, dataset, ks=KS)
    assert not model.training
    with pytest.raises(TypeError, match="must be a mmrec_fast.models.Recommender, a pair"):
        evaluate(object(), dataset, ks=KS)
    with pytest.raises(ValueError, match=r"the score function gave shape \(3,\)"):
        evaluate(lambda users: torch.zeros(3), dataset, ks=KS)


def test_popularity_ranker():
    dataset = toy_dataset(seed=6)
    counts = torch.bincount(dataset.train.items, minlength=dataset.num_items).double()
    want = per_user_metrics(torch.ones(dataset.num_users, 1), counts.unsqueeze(1), as_sets(dataset.test), as_sets(dataset.train), KS, "mmrec")
    assert evaluate(Popularity(dataset), dataset, ks=KS) == pytest.approx(want, rel=1e-12)


def test_rank_metrics_by_hand():
    hits = torch.tensor([[True, False, True, False], [False, False, False, False], [False, True, False, False]])
    relevant = torch.tensor([3, 2, 1])
    out = rank_metrics(hits, relevant, ks=(2, 4))
    assert out["recall@2"].tolist() == pytest.approx([1 / 3, 0, 1])
    assert out["precision@4"].tolist() == pytest.approx([0.5, 0, 0.25])
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert out["ndcg@4"].tolist() == pytest.approx([(1 + 1 / math.log2(4)) / idcg3, 0, 1 / math.log2(3)])
    assert out["map@4"].tolist() == pytest.approx([(1 + 2 / 3) / 3, 0, 0.5])
    ngcf = rank_metrics(hits, relevant, ks=(2, 4), ndcg="ngcf")
    assert ngcf["ndcg@2"].tolist() == pytest.approx([1 / (1 + 1 / math.log2(3)), 0, 1 / math.log2(3)])  # ideal = 2 hits found in top 4


def test_bad_arguments():
    dataset = toy_dataset()
    pair = (torch.randn(dataset.num_users, 2), torch.randn(dataset.num_items, 2))
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate(pair, dataset, "dev")
    with pytest.raises(ValueError, match="metrics must be among"):
        evaluate(pair, dataset, metrics=("hit",))
    with pytest.raises(ValueError, match="ndcg must be one of"):
        evaluate(pair, dataset, ndcg="other")
    with pytest.raises(ValueError, match="max\\(ks\\) = 50 is larger than the number of items \\(17\\)"):
        evaluate(pair, dataset)
    with pytest.raises(ValueError, match="ks must be positive integers"):
        evaluate(pair, dataset, ks=(0, 5))
    with pytest.raises(ValueError, match="12 item embeddings for 17 items"):
        ranking_metrics((pair[0], pair[1][:12]), dataset.test, dataset.num_items, ks=(5,))
