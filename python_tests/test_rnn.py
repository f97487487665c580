"""grokfast.ops.rnn and grokfast.nn.ElmanRNN against grokfast.ref and torch.nn.RNN."""

import os

import pytest
import torch

import grokfast
from grokfast import ref
from grokfast.ops import rnn
from conftest import device_of

# (H, B, T): every size of each axis appears, odd and degenerate ones included.
SHAPES = [
    (1, 1, 1), (3, 3, 2), (17, 129, 2), (100, 3, 1000), (128, 1, 1000), (256, 3, 2),
    (17, 0, 2), (3, 129, 1000), (100, 129, 2), (128, 3, 2), (256, 1, 1000), (1, 129, 1000),
]
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def make(H, B, T, *, tokens, I=3, O=2, M=None, dtype=torch.float32, device="cpu", seed=0,
         scale=0.5):
    """Weights scaled so the recurrence contracts: float32 errors stay small over long T."""
    g = torch.Generator().manual_seed(seed)
    lead = (M,) if M is not None else ()

    def rand(*shape, s=1.0):
        return (torch.randn(*lead, *shape, generator=g, dtype=torch.float64) * s).to(dtype).to(device)

    x = (torch.randint(0, I, lead + (B, T), generator=g).to(device) if tokens
         else rand(B, T, I))
    return dict(x=x, w_ih=rand(H, I), w_hh=rand(H, H, s=scale / H ** 0.5), bias=rand(H, s=0.3),
                h0=rand(B, H, s=0.5), w_out=rand(O, H), b_out=rand(O))


def reference(a, activation, M=None):
    if M is None:
        return ref.rnn(**a, activation=activation)
    outs = [ref.rnn(**{k: v[m] for k, v in a.items()}, activation=activation) for m in range(M)]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def close(actual, expected, dtype=torch.float32):
    torch.testing.assert_close(actual.cpu(), expected.cpu(), **TOL[dtype])


@pytest.mark.parametrize("H,B,T", SHAPES)
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_forward_matches_reference(backend, H, B, T, tokens, activation):
    a = make(H, B, T, tokens=tokens, device=device_of(backend))
    hs, y = reference(a, activation)
    out = rnn(**a, activation=activation, hidden="all", backend=backend)
    close(out.h, hs)
    close(out.y, y)
    last = rnn(**a, activation=activation, outputs="last", hidden="last", backend=backend)
    if B > 0:
        close(last.h, hs[:, -1])
        close(last.y, y[:, -1])
    none = rnn(**a, activation=activation, hidden="none", backend=backend)
    assert none.h is None
    close(none.y, y)


@pytest.mark.parametrize("H,B,T", [(3, 3, 2), (17, 129, 2), (100, 3, 1000), (256, 3, 50), (1, 1, 1)])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("outputs,hidden", [("all", "all"), ("last", "last"), ("all", "last")])
def test_gradients_match_reference(backend, H, B, T, tokens, outputs, hidden):
    a = make(H, B, T, tokens=tokens, device=device_of(backend))
    params = ["w_ih", "w_hh", "bias", "h0", "w_out", "b_out"] + ([] if tokens else ["x"])
    for k in params:
        a[k].requires_grad_(True)
    g = torch.Generator().manual_seed(1)

    def loss(y, h):
        wy = torch.randn(y.shape, generator=g).to(y.device)
        wh = torch.randn(h.shape, generator=g).to(h.device)
        return (y * wy).sum() + (h * wh).sum()

    out = rnn(**a, activation="tanh", outputs=outputs, hidden=hidden, backend=backend)
    ours = torch.autograd.grad(loss(out.y, out.h), [a[k] for k in params])
    g.manual_seed(1)
    hs, y = ref.rnn(**a, activation="tanh")
    y = y if outputs == "all" else y[:, -1]
    h = hs if hidden == "all" else hs[:, -1]
    theirs = torch.autograd.grad(loss(y, h), [a[k] for k in params])
    for name, mine, other in zip(params, ours, theirs):
        torch.testing.assert_close(mine.cpu(), other.cpu(), atol=5e-4, rtol=5e-4, msg=name)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradients_relu_and_no_h0_no_bias(backend, activation):
    a = make(17, 5, 30, tokens=True, device=device_of(backend))
    del a["h0"], a["bias"], a["b_out"]
    for k in ("w_ih", "w_hh", "w_out"):
        a[k].requires_grad_(True)
    out = rnn(**a, activation=activation, backend=backend)
    ours = torch.autograd.grad(out.y.square().sum() + out.h.sum(), [a["w_ih"], a["w_hh"], a["w_out"]])
    hs, y = ref.rnn(**a, activation=activation)
    theirs = torch.autograd.grad(y.square().sum() + hs[:, -1].sum(), [a["w_ih"], a["w_hh"], a["w_out"]])
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(mine.cpu(), other.cpu(), atol=5e-4, rtol=5e-4)


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_model_dimension(backend, tokens):
    M = 3
    a = make(17, 5, 40, tokens=tokens, M=M, device=device_of(backend))
    for k in ("w_ih", "w_hh", "w_out", "h0"):
        a[k].requires_grad_(True)
    hs, y = reference(a, "relu", M=M)
    out = rnn(**a, activation="relu", hidden="all", backend=backend)
    close(out.h, hs)
    close(out.y, y)
    ours = torch.autograd.grad(out.y.sum(), [a["w_hh"], a["h0"]])
    theirs = torch.autograd.grad(y.sum(), [a["w_hh"], a["h0"]])
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(mine.cpu(), other.cpu(), atol=5e-4, rtol=5e-4)


def test_non_contiguous_inputs(backend):
    dev = device_of(backend)
    a = make(17, 6, 20, tokens=False, device=dev)
    ref_h, ref_y = ref.rnn(**a, activation="tanh")
    strided = dict(a)
    wide = torch.zeros(6, 40, 3 * 2, device=dev)
    wide[:, ::2, ::2] = a["x"]
    strided["x"] = wide[:, ::2, ::2]
    strided["w_hh"] = a["w_hh"].t().contiguous().t()
    strided["w_ih"] = a["w_ih"].t().contiguous().t()
    strided["h0"] = a["h0"].t().contiguous().t()
    assert not strided["x"].is_contiguous() and not strided["w_hh"].is_contiguous()
    out = rnn(**strided, activation="tanh", hidden="all", backend=backend)
    close(out.h, ref_h)
    close(out.y, ref_y)
    tok = make(17, 6, 20, tokens=True, device=dev)
    ids = tok["x"].t().contiguous().t()
    assert not ids.is_contiguous()
    close(rnn(**dict(tok, x=ids), hidden="all", backend=backend).h, ref.rnn(**tok)[0])


def test_h0_broadcast_and_defaults(backend):
    a = make(9, 4, 7, tokens=True, device=device_of(backend))
    vec = a["h0"][0]
    out = rnn(a["x"], a["w_ih"], a["w_hh"], a["bias"], vec, backend=backend, hidden="all")
    close(out.h, ref.rnn(a["x"], a["w_ih"], a["w_hh"], a["bias"], vec)[0])
    assert out.y is None
    bare = rnn(a["x"], a["w_ih"], a["w_hh"], backend=backend, hidden="all")
    close(bare.h, ref.rnn(a["x"], a["w_ih"], a["w_hh"])[0])


def test_numpy_inputs():
    a = make(5, 2, 4, tokens=True)
    out = rnn(**{k: v.numpy() for k, v in a.items()}, hidden="all")
    close(out.h, ref.rnn(**a)[0])


def test_zero_length_sequence(backend):
    a = make(5, 3, 0, tokens=True, device=device_of(backend))
    out = rnn(**a, hidden="last", backend=backend)
    close(out.h, a["h0"])
    assert out.y.shape == (3, 0, 2)
    assert rnn(**a, hidden="all", backend=backend).h.shape == (3, 0, 5)


@pytest.mark.parametrize("tile", ["1", "2", "4", "8"])
def test_emulated_kernel_every_tile_size(monkeypatch, tile):
    monkeypatch.setenv("GROKFAST_CUDA_TILE_ROWS", tile)
    for H in (3, 40, 100, 200):
        a = make(H, 11, 9, tokens=False)
        a["w_hh"].requires_grad_(True)
        hs, y = ref.rnn(**a, activation="relu")
        out = rnn(**a, activation="relu", hidden="all", backend="cuda-emulated")
        close(out.h, hs)
        close(out.y, y)
        torch.testing.assert_close(torch.autograd.grad(out.y.sum(), a["w_hh"])[0],
                                   torch.autograd.grad(y.sum(), a["w_hh"])[0], atol=5e-4, rtol=5e-4)


def test_emulated_tile_override_rejects_bad_value(monkeypatch):
    monkeypatch.setenv("GROKFAST_CUDA_TILE_ROWS", "3")
    a = make(5, 2, 3, tokens=True)
    with pytest.raises(ValueError, match="GROKFAST_CUDA_TILE_ROWS"):
        rnn(**a, backend="cuda-emulated")


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("outputs", ["all", "last"])
def test_gradcheck_float64(cpu_isa, tokens, activation, outputs):
    a = make(4, 3, 5, tokens=tokens, dtype=torch.float64, scale=1.5)
    names = ["w_ih", "w_hh", "bias", "h0", "w_out", "b_out"] + ([] if tokens else ["x"])
    for k in names:
        a[k].requires_grad_(True)

    def f(*tensors):
        kw = dict(a, **dict(zip(names, tensors)))
        out = rnn(**kw, activation=activation, outputs=outputs, hidden="all")
        return out.y, out.h

    assert torch.autograd.gradcheck(f, [a[k] for k in names])


@pytest.mark.parametrize("op_backend", ["cpu", "cuda-emulated"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_opcheck(op_backend, tokens):
    a = make(5, 3, 4, tokens=tokens, M=2)
    for k in ("w_ih", "w_hh", "bias", "h0", "w_out", "b_out"):
        a[k].requires_grad_(True)
    args = (a["x"], a["w_ih"], a["w_hh"], a["bias"], a["h0"], a["w_out"], a["b_out"],
            0, 2, True, True, op_backend)
    torch.library.opcheck(torch.ops.grokfast.rnn_forward.default, args)
    states = torch.randn(2, 3, 4, 5).tanh()
    ids = a["x"] if tokens else None
    for gy, mode in ((torch.randn(2, 3, 4, 2), 2), (torch.randn(2, 3, 2), 1)):
        torch.library.opcheck(torch.ops.grokfast.rnn_backward.default,
                              (states, a["w_hh"].detach(), torch.randn(2, 3, 4, 5), None, gy,
                               a["w_out"].detach(), ids, a["h0"].detach(), 3, 0, mode, True,
                               tokens, True, True, True, not tokens, True, op_backend))


def test_torch_compile():
    a = make(7, 3, 6, tokens=True)
    a["w_hh"].requires_grad_(True)

    def f(w_hh):
        return rnn(**dict(a, w_hh=w_hh), activation="relu", hidden="all").y.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(a["w_hh"]), f(a["w_hh"]))
    torch.testing.assert_close(torch.autograd.grad(compiled(a["w_hh"]), a["w_hh"])[0],
                               torch.autograd.grad(f(a["w_hh"]), a["w_hh"])[0])


# ---------------------------------------------------------------- ElmanRNN and torch.nn.RNN

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_readout", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_from_torch_matches_nn_rnn(backend, nonlinearity, with_readout, with_h0):
    torch.manual_seed(0)
    dev = device_of(backend)
    base = torch.nn.RNN(3, 17, batch_first=True, nonlinearity=nonlinearity).to(dev)
    readout = torch.nn.Linear(17, 2).to(dev) if with_readout else None
    ours = grokfast.nn.ElmanRNN.from_torch(base, readout)
    ours.backend = backend
    x = torch.randn(5, 50, 3, device=dev)
    h0 = torch.randn(1, 5, 17, device=dev) if with_h0 else None
    seq, h_n = base(x, h0)
    expected_y = readout(seq) if readout is not None else seq
    y, h = ours(x, h0)
    close(y, expected_y.detach())
    close(h, h_n.detach())
    assert h.shape == h_n.shape
    (expected_y.square().sum() + h_n.sum()).backward()
    (y.square().sum() + h.sum()).backward()
    close(ours.weight_hh.grad, base.weight_hh_l0.grad)
    close(ours.weight_ih.grad, base.weight_ih_l0.grad)
    close(ours.bias.grad, base.bias_hh_l0.grad)
    if readout is not None:
        close(ours.readout.weight.grad, readout.weight.grad)


def test_elman_tokens_equal_one_hot():
    torch.manual_seed(0)
    dense = grokfast.nn.ElmanRNN(2, 10, 2, activation="relu")
    tok = grokfast.nn.ElmanRNN(2, 10, 2, activation="relu", tokens=True)
    tok.load_state_dict(dense.state_dict())
    ids = torch.randint(0, 2, (4, 12))
    y1, h1 = tok(ids)
    y2, h2 = dense(torch.nn.functional.one_hot(ids, 2).float())
    close(y1, y2)
    close(h1, h2)
    y_last, _ = tok(ids, outputs="last")
    close(y_last, y1[:, -1])


def test_elman_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        grokfast.nn.ElmanRNN(2, 0)
    with pytest.raises(ValueError, match="activation"):
        grokfast.nn.ElmanRNN(2, 4, activation="gelu")
    with pytest.raises(ValueError, match="num_layers|single-layer"):
        grokfast.nn.ElmanRNN.from_torch(torch.nn.RNN(2, 4, num_layers=2, batch_first=True))
    with pytest.raises(ValueError, match="batch_first"):
        grokfast.nn.ElmanRNN.from_torch(torch.nn.RNN(2, 4))
    with pytest.raises(TypeError, match="rnn"):
        grokfast.nn.ElmanRNN.from_torch(torch.nn.GRU(2, 4, batch_first=True))
    with pytest.raises(TypeError, match="tokens"):
        grokfast.nn.ElmanRNN(2, 4, tokens=True)(torch.randn(1, 3, 2))
    with pytest.raises(ValueError, match="h0"):
        grokfast.nn.ElmanRNN(2, 4)(torch.randn(1, 3, 2), torch.zeros(2, 1, 4))


# ---------------------------------------------------------------- bad inputs

def _bad(**overrides):
    a = make(5, 2, 3, tokens=True)
    a.update(overrides)
    return a


@pytest.mark.parametrize("overrides,kwargs,error,match", [
    (dict(w_hh=torch.zeros(5, 5, dtype=torch.int32)), {}, TypeError, "w_hh"),
    (dict(w_hh=torch.zeros(5, 5, dtype=torch.float16)), {}, TypeError, "w_hh"),
    (dict(w_hh=torch.zeros(5, 4)), {}, ValueError, "w_hh: expected a square"),
    (dict(w_ih=torch.zeros(5, 3, dtype=torch.float64)), {}, TypeError, "w_ih: expected dtype"),
    (dict(x=torch.zeros(2, 3, 3, dtype=torch.float64)), {}, TypeError, "x: expected dtype"),
    (dict(x=torch.zeros(2, 3, dtype=torch.bool)), {}, TypeError, "x: expected integer"),
    (dict(w_ih=torch.zeros(4, 3)), {}, ValueError, "w_ih: expected shape"),
    (dict(x=torch.zeros(2, 3, 4)), {}, ValueError, r"x: expected shape \(2, 3, 3\)|x: expected shape"),
    (dict(x=torch.zeros(2, dtype=torch.long)), {}, ValueError, "x: token ids must have shape"),
    (dict(bias=torch.zeros(4)), {}, ValueError, "bias: expected shape"),
    (dict(h0=torch.zeros(3, 5)), {}, ValueError, "h0: expected a shape broadcastable"),
    (dict(w_out=torch.zeros(2, 4)), {}, ValueError, "w_out: expected shape"),
    (dict(b_out=torch.zeros(3)), {}, ValueError, "b_out: expected shape"),
    (dict(w_out=None), {}, ValueError, "b_out: given without w_out"),
    (dict(x=torch.tensor([[0, 1, 3], [0, 0, 0]])), {}, ValueError, r"x: token ids must lie in \[0, 3\)"),
    (dict(x=torch.tensor([[0, -1, 2], [0, 0, 0]])), {}, ValueError, "x: token ids must lie"),
    (dict(x=torch.zeros(2, 3, dtype=torch.long, device="meta")), {}, ValueError, "x: expected a tensor on cpu"),
    (dict(w_ih="weights"), {}, TypeError, "w_ih: expected a torch.Tensor"),
    ({}, dict(activation="gelu"), ValueError, "activation"),
    ({}, dict(outputs="first"), ValueError, "outputs"),
    ({}, dict(hidden="some"), ValueError, "hidden"),
    ({}, dict(backend="tpu"), ValueError, "backend"),
    ({}, dict(backend="cuda"), ValueError, "backend='cuda' needs tensors on a CUDA device"),
])
def test_bad_inputs(overrides, kwargs, error, match):
    with pytest.raises(error, match=match):
        rnn(**_bad(**overrides), **kwargs)


def test_zero_length_last_readout_is_an_error():
    with pytest.raises(ValueError, match="sequence length 0"):
        rnn(**make(5, 2, 0, tokens=True), outputs="last")


def test_mismatched_model_dimension():
    a = make(5, 2, 3, tokens=True, M=3)
    with pytest.raises(ValueError, match="w_ih: expected shape"):
        rnn(**dict(a, w_ih=a["w_ih"][:2]))
    with pytest.raises(ValueError, match="x: token ids must have shape"):
        rnn(**dict(a, x=a["x"][:2]))
    with pytest.raises(ValueError, match="bias: expected shape"):
        rnn(**dict(a, bias=a["bias"][0]))


def test_unsupported_sizes_on_gpu_backends():
    a = make(257, 2, 3, tokens=True)
    with pytest.raises(ValueError, match="hidden size 257 is unsupported on backend 'cuda-emulated'"):
        rnn(**a, backend="cuda-emulated")
    rnn(**a, backend="cpu")  # the CPU kernel has no such limit
    b = make(5, 2, 3, tokens=True, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32 only"):
        rnn(**b, backend="cuda-emulated")


def test_op_rejects_unknown_backend_directly():
    a = make(5, 2, 3, tokens=True, M=1)
    with pytest.raises(ValueError, match="unknown backend"):
        torch.ops.grokfast.rnn_forward(a["x"], a["w_ih"], a["w_hh"], None, None, None, None,
                                       0, 2, False, True, "gpu")


def test_missing_extension_says_how_to_rebuild(monkeypatch):
    import sys
    from grokfast import _ext
    _ext._load.cache_clear()
    monkeypatch.setitem(sys.modules, "grokfast._C", None)
    try:
        with pytest.raises(grokfast.ExtensionUnavailableError, match="pip install"):
            rnn(**make(3, 1, 2, tokens=True))
        info = grokfast.backends()
        assert info["cpu"] is False and "Rebuild" in info["error"]
    finally:
        monkeypatch.undo()
        _ext._load.cache_clear()
    assert grokfast.backends()["cpu"] is True


def test_backends_report():
    info = grokfast.backends()
    for key in ("cpu", "cuda", "cuda_compiled", "cuda_emulated"):
        assert isinstance(info[key], bool)
    assert info["cpu"] and info["cuda_emulated"]
    if os.environ.get("GROKFAST_CUDA") == "ON":  # .ci/run sets it whenever nvcc is present
        assert info["cuda_compiled"], "GROKFAST_CUDA=ON but the CUDA kernels were not built"
    if not info["cuda_compiled"]:
        assert info["cuda"] is False


@pytest.mark.parametrize("vocab", [2, 100])  # one-hot product and index_add_ paths
def test_token_embedding_gradient_any_vocabulary(backend, vocab):
    a = make(9, 4, 12, tokens=True, I=vocab, M=2, device=device_of(backend))
    a["w_ih"].requires_grad_(True)
    out = rnn(**a, activation="tanh", hidden="all", backend=backend)
    ours = torch.autograd.grad(out.y.square().sum(), a["w_ih"])[0]
    _, y = reference(a, "tanh", M=2)
    theirs = torch.autograd.grad(y.square().sum(), a["w_ih"])[0]
    torch.testing.assert_close(ours.cpu(), theirs.cpu(), atol=5e-4, rtol=5e-4)


def test_custom_op_path_matches_eager_path():
    """Plain tensors skip the dispatcher; compiled code and tensor subclasses go through
    torch.ops.grokfast.rnn_forward. Both must give the same values and gradients."""
    a = make(9, 4, 12, tokens=True, M=2)
    for k in ("w_ih", "w_hh", "bias", "h0", "w_out", "b_out"):
        a[k].requires_grad_(True)
    params = [a[k] for k in ("w_ih", "w_hh", "bias", "h0", "w_out", "b_out")]
    eager = rnn(**a, activation="relu", outputs="all", hidden="last")
    y, _, h_last = torch.ops.grokfast.rnn_forward(*[a["x"]] + params, 1, 2, True, True, "cpu")
    close(y, eager.y)
    close(h_last, eager.h)
    g_eager = torch.autograd.grad(eager.y.square().sum() + eager.h.sum(), params)
    g_op = torch.autograd.grad(y.square().sum() + h_last.sum(), params)
    for mine, other in zip(g_op, g_eager):
        close(mine, other)


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_gradients_many_models_on_two_threads(cpu_isa, tokens):
    # Big enough for both CPU threads, each running tiles of several models: the per-thread sums
    # must move to the right model's gradients, and a second call must start from zero.
    M = 3
    a = make(100, 40, 30, tokens=tokens, M=M)
    params = ["w_ih", "w_hh", "bias", "h0", "w_out", "b_out"]
    for k in params:
        a[k].requires_grad_(True)
    hs, y = reference(a, "relu", M=M)
    theirs = torch.autograd.grad(y.square().sum() + hs[:, :, -1].sum(), [a[k] for k in params])
    for _ in range(2):
        out = rnn(**a, activation="relu", hidden="all", backend="cpu")
        ours = torch.autograd.grad(out.y.square().sum() + out.h[:, :, -1].sum(),
                                   [a[k] for k in params])
        for name, mine, other in zip(params, ours, theirs):
            torch.testing.assert_close(mine, other, atol=5e-4, rtol=5e-4, msg=name)


@pytest.mark.parametrize("M", [None, 3])
def test_cpu_gradients_are_deterministic(cpu_isa, M):
    # The weight-gradient sums over batch tiles run on two threads; their order must not depend
    # on which thread finished first (a seeded run gives the same trajectory every time).
    a = make(100, 128, 12, tokens=True, M=M)
    params = ["w_ih", "w_hh", "bias", "w_out", "b_out"]
    for k in params:
        a[k].requires_grad_(True)
    first = None
    for _ in range(8):
        out = rnn(**a, activation="relu", backend="cpu")
        grads = torch.autograd.grad(out.y.square().sum(), [a[k] for k in params])
        if first is None:
            first = grads
        for name, mine, other in zip(params, grads, first):
            assert torch.equal(mine, other), name
