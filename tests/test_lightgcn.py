"""LightGCN: the math against a plain-PyTorch LightGCN (MMRec's torch.sparse.mm loop), the same math on every
backend, MMRec's protocol options (Xavier init, EmbLoss), and a short training run that must beat the popularity
ranker."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmrec_fast.data import BPRSampler, synthetic
from mmrec_fast.evaluate import evaluate
from mmrec_fast.models import MODELS, ConfigError, LightGCN, Popularity, build
from mmrec_fast.train import TrainConfig, Trainer, seed_everything

from conftest import kernel_backends
from parity import assert_matches


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=120, num_items=80, num_interactions=1500, feature_dims={}, seed=7)


def plain_lightgcn(dataset, embedding: torch.Tensor, num_layers: int = 3):
    """MMRec's LightGCN.forward: D^-1/2 A D^-1/2 as a torch sparse tensor, one torch.sparse.mm per layer, mean."""
    users, items = dataset.train.unique_pairs(dataset.num_items).users, dataset.train.unique_pairs(dataset.num_items).items
    n = dataset.num_users + dataset.num_items
    row = torch.cat([users, items + dataset.num_users])
    col = torch.cat([items + dataset.num_users, users])
    degree = torch.bincount(row, minlength=n).to(embedding.dtype)
    scale = degree.pow(-0.5).masked_fill(degree == 0, 0)
    adjacency = torch.sparse_coo_tensor(torch.stack([row, col]), scale[row] * scale[col], (n, n))
    layers = [embedding]
    for _ in range(num_layers):
        layers.append(torch.sparse.mm(adjacency, layers[-1]))
    out = torch.stack(layers, dim=1).mean(dim=1)
    return out[: dataset.num_users], out[dataset.num_users :]


@pytest.mark.parametrize("backend", ["reference"] + kernel_backends("cpu"))
def test_forward_and_loss_match_plain_pytorch(dataset, backend):
    torch.manual_seed(0)
    model = LightGCN(dataset, dim=8, backend=backend).double()
    users, items = model.forward()
    want_users, want_items = plain_lightgcn(dataset, model.embedding.detach())
    torch.testing.assert_close(users, want_users, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(items, want_items, rtol=1e-12, atol=1e-14)
    batch = next(BPRSampler(dataset.train, dataset.num_users, dataset.num_items, 64, seed=1).epoch(0))
    u, p, n = want_users[batch[0]], want_items[batch[1]], want_items[batch[2]]
    ego = model.embedding.detach()
    l2 = (ego[batch[0]].square().sum() + ego[dataset.num_users + batch[1]].square().sum()
          + ego[dataset.num_users + batch[2]].square().sum()) / (2 * 64)  # fmt: skip
    want = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean() + 1e-4 * l2
    torch.testing.assert_close(model.calculate_loss(batch), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(model.full_sort_predict(batch[0][:5]), u[:5] @ want_items.T)
    torch.testing.assert_close(model.full_sort_predict([batch[0][:5], None]), u[:5] @ want_items.T)  # MMRec's list


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
def test_same_loss_and_gradients_on_every_backend(dataset, backend):
    """The float32 loss and embedding gradient of each backend against the float64 reference on the same initial
    embeddings, to parity.py's float32 tolerance (K: the propagation's (max degree + 1) x layers sums of d-term
    dot products)."""
    batch = next(BPRSampler(dataset.train, dataset.num_users, dataset.num_items, 256, seed=2).epoch(0))

    def loss_and_grad(name, dtype):
        torch.manual_seed(1)
        model = LightGCN(dataset, backend=name).to(dtype)
        loss = model.calculate_loss(batch)
        loss.backward()
        return loss.detach(), model.embedding.grad

    gold_loss, gold_grad = loss_and_grad("reference", torch.float64)
    loss, grad = loss_and_grad(backend, torch.float32)
    graph = dataset.train_graph
    degree = int((graph.rowptr[1:] - graph.rowptr[:-1]).max())
    k = (degree + 1) * LightGCN.Config().num_layers * LightGCN.Config().dim
    assert_matches(loss, gold_loss.float(), torch.float32, k, f"{backend} loss")
    size = gold_grad.abs().max()  # gradients are << 1: compare them relative to their own scale, not to max(1, .)
    assert_matches(grad / size.float(), (gold_grad / size).float(), torch.float32, k, f"{backend} embedding gradient")


def test_mmrec_protocol_options(dataset):
    torch.manual_seed(3)
    model = LightGCN(dataset, dim=8, init="xavier", l2="norms").double()
    users, items = model.embedding.detach()[: dataset.num_users], model.embedding.detach()[dataset.num_users :]
    # Xavier-uniform per table: U(-b, b), b = sqrt(6 / (rows + d)); the draws fill the range
    for table in (users, items):
        bound = (6 / (table.shape[0] + 8)) ** 0.5
        assert table.abs().max() <= bound and table.abs().max() > 0.9 * bound
        assert abs(table.std().item() - bound / 3**0.5) < 0.15 * bound
    batch = next(BPRSampler(dataset.train, dataset.num_users, dataset.num_items, 64, seed=1).epoch(0))
    ego = model.embedding.detach()
    emb_loss = (ego[batch[0]].norm() + ego[dataset.num_users + batch[1]].norm() + ego[dataset.num_users + batch[2]].norm()) / 64
    torch.testing.assert_close(model.losses(batch)["l2"], 1e-4 * emb_loss, rtol=1e-12, atol=0)


def test_bad_configuration():
    dataset = synthetic("small", num_users=30, num_items=40, num_interactions=300, feature_dims={}, seed=1)
    with pytest.raises(ConfigError, match="dim must be >= 1, got 0"):
        LightGCN(dataset, dim=0)
    with pytest.raises(ConfigError, match="init must be one of 'normal', 'xavier'; got 'kaiming'"):
        LightGCN(dataset, init="kaiming")
    with pytest.raises(ConfigError, match="has no hyperparameter 'layers'"):
        LightGCN(dataset, layers=2)
    with pytest.raises(ValueError, match=f"unknown model 'ngcf'; available: {', '.join(sorted(MODELS))}"):
        build("ngcf", dataset)


def test_short_training_beats_popularity():
    dataset = synthetic("small", num_users=1000, num_items=500, num_interactions=12_000, feature_dims={}, seed=0)
    popularity = evaluate(Popularity(dataset), dataset, "test", ks=(20,), metrics=("recall", "ndcg"))
    seed_everything(0)
    config = TrainConfig(epochs=12, lr=1e-2, batch_size=1024, ks=(20,), metrics=("recall", "ndcg"), eval_every=4,
                         progress=False, verbose=False)  # fmt: skip
    record = Trainer(LightGCN(dataset), dataset, config).fit()
    assert record["epochs"][-1]["loss"] < 0.5 * record["epochs"][0]["loss"]
    # measured: recall@20 0.40 vs 0.22 for popularity (seed 0)
    assert record["test"]["recall@20"] > 1.4 * popularity["recall@20"], (record["test"], popularity)
    assert record["test"]["ndcg@20"] > 1.4 * popularity["ndcg@20"], (record["test"], popularity)
