"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
SIGIR 2020) on :func:`mmrec_fast.propagate`.

    E = [E_users; E_items]                      (U + I, d) free embeddings, N(0, 0.1^2) as the authors' code
    E_final = mean_{l=0..L} A_hat^l E           A_hat = D^-1/2 A D^-1/2 of the binary training graph
    score(u, i) = E_final[u] . E_final[U + i]
    loss = mean_b -log sigmoid(s(u_b, p_b) - s(u_b, n_b))                           "bpr"
           + reg_weight * (|E_u|^2 + |E_p|^2 + |E_n|^2) / (2 B)                     "l2", on layer-0 rows

Defaults: d 64, L 3, reg_weight 1e-4 (the authors' ``decay``); Adam lr 1e-3, batch 2048 (MMRec's trainer).

MMRec's LightGCN (``src/models/lightgcn.py``) trains differently in three ways, each an option here:
``init="xavier"`` (Xavier-uniform user and item tables instead of N(0, 0.1^2)), ``l2="norms"`` (MMRec's
``EmbLoss``: unsquared Frobenius norms / B), and the trainer's ``negatives="train_items"`` (negatives drawn only
from items seen in training). The L layers and their mean are one fused ``propagate`` call, forward and backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..ops import propagate
from . import losses
from .base import ModelConfig, Recommender, option, rows


class LightGCN(Recommender):
    """LightGCN (see the module docstring).

    Args:
        dataset: its ``train_graph`` (D^-1/2 A D^-1/2, repeated pairs collapsed) is propagated.
        config: :class:`LightGCN.Config`; backend, **changes: as :class:`~mmrec_fast.models.Recommender`.
    """

    name = "lightgcn"
    summary = "LightGCN: mean of L propagations of free embeddings, BPR (He et al., SIGIR 2020)"
    ops = ("propagate",)
    #: MMRec's LightGCN grid: n_layers x reg_weight, 20 settings (its reg_weight is on EmbLoss norms; ``l2="norms"``)
    search_space = {"num_layers": ("1", "2", "3", "4"), "reg_weight": ("1e-2", "1e-3", "1e-4", "1e-5", "1e-6")}
    search_space_source = "enoche/MMRec src/configs/model/LightGCN.yaml (commit e775373b)"

    @dataclass(frozen=True)
    class Config(ModelConfig):
        dim: int = option(64, "embedding size d", minimum=1)
        num_layers: int = option(3, "propagation layers L", minimum=0)
        reg_weight: float = option(1e-4, "weight of the L2 term on the batch's layer-0 embeddings (the authors' decay)",
                                   minimum=0.0)  # fmt: skip
        init: Literal["normal", "xavier"] = option(
            "normal", "embedding initialisation: N(0, 0.1^2) (the authors') or xavier (MMRec's, per table)")
        l2: Literal["squared", "norms"] = option(
            "squared", "L2 form: squared norms / 2B (the authors') or norms (MMRec's EmbLoss: Frobenius norms / B)")

    def __init__(self, dataset, config: Config | None = None, *, backend: str | None = None, **changes):
        super().__init__(dataset, config, backend=backend, **changes)
        c = self.config
        n = self.num_users + self.num_items
        if c.init == "normal":
            weight = torch.randn(n, c.dim) * 0.1
        else:  # xavier_uniform of the (U, d) and (I, d) tables separately, as MMRec's two nn.Parameters
            weight = torch.empty(n, c.dim)
            for rows in (slice(0, self.num_users), slice(self.num_users, n)):
                count = weight[rows].shape[0]
                bound = math.sqrt(6.0 / (count + c.dim))
                weight[rows].uniform_(-bound, bound)
        self.embedding = torch.nn.Parameter(weight)  # (U + I, d)
        self.graph = dataset.train_graph

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)): the layer-mean embeddings."""
        out = propagate(self.graph, self.embedding, self.config.num_layers, "mean", backend=self.backend)
        return tuple(out.split([self.num_users, self.num_items]))  # split's backward is one cat, no zero fill

    def losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch: (3, B) int64 [users; positive items; negative items] -> {"bpr", "l2"}."""
        users, positives, negatives = batch[0], batch[1], batch[2]
        user_out, item_out = self.forward()
        u = rows(user_out, users)
        bpr = losses.bpr((u * rows(item_out, positives)).sum(1), (u * rows(item_out, negatives)).sum(1))
        ego_users = rows(self.embedding, users)
        if self.config.l2 == "squared":
            ego_items = rows(self.embedding, self.num_users + torch.cat([positives, negatives]))  # (2B, d)
            l2 = losses.l2_squared(ego_users, ego_items)
        else:
            ego_positives = rows(self.embedding, self.num_users + positives)
            l2 = losses.l2_norms(ego_users, ego_positives, rows(self.embedding, self.num_users + negatives))
        return {"bpr": bpr, "l2": self.config.reg_weight * l2}

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.forward()
