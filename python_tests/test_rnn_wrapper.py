"""The Python side of grokfast.ops.rnn and ElmanRNN: the eager fast paths must agree with the
plain attribute lookups and the custom op, and skipped outputs must stay skipped."""

import pytest
import torch

import grokfast
from grokfast.ops import rnn
from test_rnn import close, make, reference


def test_backward_skips_dh0_unless_asked():
    # want_dh0=False: the dh0 slot comes back empty (a null pointer to the kernel) and every
    # other output is unchanged.
    a = make(7, 5, 6, tokens=True, M=2)
    states = torch.randn(2, 5, 6, 7).tanh()
    gy = torch.randn(2, 5, 6, 2)
    args = (states, a["w_hh"], None, None, gy, a["w_out"], a["x"], a["h0"], 3, 0, 2,
            True, True, True, True, True, False)
    with_dh0 = torch.ops.grokfast.rnn_backward(*args, True, "cpu")
    without = torch.ops.grokfast.rnn_backward(*args, False, "cpu")
    assert with_dh0[2].shape == (2, 5, 7) and without[2].numel() == 0
    for i in (3, 4, 5, 6, 7):
        torch.testing.assert_close(without[i], with_dh0[i], rtol=0, atol=0)
    # dh0 = W_hh^T dz_0, checked through autograd against the reference recurrence.
    h0 = a["h0"].clone().requires_grad_(True)
    out = rnn(**dict(a, h0=h0), hidden="last")
    ours = torch.autograd.grad(out.y.square().sum(), h0)[0]
    ref_h0 = a["h0"].clone().requires_grad_(True)
    ys = torch.stack([grokfast.ref.rnn(**{k: (ref_h0 if k == "h0" else v)[m]
                                          for k, v in a.items()})[1] for m in range(2)])
    theirs = torch.autograd.grad(ys.square().sum(), ref_h0)[0]
    torch.testing.assert_close(ours, theirs, atol=5e-4, rtol=5e-4)


@pytest.mark.parametrize("hidden", ["all", "last", "none"])
@pytest.mark.parametrize("grad", [True, False])
def test_eager_outputs_match_custom_op(hidden, grad):
    a = make(9, 4, 5, tokens=True)
    if grad:
        a["w_hh"].requires_grad_(True)
    out = rnn(**a, hidden=hidden)
    y, h_all, h_last = torch.ops.grokfast.rnn_forward(
        *[t.unsqueeze(0) for t in (a["x"], a["w_ih"], a["w_hh"], a["bias"], a["h0"], a["w_out"],
                                   a["b_out"])], 0, 2, True, True, "cpu")
    close(out.y, y[0])
    if hidden == "none":
        assert out.h is None
    else:
        close(out.h, (h_all if hidden == "all" else h_last)[0])
    assert out.y.requires_grad == grad
    no_readout = rnn(a["x"], a["w_ih"], a["w_hh"], hidden=hidden)
    assert no_readout.y is None


@pytest.mark.parametrize("backend", ["cpu", "cuda-emulated"])
def test_token_range_checked_on_every_backend(backend):
    a = make(5, 2, 3, tokens=True)
    for bad, shown in ((torch.tensor([[0, 1, 3], [0, 0, 0]]), r"\[0, 3\]"),
                       (torch.tensor([[0, -1, 2], [0, 0, 0]]), r"\[-1, 2\]")):
        match = r"x: token ids must lie in \[0, 3\)" + (f".*{shown}" if backend != "cpu" else "")
        with pytest.raises(ValueError, match=match):
            rnn(**dict(a, x=bad), backend=backend)


def test_elman_reads_parametrized_weights():
    # parametrize moves the weight out of _parameters: the module must still use it.
    torch.manual_seed(0)
    m = grokfast.nn.ElmanRNN(3, 6, 2, tokens=True)
    class Symmetric(torch.nn.Module):
        def forward(self, w):
            return (w + w.t()) / 2

    class Twice(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    torch.nn.utils.parametrize.register_parametrization(m, "weight_hh", Symmetric())
    torch.nn.utils.parametrize.register_parametrization(m.readout, "weight", Twice())
    x = torch.randint(0, 3, (4, 5))
    y, h = m(x)
    out = rnn(x, m.weight_ih, m.weight_hh, m.bias, None, m.readout.weight, m.readout.bias)
    close(y, out.y)
    close(h[0], out.h)
    y.sum().backward()
    assert m.parametrizations.weight_hh.original.grad is not None
    assert m.readout.parametrizations.weight.original.grad is not None


def test_elman_functional_call_and_no_bias():
    torch.manual_seed(0)
    m = grokfast.nn.ElmanRNN(2, 5, 3, bias=False, readout_bias=False)
    assert m.bias is None and m.readout.bias is None
    x = torch.randn(4, 6, 2)
    new = {k: torch.randn_like(v) for k, v in m.named_parameters()}
    y, h = torch.func.functional_call(m, new, (x,))
    out = rnn(x, new["weight_ih"], new["weight_hh"], None, None, new["readout.weight"])
    close(y, out.y)
    close(h[0], out.h)
    y2, _ = m(x)
    assert not torch.allclose(y, y2)


@pytest.mark.parametrize("backend", ["cpu", "cuda-emulated"])
def test_kernels_read_w_ih_with_either_layout(backend):
    # The kernels take W_ih [H, I] with strides: in place (I, 1), or a transposed copy (1, H)
    # (what the GPU backends get). Both must give the op's result.
    from grokfast._ext import ext
    a = make(6, 3, 4, tokens=True)
    H, I = a["w_ih"].shape
    want = rnn(**a, backend=backend)
    for w, strides in ((a["w_ih"], (I, 1)), (a["w_ih"].t().contiguous(), (1, H))):
        y = torch.full_like(want.y, float("nan"))
        h = torch.full_like(want.h, float("nan"))
        ext().rnn_forward_call(backend, 1, 3, 4, I, H, 2, True, 0, False, a["x"].data_ptr(), 0,
                               4, 1, 0, w.data_ptr(), *strides, a["w_hh"].data_ptr(),
                               a["bias"].data_ptr(), a["h0"].data_ptr(), a["w_out"].data_ptr(),
                               a["b_out"].data_ptr(), 2, y.data_ptr(), 0, h.data_ptr(), 0)
        close(y, want.y)
        close(h, want.h)


@pytest.mark.parametrize("B,threads", [(5, "1"), (40, "2")])
def test_cpu_backward_overwrites_its_sums(cpu_isa, B, threads, monkeypatch):
    # The CPU kernel's weight-gradient sums are allocated without a fill: whatever the buffers
    # held before (NaN here) must not leak into the gradients. On two threads the first of the
    # model's two chunks stores its sums and the second adds to them.
    monkeypatch.setenv("GROKFAST_NUM_THREADS", threads)
    a = make(7, B, 6, tokens=True)
    states = torch.randn(B, 6, 7).tanh()
    gy = torch.randn(B, 6, 2)
    want = rnn_backward_sums(states, a, gy, torch.zeros)
    got = rnn_backward_sums(states, a, gy, lambda *s: torch.full(s, float("nan")))
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert want[4].abs().sum() > 0  # dW_hh was computed, not left zero


def rnn_backward_sums(states, a, gy, alloc):
    from grokfast._ext import ext
    B, T, H = states.shape
    I = a["w_ih"].shape[1]
    sums = (alloc(H), alloc(H, I), alloc(2, H), alloc(2), alloc(H, H))
    x = a["x"]
    ext().rnn_backward_call("cpu", 1, B, T, H, I, 2, 0, False, states.data_ptr(),
                            a["w_hh"].data_ptr(), 0, 0, 2, gy.data_ptr(), a["w_out"].data_ptr(),
                            x.data_ptr(), 0, *x.stride(), sums[0].data_ptr(), sums[1].data_ptr(),
                            I, 1, sums[2].data_ptr(), sums[3].data_ptr(), 0, 0, 0,
                            sums[4].data_ptr(), 0, 0)
    return sums


def token_problem(vocab, B, T, M, H):
    """make()'s weights without h0: the CPU kernels' prefix sharing needs a zero start."""
    a = make(H, B, T, tokens=True, I=vocab, O=3, M=M if M > 1 else None, seed=vocab * 1000 + B)
    del a["h0"]
    return a


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("vocab,B,T,M,outputs", [(2, 129, 12, 1, "all"), (3, 40, 7, 2, "all"),
                                                  (2, 64, 3, 3, "last"), (2, 1, 5, 1, "all"),
                                                  (5, 300, 4, 1, "all")])
def test_prefix_sharing_is_exact(cpu_isa, vocab, B, T, M, outputs, threads, monkeypatch):
    # From h0 = None the CPU forward runs the early steps once per distinct token prefix (on
    # two threads, one model's prefix subtrees are split between them); an explicit zero h0
    # takes the plain path. Both must agree bit for bit, and with the reference.
    monkeypatch.setenv("GROKFAST_NUM_THREADS", threads)
    a = token_problem(vocab, B, T, M, 37)
    lead = (M,) if M > 1 else ()
    shared = rnn(**a, outputs=outputs, hidden="all")
    plain = rnn(**a, h0=torch.zeros(lead + (B, 37)), outputs=outputs, hidden="all")
    torch.testing.assert_close(shared.y, plain.y, rtol=0, atol=0)
    torch.testing.assert_close(shared.h, plain.h, rtol=0, atol=0)
    close(shared.h, reference(a, "tanh", M if M > 1 else None)[0])


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("vocab,B,T,M", [(2, 129, 12, 1), (3, 40, 7, 2), (2, 70, 9, 3)])
def test_prefix_sharing_gradients(cpu_isa, vocab, B, T, M, threads, monkeypatch):
    # The CPU backward sums dW_hh's outer products per token prefix of h_{t-1} (from h0 = None;
    # on two threads each chunk of rows finds its own prefixes): every weight gradient must
    # match the reference's autograd.
    monkeypatch.setenv("GROKFAST_NUM_THREADS", threads)
    a = token_problem(vocab, B, T, M, 21)
    x = a.pop("x")
    target = torch.randn((M,) * (M > 1) + (B, T, 3), generator=torch.Generator().manual_seed(1))
    grads = []
    for run in (lambda w: rnn(x, **w).y, lambda w: reference(dict(w, x=x), "tanh", M if M > 1 else None)[1]):
        leaves = {k: v.clone().requires_grad_(True) for k, v in a.items()}
        grads.append(torch.autograd.grad((run(leaves) - target).square().sum(), list(leaves.values())))
    for name, ours, theirs in zip(a, *grads):
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=2e-4, msg=name)


def test_elman_h_n_from_the_kernel_on_both_paths():
    # With a readout the module asks the op for h_n as [1, B, H] directly (no view op on the
    # plain path); gradients through h_n, and the custom-op path torch.compile takes, must agree
    # with nn.RNN.
    torch.manual_seed(0)
    rnn_t, lin = torch.nn.RNN(3, 7, batch_first=True), torch.nn.Linear(7, 2)
    m = grokfast.nn.ElmanRNN.from_torch(rnn_t, lin)
    x, h0 = torch.randn(4, 5, 3), torch.randn(1, 4, 7)
    y, h_n = m(x, h0)
    seq, h_t = rnn_t(x, h0)
    assert h_n.shape == (1, 4, 7)
    close(h_n, h_t)
    ours = torch.autograd.grad(h_n.square().sum() + y.sum(), [m.weight_hh, m.weight_ih])
    theirs = torch.autograd.grad(h_t.square().sum() + lin(seq).sum(),
                                 [rnn_t.weight_hh_l0, rnn_t.weight_ih_l0])
    for mine, other in zip(ours, theirs):
        close(mine, other)
    y_c, h_c = torch.compile(m, backend="aot_eager", fullgraph=True)(x, h0)
    assert h_c.shape == (1, 4, 7)
    close(y_c, y)
    close(h_c, h_n)


def test_cpu_forward_keeps_no_stale_padding_between_shapes(cpu_isa):
    # The CPU forward keeps its padded weight copies between calls of one shape. H = 20, I = 5
    # and H = 17, I = 8 have the same padded size (K = 25 rows of 32 columns): the second call
    # must not read the first one's columns 17..19 as its padding.
    for H, I in ((20, 5), (17, 8), (20, 5)):
        a = make(H, 6, 4, tokens=False, I=I, O=3, seed=H)
        out = rnn(**a, hidden="all", backend="cpu")
        hs, y = reference(a, "tanh")
        close(out.h, hs)
        close(out.y, y)
