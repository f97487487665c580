"""Elman RNN classifiers for streaming tasks, initialised as in the streaming-parity paper."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from grokfast.nn import ElmanRNN
from grokfast.ops import rnn


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


class SequenceRNN(nn.Module):
    """An ElmanRNN over symbol ids with a linear readout at every step.

    Defaults follow the public code of van Rossem & Saxe (2025): ReLU, 100 hidden units,
    weight_ih, weight_hh and the readout weight xavier-normal with gain ``init_scale`` (0.1),
    zero biases, and the initial hidden state a vector of ones: a fixed buffer, or a parameter
    when ``learn_h0``. Inputs are one-hot over ``num_symbols``; the model reads them as int64
    ids [B, T] (weight_ih used as an embedding table, no GEMM) or as float one-hot [B, T, A],
    with identical results.

    ``generator`` makes the initialisation independent of the global RNG; ``backend`` picks
    the kernel (default: from the device; "cuda-emulated" runs the CUDA kernel on the CPU).
    """

    def __init__(self, num_symbols: int = 2, num_outputs: int = 2, hidden_size: int = 100, *,
                 activation: str = "relu", init_scale: float = 0.1, learn_h0: bool = False,
                 generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        _check_positive("num_symbols", num_symbols)
        _check_positive("num_outputs", num_outputs)
        _check_positive("hidden_size", hidden_size)
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) \
                or not init_scale > 0:
            raise ValueError(f"init_scale: expected a positive number, got {init_scale!r}")
        self.init_scale = float(init_scale)
        self.learn_h0 = bool(learn_h0)
        self.rnn = ElmanRNN(num_symbols, hidden_size, num_outputs, activation=activation,
                            tokens=True, backend=backend, device=device, dtype=dtype)
        h0 = torch.ones(hidden_size, device=device, dtype=self.rnn.weight_hh.dtype)
        if self.learn_h0:
            self.h0 = nn.Parameter(h0)
        else:
            self.register_buffer("h0", h0)
        self.reset_parameters(generator)

    @property
    def num_symbols(self) -> int:
        return self.rnn.input_size

    @property
    def num_outputs(self) -> int:
        return self.rnn.output_size

    @property
    def hidden_size(self) -> int:
        return self.rnn.hidden_size

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Xavier-normal (gain init_scale) weights, zero biases, h0 = ones."""
        r = self.rnn
        with torch.no_grad():
            for w in (r.weight_ih, r.weight_hh, r.readout.weight):
                # Drawn on the CPU so a seed gives the same weights on every device.
                cpu = torch.empty(w.shape, dtype=w.dtype)
                nn.init.xavier_normal_(cpu, gain=self.init_scale, generator=generator)
                w.copy_(cpu)
            r.bias.zero_()
            r.readout.bias.zero_()
            self.h0.fill_(1.0)

    def forward(self, x: Tensor, *, outputs: str = "all") -> Tensor:
        """x: int64 ids [B, T] or float one-hot [B, T, num_symbols]. Returns the readout
        [B, T, num_outputs] (outputs="all") or [B, num_outputs] (outputs="last"). Without
        autograd no B x T x H tensor is allocated, so T = 10,000 costs O(B * H) memory."""
        if x.is_floating_point():
            r = self.rnn
            return rnn(x, r.weight_ih, r.weight_hh, r.bias, self.h0, r.readout.weight,
                       r.readout.bias, activation=r.activation, outputs=outputs,
                       hidden="none", backend=r.backend).y
        return self.rnn(x, self.h0, outputs=outputs)[0]

    def param_groups(self, lr: float, bias_lr_scale: float = 2.0) -> list[dict]:
        """Optimizer parameter groups: the recurrent bias at ``lr * bias_lr_scale``, the rest
        at ``lr``. torch.nn.RNN has two recurrent biases (b_ih, b_hh) that get the same gradient,
        so under SGD their sum moves at twice the learning rate; ElmanRNN has one, and scale 2
        reproduces nn.RNN's SGD trajectory exactly (including with momentum)."""
        bias = self.rnn.bias
        rest = [p for p in self.parameters() if p is not bias]
        return [{"params": rest, "lr": lr}, {"params": [bias], "lr": lr * bias_lr_scale}]

    def extra_repr(self) -> str:
        return f"init_scale={self.init_scale}, learn_h0={self.learn_h0}"
