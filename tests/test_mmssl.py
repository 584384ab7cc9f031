"""MMSSL: the model's forward pass, both of its steps and every loss term against the authors' formulation written
out in plain PyTorch (dense interaction rows, the multi-head attention with its K = Q line, the discriminator as
their nn.Sequential with LeakyReLU(True), the gradient penalty by autograd at the interpolates, the contrastive
loss with its +1e-8 inside the log), native against reference on every term and every parameter gradient in
float64, the factorized gradient penalty against the direct autograd computation, the augmented graphs' schedule
against the authors' list logic (empty with the defaults, and the option that fills them), MMSSL's batches,
training, and the command line with exact resume of both optimizers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmrec_fast.data import UserSampler, synthetic
from mmrec_fast.models import MMSSL
from mmrec_fast.models.mmssl import Discriminator, product_row_norms
from mmrec_fast.train import TrainConfig, Trainer, load_checkpoint, seed_everything

from conftest import kernel_backends

FEATURES = {"image": 12, "text": 9, "audio": 6}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small models run fastest on one thread (a loaded machine makes an OpenMP team of two wait at every barrier);
    the kernels' multi-threaded results are tested with the ops and in test_models.py."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims=FEATURES, seed=13)


def batch_of(dataset, size=24, seed=0):
    return next(UserSampler(dataset.train, dataset.num_users, dataset.num_items, size, seed=seed).epoch(0))


# -- the authors' formulation, written out ------------------------------------------------------------------------
def dense_r(dataset):
    r = torch.zeros(dataset.num_users, dataset.num_items, dtype=torch.float64)
    r[dataset.train.users, dataset.train.items] = 1.0
    return r


def csr_norm_left(matrix):
    """csr_norm(mean_flag=True): diag((rowsum + 1e-8)^-1/2) M (inf -> 0 never happens with the epsilon)."""
    return (matrix.sum(1) + 1e-8).pow(-0.5).unsqueeze(1) * matrix


def authors_attention(model, embedding_t):
    """multi_head_self_attention(weight_dict, embedding_t, embedding_t), line by line."""
    H = model.config.heads
    q = torch.stack(embedding_t)
    v = torch.stack(embedding_t)
    beh, N, d_h = q.shape[0], q.shape[1], model.config.dim / H
    Q = torch.matmul(q, model.w_q)
    V = v
    Q = Q.reshape(beh, N, H, int(d_h)).permute(2, 0, 1, 3)
    K = Q.reshape(beh, N, H, int(d_h)).permute(2, 0, 1, 3)
    Q = torch.unsqueeze(Q, 2)
    K = torch.unsqueeze(K, 1)
    V = torch.unsqueeze(V, 1)
    att = torch.mul(Q, K) / torch.sqrt(torch.tensor(d_h, dtype=q.dtype))
    att = torch.sum(att, dim=-1)
    att = torch.unsqueeze(att, dim=-1)
    att = F.softmax(att, dim=2)
    Z = torch.mul(att, V)
    Z = torch.sum(Z, dim=2)
    Z = torch.cat([value for value in Z], -1)
    return torch.matmul(Z, model.w_cat)


def authors_forward(model, dataset, image_ui, image_iu):
    """MMSSL.forward with the modality graphs ``image_ui`` / ``image_iu`` (dense, the same for every modality);
    dropout drawn in the model's order (the modalities' projections one after the other)."""
    c = model.config
    r = dense_r(dataset)
    ui, iu = csr_norm_left(r), csr_norm_left(r.T)
    feats = {m: F.dropout(model.project[m](dataset.features[m].double()), c.dropout, model.training) for m in model.modalities}
    user_feats = {m: ui @ f for m, f in feats.items()}
    item_feats = {m: iu @ user_feats[m] for m in feats}
    user_id = {m: image_ui @ model.item_embedding for m in feats}
    item_id = {m: image_iu @ model.user_embedding for m in feats}
    user_z = authors_attention(model, list(user_id.values())).mean(0)
    item_z = authors_attention(model, list(item_id.values())).mean(0)
    u = model.user_embedding + c.id_cat_rate * F.normalize(user_z, p=2, dim=1)
    i = model.item_embedding + c.id_cat_rate * F.normalize(item_z, p=2, dim=1)
    users, items = [u], [i]
    for layer in range(c.id_layers):
        if layer == c.id_layers - 1:
            u = F.softmax(ui @ i, dim=-1)
            i = F.softmax(iu @ u, dim=-1)
        else:
            u = ui @ i
            i = iu @ u
        users.append(u)
        items.append(i)
    u = torch.stack(users).mean(0) + sum(c.model_cat_rate * F.normalize(f, p=2, dim=1) for f in user_feats.values())
    i = torch.stack(items).mean(0) + sum(c.model_cat_rate * F.normalize(f, p=2, dim=1) for f in item_feats.values())
    return u, i, user_feats, item_feats, user_id


def authors_discriminator(model):
    """Discriminator(n_items) as the authors' nn.Sequential, with the model's weights; output 100 * net(x)."""
    D, I = model.discriminator, model.num_items
    net = torch.nn.Sequential(
        torch.nn.Linear(I, int(I / 4)), torch.nn.LeakyReLU(True), torch.nn.BatchNorm1d(int(I / 4)),
        torch.nn.Dropout(model.config.d_dropout1), torch.nn.Linear(int(I / 4), int(I / 8)), torch.nn.LeakyReLU(True),
        torch.nn.BatchNorm1d(int(I / 8)), torch.nn.Dropout(model.config.d_dropout2), torch.nn.Linear(int(I / 8), 1),
        torch.nn.Sigmoid(),
    ).double()  # fmt: skip
    with torch.no_grad():
        net[0].weight.copy_(D.weight1)
        net[0].bias.copy_(D.bias1)
        for mine, theirs in ((D.norm1, net[2]), (D.layer2, net[4]), (D.norm2, net[6]), (D.layer3, net[8])):
            theirs.load_state_dict(mine.state_dict())
    return lambda x: (100 * net(x)).view(-1)


def authors_u_sim(users, user_final, item_final, r):
    sim = user_final[users] @ item_final.T
    return F.normalize(sim * (1 - r[users]), p=2, dim=1)


def authors_contrastive(z1, z2, tau):
    """batched_contrastive_loss with one block (B <= 1024): -log(between_ii / (refl + between - refl_ii) + 1e-8)."""
    f = lambda x: torch.exp(x / tau)  # noqa: E731
    refl = f(F.normalize(z1) @ F.normalize(z1).T)
    between = f(F.normalize(z1) @ F.normalize(z2).T)
    return (-torch.log(between.diag() / (refl.sum(1) + between.sum(1) - refl.diag()) + 1e-8)).mean()


def authors_step(model, dataset, batch, seed, graphs):
    """Both steps of one batch (main.py L339-420): D's loss terms and the model's, the random draws from torch's
    generator seeded with ``seed`` in the model's documented order."""
    c, M = model.config, len(model.modalities)
    users, pos, neg = batch
    r = dense_r(dataset)
    D = authors_discriminator(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        ua, ia, user_feats, item_feats, _ = authors_forward(model, dataset, *graphs)
    ui_sim = authors_u_sim(users, ua, ia, r)
    inputf = torch.cat([authors_u_sim(users, user_feats[m], item_feats[m], r) for m in model.modalities])
    lossf = D(inputf).mean()
    noise = torch.rand(len(users), dataset.num_items, dtype=torch.float64)
    u_ui = F.softmax(r[users] - c.gumbel_scale * torch.log(-torch.log(noise + 1e-8) + 1e-8) / c.real_tau, dim=1)
    u_ui = F.normalize(u_ui + ui_sim * c.ui_pre_scale, dim=1)
    inputr = torch.cat([u_ui] * M)
    lossr = -D(inputr).mean()
    alpha = torch.rand(M * len(users), 1, dtype=torch.float64).expand_as(inputr)
    interpolates = (alpha * inputr.detach() + (1 - alpha) * inputf.detach()).requires_grad_()
    gradients = torch.autograd.grad(D(interpolates), interpolates, grad_outputs=torch.ones(len(interpolates), dtype=torch.float64),
                                    create_graph=True, retain_graph=True, only_inputs=True)[0]  # fmt: skip
    gp = ((gradients.norm(2, dim=1) - 1) ** 2).mean() * 0.3
    d_terms = {"real": lossr, "fake": lossf, "gp": c.gp_rate * gp}
    G_ua, G_ia, G_user_feats, G_item_feats, G_user_id = authors_forward(model, dataset, *graphs)
    u, p, n = G_ua[users], G_ia[pos], G_ia[neg]
    bpr = -torch.mean(F.logsigmoid((u * p).sum(1) - (u * n).sum(1)))
    emb = c.reg_weight * (0.5 * (u**2).sum() + 0.5 * (p**2).sum() + 0.5 * (n**2).sum()) / len(users)
    feat = sum(0.5 * (f**2).sum() for f in [*G_item_feats.values(), *G_user_feats.values()]) / dataset.num_items
    cl = sum(authors_contrastive(G_user_id[m][users], G_ua[users], c.temperature) for m in model.modalities)
    G_inputf = torch.cat([authors_u_sim(users, G_user_feats[m], G_item_feats[m], r) for m in model.modalities])
    G_lossf = -D(G_inputf).mean()
    model_terms = {"bpr": bpr, "reg": emb, "feat_reg": c.feat_reg_weight * feat, "cl": c.cl_rate * cl, "gen": c.g_rate * G_lossf}
    return d_terms, model_terms, (G_ua, G_ia), {m: G_user_feats[m][users] @ G_item_feats[m].T for m in model.modalities}


def full_graphs(dataset):
    r = dense_r(dataset)
    return csr_norm_left(r), csr_norm_left(r.T)


# -- the model against the authors' formulation ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", *kernel_backends("cpu")])
@pytest.mark.parametrize("modalities", [("image", "text"), ("image", "audio"), ("text",), ("image", "text", "audio")])
def test_both_steps_match_the_authors_formulation(dataset, backend, modalities):
    seed_everything(0)
    model = MMSSL(dataset, modalities=modalities, backend=backend).double()
    batch = batch_of(dataset)
    want_d, want_m, want_scores, _ = authors_step(model, dataset, batch, seed=5, graphs=full_graphs(dataset))
    torch.manual_seed(5)
    got_d = model.discriminator_loss(batch)
    got_m = model.losses(batch)
    assert list(got_d) == ["real", "fake", "gp"] and list(got_m) == ["bpr", "reg", "feat_reg", "cl", "gen"]
    for name in got_d:
        torch.testing.assert_close(got_d[name], want_d[name], rtol=1e-10, atol=1e-12, msg=name)
    for name in got_m:
        torch.testing.assert_close(got_m[name], want_m[name], rtol=1e-10, atol=1e-14, msg=name)
    assert all(v.abs() > 0 for v in got_m.values())
    model.eval()  # scoring: a fresh forward pass without dropout
    expected = authors_forward(model, dataset, *full_graphs(dataset))[:2]
    for got, want in zip(model.embeddings(), expected):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-13)


def test_the_attention_is_the_identity_on_the_views_and_standard_attention_is_not(dataset):
    seed_everything(0)
    model = MMSSL(dataset, modalities=("image", "text")).double()
    views = torch.randn(2, 30, 64, dtype=torch.float64)
    summed = model.w_cat.reshape(4, 64, 64).sum(0)
    torch.testing.assert_close(model.attention(views), (views @ summed).mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.attention(views), authors_attention(model, list(views)).mean(0), rtol=1e-12, atol=1e-13)
    standard = MMSSL(dataset, modalities=("image", "text"), attention="standard").double()
    Q = (views @ standard.w_q).reshape(2, 30, 4, 16)
    K = (views @ standard.w_k).reshape(2, 30, 4, 16)
    weights = torch.softmax(torch.einsum("qnhc,knhc->hqkn", Q, K) / 4, dim=2)  # (H, queries, keys, N)
    heads = [torch.einsum("qkn,knd->qnd", weights[h], views) for h in range(4)]
    torch.testing.assert_close(standard.attention(views), (torch.cat(heads, -1) @ standard.w_cat).mean(0), rtol=1e-12, atol=1e-12)


# -- native against reference ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,augment,attention", [
    *[(b, augment, attention) for b in kernel_backends("cpu") if b != "triton"
      for augment, attention in (("authors", "authors"), ("persistent", "standard"))],
    *[(b, "authors", "authors") for b in kernel_backends("cpu") if b == "triton"],  # (its topk_scores: no float64)
])  # fmt: skip
def test_every_term_and_gradient_match_reference_in_float64(dataset, backend, augment, attention):
    batch = batch_of(dataset, seed=3)
    rate = 0.0 if backend == "triton" else 0.1
    results = {}
    for name in ("reference", backend):
        seed_everything(1)
        model = MMSSL(dataset, backend=name, augment=augment, augment_topk_rate=rate, attention=attention).double()
        optimizers = model.optimizers(TrainConfig.for_model(MMSSL))
        model.training_step(batch_of(dataset, seed=9), optimizers)  # trained a step, the augmented graphs rebuilt
        torch.manual_seed(2)  # the same dropout, noise and interpolation weights for both
        d_terms = model.discriminator_loss(batch)
        sum(d_terms.values()).backward()
        m_terms = model.losses(batch)
        sum(m_terms.values()).backward()
        grads = {k: p.grad for k, p in model.named_parameters()}
        results[name] = ({k: v.detach() for k, v in {**d_terms, **m_terms}.items()}, grads)
    (ref_terms, ref_grads), (terms, grads) = results["reference"], results[backend]
    assert ref_terms.keys() == terms.keys()
    for name in ref_terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-9, atol=0, msg=name)
    assert ref_grads.keys() == grads.keys()
    # gradients that are zero in exact arithmetic (a bias before a batch norm; W_q under the authors' attention) are
    # compared on the scale of their group's largest
    scale = {group: max(g.abs().max().item() for k, g in ref_grads.items() if k.startswith(group) == (group == "discriminator"))
             for group in ("discriminator", "model")}  # fmt: skip
    for name, gold in ref_grads.items():
        assert gold is not None and grads[name] is not None, name
        group = "discriminator" if name.startswith("discriminator") else "model"
        torch.testing.assert_close(grads[name], gold, rtol=1e-9, atol=1e-12 * scale[group], msg=name)


def test_zero_gradients_of_the_authors_model(dataset):
    """W_q only changes the attention's rounding (its gradient is rounding noise); the first two biases of D sit
    before batch norms (their gradients vanish)."""
    seed_everything(0)
    model = MMSSL(dataset, backend="reference").double()
    model.training_step(batch_of(dataset), model.optimizers(TrainConfig.for_model(MMSSL)))  # the id views go empty
    model.augment_initial.fill_(True)
    model._set_augmented_graphs()  # the full graphs again, so that the views are not zero
    batch = batch_of(dataset, seed=1)
    torch.manual_seed(0)
    sum(model.discriminator_loss(batch).values()).backward()
    sum(model.losses(batch).values()).backward()
    D = model.discriminator
    for small, big in ((D.bias1, D.weight1_t), (D.layer2.bias, D.layer2.weight), (model.w_q, model.w_cat)):
        assert small.grad.abs().max() < 1e-9 * big.grad.abs().max()


def test_the_factorized_gradient_penalty_is_the_direct_one():
    torch.manual_seed(0)
    I, n = 48, 20
    D = Discriminator(I, 0.31, 0.5).double()
    real, fake = torch.randn(n, I, dtype=torch.float64), torch.randn(n, I, dtype=torch.float64)
    alpha = torch.rand(n, 1, dtype=torch.float64)
    penalties = []
    for factorized in (False, True):
        D.zero_grad()
        torch.manual_seed(1)  # the same dropout
        if factorized:
            h1 = alpha * D.first(real) + (1 - alpha) * D.first(fake)
            (grad_h1,) = torch.autograd.grad(D.rest(h1).sum(), h1, create_graph=True)
            norms = product_row_norms(grad_h1, D.weight1)
        else:
            x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_()
            (grad_x,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
            norms = grad_x.norm(2, dim=1)
        gp = ((norms - 1) ** 2).mean() * 0.3
        gp.backward()  # the double backward into D's parameters
        penalties.append((gp.detach(), {k: p.grad.clone() for k, p in D.named_parameters()}))
    (direct, direct_grads), (factored, factored_grads) = penalties
    torch.testing.assert_close(factored, direct, rtol=1e-12, atol=0)
    scale = max(g.abs().max() for g in direct_grads.values())
    for name, gold in direct_grads.items():
        torch.testing.assert_close(factored_grads[name], gold, rtol=1e-10, atol=1e-13 * scale, msg=name)


@pytest.mark.parametrize("shape", [(30, 8, 50), (5, 40, 12), (1, 3, 2)])
def test_product_row_norms(shape):
    n, H, K = shape
    torch.manual_seed(0)
    a = torch.randn(n, H, dtype=torch.float64, requires_grad=True)
    b = torch.randn(H, K, dtype=torch.float64, requires_grad=True)
    a_zero = a.detach().clone()
    a_zero[0] = 0  # a zero row: norm 0, gradient 0 as torch's norm
    for rows, bt in ((a, b), (a_zero.requires_grad_(), b), (a, b.detach().T.contiguous().requires_grad_())):
        weight = bt if bt.shape == (H, K) else bt.T
        got = product_row_norms(rows, weight)
        want = (rows @ weight).norm(2, dim=1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        cotangent = torch.linspace(-1, 2, n, dtype=torch.float64)
        got_grads = torch.autograd.grad((got * cotangent).sum(), [rows, bt])
        want_grads = torch.autograd.grad((want * cotangent).sum(), [rows, bt])
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert product_row_norms(torch.zeros(4, 3, dtype=torch.float64, requires_grad=True), b[:3]).sum() == 0


# -- the augmented graphs -------------------------------------------------------------------------------------------
class AuthorsLists:
    """main.py L378-405 for one modality: the index lists and the count matrix of the graph built from them."""

    def __init__(self, model, dataset):
        self.T, self.k = model.config.augment_interval, model.augment_k
        self.shape = (model.num_users, model.num_items)
        self.x, self.y = [], []
        self.counts = dense_r(dataset)  # the initial graphs are ui / iu themselves

    def step(self, idx, users, top):
        if idx % self.T == 0 and idx != 0:
            self.counts = torch.zeros(self.shape, dtype=torch.float64)
            for x, y in zip(self.x, self.y):  # csr_matrix((ones, (x, y))) sums repeated pairs
                self.counts[x, y] += 1
            self.x, self.y = [], []
        else:
            self.x += torch.tensor(users).repeat(1, self.k).view(-1).tolist()
            self.y += top.reshape(-1).tolist()


def dense(graph):
    return graph.to_torch(torch.float64).to_dense()


@pytest.mark.parametrize("interval,rate", [(1, 0.0), (1, 0.05), (2, 0.05), (3, 0.1)])
def test_the_authors_schedule(dataset, interval, rate):
    model = MMSSL(dataset, modalities=("image",), augment_interval=interval, augment_topk_rate=rate)
    assert model.augment_k == int(dataset.num_items * rate)
    authors = AuthorsLists(model, dataset)
    generator = torch.Generator().manual_seed(0)
    nonempty = []
    for epoch in range(3):
        model.pre_epoch(epoch)
        for idx in range(4):
            users = torch.randperm(dataset.num_users, generator=generator)[:10]
            top = torch.randint(dataset.num_items, (10, model.augment_k), generator=generator)
            model.update_augmentation(users, [top])
            authors.step(idx, users.tolist(), top)
            torch.testing.assert_close(dense(model.aug_ui_image), csr_norm_left(authors.counts), rtol=1e-12, atol=0)
            torch.testing.assert_close(dense(model.aug_iu_image), csr_norm_left(authors.counts.T), rtol=1e-12, atol=0)
            nonempty.append(model.aug_ui_image.nnz > 0)
    if interval == 1:  # the shipped T: the graph each batch leaves for the next: the initial one for batch 1 of the
        # first epoch, then one made of batch 0's pairs for batch 2 of every epoch (none when k = 0), else nothing
        assert nonempty == [True, rate > 0, False, False] + [False, rate > 0, False, False] * 2


# -- MMSSL's batches ------------------------------------------------------------------------------------------------
def test_user_batches(dataset):
    sampler = UserSampler(dataset.train, dataset.num_users, dataset.num_items, 16, seed=4)
    assert len(sampler) == len(dataset.train) // 16 + 1  # n_train // batch_size + 1
    known = set(zip(dataset.train.users.tolist(), dataset.train.items.tolist()))
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) and all(b.shape == (3, 16) for b in batches)
    for users, positives, negatives in batches:
        assert users.unique().numel() == 16  # distinct users in a batch
        assert all((u, p) in known for u, p in zip(users.tolist(), positives.tolist()))
        assert not any((u, n) in known for u, n in zip(users.tolist(), negatives.tolist()))
    drawn = torch.cat([b[0] for epoch in range(8) for b in sampler.epoch(epoch)])
    counts = torch.bincount(drawn, minlength=dataset.num_users).double()
    order = torch.argsort(torch.bincount(dataset.train.users, minlength=dataset.num_users))
    ratio = counts[order[-15:]].mean() / counts[order[:15]].mean()  # the most active users against the least
    assert 0.8 < ratio < 1.25, ratio  # uniform over users, whatever their activity
    assert all(torch.equal(a, b) for a, b in zip(batches, sampler.epoch(0)))  # a function of (seed, epoch)
    assert not torch.equal(batches[0], next(sampler.epoch(1)))
    large = UserSampler(dataset.train, dataset.num_users, dataset.num_items, 100, seed=0)  # B > U: with replacement
    assert next(large.epoch(0)).shape == (3, 100)


# -- the defaults' empty graphs, the option that fills them ---------------------------------------------------------
def test_the_defaults_leave_the_graphs_empty_and_the_contrastive_loss_constant(dataset):
    seed_everything(0)
    model = MMSSL(dataset, modalities=("image", "audio"))
    assert model.augment_k == 0  # int(40 * 1e-4)
    optimizers = model.optimizers(TrainConfig.for_model(MMSSL))
    sampler = UserSampler(dataset.train, dataset.num_users, dataset.num_items, 16, seed=0)
    for index, batch in enumerate(sampler.epoch(0)):
        model.training_step(batch, optimizers)
        assert (model.aug_ui_image.nnz > 0) == (index == 0)  # the graph that batch index + 1 will use
    batch = batch_of(dataset, size=16)
    terms = model.losses(batch)
    torch.testing.assert_close(terms["cl"], torch.tensor(0.03 * 2 * -math.log(1 / 31 + 1e-8)))  # log(2B - 1) a view
    views = model.propagate_all()["user_views"]
    assert all((v == 0).all() for v in views)
    sum(terms.values()).backward()
    assert model.w_cat.grad is None or (model.w_cat.grad == 0).all()  # nothing reaches the attention


def test_the_persistent_option_fills_the_graphs_with_each_users_own_top_items(dataset):
    seed_everything(0)
    model = MMSSL(dataset, modalities=("image", "text"), augment="persistent", augment_topk_rate=0.05).double()
    assert model.augment_k == 2
    optimizers = model.optimizers(TrainConfig.for_model(MMSSL))
    batch = batch_of(dataset, size=20)
    users = batch[0]
    torch.manual_seed(3)
    model.training_step(batch, optimizers)
    # the top-k the step stored: each batch user's own best items of S_m, its training items left out
    model_after = MMSSL(dataset, modalities=("image", "text"), augment="persistent", augment_topk_rate=0.05).double()
    model_after.load_state_dict(model.state_dict())
    r = dense_r(dataset)
    for k, modality in enumerate(model.modalities):
        table = model.augment_table[k]
        assert (table[users] >= 0).all() and (table[[u for u in range(60) if u not in users.tolist()]] == -1).all()
        assert not r[users.unsqueeze(1), table[users]].bool().any()  # never a training item
        assert torch.equal(model.augment_graph_table[k], table)  # T = 1: rebuilt after every batch
        expected = torch.zeros(60, 40, dtype=torch.float64)
        expected[users.unsqueeze(1), table[users]] = 1
        torch.testing.assert_close(dense(getattr(model, f"aug_ui_{modality}")), csr_norm_left(expected), rtol=1e-12, atol=0)
        torch.testing.assert_close(dense(getattr(model_after, f"aug_iu_{modality}")), csr_norm_left(expected.T), rtol=1e-12, atol=0)
    # the rows they come from: the step's second forward pass (recomputed with its dropout draws)
    seed_everything(0)
    probe = MMSSL(dataset, modalities=("image", "text"), augment="persistent", augment_topk_rate=0.05).double()
    torch.manual_seed(3)
    probe.discriminator_loss(batch)  # the same draws as the step's first half
    out = probe.propagate_all()
    for k in range(2):
        scores = (out["user_feats"][k][users] @ out["item_feats"][k].T).masked_fill(r[users].bool(), float("-inf"))
        assert torch.equal(torch.topk(scores, 2, dim=1).indices.sort(1).values, model.augment_table[k][users].sort(1).values)


def test_model_checks(dataset):
    with pytest.raises(ValueError, match=r"heads \(3\) must divide dim \(64\)"):
        MMSSL(dataset, heads=3)
    from mmrec_fast.data import Dataset, Interactions

    pairs = Interactions(torch.tensor([0, 1, 2]), torch.tensor([0, 3, 6]))
    tiny = Dataset("tiny", 3, 7, pairs, pairs, pairs, {"image": torch.ones(7, 2)})
    with pytest.raises(ValueError, match="7 items are too few"):
        MMSSL(tiny)
    bare = synthetic("small", num_users=60, num_items=40, num_interactions=500, feature_dims={}, seed=1)
    with pytest.raises(ValueError, match="MMSSL needs item features of at least one of image, text, audio"):
        MMSSL(bare)
    model = MMSSL(dataset)
    assert model.modalities == ("image", "text", "audio")
    assert [p.shape for p in model.discriminator.parameters()][:2] == [(40, 10), (10,)]  # W_1^T (I, I/4), b_1
    defaults = MMSSL.train_defaults()
    assert (defaults["optimizer"], defaults["lr"], defaults["weight_decay"], defaults["batch_size"]) == ("adamw", 5.5e-4, 0.01, 1024)
    assert (defaults["patience"], defaults["seed"], defaults["valid_metric"]) == (8, 2022, "recall@20")
    optimizers = model.optimizers(TrainConfig.for_model(MMSSL))
    assert set(optimizers) == {"discriminator", "model"}
    d_params = {id(p) for p in model.discriminator.parameters()}
    assert {id(p) for g in optimizers["discriminator"].param_groups for p in g["params"]} == d_params
    assert optimizers["discriminator"].param_groups[0]["betas"] == (0.5, 0.9)
    assert optimizers["discriminator"].param_groups[0]["lr"] == 3e-4
    model_params = {id(p) for g in optimizers["model"].param_groups for p in g["params"]}
    assert not model_params & d_params and len(model_params) + len(d_params) == len(list(model.parameters()))
    assert isinstance(optimizers["model"], torch.optim.AdamW) and optimizers["model"].param_groups[0]["weight_decay"] == 0.01


def test_log_eps(dataset):
    seed_everything(0)
    exact = MMSSL(dataset, log_eps=0.0).double()
    views, final = torch.randn(16, 64, dtype=torch.float64), torch.randn(16, 64, dtype=torch.float64)
    torch.testing.assert_close(MMSSL(dataset).double().contrastive(views, final), authors_contrastive(views, final, 0.5),
                               rtol=1e-13, atol=0)  # fmt: skip
    from mmrec_fast import info_nce

    torch.testing.assert_close(exact.contrastive(views, final), info_nce(views, final, 0.5, intra_view_negatives=True))


# -- training and the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("augment", ["authors", "persistent"])
def test_a_few_epochs_reduce_the_loss(dataset, augment):
    seed_everything(0)
    model = MMSSL(dataset, modalities=("image", "text"), augment=augment, dim=16, heads=2)
    config = TrainConfig.for_model(MMSSL, lr=0.01, batch_size=32, epochs=5, ks=(5, 10, 20), progress=False, verbose=False)
    record = Trainer(model, dataset, config).fit()
    first, last = record["epochs"][0]["losses"], record["epochs"][-1]["losses"]
    assert set(first) == {"bpr", "reg", "feat_reg", "cl", "gen", "disc"}
    assert last["bpr"] < 0.9 * first["bpr"], (first, last)
    assert last["disc"] < first["disc"]  # the discriminator learns too (its penalty falls)


def write_mmssl_directory(dataset, directory):
    """The dataset in MMSSL's format: {user: [items]} json splits and <modality>_feat.npy."""
    import numpy as np

    directory.mkdir()
    for split, name in (("train", "train.json"), ("valid", "val.json"), ("test", "test.json")):
        pairs = getattr(dataset, split)
        lists = {}
        for u, i in zip(pairs.users.tolist(), pairs.items.tolist()):
            lists.setdefault(str(u), []).append(i)
        (directory / name).write_text(json.dumps(lists))
    for modality, features in dataset.features.items():
        np.save(directory / f"{modality}_feat.npy", features.numpy())
    return directory


def test_train_through_the_cli_with_exact_resume(dataset, tmp_path, capsys):
    from mmrec_fast.cli import main

    data = write_mmssl_directory(dataset, tmp_path / "data")

    def run(out, epochs, *extra):
        args = ["train", "--model", "mmssl", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--no-progress",
                "--threads", "1", "--batch-size", "48", "--set", "dim=16", "--set", "augment=persistent",
                "--set", "augment_interval=2", "--ks", "5,10,20", *extra]  # fmt: skip
        assert main(args) == 0
        return json.loads((out / "run.json").read_text())

    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "resumed", 2)
    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert set(state["optimizer_states"]) == {"discriminator", "model"}
    assert all(s["state"] for s in state["optimizer_states"].values())  # both optimizers have stepped: Adam moments
    assert (state["model_state"]["augment_graph_table"] >= 0).any()
    resumed = run(tmp_path / "resumed", 3, "--resume", str(tmp_path / "resumed" / "last.pt"))
    assert resumed["resumed_from"].endswith("last.pt")
    assert [e["losses"] for e in resumed["epochs"]] == [e["losses"] for e in straight["epochs"]]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in straight["epochs"]]
    assert resumed["test"] == straight["test"]
    assert straight["config"]["lr"] == 5.5e-4 and straight["config"]["seed"] == 2022 and straight["config"]["optimizer"] == "adamw"
    assert straight["model"]["modalities"] == ["image", "text", "audio"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "straight" / "best.pt"), "--ndcg", "ngcf"]) == 0
    printed = capsys.readouterr().out
    assert f"{straight['test']['recall@20']:.4f}" in printed  # the best model ranks with its saved augmented graphs


def test_without_the_generator_term_the_discriminator_step_is_skipped(dataset):
    results = []
    for g_rate in (0.0, 1e-4):
        seed_everything(0)
        model = MMSSL(dataset, g_rate=g_rate).double()
        optimizers = model.optimizers(TrainConfig.for_model(MMSSL))
        before = [p.detach().clone() for p in model.discriminator.parameters()]
        values = model.training_step(batch_of(dataset), optimizers)
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.discriminator.parameters()))
        results.append((values, moved))
    (skipped, d_still), (full, d_moved) = results
    assert "disc" not in skipped and skipped["gen"] == 0 and not d_still
    assert "disc" in full and full["gen"] != 0 and d_moved
