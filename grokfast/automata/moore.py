"""Moore machines over a finite alphabet: the target algorithms of the sequence tasks."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[np.ndarray, Tensor, list]


def _int_array(name: str, value: Any, ndim: int) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimension(s), got shape {arr.shape}")
    return arr.astype(np.int64)


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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MooreMachine):
            return NotImplemented
        return (self.initial == other.initial and np.array_equal(self.outputs, other.outputs)
                and np.array_equal(self.transitions, other.transitions))

    def __repr__(self) -> str:
        return (f"MooreMachine(num_states={self.num_states}, num_symbols={self.num_symbols}, "
                f"num_outputs={self.num_outputs}, initial={self.initial})")
