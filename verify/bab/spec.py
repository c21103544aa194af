"""The disjunctive output specification as one matrix of spec rows, and the soundness thresholds.

Every row of every disjunct is one spec row ``C_r y - d_r``. A disjunct with two or more rows
also gets one *combination row* sum_i lam_i (C_i y - d_i) with lam on the simplex (optimised
with the slopes): for lam >= 0, not all zero, sum_i lam_i g_i(x) > 0 implies max_i g_i(x) > 0,
so a positive bound on it rules the disjunct out even where no single row's bound can (on a
fixed activation pattern the best lam gives the LP value of min_x max_i g_i(x), by LP duality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..bounds.certify import row_threshold
from ..query import Disjunct


@dataclass(frozen=True)
class Rows:
    C: Tensor  # (R, n_out) float64: every row of every disjunct
    d: Tensor  # (R,)
    owner: Tensor  # (R,) long: the disjunct of each row
    combo_C: Tensor  # (K2, M, n_out): the rows of each multi-row disjunct, zero padded
    combo_d: Tensor  # (K2, M)
    combo_mask: Tensor  # (K2, M) bool
    combo_owner: Tensor  # (K2,) long
    thr: Tensor  # (R + K2,) float64: a row's lower bound must exceed this to count
    n_disjuncts: int

    @property
    def n_rows(self) -> int:
        return int(self.C.shape[0])

    @property
    def n_all(self) -> int:
        """Rows plus combination rows."""
        return int(self.C.shape[0] + self.combo_C.shape[0])

    @property
    def owner_all(self) -> Tensor:
        return torch.cat([self.owner, self.combo_owner])

    def spec(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(A (B, R + K2, n_out), d (B, R + K2)) for combination weights softmax(theta) (theta: (B, K2, M))."""
        b = theta.shape[0]
        A = self.C.unsqueeze(0).expand(b, *self.C.shape)
        d = self.d.unsqueeze(0).expand(b, self.n_rows)
        if self.combo_C.shape[0] == 0:
            return A, d
        lam = torch.softmax(theta.masked_fill(~self.combo_mask, -torch.inf), -1)
        cA = torch.einsum("bkm,kmn->bkn", lam, self.combo_C)
        cd = (lam * self.combo_d).sum(-1)
        return torch.cat([A, cA], 1), torch.cat([d, cd], 1)

    def theta0(self, b: int) -> Tensor:
        return torch.zeros((b, *self.combo_d.shape), dtype=torch.float64)

    def decide(self, lb: Tensor) -> Tensor:
        """(B, R + K2) row bounds (already minus d) -> (B, K) bool: disjunct ruled out."""
        return _any_by_owner(lb > self.thr, self.owner_all, self.n_disjuncts)

    def value(self, lb: Tensor) -> Tensor:
        """(B, R + K2) -> (B, K): max over each disjunct's rows (-inf for a disjunct without rows)."""
        return _max_by_owner(lb, self.owner_all, self.n_disjuncts)


def _max_by_owner(v: Tensor, owner: Tensor, k: int) -> Tensor:
    out = torch.full((v.shape[0], k), -torch.inf, dtype=v.dtype)
    if v.shape[1] == 0:
        return out
    return out.scatter_reduce(1, owner.unsqueeze(0).expand_as(v), v, "amax", include_self=True)


def _any_by_owner(ok: Tensor, owner: Tensor, k: int) -> Tensor:
    return _max_by_owner(ok.to(torch.float64), owner, k) > 0


def make_rows(disjuncts: Sequence[Disjunct], n_out: int, logit_scale: float) -> Rows:
    """Rows, combination rows and thresholds: :func:`verify.bounds.certify.row_threshold`, the rule
    of the bound stage (:func:`verify.bounds.certify_rows`)."""
    Cs, ds, owners = [], [], []
    cC, cd, cm, co = [], [], [], []
    m_max = max([1] + [len(dj.d) for dj in disjuncts])
    for k, dj in enumerate(disjuncts):
        C64 = torch.as_tensor(dj.C, dtype=torch.float64).reshape(-1, n_out)
        d64 = torch.as_tensor(dj.d, dtype=torch.float64).reshape(-1)
        if C64.shape[0] != d64.shape[0]:
            raise ValueError(f"disjunct {k}: C has {C64.shape[0]} rows, d has {d64.shape[0]}")
        if not (torch.isfinite(C64).all() and torch.isfinite(d64).all()):
            raise ValueError(f"disjunct {k} has non-finite entries")
        Cs.append(C64)
        ds.append(d64)
        owners.append(torch.full((C64.shape[0],), k, dtype=torch.long))
        m = C64.shape[0]
        if m >= 2:
            padC = torch.zeros((m_max, n_out), dtype=torch.float64)
            padC[:m] = C64
            padd = torch.zeros(m_max, dtype=torch.float64)
            padd[:m] = d64
            mask = torch.zeros(m_max, dtype=torch.bool)
            mask[:m] = True
            cC.append(padC)
            cd.append(padd)
            cm.append(mask)
            co.append(k)
    C_all = torch.cat(Cs) if Cs else torch.zeros((0, n_out), dtype=torch.float64)
    d_all = torch.cat(ds) if ds else torch.zeros(0, dtype=torch.float64)
    owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
    thr = row_threshold(torch.tensor([logit_scale], dtype=torch.float64), C_all.unsqueeze(0), d_all.unsqueeze(0))[0]
    if cC:
        combo_C, combo_d, combo_mask = torch.stack(cC), torch.stack(cd), torch.stack(cm)
        combo_owner = torch.tensor(co, dtype=torch.long)
        # a convex combination's threshold: the largest of its rows'
        cthr = torch.stack([thr[owner == k].max() for k in co])
    else:
        combo_C = torch.zeros((0, m_max, n_out), dtype=torch.float64)
        combo_d = torch.zeros((0, m_max), dtype=torch.float64)
        combo_mask = torch.zeros((0, m_max), dtype=torch.bool)
        combo_owner = torch.zeros(0, dtype=torch.long)
        cthr = torch.zeros(0, dtype=torch.float64)
    return Rows(C_all, d_all, owner, combo_C, combo_d, combo_mask, combo_owner, torch.cat([thr, cthr]), len(disjuncts))
