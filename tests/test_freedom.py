"""FREEDOM: the math against the authors' formulation written out in plain PyTorch (scipy's D^-1/2 A D^-1/2 with
1e-7, the dense cosine matrix + topk kNN graph, their pruning and renormalisation, torch.sparse.mm layers), native
against reference on every loss term and parameter gradient in float64, the pruned graph (edge count,
renormalisation, a new draw each epoch), the modality rule, frozen and trainable features, training, and the
command line with exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import mmrec_fast
from mmrec_fast.data import BPRSampler, synthetic
from mmrec_fast.models import FREEDOM
from mmrec_fast.models.item_graph import modality_weights
from mmrec_fast.train import TrainConfig, Trainer, seed_everything

from conftest import kernel_backends

FEATURES = {"image": 12, "text": 9, "audio": 6}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These small models run fastest on one thread, and a loaded machine makes an OpenMP team of two wait at every
    barrier; the kernels' multi-threaded results are tested with the ops (and in test_models.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims=FEATURES, seed=7)


def batch_of(dataset, size=48, seed=0):
    return next(BPRSampler(dataset.train, dataset.num_users, dataset.num_items, size, seed=seed).epoch(0))


# -- the authors' formulation, written out ------------------------------------------------------------------------
def authors_norm_adj(dataset, dtype):
    """get_norm_adj_mat: the (U + I)^2 matrix of the (binary) interactions, (A > 0) row sums + 1e-7, D^-1/2 A D^-1/2."""
    U, I = dataset.num_users, dataset.num_items
    r = sp.coo_matrix((np.ones(len(dataset.train)), (dataset.train.users.numpy(), dataset.train.items.numpy())), shape=(U, I))
    r = (r.tocsr() > 0).astype(np.float64)
    a = sp.bmat([[None, r], [r.T, None]]).tocsr()
    d = np.power(np.asarray((a > 0).sum(axis=1)).ravel() + 1e-7, -0.5)
    return _torch_sparse((sp.diags(d) @ a @ sp.diags(d)).tocoo(), dtype)


def _torch_sparse(coo, dtype):
    return torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, coo.shape, dtype=dtype).coalesce()


def authors_knn_adj(features, k):
    """get_knn_adj_mat + compute_normalized_laplacian: dense cosine, topk, every edge (row_sum + 1e-7)^-1/2 twice."""
    norm = features / features.norm(p=2, dim=-1, keepdim=True)
    _, knn = torch.topk(norm @ norm.T, k, dim=-1)
    rows = torch.arange(len(features)).unsqueeze(1).expand(-1, k).flatten()
    indices = torch.stack([rows, knn.flatten()])
    row_sum = torch.zeros(len(features), dtype=torch.float64).index_add_(0, indices[0], torch.ones(indices.shape[1], dtype=torch.float64)) + 1e-7
    values = row_sum.pow(-0.5)[indices[0]] * row_sum.pow(-0.5)[indices[1]]
    return torch.sparse_coo_tensor(indices, values, (len(features), len(features)))


def authors_mm_adj(dataset, modalities, k=10, image_weight=0.1):
    """image and text: mm_image_weight * image_adj + (1 - mm_image_weight) * text_adj (one: that one alone)."""
    adjs = {m: authors_knn_adj(dataset.features[m].double(), k) for m in modalities}
    if len(adjs) == 1:
        return next(iter(adjs.values())).coalesce()
    return (image_weight * adjs["image"] + (1.0 - image_weight) * adjs["text"]).coalesce()


def authors_pruned_adj(dataset, kept):
    """pre_epoch_processing with the kept edges (indices into the sorted distinct pairs): _normalize_adj_m of the
    kept (user, item) edges, both directions."""
    pairs = dataset.train.unique_pairs(dataset.num_items)
    U, I = dataset.num_users, dataset.num_items
    users, items = pairs.users[kept], pairs.items[kept]
    row_sum = torch.bincount(users, minlength=U).double() + 1e-7
    col_sum = torch.bincount(items, minlength=I).double() + 1e-7
    values = row_sum.pow(-0.5)[users] * col_sum.pow(-0.5)[items]
    indices = torch.stack([torch.cat([users, items + U]), torch.cat([items + U, users])])
    return torch.sparse_coo_tensor(indices, torch.cat([values, values]), (U + I, U + I)).coalesce()


def authors_edge_values(dataset):
    """get_edge_info: (deg_u + 1e-7)^-1/2 (deg_i + 1e-7)^-1/2 of every edge of the interaction matrix."""
    pairs = dataset.train.unique_pairs(dataset.num_items)
    row_sum = torch.bincount(pairs.users, minlength=dataset.num_users).double() + 1e-7
    col_sum = torch.bincount(pairs.items, minlength=dataset.num_items).double() + 1e-7
    return row_sum.pow(-0.5)[pairs.users] * col_sum.pow(-0.5)[pairs.items]


def authors_losses(model, dataset, batch, adj, mm_adj):
    """calculate_loss: (bpr, {modality: modality bpr}) with forward(adj), projections of every item, then gathers."""
    c, U = model.config, dataset.num_users
    h = model.item_embedding
    for _ in range(c.num_item_layers):
        h = torch.sparse.mm(mm_adj, h)
    ego = torch.cat([model.user_embedding, model.item_embedding])
    layers = [ego]
    for _ in range(c.num_layers):
        ego = torch.sparse.mm(adj, ego)
        layers.append(ego)
    out = torch.stack(layers, dim=1).mean(dim=1)
    ua, ia = out[:U], out[U:] + h
    users, pos, neg = batch

    def bpr(u, p, n):
        return -torch.mean(F.logsigmoid((u * p).sum(1) - (u * n).sum(1)))

    main = bpr(ua[users], ia[pos], ia[neg])
    modal = {}
    for m in model.modalities:
        feats = model.project[m](model.item_features(m))  # text_trs(text_embedding.weight): all I items
        modal[m] = bpr(ua[users], feats[pos], feats[neg])
    return main, modal


@pytest.mark.parametrize("modalities", [("image", "text"), ("text",), ("image",)])
def test_losses_match_the_authors_formulation(dataset, modalities):
    seed_everything(0)
    model = FREEDOM(dataset, modalities=modalities, backend="reference").double()
    mm_adj = authors_mm_adj(dataset, modalities)
    torch.testing.assert_close(model.item_graph.to_torch(torch.float64).to_dense(), mm_adj.to_dense(), rtol=1e-12, atol=0)
    torch.testing.assert_close(model.graph.to_torch(torch.float64).to_dense(), authors_norm_adj(dataset, torch.float64).to_dense(),
                               rtol=1e-12, atol=0)  # fmt: skip
    batch = batch_of(dataset)
    # the full graph (dropout 0, or before the first pre_epoch), then a pruned one
    for pruned in (False, True):
        if pruned:
            torch.manual_seed(3)
            model.pre_epoch(0)
            torch.manual_seed(3)
            kept = torch.multinomial(model.edge_weights, model.kept_edge_count(), replacement=False)
            adj = authors_pruned_adj(dataset, kept)
        else:
            adj = authors_norm_adj(dataset, torch.float64)
        terms = model.losses(batch)
        main, modal = authors_losses(model, dataset, batch, adj, mm_adj)
        torch.testing.assert_close(terms["bpr"], main, rtol=1e-12, atol=0)
        assert set(terms) == {"bpr"} | {f"bpr_{m}" for m in modalities}
        for m in modalities:
            torch.testing.assert_close(terms[f"bpr_{m}"], model.config.reg_weight * modal[m], rtol=1e-12, atol=0)
    # ranking: a fresh forward pass over the full graph
    users, items = model.embeddings()
    main_adj = authors_norm_adj(dataset, torch.float64)
    ego = torch.cat([model.user_embedding, model.item_embedding])
    out = torch.stack([ego, torch.sparse.mm(main_adj, ego), torch.sparse.mm(main_adj, torch.sparse.mm(main_adj, ego))]).mean(0)
    torch.testing.assert_close(items, (out[dataset.num_users:] + torch.sparse.mm(mm_adj, model.item_embedding)).detach())
    torch.testing.assert_close(users, out[: dataset.num_users].detach())


def test_the_sampling_weights_are_the_authors_edge_values(dataset):
    model = FREEDOM(dataset)
    torch.testing.assert_close(model.edge_weights.double(), authors_edge_values(dataset), rtol=1e-7, atol=0)
    assert model.edge_weights.dtype == torch.float32  # the authors' float32 values


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("modalities,freeze", [(None, False), (("image", "audio"), True), (("text",), False)])
def test_every_term_and_gradient_match_reference_in_float64(dataset, backend, modalities, freeze):
    batch = batch_of(dataset, seed=3)
    results = {}
    for name in ("reference", backend):
        torch.manual_seed(1)
        model = FREEDOM(dataset, modalities=modalities, freeze_features=freeze, reg_weight=0.1, backend=name).double()
        torch.manual_seed(2)
        model.pre_epoch(0)  # the same pruned graph for both
        terms = model.losses(batch)
        sum(terms.values()).backward()
        results[name] = ({k: v.detach() for k, v in terms.items()}, {k: p.grad for k, p in model.named_parameters()})
    (ref_terms, ref_grads), (terms, grads) = results["reference"], results[backend]
    assert ref_terms.keys() == terms.keys()
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-9, atol=0)
    assert ref_grads.keys() == grads.keys() and any(k.startswith("features.") for k in grads) != freeze
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, gold in ref_grads.items():
        assert gold is not None and grads[name] is not None, name
        torch.testing.assert_close(grads[name], gold, rtol=1e-9, atol=1e-12 * scale, msg=name)


def test_the_pruned_graph_keeps_the_documented_edges_renormalised(dataset):
    model = FREEDOM(dataset, dropout=0.8)
    num_edges = len(dataset.train.unique_pairs(dataset.num_items))
    assert model.num_edges == num_edges and model.kept_edge_count() == int(num_edges * (1.0 - 0.8))
    assert model.pruned_graph is model.graph  # before the first pre_epoch
    torch.manual_seed(0)
    model.pre_epoch(0)
    first = model.pruned_graph
    kept = model.kept_edge_count()
    assert first.nnz == 2 * kept and first.symmetric
    # renormalised with the kept edges' own degrees (+ 1e-7): D^-1/2 A_p D^-1/2
    matrix = first.to_scipy()
    pattern = (matrix > 0).astype(np.float64)
    degree = np.asarray(pattern.sum(axis=1)).ravel()
    scale = sp.diags(np.power(degree + 1e-7, -0.5))
    assert abs(matrix - scale @ pattern @ scale).max() < 1e-15
    # the kept edges are training pairs, in both directions
    U = dataset.num_users
    rows, cols = pattern.nonzero()
    user_side = rows < U
    keys = set((rows[user_side] * dataset.num_items + cols[user_side] - U).tolist())
    assert keys <= set(dataset.train.pair_keys(dataset.num_items).tolist()) and len(keys) == kept
    # a new draw each epoch; none with dropout 0; the authors' floor: 10 edges at 0.8 keep 1 (1 - 0.8 < 0.2)
    model.pre_epoch(1)
    assert (model.pruned_graph.to_scipy() != matrix).nnz > 0
    unpruned = FREEDOM(dataset, dropout=0.0)
    unpruned.pre_epoch(0)
    assert unpruned.pruned_graph is unpruned.graph
    model.num_edges = 10
    assert model.kept_edge_count() == 1


def test_pruning_favours_edges_between_low_degree_nodes(dataset):
    model = FREEDOM(dataset, dropout=0.8)
    torch.manual_seed(0)
    counts = torch.zeros(model.num_edges)
    for epoch in range(200):
        kept = torch.multinomial(model.edge_weights, model.kept_edge_count(), replacement=False)
        counts[kept] += 1
    low, high = model.edge_weights > model.edge_weights.median(), model.edge_weights < model.edge_weights.median()
    assert counts[low].mean() > 1.3 * counts[high].mean()


def test_modality_weights_rule():
    assert modality_weights(("image", "text"), 0.1) == [0.1, 0.9]
    assert modality_weights(("image", "audio"), 0.1) == [0.1, 0.9]
    assert modality_weights(("text",), 0.1) == [1.0] and modality_weights(("image",), 0.1) == [1.0]
    assert modality_weights(("text", "audio"), 0.1) == [0.5, 0.5]
    assert modality_weights(("image", "text", "audio"), 0.2) == pytest.approx([0.2, 0.4, 0.4])


def test_modalities_and_their_item_graph(dataset):
    tiktok_like = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={"image": 5, "audio": 4}, seed=1)
    model = FREEDOM(tiktok_like)
    assert model.modalities == ("image", "audio") and set(model.project) == {"image", "audio"}
    expected = mmrec_fast.knn_graph([tiktok_like.features["image"], tiktok_like.features["audio"]], 10, weights=[0.1, 0.9])
    assert abs(model.item_graph.to_scipy() - expected.to_scipy()).max() == 0
    assert FREEDOM(dataset).modalities == ("image", "text", "audio")
    with pytest.raises(ValueError, match="modality 'text' requested, but dataset 'synthetic-small' has image"):
        FREEDOM(tiktok_like, modalities=("text",))
    bare = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={}, seed=1)
    with pytest.raises(ValueError, match="FREEDOM needs item features of at least one of image, text, audio"):
        FREEDOM(bare)


def test_features_are_trained_unless_frozen(dataset):
    seed_everything(0)
    trained = FREEDOM(dataset, reg_weight=1.0)
    assert isinstance(trained.features["image"], torch.nn.Parameter) and "features.image" in trained.state_dict()
    before = trained.features["image"].detach().clone()
    optimizers = trained.optimizers(TrainConfig.for_model(FREEDOM))
    trained.training_step(batch_of(dataset), optimizers)
    assert not torch.equal(before, trained.features["image"])
    frozen = FREEDOM(dataset, freeze_features=True)
    assert not any(name.startswith("features") or name.endswith("_features") for name in frozen.state_dict())
    assert torch.equal(frozen.item_features("image"), dataset.features["image"])
    assert not frozen.item_features("image").requires_grad


def test_a_few_epochs_reduce_the_loss(dataset):
    seed_everything(0)
    model = FREEDOM(dataset)
    config = TrainConfig.for_model(FREEDOM, lr=0.01, batch_size=64, epochs=5, ks=(5, 10, 20), progress=False, verbose=False)
    record = Trainer(model, dataset, config).fit()
    first, last = record["epochs"][0]["losses"], record["epochs"][-1]["losses"]
    assert last["bpr"] < 0.9 * first["bpr"], (first, last)
    assert FREEDOM.train_defaults()["seed"] == 999 and config.negatives == "train_items"


def test_train_through_the_cli_with_exact_resume(tmp_path, capsys):
    from mmrec_fast.cli import main

    def run(out, epochs, *extra):
        args = ["train", "--model", "freedom", "--synthetic", "small", "--data-seed", "2", "--out", str(out), "--epochs",
                str(epochs), "--no-progress", "--threads", "1", "--batch-size", "512", "--set", "dim=16", "--set", "dropout=0.9", *extra]
        assert main(args) == 0
        return json.loads((out / "run.json").read_text())

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)
    resumed = run(tmp_path / "resumed", 2, "--resume", str(tmp_path / "resumed" / "last.pt"))
    assert resumed["resumed_from"].endswith("last.pt")
    # the epoch-1 losses match only if the resumed run drew the same pruned graph (torch's RNG, restored)
    assert [e["losses"] for e in resumed["epochs"]] == [e["losses"] for e in straight["epochs"]]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in straight["epochs"]]
    assert resumed["test"] == straight["test"]
    assert straight["model"]["modalities"] == ["image", "text"] and straight["config"]["seed"] == 999
    assert straight["config"]["valid_metric"] == "recall@20" and straight["config"]["negatives"] == "train_items"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "straight" / "best.pt")]) == 0
    assert f"{straight['test']['recall@20']:.4f}" in capsys.readouterr().out
