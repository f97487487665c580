"""Pure-PyTorch references of every kernel: the specification the tests compare against,
and a fallback that runs anywhere torch does."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def rnn(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor] = None,
        h0: Optional[Tensor] = None, w_out: Optional[Tensor] = None,
        b_out: Optional[Tensor] = None, *, activation: str = "tanh") -> tuple[Tensor, Optional[Tensor]]:
    """Elman recurrence step by step, for a single model (no model dimension).

    x: int64 token ids [B, T] (W_ih read as an embedding table) or values [B, T, I].
    Returns (hidden states [B, T, H], readouts [B, T, O] or None).
    """
    act = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    B, T = x.shape[0], x.shape[1]
    H = w_hh.shape[0]
    h = torch.zeros(B, H, dtype=w_hh.dtype, device=w_hh.device) if h0 is None else h0.expand(B, H)
    if x.dtype in (torch.int64, torch.int32):
        inputs = w_ih.t()[x.long()]  # [B, T, H]
    else:
        inputs = x @ w_ih.t()
    if bias is not None:
        inputs = inputs + bias
    states = []
    for t in range(T):
        h = act(inputs[:, t] + h @ w_hh.t())
        states.append(h)
    hs = torch.stack(states, 1) if states else w_hh.new_zeros(B, 0, H)
    y = None
    if w_out is not None:
        y = hs @ w_out.t()
        if b_out is not None:
            y = y + b_out
    return hs, y
