"""Representation quality of learned embeddings (Liu et al. 2022, "Towards understanding
grokking: an effective theory of representation learning", Sections 3.1, Appendices A, D, E, H).

A task is anything with ``samples`` (int [N, 2], rows (a, b)) and ``results`` (int [N]); the
tasks of ``grokfast.tasks.algebra`` qualify, and so does a plain tuple ``(samples, results)``.
Sample subsets (``samples``, ``mask``, ``train_mask``, ``train_samples``) are given as a bool
mask [N] over the task's samples (as ``task.split`` returns), sample indices [M], or (a, b)
pairs [M, 2] (looked up; for an unordered task (b, a) is the sample (a, b)).

A representation R (one row per symbol: ``task.p`` rows, or max symbol + 1 for a plain tuple)
is either

- vectors ``E`` [p, d], combined by sum: Z(a, b) = E_a + E_b (Euclidean norm), or
- matrices ``E`` [p, k, k], combined by product: Z(a, b) = E_a @ E_b (Frobenius norm;
  Appendix H), matching ``PermutationGroup.table[a, b]`` = a∘b.

P0 = the unordered pairs {s, t} of distinct samples with the same result (|P0| = 70 for
Addition(10)); a pair is a δ-parallelogram when |Z(s) - Z(t)| <= δ (inclusive). Counting never
enumerates pairs in Python: the combined representations are built once (float32, see below)
and counted by ``grokfast.pairs.count_within_classes`` with classes = results, so a whole RQI(δ)
curve costs one pass.

Distance conventions (``metric``):

=============  ============================================================================
``"norm"``     the paper's Definition 1 / Eq. 2: |Z(s) - Z(t)| <= δ on the raw embeddings
               (Euclidean for vectors, Frobenius for matrices).
``"mean_sq"``  the public grokking-squared code (github.com/ejmichaud/grokking-squared,
               toy/train_add.py): each embedding dimension is standardized over the p
               embeddings, E'_k = (E_k - mean) / std with torch's default unbiased std
               (ddof = 1), and a pair counts when mean over the d dimensions of
               (Z'(s) - Z'(t))^2 <= δ, i.e. |Z'(s) - Z'(t)| <= sqrt(δ d) (the code used
               δ = 0.01). The code compares with a strict ``<``; here the comparison is
               inclusive like everywhere in grokfast, which differs only on exact ties.
               Vectors only (standardizing entries does not commute with matrix products).
=============  ============================================================================

Note Appendix H writes the matrix criterion as ||E_a E_b - E_c E_d||_F^2 <= δ (squared): pass
sqrt(δ) to reproduce it with ``metric="norm"``.

Exactness: the combined representations are formed in float64 (float32 inputs: in float32,
which is the correctly rounded exact sum) and rounded once to float32; decisions are then exact
for those float32 values (the kernel's guarantee). Equal sums in exact arithmetic therefore stay
tied at δ = 0.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from grokfast.ops.pairs import _radii
from grokfast.pairs import count_within_classes

Delta = Union[float, int, Sequence[float], Tensor, np.ndarray]
METRICS = ("norm", "mean_sq")
PHASES = ("comprehension", "grokking", "memorization", "confusion")
_CHUNK_ELEMENTS = 1 << 24  # float64 temporaries of the combine stay below 128 MiB
_PRIME = 2 ** 31 - 1  # modulus of the fast elimination (products fit int64)


# ---------------------------------------------------------------------------------------------
# Argument handling


class _TaskData(NamedTuple):
    samples: np.ndarray  # int64 [N, 2]
    results: np.ndarray  # int64 [N]
    p: int  # number of symbols (rows E must have)
    unordered: bool
    task: object


def _int_array(name: str, value, ndim: int) -> np.ndarray:
    a = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if a.size == 0:
        return np.zeros((0, 2) if ndim == 2 else (0,), dtype=np.int64)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    return a.astype(np.int64, copy=False)


def _task(task) -> _TaskData:
    if isinstance(task, tuple) and len(task) == 2:
        samples, results, obj = task[0], task[1], None
    elif hasattr(task, "samples") and hasattr(task, "results"):
        samples, results, obj = task.samples, task.results, task
    else:
        raise TypeError(f"task: expected a task with .samples and .results (e.g. "
                        f"grokfast.tasks.algebra.Addition) or a tuple (samples, results), "
                        f"got {type(task).__name__}")
    s = _int_array("task.samples", samples, 2)
    if s.shape[1] != 2:
        raise ValueError(f"task.samples: expected shape (N, 2) (rows (a, b)), "
                         f"got {tuple(s.shape)}")
    r = _int_array("task.results", results, 1)
    if r.shape[0] != s.shape[0]:
        raise ValueError(f"task.results: expected shape ({s.shape[0]},) (one result per "
                         f"sample), got {tuple(r.shape)}")
    if s.size and s.min() < 0:
        raise ValueError("task.samples: symbols must be >= 0")
    p = getattr(obj, "p", None)
    if p is None:
        p = int(s.max()) + 1 if s.size else 0
    elif s.size and s.max() >= p:
        raise ValueError(f"task.samples: symbol {int(s.max())} is out of range for p = {p}")
    return _TaskData(s, r, int(p), bool(getattr(obj, "unordered", False)), obj)


def _selection(name: str, value, t: _TaskData) -> np.ndarray:
    """A subset of the task's samples as a bool mask [N]: None (all), a bool mask [N], sample
    indices [M], or (a, b) pairs [M, 2] (looked up; (b, a) = (a, b) for unordered tasks)."""
    N = t.samples.shape[0]
    if value is None:
        return np.ones(N, dtype=bool)
    a = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if a.dtype == np.bool_:
        if a.shape != (N,):
            raise ValueError(f"{name}: expected a bool mask of shape ({N},) (one flag per "
                             f"sample of the task), got {tuple(a.shape)}")
        return a.copy()
    if a.size == 0:
        return np.zeros(N, dtype=bool)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected a bool mask [N], sample indices [M] or (a, b) "
                        f"pairs [M, 2], got dtype {a.dtype}")
    mask = np.zeros(N, dtype=bool)
    if a.ndim == 1:
        if a.min() < 0 or a.max() >= N:
            raise ValueError(f"{name}: sample indices must lie in [0, {N}), got "
                             f"{int(a.min())}..{int(a.max())}")
        mask[a] = True
        return mask
    if a.ndim == 2 and a.shape[1] == 2:
        if t.task is not None and hasattr(t.task, "index_of"):
            try:
                idx = np.asarray(t.task.index_of(a))
            except ValueError as exc:
                msg = str(exc)
                raise ValueError(f"{name}: {msg[7:] if msg.startswith('pairs: ') else msg}") \
                    from None
        else:
            idx = _lookup_pairs(name, a, t)
        mask[idx] = True
        return mask
    raise ValueError(f"{name}: expected a bool mask [N], sample indices [M] or (a, b) pairs "
                     f"[M, 2], got shape {tuple(a.shape)}")


def _lookup_pairs(name: str, pairs: np.ndarray, t: _TaskData) -> np.ndarray:
    """Sample indices of (a, b) pairs for a task given as plain arrays (no ``index_of``)."""
    if pairs.min() < 0:
        raise ValueError(f"{name}: symbols must be >= 0")
    P = max(t.p, int(pairs.max()) + 1)
    code = t.samples[:, 0] * P + t.samples[:, 1]
    order = np.argsort(code, kind="stable")
    sorted_codes = code[order]

    def find(q: np.ndarray) -> np.ndarray:
        c = q[:, 0] * P + q[:, 1]
        pos = np.searchsorted(sorted_codes, c)
        found = pos < len(sorted_codes)
        found[found] = sorted_codes[pos[found]] == c[found]
        out = np.full(len(c), -1, dtype=np.int64)
        out[found] = order[pos[found]]
        return out

    idx = find(pairs)
    if t.unordered:
        idx = np.where(idx < 0, find(pairs[:, ::-1]), idx)
    if (idx < 0).any():
        k = int(np.nonzero(idx < 0)[0][0])
        raise ValueError(f"{name}: row {k} = ({int(pairs[k, 0])}, {int(pairs[k, 1])}) is not "
                         f"a sample of the task")
    return idx


def _deltas(value) -> tuple[list[float], bool]:
    """(radii, scalar) from a number or a 1-D sequence; names ``delta`` in errors."""
    return _radii("delta", value, "threshold")


def _embeddings(E, p: int) -> Tensor:
    if isinstance(E, np.ndarray):
        e = torch.from_numpy(np.ascontiguousarray(E))
    elif isinstance(E, Tensor):
        e = E.detach()
    else:
        raise TypeError(f"E: expected a torch.Tensor or numpy array, got {type(E).__name__}")
    if not e.is_floating_point():
        raise TypeError(f"E: expected floating-point embeddings, got dtype {e.dtype}")
    if e.dim() == 3:
        if e.shape[1] != e.shape[2] or e.shape[1] == 0:
            raise ValueError(f"E: matrix embeddings must be square [p, k, k] with k >= 1, got "
                             f"shape {tuple(e.shape)}")
    elif e.dim() == 2:
        if e.shape[1] == 0:
            raise ValueError(f"E: expected at least one embedding dimension, got shape "
                             f"{tuple(e.shape)}")
    else:
        raise ValueError(f"E: expected vectors [p, d] (combined by sum) or matrices [p, k, k] "
                         f"(combined by product), got shape {tuple(e.shape)}")
    if e.shape[0] != p:
        raise ValueError(f"E: expected one embedding per symbol of the task, {p} rows, got "
                         f"shape {tuple(e.shape)}")
    if e.numel() and not _all_finite(e):
        raise ValueError("E: contains NaN or infinite values")
    if e.dtype not in (torch.float32, torch.float64):
        e = e.float()  # float16 / bfloat16: exact in float32
    return e


def _all_finite(x: Tensor) -> bool:
    if x.is_cuda or x.dtype not in (torch.float32, torch.float64):
        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x.numpy()).all())  # torch's CPU thread pool is slow to wake


def _metric(value) -> str:
    if value not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(map(repr, METRICS))}, "
                         f"got {value!r}")
    return value


def _combined(e: Tensor, a: np.ndarray, b: np.ndarray) -> Tensor:
    """float32 [M, D]: E_a + E_b (vectors) or E_a @ E_b flattened (matrices)."""
    M = len(a)
    dev = e.device
    ia = torch.from_numpy(a).to(dev)
    ib = torch.from_numpy(b).to(dev)
    if e.dim() == 2:
        D = e.shape[1]
        if not e.is_cuda:  # numpy gathers are several times faster than torch's on the CPU
            en = e.numpy()
            with np.errstate(over="ignore"):  # overflow is reported by the caller
                z = np.empty((M, D), dtype=np.float32)
                if en.dtype == np.float32:  # float32 addition: the correctly rounded exact sum
                    # in chunks: temporaries stay small, only z itself is fresh memory
                    step = max(1, (1 << 18) // D)  # 1 MiB temporaries: reused, never mapped
                    for s in range(0, M, step):
                        np.add(en[a[s:s + step]], en[b[s:s + step]], out=z[s:s + step])
                    return torch.from_numpy(z)
                step = max(1, _CHUNK_ELEMENTS // D)
                for s in range(0, M, step):
                    z[s:s + step] = en[a[s:s + step]] + en[b[s:s + step]]
            return torch.from_numpy(z)
        if e.dtype == torch.float32:
            return e[ia] + e[ib]
        e64 = e.double()
        out = torch.empty(M, D, dtype=torch.float32, device=dev)
        step = max(1, _CHUNK_ELEMENTS // D)
        for s in range(0, M, step):
            out[s:s + step] = (e64[ia[s:s + step]] + e64[ib[s:s + step]]).float()
        return out
    k = e.shape[1]
    e64 = e.double()  # float64 products: no TF32, one rounding to float32 at the end
    out = torch.empty(M, k * k, dtype=torch.float32, device=dev)
    step = max(1, _CHUNK_ELEMENTS // (k * k))
    for s in range(0, M, step):
        prod = torch.bmm(e64[ia[s:s + step]], e64[ib[s:s + step]])
        out[s:s + step] = prod.reshape(-1, k * k).float()
    return out


def _points_and_radii(E, t: _TaskData, sel: np.ndarray, radii: list[float], metric: str):
    e = _embeddings(E, t.p)
    if metric == "mean_sq":
        if e.dim() != 2:
            raise ValueError("metric: 'mean_sq' is defined for vector embeddings [p, d] only "
                             "(for matrices use 'norm'; Appendix H's squared criterion "
                             "||.||_F^2 <= delta is 'norm' with sqrt(delta))")
        if e.shape[0] < 2:
            raise ValueError("E: metric='mean_sq' standardizes over the embeddings and needs "
                             "at least 2 of them")
        e64 = e.double()
        std = e64.std(0)
        if not bool((std > 0).all()):
            k = int(torch.nonzero(std <= 0)[0, 0])
            raise ValueError(f"E: dimension {k} is constant over the {e.shape[0]} embeddings; "
                             f"metric='mean_sq' divides by its standard deviation")
        e = (e64 - e64.mean(0)) / std
        d = e.shape[1]
        radii = [math.sqrt(r * d) for r in radii]
    z = _combined(e, t.samples[sel, 0], t.samples[sel, 1])
    if z.numel() and _may_overflow(e) and not _all_finite(z):
        raise ValueError("E: the combined representations overflow float32 (embeddings too "
                         "large)")
    return z, radii


def _may_overflow(e: Tensor) -> bool:
    """Whether combining these (finite) embeddings could leave the float32 range."""
    if e.numel() == 0:
        return False
    big = float(e.abs().max()) if e.is_cuda else float(np.abs(e.numpy()).max())
    bound = 2 * big if e.dim() == 2 else e.shape[1] * big * big
    return not bound < 1e38


def _classes(t: _TaskData, sel: np.ndarray, device) -> Tensor:
    return torch.from_numpy(t.results[sel]).to(device)


def _pairs_per_class(results: np.ndarray) -> int:
    if results.size == 0:
        return 0
    if results.min() >= 0 and results.max() < 4 * results.size + 1024:
        n = np.bincount(results)
    else:
        _, n = np.unique(results, return_counts=True)
    return int((n * (n - 1) // 2).sum())


# ---------------------------------------------------------------------------------------------
# Counting measures


def p0_size(task, samples=None) -> int:
    """|P0|: the unordered pairs of distinct samples with the same result among ``samples``
    (default: all samples of the task). 70 for Addition(10); 3 for Addition(4) (Eq. 19)."""
    t = _task(task)
    sel = _selection("samples", samples, t)
    return _pairs_per_class(t.results[sel])


def parallelogram_count(E, task, delta: Delta, samples=None, mask=None, *,
                        metric: str = "norm"):
    """|P(R, δ)| (Eq. 2): the pairs of P0 (among ``samples``) that are δ-parallelograms of the
    representation E, for one δ or a whole curve in one pass.

    E: vectors [p, d] (sum) or matrices [p, k, k] (product), float, torch (CPU/CUDA) or numpy.
    task: a task (``.samples``, ``.results``) or a tuple (samples, results).
    delta: a threshold >= 0 or a 1-D sequence of thresholds.
    samples: the sample set (None = all; bool mask [N], indices [M] or (a, b) pairs [M, 2]).
    mask: optional subset of the task's samples (bool [N], or indices / pairs like samples);
    both samples of a counted pair must be in it (the kernel's mask), e.g. to count the
    parallelograms among the training samples while P0 stays over ``samples``.
    metric: "norm" or "mean_sq" (module docstring).
    Returns an int for a scalar delta, else an int64 tensor [R] (CPU).
    """
    t = _task(task)
    metric = _metric(metric)
    radii, scalar = _deltas(delta)
    sel = _selection("samples", samples, t)
    m = None if mask is None else _selection("mask", mask, t)
    counts = _count(E, t, radii, sel, m, metric)
    return int(counts[0]) if scalar else counts


def _count(E, t: _TaskData, radii: list[float], sel: np.ndarray, m: Optional[np.ndarray],
           metric: str) -> Tensor:
    # Samples in class order: the kernel then counts the points in place, without a sorted copy.
    sel = np.flatnonzero(sel) if sel.dtype == bool else np.asarray(sel)
    sel = sel[np.argsort(t.results[sel], kind="stable")]
    z, radii = _points_and_radii(E, t, sel, radii, metric)
    if z.shape[0] < 2:
        return torch.zeros(len(radii), dtype=torch.int64)
    km = None if m is None else torch.from_numpy(m[sel]).to(z.device)
    counts = count_within_classes(z, _classes(t, sel, z.device), radii, mask=km).pairs
    return counts.cpu().reshape(len(radii))


def rqi(E, task, delta: Delta, samples=None, metric: str = "norm"):
    """Representation quality index RQI(R, δ) = |P(R, δ)| / |P0| (Eq. 3), P0 over ``samples``
    (default: all samples of the task).

    A linear representation E_k = a + k b has RQI 1 on Addition, a random one 0. Arguments as
    ``parallelogram_count``. Returns a float for a scalar delta, else a float64 tensor [R]
    (CPU), one pass for the whole curve; NaN where P0 is empty (no two samples share a result).
    """
    t = _task(task)
    metric = _metric(metric)
    radii, scalar = _deltas(delta)
    sel = _selection("samples", samples, t)
    total = _pairs_per_class(t.results[sel])
    counts = _count(E, t, radii, sel, None, metric)
    out = counts.double() / total if total else torch.full((len(radii),), float("nan"),
                                                           dtype=torch.float64)
    return float(out[0]) if scalar else out


def predicted_accuracy(E, task, train_mask, delta: Delta, *, metric: str = "norm"):
    """Predicted accuracy Acc-hat = |D̄| / |D0| (Appendix D, Eq. 12-13): D0 = all samples of
    the task, D = the training set, and D̄ = D ∪ {samples s with a training sample t != s of
    the same result such that (s, t) is a δ-parallelogram of E}: the samples a decoder with
    zero training loss gets right through a parallelogram.

    train_mask: the training set (bool mask [N] as from ``task.split``; also indices or pairs).
    Other arguments as ``parallelogram_count``. Returns a float, or a float64 tensor [R] for a
    sequence of deltas (one kernel pass).
    """
    t = _task(task)
    metric = _metric(metric)
    radii, scalar = _deltas(delta)
    train = _selection("train_mask", train_mask, t)
    N = t.samples.shape[0]
    if N == 0:
        raise ValueError("task: has no samples")
    sel = np.ones(N, dtype=bool)
    z, radii = _points_and_radii(E, t, sel, radii, metric)
    km = torch.from_numpy(train).to(z.device)
    nb = count_within_classes(z, _classes(t, sel, z.device), radii, mask=km,
                              neighbors=True).neighbors.cpu()
    nb = nb.reshape(N, -1)
    covered = torch.from_numpy(train)[:, None] | (nb > 0)
    acc = covered.sum(0).double() / N
    return float(acc[0]) if scalar else acc


# ---------------------------------------------------------------------------------------------
# Ideal model: parallelograms implied by the training set (Appendix E)


class IdealStructure(NamedTuple):
    """What an ideal model learns from a training set D (Appendix E).

    rqi: |P(D)| / |P0| (Eq. 16); accuracy: |D̄(D, P(D))| / |D0| (Eq. 17); implied: |P(D)|;
    total: |P0|; rank: rank of A(P0(D)) (Eq. 7); nullity: p - rank, the degrees of freedom of
    the ground states (2 for a unique linear structure of addition, up to translation and
    scale); group: int64 [N], samples s, t of the same result are an implied parallelogram iff
    group[s] == group[t]; covered: bool [N], the samples of D̄ (predicted right).
    """

    rqi: float
    accuracy: float
    implied: int
    total: int
    rank: int
    nullity: int
    group: Tensor
    covered: Tensor


def _modp_independent_rows(G: np.ndarray) -> list[int]:
    """Indices of rows of the integer matrix G that are linearly independent mod _PRIME (hence
    over the rationals), spanning its row space mod _PRIME (Gaussian elimination, vectorised
    over rows)."""
    M = G % _PRIME
    orig = np.arange(G.shape[0])
    keep = M.any(1)
    M, orig = M[keep], orig[keep]
    chosen = []
    for c in range(G.shape[1]):
        if M.shape[0] == 0:
            break
        nz = np.flatnonzero(M[:, c])
        if nz.size == 0:
            continue
        r = nz[0]
        chosen.append(int(orig[r]))
        piv = (M[r] * pow(int(M[r, c]), _PRIME - 2, _PRIME)) % _PRIME
        rest = np.ones(M.shape[0], dtype=bool)
        rest[r] = False
        M, orig = M[rest], orig[rest]
        f = M[:, c]
        hit = f != 0
        if hit.any():
            M[hit] = (M[hit] - (f[hit, None] * piv[None, :]) % _PRIME) % _PRIME
            alive = M.any(1)
            M, orig = M[alive], orig[alive]
    return chosen


def _rref_exact(S: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Fraction-free Gauss-Jordan elimination of the independent integer rows S [r, p] over the
    rationals (Python integers): returns (M, pivots) with M [r, p] object (integers) such that
    M / M[k, pivots[k]] is the reduced row echelon form. Every division is checked exact."""
    M = S.astype(object)
    r, p = M.shape
    prev = 1
    pivots: list[int] = []
    row = 0
    for c in range(p):
        if row == r:
            break
        nz = [i for i in range(row, r) if M[i, c] != 0]
        if not nz:
            continue
        i = nz[0]
        if i != row:
            M[[row, i]] = M[[i, row]]
        pv = M[row, c]
        col = M[:, c].copy()
        col[row] = 0
        num = M * pv - np.outer(col, M[row])
        num[row] = M[row] * prev  # the pivot row is only rescaled (exact division below)
        q = num // prev
        if prev != 1 and not (q * prev == num).all():  # never expected: exact by Sylvester
            return _rref_fractions(S)
        M = q
        prev = pv
        pivots.append(c)
        row += 1
    if row != r:
        raise AssertionError("rows expected independent")
    return M, pivots


def _rref_fractions(S: np.ndarray) -> tuple[np.ndarray, list[int]]:
    M = [[Fraction(int(v)) for v in rowv] for rowv in S]
    r, p = S.shape
    pivots = []
    row = 0
    for c in range(p):
        if row == r:
            break
        i = next((i for i in range(row, r) if M[i][c] != 0), None)
        if i is None:
            continue
        M[row], M[i] = M[i], M[row]
        pv = M[row][c]
        M[row] = [v / pv for v in M[row]]
        for i in range(r):
            if i != row and M[i][c] != 0:
                f = M[i][c]
                M[i] = [u - f * v for u, v in zip(M[i], M[row])]
        pivots.append(c)
        row += 1
    den = 1
    for rowv in M:
        for v in rowv:
            den = den * v.denominator // math.gcd(den, v.denominator)
    out = np.array([[int(v * den) for v in rowv] for rowv in M], dtype=object).reshape(r, p)
    return out, pivots


def _normal_form_keys(M: np.ndarray, pivots: list[int], p: int) -> np.ndarray:
    """Integer matrix F [p, p - r] (object): row j = L * (normal form of e_j modulo the row
    space), restricted to the non-pivot columns (where normal forms live), L a common
    denominator. Normal forms are linear: NF(e_a + e_b) = F[a] + F[b]."""
    free = [c for c in range(p) if c not in set(pivots)]
    F = np.zeros((p, len(free)), dtype=object)
    F[:] = 0
    L = 1
    for k, c in enumerate(pivots):
        d = abs(int(M[k, c]))
        L = L * d // math.gcd(L, d)
    for j, c in enumerate(free):
        F[c, j] = L
    for k, c in enumerate(pivots):
        scale = L // int(M[k, c])  # exact: M[k, c] divides L (sign included)
        F[c] = [-scale * M[k, f] for f in free]
    return F


def _group_ids(cls: np.ndarray, F: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Group index per sample from its class and its exact normal form F[a] + F[b]."""
    N = cls.shape[0]
    biggest = max((abs(int(v)) for v in F.ravel()), default=0)
    if biggest < (1 << 61):  # sums of two entries fit int64: vectorised
        F64 = F.astype(np.int64)
        keys = F64[samples[:, 0]] + F64[samples[:, 1]]
        _, inv = np.unique(np.concatenate([cls[:, None], keys], 1), axis=0, return_inverse=True)
        return inv.reshape(-1).astype(np.int64)
    keys = F[samples[:, 0]] + F[samples[:, 1]]
    seen: dict = {}
    out = np.empty(N, dtype=np.int64)
    for i in range(N):
        out[i] = seen.setdefault((int(cls[i]),) + tuple(int(v) for v in keys[i]), len(seen))
    return out


def _z_rows(samples: np.ndarray, p: int) -> np.ndarray:
    """int64 [M, p]: z(a, b) = e_a + e_b for each sample row (a, b)."""
    Z = np.zeros((samples.shape[0], p), dtype=np.int64)
    rows = np.arange(samples.shape[0])
    np.add.at(Z, (rows, samples[:, 0]), 1)
    np.add.at(Z, (rows, samples[:, 1]), 1)
    return Z


def ideal_structure(task, train_samples, *, combine: str = "sum") -> IdealStructure:
    """The ideal model's parallelograms P(D) and accuracy from the training set alone
    (Appendix E, Eq. 14-17), for the sum combine E_a + E_b (abelian toy model).

    P(D) = P0(D) ∪ {q ∈ P0 : rank A(P0(D)) = rank A(P0(D) ∪ {q})}: a parallelogram (s, t) is
    implied iff its row z(s) - z(t) (z(a, b) = e_a + e_b ∈ Z^p) lies in the row space V of the
    training equations. Method (exact): V is spanned by z(t) - z(t0) over the training samples
    t of each result class (t0 its first training sample); a basis is selected by Gaussian
    elimination mod the prime 2^31 - 1 (rows independent mod a prime are independent over Q),
    its reduced row echelon form is computed over the rationals by fraction-free elimination
    on Python integers, and every sample gets the exact normal form of z(s) modulo V
    (NF(z(a, b)) = NF(e_a) + NF(e_b)); (s, t) ∈ P0 is implied iff the normal forms are equal.
    The modular step looks at a few p generators first; every training equation is then
    checked to reduce to zero exactly, and rows that do not (not yet spanned, or missed
    because the prime divides a minor) are added and the basis recomputed until all do, so the
    result is exact rational arithmetic, not a floating-point tolerance (the public code uses
    eigenvalues of A^T A < 1e-8). Cost: about O(p^3) int64 operations for the modular step,
    O(rank^2 p) big-integer ones for the exact basis and O(N p) for the normal forms; about a
    second at p = 200 (p(p+1)/2 samples).

    train_samples: the training set D (bool mask [N], indices, or (a, b) pairs).
    combine: "sum"; "product" (matrix embeddings, non-abelian groups) raises
    NotImplementedError: Appendix H only sketches its three-parallelogram deduction, which is
    not a rank test.
    """
    if combine == "product":
        raise NotImplementedError(
            "ideal_structure: combine='product' (matrix embeddings) is not implemented: for "
            "non-abelian groups Appendix H deduces a parallelogram from three others "
            "(E_b^-1 E_a = E_c E_d^-1 = ...), a nonlinear deduction that the rank test of "
            "Appendix E does not capture. Use combine='sum' (the abelian toy model).")
    if combine != "sum":
        raise ValueError(f"combine: expected 'sum' or 'product', got {combine!r}")
    t = _task(task)
    train = _selection("train_samples", train_samples, t)
    N, p = t.samples.shape[0], t.p
    cls = t.results
    if N == 0:
        raise ValueError("task: has no samples")
    # generators of V: z(t) - z(anchor), anchor = the first training sample of t's class
    tr = np.flatnonzero(train)
    uc, first = np.unique(cls[tr], return_index=True)
    anchor = tr[first[np.searchsorted(uc, cls[tr])]]
    G = _z_rows(t.samples[tr], p) - _z_rows(t.samples[anchor], p)
    G = G[G.any(1)]
    if G.shape[0]:
        G = np.unique(G, axis=0)
        # a basis is usually found among a few p rows; the exact check below adds the rest
        G = G[np.random.default_rng(0).permutation(G.shape[0])]
    first_rows = G[:4 * p + 64]
    rows = [first_rows[i] for i in _modp_independent_rows(first_rows)]
    while True:
        if rows:
            M, pivots = _rref_exact(np.stack(rows))
        else:
            M, pivots = np.zeros((0, p), dtype=object), []
        group = _group_ids(cls, _normal_form_keys(M, pivots, p), t.samples)
        bad = np.flatnonzero(group[tr] != group[anchor])
        if bad.size == 0:  # every training equation reduces to zero: the basis spans V
            break
        missed = _z_rows(t.samples[tr[bad]], p) - _z_rows(t.samples[anchor[bad]], p)
        both = np.concatenate([np.stack(rows) if rows else missed[:0], np.unique(missed, axis=0)])
        grown = _modp_independent_rows(both)
        if len(grown) > len(rows):
            rows = [both[i] for i in grown]
        else:  # the prime divides a minor: the missed row is independent over Q all the same
            rows.append(missed[0])
    rank = len(pivots)
    counts = np.bincount(group)
    implied = int((counts * (counts - 1) // 2).sum())
    total = _pairs_per_class(cls)
    has_train = np.bincount(group, weights=train.astype(np.float64), minlength=len(counts)) > 0
    covered = has_train[group]
    return IdealStructure(
        rqi=implied / total if total else float("nan"),
        accuracy=float(covered.sum()) / N,
        implied=implied, total=total, rank=rank, nullity=p - rank,
        group=torch.from_numpy(group), covered=torch.from_numpy(covered))


def ideal_rqi(task, train_samples, *, combine: str = "sum") -> float:
    """Ideal RQI = |P(D)| / |P0| (Appendix E, Eq. 16): the RQI an ideal model reaches from the
    training set alone; an upper bound of RQI(R) under the "Alexander principle". See
    ``ideal_structure`` for the exact method; NaN where P0 is empty."""
    return ideal_structure(task, train_samples, combine=combine).rqi


def ideal_accuracy(task, train_samples, *, combine: str = "sum") -> float:
    """Ideal accuracy = |D̄(D, P(D))| / |D0| (Appendix E, Eq. 17): training samples plus every
    sample that an implied parallelogram ties to a training sample of the same result."""
    return ideal_structure(task, train_samples, combine=combine).accuracy


# ---------------------------------------------------------------------------------------------
# Phases of learning (Appendix A, Table 1)


class PhaseResult(NamedTuple):
    """phase: one of PHASES; train_step / val_step: the first logged step whose accuracy
    passes the threshold within the budget (None if none); delay: val_step - train_step
    (None unless both exist)."""

    phase: str
    train_step: Optional[int]
    val_step: Optional[int]
    delay: Optional[int]


def _float_series(name: str, value) -> np.ndarray:
    a = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.number) or a.size == 0):
        raise TypeError(f"{name}: expected numbers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D series, got shape {tuple(a.shape)}")
    return a.astype(np.float64)


def _first_step(acc: np.ndarray, steps: np.ndarray, threshold: float, budget: float,
                inclusive: bool) -> Optional[int]:
    ok = (acc >= threshold) if inclusive else (acc > threshold)  # NaN never passes
    ok &= steps <= budget
    idx = np.flatnonzero(ok)
    return int(steps[idx[0]]) if idx.size else None


def classify_phase(train_acc, val_acc, steps=None, *, threshold: float = 0.9,
                   max_steps: float = 100_000, max_delay: float = 1_000,
                   inclusive: bool = False) -> PhaseResult:
    """Phase of learning of one training history (Appendix A, Table 1).

    Rule (Table 1, with its numbers as the defaults): let s_train / s_val be the first logged
    step where the training / validation accuracy exceeds ``threshold`` (0.9; ``> 90%``, or
    ``>=`` with inclusive=True as in the public code's train_add.py), counting only steps
    <= ``max_steps`` (10^5: "within 10^5 steps").
      - s_train and s_val exist and s_val - s_train < max_delay (10^3): comprehension;
      - both exist and s_val - s_train >= max_delay: grokking (delayed generalization);
      - s_train exists, s_val does not: memorization;
      - s_train does not exist: confusion ("failure to even memorize training data"; Table 1
        lists only train No / val No — a history whose validation accuracy passes without
        the training accuracy is also called confusion here).
    A validation crossing before the training one gives a negative delay: comprehension.

    train_acc, val_acc: 1-D series of accuracies in [0, 1] logged at ``steps`` (same length;
    default 0, 1, 2, ...). NaN entries never pass.
    """
    tr = _float_series("train_acc", train_acc)
    va = _float_series("val_acc", val_acc)
    if va.shape != tr.shape:
        raise ValueError(f"val_acc: expected the length of train_acc ({tr.shape[0]}), "
                         f"got {va.shape[0]}")
    if steps is None:
        st = np.arange(tr.shape[0], dtype=np.float64)
    else:
        st = _float_series("steps", steps)
        if st.shape != tr.shape:
            raise ValueError(f"steps: expected the length of train_acc ({tr.shape[0]}), "
                             f"got {st.shape[0]}")
        if st.size > 1 and (np.diff(st) < 0).any():
            raise ValueError("steps: expected a non-decreasing series")
    for name, v in (("threshold", threshold), ("max_steps", max_steps),
                    ("max_delay", max_delay)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)):
            raise TypeError(f"{name}: expected a number, got {v!r}")
    s_train = _first_step(tr, st, float(threshold), float(max_steps), inclusive)
    s_val = _first_step(va, st, float(threshold), float(max_steps), inclusive)
    if s_train is None:
        return PhaseResult("confusion", None, s_val, None)
    if s_val is None:
        return PhaseResult("memorization", s_train, None, None)
    delay = s_val - s_train
    phase = "comprehension" if delay < max_delay else "grokking"
    return PhaseResult(phase, s_train, s_val, delay)


def classify_history(history, *, train_key: str = "train_accuracy",
                     val_key: str = "val_accuracy", step_key: str = "step",
                     **kwargs) -> PhaseResult:
    """``classify_phase`` over a training history: a list of metric records (as read from
    metrics.jsonl; records without both accuracies are skipped) or a dict of equal-length
    series. Keys default to train_accuracy / val_accuracy / step (a missing step key numbers
    the records 0, 1, ...). Keyword arguments go to classify_phase."""
    if isinstance(history, Mapping):
        for k in (train_key, val_key):
            if k not in history:
                raise ValueError(f"history: missing key {k!r}")
        steps = history.get(step_key)
        return classify_phase(history[train_key], history[val_key], steps, **kwargs)
    if not isinstance(history, (list, tuple)):
        raise TypeError(f"history: expected a list of records or a dict of series, got "
                        f"{type(history).__name__}")
    recs = [r for r in history if isinstance(r, Mapping) and r.get(train_key) is not None
            and r.get(val_key) is not None]
    tr = [float(r[train_key]) for r in recs]
    va = [float(r[val_key]) for r in recs]
    if recs and all(step_key in r for r in recs):
        steps = [r[step_key] for r in recs]
    else:
        steps = None
    return classify_phase(np.array(tr, dtype=np.float64), np.array(va, dtype=np.float64),
                          steps, **kwargs)
