"""The fused Elman recurrence h_t = act(W_hh h_{t-1} + W_ih x_t + b), with an optional fused
readout y_t = W_out h_t + b_out, as a torch.library custom op with autograd."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from grokfast._ext import ext
from grokfast.ops._validate import (as_tensor, check_choice, check_dtype, check_same_device,
                                    check_shape, resolve_backend)

ACTIVATIONS = ("tanh", "relu")
_ACTIVATION_CODE = {"tanh": 0, "relu": 1}
_Y_ALL, _Y_LAST = 2, 1
_GPU_BACKENDS = ("cuda", "cuda-emulated")
MAX_HIDDEN_GPU = 256


class RNNOutput(NamedTuple):
    """y: readouts ([.., B, T, O] or [.., B, O]) or None without a readout;
    h: hidden states ([.., B, T, H] or [.., B, H]) or None."""

    y: Optional[Tensor]
    h: Optional[Tensor]


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _alloc_forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, w_out: Optional[Tensor], y_mode: int,
                   want_all: bool, want_last: bool, batched: bool = True,
                   placeholders: bool = True, last_layer_dim: bool = False) -> tuple:
    """The custom op's outputs; unrequested ones are empty (None with placeholders=False).
    last_layer_dim: the last hidden state as [1, B, H] (nn.RNN's h_n; unbatched only)."""
    # new_empty(*ints): torch parses a tuple argument about 0.5 us slower per call.
    empty = w_hh.new_empty
    lead = (w_hh.shape[0],) if batched else ()
    H = w_hh.shape[-1]
    B, T = x.shape[len(lead):len(lead) + 2]
    if w_out is None:
        y = empty(0) if placeholders else None  # the custom op's outputs may not alias
    elif y_mode == _Y_ALL:
        y = empty(*lead, B, T, w_out.shape[-2])
    else:
        y = empty(*lead, B, w_out.shape[-2])
    h_all = empty(*lead, B, T, H) if want_all else (empty(0) if placeholders else None)
    if want_last:
        h_last = empty(1, B, H) if last_layer_dim else empty(*lead, B, H)
    else:
        h_last = empty(0) if placeholders else None
    return y, h_all, h_last


def _forward_impl(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
                  h0: Optional[Tensor], w_out: Optional[Tensor], b_out: Optional[Tensor],
                  activation: int, y_mode: int, want_all: bool, want_last: bool,
                  backend: str, batched: bool = True,
                  placeholders: bool = True, last_layer_dim: bool = False) -> tuple:
    """Canonical layout, model dimension present (batched): x [M, B, T] ids or [M, B, T, I];
    w_ih [M, H, I]; w_hh [M, H, H]; bias [M, H]; h0 [M, B, H]; w_out [M, O, H]; b_out [M, O];
    or all of them without M (batched=False, outputs likewise; saves the view ops).
    Returns (y, all hidden states, last hidden state); unrequested ones are empty (None with
    placeholders=False)."""
    c = ext()
    y, h_all, h_last = _alloc_forward(x, w_ih, w_hh, w_out, y_mode, want_all, want_last, batched,
                                      placeholders, last_layer_dim)
    n = 1 if batched else 0
    H, I = w_ih.shape[-2:]
    tokens = not x.is_floating_point()
    # The CPU kernel checks ids itself; torch reductions here would leave torch's OpenMP
    # workers spinning on the cores the kernel is about to use.
    if tokens and backend != "cpu" and x.numel() > 0:
        lo, hi = torch.aminmax(x)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= I:
            raise ValueError(f"x: token ids must lie in [0, {I}) (the columns of w_ih), "
                             f"got values in [{lo}, {hi}]")
    if backend == "cpu":  # read in place: [H, I] strides (I, 1)
        w_ih_strides = (I, 1)
    else:  # a transposed copy, so a token's column is read coalesced
        w_ih = w_ih.transpose(-1, -2).contiguous()
        w_ih_strides = (1, H)
    xs = x.stride()
    c.rnn_forward_call(
        backend, w_hh.shape[0] if batched else 1, *x.shape[n:n + 2], I, H,
        w_out.shape[-2] if w_out is not None else 0, tokens, activation,
        w_hh.dtype == torch.float64, x.data_ptr(), xs[0] if batched else 0, *xs[n:n + 2],
        0 if tokens else xs[n + 2], w_ih.data_ptr(), *w_ih_strides, w_hh.data_ptr(),
        _ptr(bias), _ptr(h0), _ptr(w_out), _ptr(b_out), y_mode if w_out is not None else 0,
        _ptr(y), _ptr(h_all), _ptr(h_last), _stream(w_hh) if w_hh.is_cuda else 0)
    return y, h_all, h_last


@torch.library.custom_op("grokfast::rnn_forward", mutates_args=())
def rnn_forward_op(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
                   h0: Optional[Tensor], w_out: Optional[Tensor], b_out: Optional[Tensor],
                   activation: int, y_mode: int, want_all: bool, want_last: bool,
                   backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """The fused forward as a custom op (torch.compile, opcheck); see _forward_impl."""
    return _forward_impl(x, w_ih, w_hh, bias, h0, w_out, b_out, activation, y_mode, want_all,
                         want_last, backend)


@rnn_forward_op.register_fake
def _(x, w_ih, w_hh, bias, h0, w_out, b_out, activation, y_mode, want_all, want_last, backend):
    return _alloc_forward(x, w_ih, w_hh, w_out, y_mode, want_all, want_last)


def _alloc_backward(states: Tensor, w_out: Optional[Tensor], vocab: int, want_bias: bool,
                    want_w_ih: bool, want_w_out: bool, want_b_out: bool, want_w_hh: bool,
                    want_dz: bool, want_dh0: bool, backend: str,
                    placeholders: bool = True) -> tuple:
    """The outputs of _backward_impl; unrequested ones are empty (None with placeholders=False).
    The CPU kernel overwrites its sums (left unfilled) and writes d_w_ih as [.., H, vocab] like
    the parameter, and d_w_hh. The GPU kernels add into zeroed sums, write d_w_ih as
    [.., vocab, H] (a token's row is contiguous across threads, so their atomics coalesce), and
    always write dz (d_w_hh is then one GEMM over it)."""
    cpu = backend == "cpu"
    *lead, B, _, H = states.shape  # lead: [M] or [] like the forward's inputs
    O = w_out.shape[-2] if w_out is not None else 0
    empty = states.new_empty  # new_empty(*ints): see _alloc_forward
    sums = empty if cpu else states.new_zeros
    want_dz = want_dz or not cpu
    outs = [torch.empty_like(states) if want_dz else None,
            empty(*lead, B, H) if want_dz else None,
            empty(*lead, B, H) if want_dh0 else None,
            sums(*lead, H) if want_bias else None,
            (sums(*lead, H, vocab) if cpu else sums(*lead, vocab, H)) if want_w_ih else None,
            sums(*lead, O, H) if want_w_out else None,
            sums(*lead, O) if want_b_out else None,
            sums(*lead, H, H) if want_w_hh and cpu else None]
    if placeholders:  # the custom op's outputs may not alias one another
        outs = [empty(0) if t is None else t for t in outs]
    return tuple(outs)


def _backward_impl(states: Tensor, w_hh: Tensor, g_all: Optional[Tensor],
                   g_last: Optional[Tensor], gy: Optional[Tensor], w_out: Optional[Tensor],
                   ids: Optional[Tensor], h0: Optional[Tensor], vocab: int, activation: int,
                   gy_mode: int, want_bias: bool, want_w_ih: bool, want_w_out: bool,
                   want_b_out: bool, want_w_hh: bool, want_dz: bool, want_dh0: bool,
                   backend: str, placeholders: bool = True) -> tuple:
    """BPTT for states [M, B, T, H] or [B, T, H] (T >= 1; every tensor then without M) in one
    pass: dz_t = (g_t + W_hh^T dz_{t+1}) * act'(h_t) with g_t = g_all_t (+ g_last at T-1)
    + W_out^T gy_t, and the sums over (b, t).

    Returns (dz_next, dz0, dh0, d_bias, d_w_ih, d_w_out, d_b_out, d_w_hh): dz_next[:, :, t]
    holds dz_{t+1} (zeros at T-1) and dz0 = dz_0 (with want_dz; the GPU kernels always write
    them), dh0 = W_hh^T dz_0 (with want_dh0; without it the kernel skips that product),
    d_w_ih is the token embedding gradient (needs ids; [M, H, vocab] from the CPU, [M, vocab, H]
    from the GPU backends); d_w_hh (the CPU backend only, with h0 [M, B, H] or None for zeros)
    sum_t dz_{t+1} h_t^T + dz_0 h0^T; unrequested outputs are empty (None with
    placeholders=False)."""
    c = ext()
    cpu = backend == "cpu"
    outs = _alloc_backward(states, w_out, vocab, want_bias, want_w_ih, want_w_out, want_b_out,
                           want_w_hh, want_dz, want_dh0, backend, placeholders)
    dz_next, dz0, dh0, d_bias, d_w_ih, d_w_out, d_b_out, d_w_hh = outs
    # Held in locals: a copy made inside the call's argument list would be freed before it.
    g_all = g_all.contiguous() if g_all is not None else None
    g_last = g_last.contiguous() if g_last is not None else None
    gy = gy.contiguous() if gy is not None else None
    h0 = h0.contiguous() if h0 is not None and want_w_hh and cpu else None
    batched = states.dim() == 4
    M, B, T, H = states.shape if batched else (1, *states.shape)
    if ids is not None:
        ids_strides = ids.stride() if batched else (0, *ids.stride())
    else:
        ids_strides = (0, 0, 0)
    c.rnn_backward_call(
        backend, M, B, T, H, vocab, w_out.shape[-2] if w_out is not None else 0, activation,
        states.dtype == torch.float64, states.data_ptr(), w_hh.data_ptr(),
        _ptr(g_all), _ptr(g_last), gy_mode if gy is not None else 0, _ptr(gy),
        _ptr(w_out) if gy is not None else 0,
        _ptr(ids), *ids_strides, _ptr(d_bias), _ptr(d_w_ih), *((vocab, 1) if cpu else (1, H)),
        _ptr(d_w_out), _ptr(d_b_out), _ptr(dz_next), _ptr(dz0), _ptr(dh0), _ptr(d_w_hh),
        _ptr(h0), _stream(states) if states.is_cuda else 0)
    return outs


def _eager_backward_impl(*args) -> tuple:
    return _backward_impl(*args, placeholders=False)


@torch.library.custom_op("grokfast::rnn_backward", mutates_args=())
def rnn_backward_op(states: Tensor, w_hh: Tensor, g_all: Optional[Tensor],
                    g_last: Optional[Tensor], gy: Optional[Tensor], w_out: Optional[Tensor],
                    ids: Optional[Tensor], h0: Optional[Tensor], vocab: int, activation: int,
                    gy_mode: int, want_bias: bool, want_w_ih: bool, want_w_out: bool,
                    want_b_out: bool, want_w_hh: bool, want_dz: bool, want_dh0: bool,
                    backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                           Tensor]:
    """The fused backward as a custom op; see _backward_impl."""
    return _backward_impl(states, w_hh, g_all, g_last, gy, w_out, ids, h0, vocab, activation,
                          gy_mode, want_bias, want_w_ih, want_w_out, want_b_out, want_w_hh,
                          want_dz, want_dh0, backend)


@rnn_backward_op.register_fake
def _(states, w_hh, g_all, g_last, gy, w_out, ids, h0, vocab, activation, gy_mode, want_bias,
      want_w_ih, want_w_out, want_b_out, want_w_hh, want_dz, want_dh0, backend):
    return _alloc_backward(states, w_out, vocab, want_bias, want_w_ih, want_w_out, want_b_out,
                           want_w_hh, want_dz, want_dh0, backend)


def _save(ctx, x, w_ih, w_hh, bias, h0, w_out, h_all, activation, y_mode, want_all,
          has_b_out, backend, backward_fn) -> None:
    # Token ids need only the vocabulary size of w_ih; flags stand in for the biases.
    dense = x.is_floating_point()
    ctx.save_for_backward(x, w_ih if dense else None, w_hh, h0, w_out, h_all)
    ctx.vocab = w_ih.shape[-1]
    ctx.activation, ctx.y_mode, ctx.backend = activation, y_mode, backend
    ctx.saved_states = want_all
    ctx.has_bias, ctx.has_b_out = bias is not None, has_b_out
    ctx.set_materialize_grads(False)  # unused outputs send None, not zero tensors
    ctx.backward_fn = backward_fn


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, bias, h0, w_out, b_out, activation, y_mode, want_all, want_last, backend = inputs
    _save(ctx, x, w_ih, w_hh, bias, h0, w_out, output[1], activation, y_mode, want_all,
          b_out is not None, backend, torch.ops.grokfast.rnn_backward)


def _backward(ctx, grad_y, grad_h_all, grad_h_last):
    if not ctx.saved_states:
        raise RuntimeError("grokfast::rnn_forward was called with want_all=False, so it kept no "
                           "hidden states for the backward; call it through grokfast.ops.rnn")
    # Saved with the model dimension (the custom op) or without it (the eager path).
    x, w_ih, w_hh, h0, w_out, states = ctx.saved_tensors
    needs = ctx.needs_input_grad
    g_all = grad_h_all if grad_h_all is not None and grad_h_all.numel() > 0 else None
    g_last = grad_h_last if grad_h_last is not None and grad_h_last.numel() > 0 else None
    gy = grad_y if w_out is not None and grad_y is not None and grad_y.numel() > 0 else None
    if g_all is None and g_last is None and gy is None:
        return (None,) * 12
    tokens = not x.is_floating_point()
    want_h0 = needs[4] and h0 is not None
    # Unrequested outputs come back empty (the custom op) or None (the eager path).
    dz_next, dz0, dh0, d_bias, d_w_ih, d_w_out, d_b_out, d_w_hh = ctx.backward_fn(
        states, w_hh, g_all, g_last, gy, w_out if gy is not None else None,
        x if tokens else None, h0, ctx.vocab, ctx.activation, ctx.y_mode,
        needs[3] and ctx.has_bias, needs[1] and tokens, needs[5] and gy is not None,
        needs[6] and gy is not None and ctx.has_b_out, needs[2],
        not tokens and (needs[0] or needs[1]), want_h0, ctx.backend)
    d_x = None
    batched = states.dim() == 4
    B, T, H = states.shape[-3:]
    M = states.shape[0] if batched else 1
    if not needs[2]:
        d_w_hh = None
    elif d_w_hh is None or d_w_hh.numel() == 0:  # GPU backends: one batched GEMM outside the kernel
        # dz_{t+1} sits at slot t of dz_next, next to h_t at slot t of states: one GEMM.
        d_w_hh = (dz_next.reshape(M, B * T, H).transpose(1, 2)
                  @ states.reshape(M, B * T, H)).reshape(w_hh.shape)
        if h0 is not None:
            d_w_hh = d_w_hh + dz0.transpose(-1, -2) @ h0
    if tokens:
        d_w_ih = _keep(d_w_ih, needs[1])
        if d_w_ih is not None and ctx.backend != "cpu":  # the GPU kernels' [.., vocab, H]
            d_w_ih = d_w_ih.transpose(-1, -2)
    else:
        d_w_ih = None
    if not tokens and (needs[0] or needs[1]):
        if not batched:
            x, w_ih, dz_next, dz0 = x.unsqueeze(0), w_ih.unsqueeze(0), dz_next.unsqueeze(0), dz0.unsqueeze(0)
        # Pair dz_next[:, :, t] = dz_{t+1} with x_{t+1}; dz_0 with x_0 separately.
        I = w_ih.shape[2]
        if needs[0]:
            w_ih_b = w_ih.unsqueeze(1)
            d_x = torch.cat([torch.matmul(dz0.unsqueeze(2), w_ih_b),
                             torch.matmul(dz_next, w_ih_b)[:, :, :-1]], 2)
            d_x = d_x if batched else d_x.squeeze(0)
        if needs[1]:
            x_next = torch.cat([x[:, :, 1:], torch.zeros_like(x[:, :, :1])], 2)
            d_w_ih = (dz_next.reshape(M, B * T, H).transpose(1, 2) @ x_next.reshape(M, B * T, I)
                      + dz0.transpose(1, 2) @ x[:, :, 0])
            d_w_ih = d_w_ih if batched else d_w_ih.squeeze(0)
    return (d_x, d_w_ih, d_w_hh, _keep(d_bias, needs[3]), dh0 if want_h0 else None,
            _keep(d_w_out, needs[5]), _keep(d_b_out, needs[6]), None, None, None, None, None)


def _keep(t: Optional[Tensor], need: bool) -> Optional[Tensor]:
    return t if need and t is not None and t.numel() > 0 else None


torch.library.register_autograd("grokfast::rnn_forward", _backward, setup_context=_setup_context)


class _EagerRNN(torch.autograd.Function):
    """The same forward and backward without the custom-op dispatch, whose Python overhead is
    comparable to a whole short recurrence; used only for plain tensors outside tracing. Takes
    the tensors in the caller's layout (the last argument says whether they have the model
    dimension), so no view ops run around the kernels. Unrequested outputs are None."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, bias, h0, w_out, b_out, activation, y_mode, want_all,
                want_last, backend, batched, last_layer_dim):
        outputs = _forward_impl(x, w_ih, w_hh, bias, h0, w_out, b_out, activation, y_mode,
                                want_all, want_last, backend, batched, False, last_layer_dim)
        _save(ctx, x, w_ih, w_hh, bias, h0, w_out, outputs[1], activation, y_mode, want_all,
              b_out is not None, backend, _eager_backward_impl)
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        return (*_backward(ctx, *grads), None, None)


# Function.apply minus its functorch handling (unwrap_dead_wrappers walks every argument):
# rnn() takes this path only when no functorch transform is active and no input is wrapped.
_eager_apply = super(torch.autograd.Function, _EagerRNN).apply


def _canonical(tensors, batched: bool) -> tuple:
    """(x, w_ih, w_hh, bias, h0, w_out, b_out) with the model dimension."""
    if batched:
        return tuple(tensors)
    return tuple(t.unsqueeze(0) if t is not None else None for t in tensors)


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_functorch_active = torch._C._are_functorch_transforms_active


def _plain_eager(tensors) -> bool:
    """True when no compiler, mode, functorch transform or tensor subclass would need to see
    the op itself."""
    if (torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
            or _functorch_active()):
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN_TYPES or _is_functorch_wrapped(t)):
            return False
    return True


def rnn(x, w_ih, w_hh, bias=None, h0=None, w_out=None, b_out=None, *,
        activation: str = "tanh", outputs: str = "all", hidden: str = "last",
        backend: Optional[str] = None) -> RNNOutput:
    """Run an Elman RNN h_t = act(w_hh h_{t-1} + w_ih x_t + bias) over whole sequences.

    Shapes (a leading model dimension M is optional and, when w_hh has it, required on every
    weight and on x: M independent RNNs in one call):
      x       int64 token ids [(M,) B, T] (w_ih read as an embedding table, no GEMM) or
              float values [(M,) B, T, I]
      w_ih    [(M,) H, I] (I = vocabulary size for token ids); w_hh [(M,) H, H]; bias [(M,) H]
      h0      broadcastable to [(M,) B, H]; zeros when None
      w_out   [(M,) O, H] and b_out [(M,) O]: fused readout y_t = w_out h_t + b_out
    activation: "tanh" or "relu". outputs: readouts for "all" steps or the "last" only.
    hidden: hidden states for "all" steps, the "last" only, or "none" (without "all" nothing of
    size B x T x H is allocated unless autograd needs it). backend: "cpu", "cuda" or
    "cuda-emulated" (the CUDA kernel run on host threads); default from the tensors' device.
    Returns RNNOutput(y, h); y is None without w_out.
    """
    return _run(x, w_ih, w_hh, bias, h0, w_out, b_out, activation, outputs, hidden, backend)


def _run(x, w_ih, w_hh, bias, h0, w_out, b_out, activation: str, outputs: str, hidden: str,
         backend: Optional[str], last_layer_dim: bool = False) -> RNNOutput:
    """rnn(); with last_layer_dim (and no model dimension) hidden="last" comes as [1, B, H],
    nn.RNN's h_n, made by the kernel rather than by a view op on its output."""
    w_hh = as_tensor("w_hh", w_hh)
    dtype = w_hh.dtype
    if dtype is not torch.float32 and dtype is not torch.float64:
        if not w_hh.is_floating_point():
            raise TypeError(f"w_hh: expected a float32 or float64 tensor, got {dtype}")
        raise TypeError(f"w_hh: expected dtype float32 or float64, got {dtype}")
    shape = w_hh.shape
    nd = len(shape)
    if nd not in (2, 3) or shape[-1] != shape[-2]:
        raise ValueError(f"w_hh: expected a square matrix [H, H] or a stack [M, H, H], "
                         f"got shape {tuple(shape)}")
    batched = nd == 3
    H = shape[-1]
    lead = (shape[0],) if batched else ()
    lead_h = lead + (H,)
    model_note = "with the model dimension of w_hh" if batched else "w_hh has no model dimension"

    x = as_tensor("x", x)
    w_ih = as_tensor("w_ih", w_ih)
    bias = as_tensor("bias", bias, optional=True)
    h0 = as_tensor("h0", h0, optional=True)
    w_out = as_tensor("w_out", w_out, optional=True)
    b_out = as_tensor("b_out", b_out, optional=True)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("outputs", outputs, ("all", "last"))
    check_choice("hidden", hidden, ("all", "last", "none"))
    if b_out is not None and w_out is None:
        raise ValueError("b_out: given without w_out (the readout weight)")

    device = w_hh.device
    if backend is None:  # resolve_backend's default, without its device.type lookup
        backend = "cuda" if w_hh.is_cuda else "cpu"
    else:
        backend = resolve_backend(backend, device)
    check_same_device((("x", x),), device)
    for name, t in (("w_ih", w_ih), ("bias", bias), ("h0", h0), ("w_out", w_out), ("b_out", b_out)):
        if t is not None:  # check_same_device and check_dtype in one pass
            if t.device != device:
                check_same_device(((name, t),), device)
            if t.dtype != dtype:
                check_dtype(((name, t),), dtype)
    if backend in _GPU_BACKENDS:
        if dtype != torch.float32:
            raise TypeError(f"w_hh: backend {backend!r} supports float32 only, got {dtype} "
                            "(float64 runs on backend='cpu')")
        if H > MAX_HIDDEN_GPU:
            raise ValueError(f"w_hh: hidden size {H} is unsupported on backend {backend!r} "
                             f"(at most {MAX_HIDDEN_GPU}); use backend='cpu'")

    shape = w_ih.shape
    if len(shape) != nd or shape[:-1] != lead_h:
        raise ValueError(f"w_ih: expected shape {lead_h} + (I,) ({model_note}), "
                         f"got {tuple(shape)}")
    I = shape[-1]
    shape = x.shape
    tokens = not x.is_floating_point()
    if tokens:
        if x.dtype is not torch.int64:
            if x.dtype not in (torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"x: expected integer token ids or float values, got {x.dtype}")
            x = x.long()
        if len(shape) != nd or shape[:nd - 2] != lead:
            raise ValueError(f"x: token ids must have shape {lead} + (B, T) ({model_note}), "
                             f"got {tuple(shape)}")
    else:
        if x.dtype != dtype:
            raise TypeError(f"x: expected dtype {dtype} (the dtype of w_hh), got {x.dtype}")
        if len(shape) != nd + 1 or shape[:nd - 2] != lead or shape[-1] != I:
            raise ValueError(f"x: expected shape {lead} + (B, T, {I}) (I = columns of w_ih, "
                             f"{model_note}), got {tuple(shape)}")
    B, T = shape[nd - 2:nd]
    if bias is not None and bias.shape != lead_h:
        check_shape("bias", bias, lead_h, model_note)
    if w_out is not None:
        shape = w_out.shape
        if len(shape) != nd or shape[:nd - 2] != lead or shape[-1] != H:
            raise ValueError(f"w_out: expected shape {lead} + (O, {H}) ({model_note}), "
                             f"got {tuple(shape)}")
        if b_out is not None and b_out.shape != shape[:-1]:
            check_shape("b_out", b_out, tuple(shape[:-1]), "one bias per readout unit")
    if h0 is not None and h0.shape != lead + (B, H):
        try:
            h0 = torch.broadcast_to(h0, lead + (B, H))
        except RuntimeError:
            raise ValueError(f"h0: expected a shape broadcastable to {lead + (B, H)}, "
                             f"got {tuple(h0.shape)}") from None

    lead_bh = lead + (B,)
    if T == 0:
        if w_out is not None and outputs == "last":
            raise ValueError("x: sequence length 0 has no last step to read out (outputs='last')")
        h_last = h0.clone() if h0 is not None else w_hh.new_zeros(lead_bh + (H,))
        if last_layer_dim and not batched:
            h_last = h_last.unsqueeze(0)
        y = w_hh.new_zeros(lead_bh + (0, w_out.shape[-2])) if w_out is not None else None
        h = {"all": w_hh.new_zeros(lead_bh + (0, H)), "last": h_last, "none": None}[hidden]
        return RNNOutput(y, h)

    floats = (x, w_ih, w_hh, bias, h0, w_out, b_out)
    need_grad = torch.is_grad_enabled() and (
        w_hh.requires_grad or w_ih.requires_grad or x.requires_grad
        or any(t is not None and t.requires_grad for t in floats[3:]))
    tensors = (x, w_ih.contiguous(), w_hh.contiguous(),
               bias.contiguous() if bias is not None else None,
               h0.contiguous() if h0 is not None else None,
               w_out.contiguous() if w_out is not None else None,
               b_out.contiguous() if b_out is not None else None)
    flags = (_ACTIVATION_CODE[activation], _Y_ALL if outputs == "all" else _Y_LAST,
             hidden == "all" or need_grad, hidden == "last", backend)
    last_layer_dim = last_layer_dim and not batched
    if not _plain_eager(floats):
        y, h_all, h_last = torch.ops.grokfast.rnn_forward(*_canonical(tensors, batched), *flags)
        if not batched:
            y, h_all = y.squeeze(0), h_all.squeeze(0)
            h_last = h_last if last_layer_dim else h_last.squeeze(0)
    elif need_grad:
        y, h_all, h_last = _eager_apply(*tensors, *flags, batched, last_layer_dim)
    else:  # unrequested outputs are None here
        y, h_all, h_last = _forward_impl(*tensors, *flags, batched, False, last_layer_dim)
    h = h_last if hidden == "last" else (h_all if hidden == "all" else None)
    return RNNOutput(y if w_out is not None else None, h)
