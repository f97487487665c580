"""Target Moore machines for the sequence tasks: parity, counting mod k, random automata."""

from __future__ import annotations

import numpy as np

from grokfast.automata.moore import MooreMachine


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def parity() -> MooreMachine:
    """Streaming parity over {0, 1}: output 1 when an odd number of 1s has been read."""
    return MooreMachine([[0, 1], [1, 0]], [0, 1])


def count_mod(k: int) -> MooreMachine:
    """Counting 1s mod k over {0, 1}: state = output = (number of 1s so far) mod k.
    count_mod(2) is parity."""
    k = _check_int("k", k, 2)
    s = np.arange(k)
    return MooreMachine(np.stack([s, (s + 1) % k], axis=1), s)


def random_automaton(n_states: int, n_symbols: int = 2, seed: int = 0, *,
                     n_outputs: int = 2) -> MooreMachine:
    """A random complete Moore machine in which every state is reachable from state 0.

    Deterministic for a seed. Construction: states 1..n-1 are attached in order, each to a
    uniformly chosen unused (state, symbol) slot of an earlier state (a random spanning tree
    from the initial state); the remaining slots point to uniform random states. Outputs are
    uniform in [0, n_outputs), with every output value used when n_states >= n_outputs. The
    machine need not be minimal.
    """
    n_states = _check_int("n_states", n_states, 1)
    n_symbols = _check_int("n_symbols", n_symbols, 1)
    n_outputs = _check_int("n_outputs", n_outputs, 1)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    trans = np.full((n_states, n_symbols), -1, dtype=np.int64)
    for s in range(1, n_states):
        free = np.argwhere(trans[:s] < 0)  # earlier states have s*A slots, s-1 used: never empty
        src, sym = free[rng.integers(len(free))]
        trans[src, sym] = s
    undefined = trans < 0
    trans[undefined] = rng.integers(0, n_states, size=int(undefined.sum()))
    outputs = rng.integers(0, n_outputs, size=n_states)
    if n_states >= n_outputs:
        outputs[rng.permutation(n_states)[:n_outputs]] = np.arange(n_outputs)
    return MooreMachine(trans, outputs)
