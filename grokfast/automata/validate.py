"""Checking an extracted automaton on long sequences: "the automaton is what the network
computes at length 10,000" as a number.

The network runs over random sequences; at every step its hidden state is snapped to the
nearest extracted state (cluster center) and compared with the state the extracted machine
reaches on its own from the start; the readout is compared with the target machine's output.
For Elman RNNs this is one fused kernel (grokfast.ops.rnn_track: CPU, CUDA, emulated CUDA) that
keeps only per-sequence counters, O(N * H) memory at any length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from grokfast.automata.extract import Extraction, _TORCH_RNNS, _elman_parts, _predict
from grokfast.automata.moore import MooreMachine
from grokfast.ops.track import random_symbols, rnn_track

MACHINES = ("minimized", "raw")


@dataclass
class Validation:
    """Per sequence (numpy arrays of length num_sequences): first_disagreement (first step,
    0-based, where the nearest extracted state differs from the machine's state; -1 if none),
    agreement (fraction of steps that agree), accuracy (fraction of steps whose readout argmax
    equals the target's output), max_distance (largest distance from a hidden state to its
    nearest extracted state)."""

    length: int
    seed: Optional[int]
    first_disagreement: np.ndarray
    agreement: np.ndarray
    accuracy: np.ndarray
    max_distance: np.ndarray

    @property
    def num_sequences(self) -> int:
        return int(self.first_disagreement.shape[0])

    @property
    def all_agree(self) -> bool:
        """True when the automaton and the network agree at every step of every sequence."""
        return bool((self.first_disagreement < 0).all())

    def summary(self) -> dict[str, Any]:
        n = self.num_sequences
        disagree = self.first_disagreement[self.first_disagreement >= 0]
        return {
            "length": self.length,
            "sequences": n,
            "agreeing_sequences": int(n - disagree.shape[0]),
            "first_disagreement": int(disagree.min()) if disagree.size else None,
            "agreement": float(self.agreement.mean()) if n else None,
            "accuracy": float(self.accuracy.mean()) if n else None,
            "min_accuracy": float(self.accuracy.min()) if n else None,
            "max_distance": float(self.max_distance.max()) if n else None,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (f"Validation(length={self.length}, sequences={s['sequences']}, "
                f"agreeing_sequences={s['agreeing_sequences']}, agreement={s['agreement']}, "
                f"accuracy={s['accuracy']})")


def state_map(raw: MooreMachine, minimized: MooreMachine) -> np.ndarray:
    """For every state of ``raw``, the equivalent state of ``minimized`` as a state entered by
    some input (found by walking both machines from their initial states); -1 for states not
    reachable from raw's initial state. The initial state, when no input re-enters it, maps to
    ``minimized.initial`` (its own output is never emitted, so it may have joined a twin)."""
    out = np.full(raw.num_states, -1, dtype=np.int64)
    start = (raw.initial, minimized.initial)
    seen, queue = {start}, [start]
    while queue:
        s, m = queue.pop()
        for a in range(raw.num_symbols):
            nxt = int(raw.transitions[s, a])
            if nxt < 0:
                continue
            nm = int(minimized.transitions[m, a]) if m >= 0 else -1
            if out[nxt] < 0:
                out[nxt] = nm
            if (nxt, nm) not in seen:
                seen.add((nxt, nm))
                queue.append((nxt, nm))
    if out[raw.initial] < 0:
        out[raw.initial] = minimized.initial
    return out


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def validate(model, extraction: Extraction, *, num_sequences: int = 100, length: int = 10_000,
             seed: int = 0, sequences=None, target: Optional[MooreMachine] = None,
             machine: str = "minimized", backend: Optional[str] = None, readout=None,
             h0=None) -> Validation:
    """Run ``model`` over ``num_sequences`` random sequences of ``length`` (drawn from
    ``seed``; or the given int ``sequences`` [N, T]) and compare it with ``extraction`` at
    every step.

    machine: "minimized" tracks the minimized machine, so landing in a redundant copy of the
    right state still agrees; "raw" demands the exact cluster the raw machine predicts.
    target: the machine the outputs are scored against (default: the extraction's target,
    else its own minimized machine). Elman models (grokfast ElmanRNN / SequenceRNN, float32)
    run the fused kernel on ``backend`` (default: their device); torch RNN/GRU/LSTM (with
    ``readout``) and callables take a step-by-step path in Python (a callable's hidden states
    for whole sequences are materialised: O(N * T * D) memory).
    """
    if not isinstance(extraction, Extraction):
        raise TypeError(f"extraction: expected an Extraction (from grokfast.automata.extract), "
                        f"got {type(extraction).__name__}")
    if machine not in MACHINES:
        raise ValueError(f"machine: expected one of {MACHINES}, got {machine!r}")
    target = target if target is not None else extraction.target
    if target is None:
        target = extraction.minimized
    if not isinstance(target, MooreMachine):
        raise TypeError(f"target: expected a MooreMachine, got {type(target).__name__}")
    A = extraction.tree.num_symbols
    if target.num_symbols != A:
        raise ValueError(f"target: has {target.num_symbols} symbols, the extraction {A}")
    target = target.complete()

    raw = extraction.machine
    if machine == "minimized":
        tracked = extraction.minimized
        center_state = state_map(raw, tracked)
    else:
        tracked = raw
        center_state = np.arange(raw.num_states, dtype=np.int64)

    if sequences is not None:
        ids = torch.as_tensor(sequences)
        if ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"sequences: expected int token ids [N, T], got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= A):
            raise ValueError(f"sequences: symbols must lie in [0, {A})")
        N, T = ids.shape
        seed_used = None
    else:
        N = _check_int("num_sequences", num_sequences, 0)
        T = _check_int("length", length, 0)
        ids = None
        seed_used = seed

    tables = dict(center_state=torch.from_numpy(center_state),
                  machine_next=torch.from_numpy(np.array(tracked.transitions)),
                  machine_initial=tracked.initial,
                  target_next=torch.from_numpy(np.array(target.transitions)),
                  target_out=torch.from_numpy(np.array(target.outputs)),
                  target_initial=target.initial)
    parts = _elman_parts(model)
    if parts is not None and parts[0].readout is not None \
            and parts[0].weight_hh.dtype == torch.float32:
        r, own_h0 = parts
        dev = r.weight_hh.device
        if h0 is None:
            h0 = own_h0
        tables = {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in tables.items()}
        res = rnn_track(r.weight_ih, r.weight_hh, r.bias, h0, r.readout.weight, r.readout.bias,
                        activation=r.activation, centers=extraction.centers.to(dev),
                        x=ids.to(dev) if ids is not None else None,
                        num_sequences=None if ids is not None else N,
                        length=None if ids is not None else T, seed=seed,
                        backend=backend or r.backend, **tables)
        first, agree, correct, dist = (t.cpu() for t in res)
    else:
        if ids is None:
            ids = random_symbols(N, T, A, seed)
        first, agree, correct, dist = _validate_stepwise(model, extraction, ids, tables,
                                                         readout=readout, h0=h0)
    denom = max(T, 1)
    return Validation(length=int(T), seed=seed_used, first_disagreement=first.numpy(),
                      agreement=agree.double().numpy() / denom,
                      accuracy=correct.double().numpy() / denom, max_distance=dist.numpy())


def _validate_stepwise(model, extraction: Extraction, ids: Tensor, tables: dict, *, readout,
                       h0):
    """Python path for models without the fused kernel: per-step states from ``_steps``."""
    centers = extraction.centers.cpu().double()
    cstate, mnext = tables["center_state"], tables["machine_next"]
    tnext, tout = tables["target_next"], tables["target_out"]
    N, T = ids.shape
    qm = torch.full((N,), int(tables["machine_initial"]), dtype=torch.int64)
    qt = torch.full((N,), int(tables["target_initial"]), dtype=torch.int64)
    first = torch.full((N,), -1, dtype=torch.int64)
    agree = torch.zeros(N, dtype=torch.int64)
    correct = torch.zeros(N, dtype=torch.int64)
    max_dist = torch.zeros(N, dtype=torch.float32)
    steps = _steps(model, ids, readout=readout, h0=h0, extraction_width=centers.shape[1])
    for t, (h, pred) in enumerate(steps):
        sym = ids[:, t]
        d2 = torch.cdist(h.double(), centers) ** 2
        best, nearest = d2.min(dim=1)
        qm = torch.where(qm >= 0, mnext[qm.clamp_min(0), sym], torch.full_like(qm, -1))
        qt = tnext[qt, sym]
        ok = (qm >= 0) & (cstate[nearest] == qm)
        agree += ok.long()
        first = torch.where((first < 0) & ~ok, torch.full_like(first, t), first)
        correct += (pred == tout[qt]).long()
        max_dist = torch.maximum(max_dist, best.sqrt().float())
    return first, agree, correct, max_dist


def _steps(model, ids: Tensor, *, readout, h0, extraction_width: int):
    """Yield (state [N, D] as clustered by extract, prediction [N]) for every step."""
    with torch.no_grad():
        parts = _elman_parts(model)
        if parts is not None:  # float64 or readout-less Elman models
            r, own_h0 = parts
            if r.readout is None:
                raise ValueError("model: an ElmanRNN needs a readout (output_size) to be "
                                 "validated")
            w = r.weight_hh
            h = (own_h0 if h0 is None else torch.as_tensor(h0)).to(w).reshape(1, -1) \
                if (own_h0 is not None or h0 is not None) else w.new_zeros(1, r.hidden_size)
            h = h.expand(ids.shape[0], -1)
            act = torch.tanh if r.activation == "tanh" else torch.relu
            x = ids.to(w.device)
            for t in range(ids.shape[1]):
                pre = h @ w.t() + r.weight_ih.t()[x[:, t]]
                h = act(pre + r.bias if r.bias is not None else pre)
                yield h.float().cpu(), r.readout(h).argmax(dim=1).cpu()
            return
        if isinstance(model, _TORCH_RNNS):
            yield from _torch_rnn_steps(model, ids, readout=readout, h0=h0,
                                        width=extraction_width)
            return
        if callable(model):
            hid, out = model(ids)
            for t in range(ids.shape[1]):
                yield hid[:, t].float().cpu(), _predict(torch.as_tensor(out[:, t]), None).cpu()
            return
    raise TypeError(f"model: unsupported model type {type(model).__name__}")


def _torch_rnn_steps(m: nn.RNNBase, ids: Tensor, *, readout, h0, width: int):
    if readout is None:
        raise ValueError("readout: a torch.nn.RNN/GRU/LSTM needs a readout")
    is_lstm = isinstance(m, nn.LSTM)
    p = next(m.parameters())
    N = ids.shape[0]
    Lyr, H = m.num_layers, m.hidden_size
    Hh = m.proj_size if getattr(m, "proj_size", 0) else H
    if h0 is None:
        z = lambda w: torch.zeros(Lyr, N, w, dtype=p.dtype, device=p.device)  # noqa: E731
        state = (z(Hh), z(H)) if is_lstm else z(H)
    elif is_lstm:
        state = tuple(t.detach().to(p).reshape(Lyr, 1, -1).expand(Lyr, N, -1).contiguous()
                      for t in h0)
    else:
        state = h0.detach().to(p).reshape(Lyr, 1, H).expand(Lyr, N, H).contiguous()
    with_c = is_lstm and width == Lyr * (Hh + H)  # extract(lstm_state="hc") clustered h and c
    x_all = torch.nn.functional.one_hot(ids.to(p.device), m.input_size).to(p.dtype)
    for t in range(ids.shape[1]):
        x = x_all[:, t:t + 1] if m.batch_first else x_all[:, t][None]
        _, state = m(x, state)
        if is_lstm:
            h, c = state
            parts = [h, c] if with_c else [h]
            flat = torch.cat([t_.permute(1, 0, 2).reshape(N, -1) for t_ in parts], 1)
            top = h[-1]
        else:
            flat = state.permute(1, 0, 2).reshape(N, -1)
            top = state[-1]
        yield flat.float().cpu(), _predict(readout(top), None).cpu()


__all__ = ["MACHINES", "Validation", "state_map", "validate"]
