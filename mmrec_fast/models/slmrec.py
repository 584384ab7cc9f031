"""SLMRec (Tao et al., "Self-supervised Learning for Multimedia Recommendation", IEEE TMM 2022) on
:func:`mmrec_fast.propagate` and :func:`mmrec_fast.info_nce`.

Branches b in (id, image, audio, text) (the id branch and every modality used), all over the shared user table:

    X_id = E_items,  X_m = normalize(F_m) W_m + c_m             item inputs (I, d), F_m the raw features (I, d_m)
    H_b = mean_{l=0..L} A_hat^l [E_users; X_b]                  (U + I, d), A_hat = D^-1/2 A D^-1/2, L = 3
    z_u = W_user [H_id[u] | H_image[u] | ...] + c_user          concat fusion, (d (1 + M)) -> d, separately for items
    infonce = mean_b -log softmax_j(cos(z_{u_b}, z_{i_j}) / t)_b     in-batch, t = 0.2, repeated users/items kept
    loss = infonce + ssl_alpha * ssl                            ssl_alpha = 0.1

``ssl_task`` (``ssl``, over the batch's positive items / users, temperature ``ssl_temp`` = 0.2):

* ``"fac"`` (fine and coarse, the default): a chain of heads from the id branch, one level per modality in the
  order image -> audio -> text: h_0 = H_id[i], h_{k+1} = g_k(h_k) (d -> d, d -> d, d -> d/2) and, for each level
  whose modality is used, InfoNCE(h_{k+1}, g_m(H_m[i])) on **unnormalised** logits. A level without its modality
  adds no term, but its id-side head still applies (so image + text is MMRec's port: image, then text through the
  audio level's head).
* ``"fd"``: feature dropout: two views, each propagating every branch with dropout (p = ``dropout``) after every
  layer; normalised InfoNCE between the views' fused users plus the same for items.
* ``"fm"``: feature masking: two views, each with one branch's item inputs zeroed (two different branches drawn
  uniformly), no dropout; ``"fd+fm"``: masking and dropout. (Both crash in MMRec's port; they work here.)

Scoring: dot products of z (``full_sort_predict``: their sigmoid, as the authors'). By default, as the authors'
code, ranking uses the embeddings **cached from the last training batch** (computed before that batch's optimizer
step; kept in the checkpoint); ``score_on="fresh"`` runs a new forward pass instead. An untrained model has no
cache and is scored fresh.

Defaults are the original code's (zltao/SLMRec ``conf/SLMRec.properties``, ``run.sh``): d 64, L 3, t 0.2, FAC,
ssl_alpha 0.1, ssl_temp 0.2, dropout 0.3, concat fusion, Xavier-uniform embeddings, Adam lr 0.01, weight decay 1e-4,
batch 2048, early stopping after 50 epochs without a better Recall@10 (the original selects on the test split;
here on valid). Where the original and MMRec's port (``src/models/slmrec.py``) differ:

* degree epsilon: the original's (deg)^-1/2 with inf -> 0 (``degree_eps=0``, default); MMRec's (deg + 1e-8)^-1/2
  is ``degree_eps=1e-8``;
* audio: the original uses it (default: every modality the dataset has); MMRec's port drops it
  (``modalities=("image", "text")``).
Both collapse repeated (user, item) pairs in the graph. ``fusion="mean"`` averages the branches instead of
concatenating them (the original's ``mm_fusion_mode='mean'`` fails on a layer sized for the concatenation; here
the layer is d -> d).

The 1 + M branches are propagated as one (U + I, d (1 + M)) matrix in one fused ``propagate`` call (propagation
is linear and column-wise, so this is the per-branch math, reading the graph once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..graph import Graph
from ..ops import propagate, spmm
from .base import LastBatchScoring, ModelConfig, option, rows

#: the FAC chain's levels, fine to coarse
FAC_LEVELS = ("image", "audio", "text")
_HEAD_FRACTION = (1, 1, 2)  # the output of level k's heads is d // _HEAD_FRACTION[k]


class SLMRec(LastBatchScoring):
    """SLMRec (see the module docstring).

    Args:
        dataset: its training pairs (graph) and item features (image / audio / text).
        config: :class:`SLMRec.Config`; backend, **changes: as :class:`~mmrec_fast.models.Recommender`.
    """

    name = "slmrec"
    summary = "SLMRec: per-modality propagation, concat fusion, in-batch InfoNCE + FAC/FD/FM self-supervision (TMM 2022)"
    ops = ("propagate", "info_nce")
    #: MMRec's SLMRec grid, 80 settings; its fourth dimension, reg {1e-4, 1e-3, 1e-2, 0.1}, is left out: MMRec's
    #: SLMRec never reads config["reg"], so it only repeats every setting four times
    search_space = {"lr": ("1e-4", "1e-3", "1e-2", "1e-1"), "ssl_temp": ("0.1", "0.2", "0.5", "1.0"),
                    "ssl_alpha": ("0.01", "0.05", "0.1", "0.5", "1.0")}  # fmt: skip
    search_space_source = "enoche/MMRec src/configs/model/SLMRec.yaml (commit a75d89ae)"
    batch_kind = "pairs"
    batch_negatives = True
    supported_modalities = FAC_LEVELS

    @dataclass(frozen=True)
    class Config(ModelConfig):
        dim: int = option(64, "embedding size d", minimum=2)
        num_layers: int = option(3, "propagation layers L (mean over the L + 1 outputs)", minimum=0)
        temperature: float = option(0.2, "temperature of the main in-batch InfoNCE", above=0.0)
        ssl_task: Literal["fac", "fd", "fm", "fd+fm"] = option("fac", "self-supervised task: fac | fd | fm | fd+fm")
        ssl_alpha: float = option(0.1, "weight of the self-supervised loss", minimum=0.0)
        ssl_temp: float = option(0.2, "temperature of the self-supervised InfoNCE", above=0.0)
        dropout: float = option(0.3, "dropout after each layer in the fd and fd+fm views", minimum=0.0, maximum=0.99)
        fusion: Literal["concat", "mean"] = option("concat", "branch fusion before the output layers")
        degree_eps: float = option(0.0, "added to degrees before ^-1/2: 0 the original's (inf -> 0), 1e-8 MMRec's",
                                   minimum=0.0)  # fmt: skip
        init: Literal["xavier", "normal"] = option("xavier", "embedding initialisation: xavier_uniform or N(0, 0.1^2)")
        score_on: Literal["cached", "fresh"] = option(
            "cached", "rank by the last training batch's embeddings (the authors') or by a fresh forward pass")
        modalities: tuple[str, ...] | None = option(
            None, "modalities to use among image, audio, text (default: all the dataset has; MMRec's port: image,text)")

    @classmethod
    def train_defaults(cls) -> dict:
        return {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4, "batch_size": 2048,
                "valid_metric": "recall@10", "patience": 50}  # fmt: skip

    def __init__(self, dataset, config: Config | None = None, *, backend: str | None = None, **changes):
        super().__init__(dataset, config, backend=backend, **changes)
        c = self.config
        d = c.dim
        pairs = dataset.train
        self.graph = Graph.bipartite(pairs.users, pairs.items, self.num_users, self.num_items, norm="sym",
                                     eps=c.degree_eps, duplicates="collapse")  # fmt: skip
        self.user_embedding = torch.nn.Parameter(self._initial(self.num_users, d))  # (U, d)
        self.item_embedding = torch.nn.Parameter(self._initial(self.num_items, d))  # (I, d)
        self.project = torch.nn.ModuleDict()  # modality -> Linear(d_m, d)
        for modality in self.modalities:
            self.register_buffer(f"{modality}_features", F.normalize(dataset.features[modality], dim=1), persistent=False)
            self.project[modality] = _xavier_linear(dataset.features[modality].shape[1], d)
        fused = d * self.num_branches if c.fusion == "concat" else d
        self.user_fusion = _xavier_linear(fused, d)
        self.item_fusion = _xavier_linear(fused, d)
        if c.ssl_task == "fac":
            depth = max(FAC_LEVELS.index(m) for m in self.modalities) + 1
            self.fac_id_heads = torch.nn.ModuleList(
                _xavier_linear(d if k == 0 else d // _HEAD_FRACTION[k - 1], d // _HEAD_FRACTION[k]) for k in range(depth))
            self.fac_modality_heads = torch.nn.ModuleDict(
                {m: _xavier_linear(d, d // _HEAD_FRACTION[FAC_LEVELS.index(m)]) for m in self.modalities})
        self._init_last_batch_tables(d, d)  # the authors score by the fused embeddings of the last training batch

    @property
    def branches(self) -> tuple[str, ...]:
        return ("id",) + self.modalities

    @property
    def num_branches(self) -> int:
        return 1 + len(self.modalities)

    def _initial(self, rows: int, dim: int) -> torch.Tensor:
        weight = torch.empty(rows, dim)
        if self.config.init == "xavier":
            return torch.nn.init.xavier_uniform_(weight)
        return torch.nn.init.normal_(weight, std=0.1)

    # -- the forward pass -----------------------------------------------------------------------------------------
    def item_inputs(self) -> list[torch.Tensor]:
        """[X_id, X_m for each modality]: the (I, d) item rows of each branch."""
        return [self.item_embedding] + [self.project[m](getattr(self, f"{m}_features")) for m in self.modalities]

    def _stack(self, item_inputs: list[torch.Tensor]) -> torch.Tensor:
        """(U + I, d * len(item_inputs)): [E_users; X_b] for every branch side by side."""
        users = self.user_embedding.repeat(1, len(item_inputs))
        return torch.cat([users, torch.cat(item_inputs, dim=1)], dim=0)

    def propagated(self) -> torch.Tensor:
        """(U + I, d (1 + M)): H_b of every branch, side by side (one fused propagate call)."""
        return propagate(self.graph, self._stack(self.item_inputs()), self.config.num_layers, "mean", backend=self.backend)

    def fuse(self, rows: torch.Tensor, layer: torch.nn.Linear, weight=None, bias=None) -> torch.Tensor:
        """rows: (n, d (1 + M)) branch outputs -> (n, d) fused (concat or mean, then the output layer)."""
        if self.config.fusion == "mean":
            rows = rows.unflatten(1, (self.num_branches, self.config.dim)).mean(1)
        if weight is None:
            return layer(rows)
        return F.linear(rows, weight, bias)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users (U, d), items (I, d)): the fused embeddings of a fresh forward pass."""
        h_users, h_items = self.propagated().split([self.num_users, self.num_items])
        return self.fuse(h_users, self.user_fusion), self.fuse(h_items, self.item_fusion)

    # -- the losses -----------------------------------------------------------------------------------------------
    def losses(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """batch: (2, B) int64 [users; positive items] -> {"infonce", "ssl"} (ssl already times ssl_alpha)."""
        users, items = batch[0], batch[1]
        c = self.config
        h = self.propagated()
        h_users, h_items = h.split([self.num_users, self.num_items])  # (split's backward is one cat, no zero fill)
        item_rows = rows(h_items, items)  # (B, d (1 + M))
        z_users = self.fuse(rows(h_users, users), self.user_fusion)
        z_items = self.fuse(item_rows, self.item_fusion)
        self.remember_last_batch(h, *(p.detach().clone() for p in (self.user_fusion.weight, self.user_fusion.bias,
                                                                   self.item_fusion.weight, self.item_fusion.bias)))
        main = self.batch_info_nce(z_users, z_items, c.temperature)
        if c.ssl_task == "fac":
            ssl = self._fac(item_rows)
        else:
            ssl = self._two_views(users, items, mask="fm" in c.ssl_task, dropout="fd" in c.ssl_task)
        return {"infonce": main, "ssl": c.ssl_alpha * ssl}

    def _fac(self, h_items: torch.Tensor) -> torch.Tensor:
        """h_items: (B, d (1 + M)) branch outputs of the batch's items -> the FAC loss (unnormalised logits)."""
        d = self.config.dim
        blocks = dict(zip(self.branches, h_items.split(d, dim=1)))
        chain = blocks["id"]
        total = h_items.new_zeros(())
        for level, head in enumerate(self.fac_id_heads):
            chain = head(chain)
            modality = FAC_LEVELS[level]
            if modality in blocks:
                target = self.fac_modality_heads[modality](blocks[modality])
                total = total + self.batch_info_nce(chain, target, self.config.ssl_temp, normalize=False)
        return total

    def masked_branches(self) -> tuple[int, int]:
        """The fm views' zeroed branches: two different indices into :attr:`branches`, uniform, from torch's RNG."""
        first = int(torch.randint(self.num_branches, ()))
        second = int(torch.randint(self.num_branches - 1, ()))
        return first, second + (second >= first)

    def _two_views(self, users: torch.Tensor, items: torch.Tensor, *, mask: bool, dropout: bool) -> torch.Tensor:
        """The fd / fm / fd+fm loss: two views of every branch, normalised InfoNCE between them, users + items."""
        c = self.config
        inputs = self.item_inputs()
        views = []
        masked = self.masked_branches() if mask else None
        for view in range(2):
            view_inputs = list(inputs)
            if mask:
                view_inputs[masked[view]] = torch.zeros_like(view_inputs[masked[view]])
            views.append(self._stack(view_inputs))
        x = torch.cat(views, dim=1)  # (U + I, 2 d (1 + M)): both views side by side
        if dropout:  # dropout between layers: one spmm per layer
            layers = [x]
            for _ in range(c.num_layers):
                layers.append(F.dropout(spmm(self.graph, layers[-1], backend=self.backend), c.dropout, self.training))
            h = torch.stack(layers).mean(0)
        else:
            h = propagate(self.graph, x, c.num_layers, "mean", backend=self.backend)
        width = c.dim * self.num_branches
        total = h.new_zeros(())
        h_users, h_items = h.split([self.num_users, self.num_items])
        for batch_rows, layer in ((rows(h_users, users), self.user_fusion), (rows(h_items, items), self.item_fusion)):
            one, two = batch_rows[:, :width], batch_rows[:, width:]
            total = total + self.batch_info_nce(self.fuse(one, layer), self.fuse(two, layer), c.ssl_temp)
        return total

    # -- ranking --------------------------------------------------------------------------------------------------
    def cached_tables(self, h, user_weight, user_bias, item_weight, item_bias) -> tuple[torch.Tensor, torch.Tensor]:
        """The last training batch's propagated rows h (U + I, d (1 + M)) fused with that batch's output layers
        (their weights as before its optimizer step) -> (users (U, d), items (I, d))."""
        h_users, h_items = h.split([self.num_users, self.num_items])
        return self.fuse(h_users, None, user_weight, user_bias), self.fuse(h_items, None, item_weight, item_bias)

    def full_sort_predict(self, users) -> torch.Tensor:
        """users: (B,) int64 (or MMRec's ``[users, ...]``) -> (B, I) sigmoid of the dot products (the authors')."""
        return torch.sigmoid(super().full_sort_predict(users))


def _xavier_linear(fan_in: int, fan_out: int) -> torch.nn.Linear:
    """Linear(fan_in, fan_out) with a Xavier-uniform weight and PyTorch's default bias (the authors' layers)."""
    layer = torch.nn.Linear(fan_in, fan_out)
    torch.nn.init.xavier_uniform_(layer.weight)
    return layer
