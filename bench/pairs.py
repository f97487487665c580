"""Exact eps-components (grokfast.pairs.components) against what a user would run instead:
scikit-learn's DBSCAN(eps, min_samples=1), in the same process, reported as ratios.

    python bench/pairs.py                 # N = 2,046 / 100,000 / 1,000,000, D = 100
    python bench/pairs.py --quick         # N = 2,046 / 20,000, for a smoke run
    python bench/pairs.py --device cuda   # grokfast's CUDA kernel (sklearn stays on the CPU)
    python bench/pairs.py --markdown out.md

Data: what automaton extraction clusters. The hidden states of a trained RNN collapse onto a
few points, one per automaton state: 32 states at tanh-squashed random positions in D = 100,
each state's visits spread N(0, 0.01^2) per coordinate (cluster radius ~0.1), plus 1% transient
states on the segments between two states. eps = 0.5 joins every state's cloud and keeps states
apart (they are ~10 apart). Labels are checked against scikit-learn (same partition, renumbered
by first appearance) before anything is timed. scikit-learn materialises every point's
neighbourhood (~N^2 / 32 indices: 2.5 GB at N = 100,000), so it is skipped at N = 1,000,000
(~250 GB); the table says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import grokfast
from grokfast.ops.pairs import _components_stats

STATES, D, SPREAD, TRANSIENT, EPS = 32, 100, 0.01, 0.01, 0.5
SKLEARN_MAX_N = 200_000  # neighbourhood lists beyond this do not fit in memory here


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


def run(n: int, device: str, with_sklearn: bool) -> dict:
    x_np = hidden_states(n)
    x = torch.from_numpy(x_np).to(device)
    repeats = 5 if n <= 10_000 else (3 if n <= 200_000 else 1)
    t_ours, (labels, stats) = timed(lambda: _components_stats(x, EPS), device, repeats)
    labels = labels.cpu().numpy()
    row = dict(n=n, components=int(labels.max()) + 1, ours=t_ours, stats=stats, sklearn=None,
               note="")
    if not with_sklearn:
        row["note"] = "scikit-learn skipped"
        return row
    if n > SKLEARN_MAX_N:
        row["note"] = f"scikit-learn skipped: its neighbourhood lists need ~{n * n // STATES * 8 / 1e9:.0f} GB"
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
    parser.add_argument("--no-sklearn", action="store_true", help="time grokfast only")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the point counts")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    sizes = args.sizes or ([2046, 20_000] if args.quick else [2046, 100_000, 1_000_000])

    try:
        import sklearn
        sk_version = sklearn.__version__
    except ImportError:
        sk_version = None
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads"
               + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    lines = [
        f"grokfast.pairs.components vs scikit-learn DBSCAN(eps={EPS}, min_samples=1); "
        f"D = {D}, {STATES} tight states + {TRANSIENT:.0%} transients; device {args.device}",
        f"machine: {machine}; torch {torch.__version__}, scikit-learn {sk_version}, "
        f"grokfast {grokfast.__version__}",
        "",
        "| N | components | grokfast (s) | scikit-learn (s) | speedup | groups "
        "| tiles computed / skipped | float64 rechecks | note |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for n in sizes:
        r = run(n, args.device, with_sklearn=sk_version is not None and not args.no_sklearn)
        st = r["stats"]
        sk = f"{r['sklearn']:.3f}" if r["sklearn"] is not None else "-"
        ratio = f"{r['sklearn'] / r['ours']:.0f}x" if r["sklearn"] is not None else "-"
        groups = st["groups"] if args.device == "cpu" else "-"
        line = (f"| {n:,} | {r['components']} | {r['ours']:.4f} | {sk} | {ratio} | {groups} | "
                f"{st['tiles']} / {st['tiles_skipped']} | {st['exact']} | {r['note']} |")
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
