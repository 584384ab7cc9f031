"""FREEDOM (Zhou and Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation", ACM MM 2023) on :func:`mmrec_fast.propagate`, :func:`mmrec_fast.knn_graph` and
:meth:`mmrec_fast.Graph.keep_edges`.

    S = sum_m w_m S_m                        the frozen kNN item graph of the raw features F_m (item_graph.py): top
                                             k = 10 cosine neighbours, itself included, every edge 1 / (k + 1e-7);
                                             w: 0.1 image, 0.9 text
    A_p                                      the user-item graph, pruned each epoch (below), normalised
                                             D^-1/2 A_p D^-1/2 with D = deg + 1e-7
    h = S^{L_S} E_items                      L_S = 1 item-graph layer
    [z_U; z_I] = mean_{l=0..L} A_p^l [E_users; E_items]   L = 2 user-item layers
    z_i <- z_i + h_i
    x_m = F_m W_m^T + c_m                    modality item embeddings (I, d); F_m trainable, initialised to the raw
                                             features (the authors' ``Embedding.from_pretrained(freeze=False)``)
    loss = bpr(z_u . z_p, z_u . z_n)                                  "bpr" (natural log, mean over the batch)
           + reg_weight * bpr(z_u . x_m,p, z_u . x_m,n)  for each m  "bpr_<m>"

Degree-sensitive edge pruning (``pre_epoch``): of the |E| training pairs, floor(|E| (1 - dropout)) are kept, drawn
without replacement by ``torch.multinomial`` with probabilities proportional to their values in the full graph,
(deg_u + 1e-7)^-1/2 (deg_i + 1e-7)^-1/2 (edges between low-degree nodes are kept most); A_p is those edges in
both directions, renormalised with their own degrees (:meth:`Graph.keep_edges`). The floor is the authors'
``int(|E| * (1. - dropout))`` in floating point (1 - 0.8 is 0.19999999999999996: 10 edges keep 1). The draw comes
from torch's global generator, so a checkpoint (which stores it) resumes with the same pruned graphs. Before the
first ``pre_epoch`` the losses use the full graph; ``dropout=0`` always does. Ranking uses the full graph in a
fresh forward pass, as the authors' ``full_sort_predict``.

Defaults are the authors' (enoche/FREEDOM and MMRec ``configs/model/FREEDOM.yaml``, ``overall.yaml``): d 64,
L 2, L_S 1, k 10, mm_image_weight 0.1, Xavier-uniform user and item tables, PyTorch's default Linear init of W_m;
Adam lr 1e-3 (in torch's fused form, ``fused_optimizer``: the same update, much faster on Baby's 7,050 x 4,096
trainable image features; ``--no-fused-optimizer`` gives the for-each form), no weight decay, batch
2048, negatives drawn from the training items (MMRec's loader), early stopping on valid Recall@20 after 20 epochs,
seed 999. The authors tune ``dropout`` over {0.8, 0.9} and ``reg_weight`` over
{0, 1e-5, 1e-4, 1e-3}; the defaults here are 0.8 and 1e-4 (no single value is given).

Where this differs from the authors' code:

* ``freeze_features=True`` keeps F_m constant (buffers, not in the checkpoint, no optimizer state); the default,
  as the authors', trains them (Baby: 7,050 x 4,096 image features updated by Adam at every step).
* The modality BPR terms project only the batch's positive and negative items (the same values and gradients as
  projecting all I items and gathering, as the authors do).
* Modalities: any non-empty subset of image, text, audio, fused by the rule of :mod:`.item_graph` (the authors' code
  knows image and text; with both it is theirs).
* The kNN graph of an all-zero feature row: similarity 0, not NaN (see :func:`mmrec_fast.knn_graph`).
* A repeated (user, item) pair counts once (the authors' graph binarises, ``A > 0``; their pruning list would draw
  it twice). The random draws cannot match the authors' bitwise (another edge order, another generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..graph import Graph
from ..ops import propagate
from . import losses
from .base import ModelConfig, Recommender, option, rows
from .item_graph import knn_item_graph

#: FREEDOM's degree epsilon, on the user-item graph and its pruned copies (and the kNN graph's row sums)
DEGREE_EPS = 1e-7


class FREEDOM(Recommender):
    """FREEDOM (see the module docstring).

    Args:
        dataset: its training pairs (the user-item graph) and item features (image / text / audio).
        config: :class:`FREEDOM.Config`; backend, **changes: as :class:`~mmrec_fast.models.Recommender`.
    """

    name = "freedom"
    summary = "FREEDOM: frozen kNN item graph + degree-sensitive pruning of the user-item graph, BPR (ACM MM 2023)"
    ops = ("propagate", "knn")
    #: the authors' grid (hyper_parameters: dropout, reg_weight), 8 settings
    search_space = {"dropout": ("0.8", "0.9"), "reg_weight": ("0.0", "1e-5", "1e-4", "1e-3")}
    search_space_source = "enoche/MMRec src/configs/model/FREEDOM.yaml (commit a75d89ae)"
    supported_modalities = ("image", "text", "audio")

    @dataclass(frozen=True)
    class Config(ModelConfig):
        dim: int = option(64, "embedding size d (the authors' embedding_size and feat_embed_dim)", minimum=1)
        num_layers: int = option(2, "user-item layers L (mean over the L + 1 outputs; the authors' n_ui_layers)",
                                 minimum=0)  # fmt: skip
        num_item_layers: int = option(1, "item-graph layers over the kNN graph (the authors' n_mm_layers)", minimum=0)
        knn_k: int = option(10, "neighbours per item in the kNN item graph", minimum=1)
        mm_image_weight: float = option(0.1, "weight of the image kNN graph in the fusion (the rest: the others)",
                                        minimum=0.0, maximum=1.0)  # fmt: skip
        dropout: float = option(0.8, "edge pruning: share of the user-item edges dropped each epoch (grid 0.8, 0.9)",
                                minimum=0.0, maximum=1.0)  # fmt: skip
        reg_weight: float = option(1e-4, "weight of the modality BPR terms (the authors' grid: 0, 1e-5, 1e-4, 1e-3)",
                                   minimum=0.0)  # fmt: skip
        freeze_features: bool = option(False, "keep the raw item features constant (the authors train them)")
        modalities: tuple[str, ...] | None = option(
            None, "modalities to use among image, text, audio (default: all the dataset has)")

    @classmethod
    def train_defaults(cls) -> dict:
        return {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 2048, "negatives": "train_items",
                "valid_metric": "recall@20", "patience": 20, "seed": 999, "fused_optimizer": True}  # fmt: skip

    def __init__(self, dataset, config: Config | None = None, *, backend: str | None = None, **changes):
        super().__init__(dataset, config, backend=backend, **changes)
        c = self.config
        U, I = self.num_users, self.num_items
        pairs = dataset.train
        self.graph = Graph.bipartite(pairs.users, pairs.items, U, I, norm="sym", eps=DEGREE_EPS, duplicates="collapse")
        self.pruned_graph = self.graph  # pre_epoch replaces it
        # the prunable edges: the entries of the user rows (CSR order), one per distinct pair; their full-graph values
        self.num_edges = int(self.graph.rowptr[U])
        self.register_buffer("edge_weights", self.graph.coo()[2][: self.num_edges].float(), persistent=False)
        self.user_embedding = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(U, c.dim)))  # (U, d)
        self.item_embedding = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(I, c.dim)))  # (I, d)
        raw = [dataset.features[m] for m in self.modalities]
        if c.freeze_features:
            for modality, features in zip(self.modalities, raw):
                self.register_buffer(f"{modality}_features", features.clone(), persistent=False)
        else:
            self.features = torch.nn.ParameterDict({m: torch.nn.Parameter(f.clone()) for m, f in zip(self.modalities, raw)})
        self.project = torch.nn.ModuleDict({m: torch.nn.Linear(f.shape[1], c.dim) for m, f in zip(self.modalities, raw)})
        self.item_graph = knn_item_graph(raw, self.modalities, c.knn_k, c.mm_image_weight, backend=backend)

    def item_features(self, modality: str) -> torch.Tensor:
        """F_m: (I, d_m), trainable unless ``freeze_features``."""
        if self.config.freeze_features:
            return getattr(self, f"{modality}_features")
        return self.features[modality]

    # -- degree-sensitive edge pruning ----------------------------------------------------------------------------
    def kept_edge_count(self) -> int:
        """floor(|E| (1 - dropout)) as the authors compute it (``int(|E| * (1. - dropout))``)."""
        return int(self.num_edges * (1.0 - self.config.dropout))

    def prune(self) -> Graph:
        """A pruned user-item graph: kept_edge_count() edges drawn by torch.multinomial on their values, both
        directions, renormalised (the full graph when dropout is 0)."""
        if self.config.dropout <= 0.0:
            return self.graph
        kept = torch.multinomial(self.edge_weights, self.kept_edge_count(), replacement=False)
        return self.graph.keep_edges(kept, norm="sym", eps=DEGREE_EPS, undirected=True)

    def pre_epoch(self, epoch: int) -> None:
        self.pruned_graph = self.prune()

    # -- the forward pass -----------------------------------------------------------------------------------------
    def forward(self, graph: Graph | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)) over ``graph`` (default: the full user-item graph)."""
        c = self.config
        graph = self.graph if graph is None else graph
        h = propagate(self.item_graph, self.item_embedding, c.num_item_layers, "last", backend=self.backend)  # (I, d)
        ego = torch.cat([self.user_embedding, self.item_embedding])
        users, items = propagate(graph, ego, c.num_layers, "mean", backend=self.backend).split([self.num_users, self.num_items])
        return users, items + h

    def losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch: (3, B) int64 [users; positive items; negative items] -> {"bpr", "bpr_<modality>" ...} (the
        modality terms already times reg_weight)."""
        users, positives, negatives = batch[0], batch[1], batch[2]
        user_out, item_out = self.forward(self.pruned_graph)
        u = rows(user_out, users)
        terms = {"bpr": losses.bpr((u * rows(item_out, positives)).sum(1), (u * rows(item_out, negatives)).sum(1))}
        items = torch.cat([positives, negatives])
        for modality in self.modalities:
            x = self.project[modality](rows(self.item_features(modality), items))  # (2B, d): x_m of the batch's items
            x_pos, x_neg = x.split(len(positives))
            terms[f"bpr_{modality}"] = self.config.reg_weight * losses.bpr((u * x_pos).sum(1), (u * x_neg).sum(1))
        return terms

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.forward(self.graph)
