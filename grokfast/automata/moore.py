"""Moore machines over a finite alphabet: the target algorithms of the sequence tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[np.ndarray, Tensor, list]
PathLike = Union[str, os.PathLike]

_JSON_FORMAT = "grokfast.MooreMachine"
_JSON_VERSION = 1
_DENSE_PAIRS = 1 << 26  # counterexample: largest state-pair count searched with a bitmap


def _int_array(name: str, value: Any, ndim: int) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise ValueError(f"{name}: expected a rectangular integer array") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {arr.shape}")
    return arr.astype(np.int64)


def _hopcroft(trans: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Coarsest congruence of a complete machine refining outputs: a block id per state.

    Hopcroft's algorithm on a refinable partition: every block is a contiguous run of
    ``elems``; marked states are swapped to the front of their block; a split keeps the old
    id for the larger part and queues the smaller part for every symbol, which is what gives
    O(A n log n) (each state is in a queued splitter O(log n) times per symbol).
    """
    n, A = trans.shape
    preds, ptrs = [], []
    for a in range(A):
        col = trans[:, a]
        preds.append(np.argsort(col, kind="stable").tolist())
        ptrs.append(np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n))]).tolist())
    _, blk_arr = np.unique(outputs, return_inverse=True)
    blk_arr = blk_arr.reshape(-1)
    elems_arr = np.argsort(blk_arr, kind="stable")
    sizes = np.bincount(blk_arr)
    end = np.cumsum(sizes).tolist()
    first = [e - z for e, z in zip(end, sizes.tolist())]
    mid = list(first)
    elems = elems_arr.tolist()
    loc = [0] * n
    for i, q in enumerate(elems):
        loc[q] = i
    blk = blk_arr.tolist()
    # All initial blocks but the largest: splitting by all but one block of a partition
    # implies splitting by the last one.
    largest = int(np.argmax(sizes))
    work = [(b, a) for b in range(len(sizes)) if b != largest for a in range(A)]
    while work:
        c, a = work.pop()
        pa, pp = preds[a], ptrs[a]
        x = []
        for i in range(first[c], end[c]):
            q = elems[i]
            x.extend(pa[pp[q]:pp[q + 1]])
        touched = []
        for q in x:  # no duplicates: each state has exactly one a-successor
            b = blk[q]
            m = mid[b]
            if m == first[b]:
                touched.append(b)
            i = loc[q]
            r = elems[m]
            elems[m], elems[i] = q, r
            loc[q], loc[r] = m, i
            mid[b] = m + 1
        for b in touched:
            m = mid[b]
            if m == end[b]:
                mid[b] = first[b]
                continue
            nb = len(first)
            if m - first[b] <= end[b] - m:
                first.append(first[b])
                end.append(m)
                first[b] = m
            else:
                first.append(m)
                end.append(end[b])
                end[b] = m
            mid[b] = first[b]
            mid.append(first[nb])
            for i in range(first[nb], end[nb]):
                blk[elems[i]] = nb
            # Whether or not (b, a') is queued, queueing the smaller part nb suffices.
            work.extend((nb, a2) for a2 in range(A))
    return np.asarray(blk, dtype=np.int64)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _names(name: str, value: Optional[Sequence], needed: int, exact: bool) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name}: expected a sequence of strings, got {type(value).__name__}")
    if (len(value) != needed) if exact else (len(value) < needed):
        want = f"exactly {needed}" if exact else f"at least {needed}"
        raise ValueError(f"{name}: expected {want} names, got {len(value)}")
    return [str(v) for v in value]


class MooreMachine:
    """A deterministic Moore machine: states 0..S-1, symbols 0..A-1, an output per state.

    transitions: int array [S, A]; ``transitions[s, a]`` is the state reached from s on symbol
    a, or -1 where undefined (a partial machine, e.g. one extracted from a network).
    outputs: int array [S], the output emitted in each state. initial: the start state.
    ``run`` and ``run_batch`` return the output after each symbol (not the initial output),
    matching per-step targets of a streaming task.
    """

    def __init__(self, transitions: ArrayLike, outputs: ArrayLike, initial: int = 0) -> None:
        t = _int_array("transitions", transitions, 2)
        o = _int_array("outputs", outputs, 1)
        S, A = t.shape
        if S < 1 or A < 1:
            raise ValueError(f"transitions: expected at least one state and one symbol, "
                             f"got shape {t.shape}")
        if t.min() < -1 or t.max() >= S:
            raise ValueError(f"transitions: entries must be states in [0, {S}) or -1 "
                             f"(undefined), got values in [{t.min()}, {t.max()}]")
        if o.shape[0] != S:
            raise ValueError(f"outputs: expected one output per state ({S}), got {o.shape[0]}")
        if o.min() < 0:
            raise ValueError(f"outputs: expected non-negative integers, got {o.min()}")
        if isinstance(initial, bool) or not isinstance(initial, (int, np.integer)) \
                or not 0 <= initial < S:
            raise ValueError(f"initial: expected a state in [0, {S}), got {initial!r}")
        self.transitions = t
        self.outputs = o
        self.initial = int(initial)
        self.transitions.flags.writeable = False
        self.outputs.flags.writeable = False

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_symbols(self) -> int:
        return self.transitions.shape[1]

    @property
    def num_outputs(self) -> int:
        """Size of the output alphabet: max(outputs) + 1."""
        return int(self.outputs.max()) + 1

    @property
    def is_complete(self) -> bool:
        """True when every transition is defined."""
        return bool((self.transitions >= 0).all())

    def run(self, sequence: ArrayLike) -> np.ndarray:
        """Outputs after each symbol of one sequence ([T] -> [T] int64)."""
        seq = _int_array("sequence", sequence, 1)
        return self.run_batch(seq[None, :])[0]

    def run_batch(self, ids: ArrayLike) -> Union[np.ndarray, Tensor]:
        """Outputs after each symbol of every sequence of ids [B, T] -> [B, T].

        Vectorised over the batch (one gather per step). Returns a LongTensor on the device of
        ids when ids is a tensor, else an int64 numpy array. Raises ValueError on a symbol
        outside the alphabet or an undefined transition.
        """
        device = ids.device if isinstance(ids, Tensor) else None
        x = _int_array("ids", ids, 2)
        states = self.states_batch(x)
        out = self.outputs[states]
        return torch.from_numpy(out).to(device) if device is not None else out

    def states_batch(self, ids: ArrayLike) -> np.ndarray:
        """States after each symbol of every sequence of ids [B, T] -> int64 [B, T]."""
        x = _int_array("ids", ids, 2)
        if x.size and (x.min() < 0 or x.max() >= self.num_symbols):
            raise ValueError(f"ids: symbols must lie in [0, {self.num_symbols}), got values in "
                             f"[{x.min()}, {x.max()}]")
        B, T = x.shape
        states = np.empty((B, T), dtype=np.int64)
        s = np.full(B, self.initial, dtype=np.int64)
        for t in range(T):
            s = self.transitions[s, x[:, t]]
            if (s < 0).any():
                b = int(np.argmax(s < 0))
                raise ValueError(f"ids: sequence {b} reaches an undefined transition at step {t} "
                                 f"(symbol {int(x[b, t])})")
            states[:, t] = s
        return states

    def to_dict(self) -> dict:
        """A JSON-serialisable description (inverse: ``MooreMachine.from_dict``)."""
        return {"transitions": self.transitions.tolist(), "outputs": self.outputs.tolist(),
                "initial": self.initial}

    @classmethod
    def from_dict(cls, d: dict) -> "MooreMachine":
        return cls(d["transitions"], d["outputs"], d.get("initial", 0))

    # ----- structure -----

    def complete(self) -> "MooreMachine":
        """A complete machine: every undefined transition goes to a new sink state.

        A complete machine is returned as an equal copy. Otherwise state S (the new last
        state) loops to itself on every symbol and emits ``num_outputs``, a value no real
        state emits, so "undefined" stays distinguishable from every real output. (Under
        ``counterexample``'s rule a partial machine is not equivalent to its completion.)
        """
        if self.is_complete:
            return MooreMachine(self.transitions.copy(), self.outputs.copy(), self.initial)
        S = self.num_states
        t = np.where(self.transitions < 0, S, self.transitions)
        t = np.concatenate([t, np.full((1, self.num_symbols), S, dtype=np.int64)])
        return MooreMachine(t, np.append(self.outputs, self.num_outputs), self.initial)

    def trim(self) -> "MooreMachine":
        """The machine restricted to the states reachable from the initial state.

        States are renumbered in BFS order from the initial state (which becomes 0), symbols
        visited in increasing order; undefined transitions stay -1.
        """
        order = self._bfs_order(self.transitions, self.initial)
        new = np.full(self.num_states, -1, dtype=np.int64)
        new[order] = np.arange(len(order))
        t = self.transitions[order]
        t = np.where(t < 0, -1, new[t])
        return MooreMachine(t, self.outputs[order], 0)

    @staticmethod
    def _bfs_order(trans: np.ndarray, start: int) -> list:
        seen = {start}
        order = [start]
        rows = trans.tolist()
        for s in order:  # order grows while iterating: a FIFO queue
            for nxt in rows[s]:
                if nxt >= 0 and nxt not in seen:
                    seen.add(nxt)
                    order.append(nxt)
        return order

    def minimize(self) -> "MooreMachine":
        """The canonical minimal machine equivalent to this one.

        Equivalence is on emitted outputs: the same output after every symbol of every input,
        an undefined transition counting as its own output. Hopcroft's partition refinement
        (O(A n log n)) runs on ``self.trim().complete()``, restricted to the states entered
        by a non-empty input. Then:

        (a) If the trimmed machine was partial, the sink added by ``complete`` is a class of
            its own (its output is fresh); that class is dropped again and transitions into
            it become -1, so the result stays partial and ``num_states`` counts real states.
            Undefined transitions only on unreachable states do not make the result partial.
        (b) The empty input emits nothing, so the initial state matters only through its
            successors (and, when re-entered, as the class it is re-entered in). It joins a
            class whose successor classes on every symbol equal its own; among several such
            classes (they then differ only in output) the one with the smallest output. This
            is applied whether or not the initial state is re-entered: a re-entered initial
            state can move to such a twin class, which keeps the machine equivalent. If no
            class fits, the initial state stays a state of its own and its output, never
            emitted, is set to 0.
        (c) States are numbered in BFS order from the initial state (symbols in increasing
            order), so ``a.minimize() == b.minimize()`` exactly when a and b are equivalent
            (a partial and a complete machine are never equivalent).
        """
        c = self.trim()
        partial = not c.is_complete
        c = c.complete()
        S = c.num_states
        trans, outs = c.transitions, c.outputs
        # After trim the initial state is 0 and every state is reachable; it is entered by a
        # non-empty input exactly when some transition points to it.
        reentered = bool((trans == 0).any())
        idx = np.arange(S) if reentered else np.arange(1, S)
        local = np.full(S, -1, dtype=np.int64)
        local[idx] = np.arange(len(idx))
        sub = local[trans[idx]]  # the states of idx are closed under transitions
        blk = _hopcroft(sub, outs[idx])
        k = int(blk.max()) + 1
        rep = np.empty(k, dtype=np.int64)
        rep[blk] = np.arange(len(idx))
        ctrans = blk[sub[rep]]
        couts = outs[idx][rep]
        sink = int(blk[local[S - 1]]) if partial else -1
        succ = blk[local[trans[0]]]
        fits = [K for K in range(k) if K != sink and np.array_equal(ctrans[K], succ)]
        if fits:
            start = min(fits, key=lambda K: int(couts[K]))
        else:
            ctrans = np.concatenate([ctrans, succ[None, :]])
            couts = np.append(couts, 0)
            start = k
        if sink >= 0:
            ctrans = np.where(ctrans == sink, -1, ctrans)
        order = self._bfs_order(ctrans, start)
        new = np.full(len(ctrans), -1, dtype=np.int64)
        new[order] = np.arange(len(order))
        t = ctrans[order]
        return MooreMachine(np.where(t < 0, -1, new[t]), couts[order], 0)

    # ----- comparison -----

    def _check_other(self, other: object) -> "MooreMachine":
        if not isinstance(other, MooreMachine):
            raise TypeError(f"other: expected a MooreMachine, got {type(other).__name__}")
        if other.num_symbols != self.num_symbols:
            raise ValueError(f"other: alphabet sizes differ ({self.num_symbols} vs "
                             f"{other.num_symbols} symbols)")
        return other

    def counterexample(self, other: "MooreMachine") -> Optional[np.ndarray]:
        """The shortest input after which the two machines emit different outputs, or None.

        An undefined transition on one side and a defined one on the other is a difference;
        undefined on both sides is not (nor is anything after it). Among shortest inputs the
        lexicographically smallest is returned (int64 array, length >= 1). BFS over pairs of
        states, one level at a time (vectorised per level).
        """
        other = self._check_other(other)
        A = self.num_symbols
        t1, o1, t2, o2 = self.transitions, self.outputs, other.transitions, other.outputs
        S2 = other.num_states
        start = self.initial * S2 + other.initial
        # A bitmap over all pairs is fastest; past _DENSE_PAIRS a set of the visited ones
        # keeps memory proportional to what the search actually reaches.
        dense = self.num_states * S2 <= _DENSE_PAIRS
        if dense:
            seen = np.zeros(self.num_states * S2, dtype=bool)
            seen[start] = True
        else:
            visited = {start}
        frontier = np.array([start], dtype=np.int64)
        levels = []  # per level: index of the parent in the previous frontier, symbol
        while frontier.size:
            n1, n2 = t1[frontier // S2], t2[frontier % S2]  # [F, A]
            e1 = np.where(n1 >= 0, o1[n1], -1)  # -1: undefined, never a real output
            e2 = np.where(n2 >= 0, o2[n2], -1)
            diff = (e1 != e2).ravel()
            if diff.any():
                j = int(np.argmax(diff))  # row-major = (frontier order, symbol): lex smallest
                word, f = [j % A], j // A
                for parent, sym in reversed(levels):
                    word.append(int(sym[f]))
                    f = int(parent[f])
                return np.array(word[::-1], dtype=np.int64)
            ids = (n1 * S2 + n2).ravel()
            cand = np.flatnonzero(((n1 >= 0) & (n2 >= 0)).ravel())
            # keep first occurrences only: that keeps the lexicographic order
            if dense:
                cand = cand[~seen[ids[cand]]]
                _, firsts = np.unique(ids[cand], return_index=True)
                cand = cand[np.sort(firsts)]
                seen[ids[cand]] = True
            else:
                keep = []
                for i, pid in zip(cand.tolist(), ids[cand].tolist()):
                    if pid not in visited:
                        visited.add(pid)
                        keep.append(i)
                cand = np.array(keep, dtype=np.int64)
            frontier = ids[cand]
            levels.append((cand // A, cand % A))
        return None

    def is_equivalent(self, other: "MooreMachine") -> bool:
        """True when both machines emit the same output after every symbol of every input."""
        return self.counterexample(other) is None

    # ----- export -----

    def to_dot(self, name: str = "automaton", *, symbol_names: Optional[Sequence] = None,
               output_names: Optional[Sequence] = None) -> str:
        """Graphviz DOT source of the state diagram.

        Nodes ``s<i>`` are labelled "<i> / <output>"; an invisible node ``__start`` points to
        the initial state; edges are labelled with their symbols, all symbols between the same
        pair of states merged into one comma-separated label; undefined transitions are left
        out. ``symbol_names`` (exactly num_symbols) and ``output_names`` (at least
        num_outputs, indexed by output value) replace the numbers in labels.
        """
        if not isinstance(name, str):
            raise TypeError(f"name: expected a string, got {type(name).__name__}")
        syms = _names("symbol_names", symbol_names, self.num_symbols, exact=True)
        outs = _names("output_names", output_names, self.num_outputs, exact=False)
        lines = [f"digraph {_dot_quote(name)} {{", "  rankdir=LR;",
                 "  node [shape=circle];",
                 '  __start [shape=point, style=invis, label=""];']
        for s, o in enumerate(self.outputs.tolist()):
            label = f"{s} / {outs[o] if outs else o}"
            lines.append(f"  s{s} [label={_dot_quote(label)}];")
        lines.append(f"  __start -> s{self.initial};")
        for s, row in enumerate(self.transitions.tolist()):
            grouped: dict = {}  # insertion order: targets by their smallest symbol
            for a, nxt in enumerate(row):
                if nxt >= 0:
                    grouped.setdefault(nxt, []).append(syms[a] if syms else str(a))
            for nxt, labels in grouped.items():
                lines.append(f"  s{s} -> s{nxt} [label={_dot_quote(', '.join(labels))}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_json(self, indent: Optional[int] = None) -> str:
        """JSON text with format, version, transitions, outputs, initial and the sizes."""
        return json.dumps({"format": _JSON_FORMAT, "version": _JSON_VERSION,
                           "transitions": self.transitions.tolist(),
                           "outputs": self.outputs.tolist(), "initial": self.initial,
                           "num_states": self.num_states, "num_symbols": self.num_symbols},
                          indent=indent)

    @classmethod
    def from_json(cls, text_or_path: Union[str, os.PathLike]) -> "MooreMachine":
        """Read ``to_json`` output from a JSON string or a file.

        A str whose stripped text starts with "{" is JSON; any other str, or an
        os.PathLike, is a path. Malformed content raises ValueError saying what is wrong.
        """
        arg = "text_or_path"
        if isinstance(text_or_path, str) and text_or_path.strip().startswith("{"):
            text, where = text_or_path, "JSON text"
        elif isinstance(text_or_path, (str, os.PathLike)):
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"{arg}: no file at {str(path)!r} (JSON text must "
                                        f"be an object starting with '{{')")
            text, where = path.read_text(encoding="utf-8"), str(path)
        else:
            raise TypeError(f"{arg}: expected JSON text or a path, got "
                            f"{type(text_or_path).__name__}")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{arg}: {where} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{arg}: {where}: expected a JSON object, got "
                             f"{type(d).__name__}")
        if d.get("format") != _JSON_FORMAT:
            raise ValueError(f"{arg}: {where}: \"format\" is {d.get('format')!r}, expected "
                             f"{_JSON_FORMAT!r}")
        if d.get("version") != _JSON_VERSION or isinstance(d.get("version"), bool):
            raise ValueError(f"{arg}: {where}: unsupported \"version\" {d.get('version')!r} "
                             f"(this reader knows {_JSON_VERSION})")
        missing = [k for k in ("transitions", "outputs", "initial", "num_states",
                               "num_symbols") if k not in d]
        if missing:
            raise ValueError(f"{arg}: {where}: missing key(s) {', '.join(missing)}")
        try:
            m = cls(d["transitions"], d["outputs"], d["initial"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{arg}: {where}: {e}") from None
        if (d["num_states"], d["num_symbols"]) != (m.num_states, m.num_symbols):
            raise ValueError(f"{arg}: {where}: num_states/num_symbols "
                             f"({d['num_states']!r}, {d['num_symbols']!r}) disagree with the "
                             f"transitions' shape ({m.num_states}, {m.num_symbols})")
        return m

    def save(self, path: PathLike) -> None:
        """Write ``to_json`` to ``path`` atomically (temp file in the same folder, os.replace)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        # One atomic writer for the package; imported here so that automata does not load
        # the training package.
        from grokfast.train.checkpoint import atomic_write_text
        atomic_write_text(path, self.to_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> "MooreMachine":
        """Read a machine written by ``save`` (or any ``to_json`` file)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        return cls.from_json(Path(path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MooreMachine):
            return NotImplemented
        return (self.initial == other.initial and np.array_equal(self.outputs, other.outputs)
                and np.array_equal(self.transitions, other.transitions))

    def __repr__(self) -> str:
        return (f"MooreMachine(num_states={self.num_states}, num_symbols={self.num_symbols}, "
                f"num_outputs={self.num_outputs}, initial={self.initial})")
