"""The one dataset type every loader returns: interactions split into train / valid / test, counts, item features
by modality, and the training graph.

Ids are dense integers: users in [0, num_users), items in [0, num_items); row i of every feature matrix is item i
(the MMRec convention). Interactions are kept as loaded (a repeated (user, item) pair stays repeated, as MMRec's
data frames do); graphs and evaluation sets collapse repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..graph import Graph


class DataError(ValueError):
    """A dataset file or its content is unusable; the message names the file, the place and what was expected."""


@dataclass(frozen=True)
class Interactions:
    """A list of (user, item) pairs.

    Attributes:
        users: (E,) int64 user ids.
        items: (E,) int64 item ids.
    """

    users: torch.Tensor
    items: torch.Tensor

    def __post_init__(self):
        for name in ("users", "items"):
            tensor = getattr(self, name)
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64 or tensor.dim() != 1:
                raise TypeError(f"Interactions.{name} must be a 1-D int64 tensor, got {_describe(tensor)}")
        if self.users.shape != self.items.shape:
            raise ValueError(f"Interactions: {self.users.numel()} users but {self.items.numel()} items")

    def __len__(self) -> int:
        return self.users.numel()

    @classmethod
    def empty(cls) -> Interactions:
        return cls(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64))

    def pair_keys(self, num_items: int) -> torch.Tensor:
        """(E,) int64 keys user * num_items + item, one per pair, in the stored order."""
        return self.users * num_items + self.items

    def unique_pairs(self, num_items: int) -> Interactions:
        """The distinct pairs, sorted by (user, item)."""
        keys = torch.unique(self.pair_keys(num_items), sorted=True)
        return Interactions(keys // num_items, keys % num_items)

    def subset(self, mask: torch.Tensor) -> Interactions:
        """The pairs where ``mask`` ((E,) bool) is true."""
        return Interactions(self.users[mask], self.items[mask])

    def matrix(self, num_users: int, num_items: int) -> Graph:
        """The binary (num_users, num_items) interaction matrix R as a :class:`Graph` (repeated pairs collapse)."""
        return Graph.from_edge_index(
            torch.stack([self.users, self.items]), shape=(num_users, num_items), duplicates="collapse"
        )


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


SPLITS = ("train", "valid", "test")


@dataclass(eq=False)
class Dataset:
    """A recommendation dataset: interactions, counts and item features.

    Attributes:
        name: a short name (the directory name, or ``synthetic-<preset>``).
        num_users, num_items: U and I; ids are in [0, U) and [0, I).
        train, valid, test: :class:`Interactions` of each split.
        features: modality name ("image", "text", "audio", ...) -> (I, d_m) float32 tensor, row i = item i.
        source: how to make this dataset again (``{"kind": "mmrec" | "mmssl", "path": ...}`` or
            ``{"kind": "synthetic", ...parameters}``); stored in checkpoints and run records.
        notes: things the loader did that a user should know (e.g. cold-start interactions dropped).

    The constructor validates everything (ids in range, feature shapes, finite features, nonempty splits) and
    raises :class:`DataError` saying what is wrong.
    """

    name: str
    num_users: int
    num_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.num_users, self.num_items = int(self.num_users), int(self.num_items)
        if self.num_users <= 0 or self.num_items <= 0:
            raise DataError(f"dataset {self.name!r}: needs at least one user and one item, got {self.num_users} x {self.num_items}")
        for split in SPLITS:
            interactions = getattr(self, split)
            if len(interactions) == 0:
                raise DataError(f"dataset {self.name!r}: the {split} split is empty")
            for kind, ids, size in (("user", interactions.users, self.num_users), ("item", interactions.items, self.num_items)):
                low, high = int(ids.min()), int(ids.max())
                if low < 0 or high >= size:
                    raise DataError(f"dataset {self.name!r}: {split} holds {kind} id {low if low < 0 else high}, outside [0, {size})")
        for modality, matrix in self.features.items():
            if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.dtype != torch.float32:
                raise DataError(f"dataset {self.name!r}: features[{modality!r}] must be a 2-D float32 tensor, got {_describe(matrix)}")
            if matrix.shape[0] != self.num_items:
                raise DataError(f"dataset {self.name!r}: features[{modality!r}] has {matrix.shape[0]} rows for {self.num_items} items")
            check_finite(matrix, f"features[{modality!r}]")
        self._train_graph: Graph | None = None
        self._train_matrix: Graph | None = None

    def split(self, name: str) -> Interactions:
        """The interactions of split ``name`` ("train" | "valid" | "test")."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    @property
    def train_graph(self) -> Graph:
        """The (U + I, U + I) symmetrically normalised user-item graph D^-1/2 A D^-1/2 of the training pairs
        (binary A, repeated pairs collapsed, zero degree -> 0; LightGCN's graph), built once."""
        if self._train_graph is None:
            self._train_graph = Graph.bipartite(
                self.train.users, self.train.items, self.num_users, self.num_items, norm="sym", duplicates="collapse"
            )
        return self._train_graph

    @property
    def train_matrix(self) -> Graph:
        """The binary (U, I) matrix of training pairs (what full-ranking evaluation excludes), built once."""
        if self._train_matrix is None:
            self._train_matrix = self.train.matrix(self.num_users, self.num_items)
        return self._train_matrix

    def summary(self) -> dict:
        """Counts, density and feature shapes, for logs and run records."""
        total = sum(len(getattr(self, s)) for s in SPLITS)
        return {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": total,
            **{split: len(getattr(self, split)) for split in SPLITS},
            "density": total / (self.num_users * self.num_items),
            "features": {m: list(f.shape) for m, f in self.features.items()},
            "source": self.source,
            "notes": list(self.notes),
        }

    def _format_label(self) -> str:
        kind = self.source.get("kind")
        return f" ({kind} format)" if kind in ("mmrec", "mmssl") else ""

    def __repr__(self) -> str:
        feats = ", ".join(f"{m} {tuple(f.shape)}" for m, f in self.features.items()) or "none"
        return (
            f"Dataset({self.name!r}{self._format_label()}: {self.num_users} users, {self.num_items} items, train {len(self.train)} / "
            f"valid {len(self.valid)} / test {len(self.test)}, features: {feats})"
        )


def check_finite(matrix: torch.Tensor, where: str) -> None:
    """Raise :class:`DataError` if ``matrix`` (2-D) holds NaN or inf, saying how many and where."""
    finite = torch.isfinite(matrix)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(matrix).sum())
    inf = int(torch.isinf(matrix).sum())
    bad = (~finite).nonzero()
    rows = torch.unique(bad[:, 0])
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if rows.numel() > 5 else "")
    first_row, first_col = (int(v) for v in bad[0])
    raise DataError(
        f"{where}: {nan} NaN and {inf} inf values in {rows.numel()} rows (rows {shown}; first at row {first_row}, "
        f"column {first_col})"
    )
