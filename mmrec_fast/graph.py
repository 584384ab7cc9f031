"""Graph: an immutable sparse matrix M = diag(left) W diag(right), the input of every propagation op.

W is an (m, n) CSR pattern (``rowptr`` int64 (m + 1,), ``col`` int32 (nnz,)) with optional ``values`` (nnz,)
(None: every stored entry is 1); ``left`` (m,) and ``right`` (n,) are optional scaling vectors (None: ones). The
normalisations of the recommenders are scalings of a binary or count matrix, so the kernels can gather rows over W
alone and scale in their epilogue. Canonical values and scales are float64; :meth:`Graph.kernel_args` hands the
kernels copies in the compute dtype, cached per dtype.

Normalisations (``norm=``), with D the row sums of W (and D_c its column sums) after ``self_loops``/``duplicates``:

======== ================================ ================================================================
norm     matrix                           used by
======== ================================ ================================================================
"sym"    D^-1/2 W D_c^-1/2                LightGCN, SLMRec (eps 0 or 1e-8), FREEDOM/BM3 (1e-7), MENTOR (0)
"rw"     D^-1 W                           LATTICE's user-item graph D^-1 (A + I) with ``self_loops=True``
"left"   D^-1/2 W                         MMSSL's rectangular ``ui = D_u^-1/2 R`` and ``iu = D_i^-1/2 R^T``
None     W                                a matrix given with its values (``from_torch``, ``from_scipy``)
======== ================================ ================================================================

``eps`` is added to every degree before the power, as the references do (``(deg + eps) ** -p``); ``eps=0`` means
a zero degree gets scale 0 (``inf -> 0``, as LightGCN/SLMRec's original code). ``duplicates="sum"`` keeps repeated
(row, col) pairs as one entry of value = multiplicity (scipy/torch coalescing, PyG's degree: SLMRec, MENTOR);
``"collapse"`` keeps one entry of value 1 (the ``A > 0`` binarisation of FREEDOM).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .backends import accumulation_dtype, check_has_data

NORMS = ("sym", "rw", "left", None)
DUPLICATES = ("sum", "collapse")


def _as_index_tensor(name: str, value) -> torch.Tensor:
    tensor = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
    check_has_data(name, tensor)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got dtype {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.int64)


def _check_range(name: str, index: torch.Tensor, size: int) -> None:
    if index.numel() == 0:
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds index {bad}, outside [0, {size})")


def _check_pointer(name: str, pointer: torch.Tensor, shape: tuple[int, int], nnz: int) -> None:
    """A CSR row pointer of an (m, n) matrix with nnz entries: m + 1 entries, nondecreasing from 0 to nnz."""
    m = shape[0]
    if pointer.dim() != 1 or pointer.numel() != m + 1:
        raise ValueError(f"{name} must have m + 1 = {m + 1} entries for shape {shape}, got shape {tuple(pointer.shape)}")
    if int(pointer[0]) != 0 or int(pointer[-1]) != nnz:
        raise ValueError(f"{name} must start at 0 and end at nnz = {nnz}, got {int(pointer[0])} .. {int(pointer[-1])}")
    if m > 0 and bool((pointer[1:] < pointer[:-1]).any()):
        raise ValueError(f"{name} must be nondecreasing")


def _check_no_grad(name: str, tensor: torch.Tensor | None) -> None:
    if tensor is not None and tensor.requires_grad:
        raise ValueError(
            f"{name} requires grad, but graphs are constants in mmrec_fast (gradients flow to dense inputs only); "
            "pass it detached"
        )


def degree_scale(degree: torch.Tensor, power: float, eps: float, name: str) -> torch.Tensor:
    """(degree + eps) ** -power, with inf -> 0 when eps == 0."""
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if bool((degree < 0).any()):
        raise ValueError(f"norm needs nonnegative {name} degrees; W has negative row or column sums")
    scale = (degree + eps).pow(-power)
    if eps == 0:
        scale = torch.where(degree == 0, torch.zeros_like(scale), scale)
    return scale


class Graph:
    """M = diag(left) W diag(right) with W an (m, n) CSR matrix; immutable.

    Build one with :meth:`bipartite`, :meth:`from_edge_index`, :meth:`from_scipy`, :meth:`from_torch` (or
    ``mmrec_fast.knn_graph``). The raw constructor takes the CSR arrays directly:

    Args:
        rowptr: (m + 1,) integer, nondecreasing from 0 to nnz.
        col: (nnz,) integer in [0, n).
        values: (nnz,) floating or None (all ones).
        left: (m,) floating or None (ones).
        right: (n,) floating or None (ones).
        shape: (m, n).
        symmetric: whether W equals its transpose (then the backward reuses W); None: found out when needed.
    """

    def __init__(
        self,
        rowptr: torch.Tensor,
        col: torch.Tensor,
        values: torch.Tensor | None = None,
        left: torch.Tensor | None = None,
        right: torch.Tensor | None = None,
        *,
        shape: tuple[int, int],
        symmetric: bool | None = None,
    ):
        m, n = (int(s) for s in shape)
        if m < 0 or n < 0:
            raise ValueError(f"shape must be nonnegative, got {shape}")
        rowptr = _as_index_tensor("rowptr", rowptr)
        col = _as_index_tensor("col", col)
        device = rowptr.device
        for name, tensor in (("col", col), ("values", values), ("left", left), ("right", right)):
            if tensor is not None and tensor.device != device:
                raise ValueError(f"{name} is on {tensor.device} but rowptr is on {device}")
        nnz = col.numel()
        _check_pointer("rowptr", rowptr, (m, n), nnz)
        if nnz >= 2**31 or n >= 2**31:
            raise ValueError(f"graphs are limited to < 2^31 columns and entries (int32 col), got n={n}, nnz={nnz}")
        _check_range("col", col, n)
        for name, tensor, size in (("values", values, nnz), ("left", left, m), ("right", right, n)):
            if tensor is None:
                continue
            _check_no_grad(f"graph {name}", tensor)
            if not tensor.dtype.is_floating_point:
                raise TypeError(f"{name} must be floating point, got {tensor.dtype}")
            if tensor.shape != (size,):
                raise ValueError(f"{name} must have shape ({size},), got {tuple(tensor.shape)}")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} holds NaN or inf")
        self._rowptr = rowptr.contiguous()
        self._col = col.to(torch.int32).contiguous()
        as64 = lambda t: None if t is None else t.detach().to(torch.float64).contiguous()  # noqa: E731
        self._values, self._left, self._right = as64(values), as64(left), as64(right)
        self._shape = (m, n)
        self._symmetric = symmetric if m == n else False
        self._transpose: Graph | None = None
        self._kernel_cache: dict[torch.dtype, tuple] = {}
        self._row_cache: torch.Tensor | None = None

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(m, n)."""
        return self._shape

    @property
    def nnz(self) -> int:
        return self._col.numel()

    @property
    def device(self) -> torch.device:
        return self._rowptr.device

    @property
    def rowptr(self) -> torch.Tensor:
        """(m + 1,) int64."""
        return self._rowptr

    @property
    def col(self) -> torch.Tensor:
        """(nnz,) int32."""
        return self._col

    @property
    def values(self) -> torch.Tensor | None:
        """(nnz,) float64 entries of W, or None when W is binary."""
        return self._values

    @property
    def left(self) -> torch.Tensor | None:
        """(m,) float64 row scaling, or None."""
        return self._left

    @property
    def right(self) -> torch.Tensor | None:
        """(n,) float64 column scaling, or None."""
        return self._right

    @property
    def symmetric(self) -> bool:
        """Whether W (pattern and values) equals its transpose, so that M^T = diag(right) W diag(left)."""
        if self._symmetric is None:
            t = self.transpose()
            same = torch.equal(self._rowptr, t._rowptr) and torch.equal(self._sorted_cols(), t._sorted_cols())
            if same and (self._values is None) != (t._values is None):
                same = False
            if same and self._values is not None:
                same = torch.equal(self._sorted_values(), t._sorted_values())
            self._symmetric = same
        return self._symmetric

    def row_index(self) -> torch.Tensor:
        """(nnz,) int64 row of every entry (the COO row indices)."""
        if self._row_cache is None:
            counts = self._rowptr[1:] - self._rowptr[:-1]
            self._row_cache = torch.repeat_interleave(torch.arange(self._shape[0], device=self.device), counts)
        return self._row_cache

    def _sorted_order(self) -> torch.Tensor:
        key = self.row_index() * max(self._shape[1], 1) + self._col.to(torch.int64)
        return torch.argsort(key, stable=True)

    def _sorted_cols(self) -> torch.Tensor:
        return self._col[self._sorted_order()]

    def _sorted_values(self) -> torch.Tensor:
        return self._values[self._sorted_order()]

    def __repr__(self) -> str:
        parts = [f"shape={self._shape}", f"nnz={self.nnz}", f"device={self.device}"]
        parts.append("binary" if self._values is None else "weighted")
        if self._left is not None or self._right is not None:
            parts.append(f"scaled({'left' if self._left is not None else ''}{'+' if self._left is not None and self._right is not None else ''}{'right' if self._right is not None else ''})")
        return f"Graph({', '.join(parts)})"

    # -- derived graphs and conversions -------------------------------------------------------------------------
    def transpose(self) -> Graph:
        """M^T = diag(right) W^T diag(left), built once and cached (W itself when W is symmetric)."""
        if self._transpose is None:
            if self._symmetric:
                t = Graph.__new__(Graph)
                t.__dict__.update(self.__dict__)
                t._left, t._right = self._right, self._left
                t._kernel_cache = {}
            else:
                m, n = self._shape
                order = torch.argsort(self._col.to(torch.int64), stable=True)
                counts = torch.bincount(self._col.to(torch.int64), minlength=n)
                rowptr = torch.zeros(n + 1, dtype=torch.int64, device=self.device)
                rowptr[1:] = torch.cumsum(counts, 0)
                t = Graph(
                    rowptr,
                    self.row_index()[order],
                    None if self._values is None else self._values[order],
                    self._right,
                    self._left,
                    shape=(n, m),
                    symmetric=None if m == n else False,
                )
            t._transpose = self
            self._transpose = t
        return self._transpose

    @property
    def T(self) -> Graph:  # noqa: N802 (matrix convention)
        return self.transpose()

    def coo(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row int64 (nnz,), col int64 (nnz,), value (nnz,) in ``dtype``): the entries of M = left_i W_ij right_j."""
        row, col = self.row_index(), self._col.to(torch.int64)
        value = self._values if self._values is not None else torch.ones(self.nnz, dtype=torch.float64, device=self.device)
        if self._left is not None:
            value = value * self._left[row]
        if self._right is not None:
            value = value * self._right[col]
        return row, col, value.to(dtype)

    def kernel_args(self, dtype: torch.dtype) -> tuple:
        """Arguments of the ``mmrec_fast::propagate`` operators for inputs of ``dtype``.

        (rowptr, col, values, left, right, t_rowptr, t_col, t_values): values and scales in the accumulation dtype
        (float64 for float64 inputs, else float32); the transpose's CSR (None when W is symmetric). Cached per dtype.
        """
        acc = accumulation_dtype(dtype)
        if acc not in self._kernel_cache:
            cast = lambda t: None if t is None else t.to(acc)  # noqa: E731
            if self.symmetric:
                t_rowptr = t_col = t_values = None
            else:
                t = self.transpose()
                t_rowptr, t_col, t_values = t._rowptr, t._col, cast(t._values)
            self._kernel_cache[acc] = (
                self._rowptr, self._col, cast(self._values), cast(self._left), cast(self._right),
                t_rowptr, t_col, t_values,
            )  # fmt: skip
        return self._kernel_cache[acc]

    # -- pickling: torch.save / torch.load(weights_only=True) ---------------------------------------------------
    def __getstate__(self) -> dict:
        """The CSR arrays, the scalings, the shape and the symmetry flag (caches are rebuilt when needed)."""
        return {"rowptr": self._rowptr, "col": self._col, "values": self._values, "left": self._left,
                "right": self._right, "shape": self._shape, "symmetric": self._symmetric}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        """Rebuilds through ``__init__``, so a loaded graph passes every check a constructed one does."""
        Graph.__init__(self, state["rowptr"], state["col"], state["values"], state["left"], state["right"],
                       shape=tuple(state["shape"]), symmetric=state["symmetric"])  # fmt: skip

    def to(self, device: torch.device | str) -> Graph:
        """The same graph on ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Graph(
            self._rowptr.to(device), self._col.to(device), move(self._values), move(self._left), move(self._right),
            shape=self._shape, symmetric=self._symmetric,
        )  # fmt: skip

    def to_torch(self, dtype: torch.dtype = torch.float32, layout: torch.layout = torch.sparse_coo) -> torch.Tensor:
        """M as a coalesced torch sparse COO tensor (or ``layout=torch.sparse_csr``) of ``dtype``."""
        row, col, value = self.coo(dtype)
        if layout == torch.sparse_csr:
            return torch.sparse_csr_tensor(self._rowptr, self._col.to(torch.int64), value, self._shape)
        if layout != torch.sparse_coo:
            raise ValueError(f"layout must be torch.sparse_coo or torch.sparse_csr, got {layout}")
        return torch.sparse_coo_tensor(torch.stack([row, col]), value, self._shape).coalesce()

    def to_scipy(self):
        """M as a float64 ``scipy.sparse.csr_matrix``."""
        import scipy.sparse as sp

        row, col, value = self.coo(torch.float64)
        return sp.csr_matrix((value.cpu().numpy(), (row.cpu().numpy(), col.cpu().numpy())), shape=self._shape)

    def keep_edges(self, index, *, norm: str | None = "sym", eps: float = 0.0, undirected: bool = False) -> Graph:
        """The graph of some of W's stored entries, renormalised (FREEDOM's per-epoch pruned user-item graph).

        W' keeps the entries of W at positions ``index`` of its CSR order, with their values, and nothing else; the
        scales are then recomputed from W' with ``norm`` and ``eps`` exactly as the constructors compute them (D the
        row sums of W', D_c its column sums); this graph's own scales are not used. A position named more than once
        is kept once. This graph is unchanged.

        Args:
            index: (K,) integer positions in [0, nnz) (e.g. drawn by ``torch.multinomial`` over the entries).
            norm, eps: as the constructors (see the module docstring); FREEDOM: "sym" with eps 1e-7.
            undirected: W is symmetric and every kept entry (i, j) keeps its mirror (j, i) too, so that the result is
                symmetric: one draw keeps an edge of an undirected graph (the bipartite user-item graph) in both
                directions. Positions of either direction may be named.

        Returns:
            A new (m, n) :class:`Graph`.
        """
        index = _as_index_tensor("index", index).to(self.device)
        _check_range("index", index, self.nnz)
        keep = torch.zeros(self.nnz, dtype=torch.bool, device=self.device)
        keep[index] = True
        row, col = self.row_index(), self._col.to(torch.int64)
        if undirected:
            if not self.symmetric:
                raise ValueError("keep_edges(undirected=True) needs a symmetric graph (W equal to its transpose)")
            width = max(self._shape[1], 1)
            key = row * width + col
            order = torch.argsort(key)
            mirror = order[torch.searchsorted(key[order], col * width + row)]  # position of (j, i) for each (i, j)
            keep = keep | keep[mirror]
        values = None if self._values is None else self._values[keep]
        return Graph._from_coo(row[keep], col[keep], values, self._shape, norm=norm, eps=eps, self_loops=False,
                               duplicates="sum", symmetric=True if undirected else None)  # fmt: skip

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def _from_coo(
        cls,
        row: torch.Tensor,
        col: torch.Tensor,
        values: torch.Tensor | None,
        shape: tuple[int, int],
        *,
        norm: str | None,
        eps: float,
        self_loops: bool,
        duplicates: str,
        symmetric: bool | None = None,
    ) -> Graph:
        """The one builder behind every constructor: COO entries -> deduplicated CSR -> normalisation."""
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
        m, n = shape
        device = row.device
        if values is not None:
            check_has_data("values", values)
            _check_no_grad("values", values)
            if values.shape != row.shape:
                raise ValueError(f"values must have one entry per edge ({row.numel()}), got shape {tuple(values.shape)}")
            values = values.detach().to(device=device, dtype=torch.float64)
            if duplicates == "collapse":
                raise ValueError("duplicates='collapse' makes a binary graph; with values pass duplicates='sum'")
        if self_loops:
            if m != n:
                raise ValueError(f"self_loops needs a square graph, got shape {shape}")
            loop = torch.arange(n, device=device)
            row, col = torch.cat([row, loop]), torch.cat([col, loop])
            if values is not None:
                values = torch.cat([values, torch.ones(n, dtype=torch.float64, device=device)])
        key = row * max(n, 1) + col
        unique_key, inverse = torch.unique(key, sorted=True, return_inverse=True)
        if values is not None:
            summed = torch.zeros(unique_key.numel(), dtype=torch.float64, device=device).index_add_(0, inverse, values)
        elif duplicates == "sum":
            summed = torch.bincount(inverse, minlength=unique_key.numel()).to(torch.float64)
        else:
            summed = torch.ones(unique_key.numel(), dtype=torch.float64, device=device)
        csr_row, csr_col = unique_key // max(n, 1), unique_key % max(n, 1)
        rowptr = torch.zeros(m + 1, dtype=torch.int64, device=device)
        rowptr[1:] = torch.cumsum(torch.bincount(csr_row, minlength=m), 0)
        row_degree = torch.zeros(m, dtype=torch.float64, device=device).index_add_(0, csr_row, summed)
        col_degree = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, csr_col, summed)
        left = right = None
        if norm == "sym":
            left = degree_scale(row_degree, 0.5, eps, "row")
            right = left if (m == n and symmetric) else degree_scale(col_degree, 0.5, eps, "column")
        elif norm == "rw":
            left = degree_scale(row_degree, 1.0, eps, "row")
        elif norm == "left":
            left = degree_scale(row_degree, 0.5, eps, "row")
        binary = bool((summed == 1).all())
        return cls(rowptr, csr_col, None if binary else summed, left, right, shape=(m, n), symmetric=symmetric)

    @classmethod
    def bipartite(
        cls,
        users,
        items,
        num_users: int,
        num_items: int,
        *,
        norm: str | None = "sym",
        eps: float = 0.0,
        self_loops: bool = False,
        duplicates: str = "sum",
    ) -> Graph:
        """The (U + I, U + I) user-item graph [[0, R], [R^T, 0]] of the interactions (users[e], items[e]).

        Args:
            users: (E,) integer user ids in [0, num_users).
            items: (E,) integer item ids in [0, num_items); node id of item i is num_users + i.
            norm, eps, self_loops, duplicates: see the module docstring.
        """
        users, items = _as_index_tensor("users", users), _as_index_tensor("items", items)
        if users.shape != items.shape:
            raise ValueError(f"users and items must have the same length, got {users.numel()} and {items.numel()}")
        if items.device != users.device:
            raise ValueError(f"users is on {users.device} but items is on {items.device}")
        _check_range("users", users, int(num_users))
        _check_range("items", items, int(num_items))
        shifted = items + int(num_users)
        n = int(num_users) + int(num_items)
        return cls._from_coo(
            torch.cat([users, shifted]), torch.cat([shifted, users]), None, (n, n),
            norm=norm, eps=eps, self_loops=self_loops, duplicates=duplicates, symmetric=True,
        )  # fmt: skip

    @classmethod
    def from_edge_index(
        cls,
        edge_index,
        num_nodes: int | None = None,
        *,
        shape: Sequence[int] | None = None,
        values: torch.Tensor | None = None,
        norm: str | None = None,
        eps: float = 0.0,
        self_loops: bool = False,
        duplicates: str = "sum",
    ) -> Graph:
        """A graph with an entry at (edge_index[0, e], edge_index[1, e]) for each edge e (PyG convention).

        Args:
            edge_index: (2, E) integer.
            num_nodes: square size; or ``shape=(m, n)`` for a rectangular graph (e.g. MMSSL's U x I matrix);
                neither: square with max index + 1 nodes.
            values: (E,) floating edge values or None (ones).
        """
        edge_index = torch.as_tensor(edge_index) if not isinstance(edge_index, torch.Tensor) else edge_index
        check_has_data("edge_index", edge_index)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        row, col = _as_index_tensor("edge_index[0]", edge_index[0]), _as_index_tensor("edge_index[1]", edge_index[1])
        if shape is not None and num_nodes is not None:
            raise ValueError("pass num_nodes or shape, not both")
        if shape is None:
            if num_nodes is None:
                num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
            shape = (num_nodes, num_nodes)
        m, n = (int(s) for s in shape)
        _check_range("edge_index[0]", row, m)
        _check_range("edge_index[1]", col, n)
        return cls._from_coo(row, col, values, (m, n), norm=norm, eps=eps, self_loops=self_loops, duplicates=duplicates)

    @classmethod
    def from_scipy(cls, matrix, *, norm: str | None = None, eps: float = 0.0, self_loops: bool = False,
                   duplicates: str = "sum") -> Graph:  # fmt: skip
        """From any ``scipy.sparse`` matrix; its stored values become W (None when they are all 1).

        Every index is checked against the matrix's shape (scipy does not check arrays assigned after
        construction), so an out-of-range row or column is an error, never an entry of another row."""
        if getattr(matrix, "format", None) in ("csr", "csc"):  # tocoo expands indptr without checking it
            major = tuple(matrix.shape) if matrix.format == "csr" else tuple(matrix.shape)[::-1]
            indptr = torch.from_numpy(np.asarray(matrix.indptr, dtype=np.int64))
            indices = torch.from_numpy(np.asarray(matrix.indices, dtype=np.int64))
            _check_pointer(f"from_scipy: the matrix's indptr ({matrix.format})", indptr, major, indices.numel())
            _check_range(f"from_scipy: the matrix's indices ({matrix.format}, shape {major})", indices, major[1])
        coo = matrix.tocoo()
        data = np.asarray(coo.data, dtype=np.float64)
        values = None if bool(np.all(data == 1)) else torch.from_numpy(data)
        row = torch.from_numpy(np.asarray(coo.row, dtype=np.int64))
        col = torch.from_numpy(np.asarray(coo.col, dtype=np.int64))
        m, n = (int(s) for s in coo.shape)
        _check_range(f"from_scipy: the matrix's row indices (shape {(m, n)})", row, m)
        _check_range(f"from_scipy: the matrix's column indices (shape {(m, n)})", col, n)
        return cls._from_coo(row, col, values, tuple(coo.shape), norm=norm, eps=eps, self_loops=self_loops,
                             duplicates=duplicates if values is None else "sum")  # fmt: skip

    @classmethod
    def from_torch(cls, tensor: torch.Tensor, *, norm: str | None = None, eps: float = 0.0, self_loops: bool = False,
                   duplicates: str = "sum") -> Graph:  # fmt: skip
        """From a torch sparse COO or CSR tensor (2-D); its values become W (None when they are all 1)."""
        if not isinstance(tensor, torch.Tensor) or tensor.layout not in (torch.sparse_coo, torch.sparse_csr):
            raise TypeError(f"from_torch takes a sparse COO or CSR tensor, got {getattr(tensor, 'layout', type(tensor))}")
        if tensor.dim() != 2 or tensor.dense_dim() != 0:
            raise ValueError(f"from_torch takes a 2-D sparse matrix without dense dimensions, got shape {tuple(tensor.shape)}")
        check_has_data("from_torch: tensor", tensor)
        _check_no_grad("the sparse tensor's values", tensor)
        # torch does not check sparse indices by default: every index is checked against the shape here, so an
        # out-of-range one is an error, never an entry of another row (the row * n + col key would alias).
        m, n = (int(s) for s in tensor.shape)
        if tensor.layout == torch.sparse_coo:
            indices, data = tensor._indices(), tensor._values()
            row, col = indices[0], indices[1]
            _check_range(f"from_torch: tensor.indices()[0] (row indices, shape {(m, n)})", row, m)
            _check_range(f"from_torch: tensor.indices()[1] (column indices, shape {(m, n)})", col, n)
        else:
            crow, col, data = tensor.crow_indices(), tensor.col_indices(), tensor.values()
            _check_pointer("from_torch: tensor.crow_indices()", crow, (m, n), col.numel())
            _check_range(f"from_torch: tensor.col_indices() (column indices, shape {(m, n)})", col, n)
            row = torch.repeat_interleave(torch.arange(tensor.shape[0], device=crow.device), crow[1:] - crow[:-1])
        if not data.dtype.is_floating_point:
            data = data.to(torch.float64)
        values = None if bool((data == 1).all()) else data.detach()
        return cls._from_coo(row.to(torch.int64), col.to(torch.int64), values, tuple(tensor.shape), norm=norm, eps=eps,
                             self_loops=self_loops, duplicates=duplicates if values is None else "sum")  # fmt: skip


# torch.load(weights_only=True), torch's default since 2.6, unpickles only allow-listed classes: a Graph holds
# tensors, ints and bools, and __setstate__ runs every constructor check, so it is safe to allow
torch.serialization.add_safe_globals([Graph])
