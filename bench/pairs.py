"""Exact eps-components (grokfast.pairs.components) against what a user would run instead:
scikit-learn's DBSCAN(eps, min_samples=1) and a numba-jitted brute force over pairs, in the same
process, reported as ratios.

    python bench/pairs.py                 # N = 2,046 / 100,000 / 1,000,000, D = 100
    python bench/pairs.py --quick         # N = 2,046 / 20,000, for a smoke run
    python bench/pairs.py --device cuda   # grokfast's CUDA kernel (sklearn stays on the CPU)
    python bench/pairs.py --markdown out.md
    python bench/pairs.py --isa avx2      # grokfast's AVX2 kernels, numpy/numba capped alike

Data: what automaton extraction clusters. The hidden states of a trained RNN collapse onto a
few points, one per automaton state: 32 states at tanh-squashed random positions in D = 100,
each state's visits spread N(0, 0.01^2) per coordinate (cluster radius ~0.1), plus 1% transient
states on the segments between two states. eps = 0.5 joins every state's cloud and keeps states
apart (they are ~10 apart). Labels are checked against scikit-learn (same partition, renumbered
by first appearance) before anything is timed. scikit-learn materialises every point's
neighbourhood (~N^2 / 32 indices: 2.5 GB at N = 100,000), so it is skipped at N = 1,000,000
(~250 GB); the table says so. The numba peer (union-find, parallel over rows) visits all
N^2 / 2 pairs: beyond N = 50,000 it runs on the first 50,000 points (a random sample: the
points are shuffled) and its time is scaled by the number of pairs (a floor: its time per pair
grows with N as the points outgrow the caches); the table says so.
"""

from __future__ import annotations

import _machine  # first: caps the peers' instruction sets (--isa) before torch/numpy load

import argparse
import statistics
import time

import numpy as np
import torch

import grokfast
from grokfast.ops.pairs import _components_stats

try:
    import numba
    from numba import njit, prange
except ImportError:  # in the bench extra; without it the numba columns read "-"
    numba, prange = None, range
    njit = lambda **_: lambda f: f  # noqa: E731

STATES, D, SPREAD, TRANSIENT, EPS = 32, 100, 0.01, 0.01, 0.5
SKLEARN_MAX_N = 200_000  # neighbourhood lists beyond this do not fit in memory here
NUMBA_MAX_N = 50_000  # 1.25e9 pairs, ~13 s on 2 cores (100,000: ~60 s); beyond: scaled


def hidden_states(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.tanh(rng.normal(0, 1.5, (STATES, D)))
    x = centres[rng.integers(0, STATES, n)] + rng.normal(0, SPREAD, (n, D))
    m = int(TRANSIENT * n)
    a, b = rng.integers(0, STATES, m), rng.integers(0, STATES, m)
    lam = rng.uniform(0, 1, (m, 1))
    x[:m] = centres[a] * (1 - lam) + centres[b] * lam + rng.normal(0, SPREAD, (m, D))
    return x[rng.permutation(n)].astype(np.float32)


def canon(labels: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


@njit(fastmath=False, cache=False)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@njit(fastmath=False, cache=False, parallel=True)
def _numba_forests(x, eps2, threads):
    """Each thread a union-find forest of its own (no atomics in numba) over every `threads`-th
    row (even work: early rows have more pairs). A pair already joined in the forest is skipped
    without its distance; a distance stops once past eps (float64, exact at these sizes)."""
    n, d = x.shape
    parents = np.empty((threads, n), np.int64)
    for t in prange(threads):
        parent = parents[t]
        for i in range(n):
            parent[i] = i
        for i in range(t, n, threads):
            ri = _find(parent, i)
            for j in range(i + 1, n):
                rj = _find(parent, j)
                if rj == ri:
                    continue
                s = 0.0
                for k in range(d):
                    diff = np.float64(x[i, k]) - np.float64(x[j, k])
                    s += diff * diff
                    if s > eps2:
                        break
                if s <= eps2:
                    parent[rj] = ri
    return parents


@njit(fastmath=False, cache=False)
def _merge_forests(parents):
    threads, n = parents.shape
    parent = np.arange(n)
    for t in range(threads):
        for j in range(n):
            a, b = _find(parent, j), _find(parent, parents[t, j])
            if a != b:
                parent[max(a, b)] = min(a, b)
    labels = np.empty(n, np.int64)
    for j in range(n):
        labels[j] = _find(parent, j)
    return labels


def numba_components(x: np.ndarray, eps: float) -> np.ndarray:
    """Labels (each point's root; canon() renumbers them) of the eps-components of x."""
    return _merge_forests(_numba_forests(x, eps * eps, numba.get_num_threads()))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run_numba(x_np: np.ndarray, labels: np.ndarray, device: str) -> tuple[float, int]:
    """Seconds for all of x (scaled by the pairs from a prefix of NUMBA_MAX_N points beyond
    that), and the number of points it ran on; checked against grokfast's labels first."""
    m = min(len(x_np), NUMBA_MAX_N)
    if m < len(x_np):  # grokfast's labels of the prefix, to check against
        labels = _components_stats(torch.from_numpy(x_np[:m]).to(device), EPS)[0].cpu().numpy()
    x = np.ascontiguousarray(x_np[:m])
    t, nb = timed(lambda: numba_components(x, EPS), "cpu", 3 if m <= 10_000 else 1,
                  warmup=1 if m <= 10_000 else 0)
    if not np.array_equal(canon(nb), labels):
        raise SystemExit(f"N={m}: numba's labels differ from grokfast's")
    return t * (len(x_np) / m) ** 2, m


def run(n: int, device: str, with_sklearn: bool, with_numba: bool) -> dict:
    x_np = hidden_states(n)
    x = torch.from_numpy(x_np).to(device)
    repeats = 5 if n <= 10_000 else (3 if n <= 200_000 else 1)
    t_ours, (labels, stats) = timed(lambda: _components_stats(x, EPS), device, repeats)
    labels = labels.cpu().numpy()
    row = dict(n=n, components=int(labels.max()) + 1, ours=t_ours, stats=stats, sklearn=None,
               numba=None, numba_n=None, note="")
    notes = []
    if with_numba:
        row["numba"], row["numba_n"] = run_numba(x_np, labels, device)
        if row["numba_n"] < n:
            notes.append(f"numba timed at N = {row['numba_n']:,}, scaled by the pairs")
    if not with_sklearn:
        notes.append("scikit-learn skipped")
    elif n > SKLEARN_MAX_N:
        notes.append(f"scikit-learn skipped: its neighbourhood lists need "
                     f"~{n * n // STATES * 8 / 1e9:.0f} GB")
    row["note"] = "; ".join(notes)
    if not with_sklearn or n > SKLEARN_MAX_N:
        return row
    from sklearn.cluster import DBSCAN
    sk_repeats = 3 if n <= 10_000 else 1
    t_sk, sk = timed(lambda: DBSCAN(eps=EPS, min_samples=1).fit(x_np).labels_, "cpu", sk_repeats,
                     warmup=1 if n <= 10_000 else 0)
    if not np.array_equal(canon(sk), labels):
        raise SystemExit(f"N={n}: labels differ from scikit-learn's DBSCAN")
    row["sklearn"] = t_sk
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 2,046 and 20,000 only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-sklearn", action="store_true", help="leave scikit-learn out")
    parser.add_argument("--no-numba", action="store_true", help="leave the numba loop out")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the point counts")
    parser.add_argument("--markdown", help="also write the table to this file")
    _machine.add_isa_argument(parser)
    args = parser.parse_args()
    _machine.select_isa(args)
    sizes = args.sizes or ([2046, 20_000] if args.quick else [2046, 100_000, 1_000_000])

    try:
        import sklearn
        sk_version = sklearn.__version__
    except ImportError:
        sk_version = None
    with_numba = numba is not None and not args.no_numba
    if with_numba:  # compile outside the timings
        numba_components(hidden_states(64), EPS)
    lines = [
        _machine.machine_line(args.device),
        f"grokfast.pairs.components vs scikit-learn DBSCAN(eps={EPS}, min_samples=1) and a "
        f"numba brute force; D = {D}, {STATES} tight states + {TRANSIENT:.0%} transients; "
        f"device {args.device}; scikit-learn {sk_version}, "
        f"numba {numba.__version__ if numba is not None else None}",
        "",
        "| N | components | grokfast (s) | scikit-learn (s) | x scikit-learn | numba (s) (N run) "
        "| x numba | groups | tiles computed / skipped | float64 rechecks | note |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for n in sizes:
        r = run(n, args.device, with_sklearn=sk_version is not None and not args.no_sklearn,
                with_numba=with_numba)
        st = r["stats"]
        sk = f"{r['sklearn']:.3f}" if r["sklearn"] is not None else "-"
        ratio = f"{r['sklearn'] / r['ours']:.0f}x" if r["sklearn"] is not None else "-"
        nb = f"{r['numba']:.3f} ({r['numba_n']:,})" if r["numba"] is not None else "-"
        nb_ratio = f"{r['numba'] / r['ours']:.0f}x" if r["numba"] is not None else "-"
        groups = st["groups"] if args.device == "cpu" else "-"
        line = (f"| {n:,} | {r['components']} | {r['ours']:.4f} | {sk} | {ratio} | {nb} | "
                f"{nb_ratio} | {groups} | {st['tiles']} / {st['tiles_skipped']} | "
                f"{st['exact']} | {r['note']} |")
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
