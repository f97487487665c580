"""ElmanRNN: a single-layer, batch-first Elman RNN with an optional fused linear readout."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from grokfast.ops.rnn import ACTIVATIONS, _run


_MISSING = object()


def _param(module: nn.Module, name: str):
    """module.<name>, read from _parameters when registered there: nn.Module.__getattr__ costs
    about 0.5 us a call. Anything else (parametrize, weight_norm, a plain attribute such as the
    None of bias=False) goes through getattr as usual."""
    t = module._parameters.get(name, _MISSING)
    return getattr(module, name) if t is _MISSING else t


class ElmanRNN(nn.Module):
    """h_t = act(W_ih x_t + W_hh h_{t-1} + b), y_t = W_out h_t + b_out (when output_size is set).

    tokens=True reads x as int64 ids [B, T] and weight_ih [H, input_size] as an embedding
    table (the one-hot input of the papers, without the GEMM). Calling the module returns
    (y, h_n) like ``readout(torch.nn.RNN(...)(x, h0)[0])`` and ``rnn(x, h0)[1]``: y is the
    readout at every step (the hidden sequence without a readout) and h_n is [1, B, H].
    Initialisation matches torch.nn.RNN and nn.Linear.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: Optional[int] = None, *,
                 activation: str = "tanh", tokens: bool = False, bias: bool = True,
                 readout_bias: bool = True, backend: Optional[str] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if output_size is not None and (not isinstance(output_size, int) or output_size < 1):
            raise ValueError(f"output_size: expected a positive int or None, got {output_size!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        kw = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.activation, self.tokens, self.backend = activation, tokens, backend
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **kw))
        self.bias = nn.Parameter(torch.empty(hidden_size, **kw)) if bias else None
        self.readout: Optional[nn.Linear] = None
        if output_size is not None:
            self.readout = nn.Linear(hidden_size, output_size, bias=readout_bias, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)
        if self.readout is not None:
            self.readout.reset_parameters()

    @classmethod
    def from_torch(cls, rnn_module: nn.RNN, readout: Optional[nn.Linear] = None) -> "ElmanRNN":
        """An equivalent module from a single-layer, unidirectional ``nn.RNN(batch_first=True)``
        and an optional ``nn.Linear`` readout (weights copied; b_ih + b_hh become one bias)."""
        if not isinstance(rnn_module, nn.RNN):
            raise TypeError(f"rnn: expected torch.nn.RNN, got {type(rnn_module).__name__}")
        if rnn_module.num_layers != 1 or rnn_module.bidirectional or not rnn_module.batch_first:
            raise ValueError("rnn: only single-layer, unidirectional nn.RNN(batch_first=True) "
                             "converts")
        if getattr(rnn_module, "proj_size", 0):
            raise ValueError("rnn: proj_size is not supported")
        if readout is not None and not isinstance(readout, nn.Linear):
            raise TypeError(f"readout: expected torch.nn.Linear or None, got {type(readout).__name__}")
        if readout is not None and readout.in_features != rnn_module.hidden_size:
            raise ValueError(f"readout: in_features {readout.in_features} must equal the RNN's "
                             f"hidden_size {rnn_module.hidden_size}")
        activation = "tanh" if rnn_module.nonlinearity == "tanh" else "relu"
        w_hh = rnn_module.weight_hh_l0
        module = cls(rnn_module.input_size, rnn_module.hidden_size,
                     readout.out_features if readout is not None else None,
                     activation=activation, bias=rnn_module.bias,
                     readout_bias=readout is not None and readout.bias is not None,
                     device=w_hh.device, dtype=w_hh.dtype)
        with torch.no_grad():
            module.weight_ih.copy_(rnn_module.weight_ih_l0)
            module.weight_hh.copy_(w_hh)
            if rnn_module.bias:
                module.bias.copy_(rnn_module.bias_ih_l0 + rnn_module.bias_hh_l0)
            if readout is not None:
                module.readout.weight.copy_(readout.weight)
                if readout.bias is not None:
                    module.readout.bias.copy_(readout.bias)
        return module

    def forward(self, x, h0: Optional[Tensor] = None, *, outputs: str = "all") -> tuple[Tensor, Tensor]:
        """x: [B, T, input_size] (or int64 [B, T] with tokens=True); h0: [1, B, H], [B, H] or
        [H]. Returns (y, h_n): y [B, T, O] ([B, O] with outputs="last"), or the hidden states
        without a readout; h_n [1, B, H]."""
        if h0 is not None and h0.dim() == 3:
            if h0.shape[0] != 1:
                raise ValueError(f"h0: expected [1, B, H] for a single-layer RNN, got {tuple(h0.shape)}")
            h0 = h0[0]
        if self.tokens and isinstance(x, Tensor) and x.is_floating_point():
            raise TypeError("x: this ElmanRNN reads token ids (tokens=True); got a float tensor")
        if not self.tokens and isinstance(x, Tensor) and not x.is_floating_point():
            raise TypeError("x: this ElmanRNN reads float inputs [B, T, I] (tokens=False); got "
                            f"{x.dtype} (use tokens=True for ids)")
        r = self._modules.get("readout", _MISSING)  # as _param does for parameters
        if r is _MISSING:
            r = self.readout
        # With a readout, h_n comes as [1, B, H] from the kernel (last_layer_dim).
        out = _run(x, _param(self, "weight_ih"), _param(self, "weight_hh"), _param(self, "bias"),
                   h0, _param(r, "weight") if r is not None else None,
                   _param(r, "bias") if r is not None else None, self.activation, outputs,
                   "last" if r is not None or outputs == "last" else "all", self.backend,
                   r is not None)
        if r is not None:
            return out.y, out.h
        if outputs == "last":
            return out.h, out.h.unsqueeze(0)
        return out.h, out.h[:, -1].unsqueeze(0) if out.h.shape[1] > 0 else self._h0_like(out.h, h0)

    def _h0_like(self, h: Tensor, h0: Optional[Tensor]) -> Tensor:
        B = h.shape[0]
        if h0 is None:
            return h.new_zeros(1, B, self.hidden_size)
        return torch.broadcast_to(h0, (B, self.hidden_size)).unsqueeze(0)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, output_size={self.output_size}, "
                f"activation={self.activation!r}, tokens={self.tokens}")
