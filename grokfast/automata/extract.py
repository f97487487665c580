"""Extraction of the finite automaton a recurrent network implements.

The network is run over the prefix tree of a set of input sequences (every prefix once, the
empty prefix included: its state is the initial hidden state h0). The hidden states are
clustered within a radius eps; every cluster becomes a state of a Moore machine whose
transitions are read off the tree edges by majority and whose outputs are the majority of the
readout's predictions. See van Rossem & Saxe (streaming parity, state mergers).
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from grokfast.automata.moore import MooreMachine
from grokfast.nn import ElmanRNN
from grokfast.ops import pairs as _pairs
from grokfast.ops._validate import resolve_backend
from grokfast.ops.rnn import _ACTIVATION_CODE, _Y_LAST, _forward_impl

METHODS = ("components", "leader")
DEFAULT_EPS_REL = 0.1
MAX_TREE_NODES = 2 ** 26


# --------------------------------------------------------------------------------------------
# Prefix tree


@dataclass(frozen=True)
class PrefixTree:
    """Every distinct prefix of a set of sequences, the empty prefix (the root, node 0)
    included, in shortlex order: by length, then lexicographically. Each length is a
    contiguous block of nodes (``level(d)``), and every parent precedes its children.

    parent, symbol: int64 [N] (-1 at the root): node n is ``prefix(parent[n]) + [symbol[n]]``.
    depth: int64 [N]. paths: int64 [S, L + 1], the node after each prefix of each input
    sequence (column 0 is the root; -1 past a sequence's end), for callers that need to map
    per-step values of the original sequences onto the tree.
    """

    parent: np.ndarray
    symbol: np.ndarray
    depth: np.ndarray
    num_symbols: int
    paths: np.ndarray = field(repr=False)
    lengths: np.ndarray = field(repr=False)

    @property
    def num_nodes(self) -> int:
        return int(self.parent.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.depth[-1])

    def level(self, d: int) -> slice:
        """The nodes of depth d as a slice (empty when no sequence is that long)."""
        lo, hi = np.searchsorted(self.depth, [d, d + 1])
        return slice(int(lo), int(hi))

    def prefix(self, node: int) -> np.ndarray:
        """The input sequence that leads from the root to ``node``."""
        out = []
        while node > 0:
            out.append(int(self.symbol[node]))
            node = int(self.parent[node])
        return np.asarray(out[::-1], dtype=np.int64)

    @classmethod
    def full(cls, num_symbols: int, max_length: int) -> "PrefixTree":
        """Every sequence of length 0..max_length over num_symbols symbols (cached: the arrays
        are read-only)."""
        A, L = _positive_int("num_symbols", num_symbols), _nonneg_int("max_length", max_length)
        return _full_tree(A, L)

    @classmethod
    def _build_full(cls, A: int, L: int) -> "PrefixTree":
        if (A ** (L + 1) if A > 1 else L + 1) > MAX_TREE_NODES:
            raise ValueError(f"max_length: {A} symbols up to length {L} exceed "
                             f"{MAX_TREE_NODES} tree nodes")
        if L == 0:
            return cls.from_sequences([np.zeros(0, np.int64)], A)
        idx = np.arange(A ** L, dtype=np.int64)[:, None]
        place = A ** np.arange(L - 1, -1, -1, dtype=np.int64)[None, :]
        return cls.from_sequences((idx // place) % A, A)

    @classmethod
    def from_sequences(cls, sequences, num_symbols: int) -> "PrefixTree":
        """The tree of all prefixes of ``sequences``: an int array [S, T] or a list of 1-D
        integer sequences of any lengths (torch, numpy or lists)."""
        A = _positive_int("num_symbols", num_symbols)
        padded, lengths = _pad_sequences(sequences, A)
        S, L = padded.shape
        paths = np.full((S, L + 1), -1, dtype=np.int64)
        paths[:, 0] = 0
        parent, symbol, depth = [np.array([-1])], [np.array([-1])], [np.array([0])]
        next_id = 1
        for d in range(1, L + 1):
            alive = np.flatnonzero(lengths >= d)
            if alive.size == 0:
                break
            keys = paths[alive, d - 1] * A + padded[alive, d - 1]
            uniq, inverse = np.unique(keys, return_inverse=True)
            # parents are numbered in shortlex order, so (parent, symbol) order is shortlex too
            parent.append(uniq // A)
            symbol.append(uniq % A)
            depth.append(np.full(uniq.shape[0], d))
            paths[alive, d] = next_id + inverse.reshape(-1)
            next_id += uniq.shape[0]
            if next_id > MAX_TREE_NODES:
                raise ValueError(f"sequences: more than {MAX_TREE_NODES} distinct prefixes")
        cat = lambda parts: np.concatenate(parts).astype(np.int64)  # noqa: E731
        return cls(cat(parent), cat(symbol), cat(depth), A, paths, lengths)


@functools.lru_cache(maxsize=16)
def _full_tree(A: int, L: int) -> PrefixTree:
    tree = PrefixTree._build_full(A, L)
    for arr in (tree.parent, tree.symbol, tree.depth, tree.paths, tree.lengths):
        arr.flags.writeable = False
    return tree


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _nonneg_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def _pad_sequences(sequences, A: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(sequences, Tensor):
        sequences = sequences.detach().cpu().numpy()
    if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
        rows = list(sequences)
    elif isinstance(sequences, (list, tuple)) or (isinstance(sequences, np.ndarray)
                                                  and sequences.ndim == 1
                                                  and sequences.dtype == object):
        rows = [s.detach().cpu().numpy() if isinstance(s, Tensor) else np.asarray(s)
                for s in sequences]
    else:
        raise TypeError("sequences: expected an int array [S, T] or a list of 1-D integer "
                        f"sequences, got {type(sequences).__name__}")
    if len(rows) == 0:
        raise ValueError("sequences: expected at least one sequence")
    lengths = np.array([r.shape[0] if r.ndim == 1 else -1 for r in rows], dtype=np.int64)
    if (lengths < 0).any():
        raise ValueError("sequences: every sequence must be 1-D")
    for r in rows:
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise TypeError(f"sequences: expected integer symbols, got dtype {r.dtype}")
    padded = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
    for i, r in enumerate(rows):
        padded[i, :r.shape[0]] = r
    valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    if padded.size and ((padded < 0) | (padded >= A))[valid].any():
        raise ValueError(f"sequences: symbols must lie in [0, {A}) (num_symbols = {A})")
    return padded, lengths


# --------------------------------------------------------------------------------------------
# Running a model over the tree


class _TreeStates:
    """Hidden states [N, D] (float32, on the model's device) and readout predictions [N]
    (int64 numpy, -1 where unknown) of every tree node."""

    def __init__(self, states: Tensor, outputs: np.ndarray) -> None:
        self.states, self.outputs = states, outputs


def _predict(logits: Tensor, output_fn: Optional[Callable]) -> Tensor:
    if output_fn is not None:
        return torch.as_tensor(output_fn(logits)).long().reshape(-1)
    if not logits.is_floating_point():
        return logits.long().reshape(logits.shape[0])
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"model: readout gives shape {tuple(logits.shape)}; the output is "
                         "taken as the argmax over at least 2 units (pass output_fn to map "
                         "other readouts to integer outputs)")
    return logits.argmax(dim=1)


def _elman_parts(model) -> Optional[tuple[ElmanRNN, Optional[Tensor]]]:
    if isinstance(model, ElmanRNN):
        return model, None
    inner = getattr(model, "rnn", None)
    if isinstance(inner, ElmanRNN) and isinstance(getattr(model, "h0", None), Tensor):
        return inner, model.h0  # grokfast.models.SequenceRNN and look-alikes
    return None


def _run_elman(r: ElmanRNN, h0: Optional[Tensor], tree: PrefixTree,
               output_fn: Optional[Callable]) -> _TreeStates:
    w = r.weight_hh.detach()
    H = r.hidden_size
    if tree.num_symbols != r.input_size:
        raise ValueError(f"num_symbols: the tree has {tree.num_symbols} symbols but the "
                         f"model reads {r.input_size} (one-hot / token ids)")
    root = torch.zeros(H, dtype=w.dtype, device=w.device) if h0 is None else \
        h0.detach().to(w.dtype).reshape(H)
    states = torch.empty(tree.num_nodes, H, dtype=torch.float32, device=w.device)
    states[0] = root
    outputs = torch.full((tree.num_nodes,), -1, dtype=torch.int64, device=w.device)
    ro = r.readout
    w_out = ro.weight.detach() if ro is not None else None
    b_out = ro.bias.detach() if ro is not None and ro.bias is not None else None
    if ro is not None:
        outputs[0] = _predict(ro(root[None]).detach(), output_fn)[0]
    symbols = torch.from_numpy(np.array(tree.symbol)).to(w.device)
    parents = torch.from_numpy(np.array(tree.parent)).to(w.device)
    # One kernel call per tree level (one step from each parent's state); the arguments are
    # the model's own validated weights, so the level loop calls the op's implementation
    # directly in its canonical layout (model dimension 1) without per-call checks.
    lead = lambda t: t.detach().contiguous().unsqueeze(0) if t is not None else None  # noqa: E731
    w_ih, w_hh, bias = lead(r.weight_ih), lead(w), lead(r.bias)
    w_out1, b_out1 = lead(w_out), lead(b_out)
    backend = resolve_backend(r.backend, w.device)
    if backend != "cpu" and w.dtype != torch.float32:
        backend = "cpu"
    act = _ACTIVATION_CODE[r.activation]
    prev = root[None]
    for d in range(1, tree.max_depth + 1):
        lvl = tree.level(d)
        x = symbols[lvl].view(1, -1, 1)
        h_in = prev.index_select(0, parents[lvl] - tree.level(d - 1).start).unsqueeze(0)
        y, _, h_last = _forward_impl(x, w_ih, w_hh, bias, h_in, w_out1, b_out1, act, _Y_LAST,
                                     False, True, backend)
        prev = h_last[0]
        states[lvl] = prev.float()
        if ro is not None:
            outputs[lvl] = _predict(y[0], output_fn)
    return _TreeStates(states, outputs.cpu().numpy())


_TORCH_RNNS = (nn.RNN, nn.GRU, nn.LSTM)


def _run_torch_rnn(m: nn.RNNBase, readout, h0, tree: PrefixTree, output_fn,
                   lstm_state: str) -> _TreeStates:
    if m.bidirectional:
        raise ValueError("model: a bidirectional RNN has no left-to-right state to extract")
    if m.input_size != tree.num_symbols:
        raise ValueError(f"model: input_size {m.input_size} differs from num_symbols "
                         f"{tree.num_symbols} (extraction feeds one-hot symbols; wrap models "
                         "with their own embedding in a callable)")
    if readout is None:
        raise ValueError("readout: a torch.nn.RNN/GRU/LSTM needs a readout (e.g. its nn.Linear "
                         "head) mapping the last layer's hidden state to outputs")
    is_lstm = isinstance(m, nn.LSTM)
    p = next(m.parameters())
    Lyr, H = m.num_layers, m.hidden_size
    Hh = m.proj_size if getattr(m, "proj_size", 0) else H

    def zeros(n: int, width: int) -> Tensor:
        return torch.zeros(Lyr, n, width, dtype=p.dtype, device=p.device)

    if h0 is None:
        hx = (zeros(1, Hh), zeros(1, H)) if is_lstm else zeros(1, H)
    elif is_lstm:
        if not isinstance(h0, (tuple, list)) or len(h0) != 2:
            raise ValueError("h0: an LSTM needs a pair (h0, c0), each [num_layers, 1, H]")
        hx = tuple(t.detach().to(p).reshape(Lyr, 1, -1) for t in h0)
    else:
        hx = h0.detach().to(p).reshape(Lyr, 1, H)

    def flat(state) -> Tensor:
        if is_lstm:
            h, c = state
            parts = [h, c] if lstm_state == "hc" else [h]
            return torch.cat([t.permute(1, 0, 2).reshape(t.shape[1], -1) for t in parts], 1)
        return state.permute(1, 0, 2).reshape(state.shape[1], -1)

    def top(state) -> Tensor:
        return (state[0] if is_lstm else state)[-1]

    def gather(state, idx: Tensor):
        if is_lstm:
            return tuple(t[:, idx].contiguous() for t in state)
        return state[:, idx].contiguous()

    N = tree.num_nodes
    first = flat(hx)
    states = torch.empty(N, first.shape[1], dtype=torch.float32, device=p.device)
    outputs = torch.full((N,), -1, dtype=torch.int64, device=p.device)
    states[0] = first[0].float()
    outputs[0] = _predict(readout(top(hx)), output_fn)[0]
    symbols = torch.from_numpy(np.array(tree.symbol)).to(p.device)
    parents = torch.from_numpy(np.array(tree.parent)).to(p.device)
    prev = hx
    for d in range(1, tree.max_depth + 1):
        lvl = tree.level(d)
        x = torch.nn.functional.one_hot(symbols[lvl], tree.num_symbols).to(p.dtype)
        x = x[:, None] if m.batch_first else x[None]
        state_in = gather(prev, parents[lvl] - tree.level(d - 1).start)
        _, prev = m(x, state_in)
        states[lvl] = flat(prev).float()
        outputs[lvl] = _predict(readout(top(prev)), output_fn)
    return _TreeStates(states, outputs.cpu().numpy())


def _run_callable(fn: Callable, h0, tree: PrefixTree, output_fn) -> _TreeStates:
    paths, lengths = tree.paths, tree.lengths
    states: Optional[Tensor] = None
    outputs: Optional[Tensor] = None
    for T in np.unique(lengths):
        if T == 0:
            continue
        rows = np.flatnonzero(lengths == T)
        ids = torch.from_numpy(tree.symbol[paths[rows, 1:T + 1]])  # a node's last symbol
        res = fn(ids)
        if not isinstance(res, (tuple, list)) or len(res) != 2:
            raise TypeError("model: a callable must return (hidden [N, T, D], outputs "
                            "[N, T, O] logits or [N, T] integers)")
        hid, out = res
        if not isinstance(hid, Tensor) or hid.dim() != 3 or tuple(hid.shape[:2]) != tuple(ids.shape):
            raise ValueError(f"model: hidden states must be [N, T, D] = {tuple(ids.shape)} + "
                             f"(D,), got {getattr(hid, 'shape', type(hid).__name__)}")
        out = torch.as_tensor(out)
        if tuple(out.shape[:2]) != tuple(ids.shape):
            raise ValueError(f"model: outputs must start with [N, T] = {tuple(ids.shape)}, "
                             f"got {tuple(out.shape)}")
        if states is None:
            states = torch.empty(tree.num_nodes, hid.shape[2], dtype=torch.float32,
                                 device=hid.device)
            outputs = torch.full((tree.num_nodes,), -1, dtype=torch.int64, device=hid.device)
        nodes = torch.from_numpy(paths[rows, 1:T + 1].reshape(-1)).to(hid.device)
        states[nodes] = hid.detach().reshape(-1, hid.shape[2]).float()
        flat_out = out.detach().reshape(nodes.shape[0], *out.shape[2:]).to(hid.device)
        outputs[nodes] = _predict(flat_out, output_fn).to(hid.device)
    if states is None:
        raise ValueError("sequences: a callable model needs at least one non-empty sequence")
    if h0 is not None:
        states[0] = torch.as_tensor(h0).detach().to(states).reshape(-1)
    else:
        # the initial state is unknown: keep it out of the clusters (its own state)
        states[0] = float("nan")
    return _TreeStates(states, outputs.cpu().numpy())


def tree_states(model, tree: PrefixTree, *, readout=None, h0=None,
                output_fn: Optional[Callable] = None, lstm_state: str = "hc") -> _TreeStates:
    """Run ``model`` over every node of ``tree`` (see ``extract`` for the model kinds)."""
    if lstm_state not in ("hc", "h"):
        raise ValueError(f"lstm_state: expected 'hc' or 'h', got {lstm_state!r}")
    with torch.no_grad():
        parts = _elman_parts(model)
        if parts is not None:
            r, own_h0 = parts
            if readout is not None:
                raise ValueError("readout: this model has its own readout")
            return _run_elman(r, own_h0 if h0 is None else torch.as_tensor(h0), tree, output_fn)
        if isinstance(model, _TORCH_RNNS):
            return _run_torch_rnn(model, readout, h0, tree, output_fn, lstm_state)
        if callable(model):
            return _run_callable(model, h0, tree, output_fn)
    raise TypeError("model: expected a grokfast ElmanRNN / SequenceRNN, a torch.nn.RNN/GRU/LSTM "
                    f"with a readout, or a callable; got {type(model).__name__}")


# --------------------------------------------------------------------------------------------
# Clustering


def resolve_eps(states: Tensor, eps, eps_rel) -> float:
    """The absolute radius: eps itself, or eps_rel times the norm of the per-dimension
    (population) standard deviation of the states, as the paper's code does."""
    if eps is not None and eps_rel is not None:
        raise ValueError("eps: give either eps (absolute) or eps_rel (relative), not both")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"eps: expected a radius >= 0, got {eps!r}")
        return float(eps)
    rel = DEFAULT_EPS_REL if eps_rel is None else eps_rel
    if isinstance(rel, bool) or not isinstance(rel, numbers.Real) or not rel >= 0:
        raise ValueError(f"eps_rel: expected a number >= 0, got {rel!r}")
    x = states.detach().cpu().numpy()  # small arrays: numpy avoids torch's per-op threading
    rows = np.isfinite(x).all(axis=1)
    finite = x if rows.all() else x[rows]
    if finite.shape[0] < 2:
        return 0.0
    return float(rel) * float(np.linalg.norm(finite.std(axis=0, dtype=np.float64)))


def leader_clusters(states: Tensor, eps: float) -> np.ndarray:
    """Greedy leader clustering in node order: each point joins the first earlier leader
    within eps (inclusive, float64 distances), or becomes a leader itself. Labels are
    numbered by first appearance, like ``pairs.components``."""
    x = states.detach().double()
    N = x.shape[0]
    labels = torch.full((N,), -1, dtype=torch.int64, device=x.device)
    open_idx = torch.arange(N, device=x.device)
    r2 = eps * eps
    k = 0
    while open_idx.numel():
        leader = open_idx[0]
        d2 = ((x[open_idx] - x[leader]) ** 2).sum(dim=1)
        near = d2 <= r2
        near[0] = True
        labels[open_idx[near]] = k
        open_idx = open_idx[~near]
        k += 1
    return labels.cpu().numpy()


def _cluster(states: Tensor, eps: float, method: str, known: Optional[Tensor] = None) -> np.ndarray:
    if known is None:
        known = torch.from_numpy(np.isfinite(states.detach().cpu().numpy()).all(axis=1)) \
            .to(states.device)
    if bool(known.all()):
        if method == "leader":
            return leader_clusters(states, eps)
        return _pairs.components(states, eps).cpu().numpy()
    # rows without a known state (a callable's unknown h0) each form their own cluster
    idx = known.nonzero()[:, 0]
    sub = _cluster(states[idx], eps, method, known[idx]) if idx.numel() else np.zeros(0, np.int64)
    labels = np.full(states.shape[0], -1, dtype=np.int64)
    labels[idx.cpu().numpy()] = sub
    nxt = int(sub.max()) + 1 if sub.size else 0
    for i in np.flatnonzero(labels < 0):
        labels[i] = nxt
        nxt += 1
    return _renumber(labels)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Relabel by first appearance."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    mapping = np.empty(order.shape[0], dtype=np.int64)
    mapping[order] = np.arange(order.shape[0])
    return mapping[np.searchsorted(np.unique(labels), labels)]


# --------------------------------------------------------------------------------------------
# The machine


def _majority(keys: np.ndarray, values: np.ndarray, num_keys: int, num_values: int):
    """For each key, the most frequent value (ties: the smallest), its count and the number
    of distinct values; -1 / 0 / 0 for keys that never occur."""
    best = np.full(num_keys, -1, dtype=np.int64)
    best_count = np.zeros(num_keys, dtype=np.int64)
    distinct = np.zeros(num_keys, dtype=np.int64)
    if keys.size == 0:
        return best, best_count, distinct
    pair, counts = np.unique(keys * num_values + values, return_counts=True)
    k, v = pair // num_values, pair % num_values
    np.add.at(distinct, k, 1)
    order = np.lexsort((v, -counts, k))  # per key: highest count first, then smallest value
    k, v, counts = k[order], v[order], counts[order]
    first = np.ones(k.shape[0], dtype=bool)
    first[1:] = k[1:] != k[:-1]
    best[k[first]] = v[first]
    best_count[k[first]] = counts[first]
    return best, best_count, distinct


def target_states(target: MooreMachine, tree: PrefixTree) -> np.ndarray:
    """The state of ``target`` after every tree node's prefix (int64 [N]; -1 where the
    prefix runs into an undefined transition)."""
    if target.num_symbols != tree.num_symbols:
        raise ValueError(f"target: has {target.num_symbols} symbols, the tree "
                         f"{tree.num_symbols}")
    q = np.empty(tree.num_nodes, dtype=np.int64)
    q[0] = target.initial
    trans = np.vstack([target.transitions, np.full((1, target.num_symbols), -1)])  # row -1
    for d in range(1, tree.max_depth + 1):
        lvl = tree.level(d)
        q[lvl] = trans[q[tree.parent[lvl]], tree.symbol[lvl]]
    return q


@dataclass
class Extraction:
    """The result of ``extract``.

    machine: the raw extracted machine (one state per cluster; initial = the cluster of h0);
    minimized: ``machine.minimize()``. labels: cluster of each tree node (int64 [N]); centers:
    mean hidden state of each cluster (float32 [S, D], on the model's device), the points the
    length-10,000 validation snaps hidden states to. transition_conflicts: tree edges whose
    target cluster disagrees with the majority transition of their (state, symbol);
    conflicting_transitions: (state, symbol) pairs with more than one observed target;
    output_conflicts: nodes whose prediction disagrees with their state's output;
    undefined_transitions: (state, symbol) pairs never observed. equals_target and
    counterexample are set when a target machine was given; output_accuracy is the fraction of
    non-root nodes whose prediction equals the target's output (None without a target).
    """

    machine: MooreMachine
    minimized: MooreMachine
    eps: float
    method: str
    tree: PrefixTree
    labels: np.ndarray
    states: Tensor
    node_outputs: np.ndarray
    centers: Tensor
    transition_conflicts: int
    conflicting_transitions: int
    output_conflicts: int
    undefined_transitions: int
    target: Optional[MooreMachine] = None
    equals_target: Optional[bool] = None
    counterexample: Optional[np.ndarray] = None
    output_accuracy: Optional[float] = None

    @property
    def num_states(self) -> int:
        return self.machine.num_states

    @property
    def num_states_minimized(self) -> int:
        return self.minimized.num_states

    def summary(self) -> dict[str, Any]:
        """The numbers, JSON-serialisable (the keys runs write into metrics.jsonl)."""
        return {
            "num_states": self.num_states,
            "num_states_minimized": self.num_states_minimized,
            "transition_conflicts": self.transition_conflicts,
            "conflicting_transitions": self.conflicting_transitions,
            "output_conflicts": self.output_conflicts,
            "undefined_transitions": self.undefined_transitions,
            "equals_target": self.equals_target,
            "counterexample": None if self.counterexample is None
            else [int(s) for s in self.counterexample],
            "output_accuracy": self.output_accuracy,
            "eps": self.eps,
            "tree_nodes": self.tree.num_nodes,
        }

    def __repr__(self) -> str:
        s = (f"Extraction(num_states={self.num_states}, "
             f"num_states_minimized={self.num_states_minimized}, eps={self.eps:.4g}, "
             f"method={self.method!r}, transition_conflicts={self.transition_conflicts}, "
             f"undefined_transitions={self.undefined_transitions}")
        if self.equals_target is not None:
            s += f", equals_target={self.equals_target}"
        return s + ")"


def build_machine(tree: PrefixTree, labels: np.ndarray, node_outputs: np.ndarray):
    """The Moore machine of a clustered tree: transitions and outputs by majority.
    Returns (machine, transition_conflicts, conflicting_transitions, output_conflicts)."""
    S, A = int(labels.max()) + 1, tree.num_symbols
    child = np.arange(1, tree.num_nodes)
    src = labels[tree.parent[child]]
    keys = src * A + tree.symbol[child]
    dst, count, distinct = _majority(keys, labels[child], S * A, S)
    transitions = dst.reshape(S, A)
    conflicts = int(child.shape[0] - count.sum())

    # The root's prediction is untrained (no loss on the empty prefix): it votes only when
    # its cluster has no other node, or no other prediction is known.
    votes = node_outputs >= 0
    if votes[0]:
        root_alone = not (votes[1:] & (labels[1:] == labels[0])).any()
        votes[0] = root_alone
    num_out = int(node_outputs.max()) + 1 if (node_outputs >= 0).any() else 1
    out, out_count, _ = _majority(labels[votes], node_outputs[votes], S, num_out)
    output_conflicts = int(votes.sum() - out_count.sum())
    outputs = np.where(out >= 0, out, 0)  # a state nobody predicted for: output 0
    machine = MooreMachine(transitions, outputs, int(labels[0]))
    return machine, conflicts, int((distinct > 1).sum()), output_conflicts


def extract(model, sequences=None, eps: Optional[float] = None, *,
            eps_rel: Optional[float] = None, method: str = "components",
            max_length: int = 10, num_symbols: Optional[int] = None,
            target: Optional[MooreMachine] = None, readout=None, h0=None,
            output_fn: Optional[Callable] = None, lstm_state: str = "hc") -> Extraction:
    """Extract the Moore machine ``model`` implements on the prefixes of ``sequences``.

    model: a grokfast ``ElmanRNN`` with a readout, a ``grokfast.models.SequenceRNN`` (or any
    module with an ElmanRNN ``.rnn`` and an initial state ``.h0``), a ``torch.nn.RNN``/``GRU``/
    ``LSTM`` fed one-hot symbols together with ``readout`` (a module or callable from the last
    layer's hidden state to outputs; the state clustered is all layers' h, and c too for an
    LSTM unless ``lstm_state="h"``), or a callable ``ids [N, T] -> (hidden [N, T, D],
    outputs)`` with outputs logits [N, T, O] or integers [N, T].
    sequences: int [S, T] or a list of 1-D sequences; default every sequence of length up to
    ``max_length`` over ``num_symbols`` symbols (taken from the model when it says).
    eps: absolute radius; eps_rel: radius relative to the norm of the per-dimension standard
    deviation of the tree states (default eps_rel = 0.1 when neither is given).
    method: "components" (connected components of the eps-graph, exact) or "leader" (greedy
    leader clustering in shortlex node order, as the paper's code does).
    h0: the initial state (default: the model's own h0, zeros for torch RNNs; a callable's
    initial state is unknown without it and stays a state of its own).
    output_fn: maps readout values [N, O] to integer outputs (default argmax).
    target: compare the minimized machine with this machine.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    A = _model_symbols(model, num_symbols)
    if sequences is None:
        tree = PrefixTree.full(A, max_length)
    else:
        tree = PrefixTree.from_sequences(sequences, A)
    if target is not None and not isinstance(target, MooreMachine):
        raise TypeError(f"target: expected a MooreMachine, got {type(target).__name__}")
    ts = tree_states(model, tree, readout=readout, h0=h0, output_fn=output_fn,
                     lstm_state=lstm_state)
    return extract_from_states(tree, ts.states, ts.outputs, eps=eps, eps_rel=eps_rel,
                               method=method, target=target)


def extract_from_states(tree: PrefixTree, states: Tensor, node_outputs: np.ndarray, *,
                        eps: Optional[float] = None, eps_rel: Optional[float] = None,
                        method: str = "components",
                        target: Optional[MooreMachine] = None) -> Extraction:
    """``extract`` on precomputed tree states [N, D] and predictions [N] (-1 = unknown)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if states.dim() != 2 or states.shape[0] != tree.num_nodes:
        raise ValueError(f"states: expected [{tree.num_nodes}, D] (one row per tree node), "
                         f"got {tuple(states.shape)}")
    states = states.float()
    r = resolve_eps(states, eps, eps_rel)
    labels = _cluster(states, r, method)
    machine, conflicts, conflicting, out_conflicts = build_machine(tree, labels, node_outputs)
    centers = _cluster_means(states, labels, machine.num_states)
    result = Extraction(
        machine=machine, minimized=machine.minimize(), eps=r, method=method, tree=tree,
        labels=labels, states=states, node_outputs=node_outputs, centers=centers,
        transition_conflicts=conflicts, conflicting_transitions=conflicting,
        output_conflicts=out_conflicts,
        undefined_transitions=int((machine.transitions < 0).sum()))
    if target is not None:
        result.target = target
        result.counterexample = machine.counterexample(target)
        result.equals_target = result.counterexample is None
        q = target_states(target, tree)
        known = (q[1:] >= 0) & (node_outputs[1:] >= 0)
        if known.any():
            truth = target.outputs[q[1:][known]]
            result.output_accuracy = float((node_outputs[1:][known] == truth).mean())
    return result


def _cluster_means(states: Tensor, labels: np.ndarray, S: int) -> Tensor:
    """Mean state of each cluster (float32 [S, D], on the device of states); a state without
    a known vector (NaN) counts as zeros."""
    x = states.detach().cpu().numpy()
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels, minlength=S)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sums = np.add.reduceat(x[order], starts, axis=0, dtype=np.float64) if x.shape[0] \
        else np.zeros((S, x.shape[1]))
    means = sums / np.maximum(sizes, 1)[:, None]
    return torch.from_numpy(means.astype(np.float32)).to(states.device)


def _model_symbols(model, num_symbols: Optional[int]) -> int:
    declared = None
    parts = _elman_parts(model)
    if parts is not None:
        declared = parts[0].input_size
    elif isinstance(model, _TORCH_RNNS):
        declared = model.input_size
    if num_symbols is None:
        if declared is None:
            raise ValueError("num_symbols: required for a callable model (the alphabet size)")
        return declared
    A = _positive_int("num_symbols", num_symbols)
    if declared is not None and declared != A:
        raise ValueError(f"num_symbols: {A} differs from the model's input size {declared}")
    return A


__all__ = ["Extraction", "PrefixTree", "build_machine", "extract", "extract_from_states",
           "leader_clusters", "resolve_eps", "target_states", "tree_states"]
