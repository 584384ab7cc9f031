"""MENTOR: the math against the authors' formulation written out in plain PyTorch (each GCN module with PyG's
message passing spelled out, the noise views, the item graph from the dense cosine matrix, the views and every
loss term by their original names), native against reference on every loss term and parameter gradient in
float64, mask_f without and with its gradient, the cached scoring, a memory probe showing that the native path
never holds a U x U or I x I tensor (and that the same probe catches the reference path's), training, and the
command line with exact resume."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from mmrec_fast.data import BPRSampler, synthetic
from mmrec_fast.models import MENTOR
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
    return synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims=FEATURES, seed=13)


def batch_of(dataset, size=48, seed=0):
    return next(BPRSampler(dataset.train, dataset.num_users, dataset.num_items, size, seed=seed).epoch(0))


# -- the authors' formulation, written out ------------------------------------------------------------------------
def authors_mm_adj(dataset, modalities, k=10, image_weight=0.1):
    """get_knn_adj_mat per modality (dense cosine, topk, every edge (row_sum + 1e-7)^-1/2 on both ends), fused
    as mm_image_weight * image + (1 - mm_image_weight) * text; with other modalities the documented rule."""
    from mmrec_fast.models.item_graph import modality_weights

    total = None
    for modality, weight in zip(modalities, modality_weights(modalities, image_weight)):
        x = dataset.features[modality].double()
        norm = x / x.norm(p=2, dim=-1, keepdim=True)
        _, knn = torch.topk(norm @ norm.T, k, dim=-1)
        indices = torch.stack([torch.arange(len(x)).unsqueeze(1).expand(-1, k).flatten(), knn.flatten()])
        row_sum = torch.full((len(x),), k + 1e-7, dtype=torch.float64)
        values = row_sum.pow(-0.5)[indices[0]] * row_sum.pow(-0.5)[indices[1]]
        adj = weight * torch.sparse_coo_tensor(indices, values, (len(x), len(x)))
        total = adj if total is None else total + adj
    return total.coalesce()


def authors_edge_index(dataset):
    """pack_edge_index of the training interactions, then both directions (as given: repeats stay)."""
    users, items = dataset.train.users, dataset.train.items + dataset.num_users
    edge_index = torch.stack([users, items])
    return torch.cat([edge_index, edge_index[[1, 0]]], dim=1)


def authors_conv(x, edge_index):
    """Base_gcn: PyG add-aggregation, x_j = x[edge_index[0]] into edge_index[1], norm = deg^-1/2[row] deg^-1/2[col]
    with deg the count of row = edge_index[0] (no self-loops to remove here, no epsilon)."""
    row, col = edge_index
    deg = torch.zeros(len(x), dtype=x.dtype).index_add_(0, row, torch.ones(len(row), dtype=x.dtype))
    norm = deg.pow(-0.5)[row] * deg.pow(-0.5)[col]
    return torch.zeros_like(x).index_add_(0, col, norm.unsqueeze(1) * x[row])


def authors_gcn(module, features, edge_index, noise=None, scale=0.1):
    """GCN.forward; ``noise``: the two (U + I, d) uniform draws of a noise view (perturbed=True)."""
    temp_features = module.mlp_1(F.leaky_relu(module.mlp(features)))
    x = F.normalize(torch.cat((module.preference, temp_features), dim=0))
    h = authors_conv(x, edge_index)
    if noise is not None:
        h = h + torch.sign(h) * F.normalize(noise[0], dim=-1) * scale
    h_1 = authors_conv(h, edge_index)
    if noise is not None:
        h_1 = h_1 + torch.sign(h_1) * F.normalize(noise[1], dim=-1) * scale
    return x + h + h_1, module.preference


def authors_infonce(view1, view2, temp):
    view1, view2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    pos_score = torch.exp((view1 * view2).sum(dim=-1) / temp)
    ttl_score = torch.exp(torch.matmul(view1, view2.transpose(0, 1)) / temp).sum(dim=1)
    return torch.mean(-torch.log(pos_score / ttl_score))


def authors_losses(model, dataset, batch, seed):
    """calculate_loss, term by term; the noise and dropout drawn from torch's generator seeded with ``seed``, in the
    model's documented order (layer 1 noise of every noise view, layer 2, then mask_f's user and item dropout)."""
    c, U, M, d = model.config, dataset.num_users, len(model.modalities), model.config.dim
    mods = model.modalities
    edge_index = authors_edge_index(dataset)
    mm_adj = authors_mm_adj(dataset, mods, c.knn_k, c.mm_image_weight)
    feats = {m: dataset.features[m].double() for m in mods}
    torch.manual_seed(seed)
    n = U + dataset.num_items
    noise_layers = [torch.rand(n, 2 * M * d, dtype=torch.float64) for _ in range(2)]
    block = {f"{m}_{view}": k for k, (view, m) in enumerate(itertools.product(("noise1", "noise2"), mods))}

    def noise_of(name):
        k = block[name]
        return [layer[:, k * d : (k + 1) * d] for layer in noise_layers]

    rep = {m: authors_gcn(model.gcn[f"{m}_clean"], feats[m], edge_index) for m in mods}  # (x_hat, preference)
    id_rep, _ = authors_gcn(model.gcn["id"], model.id_embedding, edge_index)
    rep_n1 = {m: authors_gcn(model.gcn[f"{m}_noise1"], feats[m], edge_index, noise_of(f"{m}_noise1"))[0] for m in mods}
    rep_n2 = {m: authors_gcn(model.gcn[f"{m}_noise2"], feats[m], edge_index, noise_of(f"{m}_noise2"))[0] for m in mods}
    representation = torch.cat([rep[m][0] for m in mods], dim=1)
    guide_representation = torch.cat([id_rep] * M, dim=1)
    modal_representation = {m: torch.cat([rep[m][0]] * M, dim=1) for m in mods}
    representation_n1 = torch.cat([rep_n1[m] for m in mods], dim=1)
    representation_n2 = torch.cat([rep_n2[m] for m in mods], dim=1)
    weight_u = model.user_weights.unsqueeze(2)  # the authors' (U, M, 1) weight_u

    def weighted_users(per_modality):
        user_rep = torch.cat([r[:U].unsqueeze(2) for r in per_modality], dim=2)  # (U, d, M)
        user_rep = weight_u.transpose(1, 2) * user_rep
        return torch.cat([user_rep[:, :, k] for k in range(M)], dim=1)

    def build_item_graph(h):
        for _ in range(c.num_item_layers):
            h = torch.sparse.mm(mm_adj, h)
        return h

    user_rep = weighted_users([rep[m][0] for m in mods])
    user_rep_n1 = weighted_users([rep_n1[m] for m in mods])
    user_rep_n2 = weighted_users([rep_n2[m] for m in mods])
    item_rep = representation[U:] + build_item_graph(representation[U:])
    item_rep_n1 = representation_n1[U:] + build_item_graph(representation_n1[U:])
    item_rep_n2 = representation_n2[U:] + build_item_graph(representation_n2[U:])
    guide_item_rep = guide_representation[U:] + build_item_graph(guide_representation[U:])
    result_embed = torch.cat((user_rep, item_rep))
    result_embed_guide = torch.cat((guide_representation[:U], guide_item_rep))
    result_modal = {m: torch.cat((r[:U], r[U:] + build_item_graph(r[U:]))) for m, r in modal_representation.items()}
    result_embed_n1 = torch.cat((user_rep_n1, item_rep_n1))
    result_embed_n2 = torch.cat((user_rep_n2, item_rep_n2))

    users, pos, neg = batch[0], batch[1] + U, batch[2] + U
    pos_scores = (result_embed[users] * result_embed[pos]).sum(1)
    neg_scores = (result_embed[users] * result_embed[neg]).sum(1)
    bpr = -torch.mean(torch.log2(torch.sigmoid(pos_scores - neg_scores)))
    reg = c.reg_weight * sum((rep[m][1][users] ** 2).mean() for m in mods) + c.reg_weight * (weight_u**2).mean()
    with torch.no_grad():
        u_temp, i_temp = user_rep.clone(), item_rep.clone()
        u_temp2, i_temp2 = model.mask_mlp(user_rep.clone()), model.mask_mlp(item_rep.clone())
        u_temp = F.dropout(u_temp, c.dropout)
        i_temp = F.dropout(i_temp, c.dropout)
    mask_f = c.mask_weight_f * ((1 - F.cosine_similarity(i_temp, i_temp2).mean()) + (1 - F.cosine_similarity(u_temp, u_temp2).mean()))
    stats = [(torch.var(x), torch.mean(x)) for x in [result_embed, result_embed_guide, *result_modal.values()]]
    align = sum(torch.abs(va - vb) + torch.abs(ma - mb) for (va, ma), (vb, mb) in itertools.combinations(stats, 2))
    mask_g = authors_infonce(result_embed_n1[:U], result_embed_n2[:U], c.temperature)
    mask_g = mask_g + authors_infonce(result_embed_n1[U:], result_embed_n2[U:], c.temperature)
    return {"bpr": bpr, "reg": reg, "align": c.align_weight * align, "mask_f": mask_f, "mask_g": c.mask_weight_g * mask_g,
            "scored": (user_rep, item_rep)}  # fmt: skip


@pytest.mark.parametrize("modalities", [("image", "text"), ("audio",), ("image", "text", "audio")])
def test_losses_match_the_authors_formulation(dataset, modalities):
    seed_everything(0)
    model = MENTOR(dataset, modalities=modalities, mask_weight_g=0.1, backend="reference").double()
    assert len(model.gcn) == 3 * len(modalities) + 1  # seven modules for image + text
    batch = batch_of(dataset)
    torch.manual_seed(5)
    terms = model.losses(batch)
    expected = authors_losses(model, dataset, batch, seed=5)
    assert list(terms) == ["bpr", "reg", "align", "mask_f", "mask_g"]
    for name, value in terms.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-12, atol=1e-15, msg=name)
        assert value > 0, name
    assert terms["mask_f"].grad_fn is None and terms["bpr"].grad_fn is not None  # the authors' no_grad mask_f
    model.post_epoch(0)
    for got, want in zip(model.embeddings(), expected["scored"]):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-15)


def test_the_graph_counts_repeated_pairs_as_pyg_does():
    repeated = synthetic("small", num_users=30, num_items=25, num_interactions=160, feature_dims={"image": 4}, seed=2)
    users = torch.cat([repeated.train.users, repeated.train.users[:7]])  # seven pairs twice
    items = torch.cat([repeated.train.items, repeated.train.items[:7]])
    from mmrec_fast.data.dataset import Interactions

    repeated.train = Interactions(users, items)
    model = MENTOR(repeated).double()
    x = torch.randn(repeated.num_users + repeated.num_items, 3, dtype=torch.float64)
    from mmrec_fast import spmm

    torch.testing.assert_close(spmm(model.graph, x), authors_conv(x, authors_edge_index(repeated)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", kernel_backends("cpu"))
@pytest.mark.parametrize("modalities,mask_f_grad", [(None, False), (("image", "audio"), True), (("text",), False)])
def test_every_term_and_gradient_match_reference_in_float64(dataset, backend, modalities, mask_f_grad):
    batch = batch_of(dataset, seed=3)
    results = {}
    for name in ("reference", backend):
        torch.manual_seed(1)
        model = MENTOR(dataset, modalities=modalities, mask_f_grad=mask_f_grad, mask_weight_g=0.1, backend=name).double()
        torch.manual_seed(2)  # the same noise and dropout for both
        terms = model.losses(batch)
        sum(terms.values()).backward()
        results[name] = ({k: v.detach() for k, v in terms.items()}, {k: p.grad for k, p in model.named_parameters()})
    (ref_terms, ref_grads), (terms, grads) = results["reference"], results[backend]
    assert ref_terms.keys() == terms.keys() == {"bpr", "reg", "align", "mask_f", "mask_g"}
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-9, atol=0)
    assert ref_grads.keys() == grads.keys()
    scale = max(g.abs().max().item() for g in ref_grads.values() if g is not None)
    for name, gold in ref_grads.items():
        if name.startswith("mask_mlp.") and not mask_f_grad:  # the authors' mask_f: its Linear gets no gradient
            assert gold is None and grads[name] is None, name
            continue
        assert gold is not None and grads[name] is not None, name
        torch.testing.assert_close(grads[name], gold, rtol=1e-9, atol=1e-12 * scale, msg=name)


def test_mask_f_gradient_option(dataset):
    batch = batch_of(dataset)
    grads = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = MENTOR(dataset, mask_f_grad=flag).double()
        torch.manual_seed(1)
        terms = model.losses(batch)
        assert (terms["mask_f"].grad_fn is not None) == flag
        terms["mask_f"].backward() if flag else None
        grads[flag] = model.mask_mlp.weight.grad
        if flag:  # the term's gradient reaches R (the preference tables and the user weights) and f
            assert model.user_weights.grad is not None and model.gcn["image_clean"].preference.grad.abs().sum() > 0
    assert grads[False] is None and grads[True].abs().sum() > 0


def _memory_of_a_step(model, batch, warm_up=True):
    """(largest single tensor allocation, peak live tensor bytes above the start, peak resident growth) of one
    training step (forward + backward): the profiler's allocation events (every tensor torch allocates, inside the
    native kernels too) and the process's high-water mark (VmHWM, reset first: malloc'd scratch too)."""
    from torch.profiler import ProfilerActivity, profile

    def resident(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))

    def step():
        terms = model.losses(batch)
        sum(terms.values()).backward()

    if warm_up:  # the graphs' kernel arguments, thread pools
        step()
        model.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current resident size
    start = resident("VmRSS:")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    growth = resident("VmHWM:") - start
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    sizes = torch.tensor([e.nbytes() for e in events], dtype=torch.float64)
    return sizes.max().item(), sizes.cumsum(0).max().item(), growth


def test_no_user_by_user_or_item_by_item_tensor_on_the_native_path():
    n = 8000  # U = I = 8,000: one U x U float32 matrix is 244 MiB, 16x the probe's limit on any one tensor
    big = synthetic("small", num_users=n, num_items=n, num_interactions=6 * n, feature_dims={"image": 8, "text": 8}, seed=3)
    batch = next(BPRSampler(big.train, n, n, 512, seed=0).epoch(0))
    square = n * n * 4
    model = MENTOR(big, dim=8, backend="native")
    largest, peak, growth = _memory_of_a_step(model, batch)
    assert largest < square / 16, f"a {largest / 2**20:.0f} MiB tensor; U x U is {square / 2**20:.0f} MiB"
    assert peak < square / 2 and growth < square / 2, (peak / 2**20, growth / 2**20)
    # the same probe sees the reference path's U x U logits (the authors' form) on the same step
    model.backend = "reference"  # (a reference-built model would first build the dense I x I cosine matrix for its kNN graph)
    largest, peak, growth = _memory_of_a_step(model, batch, warm_up=False)
    assert largest >= square and peak > 2 * square and growth > square


def test_cached_and_fresh_scoring(dataset):
    seed_everything(0)
    model = MENTOR(dataset)
    fresh_before = model.embeddings()  # untrained: no cache, a fresh forward pass of the clean modules
    torch.testing.assert_close(fresh_before, model.forward(), rtol=0, atol=0)
    assert fresh_before[0].shape == (dataset.num_users, 3 * 64) and fresh_before[1].shape == (dataset.num_items, 3 * 64)
    optimizers = model.optimizers(TrainConfig.for_model(MENTOR))
    model.train()
    model.training_step(batch_of(dataset), optimizers)
    cached = model.embeddings()
    for got, want in zip(cached, fresh_before):  # computed in the step, before the optimizer moved the parameters
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    fresh = MENTOR(dataset, score_on="fresh")
    fresh.load_state_dict(model.state_dict())
    assert not torch.allclose(fresh.embeddings()[0], cached[0])
    clone = MENTOR(dataset)
    clone.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.embeddings(), cached))


def test_a_few_epochs_reduce_the_loss(dataset):
    seed_everything(0)
    model = MENTOR(dataset, modalities=("image", "text"))
    config = TrainConfig.for_model(MENTOR, lr=0.01, batch_size=64, epochs=5, ks=(5, 10, 20), progress=False, verbose=False)
    record = Trainer(model, dataset, config).fit()
    first, last = record["epochs"][0]["losses"], record["epochs"][-1]["losses"]
    assert last["bpr"] < 0.9 * first["bpr"], (first, last)
    assert sum(last.values()) < sum(first.values())
    defaults = MENTOR.train_defaults()
    assert (defaults["lr"], defaults["seed"], defaults["valid_metric"]) == (1e-4, 999, "recall@10")


def test_modalities_are_checked():
    tiktok_like = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={"image": 5, "audio": 4}, seed=1)
    model = MENTOR(tiktok_like)
    assert model.modalities == ("image", "audio") and len(model.gcn) == 7
    assert model.user_weights.shape == (60, 2) and torch.allclose(model.user_weights.sum(1), torch.ones(60))
    with pytest.raises(ValueError, match="modality 'text' requested, but dataset 'synthetic-small' has image"):
        MENTOR(tiktok_like, modalities=("text",))
    bare = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={}, seed=1)
    with pytest.raises(ValueError, match="MENTOR needs item features of at least one of image, text, audio"):
        MENTOR(bare)


def test_train_through_the_cli_with_exact_resume(tmp_path, capsys):
    from mmrec_fast.cli import main

    def run(out, epochs, *extra):
        args = ["train", "--model", "mentor", "--synthetic", "small", "--data-seed", "2", "--out", str(out), "--epochs",
                str(epochs), "--no-progress", "--threads", "1", "--batch-size", "4096", "--set", "dim=8", *extra]
        assert main(args) == 0
        return json.loads((out / "run.json").read_text())

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)
    resumed = run(tmp_path / "resumed", 2, "--resume", str(tmp_path / "resumed" / "last.pt"))
    assert resumed["resumed_from"].endswith("last.pt")
    assert [e["losses"] for e in resumed["epochs"]] == [e["losses"] for e in straight["epochs"]]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in straight["epochs"]]
    assert resumed["test"] == straight["test"]
    assert straight["config"]["valid_metric"] == "recall@10" and straight["config"]["lr"] == 1e-4
    assert straight["config"]["seed"] == 999 and straight["model"]["modalities"] == ["image", "text"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "straight" / "best.pt")]) == 0
    assert f"{straight['test']['recall@20']:.4f}" in capsys.readouterr().out
