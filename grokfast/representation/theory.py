"""The effective theory of representation learning (Liu et al. 2022, "Towards understanding
grokking: an effective theory of representation learning", Section 3.2, Appendices F and L).

A training set D is given as plain arrays: ``samples`` int [N, 2] (rows (a, b)) and ``results``
int [N] (the class c = op(a, b) of each row), so every abelian task whose representation
combines by sum, E_a + E_b, works (Liu et al.'s toy addition c = a + b, modular addition, any
commutative table). Rows must be distinct; (a, b) and (b, a) are distinct rows (ordered tasks).

P0(D) (Appendix L, below Eq. 42) = the parallelograms of D: pairs of distinct samples (i, j),
(m, n) of D with the same result. A pair is counted once (unordered, as |P0| = 70 for the toy
addition task with p = 10, the count ``grokfast.representation.p0_size`` uses); counting
ordered pairs would double both the sum and |P0(D)| in Eq. (5) and change nothing. Each
parallelogram is one row e_i + e_j - e_m - e_n of the equation matrix A(P0(D)) (Eq. 7).

Normalisations, as the paper writes them:

- Eq. (5) / (22): ℓ_eff = ℓ0 / Z0, ℓ0 = Σ_{(i,j,m,n) ∈ P0(D)} |E_i + E_j - E_m - E_n|² / |P0(D)|,
  Z0 = Σ_k |E_k|². Section 3.2 states it for the normalised embeddings
  Ẽ_k = (E_k - μ) / σ, μ = (1/p) Σ_k E_k; Appendix F for the raw E. ``effective_loss`` evaluates
  it on E as given (``normalize=True`` normalises first). The paper writes
  σ_t = (1/p) Σ_k |E_k - μ|², which is the variance; we divide by its square root, the reading
  its Figure 4(d) states ("normalized to zero mean and unit variance"). Only the centring
  changes ℓ_eff (it is scale invariant), but the scale sets the speed of the flow: with unit
  variance, Z0 = Σ_k |Ẽ_k|² = p.
- Eq. (8): H_ij = (1/Z0) ∂²ℓ0 / ∂E_i ∂E_j for 1-D embeddings (each dimension obeys the same
  equations), i.e. H = 2 AᵀA / (|P0(D)| Z0) with A = A(P0(D)); Z0 = p (normalised embeddings)
  unless given. Then ℓ_eff = ½ RᵀHR exactly (R = [E_0..E_{p-1}], Z0 held fixed) and H is the
  Hessian of ℓ_eff at every ground state. The paper's "λ_i = σ_i²" is loose: λ_i = 2 σ_i² /
  (|P0(D)| Z0), σ_i the singular values of A(P0(D)).
- Grokking rate λ3 = the third-smallest eigenvalue of H; n_h = 1 / (λ3 η) steps (Section 3.2,
  "Time towards the linear structure").

A correction to Appendix F: Z0 is conserved by the gradient flow of Eq. (23) (Eq. 26 holds: the
gradient of the scale-invariant ℓ_eff is orthogonal to E). The derivation of dC/dt = 0 in
Eq. (27), however, drops the second term of Eq. (25), (ℓ0 / Z0²) ∂Z0/∂E_k = 2 ℓ0 E_k / Z0²,
whose sum over k is 2 ℓ0 C / Z0². The flow actually gives

    dC/dt = (2 ℓ_eff / Z0) C,

so C = Σ_k E_k keeps its direction but grows unless C = 0 (or ℓ0 = 0): it is conserved
exactly for centred embeddings, which the normalised Ẽ of Section 3.2 are. ``effective_flow``
therefore starts from Ẽ0 by default (``normalize=True``): the trajectory then keeps C = 0 and
Z0 = p, the two conservation laws of Eq. (6). With ``normalize=False`` it runs Eq. (23) on E0
as given (Z0 conserved, C growing as above; the tests check both).

Exact arithmetic: ranks and nullities of A(P0(D)) are computed exactly (elimination modulo
primes below 2^31 with a Hadamard bound certificate, see ``_exact_rank``), never with a
floating-point tolerance; the eigenvalues of H are floating point, with exactly ``nullity``
of them set to 0.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

_LOG2_6 = math.log2(6.0)
_METHODS = ("euler", "rk4")


# ---------------------------------------------------------------------------------------------
# Argument handling


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return v


def _int_array(name: str, value, ndim: int) -> np.ndarray:
    if isinstance(value, Tensor):
        a = value.detach().cpu().numpy()
    elif isinstance(value, (np.ndarray, list, tuple)):
        a = np.asarray(value)
    else:
        raise TypeError(f"{name}: expected an integer array (torch tensor, numpy array or "
                        f"list), got {type(value).__name__}")
    if a.size == 0:
        a = a.astype(np.int64).reshape((0, 2) if ndim == 2 else (0,))
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected integers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)}")
    return a.astype(np.int64, copy=False)


class _Data(NamedTuple):
    samples: np.ndarray  # int64 [N, 2]
    cls: np.ndarray  # int64 [N]: class index 0..C-1 of each sample (equal results)
    counts: np.ndarray  # int64 [C]: samples per class
    pairs: int  # |P0(D)| = Σ_c n_c (n_c - 1) / 2
    p: int


def _data(samples, results, p: Optional[int], p_name: str = "p") -> _Data:
    s = _int_array("samples", samples, 2)
    if s.shape[1] != 2:
        raise ValueError(f"samples: expected shape (N, 2) (rows (a, b)), got {tuple(s.shape)}")
    r = _int_array("results", results, 1)
    if r.shape[0] != s.shape[0]:
        raise ValueError(f"results: expected shape ({s.shape[0]},) (one result per row of "
                         f"samples), got {tuple(r.shape)}")
    if s.size and s.min() < 0:
        raise ValueError(f"samples: symbols must be >= 0, got {int(s.min())}")
    if p is None:
        p = int(s.max()) + 1 if s.size else 0
        if p < 2:
            raise ValueError(f"{p_name}: could not infer p >= 2 from samples (max symbol + 1 = "
                             f"{p}); pass p")
    else:
        p = _int(p_name, p, 2)
        if s.size and s.max() >= p:
            raise ValueError(f"samples: symbol {int(s.max())} is out of range for "
                             f"{p_name} = {p}")
    if s.shape[0] > 1:
        key = s[:, 0] * p + s[:, 1]
        _, first, counts = np.unique(key, return_index=True, return_counts=True)
        if (counts > 1).any():
            k = int(np.flatnonzero(counts > 1)[0])
            i = int(first[k])
            j = int(np.flatnonzero(key == key[i])[1])
            raise ValueError(f"samples: rows {i} and {j} are both (a, b) = ({int(s[i, 0])}, "
                             f"{int(s[i, 1])}); a training set is a set of distinct samples")
    _, cls, counts = np.unique(r, return_inverse=True, return_counts=True)
    cls = cls.reshape(-1).astype(np.int64)
    counts = counts.astype(np.int64)
    pairs = int((counts * (counts - 1) // 2).sum())
    return _Data(s, cls, counts, pairs, p)


def _embeddings(name: str, E, *, keep_grad: bool) -> Tensor:
    if isinstance(E, np.ndarray):
        e = torch.from_numpy(np.ascontiguousarray(E))
    elif isinstance(E, Tensor):
        e = E if keep_grad else E.detach()
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got "
                        f"{type(E).__name__}")
    if not e.is_floating_point():
        raise TypeError(f"{name}: expected floating-point embeddings, got dtype {e.dtype}")
    if e.dim() != 2 or e.shape[1] == 0:
        raise ValueError(f"{name}: expected embeddings [p, d] (one row per symbol, d >= 1; "
                         f"use [p, 1] for 1-D), got shape {tuple(e.shape)}")
    if e.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 symbols (rows), got shape "
                         f"{tuple(e.shape)}")
    if not bool(torch.isfinite(e.detach()).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    if e.dtype not in (torch.float32, torch.float64):
        e = e.float()
    return e


def _normalized(name: str, e: Tensor) -> Tensor:
    """Ẽ = (E - μ) / σ with μ the mean embedding and σ² = (1/p) Σ_k |E_k - μ|² (Section 3.2;
    σ read as the standard deviation, so Σ_k |Ẽ_k|² = p)."""
    c = e - e.mean(0, keepdim=True)
    var = (c * c).sum() / e.shape[0]
    if not bool(var.detach() > 0):
        raise ValueError(f"{name}: all embeddings are equal; they cannot be normalised to "
                         f"unit variance (Section 3.2)")
    return c / var.sqrt()


def _ell0_fn(d: _Data, device: torch.device, dtype: torch.dtype):
    """ℓ0 of Eq. (5) as a function of E, without forming P0(D): for a class of n samples with
    combined embeddings y_s = E_a + E_b, Σ_{s<t} |y_s - y_t|² = n Σ_s |y_s - ȳ|² (numerically
    stable, O(N d)). Index tensors are moved to the device once."""
    if d.pairs == 0:
        return lambda e: (e * 0).sum()
    a = torch.from_numpy(d.samples[:, 0]).to(device)
    b = torch.from_numpy(d.samples[:, 1]).to(device)
    cls = torch.from_numpy(d.cls).to(device)
    n = torch.from_numpy(d.counts).to(device=device, dtype=dtype)
    w = n[cls][:, None] / d.pairs

    def ell0(e: Tensor) -> Tensor:
        y = e[a] + e[b]
        mean = torch.zeros(n.shape[0], e.shape[1], dtype=e.dtype, device=device)
        mean = mean.index_add(0, cls, y) / n[:, None]
        r = y - mean[cls]
        return (w * r * r).sum()

    return ell0


def _gram(d: _Data) -> np.ndarray:
    """AᵀA (int64 [p, p]) for A = A(P0(D)) (Eq. 7) without forming A: with z_s = e_a + e_b,
    Σ_{s<t in a class} (z_s - z_t)(z_s - z_t)ᵀ = n Σ_s z_s z_sᵀ - (Σ_s z_s)(Σ_s z_s)ᵀ.
    Products of small integers summed in float64 below 2^53 are exact."""
    N, p = d.samples.shape[0], d.p
    X = np.zeros((N, p), dtype=np.float64)
    rows = np.arange(N)
    np.add.at(X, (rows, d.samples[:, 0]), 1.0)
    np.add.at(X, (rows, d.samples[:, 1]), 1.0)
    U = np.zeros((d.counts.shape[0], p), dtype=np.float64)
    np.add.at(U, d.cls, X)
    G = X.T @ (X * d.counts[d.cls][:, None].astype(np.float64)) - U.T @ U
    if not np.abs(G).max(initial=0.0) < 2.0 ** 52:
        raise ValueError("samples: too many samples for the exact Gram matrix of A(P0(D))")
    return np.rint(G).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Exact ranks: elimination modulo primes below 2^31, certified by a Hadamard bound


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3,215,031,751 (bases 2, 3, 5, 7)."""
    if n < 2:
        return False
    for q in (2, 3, 5, 7):
        if n % q == 0:
            return n == q
    dd, s = n - 1, 0
    while dd % 2 == 0:
        dd //= 2
        s += 1
    for a in (2, 3, 5, 7):
        x = pow(a, dd, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@lru_cache(maxsize=None)
def _primes(k: int) -> tuple[int, ...]:
    """The k largest primes below 2^31 (products of two residues fit in int64)."""
    out, n = [], 2 ** 31 - 1
    while len(out) < k:
        if _is_prime(n):
            out.append(n)
        n -= 2
    return tuple(out)


def _primes_for(log2_bound: float) -> tuple[int, ...]:
    """Primes whose product exceeds 2^log2_bound (plus a bit of margin)."""
    k, total = 0, 0.0
    while total <= log2_bound + 1.0:
        k += 1
        total = sum(math.log2(q) for q in _primes(k))
    return _primes(k)


def _modinv(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x^(q-2) mod q elementwise (Fermat), x nonzero mod the prime q."""
    res = np.ones_like(x)
    base = x % q
    e = q - 2
    while (e > 0).any():
        odd = (e & 1) == 1
        res = np.where(odd, res * base % q, res)
        base = base * base % q
        e = e >> 1
    return res


class _ModRREF:
    """A batch of B row spaces over GF(q_b), kept in reduced row echelon form (basis[b, c] is
    the basis row with pivot column c, pivot 1, zero in every other pivot column). Rows are
    added one at a time, vectorised over the batch."""

    def __init__(self, q: np.ndarray, p: int) -> None:
        self.q = q.astype(np.int64)
        self.basis = np.zeros((q.shape[0], p, p), dtype=np.int64)
        self.has = np.zeros((q.shape[0], p), dtype=bool)
        self.rank = np.zeros(q.shape[0], dtype=np.int64)

    def add(self, v: np.ndarray, which: Optional[np.ndarray] = None) -> None:
        """Add row v[i] to the row space of batch element which[i] (all elements if None)."""
        idx = np.arange(self.q.shape[0]) if which is None else which
        if idx.size == 0:
            return
        q = self.q[idx]
        basis = self.basis[idx]
        has = self.has[idx]
        v = v % q[:, None]
        coef = np.where(has, v, 0)
        v = (v - ((coef[:, :, None] * basis) % q[:, None, None]).sum(1)) % q[:, None]
        nz = v != 0
        new = nz.any(1)
        if not new.any():
            return
        k = np.flatnonzero(new)
        v, q, basis = v[k], q[k], basis[k]
        j = nz[k].argmax(1)
        piv = v[np.arange(k.size), j]
        v = v * _modinv(piv, q)[:, None] % q[:, None]
        col = np.take_along_axis(basis, j[:, None, None].repeat(basis.shape[1], 1), 2)
        basis = (basis - (col * v[:, None, :]) % q[:, None, None]) % q[:, None, None]
        basis[np.arange(k.size), j] = v
        b = idx[k]
        self.basis[b] = basis
        self.has[b, j] = True
        self.rank[b] += 1


def _exact_rank(M: np.ndarray) -> int:
    """Rank over the rationals of the integer matrix M [m, n] (small entries, int64).

    Method: Gaussian elimination modulo primes q_1..q_k below 2^31. rank mod q <= rank over Q,
    and the rank over Q is reached modulo one of the primes as soon as their product exceeds
    every minor: a nonzero r×r minor divisible by all q_i would be at least their product in
    magnitude. Minors are bounded by Hadamard's inequality (the product of the row norms, or of
    the column norms, of the nonzero rows / columns), so the result is exact."""
    M = np.asarray(M, dtype=np.int64)
    M = M[M.any(1)]
    if M.shape[0] == 0:
        return 0
    Mf = M.astype(np.float64)
    rows = 0.5 * np.log2((Mf * Mf).sum(1))
    cols = np.sqrt((Mf * Mf).sum(0))
    cols = np.log2(cols[cols > 0])
    primes = np.array(_primes_for(min(rows.sum(), cols.sum())), dtype=np.int64)
    state = _ModRREF(primes, M.shape[1])
    for row in M:
        state.add(np.broadcast_to(row, (primes.size, M.shape[1])).copy())
    return int(state.rank.max())


# ---------------------------------------------------------------------------------------------
# Effective loss and its gradient flow (Eq. 4-6, 22-27)


def effective_loss(E, samples, results, *, normalize: bool = False) -> Tensor:
    """The effective loss ℓ_eff = ℓ0 / Z0 of Eq. (5) / (22):

        ℓ0 = Σ_{(i,j,m,n) ∈ P0(D)} |E_i + E_j - E_m - E_n|² / |P0(D)|,   Z0 = Σ_k |E_k|²,

    P0(D) = the pairs of distinct samples of D with the same result (each pair once; ℓ0 = 0
    when there is none). Evaluated on E as given (Appendix F's form); normalize=True first maps
    E to Ẽ = (E - μ) / σ (Section 3.2, zero mean and unit variance), which makes the value
    invariant under translations too (it is always invariant under rescaling E -> aE).
    Differentiable with torch autograd (the gradient flows to E); ℓ0 is computed per class as
    n Σ_s |y_s - ȳ|² (y_s = E_a + E_b), without enumerating P0(D).

    E: float [p, d] (torch tensor, any device, or numpy array; use [p, 1] for 1-D).
    samples: int [N, 2] rows (a, b), symbols in 0..p-1, distinct rows; results: int [N].
    Returns a 0-dim tensor of E's dtype (float64 for numpy input).
    """
    e = _embeddings("E", E, keep_grad=True)
    d = _data(samples, results, e.shape[0], p_name="E.shape[0]")
    if normalize:
        e = _normalized("E", e)
    z0 = (e * e).sum()
    if not bool(z0.detach() > 0):
        raise ValueError("E: all embeddings are zero, so Z0 = 0 and ℓ_eff = ℓ0 / Z0 is "
                         "undefined (Eq. 5)")
    return _ell0_fn(d, e.device, e.dtype)(e) / z0


def conserved_quantities(E) -> tuple[Tensor, Tensor]:
    """The two quantities of Eq. (6) / (24): C = Σ_k E_k (float [..., d]) and
    Z0 = Σ_k |E_k|² (float [...]), for E [p, d] or a trajectory [..., p, d].

    Under the gradient flow of ℓ_eff (Eq. 23), Z0 is conserved exactly (Eq. 26) and
    dC/dt = (2 ℓ_eff / Z0) C (see the module notes: Eq. 27 drops a term), so C is conserved
    when it is zero, as for the normalised embeddings that ``effective_flow`` evolves by
    default. Euler steps of size η change Z0 by η² |∇ℓ_eff|² per step (the gradient is
    orthogonal to E), so Z0 drifts by O(η²) per step.
    """
    if isinstance(E, np.ndarray):
        e = torch.from_numpy(np.ascontiguousarray(E))
    elif isinstance(E, Tensor):
        e = E
    else:
        raise TypeError(f"E: expected a torch.Tensor or numpy array, got {type(E).__name__}")
    if not e.is_floating_point():
        raise TypeError(f"E: expected floating-point embeddings, got dtype {e.dtype}")
    if e.dim() < 2:
        raise ValueError(f"E: expected embeddings [p, d] or a trajectory [..., p, d], got "
                         f"shape {tuple(e.shape)}")
    return e.sum(-2), (e * e).sum((-2, -1))


class EffectiveFlow(NamedTuple):
    """A trajectory of the effective dynamics: ``trajectory`` float [K, p, d] (the embeddings
    at the recorded steps), ``steps`` int64 [K] (the step index of each record: 0,
    record_every, 2 record_every, ..., and always the last step), ``loss`` float [K] (ℓ_eff
    at each record)."""

    trajectory: Tensor
    steps: Tensor
    loss: Tensor


def effective_flow(E0, samples, results, lr, steps, *, record_every: int = 1,
                   method: str = "euler", normalize: bool = True) -> EffectiveFlow:
    """Gradient flow dE_i/dt = -∂ℓ_eff/∂E_i (Eq. 4 / 23) of the effective loss of Eq. (5),
    discretised with step lr: ``method="euler"`` is plain gradient descent
    E <- E - lr ∇ℓ_eff(E) (the paper's learning rate η, so ``predicted_grokking_steps`` counts
    these steps); ``method="rk4"`` integrates the continuous flow with classical Runge-Kutta of
    time step lr (conservation to O(lr^5) per step, for checking the continuous dynamics).

    normalize=True (default) starts from the normalised Ẽ0 = (E0 - μ) / σ of Section 3.2
    (zero mean, unit variance, Z0 = p), the variables the paper's flow (Eq. 4) evolves; the
    flow keeps C = 0 and Z0 = p. normalize=False evolves E0 as given (Eq. 23): Z0 is still
    conserved but C = Σ_k E_k grows as dC/dt = (2 ℓ_eff / Z0) C unless it is zero.

    The gradient is closed-form: with M = AᵀA / |P0(D)| (p × p, A = A(P0(D))),
    ℓ0 = tr(Eᵀ M E) and ∇ℓ_eff = 2 M E / Z0 - 2 ℓ0 E / Z0² (Eq. 25), checked against autograd
    of ``effective_loss`` in the tests. Runs on E0's device and dtype (numpy: float64).

    E0: float [p, d]; samples int [N, 2], results int [N] (see ``effective_loss``);
    lr: > 0; steps: int >= 0; record_every: int >= 1.
    """
    e = _embeddings("E0", E0, keep_grad=False).clone()
    d = _data(samples, results, e.shape[0], p_name="E0.shape[0]")
    lr = _positive("lr", lr)
    steps = _int("steps", steps, 0)
    record_every = _int("record_every", record_every, 1)
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, _METHODS))}, got "
                         f"{method!r}")
    if normalize:
        e = _normalized("E0", e)
    if not bool((e * e).sum() > 0):
        raise ValueError("E0: all embeddings are zero, so Z0 = 0 and ℓ_eff is undefined")
    if d.pairs:
        M = torch.from_numpy(_gram(d).astype(np.float64) / d.pairs).to(e.device, e.dtype)
    else:
        M = torch.zeros(d.p, d.p, dtype=e.dtype, device=e.device)
    ell0 = _ell0_fn(d, e.device, e.dtype)

    def grad(x: Tensor) -> Tensor:
        mx = M @ x
        z0 = (x * x).sum()
        l0 = (x * mx).sum()
        return 2.0 * mx / z0 - (2.0 * l0 / (z0 * z0)) * x

    record_at = list(range(0, steps + 1, record_every))
    if record_at[-1] != steps:
        record_at.append(steps)
    traj = torch.empty((len(record_at),) + tuple(e.shape), dtype=e.dtype, device=e.device)
    loss = torch.empty(len(record_at), dtype=e.dtype, device=e.device)
    k = 0
    for t in range(steps + 1):
        if t == record_at[k]:
            traj[k] = e
            loss[k] = ell0(e) / (e * e).sum()
            k += 1
        if t == steps:
            break
        if method == "euler":
            e = e - lr * grad(e)
        else:
            k1 = grad(e)
            k2 = grad(e - 0.5 * lr * k1)
            k3 = grad(e - 0.5 * lr * k2)
            k4 = grad(e - lr * k3)
            e = e - (lr / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return EffectiveFlow(traj, torch.tensor(record_at, dtype=torch.int64), loss)


# ---------------------------------------------------------------------------------------------
# Hessian spectrum and the grokking rate (Eq. 7-9)


def _z0(value, p: int) -> float:
    return float(p) if value is None else _positive("z0", value)


def effective_hessian(samples, results, p: Optional[int] = None, *, z0=None,
                      eigenvectors: bool = False):
    """Eigenvalues (ascending) of the Hessian of Eq. (8) for 1-D embeddings,

        H = (1/Z0) ∂²ℓ0 / ∂E_i ∂E_j = 2 AᵀA / (|P0(D)| Z0),   A = A(P0(D)) (Eq. 7),

    so that ℓ_eff = ½ RᵀHR (Z0 held fixed) and the linearised flow is dR/dt = -HR (Eq. 9);
    H is also the exact Hessian of ``effective_loss`` (per dimension) at any ground state.
    z0: Z0 of Eq. (8), default p (the normalised embeddings of Section 3.2 have zero mean and
    unit variance, so Σ_k Ẽ_k² = p). The number of zero eigenvalues is the exact nullity of
    A(P0(D)) (the degrees of freedom of the ground states, >= 2 for addition: translation and
    scale): exactly that many eigenvalues are set to 0.0, the others come from
    ``numpy.linalg.eigh`` in float64. With no parallelogram in D, H = 0.

    samples int [N, 2], results int [N]: the training set D (distinct rows); p: the number of
    symbols (default max symbol + 1, which undercounts if the largest symbols never occur).
    Returns float64 tensor [p], or (eigenvalues [p], eigenvectors [p, p] as columns) if
    eigenvectors=True.
    """
    d = _data(samples, results, p)
    zz = _z0(z0, d.p)
    G = _gram(d)
    if d.pairs:
        H = G.astype(np.float64) * (2.0 / (d.pairs * zz))
    else:
        H = np.zeros((d.p, d.p))
    w, V = np.linalg.eigh(H)
    nullity = d.p - _exact_rank(G)
    w[:nullity] = 0.0
    w = torch.from_numpy(w)
    return (w, torch.from_numpy(V)) if eigenvectors else w


def grokking_rate(samples, results, p: Optional[int] = None, *, z0=None) -> float:
    """The grokking rate λ3: the third-smallest eigenvalue of the Hessian H of Eq. (8) (see
    ``effective_hessian`` for the normalisation, Z0 = p by default). The first two vanish
    (translation and scaling of the linear structure); λ3 = 0 exactly when the training set
    does not determine a unique linear structure (nullity of A(P0(D)) > 2), and t_h = 1/λ3 is
    the time for the slowest non-linear component to shrink by e (Section 3.2). Needs p >= 3."""
    d_p = _data(samples, results, p).p
    if d_p < 3:
        raise ValueError(f"p: the grokking rate λ3 is the third eigenvalue of H and needs "
                         f"p >= 3, got {d_p}")
    return float(effective_hessian(samples, results, d_p, z0=z0)[2])


def predicted_grokking_steps(samples, results, p: Optional[int], lr, *, z0=None) -> float:
    """n_h = t_h / η = 1 / (λ3 η) (Section 3.2): the number of gradient steps of size lr = η
    (the embedding learning rate) for the slowest component to shrink by a factor e; inf when
    λ3 = 0 (no unique linear structure). p may be None (max symbol + 1); lr: > 0."""
    lr = _positive("lr", lr)
    lam = grokking_rate(samples, results, p, z0=z0)
    return math.inf if lam == 0.0 else 1.0 / (lam * lr)


# ---------------------------------------------------------------------------------------------
# Unique linear structure from random training sets (Figure 4a)


@lru_cache(maxsize=16)
def _addition_parallelograms(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The toy addition task (samples a <= b in lexicographic order, result a + b) and its
    full P0: (s, t) sample indices [R] and rows e_a + e_b - e_c - e_d (int64 [R, p])."""
    a, b = np.triu_indices(p)
    res = a + b
    s_idx, t_idx = [], []
    for c in range(2 * p - 1):
        members = np.flatnonzero(res == c)
        if members.size > 1:
            i, j = np.triu_indices(members.size, 1)
            s_idx.append(members[i])
            t_idx.append(members[j])
    s = np.concatenate(s_idx) if s_idx else np.zeros(0, dtype=np.int64)
    t = np.concatenate(t_idx) if t_idx else np.zeros(0, dtype=np.int64)
    rows = np.zeros((s.size, p), dtype=np.int64)
    k = np.arange(s.size)
    for src, sign in ((a[s], 1), (b[s], 1), (a[t], -1), (b[t], -1)):
        np.add.at(rows, (k, src), sign)
    return s, t, rows


def _first_unique_sizes(p: int, trials: int, seed: int) -> np.ndarray:
    """For each trial, a uniformly random order of the p(p+1)/2 samples of the toy addition
    task; returns n* [trials]: the smallest n such that the first n samples give
    Nullity(A(P0(D))) = 2. Since D_n ⊂ D_{n+1}, the first n samples are a uniformly random
    n-subset for every n and "unique at size n" is exactly n* <= n.

    Exact: parallelogram rows are added in the order their later sample arrives, the rank
    tracked by incremental elimination modulo primes below 2^31 (vectorised over trials).
    The rank over Q is at most p - 2 (the constant and linear vectors are always in the null
    space), so reaching p - 2 modulo a prime certifies it; conversely a row of A(P0) has
    norm <= sqrt(6) (2e_i - e_m - e_n at most), so r×r minors are at most 6^(r/2) and enough
    primes are used that their product exceeds 6^((p-2)/2): every rank over Q is then
    attained modulo one of them, and n* is the minimum over the primes."""
    N = p * (p + 1) // 2
    target = p - 2
    if target == 0:
        return np.zeros(trials, dtype=np.int64)
    s, t, rows = _addition_parallelograms(p)
    rng = np.random.default_rng([seed, p])
    order = rng.permuted(np.tile(np.arange(N), (trials, 1)), axis=1)
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(1, N + 1)[None, :].repeat(trials, 0), axis=1)
    key = np.maximum(pos[:, s], pos[:, t])  # samples needed before each row is in P0(D)
    row_order = np.argsort(key, axis=1, kind="stable")
    key_sorted = np.take_along_axis(key, row_order, 1)
    primes = np.array(_primes_for(0.5 * target * _LOG2_6), dtype=np.int64)
    k = primes.size
    state = _ModRREF(np.repeat(primes, trials), p)  # element i * trials + j: prime i, trial j
    trial_of = np.tile(np.arange(trials), k)
    nstar = np.full(k * trials, -1, dtype=np.int64)
    for step in range(rows.shape[0]):
        active = np.flatnonzero(state.rank < target)
        if active.size == 0:
            break
        tr = trial_of[active]
        state.add(rows[row_order[tr, step]], active)
        done = active[state.rank[active] == target]
        nstar[done] = key_sorted[trial_of[done], step]
    if (nstar < 0).any():
        raise AssertionError("the full toy addition data set must have nullity 2")
    return nstar.reshape(k, trials).min(0)


def _fraction_sizes(fraction, N: int) -> tuple[np.ndarray, bool]:
    if isinstance(fraction, Tensor):
        f = fraction.detach().cpu().numpy()
    else:
        f = np.asarray(fraction)
    scalar = f.ndim == 0
    if f.dtype == np.bool_ or not (np.issubdtype(f.dtype, np.floating)
                                   or np.issubdtype(f.dtype, np.integer)):
        raise TypeError(f"fraction: expected a number or an array of numbers, got dtype "
                        f"{f.dtype}")
    f = f.astype(np.float64)
    bad = ~((f > 0.0) & (f <= 1.0))
    if bad.any():
        raise ValueError(f"fraction: expected fractions in (0, 1], got "
                         f"{f.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]!r}")
    n = np.minimum(N, np.maximum(1, np.floor(f * N + 0.5))).astype(np.int64)
    return n, scalar


def unique_structure_probability(p: int, fraction, trials: int = 1000, seed: int = 0):
    """Monte Carlo probability that a random training set of the toy addition task determines
    a unique linear structure, Nullity(A(P0(D))) = 2 exactly (Section 3.2, Figure 4a).

    The task has p(p+1)/2 unordered samples a <= b (result a + b); a fraction f means
    n = round(f N) samples (at least 1), the rounding of ``AlgebraTask.split``, drawn
    uniformly without replacement. Each trial draws one random order of the samples and
    serves every fraction with its first n samples (common random numbers: the estimate is
    exactly non-decreasing in f). Ranks are exact (see ``_first_unique_sizes``).
    Cost: O(trials · |P0| · p²) int64 operations, vectorised over trials; about 0.2 s for
    p = 10 and 1000 trials, 0.4 s for p = 30 and 200.

    p: int >= 2; fraction: a number or an array of numbers in (0, 1]; trials: int >= 1;
    seed: int >= 0. Returns a float (scalar fraction) or float64 numpy array (fraction's shape).
    """
    p = _int("p", p, 2)
    trials = _int("trials", trials, 1)
    seed = _int("seed", seed, 0)
    n, scalar = _fraction_sizes(fraction, p * (p + 1) // 2)
    nstar = np.sort(_first_unique_sizes(p, trials, seed))
    prob = np.searchsorted(nstar, n, side="right") / trials
    return float(prob) if scalar else prob.astype(np.float64)


def critical_fraction(p: int, *, level: float = 0.5, trials: int = 1000, seed: int = 0) -> float:
    """The critical training fraction r_c: where ``unique_structure_probability`` crosses
    ``level`` (Section 3.2: about 0.4 for p = 10).

    Method: with the trials of ``unique_structure_probability`` the probability at n samples is
    P(n) = #{trials with n* <= n} / trials (n* the first size with nullity 2), non-decreasing
    in n. Let n be the smallest size with P(n) >= level; r_c is linearly interpolated between
    ((n - 1)/N, P(n - 1)) and (n/N, P(n)), N = p(p+1)/2 (so r_c is the level-quantile of n*/N,
    interpolated). 0.0 for p = 2 (no parallelogram is needed).

    p: int >= 2; level: in (0, 1); trials: int >= 1; seed: int >= 0.
    """
    p = _int("p", p, 2)
    trials = _int("trials", trials, 1)
    seed = _int("seed", seed, 0)
    if isinstance(level, bool) or not isinstance(level, (numbers.Real, np.floating)) \
            or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    N = p * (p + 1) // 2
    nstar = np.sort(_first_unique_sizes(p, trials, seed))
    P = np.searchsorted(nstar, np.arange(N + 1), side="right") / trials
    n = int(np.argmax(P >= float(level)))  # P(N) = 1 >= level
    if n == 0:
        return 0.0
    lo, hi = P[n - 1], P[n]
    return float((n - 1 + (float(level) - lo) / (hi - lo)) / N)
