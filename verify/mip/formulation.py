"""Network + perturbation set + bounds -> a HiGHS model (MIPVerify's encoding, low-level highspy).

Every node value is kept as an affine expression ``A @ cols + c`` over the model's
columns (sparse ``A``): affine layers and Add nodes are substituted away, so they cost
no rows. Columns are the input pixels, the outputs of unstable ReLUs (with one binary
each, big-M from their bounds), and -- where substitution would make rows dense --
materialised node values with equality rows.

An unstable ReLU z = max(x, 0) with l < 0 < u becomes
    z >= x,  z >= 0,  z <= x - l (1 - a),  z <= u a,  a in {0, 1};
with ``integer=False`` the binaries stay continuous in [0, 1], which is exactly the
triangle relaxation (used for LP bounds). Stable ReLUs are z = x (l >= 0) or z = 0 (u <= 0).

The builder adds nodes one at a time and asks an optional ``refine`` hook for
tighter bounds on every ReLU input before encoding it, so bounds can be tightened
layer by layer on the model built so far (see :mod:`verify.mip.tighten`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, cast

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .. import highs_run
from ..errors import UnsupportedLayerError
from ..network import Add, AffineLayer, Network, ReLU
from ..bounds.types import NodeBounds
from ..spec import LpBall

INF = highspy.kHighsInf

# Bounds handed in from elsewhere may come from float32 arithmetic: widen them by this much
# (absolute + relative) before they become big-M constants, so rounding cannot cut off a true point.
BOUND_SLACK = 1e-6
# Materialise a node as columns + equality rows when its substituted rows get denser than this.
MATERIALIZE_NNZ = 200


@dataclass
class Expr:
    """Node values as A @ cols + c; A is csr (n, ncols_at_creation)."""

    a: sp.csr_matrix
    c: np.ndarray

    def padded(self, ncols: int) -> sp.csr_matrix:
        if self.a.shape[1] == ncols:
            return self.a
        return sp.csr_matrix((self.a.data, self.a.indices, self.a.indptr), shape=(self.a.shape[0], ncols))

    @property
    def n(self) -> int:
        return int(self.a.shape[0])


# Column kinds, for building a full primal point from a forward pass.
KIND_INPUT, KIND_ABS, KIND_RELU, KIND_BINARY, KIND_VALUE = range(5)

Refine = Callable[["Formulation", int, Expr, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Formulation:
    """A HiGHS model of one example's network over its perturbation set.

    ``exprs[i]`` is node i's value as an expression over the columns; ``pre_bounds[i]``
    the (lower, upper) bounds used where node i feeds a ReLU; ``binaries`` the column of
    every unstable ReLU's indicator.
    """

    highs: highspy.Highs
    net: Network
    pset: LpBall
    example_index: int
    exprs: dict[int, Expr] = field(default_factory=dict)
    pre_bounds: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    col_lo: list[np.ndarray] = field(default_factory=list)
    col_hi: list[np.ndarray] = field(default_factory=list)
    col_kind: list[np.ndarray] = field(default_factory=list)
    col_node: list[np.ndarray] = field(default_factory=list)
    col_pos: list[np.ndarray] = field(default_factory=list)
    binaries: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    input_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    n_cols: int = 0
    integer: bool = False

    # ---- columns and rows
    def add_cols(self, lo: np.ndarray, hi: np.ndarray, kind: int, node: int, pos: np.ndarray) -> np.ndarray:
        k = len(lo)
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        self.highs.addCols(k, np.zeros(k), lo, hi, 0, np.zeros(k, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0))
        idx = np.arange(self.n_cols, self.n_cols + k, dtype=np.int32)
        self.n_cols += k
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        self.col_kind.append(np.full(k, kind, dtype=np.int8))
        self.col_node.append(np.full(k, node, dtype=np.int32))
        self.col_pos.append(np.asarray(pos, dtype=np.int64))
        return idx

    def add_rows(self, m: sp.spmatrix, lower: np.ndarray, upper: np.ndarray) -> None:
        m = sp.csr_matrix(m)
        if m.shape[0] == 0:
            return
        m = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], self.n_cols))
        m.sum_duplicates()
        self.highs.addRows(m.shape[0], np.asarray(lower, np.float64), np.asarray(upper, np.float64), m.nnz,
                           m.indptr.astype(np.int32), m.indices.astype(np.int32), m.data.astype(np.float64))

    def bounds_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.col_lo), np.concatenate(self.col_hi)

    def interval(self, e: Expr) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds of an expression from the column bounds (sound in float64, slack added)."""
        lo, hi = self.bounds_arrays()
        a = e.padded(self.n_cols)
        ap, an = a.maximum(0), a.minimum(0)
        lo_c = np.where(np.isfinite(lo), lo, -1e30)
        hi_c = np.where(np.isfinite(hi), hi, 1e30)
        low = e.c + ap @ lo_c + an @ hi_c
        up = e.c + ap @ hi_c + an @ lo_c
        s = 1e-9 * (1 + np.abs(low)) + 1e-9 * (abs(a).sum(1).A1)
        return low - s, up + np.abs(s)

    # ---- queries
    def output_expr(self) -> Expr:
        return self.exprs[len(self.net.graph) - 1]

    def margin_expr(self, label: int, target: int) -> tuple[np.ndarray, float]:
        """Dense cost vector and offset of f_y - f_target over the columns."""
        e = self.output_expr()
        a = e.padded(self.n_cols)
        row = (a[label] - a[target]).toarray().ravel()
        return row, float(e.c[label] - e.c[target])

    def set_integer(self, on: bool = True) -> None:
        if len(self.binaries):
            kind = highspy.HighsVarType.kInteger if on else highspy.HighsVarType.kContinuous
            self.highs.changeColsIntegrality(len(self.binaries), self.binaries,
                                             np.full(len(self.binaries), int(kind.value) if hasattr(kind, "value") else int(kind), dtype=np.uint8))
        self.integer = on

    def primal_point(self, x: Tensor) -> np.ndarray:
        """The full column vector of the network's forward pass at input x (one example)."""
        with torch.no_grad():
            values = self.net.forward(x.reshape(1, *self.net.input_shape).to(torch.float64), all_nodes=True)
        flat = [v[0].reshape(-1).numpy() for v in values]
        kind = np.concatenate(self.col_kind)
        node = np.concatenate(self.col_node)
        pos = np.concatenate(self.col_pos)
        center = self.pset.center[self.example_index].reshape(-1).to(torch.float64).numpy()
        offsets = np.cumsum([0] + [len(v) for v in flat])
        out: np.ndarray = np.concatenate(flat)[offsets[node] + pos]
        m = kind == KIND_ABS
        out[m] = np.abs(flat[0][pos[m]] - center[pos[m]])
        m = np.flatnonzero(kind == KIND_BINARY)
        for i in m:
            out[i] = 1.0 if flat[self.net.graph[node[i]].inputs[0]][pos[i]] > 0 else 0.0
        return out

    def input_value(self, col_values: np.ndarray) -> Tensor:
        x = np.asarray(col_values)[self.input_cols]
        return torch.as_tensor(x, dtype=torch.float64).reshape(1, *self.net.input_shape)


def _node_bounds(bounds: NodeBounds | None, i: int, example: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not bounds or i not in bounds:
        return None
    lo_t, hi_t = bounds[i]
    lo = lo_t[example].reshape(-1).detach().to(torch.float64).numpy()
    hi = hi_t[example].reshape(-1).detach().to(torch.float64).numpy()
    return lo - BOUND_SLACK * (1 + np.abs(lo)), hi + BOUND_SLACK * (1 + np.abs(hi))


def _add_input(f: Formulation) -> Expr:
    ps, i = f.pset, f.example_index
    center = ps.center[i].reshape(-1).to(torch.float64).numpy()
    # the set's coordinate-wise bounds in float64: an Lp ball's box, or a per-coordinate Box
    lo_t, hi_t = ps.select([i]).to(torch.float64).box()
    lo, hi = lo_t.reshape(-1).numpy(), hi_t.reshape(-1).numpy()
    d = len(center)
    cols = f.add_cols(lo, hi, KIND_INPUT, 0, np.arange(d))
    f.input_cols = cols
    if ps.p == 1.0:
        # t_i >= |x_i - c_i|, sum t <= eps: the L1 ball exactly, with d auxiliary columns.
        eps = float(ps.eps[i])
        t = f.add_cols(np.zeros(d), np.maximum(hi - center, center - lo), KIND_ABS, 0, np.arange(d))
        sel_x = sp.csr_matrix((np.ones(d), (np.arange(d), cols)), shape=(d, f.n_cols))
        sel_t = sp.csr_matrix((np.ones(d), (np.arange(d), t)), shape=(d, f.n_cols))
        f.add_rows(sel_x - sel_t, np.full(d, -INF), center)
        f.add_rows(sel_x + sel_t, center, np.full(d, INF))
        f.add_rows(sp.csr_matrix((np.ones(d), (np.zeros(d, dtype=int), t)), shape=(1, f.n_cols)), np.array([-INF]), np.array([eps]))
    a = sp.csr_matrix((np.ones(d), (np.arange(d), cols)), shape=(d, f.n_cols))
    return Expr(a, np.zeros(d))


def _materialize(f: Formulation, e: Expr, node: int) -> Expr:
    """Replace a dense expression by fresh columns v with rows v - A cols = c."""
    lo, hi = f.interval(e)
    a = e.padded(f.n_cols)
    cols = f.add_cols(lo, hi, KIND_VALUE, node, np.arange(e.n))
    sel = sp.csr_matrix((np.ones(e.n), (np.arange(e.n), cols)), shape=(e.n, f.n_cols))
    f.add_rows(sel - sp.csr_matrix((a.data, a.indices, a.indptr), shape=(e.n, f.n_cols)), e.c, e.c)
    return Expr(sp.csr_matrix((np.ones(e.n), (np.arange(e.n), cols)), shape=(e.n, f.n_cols)), np.zeros(e.n))


def _add_relu(f: Formulation, node_index: int, x: Expr, lo: np.ndarray, hi: np.ndarray) -> Expr:
    n = x.n
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    uidx = np.flatnonzero(unstable)
    k = len(uidx)
    ncols_before = f.n_cols
    xa = x.padded(ncols_before)
    # output expression: active rows copy x, dead rows are zero, unstable rows point at z
    keep = sp.diags(active.astype(np.float64)) @ xa
    c = np.where(active, x.c, 0.0)
    if k:
        l, u = lo[uidx], hi[uidx]
        z = f.add_cols(np.zeros(k), u, KIND_RELU, node_index, uidx)
        a = f.add_cols(np.zeros(k), np.ones(k), KIND_BINARY, node_index, uidx)
        f.binaries = np.concatenate([f.binaries, a]).astype(np.int32)
        ncols = f.n_cols
        bx = sp.csr_matrix((xa[uidx].data, xa[uidx].indices, xa[uidx].indptr), shape=(k, ncols))
        r = np.arange(k)
        zsel = sp.csr_matrix((np.ones(k), (r, z)), shape=(k, ncols))
        asel = sp.csr_matrix((np.ones(k), (r, a)), shape=(k, ncols))
        cu = x.c[uidx]
        f.add_rows(zsel - bx, cu, np.full(k, INF))  # z >= x
        f.add_rows(zsel - bx - sp.diags(l) @ asel, np.full(k, -INF), cu - l)  # z <= x - l (1 - a)
        f.add_rows(zsel - sp.diags(u) @ asel, np.full(k, -INF), np.zeros(k))  # z <= u a
        keep = sp.csr_matrix((keep.data, keep.indices, keep.indptr), shape=(n, ncols)) + sp.csr_matrix(
            (np.ones(k), (uidx, z)), shape=(n, ncols))
    return Expr(sp.csr_matrix(keep), c)


def build_model(
    net: Network,
    pset: LpBall,
    example_index: int,
    bounds: NodeBounds | None = None,
    *,
    integer: bool = True,
    highs: highspy.Highs | None = None,
    refine: Refine | None = None,
    materialize_nnz: int = MATERIALIZE_NNZ,
) -> Formulation:
    """Encode ``net`` on example ``example_index`` of ``pset``.

    ``bounds`` (node index -> (lower, upper), shape (N, *node.shape)) are intersected with
    interval bounds computed on the model itself; ``refine(form, input_node, expr, lo, hi)`` may
    tighten a ReLU input's bounds further on the model built so far. With ``integer=False``
    the binaries are continuous (the LP relaxation); call ``form.set_integer()`` later.
    """
    if highs is None:
        highs = highs_run.new()
    f = Formulation(highs, net, pset, example_index)
    f.exprs[0] = _add_input(f)
    for node in net.graph[1:]:
        op = node.op
        if isinstance(op, Add):
            parts = [f.exprs[j] for j in node.inputs]
            a = sum(p.padded(f.n_cols) for p in parts)
            e = Expr(sp.csr_matrix(a), cast(np.ndarray, sum(p.c for p in parts)))  # an Add has inputs: never 0
        elif isinstance(op, AffineLayer):
            src = f.exprs[node.inputs[0]]
            in_shape = net.graph[node.inputs[0]].shape
            m = op.matrix(in_shape)
            off = op.offset(in_shape, torch.zeros(1, dtype=torch.float64)).reshape(-1).numpy()
            e = Expr(sp.csr_matrix(m @ src.padded(f.n_cols)), m @ src.c + off)
        elif isinstance(op, ReLU):
            src_i = node.inputs[0]
            x = f.exprs[src_i]
            lo, hi = f.interval(x)
            given = _node_bounds(bounds, src_i, example_index)
            if given is not None:
                lo, hi = np.maximum(lo, given[0]), np.minimum(hi, given[1])
            if refine is not None:
                lo, hi = refine(f, src_i, x, lo, hi)
            f.pre_bounds[src_i] = (lo, hi)
            e = _add_relu(f, node.index, x, lo, hi)
        else:
            raise UnsupportedLayerError(f"the MIP formulation does not support {getattr(op, 'describe', lambda: op)()}")
        if e.n and e.a.nnz / e.n > materialize_nnz and node.index != len(net.graph) - 1:
            e = _materialize(f, e, node.index)
        f.exprs[node.index] = e
    if integer:
        f.set_integer(True)
    return f


__all__ = ["Expr", "Formulation", "NodeBounds", "build_model", "BOUND_SLACK", "INF"]
