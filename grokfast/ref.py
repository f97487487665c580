"""Pure-PyTorch references of every kernel: the specification the tests compare against,
and a fallback that runs anywhere torch does."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def rnn(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor] = None,
        h0: Optional[Tensor] = None, w_out: Optional[Tensor] = None,
        b_out: Optional[Tensor] = None, *, activation: str = "tanh") -> tuple[Tensor, Optional[Tensor]]:
    """Elman recurrence step by step, for a single model (no model dimension).

    x: int64 token ids [B, T] (W_ih read as an embedding table) or values [B, T, I].
    Returns (hidden states [B, T, H], readouts [B, T, O] or None).
    """
    act = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    B, T = x.shape[0], x.shape[1]
    H = w_hh.shape[0]
    h = torch.zeros(B, H, dtype=w_hh.dtype, device=w_hh.device) if h0 is None else h0.expand(B, H)
    if x.dtype in (torch.int64, torch.int32):
        inputs = w_ih.t()[x.long()]  # [B, T, H]
    else:
        inputs = x @ w_ih.t()
    if bias is not None:
        inputs = inputs + bias
    states = []
    for t in range(T):
        h = act(inputs[:, t] + h @ w_hh.t())
        states.append(h)
    hs = torch.stack(states, 1) if states else w_hh.new_zeros(B, 0, H)
    y = None
    if w_out is not None:
        y = hs @ w_out.t()
        if b_out is not None:
            y = y + b_out
    return hs, y


# ----------------------------------------------------------------------------------------------
# Pair kernels (grokfast.pairs). A pair (i, j) is within radius r iff the float64 evaluation of
# sum_k (x_ik - x_jk)^2 is <= r * r: exact distances of the float32 inputs, no GEMM expansion.
# Memory is O(chunk * N), time O(N^2 D): for tests and small N.

_PAIR_CHUNK = 256


def _points64(X) -> Tensor:
    x = torch.as_tensor(X).detach().cpu()
    if x.dim() != 2:
        raise ValueError(f"X: expected [N, D] points, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _sq_dists64(a: Tensor, b: Tensor) -> Tensor:
    """Exact-input float64 squared distances [len(a), len(b)] (direct differences)."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _within_pairs(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """All pairs i < j with d2 <= eps * eps, as two index tensors."""
    eps2 = float(eps) * float(eps)
    rows, cols = [], []
    n = x.shape[0]
    for i0 in range(0, n, _PAIR_CHUNK):
        d2 = _sq_dists64(x[i0:i0 + _PAIR_CHUNK], x)
        i, j = torch.nonzero(d2 <= eps2, as_tuple=True)
        i = i + i0
        keep = j > i
        rows.append(i[keep])
        cols.append(j[keep])
    if not rows:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(rows), torch.cat(cols)


def components_reference(X, eps: float) -> Tensor:
    """Connected components of the eps-graph (|x_i - x_j| <= eps, transitively), numbered by
    first appearance; int64 [N]. Min-label propagation with pointer jumping over the edge list
    (each label is the smallest index of its component)."""
    x = _points64(X)
    n = x.shape[0]
    lab = torch.arange(n)
    if n == 0:
        return lab
    i, j = _within_pairs(x, eps)
    while True:
        new = lab.clone()
        new.scatter_reduce_(0, i, lab[j], "amin")
        new.scatter_reduce_(0, j, lab[i], "amin")
        while True:  # pointer jumping: a label is a point of the same component
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, lab):
            break
        lab = new
    return torch.unique(lab, return_inverse=True)[1]  # roots ascending = first appearance


def assign_reference(X, centers, eps: float) -> tuple[Tensor, Tensor]:
    """(index int64 [N], distance float32 [N]): nearest center with distance <= eps (ties: the
    lowest index), -1 and +inf where none."""
    x, c = _points64(X), _points64(centers)
    n = x.shape[0]
    eps2 = float(eps) * float(eps)
    index = torch.full((n,), -1, dtype=torch.int64)
    distance = torch.full((n,), float("inf"), dtype=torch.float32)
    if n == 0 or c.shape[0] == 0:
        return index, distance
    for i0 in range(0, n, _PAIR_CHUNK):
        d2 = _sq_dists64(x[i0:i0 + _PAIR_CHUNK], c)
        within = d2 <= eps2
        best, arg = torch.where(within, d2, float("inf")).min(1)  # first minimum: lowest index
        found = within.any(1)
        index[i0:i0 + _PAIR_CHUNK] = torch.where(found, arg, torch.full_like(arg, -1))
        inf = torch.full_like(best, float("inf"))
        distance[i0:i0 + _PAIR_CHUNK] = torch.where(found, best.sqrt(), inf).float()
    return index, distance


def count_pairs_reference(X, eps, groups=None) -> Tensor:
    """Pairs i < j with |x_i - x_j| <= eps for each radius; same return convention as
    grokfast.pairs.count_pairs: [R] or [] without groups, [R, 2] or [2] (same group, different
    groups) with groups."""
    x = _points64(X)
    scalar = not isinstance(eps, (list, tuple)) and torch.as_tensor(eps).dim() == 0
    radii = [float(r) for r in torch.as_tensor(eps, dtype=torch.float64).reshape(-1).tolist()]
    g = None if groups is None else torch.as_tensor(groups).cpu().to(torch.int64)
    n = x.shape[0]
    total = torch.zeros(len(radii), dtype=torch.int64)
    same = torch.zeros(len(radii), dtype=torch.int64)
    for i0 in range(0, n, _PAIR_CHUNK):
        d2 = _sq_dists64(x[i0:i0 + _PAIR_CHUNK], x)
        upper = torch.arange(n)[None, :] > torch.arange(i0, i0 + d2.shape[0])[:, None]
        eq = (g[i0:i0 + d2.shape[0], None] == g[None, :]) if g is not None else None
        for k, r in enumerate(radii):
            within = (d2 <= r * r) & upper
            total[k] += int(within.sum())
            if eq is not None:
                same[k] += int((within & eq).sum())
    out = total if g is None else torch.stack([same, total - same], 1)
    return out[0] if scalar else out


def count_within_classes_reference(X, classes, eps, mask=None) -> tuple[Tensor, Tensor]:
    """(pairs int64 [R], neighbors int64 [N, R]) for the radii eps (a list), as
    grokfast.pairs.count_within_classes: pairs counts unordered same-class pairs within each
    radius (both points in mask, when given); neighbors[i, k] counts the same-class j != i
    within radius k (j in mask, when given)."""
    x = _points64(X)
    c = torch.as_tensor(classes).cpu().to(torch.int64)
    radii = [float(r) for r in torch.as_tensor(eps, dtype=torch.float64).reshape(-1).tolist()]
    m = torch.ones(x.shape[0], dtype=torch.bool) if mask is None else \
        torch.as_tensor(mask).cpu().to(torch.bool)
    n, R = x.shape[0], len(radii)
    pairs = torch.zeros(R, dtype=torch.int64)
    neighbors = torch.zeros(n, R, dtype=torch.int64)
    for value in torch.unique(c).tolist():
        idx = torch.nonzero(c == value).reshape(-1)
        d2 = _sq_dists64(x[idx], x[idx])
        off_diag = ~torch.eye(idx.shape[0], dtype=torch.bool)
        mi = m[idx]
        for k, r in enumerate(radii):
            within = (d2 <= r * r) & off_diag
            pairs[k] += int((within & mi[:, None] & mi[None, :]).sum()) // 2
            neighbors[idx, k] = (within & mi[None, :]).sum(1)
    return pairs, neighbors


# ----------------------------------------------------------------------------------------------
# Automaton tracking (grokfast.ops.rnn_track): one step at a time, all results per sequence.

def rnn_track_reference(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
                        h0: Optional[Tensor], w_out: Tensor, b_out: Optional[Tensor], *,
                        activation: str, centers: Tensor, center_state: Tensor,
                        machine_next: Tensor, machine_initial: int, target_next: Tensor,
                        target_out: Tensor, target_initial: int):
    """(first_disagreement, agree_steps, correct_steps, max_distance), as rnn_track."""
    act = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    B, T = x.shape
    H = w_hh.shape[0]
    h = torch.zeros(B, H, dtype=w_hh.dtype) if h0 is None else h0.expand(B, H).clone()
    qm = torch.full((B,), int(machine_initial), dtype=torch.int64)
    qt = torch.full((B,), int(target_initial), dtype=torch.int64)
    first = torch.full((B,), -1, dtype=torch.int64)
    agree = torch.zeros(B, dtype=torch.int64)
    correct = torch.zeros(B, dtype=torch.int64)
    max_dist = torch.zeros(B, dtype=torch.float32)
    for t in range(T):
        sym = x[:, t].long()
        pre = h @ w_hh.t() + w_ih.t()[sym]
        h = act(pre + bias if bias is not None else pre)
        d2 = ((h[:, None, :] - centers[None]) ** 2).sum(-1)  # [B, S]
        best, nearest = d2.min(dim=1)  # ties: lowest index
        defined = qm >= 0
        qm = torch.where(defined, machine_next[qm.clamp_min(0), sym], torch.full_like(qm, -1))
        qt = target_next[qt, sym]
        ok = (qm >= 0) & (center_state[nearest] == qm)
        agree += ok.long()
        first = torch.where((first < 0) & ~ok, torch.full_like(first, t), first)
        y = h @ w_out.t() + (b_out if b_out is not None else 0)
        correct += (y.argmax(dim=1) == target_out[qt]).long()
        max_dist = torch.maximum(max_dist, best.sqrt().float())
    return first, agree, correct, max_dist
