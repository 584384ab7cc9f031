"""LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
SIGIR 2020) on :func:`mmrec_fast.propagate`.

    E = [E_users; E_items]                      (U + I, d) free embeddings, N(0, 0.1^2) as the authors' code
    E_final = mean_{l=0..L} A_hat^l E           A_hat = D^-1/2 A D^-1/2 of the binary training graph
    score(u, i) = E_final[u] . E_final[U + i]
    loss = mean_b -log sigmoid(s(u_b, p_b) - s(u_b, n_b))
           + reg_weight * (|E_u|^2 + |E_p|^2 + |E_n|^2) / (2 B)      L2 on the batch's layer-0 embeddings

The L layers and their mean are one fused ``propagate`` call (forward and backward), on any backend, same math.
The interface is MMRec's (``calculate_loss(batch)``, ``full_sort_predict(users)``) plus ``embeddings()``, which
full-ranking evaluation uses to rank through ``topk_scores`` without a U x I score matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..graph import Graph
from ..ops import propagate


class LightGCN(torch.nn.Module):
    """LightGCN.

    Args:
        num_users, num_items: U and I.
        graph: the (U + I, U + I) normalised user-item training graph (``Dataset.train_graph``), items after users.
        dim: d, the embedding size (64).
        num_layers: L (3).
        reg_weight: weight of the L2 term on the batch's layer-0 embeddings (1e-4, the authors' ``decay``).
        backend: the backend of ``propagate`` ("reference" | "native" | "triton" | None: automatic).
    """

    def __init__(self, num_users: int, num_items: int, graph: Graph, *, dim: int = 64, num_layers: int = 3,
                 reg_weight: float = 1e-4, backend: str | None = None):  # fmt: skip
        super().__init__()
        n = num_users + num_items
        if not isinstance(graph, Graph) or graph.shape != (n, n):
            raise ValueError(f"LightGCN: graph must be a ({n}, {n}) Graph (users then items), got "
                             f"{getattr(graph, 'shape', type(graph).__name__)}")  # fmt: skip
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.num_layers, self.reg_weight, self.backend = int(num_layers), float(reg_weight), backend
        self.embedding = torch.nn.Parameter(torch.randn(n, dim) * 0.1)  # (U + I, d)
        self._graph = graph
        self._graph_on: dict[torch.device, Graph] = {}

    @classmethod
    def from_dataset(cls, dataset, **hyperparameters) -> LightGCN:
        """LightGCN on ``dataset.train_graph``; keyword arguments as in the constructor."""
        return cls(dataset.num_users, dataset.num_items, dataset.train_graph, **hyperparameters)

    def graph_on(self, device: torch.device) -> Graph:
        """The training graph on ``device`` (copied once per device)."""
        if device not in self._graph_on:
            self._graph_on[device] = self._graph.to(device)
        return self._graph_on[device]

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)): the layer-mean embeddings."""
        out = propagate(self.graph_on(self.embedding.device), self.embedding, self.num_layers, "mean", backend=self.backend)
        return out[: self.num_users], out[self.num_users :]

    def calculate_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """batch: (3, B) int64 [users; positive items; negative items] -> scalar BPR + L2 loss."""
        users, positives, negatives = batch[0], batch[1], batch[2]
        user_out, item_out = self.forward()
        u = user_out[users]
        pos_scores = (u * item_out[positives]).sum(1)
        neg_scores = (u * item_out[negatives]).sum(1)
        bpr = F.softplus(neg_scores - pos_scores).mean()  # = -log sigmoid(pos - neg)
        ego_users = self.embedding[users]
        ego_items = self.embedding[self.num_users + torch.cat([positives, negatives])]
        l2 = (ego_users.square().sum() + ego_items.square().sum()) / (2 * users.numel())
        return bpr + self.reg_weight * l2

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)) for ranking (score = dot product), without autograd."""
        with torch.no_grad():
            return self.forward()

    def full_sort_predict(self, users) -> torch.Tensor:
        """users: (B,) int64 (or MMRec's [users, ...]) -> (B, I) scores against every item."""
        users = users[0] if isinstance(users, (list, tuple)) else users
        user_out, item_out = self.embeddings()
        return user_out[users] @ item_out.T

    def hyperparameters(self) -> dict:
        """What the constructor needs besides the data (stored in checkpoints)."""
        return {"dim": self.embedding.shape[1], "num_layers": self.num_layers, "reg_weight": self.reg_weight,
                "backend": self.backend}  # fmt: skip
