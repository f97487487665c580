"""Checking an extracted automaton at length 10,000 (grokfast.automata.validate, the fused
rnn_track kernel) against what a user would write instead, in the same process, as ratios.

    python bench/validate.py                  # N = 100 sequences of T = 10,000
    python bench/validate.py --quick          # N = 20, T = 2,000
    python bench/validate.py --device cuda    # grokfast and the torch baseline on the GPU

Model: the trained streaming-parity network of the test suite (ReLU, H = 100), its automaton
extracted from the length-10 prefix tree. Baseline ("torch"): torch.nn.RNN over the whole
batch in time chunks of 1,000 steps (hidden states of a chunk materialised), nearest
extracted state by torch.cdist, the automaton and the target stepped with tensor gathers per
step, readout argmax per chunk: the same numbers, checked equal before timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python_tests"))
sys.path.insert(0, str(HERE))

from grokfast.automata import extract, parity, validate  # noqa: E402
from grokfast.automata.validate import state_map  # noqa: E402
from grokfast.ops import random_symbols  # noqa: E402
from test_extract import _sequence_rnn_as_torch, trained_parity  # noqa: E402
from rnn import median_seconds  # noqa: E402  (bench/rnn.py: warm-up, sync, median)

CHUNK = 1000


def torch_validate(net, readout, h0, ex, ids, target):
    """The straightforward version: nn.RNN by chunks, cdist, gathers."""
    dev = ids.device
    centers = ex.centers.to(dev)
    cstate = torch.from_numpy(state_map(ex.machine, ex.minimized)).to(dev)
    mnext = torch.from_numpy(np.array(ex.minimized.transitions)).to(dev)
    tnext = torch.from_numpy(np.array(target.transitions)).to(dev)
    tout = torch.from_numpy(np.array(target.outputs)).to(dev)
    N, T = ids.shape
    h = h0.expand(1, N, -1).contiguous()
    qm = torch.full((N,), ex.minimized.initial, device=dev)
    qt = torch.full((N,), target.initial, device=dev)
    first = torch.full((N,), -1, device=dev)
    agree = torch.zeros(N, dtype=torch.int64, device=dev)
    correct = torch.zeros(N, dtype=torch.int64, device=dev)
    with torch.no_grad():
        for t0 in range(0, T, CHUNK):
            x = torch.nn.functional.one_hot(ids[:, t0:t0 + CHUNK], 2).float()
            hs, h = net(x, h)
            nearest = torch.cdist(hs, centers[None]).argmin(dim=2)
            pred = readout(hs).argmax(dim=2)
            for k in range(hs.shape[1]):
                sym = ids[:, t0 + k]
                qm = torch.where(qm >= 0, mnext[qm.clamp_min(0), sym], qm)
                qt = tnext[qt, sym]
                ok = (qm >= 0) & (cstate[nearest[:, k]] == qm)
                agree += ok
                first = torch.where((first < 0) & ~ok, t0 + k, first)
                correct += pred[:, k] == tout[qt]
    return first.cpu(), agree.cpu(), correct.cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    N, T = (20, 2000) if args.quick else (100, 10_000)
    dev = torch.device(args.device)
    model = trained_parity().to(dev)
    ex = extract(model, target=parity())
    net, readout, h0 = _sequence_rnn_as_torch(model)
    net, readout, h0 = net.to(dev), readout.to(dev), h0.to(dev)
    ids = random_symbols(N, T, 2, seed=0).to(dev)
    target = parity()

    ours = validate(model, ex, num_sequences=N, length=T, seed=0)
    first, agree, correct = torch_validate(net, readout, h0, ex, ids, target)
    assert np.array_equal(ours.first_disagreement, first.numpy()), "first disagreement differs"
    assert np.allclose(ours.agreement, agree.numpy() / T) and np.allclose(ours.accuracy, correct.numpy() / T)

    t_ours = median_seconds(lambda: validate(model, ex, num_sequences=N, length=T, seed=0),
                         args.device, args.repeats)
    t_torch = median_seconds(lambda: torch_validate(net, readout, h0, ex, ids, target),
                          args.device, args.repeats)
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"# validate: N = {N}, T = {T}, H = 100, {ex.num_states} extracted states "
          f"({name}, {os.cpu_count()} CPUs, torch {torch.__version__})")
    print("| what | grokfast s | torch s | ratio |")
    print("|---|---|---|---|")
    print(f"| N={N} T={T} | {t_ours:.3f} | {t_torch:.3f} | {t_torch / t_ours:.1f}x |")
    print(f"all agree: {ours.all_agree}, accuracy {ours.accuracy.mean():.4f}")


if __name__ == "__main__":
    main()
