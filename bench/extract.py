"""Automaton extraction from a trained streaming-parity RNN: grokfast against what a user
would write from the paper's description, in one run, as ratios.

    python bench/extract.py                       # the trained model of python_tests/data
    python bench/extract.py --checkpoint run/checkpoints/final.pt
    python bench/extract.py --overhead 100        # + cost of extraction inside training
    python bench/extract.py --pairs               # + bench/pairs.py's synthetic table
    python bench/extract.py --markdown out.md

The workload: the prefix tree of every binary sequence up to length 10 (2,047 prefixes, the
root included), hidden size 100, clustered within eps = 0.1 x the norm of the per-unit
standard deviation of the tree states (the default of `grokfast parity`), compared with the
parity machine.

grokfast: ``grokfast.automata.extract(model, target=parity(), method=...)`` (the whole call:
prefix tree, fused RNN kernel level by level, clustering, majority machine, minimization,
comparison with the target), and the path the training loop takes (tree built once,
``tree_states`` + ``extract_from_states``) for both clustering methods.

Baseline ("paper-style"): a straightforward NumPy/PyTorch re-implementation of the approach of
the paper's code: run the model over every training sequence with plain nn.RNN-style steps
(h = relu(W_ih x + W_hh h + b), one torch step per time step and length, hidden state of
every step kept: 18,434 states plus h0), greedy leader clustering with a Python loop over the
states (each joins the first leader within eps, else becomes a leader), then transitions and
outputs by majority vote in Python dicts, and the same minimization. It uses the same
absolute eps as grokfast.

Clustering alone: ``grokfast.pairs.components`` vs scikit-learn ``DBSCAN(eps,
min_samples=1)`` on the real tree states (N = 2,047, D = 100; labels asserted equal up to
renumbering). The synthetic N = 2,046 / 100,000 / 1,000,000 comparison is bench/pairs.py's;
``--pairs`` runs it from here (it takes minutes: DBSCAN at N = 100,000 alone takes ~1 min).

Every variant is checked before timing: all minimized machines must be equal (canonical
numbering) and, for a trained model, equal to parity.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

import grokfast
from grokfast.automata import MooreMachine, parity
from grokfast.automata.extract import PrefixTree, extract, extract_from_states, tree_states
from grokfast.models import SequenceRNN
from grokfast.tasks.sequences import all_sequences

DEFAULT_CHECKPOINT = str(Path(__file__).resolve().parent.parent / "python_tests" / "data" /
                         "parity_relu_h100_seed0.pt")
MAX_LENGTH = 10


# --------------------------------------------------------------------------------------------
# The model


def made_model(hidden: int = 100, seed: int = 0) -> SequenceRNN:
    """A ReLU RNN that computes parity exactly in 4 of its units (even-after-0, even-after-1,
    odd-after-0, odd-after-1), the other units fed small random weights, so the tree states
    form tight clusters instead of points. Used when no trained checkpoint is at hand."""
    g = torch.Generator().manual_seed(seed)
    m = SequenceRNN(2, 2, hidden, generator=g)
    even, odd = [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]
    with torch.no_grad():
        r = m.rnn
        r.weight_hh.copy_(torch.randn(hidden, hidden, generator=g) * 1e-3)
        r.weight_hh[:4, :4] = torch.tensor([even, odd, odd, even])
        r.weight_hh[:4, 4:] = 0
        r.weight_ih.copy_(torch.rand(hidden, 2, generator=g) * 0.1)
        r.weight_ih[:4] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        r.bias.zero_()
        r.bias[:4] = -1.0
        r.readout.weight.zero_()
        r.readout.weight[:, :4] = torch.tensor([even, odd])
        r.readout.bias.zero_()
        m.h0.zero_()
        m.h0[0] = 1.0
    return m


def load_model(path: str) -> tuple[SequenceRNN, str]:
    if path and Path(path).is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "model" not in state:  # a bare state dict (the test suite's trained model)
            state = {"model": state, "epoch": 800}
        cfg = state.get("config", {})
        m = SequenceRNN(2, 2, cfg.get("hidden", 100), activation=cfg.get("activation", "relu"),
                        learn_h0=cfg.get("learn_h0", False),
                        generator=torch.Generator().manual_seed(0))
        m.load_state_dict(state["model"])
        return m, f"trained checkpoint {path} (epoch {state.get('epoch')})"
    return made_model(), "made model (exact parity in 4 of 100 units; no checkpoint found)"


# --------------------------------------------------------------------------------------------
# The baseline: the paper's approach written out


def paper_style_extract(model: SequenceRNN, eps: float, max_length: int = MAX_LENGTH):
    """Returns (machine, number of states clustered)."""
    r = model.rnn
    W_ih, W_hh = r.weight_ih.detach(), r.weight_hh.detach()
    b, W_out, b_out = r.bias.detach(), r.readout.weight.detach(), r.readout.bias.detach()
    h0 = model.h0.detach()
    states = [h0[None].numpy()]
    preds = [np.array([-1])]  # the root's output is never trained
    prev_idx, syms, next_idx = [], [], []
    base = 1
    with torch.no_grad():
        for n in range(1, max_length + 1):
            seqs = all_sequences(2, n)  # [2^n, n]
            x = torch.nn.functional.one_hot(seqs, 2).float()
            h = h0.expand(seqs.shape[0], -1)
            prev = np.zeros(seqs.shape[0], dtype=np.int64)  # index of the root state
            for t in range(n):
                h = torch.relu(x[:, t] @ W_ih.T + h @ W_hh.T + b)
                y = h @ W_out.T + b_out
                idx = base + np.arange(seqs.shape[0])
                states.append(h.numpy())
                preds.append(y.argmax(1).numpy())
                prev_idx.append(prev)
                syms.append(seqs[:, t].numpy())
                next_idx.append(idx)
                prev, base = idx, base + seqs.shape[0]
    H = np.concatenate(states).astype(np.float64)
    pred = np.concatenate(preds)
    # greedy leader clustering, one state at a time
    leaders: list[np.ndarray] = []
    labels = np.empty(H.shape[0], dtype=np.int64)
    for i, h in enumerate(H):
        if leaders:
            d = np.sqrt(((np.asarray(leaders) - h) ** 2).sum(axis=1))
            near = np.flatnonzero(d <= eps)
            if near.size:
                labels[i] = near[0]
                continue
        labels[i] = len(leaders)
        leaders.append(h)
    # transitions and outputs by majority
    votes: dict = defaultdict(Counter)
    for p, a, q in zip(np.concatenate(prev_idx), np.concatenate(syms), np.concatenate(next_idx)):
        votes[(labels[p], a)][labels[q]] += 1
    out_votes: dict = defaultdict(Counter)
    for lab, y in zip(labels[1:], pred[1:]):
        out_votes[lab][y] += 1
    S = len(leaders)
    trans = np.full((S, 2), -1, dtype=np.int64)
    for (s, a), c in votes.items():
        trans[s, a] = c.most_common(1)[0][0]
    outs = np.array([out_votes[s].most_common(1)[0][0] if out_votes[s] else 0
                     for s in range(S)])
    return MooreMachine(trans, outs, int(labels[0])), H.shape[0]


# --------------------------------------------------------------------------------------------
# Timing


def loop_path(model, tree: PrefixTree, method: str, target: MooreMachine):
    """What the training loop runs each epoch: the tree is built once per run."""
    s = tree_states(model, tree)
    return extract_from_states(tree, s.states, s.outputs, eps_rel=0.1, method=method,
                               target=target)


def timed(fn, repeats: int, warmup: int = 2):
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def overhead_rows(epochs: int, rounds: int) -> list[str]:
    """Median epoch seconds of `grokfast parity` runs with and without extraction,
    alternating (the metrics' epoch_seconds include the extraction)."""
    from grokfast.experiments import ParityConfig, run_parity
    from grokfast.train import read_metrics
    res: dict = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            for mode in ("off", "on"):
                out = Path(tmp) / f"{mode}{i}"
                cfg = ParityConfig(epochs=epochs, extract_every=0 if mode == "off" else 1,
                                   checkpoint_every=10 ** 6)
                run_parity(cfg, out, progress=False)
                res[mode].append(statistics.median(
                    r["epoch_seconds"] for r in read_metrics(out / "metrics.jsonl")))
    off, on = statistics.median(res["off"]), statistics.median(res["on"])
    return [
        "",
        f"Training with extraction every epoch: `grokfast parity --epochs {epochs}`, "
        f"{rounds} alternating runs each, median epoch time (train + evaluation + extraction):",
        "",
        "| --extract-every | ms/epoch | overhead |",
        "|---:|---:|---:|",
        f"| 0 | {off * 1e3:.1f} | - |",
        f"| 1 | {on * 1e3:.1f} | {100 * (on / off - 1):+.1f}% |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"a parity checkpoint (default {DEFAULT_CHECKPOINT}; a made model "
                             "when missing)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--overhead", type=int, metavar="EPOCHS", default=0,
                        help="also time grokfast parity runs of EPOCHS epochs with and "
                             "without extraction")
    parser.add_argument("--rounds", type=int, default=3, help="runs per mode for --overhead")
    parser.add_argument("--pairs", action="store_true",
                        help="also run bench/pairs.py's synthetic components-vs-DBSCAN table")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()

    model, source = load_model(args.checkpoint)
    target = parity()
    tree = PrefixTree.full(2, MAX_LENGTH)
    ts = tree_states(model, tree)
    base = extract(model, target=target)
    eps = base.eps

    # ---- correctness before timing
    results = {}
    for method in ("components", "leader"):
        e = extract(model, target=target, method=method)
        e2 = extract_from_states(tree, ts.states, ts.outputs, eps_rel=0.1, method=method,
                                 target=target)
        assert e.machine == e2.machine and e.eps == eps, method
        results[method] = e
    naive_machine, naive_states = paper_style_extract(model, eps)
    minimized = {m: e.minimized for m, e in results.items()}
    minimized["paper-style"] = naive_machine.minimize()
    first = next(iter(minimized.values()))
    if any(m != first for m in minimized.values()):
        raise SystemExit(f"minimized machines differ: {minimized}")
    trained = results["components"].equals_target
    if "trained" in source and not trained:
        print("note: the checkpoint's automaton is not parity (an untrained run?)")

    # ---- timing
    rows = []
    t_naive, _ = timed(lambda: paper_style_extract(model, eps), max(3, args.repeats // 10), 1)
    for method in ("components", "leader"):
        t_full, _ = timed(lambda: extract(model, target=target, method=method), args.repeats)
        t_loop, _ = timed(lambda: loop_path(model, tree, method, target), args.repeats)
        e = results[method]
        rows.append((f"grokfast extract(method={method!r})", t_full, e.num_states,
                     e.num_states_minimized))
        rows.append((f"grokfast tree_states + extract_from_states ({method})", t_loop,
                     e.num_states, e.num_states_minimized))
    rows.append(("paper-style NumPy/PyTorch (leader, Python loops)", t_naive,
                 naive_machine.num_states, minimized["paper-style"].num_states))

    t_tree, _ = timed(lambda: PrefixTree.full(2, MAX_LENGTH), args.repeats)
    t_states, _ = timed(lambda: tree_states(model, tree), args.repeats)
    X = ts.states
    t_comp, labels = timed(lambda: grokfast.pairs.components(X, eps), args.repeats)
    sk_line = None
    try:
        from sklearn.cluster import DBSCAN
        import sklearn
        X_np = X.numpy()
        t_sk, sk = timed(lambda: DBSCAN(eps=eps, min_samples=1).fit(X_np).labels_,
                         max(5, args.repeats // 5), 1)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pairs import canon  # bench/pairs.py
        if not np.array_equal(canon(sk), labels.numpy()):
            raise SystemExit("components: labels differ from scikit-learn's DBSCAN")
        sk_line = (t_sk, sklearn.__version__)
    except ImportError:
        pass

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
               f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
               f"grokfast {grokfast.__version__}")
    lines = [
        f"Extraction of the length-{MAX_LENGTH} parity tree ({tree.num_nodes} prefixes, "
        f"H = {X.shape[1]}, eps = {eps:.4g} = 0.1 x spread), {source}",
        f"machine: {machine}",
        "",
        "| implementation | ms / extraction | x paper-style | raw states | minimized |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t, raw, mini in rows:
        lines.append(f"| {name} | {t * 1e3:.2f} | {t_naive / t:.0f}x | {raw} | {mini} |")
    lines += [
        "",
        f"Minimized machines equal (canonical numbering); equal to parity: {trained}. "
        f"Paper-style clusters {naive_states:,} states (every step of every sequence).",
        "",
        "Parts of a grokfast extraction (ms): "
        f"prefix tree {t_tree * 1e3:.2f}, tree states (fused kernel, 10 levels) "
        f"{t_states * 1e3:.2f}, eps-components {t_comp * 1e3:.2f}.",
        "",
        "| clustering of the 2,047 tree states | ms | speedup |",
        "|---|---:|---:|",
        f"| grokfast.pairs.components | {t_comp * 1e3:.3f} | - |",
    ]
    if sk_line is not None:
        lines.append(f"| scikit-learn {sk_line[1]} DBSCAN(eps, min_samples=1) | "
                     f"{sk_line[0] * 1e3:.2f} | {sk_line[0] / t_comp:.0f}x |")
    else:
        lines.append("| scikit-learn | not installed | - |")
    print("\n".join(lines), flush=True)
    if args.overhead:
        more = overhead_rows(args.overhead, args.rounds)
        print("\n".join(more), flush=True)
        lines += more
    if args.pairs:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import pairs as bench_pairs  # bench/pairs.py: the synthetic table, not duplicated here
        more = ["", "bench/pairs.py table (synthetic clustered data, D = 100, eps = 0.5):", "",
                "| N | components | grokfast (s) | scikit-learn (s) | speedup | note |",
                "|---:|---:|---:|---:|---:|---|"]
        print("\n".join(more), flush=True)
        for n in (2046, 100_000, 1_000_000):
            r = bench_pairs.run(n, "cpu", with_sklearn=sk_line is not None)
            sk = f"{r['sklearn']:.3f}" if r["sklearn"] is not None else "-"
            ratio = f"{r['sklearn'] / r['ours']:.0f}x" if r["sklearn"] is not None else "-"
            line = (f"| {n:,} | {r['components']} | {r['ours']:.4f} | {sk} | {ratio} | "
                    f"{r['note']} |")
            print(line, flush=True)
            more.append(line)
        lines += more
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
