"""SLMRec: the math against the authors' formulation written out in plain PyTorch (one torch.sparse.mm loop per
branch, CrossEntropyLoss over in-batch logits, the FAC heads by their original names), native against reference
on every loss term and parameter gradient in float64, each ssl task and each modality subset, the cached scoring,
training, and the command line with exact resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmrec_fast.data import PairSampler, synthetic
from mmrec_fast.models import SLMRec
from mmrec_fast.train import TrainConfig, Trainer, seed_everything

from conftest import kernel_backends

FEATURES = {"image": 12, "audio": 6, "text": 9}


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims=FEATURES, seed=11)


def batch_of(dataset, size=48, seed=0):
    return next(PairSampler(dataset.train, dataset.num_users, dataset.num_items, size, seed=seed).epoch(0))


# -- the authors' formulation, written out ------------------------------------------------------------------------
def authors_graph(dataset, dtype, eps=0.0):
    """D^-1/2 A D^-1/2 of the distinct training pairs as a torch sparse COO tensor (the authors' create_adj_mat,
    adj_type 'pre': rowsum^-1/2 with inf -> 0; MMRec: (rowsum + eps)^-1/2)."""
    pairs = dataset.train.unique_pairs(dataset.num_items)
    n = dataset.num_users + dataset.num_items
    row = torch.cat([pairs.users, pairs.items + dataset.num_users])
    col = torch.cat([pairs.items + dataset.num_users, pairs.users])
    degree = torch.bincount(row, minlength=n).to(dtype) + eps
    scale = degree.pow(-0.5).masked_fill(degree == 0, 0)
    return torch.sparse_coo_tensor(torch.stack([row, col]), scale[row] * scale[col], (n, n)).coalesce()


def authors_branches(model, dataset, graph):
    """The authors' compute(): [ID, visual, (acoustic,) textual] outputs of compute_graph, each (U + I, d)."""
    def compute_graph(u_emb, i_emb):
        all_emb = torch.cat([u_emb, i_emb])
        embs = [all_emb]
        for _ in range(model.config.num_layers):
            all_emb = torch.sparse.mm(graph, all_emb)
            embs.append(all_emb)
        return torch.stack(embs, dim=1).mean(dim=1)

    items = [model.item_embedding]
    for modality in model.modalities:
        dense = model.project[modality]
        items.append(dense(F.normalize(dataset.features[modality], dim=1).to(model.item_embedding.dtype)))  # float32 as theirs
    return [compute_graph(model.user_embedding, x) for x in items]


def cross_entropy_infonce(a, b, temperature):
    return F.cross_entropy(a @ b.T / temperature, torch.arange(a.shape[0]))


def authors_losses(model, dataset, batch, masked=None):
    """(main InfoNCE, ssl loss) as the authors' code computes them (FAC by the heads' original names)."""
    c, U = model.config, dataset.num_users
    graph = authors_graph(dataset, model.item_embedding.dtype, c.degree_eps)
    outs = authors_branches(model, dataset, graph)
    user = model.user_fusion(torch.cat([o[:U] for o in outs], 1))
    item = model.item_fusion(torch.cat([o[U:] for o in outs], 1))
    users, items = batch[0], batch[1]
    main = cross_entropy_infonce(F.normalize(user[users]), F.normalize(item[items]), c.temperature)
    if c.ssl_task == "fac":
        emb = dict(zip(("id",) + model.modalities, [o[U:] for o in outs]))
        g_i_iv, g_iv_iva, g_iva_ivat = list(model.fac_id_heads) + [None] * (3 - len(model.fac_id_heads))
        heads = model.fac_modality_heads
        x_i_iv = g_i_iv(emb["id"][items])
        ssl = torch.zeros((), dtype=main.dtype)
        if "image" in emb:
            ssl = ssl + cross_entropy_infonce(x_i_iv, heads["image"](emb["image"][items]), c.ssl_temp)
        if g_iv_iva is not None:
            x_iv_iva = g_iv_iva(x_i_iv)
            if "audio" in emb:
                ssl = ssl + cross_entropy_infonce(x_iv_iva, heads["audio"](emb["audio"][items]), c.ssl_temp)
            if g_iva_ivat is not None:
                x_iva_ivat = g_iva_ivat(x_iv_iva)
                ssl = ssl + cross_entropy_infonce(x_iva_ivat, heads["text"](emb["text"][items]), c.ssl_temp)
        return main, ssl
    # fd with dropout 0 / fm: two views, each branch propagated again, the masked branch's items zeroed
    views = []
    for view in range(2):
        items_in = [model.item_embedding] + [model.project[m](F.normalize(dataset.features[m], dim=1).to(main.dtype))
                                             for m in model.modalities]  # fmt: skip
        if masked is not None:
            items_in[masked[view]] = torch.zeros_like(items_in[masked[view]])
        outs = []
        for x in items_in:
            all_emb = torch.cat([model.user_embedding, x])
            embs = [all_emb]
            for _ in range(c.num_layers):
                all_emb = torch.sparse.mm(graph, all_emb)
                embs.append(all_emb)
            outs.append(torch.stack(embs, 1).mean(1))
        views.append((model.user_fusion(torch.cat([o[:U] for o in outs], 1))[users],
                      model.item_fusion(torch.cat([o[U:] for o in outs], 1))[items]))  # fmt: skip
    (u1, i1), (u2, i2) = views
    ssl = cross_entropy_infonce(F.normalize(u1), F.normalize(u2), c.ssl_temp)
    ssl = ssl + cross_entropy_infonce(F.normalize(i1), F.normalize(i2), c.ssl_temp)
    return main, ssl


@pytest.mark.parametrize("modalities", [("image", "audio", "text"), ("image", "text"), ("audio",), ("image",)])
@pytest.mark.parametrize("ssl_task", ["fac", "fd", "fm"])
def test_losses_match_the_authors_formulation(dataset, modalities, ssl_task):
    torch.manual_seed(0)
    model = SLMRec(dataset, modalities=modalities, ssl_task=ssl_task, dropout=0.0, backend="reference").double()
    batch = batch_of(dataset)
    masked = None
    if ssl_task == "fm":
        torch.manual_seed(5)
        masked = model.masked_branches()
        torch.manual_seed(5)
    terms = model.losses(batch)
    main, ssl = authors_losses(model, dataset, batch, masked)
    torch.testing.assert_close(terms["infonce"], main, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["ssl"], model.config.ssl_alpha * ssl, rtol=1e-12, atol=0)
    assert ssl > 0 and model.modalities == modalities


def test_fac_heads_follow_the_modalities(dataset):
    # the original (image, audio, text): three id-side heads 64 -> 64 -> 64 -> 32 and one head per modality
    full = SLMRec(dataset)
    assert [tuple(h.weight.shape) for h in full.fac_id_heads] == [(64, 64), (64, 64), (32, 64)]
    assert {m: tuple(h.weight.shape) for m, h in full.fac_modality_heads.items()} == {
        "image": (64, 64), "audio": (64, 64), "text": (32, 64)}  # fmt: skip
    # MMRec's port (image, text): the text level still goes through the audio level's id-side head
    port = SLMRec(dataset, modalities=("image", "text"))
    assert len(port.fac_id_heads) == 3 and set(port.fac_modality_heads) == {"image", "text"}
    assert len(SLMRec(dataset, modalities=("image", "audio")).fac_id_heads) == 2
    assert port.user_fusion.in_features == 3 * 64 and full.user_fusion.in_features == 4 * 64
    assert SLMRec(dataset, fusion="mean").user_fusion.in_features == 64


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("ssl_task,modalities", [("fac", None), ("fac", ("audio",)), ("fd", None), ("fm", ("image", "text")),
                                                 ("fd+fm", None)])  # fmt: skip
def test_every_term_and_gradient_match_reference_in_float64(dataset, backend, ssl_task, modalities):
    batch = batch_of(dataset, seed=3)
    results = {}
    for name in ("reference", backend):
        torch.manual_seed(1)
        model = SLMRec(dataset, ssl_task=ssl_task, modalities=modalities, backend=name).double()
        torch.manual_seed(2)  # dropout masks and the masked branches drawn identically
        terms = model.losses(batch)
        sum(terms.values()).backward()
        results[name] = ({k: v.detach() for k, v in terms.items()}, {k: p.grad for k, p in model.named_parameters()})
    (ref_terms, ref_grads), (terms, grads) = results["reference"], results[backend]
    assert ref_terms.keys() == terms.keys() == {"infonce", "ssl"}
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-9, atol=0)
    assert ref_grads.keys() == grads.keys()
    # some gradients are exactly 0 in exact arithmetic (a head's bias shifts a whole row of unnormalised logits), so
    # the absolute floor is relative to the largest gradient of all
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, gold in ref_grads.items():
        assert gold is not None and grads[name] is not None, name
        torch.testing.assert_close(grads[name], gold, rtol=1e-9, atol=1e-12 * scale, msg=name)


def test_dropout_makes_the_fd_views_differ(dataset):
    torch.manual_seed(0)
    model = SLMRec(dataset, ssl_task="fd").double()
    batch = batch_of(dataset)
    torch.manual_seed(1)
    first = model.losses(batch)["ssl"]
    torch.manual_seed(2)
    second = model.losses(batch)["ssl"]
    model.eval()  # no dropout: the two views are one, and the loss is that of identical views
    same = model.losses(batch)["ssl"]
    assert first != second and same < first and same < second


def test_cached_and_fresh_scoring(dataset):
    seed_everything(0)
    model = SLMRec(dataset)
    fresh_before = model.embeddings()  # untrained: no cache yet, so a fresh forward pass
    torch.testing.assert_close(fresh_before, model.forward(), rtol=0, atol=0)
    optimizer = model.optimizers(TrainConfig.for_model(SLMRec))
    model.train()
    values = model.training_step(batch_of(dataset), optimizer)
    assert set(values) == {"infonce", "ssl"}
    cached = model.embeddings()
    # the cache holds the embeddings computed in the step, before the optimizer moved the parameters
    for got, want in zip(cached, fresh_before):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    fresh = SLMRec(dataset, score_on="fresh")
    fresh.load_state_dict(model.state_dict())
    after = fresh.embeddings()
    assert not torch.allclose(after[0], cached[0])
    torch.testing.assert_close(after, model.forward(), rtol=0, atol=0)
    # the cache travels with the state (checkpoints, best-model restore)
    clone = SLMRec(dataset)
    clone.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.embeddings(), cached))
    users = torch.tensor([0, 3, 5])
    torch.testing.assert_close(model.full_sort_predict(users), torch.sigmoid(cached[0][users] @ cached[1].T))
    assert cached[0].shape == (dataset.num_users, 64) and cached[1].shape == (dataset.num_items, 64)


@pytest.mark.parametrize("ssl_task", ["fac", "fd", "fm", "fd+fm"])
def test_a_few_steps_reduce_the_loss(dataset, ssl_task):
    seed_everything(0)
    model = SLMRec(dataset, ssl_task=ssl_task)
    config = TrainConfig.for_model(SLMRec, batch_size=64, epochs=6, ks=(5, 10), progress=False, verbose=False)
    record = Trainer(model, dataset, config).fit()
    first, last = record["epochs"][0]["losses"], record["epochs"][-1]["losses"]
    assert last["infonce"] < 0.95 * first["infonce"], (first, last)
    assert sum(last.values()) < sum(first.values())


def test_modalities_are_checked(dataset):
    no_text = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={"image": 5, "audio": 4}, seed=1)
    assert SLMRec(no_text).modalities == ("image", "audio")
    with pytest.raises(ValueError, match=r"modality 'text' requested, but dataset 'synthetic-small' has image \(5-d\), audio \(4-d\)"):
        SLMRec(no_text, modalities=("image", "text"))
    with pytest.raises(ValueError, match="SLMRec cannot use modality 'video'; it uses image, audio, text"):
        SLMRec(no_text, modalities=("video",))
    bare = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={}, seed=1)
    with pytest.raises(ValueError, match="SLMRec needs item features of at least one of image, audio, text; dataset 'synthetic-small' has none"):
        SLMRec(bare)
    assert SLMRec(dataset, modalities=("text", "image")).modalities == ("image", "text")  # the model's order


def test_train_through_the_cli_with_exact_resume(tmp_path, capsys):
    from mmrec_fast.cli import main

    def run(out, epochs, *extra):
        args = ["train", "--model", "slmrec", "--synthetic", "small", "--data-seed", "2", "--out", str(out), "--epochs",
                str(epochs), "--no-progress", "--batch-size", "512", "--set", "dim=16", "--set", "ssl_task=fd+fm", *extra]
        assert main(args) == 0
        return json.loads((out / "run.json").read_text())

    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 3, "--resume", str(tmp_path / "resumed" / "last.pt"))
    assert resumed["resumed_from"].endswith("last.pt")
    assert [e["losses"] for e in resumed["epochs"]] == [e["losses"] for e in straight["epochs"]]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in straight["epochs"]]
    assert resumed["test"] == straight["test"]
    assert straight["model"]["modalities"] == ["image", "text"] and straight["model"]["config"]["ssl_task"] == "fd+fm"
    assert straight["train_defaults"]["lr"] == 0.01 and straight["config"]["valid_metric"] == "recall@10"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "straight" / "best.pt")]) == 0
    printed = capsys.readouterr().out
    assert f"{straight['test']['recall@20']:.4f}" in printed
