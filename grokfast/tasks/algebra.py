"""Binary-operation tasks: learn (a, b) -> c = op(a, b) over the symbols {0..p-1}.

Every task is defined by its operation table ``table[a, b] = c`` (int64 [p, p], -1 where the
operation is undefined, e.g. division by zero) and exposes its samples and their results:

- ``samples``: int64 [N, 2] rows (a, b), in lexicographic order (a, then b);
- ``results``: int64 [N], ``results[i] = table[a_i, b_i]`` in 0..num_results-1.

Ordered tasks hold every (a, b) with a defined result; unordered tasks (``Addition``, or a
``TableTask(table, unordered=True)``) hold one sample per unordered pair, a <= b, as in Liu et
al.'s toy model ("i + j and j + i are the same sample").

Tasks are plain data: the analyses of ``grokfast.representation`` read only ``samples``,
``results`` (and ``unordered`` to look up (a, b) pairs), so any object with those attributes
works there too.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from grokfast.tasks.sequences import check_fraction

_SPLIT_STREAM = 3  # random stream of the train/validation split (sequences.py uses 1 and 2)
MAX_PERMUTATION_DEGREE = 6  # S_6: 720 elements, 518,400 samples
MAX_MODULUS = 10_000  # ModularOp: 10^8 samples


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % k for k in range(3, math.isqrt(n) + 1, 2))


def _table_array(table) -> np.ndarray:
    if isinstance(table, Tensor):
        t = table.detach().cpu().numpy()
    elif isinstance(table, np.ndarray):
        t = table
    elif isinstance(table, (list, tuple)):
        try:
            t = np.asarray(table)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(f"table: expected a square 2-D integer table, got ragged rows "
                             f"({exc})") from None
    else:
        raise TypeError(f"table: expected a torch.Tensor, numpy array or nested list, "
                        f"got {type(table).__name__}")
    if t.dtype == np.bool_ or not np.issubdtype(t.dtype, np.integer):
        if t.size == 0 and t.dtype == np.float64:  # np.asarray([]) is float
            t = t.astype(np.int64)
        else:
            raise TypeError(f"table: expected integer results, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ValueError(f"table: expected a square 2-D table [p, p] with p >= 1, "
                         f"got shape {tuple(t.shape)}")
    t = t.astype(np.int64)
    if (t < -1).any():
        raise ValueError(f"table: expected results >= 0 (or -1 for an undefined entry), "
                         f"got {int(t.min())}")
    return t


class AlgebraTask:
    """A binary operation over {0..p-1} given by its table; base of the concrete tasks.

    Attributes: ``p`` (number of symbols), ``table`` (int64 [p, p] tensor, -1 = undefined),
    ``unordered`` (one sample per unordered pair a <= b), ``samples`` (int64 [N, 2]),
    ``results`` (int64 [N]), ``num_results`` (size of the result alphabet: results lie in
    0..num_results-1, e.g. the number of classes of a classifier), ``name``.
    """

    def __init__(self, table, *, unordered: bool = False, num_results: Optional[int] = None,
                 name: str = "table") -> None:
        if not isinstance(unordered, (bool, np.bool_)):
            raise TypeError(f"unordered: expected a bool, got {type(unordered).__name__}")
        t = _table_array(table)
        p = t.shape[0]
        if unordered:
            both = (t >= 0) | (t.T >= 0)
            if (both & (t != t.T)).any():
                a, b = map(int, np.argwhere(both & (t != t.T))[0])
                raise ValueError(f"table: unordered=True needs a symmetric table, but "
                                 f"table[{a}, {b}] = {t[a, b]} != table[{b}, {a}] = {t[b, a]}")
        a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
        keep = t >= 0
        if unordered:
            keep &= a <= b
        samples = np.stack([a[keep], b[keep]], 1).astype(np.int64)  # row-major: lexicographic
        results = t[keep]
        if samples.shape[0] == 0:
            raise ValueError("table: every entry is undefined (-1); the task has no samples")
        top = int(results.max()) + 1
        if num_results is None:
            num_results = top
        elif num_results < top:
            raise ValueError(f"num_results: expected >= {top} (the largest result + 1), "
                             f"got {num_results}")
        self.p = p
        self.name = name
        self.unordered = bool(unordered)
        self.table = torch.from_numpy(t)
        self.samples = torch.from_numpy(samples)
        self.results = torch.from_numpy(np.ascontiguousarray(results))
        self.num_results = int(num_results)
        index = np.full((p, p), -1, dtype=np.int64)
        index[samples[:, 0], samples[:, 1]] = np.arange(samples.shape[0])
        if unordered:
            index[samples[:, 1], samples[:, 0]] = np.arange(samples.shape[0])
        self._index = index

    # -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def num_samples(self) -> int:
        return len(self)

    @property
    def commutative(self) -> bool:
        """Whether op(a, b) == op(b, a) wherever both are defined."""
        t = self.table.numpy()
        both = (t >= 0) & (t.T >= 0)
        return bool((t[both] == t.T[both]).all())

    def __repr__(self) -> str:
        kind = "unordered" if self.unordered else "ordered"
        return (f"{type(self).__name__}({self.name}, p={self.p}, {len(self)} {kind} samples, "
                f"{self.num_results} results)")

    def index_of(self, pairs) -> Tensor:
        """Sample indices of the (a, b) pairs (int [M, 2]); for an unordered task (b, a) is the
        same sample as (a, b). Raises ValueError for a pair that is not a sample."""
        q = pairs.detach().cpu().numpy() if isinstance(pairs, Tensor) else np.asarray(pairs)
        if q.size == 0:
            q = q.reshape(0, 2)
        if q.dtype == np.bool_ or not np.issubdtype(q.dtype, np.integer):
            raise TypeError(f"pairs: expected integer (a, b) pairs, got dtype {q.dtype}")
        if q.ndim != 2 or q.shape[1] != 2:
            raise ValueError(f"pairs: expected shape (M, 2) (rows (a, b)), got {tuple(q.shape)}")
        bad = ((q < 0) | (q >= self.p)).any(1)
        idx = np.full(q.shape[0], -1, dtype=np.int64)
        idx[~bad] = self._index[q[~bad, 0], q[~bad, 1]]
        if (idx < 0).any():
            k = int(np.nonzero(idx < 0)[0][0])
            raise ValueError(f"pairs: row {k} = ({int(q[k, 0])}, {int(q[k, 1])}) is not a "
                             f"sample of {self!r}")
        return torch.from_numpy(idx)

    def split(self, train_fraction: float, seed: int = 0) -> Tensor:
        """The training set: a bool mask [N] over ``samples`` (the validation set is ``~mask``).

        round(train_fraction * N) samples (at least 1) are drawn uniformly without replacement;
        the draw depends only on (seed, N): the same seed gives the same mask, and a larger
        fraction with the same seed gives a superset (the first k of one random permutation).
        train_fraction: in (0, 1]. seed: an integer >= 0.
        """
        f = check_fraction("train_fraction", train_fraction)
        seed = _check_int("seed", seed, 0)
        n = len(self)
        k = min(n, max(1, int(math.floor(f * n + 0.5))))
        order = np.random.default_rng([seed, _SPLIT_STREAM, n]).permutation(n)
        mask = np.zeros(n, dtype=bool)
        mask[order[:k]] = True
        return torch.from_numpy(mask)


class TableTask(AlgebraTask):
    """Any user-given operation table: ``table[a, b]`` = the result (an integer >= 0), or -1
    where undefined (that (a, b) is not a sample). unordered=True keeps one sample per unordered
    pair a <= b and needs a symmetric table. Accepts a torch tensor, numpy array or nested list.
    """

    def __init__(self, table, unordered: bool = False, *, num_results: Optional[int] = None,
                 name: str = "table") -> None:
        super().__init__(table, unordered=unordered, num_results=num_results, name=name)


class Addition(AlgebraTask):
    """Liu et al.'s toy task: non-modular a + b over {0..p-1}, results 0..2p-2 (2p-1 classes),
    unordered samples a <= b: p(p+1)/2 of them (55 for p = 10)."""

    def __init__(self, p: int) -> None:
        p = _check_int("p", p, 1)
        k = np.arange(p, dtype=np.int64)
        super().__init__(k[:, None] + k[None, :], unordered=True, num_results=2 * p - 1,
                         name="a+b")


def _mod_table(p: int, expr: str) -> np.ndarray:
    x = np.arange(p, dtype=np.int64)[:, None]
    y = np.arange(p, dtype=np.int64)[None, :]
    x, y = np.broadcast_arrays(x, y)

    def mul(u, v):  # operands reduced mod p: products stay below p^2 (no int64 overflow)
        return (u * v) % p

    x2, y2 = mul(x, x), mul(y, y)
    xy = mul(x, y)
    if expr == "x+y":
        return (x + y) % p
    if expr == "x-y":
        return (x - y) % p
    if expr == "x*y":
        return xy
    if expr == "x/y":
        inv = np.array([pow(int(v), p - 2, p) if v else 0 for v in range(p)], dtype=np.int64)
        t = mul(x, inv[y])
        t[:, 0] = -1  # division by zero: not a sample
        return t
    if expr == "x^2+y^2":
        return (x2 + y2) % p
    if expr == "x^2+xy+y^2":
        return (x2 + xy + y2) % p
    if expr == "x^2+xy+y^2+x":
        return (x2 + xy + y2 + x) % p
    if expr == "x^3+xy":
        return (mul(x2, x) + xy) % p
    if expr == "x^3+xy^2+y":
        return (mul(x2, x) + mul(x, y2) + y) % p
    raise AssertionError(expr)


class ModularOp(AlgebraTask):
    """The modular operations of Power et al. (2022): ``expr`` one of EXPRESSIONS, evaluated
    mod p, over all ordered samples (x, y) = (a, b). "x/y" is x * y^(p-2) mod p (y's inverse);
    it needs a prime p and excludes the samples with y = 0 (p(p-1) samples), as Power et al.
    Results lie in 0..p-1 (num_results = p)."""

    EXPRESSIONS = ("x+y", "x-y", "x*y", "x/y", "x^2+y^2", "x^2+xy+y^2", "x^2+xy+y^2+x",
                   "x^3+xy", "x^3+xy^2+y")

    def __init__(self, p: int, expr: str = "x+y") -> None:
        if not isinstance(expr, str):
            raise TypeError(f"expr: expected a string, one of {', '.join(self.EXPRESSIONS)}; "
                            f"got {type(expr).__name__}")
        key = expr.replace(" ", "").replace("**", "^")
        if key not in self.EXPRESSIONS:
            raise ValueError(f"expr: expected one of {', '.join(map(repr, self.EXPRESSIONS))}, "
                             f"got {expr!r}")
        p = _check_int("p", p, 2 if key == "x/y" else 1)
        if key == "x/y" and not _is_prime(p):
            raise ValueError(f"p: expected a prime for x/y (division needs inverses mod p), "
                             f"got {p}")
        if p > MAX_MODULUS:
            raise ValueError(f"p: at most {MAX_MODULUS} (the task holds p^2 samples), got {p}")
        self.expr = key
        super().__init__(_mod_table(p, key), unordered=False, num_results=p,
                         name=f"{key} mod {p}")


class PermutationGroup(AlgebraTask):
    """The symmetric group S_n under composition, all n!^2 ordered samples.

    ``elements``: int64 [n!, n], the permutations in lexicographic order of their one-line
    notation (``itertools.permutations(range(n))``), so index 0 is the identity; element a maps
    i to ``elements[a, i]``.
    ``table[a, b]`` = the index of the composition a∘b, the permutation i -> a(b(i)) (apply b
    first, then a). With the permutation matrices ``matrices[a]`` (P e_i = e_{a(i)}, i.e.
    ``P[a(i), i] = 1``) this is the matrix product: matrices[table[a, b]] = matrices[a] @
    matrices[b], so the permutation matrices are an exact representation for the product combine
    of ``grokfast.representation``. n: 1..MAX_PERMUTATION_DEGREE (6).
    """

    def __init__(self, n: int) -> None:
        n = _check_int("n", n, 1)
        if n > MAX_PERMUTATION_DEGREE:
            raise ValueError(f"n: at most {MAX_PERMUTATION_DEGREE} (n!^2 samples), got {n}")
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
        m = perms.shape[0]
        # composition c[a, b, i] = a(b(i))
        comp = np.take_along_axis(np.broadcast_to(perms[:, None, :], (m, m, n)),
                                  np.broadcast_to(perms[None, :, :], (m, m, n)), axis=2)
        place = n ** np.arange(n - 1, -1, -1, dtype=np.int64)
        codes = perms @ place  # increasing: lexicographic order = numeric order of the codes
        table = np.searchsorted(codes, comp @ place)
        self.n = n
        self.elements = torch.from_numpy(perms)
        super().__init__(table, unordered=False, num_results=m, name=f"S_{n}")

    @property
    def matrices(self) -> Tensor:
        """float32 [n!, n, n] permutation matrices, ``matrices[a][a(i), i] = 1``."""
        m, n = self.elements.shape
        out = torch.zeros(m, n, n, dtype=torch.float32)
        out[torch.arange(m)[:, None], self.elements, torch.arange(n)[None, :]] = 1.0
        return out

    def inverse(self) -> Tensor:
        """int64 [n!]: the index of each element's inverse."""
        e = self.elements.numpy()
        inv = np.argsort(e, axis=1)
        place = self.n ** np.arange(self.n - 1, -1, -1, dtype=np.int64)
        return torch.from_numpy(np.searchsorted(e @ place, inv @ place))
