"""Run as a script on a CPU that lacks some instruction sets (tests run it under qemu-x86_64
with an older CPU model): the CPU kernels must pick the best variant that CPU supports, refuse
wider ones with an error naming what it supports, and give the reference's results; an
instruction the CPU lacks kills the process (SIGILL).

    python isa_check.py EXPECTED_SUPPORTED... [--refuse WIDER...]
"""

import sys

import torch

import grokfast
from grokfast import pairs, ref
from grokfast.ops import random_symbols, rnn, rnn_track


def check_rnn(g):
    for H, B, T, tokens, activation, dtype in [(3, 5, 7, True, "tanh", torch.float32),
                                               (17, 13, 9, False, "relu", torch.float32),
                                               (100, 29, 6, True, "relu", torch.float32),
                                               (33, 4, 5, False, "tanh", torch.float64)]:
        def rand(*shape, s=1.0):
            return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)
        x = torch.randint(0, 3, (B, T), generator=g) if tokens else rand(B, T, 3)
        a = dict(x=x, w_ih=rand(H, 3), w_hh=rand(H, H, s=0.5 / H ** 0.5), bias=rand(H, s=0.3),
                 h0=rand(B, H, s=0.5), w_out=rand(2, H), b_out=rand(2))
        names = ["w_ih", "w_hh", "bias", "h0", "w_out", "b_out"]
        for n in names:
            a[n].requires_grad_(True)
        tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
        # weight gradients sum B * T float32 products, in a different order than torch's
        gtol = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float32 else tol
        hs, y = ref.rnn(**a, activation=activation)
        out = rnn(**a, activation=activation, hidden="all")
        torch.testing.assert_close(out.h, hs, **tol)
        torch.testing.assert_close(out.y, y, **tol)
        expected = torch.autograd.grad(y.square().sum() + hs.sum(), [a[n] for n in names])
        got = torch.autograd.grad(out.y.square().sum() + out.h.sum(), [a[n] for n in names])
        for n, mine, theirs in zip(names, got, expected):
            torch.testing.assert_close(mine, theirs, msg=n, **gtol)
        # no h0: the token-prefix sharing paths of the forward and backward
        a.pop("h0")
        hs, y = ref.rnn(**a, activation=activation)
        out = rnn(**a, activation=activation, hidden="all")
        torch.testing.assert_close(out.y, y, **tol)
        expected = torch.autograd.grad(y.square().sum(), [a[n] for n in names if n != "h0"])
        got = torch.autograd.grad(out.y.square().sum(), [a[n] for n in names if n != "h0"])
        for mine, theirs in zip(got, expected):
            torch.testing.assert_close(mine, theirs, **gtol)


def check_track(g):
    H, I, S = 20, 2, 5
    w = dict(w_ih=torch.randn(H, I, generator=g), w_hh=torch.randn(H, H, generator=g) / H ** 0.5,
             bias=torch.randn(H, generator=g) * 0.1, h0=None, w_out=torch.randn(2, H, generator=g),
             b_out=torch.randn(2, generator=g))
    tables = dict(centers=torch.randn(S, H, generator=g) * 0.5,
                  center_state=torch.tensor([0, 1, -1, 1, 0]),
                  machine_next=torch.tensor([[0, 1], [1, 0]]), machine_initial=0,
                  target_next=torch.tensor([[0, 1], [1, 0]]), target_out=torch.tensor([0, 1]),
                  target_initial=0)
    x = random_symbols(6, 40, I, seed=3)
    got = rnn_track(**w, activation="tanh", x=x, **tables)
    expected = ref.rnn_track_reference(x, **w, activation="tanh", **tables)
    for mine, theirs in zip(got[:3], expected[:3]):
        assert torch.equal(mine, theirs)
    torch.testing.assert_close(got[3], expected[3], atol=1e-5, rtol=1e-5)


def check_pairs(g):
    for N, D in [(1, 3), (40, 1), (150, 3), (97, 100)]:
        X = torch.randn(N, D, generator=g)
        X[N // 2:] = X[: N - N // 2].clone()  # duplicates: distance 0 is within every radius
        eps = 0.9 if D < 100 else 13.0
        labels = pairs.components(X, eps)
        assert torch.equal(labels, ref.components_reference(X, eps))
        centers = X[::3] + 0.01
        got = pairs.assign(X, centers, eps)
        idx, dist = ref.assign_reference(X, centers, eps)
        assert torch.equal(got.index, idx)
        torch.testing.assert_close(got.distance, dist)
        groups = torch.randint(0, 3, (N,), generator=g)
        radii = [0.0, 0.5, eps, float("inf")]
        assert torch.equal(pairs.count_pairs(X, radii, groups), ref.count_pairs_reference(X, radii, groups))
        mask = torch.rand(N, generator=g) < 0.7
        counts, nb = pairs.count_within_classes(X, groups, radii, mask=mask, neighbors=True)
        e_counts, e_nb = ref.count_within_classes_reference(X, groups, radii, mask=mask)
        assert torch.equal(counts, e_counts) and torch.equal(nb, e_nb)


def main(argv):
    refuse = argv[argv.index("--refuse") + 1:] if "--refuse" in argv else []
    expected = argv[:argv.index("--refuse")] if "--refuse" in argv else argv
    info = grokfast.backends()
    assert info["cpu_isas_supported"] == expected, info
    assert info["cpu_isa"] == expected[0], info
    for wider in refuse:
        try:
            grokfast.set_cpu_isa(wider)
        except ValueError as exc:
            assert "cannot run" in str(exc) and ", ".join(expected) in str(exc), exc
        else:
            raise AssertionError(f"set_cpu_isa({wider!r}) did not raise on this CPU")
    for isa in expected:
        grokfast.set_cpu_isa(isa)
        g = torch.Generator().manual_seed(0)
        check_rnn(g)
        check_track(g)
        check_pairs(g)
        print(f"{isa}: ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
