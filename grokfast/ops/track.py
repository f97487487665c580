"""The Elman forward with an automaton tracked alongside: at every step the hidden state is
snapped to its nearest center and the machine that center belongs to is compared with a machine
stepped on its own; the readout is compared with a target machine. Only per-sequence results
are kept, so length 10,000 costs O(B * H) memory (csrc/rnn, TrackParams)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from grokfast._ext import ext
from grokfast.ops._validate import as_tensor, check_choice, check_same_device, check_shape, \
    resolve_backend
from grokfast.ops.rnn import ACTIVATIONS, MAX_HIDDEN_GPU, _ACTIVATION_CODE, _ptr, _stream

MAX_CENTERS_GPU = 2048
_MASK64 = (1 << 64) - 1


class TrackResult(NamedTuple):
    """Per sequence: first_disagreement int64 [B] (first step whose nearest center's state
    differs from the tracked machine's state, -1 if none); agree_steps int64 [B];
    correct_steps int64 [B] (readout argmax equal to the target's output); max_distance
    float32 [B] (largest distance from a hidden state to its nearest center)."""

    first_disagreement: Tensor
    agree_steps: Tensor
    correct_steps: Tensor
    max_distance: Tensor


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def random_symbols(num_sequences: int, length: int, num_symbols: int, seed: int) -> Tensor:
    """The sequences the kernel draws for ``seed`` (int64 [num_sequences, length]): symbol
    (b, t) is a hash of (seed, b, t), identical on every backend and at any length."""
    for name, v, lo in (("num_sequences", num_sequences, 0), ("length", length, 0),
                        ("num_symbols", num_symbols, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    seed = _seed(seed)
    with np.errstate(over="ignore"):
        b = np.arange(num_sequences, dtype=np.uint64)[:, None]
        t = np.arange(length, dtype=np.uint64)[None, :]
        key = (b << np.uint64(32)) ^ t
        z = _mix64(key ^ _mix64(np.array(seed, dtype=np.uint64)))
    return torch.from_numpy(((z >> np.uint64(11)) % np.uint64(num_symbols)).astype(np.int64))


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0 \
            or seed > _MASK64:
        raise ValueError(f"seed: expected an integer in [0, 2^64), got {seed!r}")
    return int(seed)


def _int_table(name: str, value, shape_note: str, device) -> Tensor:
    t = as_tensor(name, value)
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name}: expected an integer tensor ({shape_note}), got {t.dtype}")
    return t.to(device=device, dtype=torch.int64).contiguous()


def rnn_track(w_ih, w_hh, bias, h0, w_out, b_out, *, activation: str, centers, center_state,
              machine_next, machine_initial: int, target_next, target_out, target_initial: int,
              x=None, num_sequences: Optional[int] = None, length: Optional[int] = None,
              seed: int = 0, backend: Optional[str] = None) -> TrackResult:
    """Run one Elman RNN (token input, readout required) over token ids ``x`` [B, T] or over
    ``num_sequences`` sequences of ``length`` drawn in the kernel from ``seed`` (see
    ``random_symbols``), tracking machines alongside (see the module docstring).

    centers [S, H] float32; center_state int [S] (state of the tracked machine for each
    center, -1 none); machine_next int [K, I] (-1 undefined) with machine_initial; target_next
    int [Q, I] (complete) and target_out int [Q] with target_initial. I = columns of w_ih.
    """
    check_choice("activation", activation, ACTIVATIONS)
    w_hh = as_tensor("w_hh", w_hh).detach()
    if w_hh.dtype != torch.float32:
        raise TypeError(f"w_hh: expected dtype float32, got {w_hh.dtype}")
    if w_hh.dim() != 2 or w_hh.shape[0] != w_hh.shape[1]:
        raise ValueError(f"w_hh: expected a square matrix [H, H], got {tuple(w_hh.shape)}")
    H = w_hh.shape[0]
    device = w_hh.device
    backend = resolve_backend(backend, device)
    tensors = {n: as_tensor(n, v, optional=True) for n, v in
               (("w_ih", w_ih), ("bias", bias), ("h0", h0), ("w_out", w_out), ("b_out", b_out),
                ("centers", centers))}
    tensors = {n: (t.detach() if t is not None else None) for n, t in tensors.items()}
    for n in ("w_ih", "w_out", "centers"):
        if tensors[n] is None:
            raise TypeError(f"{n}: required")
    check_same_device(tensors, device)
    for n, t in tensors.items():
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"{n}: expected dtype float32, got {t.dtype}")
    w_ih_, w_out_, cen = tensors["w_ih"], tensors["w_out"], tensors["centers"]
    if w_ih_.dim() != 2 or w_ih_.shape[0] != H:
        raise ValueError(f"w_ih: expected shape ({H}, I), got {tuple(w_ih_.shape)}")
    I = w_ih_.shape[1]
    if w_out_.dim() != 2 or w_out_.shape[1] != H or w_out_.shape[0] < 1:
        raise ValueError(f"w_out: expected shape (O, {H}) with O >= 1, got {tuple(w_out_.shape)}")
    O = w_out_.shape[0]
    if tensors["bias"] is not None:
        check_shape("bias", tensors["bias"], (H,), "one bias per hidden unit")
    if tensors["b_out"] is not None:
        check_shape("b_out", tensors["b_out"], (O,), "one bias per readout unit")
    if cen.dim() != 2 or cen.shape[1] != H or cen.shape[0] < 1:
        raise ValueError(f"centers: expected shape (S, {H}) with S >= 1, got {tuple(cen.shape)}")
    S = cen.shape[0]
    if backend != "cpu":
        if H > MAX_HIDDEN_GPU:
            raise ValueError(f"w_hh: hidden size {H} is unsupported on backend {backend!r} "
                             f"(at most {MAX_HIDDEN_GPU}); use backend='cpu'")
        if S > MAX_CENTERS_GPU:
            raise ValueError(f"centers: at most {MAX_CENTERS_GPU} centers on backend "
                             f"{backend!r}, got {S}; use backend='cpu'")

    cstate = _int_table("center_state", center_state, "[S]", device)
    check_shape("center_state", cstate, (S,), "one tracked state per center")
    mnext = _int_table("machine_next", machine_next, "[K, I]", device)
    if mnext.dim() != 2 or mnext.shape[1] != I or mnext.shape[0] < 1:
        raise ValueError(f"machine_next: expected shape (K, {I}), got {tuple(mnext.shape)}")
    K = mnext.shape[0]
    tnext = _int_table("target_next", target_next, "[Q, I]", device)
    if tnext.dim() != 2 or tnext.shape[1] != I or tnext.shape[0] < 1:
        raise ValueError(f"target_next: expected shape (Q, {I}), got {tuple(tnext.shape)}")
    Q = tnext.shape[0]
    tout = _int_table("target_out", target_out, "[Q]", device)
    check_shape("target_out", tout, (Q,), "one output per target state")
    if ((cstate < -1) | (cstate >= K)).any():
        raise ValueError(f"center_state: entries must be states in [0, {K}) or -1")
    if ((mnext < -1) | (mnext >= K)).any():
        raise ValueError(f"machine_next: entries must be states in [0, {K}) or -1")
    if ((tnext < 0) | (tnext >= Q)).any():
        raise ValueError(f"target_next: entries must be states in [0, {Q}) (a complete machine)")
    for name, v, n in (("machine_initial", machine_initial, K), ("target_initial", target_initial, Q)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
            raise ValueError(f"{name}: expected a state in [0, {n}), got {v!r}")

    if x is not None:
        if num_sequences is not None or length is not None:
            raise ValueError("x: give either token ids x or num_sequences and length, not both")
        ids = as_tensor("x", x)
        check_same_device({"x": ids}, device)
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or ids.dim() != 2:
            raise ValueError(f"x: expected integer token ids [B, T], got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= I):
            raise ValueError(f"x: token ids must lie in [0, {I}) (the columns of w_ih)")
        B, T = ids.shape
    else:
        for name, v in (("num_sequences", num_sequences), ("length", length)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
        if length >= 2 ** 30 or num_sequences >= 2 ** 30:
            raise ValueError("length and num_sequences must be below 2^30")
        ids, B, T = None, int(num_sequences), int(length)
    h0_ = tensors["h0"]
    if h0_ is not None:
        try:
            h0_ = torch.broadcast_to(h0_, (B, H)).contiguous()
        except RuntimeError:
            raise ValueError(f"h0: expected a shape broadcastable to {(B, H)}, "
                             f"got {tuple(h0_.shape)}") from None

    longs = dict(device=device, dtype=torch.int64)
    res = TrackResult(torch.full((B,), -1, **longs), torch.zeros(B, **longs),
                      torch.zeros(B, **longs), torch.zeros(B, device=device))
    if B == 0 or T == 0:
        return res
    c = ext()
    p = c.RnnForwardParams()
    p.M, p.B, p.T, p.I, p.H, p.O = 1, B, T, I, H, O
    p.tokens = True
    p.activation = c.Activation(_ACTIVATION_CODE[activation])
    p.dtype = c.DType.Float32
    if ids is not None:
        p.x = _ptr(ids)
        p.x_stride_m, p.x_stride_b, p.x_stride_t = 0, ids.stride(0), ids.stride(1)
    else:
        p.generate_tokens = True
        p.seed = _seed(seed)
    keep = tuple(t.contiguous() if t is not None else None for t in
                 (w_ih_, w_hh, tensors["bias"], h0_, w_out_, tensors["b_out"], cen))
    p.w_ih, p.w_hh, p.bias, p.h0, p.w_out, p.b_out = (_ptr(t) for t in keep[:6])
    p.w_ih_stride_h, p.w_ih_stride_i = I, 1
    p.y_mode = c.OutputMode.None_
    p.stream = _stream(w_hh)
    tp = c.RnnTrackParams()
    tp.S, tp.centers, tp.center_state = S, _ptr(keep[6]), _ptr(cstate)
    tp.K, tp.machine_next, tp.machine_initial = K, _ptr(mnext), int(machine_initial)
    tp.Q, tp.target_next, tp.target_out = Q, _ptr(tnext), _ptr(tout)
    tp.target_initial = int(target_initial)
    tp.first_disagreement, tp.agree_steps = _ptr(res.first_disagreement), _ptr(res.agree_steps)
    tp.correct_steps, tp.max_distance = _ptr(res.correct_steps), _ptr(res.max_distance)
    c.rnn_track(p, tp, backend)
    return res


__all__ = ["TrackResult", "random_symbols", "rnn_track"]
