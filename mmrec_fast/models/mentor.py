"""MENTOR (Xu et al., "MENTOR: Multi-level Self-supervised Learning for Multimodal Recommendation", arXiv
2402.19407) on :func:`mmrec_fast.propagate`, :func:`mmrec_fast.knn_graph` and :func:`mmrec_fast.info_nce`.

Graph modules, each with its own parameters: for every modality m a clean one and two noise views (n1, n2), and
one for the item ids: 3 M + 1 modules (seven for image + text, as the authors'). Module k, with P_k (U, d) its
user preference table and F_k its item input (the raw features F_m, constant, or for the id module a free (I, d)
table), computes

    x = normalize([P_k; MLP_1(leaky_relu(MLP(F_k)))])       (U + I, d); MLP: d_F -> 4d, MLP_1: 4d -> d
    h_1 = A x,  h_2 = A h_1,  out_k = x + h_1 + h_2          L = 2 layers, summed; A = D^-1/2 A D^-1/2 of the
                                                             training pairs, repeats counted, no epsilon
    noise views: h_l <- h_l + 0.1 sign(h_l) normalize(u_l),  u_l ~ U(0, 1)^(U + I, d), after every layer

With r_m, g, n1_m, n2_m the outputs of the clean, id and noise modules, w (U, M) per-user modality weights and S
the frozen kNN item graph (:mod:`.item_graph`: k = 10, 0.1 image + 0.9 text, every edge 1 / (k + 1e-7)), each
of six views X has users X_U and items X_I + S X_I (one item-graph layer), (M d) columns:

    R:   users [w_1 r_1 | ... | w_M r_M],  items [r_1 | ... | r_M]          the representation that is scored
    G:   [g | ... | g] (users and items)                                    the id "guide"
    V_m: [r_m | ... | r_m]                                                  one per modality
    N_1, N_2: as R with n1_m, n2_m                                          the noise views

    score(u, i) = R_U[u] . R_I[i]
    "bpr"    = mean_b -log2 sigmoid(s(u, p) - s(u, n))                      base 2, as the authors'
    "reg"    = reg_weight (sum_m mean(P_m[u]^2) + mean(w^2))                P_m of the clean modules, batch users
    "align"  = align_weight sum_{X != Y in {R, G, V_1, ..., V_M}} |var X - var Y| + |mean X - mean Y|
               (var, unbiased, and mean over every entry of the whole (U + I, M d) matrices; 6 pairs for M = 2)
    "mask_f" = mask_weight_f [(1 - mean_i cos(dropout(R_I)_i, f(R_I)_i)) + (1 - mean_u cos(dropout(R_U)_u, f(R_U)_u))]
               f a Linear(M d, M d), dropout p = ``dropout`` (always on)
    "mask_g" = mask_weight_g [InfoNCE(N_1U, N_2U) + InfoNCE(N_1I, N_2I)],
               InfoNCE(a, b) = mean_i -log(exp(cos(a_i, b_i) / t) / sum_j exp(cos(a_i, b_j) / t))
               over ALL users and ALL items (not the batch): :func:`info_nce` with B = U and B = I, in O(B d) memory
               on the native and Triton backends (the authors' form holds U x U and I x I logits: 5.1 GB per fp32
               U x U matrix on Sports); no U x U or I x I tensor exists on those paths, forward or backward.

``mask_f`` has no gradient in the authors' code: both of its operands are computed under ``torch.no_grad()``
(``src/models/mentor.py`` L369-382: ``with torch.no_grad(): u_temp, i_temp = self.user_rep.clone(), ...``), so the
term only adds a constant to the loss and its Linear f is never trained. That is the default here
(``mask_f_grad=False``: the term is computed, logged and summed, without gradient); ``mask_f_grad=True`` gives it
its gradient (into R and f), which is what the paper's "general feature enhancement" describes.

Scoring: as the authors' ``full_sort_predict`` (it reads ``self.result_embed``, set by the last forward pass), ranking
uses R **cached from the last training batch** (computed before that batch's optimizer step; kept in the
checkpoint); ``score_on="fresh"`` runs a new forward pass of the clean modules instead. An untrained model has no
cache and is scored fresh (the authors' would score by a random initial table).

Defaults are ``src/configs/model/MENTOR.yaml`` and ``overall.yaml`` (Jinfeng-Xu/MENTOR): d 64, L 2, one item-graph
layer, k 10, mm_image_weight 0.1, reg_weight 1e-3, dropout 0.5, mask_weight_f 1.5, mask_weight_g 1e-4 (grid
{1e-4, 1e-3}), align_weight 0.1, temperature 0.2 (grid {0.2, 0.4, 0.6}); P_k, the id table and w initialised
Xavier-normal (w then softmaxed over the modalities, ~1 / M each, and trained freely), PyTorch's default Linear
init; Adam lr 1e-4, no weight decay, batch 2048, negatives from the training items (MMRec's loader), early stopping
on valid **Recall@10** after 20 epochs, seed 999.

Left out, as they do not change the loss or the ranking: the per-item weights ``weight_i`` and ``MLP_user`` (never
used), the "dropped" edge lists (passed to every module and ignored), the user-user graph ``user_graph_dict`` (loaded
and re-sampled every epoch, never used), and the trainable ``image_embedding`` / ``text_embedding`` / ``*_trs``
(never used; the kNN graph is built from the raw features). Where this differs from the authors' code:

* modalities: any non-empty subset of image, text, audio (the authors': image and text); the views and the align
  pairs follow the rule above, the kNN fusion that of :mod:`.item_graph`;
* InfoNCE is the exact log-softmax (the authors' ``exp`` without max-subtraction overflows in float32 for t below
  ~0.0115; the same values otherwise);
* the noise views draw their noise for all views of a layer at once (another draw order than the authors', and
  their ``.cuda()`` on the noise makes it GPU-only); the kNN graph of an all-zero feature row has similarity 0, not
  NaN (see :func:`mmrec_fast.knn_graph`).

The modules are propagated as two matrices: the M + 1 clean modules side by side in one fused ``propagate`` call
(propagation is column-wise, so this is the per-module math), and the 2 M noise views side by side one layer at a
time (noise goes in between); the six views' item-graph products are one ``spmm`` over their distinct columns.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..graph import Graph
from ..ops import info_nce, propagate, spmm
from . import losses
from .base import LastBatchScoring, ModelConfig, option, rows
from .item_graph import knn_item_graph

#: the views of each modality's modules, in the order they are stacked
VIEWS = ("clean", "noise1", "noise2")


class GraphModule(torch.nn.Module):
    """One of MENTOR's graph modules (the authors' ``GCN``): a user preference table P (U, d) and the two-layer
    MLP that maps the item input (d_F) to d. Propagation is done by :class:`MENTOR`, over every module at once."""

    def __init__(self, num_users: int, input_dim: int, dim: int):
        super().__init__()
        self.preference = torch.nn.Parameter(_xavier_normal(num_users, dim))  # (U, d)
        self.mlp = torch.nn.Linear(input_dim, 4 * dim)
        self.mlp_1 = torch.nn.Linear(4 * dim, dim)


class MENTOR(LastBatchScoring):
    """MENTOR (see the module docstring).

    Args:
        dataset: its training pairs (the user-item graph) and item features (image / text / audio).
        config: :class:`MENTOR.Config`; backend, **changes: as :class:`~mmrec_fast.models.Recommender`.
    """

    name = "mentor"
    summary = ("MENTOR: 3M + 1 graph modules, kNN item graph, log2 BPR + align + feature / graph-noise "
               "self-supervision with full-population InfoNCE (arXiv 2402.19407)")  # fmt: skip
    ops = ("propagate", "info_nce", "knn")
    #: MENTOR.yaml's lists with more than one value (the other listed keys, lr 1e-4, reg_weight 1e-3, dropout 0.5,
    #: mask_weight_f 1.5, align_weight 0.1, hold one value each: the defaults), 6 settings
    search_space = {"mask_weight_g": ("1e-4", "1e-3"), "temperature": ("0.2", "0.4", "0.6")}
    search_space_source = "Jinfeng-Xu/MENTOR src/configs/model/MENTOR.yaml (commit 620c858a)"
    supported_modalities = ("image", "text", "audio")

    @dataclass(frozen=True)
    class Config(ModelConfig):
        dim: int = option(64, "embedding size d of every module (the authors' embedding_size / dim_latent)", minimum=1)
        num_layers: int = option(2, "layers of every graph module (summed with the input)", minimum=0)
        num_item_layers: int = option(1, "item-graph layers over the kNN graph (the authors' n_mm_layers)", minimum=0)
        knn_k: int = option(10, "neighbours per item in the kNN item graph", minimum=1)
        mm_image_weight: float = option(0.1, "weight of the image kNN graph in the fusion (the rest: the others)",
                                        minimum=0.0, maximum=1.0)  # fmt: skip
        reg_weight: float = option(1e-3, "weight of the reg term (preferences of the batch users, user weights)",
                                   minimum=0.0)  # fmt: skip
        align_weight: float = option(0.1, "weight of the align term (mean / variance matching of the views)", minimum=0.0)
        mask_weight_f: float = option(1.5, "weight of mask_f, the feature-dropout term", minimum=0.0)
        mask_weight_g: float = option(1e-4, "weight of mask_g, the noise-view InfoNCE (the authors' grid: 1e-4, 1e-3)",
                                      minimum=0.0)  # fmt: skip
        temperature: float = option(0.2, "temperature of mask_g's InfoNCE (the authors' grid: 0.2, 0.4, 0.6)", above=0.0)
        dropout: float = option(0.5, "dropout of mask_f's first operand", minimum=0.0, maximum=0.99)
        noise_scale: float = option(0.1, "size of the noise added after every layer of the noise views", minimum=0.0)
        mask_f_grad: bool = option(False, "give mask_f its gradient (the authors compute it under no_grad: none)")
        score_on: Literal["cached", "fresh"] = option(
            "cached", "rank by the last training batch's embeddings (the authors') or by a fresh forward pass")
        modalities: tuple[str, ...] | None = option(
            None, "modalities to use among image, text, audio (default: all the dataset has)")

    @classmethod
    def train_defaults(cls) -> dict:
        return {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "batch_size": 2048, "negatives": "train_items",
                "valid_metric": "recall@10", "patience": 20, "seed": 999}  # fmt: skip

    def __init__(self, dataset, config: Config | None = None, *, backend: str | None = None, **changes):
        super().__init__(dataset, config, backend=backend, **changes)
        c = self.config
        U, I, M, d = self.num_users, self.num_items, len(self.modalities), c.dim
        pairs = dataset.train
        # PyG's degree over the undirected edge list: repeated pairs counted, no epsilon (an isolated node gets 0)
        self.graph = Graph.bipartite(pairs.users, pairs.items, U, I, norm="sym", eps=0.0, duplicates="sum")
        raw = [dataset.features[m] for m in self.modalities]
        for modality, features in zip(self.modalities, raw):
            self.register_buffer(f"{modality}_features", features.clone(), persistent=False)
        self.item_graph = knn_item_graph(raw, self.modalities, c.knn_k, c.mm_image_weight, backend=backend)
        # module (m, view) for every modality and view, then the id module
        self.gcn = torch.nn.ModuleDict(
            {f"{m}_{view}": GraphModule(U, f.shape[1], d) for m, f in zip(self.modalities, raw) for view in VIEWS})
        self.id_embedding = torch.nn.Parameter(_xavier_normal(I, d))  # (I, d): the id module's item input
        self.gcn["id"] = GraphModule(U, d, d)
        self.user_weights = torch.nn.Parameter(torch.softmax(_xavier_normal(U, M, 1).squeeze(2), dim=1))  # (U, M)
        self.mask_mlp = torch.nn.Linear(M * d, M * d)  # mask_f's f
        self._init_last_batch_tables(M * d, M * d)  # the authors score by R of the last training batch

    # -- the graph modules ----------------------------------------------------------------------------------------
    @property
    def clean_names(self) -> list[str]:
        """The clean modules, in the order they are stacked: every modality's, then the id module."""
        return [f"{m}_clean" for m in self.modalities] + ["id"]

    @property
    def noise_names(self) -> list[str]:
        """The noise views, in the order they are stacked: n1 of every modality, then n2."""
        return [f"{m}_{view}" for view in VIEWS[1:] for m in self.modalities]

    def module_inputs(self, names: list[str]) -> torch.Tensor:
        """x = normalize([P_k; MLP_1(leaky_relu(MLP(F_k)))]) of the modules ``names``, side by side: (U + I, len * d).

        The first layers of the modules that share an item input (a modality's three) are one product, their
        weights stacked (the same values as one product each)."""
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(name.split("_")[0], []).append(name)  # "image_noise1" -> "image"; "id" -> "id"
        columns = {}
        for source, group in groups.items():
            item_input = self.id_embedding if source == "id" else getattr(self, f"{source}_features")
            modules = [self.gcn[name] for name in group]
            weight = torch.cat([module.mlp.weight for module in modules])
            bias = torch.cat([module.mlp.bias for module in modules])
            hidden = F.linear(item_input, weight, bias).split(4 * self.config.dim, dim=1)
            for name, module, part in zip(group, modules, hidden):
                items = module.mlp_1(F.leaky_relu(part))
                columns[name] = F.normalize(torch.cat([module.preference, items]), dim=1)
        return torch.cat([columns[name] for name in names], dim=1)

    def perturb(self, h: torch.Tensor) -> torch.Tensor:
        """h + noise_scale * sign(h) * normalize(u) per module block of d columns, u ~ U(0, 1) (one draw of h's
        shape)."""
        noise = F.normalize(torch.rand_like(h).unflatten(1, (-1, self.config.dim)), dim=-1).flatten(1)
        return h + self.config.noise_scale * torch.sign(h) * noise

    def propagate_modules(self, with_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(clean (U + I, (M + 1) d), noise views (U + I, 2 M d) or None): out_k of every module. The clean modules
        in one fused propagate call (layers summed); the noise views one layer at a time, noise after each."""
        c = self.config
        clean_width = len(self.clean_names) * c.dim
        x = self.module_inputs(self.clean_names + (self.noise_names if with_noise else []))
        clean = propagate(self.graph, x[:, :clean_width], c.num_layers, "sum", backend=self.backend)
        if not with_noise:
            return clean, None
        noise = h = x[:, clean_width:]
        for _ in range(c.num_layers):
            h = self.perturb(spmm(self.graph, h, backend=self.backend))
            noise = noise + h
        return clean, noise

    # -- the views ------------------------------------------------------------------------------------------------
    def _weighted(self, users: torch.Tensor) -> torch.Tensor:
        """users: (U, M d) -> [w_1 block_1 | ... | w_M block_M]."""
        M = len(self.modalities)
        return (users.unflatten(1, (M, -1)) * self.user_weights.unsqueeze(2)).flatten(1)

    def views(self, with_noise: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{view: (users, items)} of R, G, V_<m> (and N1, N2 with ``with_noise``), each (U, M d) and (I, M d)."""
        U, I, M, d = self.num_users, self.num_items, len(self.modalities), self.config.dim
        clean, noise = self.propagate_modules(with_noise)
        clean_users, clean_items = clean.split([U, I])
        r_users, r_items = clean_users[:, : M * d], clean_items[:, : M * d]
        g_users, g_items = clean_users[:, M * d :], clean_items[:, M * d :]
        parts = [clean_items]  # the item-graph inputs: [r_1..r_M | g], then the noise views'
        if with_noise:
            n_users, n_items = noise.split([U, I])
            parts.append(n_items)
        items_in = torch.cat(parts, dim=1)
        items = items_in + propagate(self.item_graph, items_in, self.config.num_item_layers, "last", backend=self.backend)
        r_items, g_items = items[:, : M * d], items[:, M * d : (M + 1) * d]
        out = {"R": (self._weighted(r_users), r_items), "G": (g_users.repeat(1, M), g_items.repeat(1, M))}
        for k, modality in enumerate(self.modalities):
            block = slice(k * d, (k + 1) * d)
            out[f"V_{modality}"] = (r_users[:, block].repeat(1, M), r_items[:, block].repeat(1, M))
        if with_noise:
            noise_items = items[:, (M + 1) * d :]
            for k, view in enumerate(("N1", "N2")):
                block = slice(k * M * d, (k + 1) * M * d)
                out[view] = (self._weighted(n_users[:, block]), noise_items[:, block])
        return out

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, M d), items (I, M d)): R of a fresh forward pass (clean modules only)."""
        return self.views(with_noise=False)["R"]

    # -- the losses -----------------------------------------------------------------------------------------------
    def losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch: (3, B) int64 [users; positive items; negative items] -> {"bpr", "reg", "align", "mask_f",
        "mask_g"}, weights applied (mask_f without gradient unless ``mask_f_grad``)."""
        users, positives, negatives = batch[0], batch[1], batch[2]
        c = self.config
        views = self.views()
        r_users, r_items = views["R"]
        self.remember_last_batch(r_users, r_items)
        u = rows(r_users, users)
        bpr = losses.bpr_log2((u * rows(r_items, positives)).sum(1), (u * rows(r_items, negatives)).sum(1))
        reg = sum(rows(self.gcn[f"{m}_clean"].preference, users).square().mean() for m in self.modalities)
        reg = c.reg_weight * (reg + self.user_weights.square().mean())
        stats = [self._moments(torch.cat(views[name])) for name in ["R", "G"] + [f"V_{m}" for m in self.modalities]]
        align = sum((va - vb).abs() + (ma - mb).abs() for (va, ma), (vb, mb) in itertools.combinations(stats, 2))
        with torch.set_grad_enabled(c.mask_f_grad and torch.is_grad_enabled()):
            mask_f = self._mask_f(r_users, r_items)
        n1_users, n1_items = views["N1"]
        n2_users, n2_items = views["N2"]
        mask_g = info_nce(n1_users, n2_users, c.temperature, backend=self.backend)
        mask_g = mask_g + info_nce(n1_items, n2_items, c.temperature, backend=self.backend)
        return {"bpr": bpr, "reg": reg, "align": c.align_weight * align, "mask_f": c.mask_weight_f * mask_f,
                "mask_g": c.mask_weight_g * mask_g}  # fmt: skip

    @staticmethod
    def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(var, mean) over every entry (torch.var: unbiased)."""
        return torch.var(x), torch.mean(x)

    def _mask_f(self, r_users: torch.Tensor, r_items: torch.Tensor) -> torch.Tensor:
        """(1 - mean cos(dropout(R_I), f(R_I))) + (1 - mean cos(dropout(R_U), f(R_U))), the authors' draw order
        (f of users, f of items, then the users' dropout and the items')."""
        f_users, f_items = self.mask_mlp(r_users), self.mask_mlp(r_items)
        dropped_users = F.dropout(r_users, self.config.dropout, training=True)
        dropped_items = F.dropout(r_items, self.config.dropout, training=True)
        item_term = 1 - F.cosine_similarity(dropped_items, f_items).mean()
        return item_term + (1 - F.cosine_similarity(dropped_users, f_users).mean())

    # -- ranking --------------------------------------------------------------------------------------------------
    def cached_tables(self, r_users: torch.Tensor, r_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last training batch's R, as it was: (users (U, M d), items (I, M d))."""
        return r_users, r_items


def _xavier_normal(*shape: int) -> torch.Tensor:
    """torch.nn.init.xavier_normal_ of a new tensor of ``shape`` (the authors' tables and weights)."""
    return torch.nn.init.xavier_normal_(torch.empty(*shape))
