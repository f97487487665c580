"""Sequence tasks defined by a target Moore machine: every sequence up to a length, per-step
targets, per-length random training subsets and random long evaluation sequences."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from grokfast.automata import MooreMachine, count_mod, parity, random_automaton

MAX_SEQUENCES = 1 << 24  # all sequences up to max_length are held in memory
_SUBSET_STREAM, _EVAL_STREAM = 1, 2  # independent random streams derived from one seed


class LengthData(NamedTuple):
    """Sequences of one length: inputs int64 ids [N, T] and per-step targets int64 [N, T]
    (targets[:, t] = the machine's output after reading inputs[:, :t+1])."""

    inputs: Tensor
    targets: Tensor

    def to(self, device) -> "LengthData":
        return LengthData(self.inputs.to(device), self.targets.to(device))

    def __len__(self) -> int:  # number of sequences (not the tuple's two fields)
        return self.inputs.shape[0]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value) -> float:
    """A fraction in (0, 1]; raises ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}: expected a fraction in (0, 1], got {value!r}")
    return float(value)


def all_sequences(num_symbols: int, length: int) -> Tensor:
    """Every sequence of the given length over symbols 0..num_symbols-1, in lexicographic
    order: int64 [num_symbols ** length, length]."""
    A = _check_int("num_symbols", num_symbols, 1)
    T = _check_int("length", length, 1)
    if A ** T > MAX_SEQUENCES:
        raise ValueError(f"length: {A}^{T} sequences exceed the limit of {MAX_SEQUENCES}")
    idx = np.arange(A ** T, dtype=np.int64)[:, None]
    place = A ** np.arange(T - 1, -1, -1, dtype=np.int64)[None, :]
    return torch.from_numpy((idx // place) % A)


class AutomatonTask:
    """A streaming task: read a sequence over the machine's alphabet and output, at every step,
    the output of ``machine`` after the symbols read so far.

    The full data set holds every sequence of lengths 1..max_length (A^1 + ... + A^L of them;
    2046 for parity with L = 10). The training set keeps, independently for each length, a
    uniformly random subset whose size is drawn from Binomial(A^len, train_fraction), raised to
    at least one sequence so that every length stays represented (train_fraction = 1 keeps
    everything and draws nothing). The subset depends only on ``seed``.

    machine: a complete MooreMachine (every transition defined).
    """

    def __init__(self, machine: MooreMachine, max_length: int = 10, *,
                 train_fraction: float = 1.0, seed: int = 0) -> None:
        if not isinstance(machine, MooreMachine):
            raise TypeError(f"machine: expected a MooreMachine, got {type(machine).__name__}")
        if not machine.is_complete:
            raise ValueError("machine: every transition must be defined (transitions has -1 "
                             "entries), or some sequences would have no target")
        self.machine = machine
        self.max_length = _check_int("max_length", max_length, 1)
        self.train_fraction = check_fraction("train_fraction", train_fraction)
        self.seed = _check_int("seed", seed, 0)
        A = machine.num_symbols
        total = sum(A ** n for n in range(1, self.max_length + 1))
        if total > MAX_SEQUENCES:
            raise ValueError(f"max_length: {self.max_length} gives {total} sequences over "
                             f"{A} symbols, more than the limit of {MAX_SEQUENCES}")
        self._all = {n: self._labelled(all_sequences(A, n)) for n in self.lengths}
        self._train = self._draw_subsets()

    @property
    def num_symbols(self) -> int:
        return self.machine.num_symbols

    @property
    def num_outputs(self) -> int:
        return self.machine.num_outputs

    @property
    def lengths(self) -> list[int]:
        """The training lengths 1..max_length, ascending (the order an epoch visits them)."""
        return list(range(1, self.max_length + 1))

    @property
    def num_sequences(self) -> int:
        """Number of sequences in the full data set."""
        return sum(len(d) for d in self._all.values())

    @property
    def num_train(self) -> int:
        """Number of sequences in the training subset."""
        return sum(len(d) for d in self._train.values())

    def all_data(self, length: int) -> LengthData:
        """Every sequence of ``length`` (lexicographic order) with its per-step targets."""
        return self._all[self._check_length(length)]

    def train_data(self, length: int) -> LengthData:
        """The training subset at ``length`` (lexicographic order)."""
        return self._train[self._check_length(length)]

    @property
    def train_set(self) -> dict[int, LengthData]:
        """Training subsets by length, ascending."""
        return dict(self._train)

    def eval_data(self, lengths: Iterable[int], count: int, seed: int,
                  device: Optional[torch.device] = None) -> dict[int, LengthData]:
        """``count`` uniformly random sequences at each of ``lengths``, with targets.

        Sequences at one length depend only on (seed, length), not on the other lengths asked.
        """
        count = _check_int("count", count, 1)
        seed = _check_int("seed", seed, 0)
        out = {}
        for n in lengths:
            n = _check_int("lengths", n, 1)
            rng = np.random.default_rng([seed, _EVAL_STREAM, n])
            ids = torch.from_numpy(rng.integers(0, self.num_symbols, size=(count, n)))
            out[n] = self._labelled(ids).to(device) if device is not None else self._labelled(ids)
        return out

    def _labelled(self, ids: Tensor) -> LengthData:
        return LengthData(ids, self.machine.run_batch(ids))

    def _check_length(self, length: int) -> int:
        if length not in self._all:
            raise ValueError(f"length: expected a training length in 1..{self.max_length}, "
                             f"got {length!r}")
        return length

    def _draw_subsets(self) -> dict[int, LengthData]:
        if self.train_fraction == 1.0:
            return dict(self._all)
        rng = np.random.default_rng([self.seed, _SUBSET_STREAM])
        subsets = {}
        for n, data in self._all.items():
            size = len(data)
            keep = max(1, int(rng.binomial(size, self.train_fraction)))
            rows = np.sort(rng.choice(size, size=keep, replace=False))
            rows_t = torch.from_numpy(rows)
            subsets[n] = LengthData(data.inputs[rows_t], data.targets[rows_t])
        return subsets

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(machine={self.machine!r}, max_length={self.max_length}, "
                f"train_fraction={self.train_fraction}, seed={self.seed}, "
                f"num_train={self.num_train}/{self.num_sequences})")


class StreamingParity(AutomatonTask):
    """Streaming parity: output the XOR of all bits read so far, at every step."""

    def __init__(self, max_length: int = 10, *, train_fraction: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(parity(), max_length, train_fraction=train_fraction, seed=seed)


class CountMod(AutomatonTask):
    """Count the 1s read so far, mod k, at every step (inputs over {0, 1}, k outputs)."""

    def __init__(self, k: int, max_length: int = 10, *, train_fraction: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(count_mod(k), max_length, train_fraction=train_fraction, seed=seed)
        self.k = int(k)


class RandomAutomatonTask(AutomatonTask):
    """The per-step outputs of ``random_automaton(n_states, n_symbols, automaton_seed)``.

    ``automaton_seed`` picks the machine; ``seed`` picks the training subset."""

    def __init__(self, n_states: int, n_symbols: int = 2, automaton_seed: int = 0,
                 max_length: int = 10, *, n_outputs: int = 2, train_fraction: float = 1.0,
                 seed: int = 0) -> None:
        machine = random_automaton(n_states, n_symbols, automaton_seed, n_outputs=n_outputs)
        super().__init__(machine, max_length, train_fraction=train_fraction, seed=seed)
