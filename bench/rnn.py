"""Throughput of grokfast's fused Elman RNN against what a user would run instead:
torch.nn.RNN (+ nn.Linear readout), a hand-written torch loop (matmul + activation per step) and
the same loop jitted with numba, in the same process, reported as ratios.

    python bench/rnn.py                 # full table (a few minutes on 2 cores)
    python bench/rnn.py --quick         # shorter sequences, for a smoke run
    python bench/rnn.py --device cuda   # GPU: against cuDNN
    python bench/rnn.py --markdown out.md
    python bench/rnn.py --training      # the training step only (its own process: quieter)
    python bench/rnn.py --isa avx2      # grokfast's AVX2 kernels, torch/numpy/numba capped alike

Every configuration is checked for agreement with each baseline before it is timed. Baselines
whose outputs would not fit in memory at T = 10,000 are timed on a shorter prefix and compared
per step (the cost of a step does not depend on T); the table says which T each one ran.
"""

from __future__ import annotations

import _machine  # first: caps the peers' instruction sets (--isa) before torch/numpy load

import argparse
import statistics
import time

import numpy as np
import torch

import grokfast

try:
    import numba
    from numba import njit, prange
except ImportError:  # in the bench extra; without it the numba columns read "-"
    numba, prange = None, range
    njit = lambda **_: lambda f: f  # noqa: E731

VOCAB, OUT = 2, 2  # one-hot binary input and two readout units, as in streaming parity


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_seconds(fns: dict, device: str, rounds: int = 7, block: int = 20,
                        warmup: int = 5) -> dict:
    """Median seconds per call of each function, timed in rounds that run a block of calls of
    each (in a rotating order), so drifts of a shared machine hit all of them alike; each block
    starts with untimed calls, so one function's leftover threads (torch's OpenMP workers spin
    after parallel ops) do not land on the next one's clock. Also the median over rounds of
    each function's block median relative to the first one's ("<name>_ratio")."""
    names = list(fns)
    medians = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            medians[name].append(median_seconds(fns[name], device, block, warmup))
    first = medians[names[0]]
    out = {name: statistics.median(ms) for name, ms in medians.items()}
    for name in names[1:]:
        out[f"{name}_ratio"] = statistics.median(m / f for m, f in zip(medians[name], first))
    return out


def sgemm_rates(device: str, n: int = 2048) -> dict[str, float]:
    """GFLOP/s of a large float32 matrix product: torch (MKL here) and numpy (OpenBLAS)."""
    rates = {}
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    rates["torch"] = 2 * n ** 3 / median_seconds(lambda: a @ b, device, 5) / 1e9
    if device == "cpu":
        an, bn = a.numpy(), b.numpy()
        rates["numpy"] = 2 * n ** 3 / median_seconds(lambda: an @ bn, device, 5) / 1e9
    return rates


@njit(fastmath=False, cache=False)
def numba_rnn_one(x, emb, w_hh_t, bias, w_out_t, b_out):
    """B = 1: one np.dot (BLAS) per step, faster than hand loops there."""
    B, T = x.shape
    H = w_hh_t.shape[0]
    h = np.zeros((B, H), np.float32)
    y = np.empty((B, T, w_out_t.shape[1]), np.float32)
    for t in range(T):
        pre = np.dot(h, w_hh_t)
        for b in range(B):
            e = emb[x[b, t]]
            for i in range(H):
                h[b, i] = np.tanh(pre[b, i] + e[i] + bias[i])
        y[:, t, :] = np.dot(h, w_out_t) + b_out
    return y


@njit(fastmath=False, cache=False, parallel=True)
def numba_rnn_batch(x, emb, w_hh_t, bias, w_out_t, b_out):
    """B > 1: batch rows in parallel, each a whole sequence. tanh (scalar libm calls: no
    fastmath) costs as much as the matrix product, and np.dot per step leaves it serial: on 2
    cores these loops ran 1.2-6x faster than np.dot at B = 256-1024, and np.dot with the tanh
    under prange 10-40x slower (OpenBLAS's threads and numba's fight over the cores)."""
    B, T = x.shape
    H, O = w_hh_t.shape[0], w_out_t.shape[1]
    y = np.empty((B, T, O), np.float32)
    for b in prange(B):
        h = np.zeros(H, np.float32)
        acc = np.empty(H, np.float32)
        for t in range(T):
            e = emb[x[b, t]]
            for i in range(H):
                acc[i] = e[i] + bias[i]
            for j in range(H):  # axpy order: vectorizes without fastmath
                hj = h[j]
                for i in range(H):
                    acc[i] += w_hh_t[j, i] * hj
            for i in range(H):
                h[i] = np.tanh(acc[i])
            for o in range(O):
                s = b_out[o]
                for j in range(H):
                    s += h[j] * w_out_t[j, o]
                y[b, t, o] = s
    return y


class Problem:
    """A tanh Elman RNN over binary tokens with a 2-unit readout, in four equivalent forms."""

    def __init__(self, B: int, H: int, T: int, device: str, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.B, self.H, self.T, self.device = B, H, T, device
        self.x = torch.randint(0, VOCAB, (B, T), generator=g).to(device)
        self.w_ih = torch.randn(H, VOCAB, generator=g).to(device)
        self.w_hh = (torch.randn(H, H, generator=g) * 0.9 / H ** 0.5).to(device)
        self.bias = (torch.randn(H, generator=g) * 0.1).to(device)
        self.w_out = (torch.randn(OUT, H, generator=g) / H ** 0.5).to(device)
        self.b_out = torch.zeros(OUT, device=device)
        self.torch_rnn = torch.nn.RNN(VOCAB, H, batch_first=True).to(device)
        self.readout = torch.nn.Linear(H, OUT).to(device)
        with torch.no_grad():
            self.torch_rnn.weight_ih_l0.copy_(self.w_ih)
            self.torch_rnn.weight_hh_l0.copy_(self.w_hh)
            self.torch_rnn.bias_ih_l0.copy_(self.bias)
            self.torch_rnn.bias_hh_l0.zero_()
            self.readout.weight.copy_(self.w_out)
            self.readout.bias.copy_(self.b_out)
        if device == "cpu" and numba is not None:
            contiguous = lambda t: np.ascontiguousarray(t.numpy())  # noqa: E731
            self.numba_args = (self.x.numpy(), contiguous(self.w_ih.t()),
                               contiguous(self.w_hh.t()), self.bias.numpy(),
                               contiguous(self.w_out.t()), self.b_out.numpy())
        else:
            self.numba_args = None

    def grokfast(self, T: int) -> torch.Tensor:
        return grokfast.ops.rnn(self.x[:, :T], self.w_ih, self.w_hh, self.bias, None, self.w_out,
                                self.b_out, activation="tanh", outputs="all", hidden="none").y

    def nn_rnn(self, T: int) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(self.x[:, :T], VOCAB).float()
        return self.readout(self.torch_rnn(onehot)[0])

    def loop(self, T: int) -> torch.Tensor:
        h = torch.zeros(self.B, self.H, device=self.device)
        emb, w_hh_t, w_out_t = self.w_ih.t(), self.w_hh.t(), self.w_out.t()
        ys = []
        for t in range(T):
            h = torch.tanh(emb[self.x[:, t]] + self.bias + h @ w_hh_t)
            ys.append(h @ w_out_t + self.b_out)
        return torch.stack(ys, 1)

    def numba(self, T: int) -> np.ndarray:
        x, *weights = self.numba_args
        return (numba_rnn_one if self.B == 1 else numba_rnn_batch)(x[:, :T], *weights)


def check(problem: Problem, T: int = 64) -> None:
    with torch.no_grad():
        ours = problem.grokfast(T)
        torch.testing.assert_close(ours, problem.nn_rnn(T), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours, problem.loop(T), atol=1e-4, rtol=1e-4)
        if problem.numba_args is not None:  # also compiles it, outside the timings
            torch.testing.assert_close(ours, torch.from_numpy(problem.numba(T)), atol=1e-4,
                                       rtol=1e-4)


def forward_row(B: int, H: int, T: int, device: str, quick: bool) -> dict:
    p = Problem(B, H, T, device)
    check(p)
    work = B * H  # baselines keep [B, T, H] outputs: cap them near 1 GB, and the loop's time
    t_rnn = min(T, max(200, int(2.5e8 // work)))
    t_loop = min(T, 500 if quick else 2000)
    t_numba = min(t_loop, max(500, int(5e9 // (B * H * H))))  # its large-B steps take ms
    repeats = 3 if B * H * H * T > 2e10 else 5
    with torch.no_grad():
        ours = median_seconds(lambda: p.grokfast(T), device, repeats)
        rnn = median_seconds(lambda: p.nn_rnn(t_rnn), device, repeats)
        loop = median_seconds(lambda: p.loop(t_loop), device, 3)
    nb = (median_seconds(lambda: p.numba(t_numba), "cpu", 3)
          if p.numba_args is not None else None)
    us = lambda seconds, steps: seconds / steps * 1e6
    return dict(B=B, H=H, T=T, ours_us=us(ours, T), rnn_us=us(rnn, t_rnn), t_rnn=t_rnn,
                loop_us=us(loop, t_loop), t_loop=t_loop,
                numba_us=us(nb, t_numba) if nb is not None else None, t_numba=t_numba,
                gflops=2 * B * H * H * T / ours / 1e9)


def training_row(device: str, B: int = 128, H: int = 100, T: int = 10) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (B, T), generator=g).to(device)
    target = torch.randn(B, T, OUT, generator=g).to(device)
    ours = grokfast.nn.ElmanRNN(VOCAB, H, OUT, tokens=True).to(device)
    base = torch.nn.RNN(VOCAB, H, batch_first=True).to(device)
    readout = torch.nn.Linear(H, OUT).to(device)
    loop_params = [torch.nn.Parameter(t.detach().clone()) for t in
                   (ours.weight_ih, ours.weight_hh, ours.bias, ours.readout.weight, ours.readout.bias)]
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-3)
    opt_base = torch.optim.SGD(list(base.parameters()) + list(readout.parameters()), lr=1e-3)
    opt_loop = torch.optim.SGD(loop_params, lr=1e-3)

    def step_ours():
        opt_ours.zero_grad()
        torch.nn.functional.mse_loss(ours(x)[0], target).backward()
        opt_ours.step()

    def step_base():
        opt_base.zero_grad()
        y = readout(base(torch.nn.functional.one_hot(x, VOCAB).float())[0])
        torch.nn.functional.mse_loss(y, target).backward()
        opt_base.step()

    def step_loop():
        w_ih, w_hh, b, w_out, b_out = loop_params
        opt_loop.zero_grad()
        h = torch.zeros(B, H, device=device)
        ys = []
        for t in range(T):
            h = torch.tanh(w_ih.t()[x[:, t]] + b + h @ w_hh.t())
            ys.append(h @ w_out.t() + b_out)
        torch.nn.functional.mse_loss(torch.stack(ys, 1), target).backward()
        opt_loop.step()

    t = interleaved_seconds({"ours": step_ours, "rnn": step_base, "loop": step_loop}, device)
    return dict(B=B, H=H, T=T, ours_us=t["ours"] * 1e6, rnn_us=t["rnn"] * 1e6,
                loop_us=t["loop"] * 1e6, x_rnn=t["rnn_ratio"], x_loop=t["loop_ratio"])


def training_lines(tr: dict) -> list:
    return [f"Training step (forward + MSE + backward + SGD), B = {tr['B']}, H = {tr['H']}, "
            f"T = {tr['T']}, medians over 7 rounds of 20-step blocks (ratios: median of the rounds' ratios):",
            "", "| grokfast µs | nn.RNN µs | x nn.RNN | torch loop µs | x loop |",
            "|---|---|---|---|---|",
            f"| {tr['ours_us']:.0f} | {tr['rnn_us']:.0f} | {tr['x_rnn']:.2f} | "
            f"{tr['loop_us']:.0f} | {tr['x_loop']:.2f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="T = 1,000 instead of 10,000")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--training", action="store_true",
                        help="time the training step only (after the forward rows' large "
                             "allocations it reads slower)")
    _machine.add_isa_argument(parser)
    args = parser.parse_args()
    _machine.select_isa(args)
    device = args.device
    if device == "cuda" and not grokfast.backends()["cuda"]:
        raise SystemExit("--device cuda: grokfast has no usable CUDA backend here "
                         f"({grokfast.backends()})")
    T = 1000 if args.quick else 10_000
    torch.manual_seed(0)

    lines = [_machine.machine_line(device)]
    rates = sgemm_rates(device)
    best = max(rates.values())
    lines.append("SGEMM 2048^3: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in rates.items()))
    lines.append("")
    if args.training:
        tr = training_row(device)
        lines += training_lines(tr)
        print("\n".join(lines), flush=True)
        return
    lines.append(f"Forward, tanh, token input, readout at every step, T = {T:,}:")
    lines.append("")
    lines.append("| B | H | grokfast µs/step | GFLOP/s (% SGEMM) | nn.RNN µs/step (T run) | "
                 "x nn.RNN | torch loop µs/step (T run) | x loop | numba µs/step (T run) | "
                 "x numba |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines), flush=True)
    rows = []
    for B in (1, 256, 1024):
        for H in (64, 100, 128, 256):
            r = forward_row(B, H, T, device, args.quick)
            rows.append(r)
            line = (f"| {B} | {H} | {r['ours_us']:.3f} | {r['gflops']:.1f} ({100 * r['gflops'] / best:.0f}%) | "
                    f"{r['rnn_us']:.3f} ({r['t_rnn']:,}) | {r['rnn_us'] / r['ours_us']:.1f} | "
                    f"{r['loop_us']:.3f} ({r['t_loop']:,}) | {r['loop_us'] / r['ours_us']:.1f} | "
                    + (f"{r['numba_us']:.3f} ({r['t_numba']:,}) | "
                       f"{r['numba_us'] / r['ours_us']:.1f} |" if r["numba_us"] is not None
                       else "- | - |"))
            lines.append(line)
            print(line, flush=True)
    tr = training_row(device)
    tail = [""] + training_lines(tr) + [""]
    by = {(r["B"], r["H"]): r for r in rows}
    if device == "cpu":
        h64 = by[(256, 64)]
        tail.append(f"Targets (CPU, variant {grokfast.backends()['cpu_isa']}): "
                    f"B=256 H=64 {100 * h64['gflops'] / best:.0f}% of SGEMM (>= 60%), "
                    f"{h64['rnn_us'] / h64['ours_us']:.1f}x nn.RNN; "
                    f"B=1 H=100 {by[(1, 100)]['ours_us']:.3f} µs/step (<= 0.6); "
                    f"training {tr['x_rnn']:.2f}x nn.RNN (>= 2.5x)")
    else:
        b256 = by[(256, 100)]
        tail.append("Targets (GPU): "
                    f"B=1 H=100 {by[(1, 100)]['ours_us']:.3f} µs/step (<= 0.4); "
                    f"B=256 H=100 {b256['rnn_us'] / b256['ours_us']:.1f}x cuDNN (>= 3x)")
    lines += tail
    print("\n".join(tail), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
