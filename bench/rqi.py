"""RQI curves (grokfast.representation.rqi over grokfast.pairs.count_within_classes: every δ in
one pass) against what a user would write instead, in the same process.

    python bench/rqi.py            # p = 1000 modular addition (all ordered samples), d = 128
    python bench/rqi.py --quick    # p = 300
    python bench/rqi.py --device cuda   # grokfast's CUDA kernel and cdist on the GPU
    python bench/rqi.py --isa avx2      # grokfast's AVX2 kernels, torch capped alike

Baselines: "torch cdist": per result class, torch.cdist of the combined representations
E_a + E_b (direct differences: cdist's default matrix-product mode loses every small distance
to cancellation at these norms and miscounts), then counting the upper triangle within each δ;
"python loop": the public grokking-squared code's approach, one Python iteration per
parallelogram, at p = 97. Rates count p^3 d flops (one multiply-add per dimension for each of
the ~p^3 / 2 unordered same-class pairs), against the machine's SGEMM rate measured in the same
run (torch.mm, 4096^2 float32, all threads).
"""

from __future__ import annotations

import _machine  # first: caps the peers' instruction sets (--isa) before torch loads

import argparse
import sys
from pathlib import Path

import torch

import grokfast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rnn import median_seconds  # noqa: E402  (bench/rnn.py: warm-up, sync, median)
from grokfast.representation import parallelogram_count, rqi
from grokfast.tasks import ModularOp

DELTAS = [1e-3, 0.2, 0.5, 1.0, 2.0]


def samples(p: int):
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return a, b, (a + b) % p


def grokfast_counts(E, task):
    return parallelogram_count(E, task, DELTAS)


def cdist_counts(E, a, b, c):
    Z = E[a] + E[b]
    out = torch.zeros(len(DELTAS), dtype=torch.int64, device=E.device)
    order = torch.argsort(c, stable=True)
    sizes = torch.bincount(c).tolist()
    start = 0
    for n in sizes:
        z = Z[order[start:start + n]]
        start += n
        d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
        iu = torch.triu_indices(n, n, 1)
        du = d[iu[0], iu[1]]
        for k, delta in enumerate(DELTAS):
            out[k] += (du <= delta).sum()
    return out.cpu()


def python_loop_counts(E, p: int, delta: float) -> int:
    """One Python iteration per same-class pair (the public code's per-parallelogram loop)."""
    Z = {}
    for i in range(p):
        for j in range(p):
            Z.setdefault((i + j) % p, []).append(E[i] + E[j])
    count = 0
    for zs in Z.values():
        for x in range(len(zs)):
            for y in range(x + 1, len(zs)):
                if float(torch.linalg.vector_norm(zs[x] - zs[y])) <= delta:
                    count += 1
    return count


def sgemm_rate(device: str) -> float:
    n = 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = median_seconds(lambda: torch.mm(a, b), device, 3)
    return 2 * n ** 3 / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    _machine.add_isa_argument(ap)
    args = ap.parse_args()
    _machine.select_isa(args)
    print(_machine.machine_line(args.device), flush=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # an SGEMM rate, not TF32
    p, d = (300, 128) if args.quick else (1000, 128)
    g = torch.Generator().manual_seed(0)
    # A partly structured representation: linear in a few dimensions plus noise, so the
    # counts at the δ values are neither all nor nothing.
    E = torch.randn(p, d, generator=g) * 0.1
    E[:, :4] += torch.arange(p, dtype=torch.float32)[:, None] / p * torch.randn(4, generator=g)
    E = E.to(args.device)
    task = ModularOp(p, "x+y")
    a, b = task.samples[:, 0].to(args.device), task.samples[:, 1].to(args.device)
    c = task.results.to(args.device)
    ours = grokfast_counts(E, task)
    ref = cdist_counts(E, a, b, c)
    # cdist sums in float32, the kernel decides exactly: they differ only at the threshold
    assert (ours - ref).abs().max() <= max(10, int(ref.max()) // 10 ** 5), (ours, ref)
    t_ours = median_seconds(lambda: rqi(E, task, DELTAS), args.device, args.repeats)
    t_cdist = median_seconds(lambda: cdist_counts(E, a, b, c), args.device,
                             max(1, args.repeats - 1))
    gemm = sgemm_rate(args.device)
    flops = p ** 3 * d
    print(f"# RQI counts: modular addition p = {p}, d = {d}, {len(DELTAS)} δ in one pass, "
          f"device {args.device}")
    print("| what | grokfast s | torch cdist s | ratio | grokfast GFLOP/s (p^3 d) | % of SGEMM |")
    print("|---|---|---|---|---|---|")
    print(f"| p={p} d={d} | {t_ours:.3f} | {t_cdist:.3f} | {t_cdist / t_ours:.1f}x | "
          f"{flops / t_ours / 1e9:.0f} | {100 * flops / t_ours / gemm:.0f}% (SGEMM "
          f"{gemm / 1e9:.0f} GFLOP/s) |")
    # The public code's loop, at p = 97
    q = 97
    Eq = torch.randn(q, 8, generator=g)
    aq, bq, cq = samples(q)
    t_loop = median_seconds(lambda: python_loop_counts(Eq, q, 0.5), "cpu", 1)
    t_small = median_seconds(lambda: grokfast.pairs.count_within_classes(Eq[aq] + Eq[bq], cq, 0.5),
                             "cpu", 5)
    assert int(grokfast.pairs.count_within_classes(Eq[aq] + Eq[bq], cq, 0.5).pairs) == \
        python_loop_counts(Eq, q, 0.5)
    print(f"| p=97 d=8 vs python loop | {t_small * 1e3:.2f} ms | loop {t_loop:.2f} s | "
          f"{t_loop / t_small:.0f}x | | |")


if __name__ == "__main__":
    main()
