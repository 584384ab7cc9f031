"""MMSSL (Wei, Huang, Xia, Zhang, "Multi-Modal Self-Supervised Learning for Recommendation", WWW 2023, arXiv
2302.10632) on :func:`mmrec_fast.spmm`, :func:`mmrec_fast.masked_similarity`, :func:`mmrec_fast.info_nce` and
:func:`mmrec_fast.topk_scores`.

Graphs: the two rectangular matrices ui = D_u^-1/2 R (U x I) and iu = D_i^-1/2 R^T (I x U) of the binary training
matrix R, with (deg + 1e-8)^-1/2 (``csr_norm(mean_flag=True)``, ``MMSSL/main.py`` L89-103, L65-67), and for each
modality m its augmented pair aug_ui_m, aug_iu_m, normalised the same way (see "The augmented graphs" below).
With E_U (U, d), E_I (I, d) the id tables and F_m the raw item features of modality m (``Models.py`` L171-220):

    f_m = dropout(F_m W_m^T + c_m)                     (I, d), p = 0.2, in training (each forward draws anew)
    x_m^U = ui f_m,  x_m^I = iu x_m^U                  the feature hop (one: the authors' loop over ``layers``
                                                       recomputes the same hop from f_m)
    v_m^U = aug_ui_m E_I,  v_m^I = aug_iu_m E_U        the modality id views
    z^U = mean_m Attention([v_1^U, .., v_M^U])_m       the same for items (see "The attention")
    u_0 = E_U + 0.36 normalize(z^U),  i_0 = E_I + 0.36 normalize(z^I)
    u_l = ui i_{l-1},  i_l = iu u_l  (l < L);  u_L = softmax(ui i_{L-1}),  i_L = softmax(iu u_L)
                                                       L = 2 id layers, the softmax over the d embedding columns
    users = mean(u_0 .. u_L) + 0.55 sum_m normalize(x_m^U),  items = mean(i_0 .. i_L) + 0.55 sum_m normalize(x_m^I)
    score(u, i) = users_u . items_i

The attention (``multi_head_self_attention``, L139-169): Q = [v_m] W_q split into H = 4 heads of d / H, and the
authors' K is Q itself, reshaped again (L150: ``K = Q.reshape(...)`` of the already permuted Q, so K's rows are Q's
in another order); a softmax over the M keys; V = [v_m] unprojected (d wide in every head). The value broadcasts
along the *query* axis (V is unsqueezed at the key axis), so head h of query modality m outputs
(sum_k softmax_k) v_m = v_m: up to rounding the attention is the identity, and the block is
Z_m = [v_m | .. | v_m] W_cat = v_m sum_h W_cat,h, with W_q's gradient only rounding noise. This is computed as the
authors' (``attention="authors"``, the default); ``attention="standard"`` is the attention the code seems to mean:
K = [v_m] W_k, head h of query m outputs sum_k softmax_k(Q_m . K_k / sqrt(d / H)) v_k, then W_cat.

Batches are MMSSL's (:class:`~mmrec_fast.data.UserSampler`, ``batch_kind = "users"``; ``load_data.py`` ``sample``):
B = 1024 distinct users drawn uniformly, each with one uniform positive and one negative that is not a training
item, n_train // B + 1 batches an epoch. Losses of the model step (``losses(batch)``; the names as logged):

    "bpr"      = mean_b -log sigmoid(s(u, p) - s(u, n))
    "reg"      = 1e-5 (|u|^2 + |p|^2 + |n|^2) / (2 B)               the batch rows of users / items
    "feat_reg" = 1e-5 sum_m (|x_m^I|^2 + |x_m^U|^2) / (2 I)          all rows
    "cl"       = 0.03 sum_m mean_b -log(p_mb + 1e-8),  p_mb = e^{c(a_b, z_b)/t} / (sum_j e^{c(a_b, z_j)/t}
                 + sum_{j != b} e^{c(a_b, a_j)/t}),  a = v_m^U[users], z = users[users], c cosine, t = 0.5
                 (GRACE with intra-view negatives, L218-249: info_nce(intra_view_negatives=True) per row, then
                 -log(p + 1e-8) = l - log1p(1e-8 e^l) of its row loss l, exactly; ``log_eps=0``: -log p)
    "gen"      = 1e-4 (-mean D([S_1; ..; S_M]))                         the generator term (L416-420)

with S_m the masked similarity rows of modality m: row b of S_m is normalize(x_m^U[u_b] (x_m^I)^T with u_b's training
items set to 0) (``u_sim_calculation``, L283-298), computed by :func:`masked_similarity` from the batch's rows and
the training matrix's CSR: no dense U x I or B x I copy of R (the authors copy ``R[users].todense()`` to the GPU
six times a batch). The discriminator reads the rows only through its first layer, so on the native backend
D's first layer is applied to the rows in their low-rank form (``masked_similarity(..., weight=W_1)``) and no
(B, I) matrix of S_m exists, forward or backward (the real rows below are dense: their Gumbel noise is).

The discriminator (``Discriminator``, L224-245; Kaiming-normal weights, zero biases):
D(x) = 100 sigmoid(W_3 drop_0.5(BN(W_2 drop_0.31(BN(W_1 x + b_1)) + b_2)) + b_3), W_1 (I/4, I), W_2 (I/8, I/4);
``nn.LeakyReLU(True)`` passes True as the negative slope, 1.0: the identity. Always in training mode (batch
statistics, dropout). It has its own Adam (lr 3e-4, betas (0.5, 0.9)), stepped first in every batch
(``training_step``, the authors' order, L339-429):

1. a forward pass without gradient (in training mode: dropout), the rows S_m (fake) and the "real" rows
   normalize(softmax(R_b + 0.002 g) + 100 S_ui), g = -log(-log(U + 1e-8) + 1e-8), U ~ U(0, 1)^(B, I), S_ui the
   masked rows of the final embeddings (L349-352; the scale is ``log_log_scale / real_data_tau`` = 1e-5 / 0.005,
   which the authors' operator precedence applies to the noise only, not to R_b as well; R_b's ones are added at
   the CSR's entries). The real rows repeat M times (``cat((u_ui, u_ui))`` for two modalities);
2. the WGAN-GP loss -mean D(real) + mean D(fake) + gp_rate * 0.3 mean_b (|grad_x D(x_hat)_b| - 1)^2, x_hat =
   a real + (1 - a) fake, a ~ U(0, 1) per row (L140-161, L353-360), its backward (a double backward) and D's step.
   The reference backend computes this as the authors (D on the dense rows, x_hat formed, grad_x D by autograd at
   x_hat); the native one through D's first layer, with the same values: x enters D only through
   h_1 = x W_1^T + b_1, so h_1(x_hat) = a h_1(real) + (1 - a) h_1(fake), grad_x D = (dD / dh_1) W_1, whose row norms
   come from the Gram matrix W_1 W_1^T (:func:`product_row_norms`), and W_1 is applied to the real rows once
   (not M times). x_hat and the (M B, I) gradient are never formed;
3. the model step: the second forward pass, ``losses``, the update of the augmented graphs, backward and the
   model's AdamW step (lr 5.5e-4, PyTorch's default weight decay 0.01, L76-80; the LambdaLR scheduler is never
   stepped). The generator term's gradient does not reach D's parameters here (the authors' reaches them and is
   zeroed before D's next step).

The augmented graphs (``augment``). The authors start them as ui / iu (L68-69); at batch idx of an epoch (from 0)
they rebuild them from their lists of (user, item) pairs if ``idx % T == 0 and idx != 0`` and empty the lists
(L378-397), else they append each batch user's k = int(I * m_topk_rate) most similar items of S_m (L399-405). With
the defaults T = 1 and m_topk_rate = 1e-4, k = int(0.67) = 0 on TikTok and int(0.71) = 0 on Baby: the lists stay
empty, the graphs are ui / iu for the first two batches of the first epoch and have no entries from then on, in
training and evaluation alike. Then v_m = 0, z = 0, u_0 = E_U, and "cl" is the
constant log(2B - 1) without gradient. With T = 1 even k > 0 gives a graph only at batch 2 of each epoch (built at
batch 1 from batch 0's pairs, replaced at batch 2 by an empty one). ``augment="authors"`` (default) is this
schedule for any T and k, including the authors' pairing: their user list is tiled k times, ``users.repeat(1, k)``,
against the top-k matrix flattened row by row, so for k > 1 the items of user b go to other users (L401, L404).
``augment="persistent"`` makes the graphs non-empty: every batch writes each of its users' top
max(1, int(I * augment_topk_rate)) items of S_m into a (U, k) table per modality (each user with its own items),
and after every T-th batch of an epoch the graphs are rebuilt from the table (users not yet seen in a batch have
no entries). Both keep their state in buffers, so checkpoints resume exactly and a rebuilt model ranks with the
graphs it was saved with; in "authors" mode the lists hold at most k (2T - 1) E pairs (E training pairs), more
only when no rebuild ever happens (an epoch of at most T batches), and those are never read, so they are dropped.

Scoring: a fresh forward pass in evaluation mode (no dropout), with the current augmented graphs (``test``,
L301-306). The authors' evaluation ranks every item but the training items and computes NDCG with the NGCF formula
(``ndcg="ngcf"`` of :func:`mmrec_fast.evaluate.evaluate`; the trainer's default is the standard form).

Defaults are ``MMSSL/utility/parser.py``'s: d 64 (embed_size), 2 id layers (weight_size [64, 64]), 4 heads,
id_cat_rate 0.36, model_cat_rate 0.55, drop_rate 0.2, tau 0.5, cl_rate 0.03, regs[0] 1e-5, feat_reg_decay 1e-5,
G_rate 1e-4, gp_rate 1 (times the fixed LAMBDA 0.3), D_lr 3e-4, G_drop1 0.31, G_drop2 0.5, real_data_tau 0.005,
log_log_scale 1e-5, ui_pre_scale 100, T 1, m_topk_rate 1e-4; Xavier-uniform id tables and weights. Training
defaults: AdamW lr 5.5e-4 with weight decay 0.01, batch 1024, early stopping on valid Recall@20 once 8 validations
have not improved it (the authors' loop, L483-493, breaks at the first non-improving validation after its counter
reached early_stopping_patience = 7: the 8th), seed 2022.

Left out, as they change neither the loss nor the ranking: ``common_trans``, ``w_k`` (its product is overwritten
by the K = Q line), ``w_v``, ``w_self_attention_item`` / ``_user``, ``batch_norm`` and the trainable
``image_embedding`` / ``text_embedding`` (never used: no gradient, so AdamW never touches them), and the unused
helpers (``sample_topk``, ``weighted_sum``, the reward / fake-gene losses, ``build_sim``). Where this differs from the
authors' code:

* modalities: any non-empty subset of image, text, audio, in that order (the authors': image and text; TikTok here
  has image and audio, which take their places); every per-modality piece above runs for each, the fake rows are
  [S_1; ..; S_M] and the real rows repeat M times (with one modality the attention's softmax is 1);
* the top-k of the augmentation excludes the training items (``topk_scores(exclude=...)``, ties to the lower index);
  the authors' top-k over S_m could pick one (a zero) only where fewer than k other items score above zero;
* the random draws (dropout, Gumbel noise, interpolation weights, batches) come from torch's CPU generators, not
  the authors' CUDA and Python ones; in a step: the first forward's dropout, D's dropout on the fake rows, the
  noise, D's dropout on the real rows, the interpolation weights, D's dropout at x_hat, the second forward's
  dropout, D's dropout in the generator term (the same on every backend);
* the epoch's "loss" in run records is the sum of the logged terms, D's loss ("disc", dominated by the gradient
  penalty: |grad_x D| is in the thousands with D's x100 output) included; the model's loss is the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .. import backends
from ..graph import Graph
from ..ops import info_nce, masked_similarity, spmm, topk_scores
from ..ops.masked_similarity import SUPPORT as masked_similarity_support
from . import losses
from .base import ModelConfig, Recommender, finite_values, option, rows

#: the degree epsilon of every MMSSL graph ((deg + 1e-8)^-1/2, ``csr_norm``)
DEGREE_EPS = 1e-8
def section(name: str):
    """A named range of the profiler's trace (``mmssl.<name>``; benchmarks/bench_models.py's epoch profile sorts an
    epoch's time into them, the backward included); nearly free without a profiler."""
    return torch.profiler.record_function(f"mmssl.{name}")


#: the gradient penalty's fixed factor (``LAMBDA`` in ``gradient_penalty``), times ``gp_rate``
GP_LAMBDA = 0.3


class Discriminator(torch.nn.Module):
    """MMSSL's discriminator over item rows of length I (see the module docstring): its first layer (``first``;
    the weight stored transposed, ``weight1_t`` (I, I/4), which the low-rank path reads by rows) and the rest
    (:meth:`rest`), so that a caller can apply the first layer to rows in another form."""

    def __init__(self, num_items: int, dropout1: float, dropout2: float):
        super().__init__()
        hidden1, hidden2 = int(num_items / 4), int(num_items / 8)
        weight1 = torch.nn.init.kaiming_normal_(torch.empty(hidden1, num_items))  # the authors' weights_init
        self.weight1_t = torch.nn.Parameter(weight1.T.contiguous())
        self.bias1 = torch.nn.Parameter(torch.zeros(hidden1))
        self.norm1 = torch.nn.BatchNorm1d(hidden1)
        self.layer2 = torch.nn.Linear(hidden1, hidden2)
        self.norm2 = torch.nn.BatchNorm1d(hidden2)
        self.layer3 = torch.nn.Linear(hidden2, 1)
        self.dropout1, self.dropout2 = dropout1, dropout2
        for layer in (self.layer2, self.layer3):
            torch.nn.init.kaiming_normal_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    @property
    def weight1(self) -> torch.Tensor:
        """W_1 (I/4, I), a view of ``weight1_t``."""
        return self.weight1_t.T

    def first(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """(n, I) rows -> (n, I/4) = x W_1^T + b_1."""
        if frozen:
            return F.linear(x, self.weight1.detach(), self.bias1.detach())
        return F.linear(x, self.weight1, self.bias1)

    def rest(self, h1: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """(n, I/4) first-layer outputs -> (n,) D values. ``frozen``: the parameters as constants (no gradient
        to them). The identity LeakyReLUs are left out; batch norms update their running statistics as the
        authors' modules do in training mode."""
        use = (lambda t: t.detach()) if frozen else (lambda t: t)  # noqa: E731
        h = self._norm(self.norm1, h1, use)
        h = F.dropout(h, self.dropout1, self.training)
        h = self._norm(self.norm2, F.linear(h, use(self.layer2.weight), use(self.layer2.bias)), use)
        h = F.dropout(h, self.dropout2, self.training)
        h = F.linear(h, use(self.layer3.weight), use(self.layer3.bias))
        return 100 * torch.sigmoid(h).view(-1)

    def _norm(self, norm: torch.nn.BatchNorm1d, h: torch.Tensor, use) -> torch.Tensor:
        if self.training:
            norm.num_batches_tracked.add_(1)
        return F.batch_norm(h, norm.running_mean, norm.running_var, use(norm.weight), use(norm.bias), self.training,
                            norm.momentum, norm.eps)  # fmt: skip

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """(n, I) rows -> (n,) D values (the authors' module)."""
        return self.rest(self.first(x, frozen), frozen)


def log_eps_shift(row_losses: torch.Tensor, eps: float) -> torch.Tensor:
    """What the authors' -log(p + eps) takes off a row loss l = -log p: log1p(eps e^l) (so their loss is l minus
    this), elementwise."""
    return torch.log1p(eps * torch.exp(row_losses))


class _ProductRowNorms(torch.autograd.Function):
    """|a_i b| (n,) for a (n, H), b (H, K), through the Gram matrix b b^T (H, H) instead of the (n, K) product:
    2 H^2 K + 2 n H^2 operations forward and backward instead of 3 n H K (the gradient penalty's |grad_x D| with
    a = dD/dh_1, b = W_1: 49 instead of 69 GMAC a batch on TikTok). Backward: grad_a = (g / |.|) a G,
    grad_b = 2 (a^T diag(g / (2 |.|)) a) b; a zero norm has gradient 0 (as torch's norm)."""

    @staticmethod
    def forward(ctx, a, b):
        a_gram = a @ (b @ b.T)
        norms = (a_gram * a).sum(1).clamp_min(0).sqrt()
        ctx.save_for_backward(a, b, a_gram, norms)
        return norms

    @staticmethod
    def backward(ctx, grad):
        a, b, a_gram, norms = ctx.saved_tensors
        scale = torch.where(norms > 0, grad / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(norms))
        grad_a = scale.unsqueeze(1) * a_gram if ctx.needs_input_grad[0] else None
        grad_b = None
        if ctx.needs_input_grad[1]:
            outer = (a * scale.unsqueeze(1)).T @ a  # (H, H), symmetric
            grad_b = (b.T @ outer).T if b.T.is_contiguous() else outer @ b  # in b's layout
        return grad_a, grad_b


def product_row_norms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i b|_2 for every row i: by the Gram matrix where that takes fewer operations, else directly."""
    (n, H), K = a.shape, b.shape[1]
    if 2 * H * H * (K + n) < 3 * n * H * K:
        return _ProductRowNorms.apply(a, b)
    return (a @ b).norm(2, dim=1)


class MMSSL(Recommender):
    """MMSSL (see the module docstring).

    Args:
        dataset: its training pairs (the graphs and the masks) and item features (image / text / audio).
        config: :class:`MMSSL.Config`; backend, **changes: as :class:`~mmrec_fast.models.Recommender`.
    """

    name = "mmssl"
    summary = ("MMSSL: feature hops + modality id views over augmented graphs, adversarial structure learning "
               "(WGAN-GP discriminator), cross-modal contrastive loss (WWW 2023)")  # fmt: skip
    ops = ("propagate", "masked_similarity", "info_nce", "topk_scores")
    #: the authors ship no grid: MMSSL/utility/parser.py holds one default per argument (no lists, no ranges)
    search_space = {}
    search_space_source = "none: HKUDS/MMSSL MMSSL/utility/parser.py (commit 136c4a3b) has single defaults; give --grid"
    batch_kind = "users"
    batch_negatives = True
    supported_modalities = ("image", "text", "audio")

    @dataclass(frozen=True)
    class Config(ModelConfig):
        dim: int = option(64, "embedding size d (the authors' embed_size)", minimum=1)
        id_layers: int = option(2, "id layers over ui / iu, the softmax on the last (len(weight_size))", minimum=0)
        heads: int = option(4, "attention heads (head_num); must divide dim", minimum=1)
        attention: Literal["authors", "standard"] = option(
            "authors", "the authors' attention (K = Q, value of the query: the identity on v) or standard attention")
        id_cat_rate: float = option(0.36, "weight of the normalised attention output added to the id tables", minimum=0.0)
        model_cat_rate: float = option(0.55, "weight of each normalised feature hop added to the output", minimum=0.0)
        dropout: float = option(0.2, "dropout of the projected item features (drop_rate)", minimum=0.0, maximum=0.99)
        temperature: float = option(0.5, "temperature of the contrastive loss (tau)", above=0.0)
        cl_rate: float = option(0.03, "weight of the contrastive loss", minimum=0.0)
        log_eps: float = option(1e-8, "added to the contrastive probability inside the log (the authors'); 0: -log p",
                                minimum=0.0)  # fmt: skip
        reg_weight: float = option(1e-5, "weight of the L2 penalty on the batch rows (regs[0])", minimum=0.0)
        feat_reg_weight: float = option(1e-5, "weight of the L2 penalty on the feature hops (feat_reg_decay)", minimum=0.0)
        g_rate: float = option(1e-4, "weight of the generator term (G_rate)", minimum=0.0)
        gp_rate: float = option(1.0, "weight of the gradient penalty (times the authors' fixed 0.3)", minimum=0.0)
        d_lr: float = option(3e-4, "learning rate of the discriminator's Adam, betas (0.5, 0.9) (D_lr)", above=0.0)
        d_dropout1: float = option(0.31, "discriminator dropout after its first layer (G_drop1)", minimum=0.0,
                                   maximum=0.99)  # fmt: skip
        d_dropout2: float = option(0.5, "discriminator dropout after its second layer (G_drop2)", minimum=0.0,
                                   maximum=0.99)  # fmt: skip
        real_tau: float = option(0.005, "temperature of the Gumbel noise of the real rows (real_data_tau)", above=0.0)
        gumbel_scale: float = option(1e-5, "scale of the Gumbel noise of the real rows (log_log_scale)", minimum=0.0)
        ui_pre_scale: float = option(100.0, "weight of the final embeddings' rows in the real rows", minimum=0.0)
        augment: Literal["authors", "persistent"] = option(
            "authors", "augmented graphs: the authors' schedule (empty with the defaults) or a per-user top-k table")
        augment_interval: int = option(1, "batches between rebuilds of the augmented graphs (T)", minimum=1)
        augment_topk_rate: float = option(1e-4, "top-k of the augmentation as a share of the items (m_topk_rate)",
                                          minimum=0.0, maximum=1.0)  # fmt: skip
        modalities: tuple[str, ...] | None = option(
            None, "modalities to use among image, text, audio (default: all the dataset has)")

    @classmethod
    def train_defaults(cls) -> dict:
        return {"optimizer": "adamw", "lr": 5.5e-4, "weight_decay": 0.01, "batch_size": 1024,
                "valid_metric": "recall@20", "patience": 8, "seed": 2022, "fused_optimizer": True}  # fmt: skip

    def __init__(self, dataset, config: Config | None = None, *, backend: str | None = None, **changes):
        super().__init__(dataset, config, backend=backend, **changes)
        c = self.config
        U, I, M, d = self.num_users, self.num_items, len(self.modalities), c.dim
        if d % c.heads:
            raise ValueError(f"MMSSL: heads ({c.heads}) must divide dim ({d})")
        if I < 8:
            raise ValueError(f"MMSSL: the discriminator's layers have I/4 and I/8 units; {I} items are too few")
        pairs = dataset.train
        self.ui_graph = Graph.from_edge_index(torch.stack([pairs.users, pairs.items]), shape=(U, I), norm="left",
                                              eps=DEGREE_EPS, duplicates="collapse")  # fmt: skip
        self.iu_graph = Graph.from_edge_index(torch.stack([pairs.items, pairs.users]), shape=(I, U), norm="left",
                                              eps=DEGREE_EPS, duplicates="collapse")  # fmt: skip
        self.user_embedding = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(U, d)))
        self.item_embedding = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(I, d)))
        self.project = torch.nn.ModuleDict()
        for modality in self.modalities:
            features = dataset.features[modality]
            self.register_buffer(f"{modality}_features", features.clone(), persistent=False)
            layer = torch.nn.Linear(features.shape[1], d)
            torch.nn.init.xavier_uniform_(layer.weight)
            self.project[modality] = layer
        self.w_q = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(d, d)))
        if c.attention == "standard":
            self.w_k = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(d, d)))
        self.w_cat = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(c.heads * d, d)))
        self.discriminator = Discriminator(I, c.d_dropout1, c.d_dropout2)
        # the augmentation: k, its state (buffers: in checkpoints) and the graphs made from it
        rate_k = int(I * c.augment_topk_rate)
        self.augment_k = min(I, rate_k if c.augment == "authors" else max(1, rate_k))
        self.register_buffer("augment_initial", torch.ones((), dtype=torch.bool))  # still the authors' ui / iu
        if c.augment == "authors":
            capacity = self.augment_k * len(pairs) * (2 * c.augment_interval - 1)
            self.register_buffer("augment_pending", torch.zeros(M, 2, capacity, dtype=torch.int64))
            self.register_buffer("augment_pending_count", torch.zeros((), dtype=torch.int64))
            self.register_buffer("augment_pairs", torch.zeros(M, 2, capacity, dtype=torch.int64))
            self.register_buffer("augment_pairs_count", torch.zeros((), dtype=torch.int64))
        else:
            self.register_buffer("augment_table", torch.full((M, U, self.augment_k), -1, dtype=torch.int64))
            self.register_buffer("augment_graph_table", torch.full((M, U, self.augment_k), -1, dtype=torch.int64))
        self._batch_index = 0  # the batch of the epoch (the authors' idx); pre_epoch resets it
        self._set_augmented_graphs()
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._set_augmented_graphs())

    # -- the augmented graphs -------------------------------------------------------------------------------------
    def _set_augmented_graphs(self) -> None:
        """aug_ui_<m> / aug_iu_<m> from the augmentation state (the initial ui / iu, or the stored pairs)."""
        U, I = self.num_users, self.num_items
        for k, modality in enumerate(self.modalities):
            if bool(self.augment_initial):
                ui, iu = self.ui_graph, self.iu_graph
            else:
                if self.config.augment == "authors":
                    pair_users, pair_items = self.augment_pairs[k, :, : int(self.augment_pairs_count)]
                else:
                    table = self.augment_graph_table[k]
                    kept = table >= 0
                    pair_users = torch.arange(U, device=table.device).unsqueeze(1).expand_as(table)[kept]
                    pair_items = table[kept]
                ui = Graph.from_edge_index(torch.stack([pair_users, pair_items]), shape=(U, I), norm="left",
                                           eps=DEGREE_EPS, duplicates="sum")  # fmt: skip
                iu = Graph.from_edge_index(torch.stack([pair_items, pair_users]), shape=(I, U), norm="left",
                                           eps=DEGREE_EPS, duplicates="sum")  # fmt: skip
            setattr(self, f"aug_ui_{modality}", ui)
            setattr(self, f"aug_iu_{modality}", iu)

    def pre_epoch(self, epoch: int) -> None:
        self._batch_index = 0

    def update_augmentation(self, users: torch.Tensor, top_items: list[torch.Tensor]) -> None:
        """After a batch's model forward pass: the authors' append-or-rebuild step, or the table's update.
        top_items: per modality (B, k) int64 (-1 where a user has fewer candidates)."""
        idx, T = self._batch_index, self.config.augment_interval
        self._batch_index += 1
        if self.config.augment == "authors":
            if idx % T == 0 and idx != 0:
                count = int(self.augment_pending_count)
                self.augment_pairs[:, :, :count] = self.augment_pending[:, :, :count]
                self.augment_pairs_count.fill_(count)
                self.augment_pending_count.zero_()
                self.augment_initial.fill_(False)
                self._set_augmented_graphs()
            elif self.augment_k > 0:
                start = int(self.augment_pending_count)
                new = users.numel() * self.augment_k
                if start + new > self.augment_pending.shape[2]:  # no rebuild can ever read them (docstring)
                    return
                # -1 marks a user with fewer than k candidate items: the same slots in every modality
                keep = top_items[0].reshape(-1) >= 0
                end = start + int(keep.sum())
                pair_users = users.repeat(self.augment_k)[keep]  # the authors' tiling of the user list (L401)
                for k, top in enumerate(top_items):
                    self.augment_pending[k, 0, start:end] = pair_users
                    self.augment_pending[k, 1, start:end] = top.reshape(-1)[keep]
                self.augment_pending_count.fill_(end)
            return
        for k, top in enumerate(top_items):
            self.augment_table[k, users] = top
        if (idx + 1) % T == 0:
            self.augment_graph_table.copy_(self.augment_table)
            self.augment_initial.fill_(False)
            self._set_augmented_graphs()

    # -- the forward pass -----------------------------------------------------------------------------------------
    def attention(self, views: torch.Tensor) -> torch.Tensor:
        """views: (M, N, d) modality id views -> (N, d), the mean over the query modalities of the attention."""
        M, N, d = views.shape
        H = self.config.heads
        dh = d // H
        Q = (views @ self.w_q).reshape(M, N, H, dh).permute(2, 0, 1, 3)  # (H, M, N, dh)
        scale = math.sqrt(dh)
        if self.config.attention == "authors":
            K = Q.reshape(M, N, H, dh).permute(2, 0, 1, 3)  # the authors' K: Q reshaped once more (L150)
            weights = torch.softmax(torch.einsum("hqnc,hknc->hqkn", Q, K) / scale, dim=2)  # (H, M_q, M_k, N)
            # V broadcasts along the query axis: head h of query q is (sum_k weights) v_q
            Z = weights.sum(2).unsqueeze(-1) * views.unsqueeze(0)  # (H, M, N, d)
        else:
            K = (views @ self.w_k).reshape(M, N, H, dh).permute(2, 0, 1, 3)
            weights = torch.softmax(torch.einsum("hqnc,hknc->hqkn", Q, K) / scale, dim=2)
            Z = torch.einsum("hqkn,knd->hqnd", weights, views)
        Z = Z.permute(1, 2, 0, 3).reshape(M, N, H * d) @ self.w_cat  # heads side by side, then W_cat
        return Z.mean(0)

    def propagate_all(self) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Every output of the forward pass: "users" (U, d), "items" (I, d), the feature hops "user_feats" /
        "item_feats" and the id views "user_views" (lists over the modalities)."""
        with section("propagation"):
            return self._propagate_all()

    def _propagate_all(self) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        c = self.config
        d, M = c.dim, len(self.modalities)
        projected = [F.dropout(self.project[m](getattr(self, f"{m}_features")), c.dropout, self.training)
                     for m in self.modalities]  # fmt: skip
        user_feats = spmm(self.ui_graph, torch.cat(projected, dim=1), backend=self.backend)  # (U, M d)
        item_feats = spmm(self.iu_graph, user_feats, backend=self.backend)  # (I, M d)
        user_views = [spmm(getattr(self, f"aug_ui_{m}"), self.item_embedding, backend=self.backend) for m in self.modalities]
        item_views = [spmm(getattr(self, f"aug_iu_{m}"), self.user_embedding, backend=self.backend) for m in self.modalities]
        u = self.user_embedding + c.id_cat_rate * F.normalize(self.attention(torch.stack(user_views)), dim=1)
        i = self.item_embedding + c.id_cat_rate * F.normalize(self.attention(torch.stack(item_views)), dim=1)
        user_layers, item_layers = [u], [i]
        for layer in range(c.id_layers):
            u = spmm(self.ui_graph, i, backend=self.backend)
            if layer == c.id_layers - 1:
                u = torch.softmax(u, dim=-1)
            i = spmm(self.iu_graph, u, backend=self.backend)
            if layer == c.id_layers - 1:
                i = torch.softmax(i, dim=-1)
            user_layers.append(u)
            item_layers.append(i)
        users, items = torch.stack(user_layers).mean(0), torch.stack(item_layers).mean(0)
        user_feats, item_feats = list(user_feats.split(d, dim=1)), list(item_feats.split(d, dim=1))
        for m in range(M):
            users = users + c.model_cat_rate * F.normalize(user_feats[m], dim=1)
            items = items + c.model_cat_rate * F.normalize(item_feats[m], dim=1)
        return {"users": users, "items": items, "user_feats": user_feats, "item_feats": item_feats,
                "user_views": user_views}  # fmt: skip

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)) of a fresh forward pass (dropout in training mode)."""
        out = self.propagate_all()
        return out["users"], out["items"]

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.forward()

    # -- the pieces of a step -------------------------------------------------------------------------------------
    def batch_exclusion(self, users: torch.Tensor) -> Graph:
        """The (B, I) binary graph of the batch users' training items (rows of R's CSR, a user's row each time it
        appears)."""
        rowptr, col = self.ui_graph.rowptr, self.ui_graph.col
        starts = rowptr.index_select(0, users)
        counts = rowptr.index_select(0, users + 1) - starts
        batch_rowptr = torch.zeros(users.numel() + 1, dtype=torch.int64, device=users.device)
        batch_rowptr[1:] = torch.cumsum(counts, 0)
        owner = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        position = starts.index_select(0, owner) + torch.arange(owner.numel(), device=users.device) - batch_rowptr.index_select(0, owner)
        return Graph(batch_rowptr, col.index_select(0, position), shape=(users.numel(), self.num_items))

    def factorized(self) -> bool:
        """Whether the discriminator's inputs are handled in their factorized form (the masked_similarity backend
        is not the reference); the reference backend runs the authors' formulation on dense rows."""
        probe = self.user_embedding
        return backends.resolve(masked_similarity_support, probe, self.backend) != "reference"

    def fake_rows(self, out: dict, users: torch.Tensor, exclude: Graph, frozen: bool, factorized: bool) -> torch.Tensor:
        """[S_1; ..; S_M]: (M B, I) dense rows, or (factorized) their images under D's first layer (M B, I/4) by
        the low-rank masked_similarity."""
        D = self.discriminator
        if factorized:
            weight, bias = (D.weight1.detach(), D.bias1.detach()) if frozen else (D.weight1, D.bias1)
        else:
            weight = bias = None
        with section("similarity_rows"):
            return torch.cat([masked_similarity(rows(user_feats, users), item_feats, exclude, weight, bias, backend=self.backend)
                              for user_feats, item_feats in zip(out["user_feats"], out["item_feats"])])  # fmt: skip

    def real_rows(self, out: dict, users: torch.Tensor, exclude: Graph) -> torch.Tensor:
        """(B, I): normalize(softmax(R_b + (gumbel_scale / real_tau) g) + ui_pre_scale S_ui), without gradient."""
        c = self.config
        with torch.no_grad(), section("similarity_rows"):
            similarity = masked_similarity(rows(out["users"], users), out["items"], exclude, backend=self.backend)
            noise = torch.rand(similarity.shape, dtype=similarity.dtype, device=similarity.device)
            logits = -(c.gumbel_scale / c.real_tau) * torch.log(-torch.log(noise + 1e-8) + 1e-8)
            row, col, _ = exclude.coo()
            logits.index_put_((row, col), torch.ones((), dtype=logits.dtype, device=logits.device), accumulate=True)
            return F.normalize(torch.softmax(logits, dim=1) + c.ui_pre_scale * similarity, dim=1)

    def discriminator_loss(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step 1 and 2 of a batch (module docstring): {"real", "fake", "gp"} (gp times gp_rate), whose sum is D's
        loss; gradients reach D's parameters only. The reference backend computes them as the authors: D on the
        dense rows, the real rows repeated, the interpolates x_hat formed and grad_x D by autograd at x_hat; the
        others through D's first layer: W_1 applied to the rows' low-rank form, to the real rows once, x_hat's
        first-layer output as the same mix of the two, and |grad_x D| = |(dD / dh_1) W_1| by the Gram matrix of W_1
        (:func:`product_row_norms`). The same values, and the same random draws in the same order."""
        users = batch[0]
        M = len(self.modalities)
        factorized = self.factorized()
        with torch.no_grad():
            out = self.propagate_all()
        exclude = self.batch_exclusion(users)
        D = self.discriminator
        fake = self.fake_rows(out, users, exclude, frozen=False, factorized=factorized)
        with section("discriminator"):
            loss_fake = (D.rest(fake) if factorized else D(fake)).mean()
        real = self.real_rows(out, users, exclude)
        with section("discriminator"):
            real = D.first(real).repeat(M, 1) if factorized else real.repeat(M, 1)  # the authors' cat((u_ui, u_ui))
            loss_real = -(D.rest(real) if factorized else D(real)).mean()
            alpha = torch.rand(M * users.numel(), 1, dtype=fake.dtype, device=fake.device)
            if factorized:  # x_hat enters D through h_1 = x_hat W_1^T + b_1 = alpha h_1(real) + (1 - alpha) h_1(fake)
                h1 = alpha * real + (1 - alpha) * fake
                (grad_h1,) = torch.autograd.grad(D.rest(h1).sum(), h1, create_graph=True)
                norms = product_row_norms(grad_h1, D.weight1)
            else:
                x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_()
                (grad_x,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
                norms = grad_x.norm(2, dim=1)
            gp = ((norms - 1) ** 2).mean() * GP_LAMBDA
        return {"real": loss_real, "fake": loss_fake, "gp": self.config.gp_rate * gp}

    def _model_terms(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The model step's terms and, per modality, the batch users' top-k items of S_m (for the augmentation)."""
        users, positives, negatives = batch[0], batch[1], batch[2]
        c = self.config
        out = self.propagate_all()
        u = rows(out["users"], users)
        p, n = rows(out["items"], positives), rows(out["items"], negatives)
        terms = {"bpr": losses.bpr((u * p).sum(1), (u * n).sum(1)), "reg": c.reg_weight * losses.l2_squared(u, p, n)}
        exclude = self.batch_exclusion(users)
        top_items = []
        if self.training and self.augment_k > 0:
            with section("augmentation"):
                top_items = self._top_items(out, users, exclude)
        squares = sum(f.square().sum() for f in out["item_feats"]) + sum(f.square().sum() for f in out["user_feats"])
        terms["feat_reg"] = c.feat_reg_weight * squares / (2 * self.num_items)
        terms["cl"] = c.cl_rate * sum(self.contrastive(rows(view, users), u) for view in out["user_views"])
        if c.g_rate > 0:
            factorized = self.factorized()
            fake = self.fake_rows(out, users, exclude, frozen=True, factorized=factorized)
            D = self.discriminator
            with section("discriminator"):
                terms["gen"] = c.g_rate * -(D.rest(fake, frozen=True) if factorized else D(fake, frozen=True)).mean()
        else:
            terms["gen"] = out["users"].new_zeros(())
        return terms, top_items

    def _top_items(self, out: dict, users: torch.Tensor, exclude: Graph) -> list[torch.Tensor]:
        """Per modality, each batch user's augment_k best items of S_m, its training items left out: (B, k)."""
        return [topk_scores(rows(user_feats, users).detach(), item_feats.detach(), self.augment_k, exclude=exclude,
                            backend=self.backend)[1] for user_feats, item_feats in zip(out["user_feats"], out["item_feats"])]  # fmt: skip

    def contrastive(self, views: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """mean_b -log(p_b + log_eps) of the GRACE loss with intra-view negatives, anchors ``views`` (B, d)."""
        with section("contrastive"):
            return self._contrastive(views, final)

    def _contrastive(self, views: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.log_eps == 0:
            return info_nce(views, final, c.temperature, intra_view_negatives=True, backend=self.backend)
        row_losses = self.contrastive_rows(views, final)
        return (row_losses - log_eps_shift(row_losses, c.log_eps)).mean()

    def contrastive_rows(self, views: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """(B,) the exact row losses l_b = -log p_b of the GRACE loss with intra-view negatives, anchors ``views``
        (B, d) against ``final`` (B, d)."""
        return info_nce(views, final, self.config.temperature, intra_view_negatives=True, reduction="none",
                        backend=self.backend)  # fmt: skip

    # -- the interface --------------------------------------------------------------------------------------------
    def losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch: (3, B) int64 [users; positive items; negative items] -> the model step's {"bpr", "reg",
        "feat_reg", "cl", "gen"}, weights applied."""
        return self._model_terms(batch)[0]

    def optimizers(self, train_config) -> dict[str, torch.optim.Optimizer]:
        """{"discriminator": Adam(lr d_lr, betas (0.5, 0.9)) over D, "model": train_config's optimizer (AdamW) over
        the rest}; fused when ``train_config.fused_optimizer`` (MMSSL's training default: the for-each form spent
        0.7 s a step on W_1's 11M entries on TikTok)."""
        from ..train import make_optimizer

        discriminator = list(self.discriminator.parameters())
        own = {id(p) for p in discriminator}
        model = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        return {"discriminator": make_optimizer(discriminator, train_config, "adam", lr=self.config.d_lr, betas=(0.5, 0.9),
                                                weight_decay=0.0),
                "model": make_optimizer(model, train_config)}  # fmt: skip

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        """The discriminator's step, then the model's (module docstring); returns the model's terms and "disc",
        D's loss (each checked finite before its optimizer steps). With ``g_rate=0`` the discriminator cannot
        change the model, and its step is skipped (no "disc"; the ablation of the adversarial part, at a fraction
        of the cost)."""
        disc = {}
        if self.config.g_rate > 0:
            d_terms = self.discriminator_loss(batch)
            d_loss = sum(d_terms.values())
            disc = finite_values({"disc": d_loss})
            with section("optimizer"):
                optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            with section("optimizer"):
                optimizers["discriminator"].step()
        with section("optimizer"):
            optimizers["model"].zero_grad(set_to_none=True)
        terms, top_items = self._model_terms(batch)
        values = finite_values(terms)
        with section("augmentation"):
            self.update_augmentation(batch[0], top_items)
        sum(terms.values()).backward()
        with section("optimizer"):
            optimizers["model"].step()
        return {**values, **disc}
