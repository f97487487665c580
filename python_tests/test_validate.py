"""The length-10,000 check of an extracted automaton: the fused tracking kernel
(grokfast.ops.rnn_track) against a Python loop on every backend, and grokfast.automata.validate
end to end on the trained parity network."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import device_of
from grokfast.automata import MooreMachine, extract, parity, validate
from grokfast.automata.validate import state_map
from grokfast.ops import random_symbols, rnn_track
from grokfast.ref import rnn_track_reference
from test_extract import DESIGNED_H0, _sequence_rnn_as_torch, designed_parity, trained_parity


def random_problem(H, I, O, S, K, Q, seed):
    g = torch.Generator().manual_seed(seed)
    w = dict(w_ih=torch.randn(H, I, generator=g), w_hh=torch.randn(H, H, generator=g) / H ** 0.5,
             bias=torch.randn(H, generator=g) * 0.1, h0=torch.randn(H, generator=g),
             w_out=torch.randn(O, H, generator=g), b_out=torch.randn(O, generator=g))
    mnext = torch.randint(0, K, (K, I), generator=g)
    mnext[0, 0] = -1  # an undefined transition: the machine gets lost there
    tables = dict(centers=torch.randn(S, H, generator=g) * 0.5,
                  center_state=torch.randint(-1, K, (S,), generator=g),
                  machine_next=mnext, machine_initial=K - 1,
                  target_next=torch.randint(0, Q, (Q, I), generator=g),
                  target_out=torch.randint(0, O, (Q,), generator=g), target_initial=0)
    return w, tables


SHAPES = [  # H, I, O, S, K, Q, B, T
    (1, 2, 2, 1, 1, 1, 1, 1),
    (3, 2, 2, 4, 3, 2, 5, 17),
    (17, 3, 4, 6, 5, 3, 7, 50),
    (100, 2, 2, 9, 2, 2, 9, 40),
    (130, 4, 3, 33, 7, 4, 3, 12),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_track_matches_python_loop(backend, shape, activation):
    H, I, O, S, K, Q, B, T = shape
    w, tables = random_problem(H, I, O, S, K, Q, seed=H * 31 + T)
    x = random_symbols(B, T, I, seed=3)
    ref = rnn_track_reference(x, **w, activation=activation, **tables)
    dev = device_of(backend)
    wd = {k: v.to(dev) for k, v in w.items()}
    td = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in tables.items()}
    got = rnn_track(**wd, activation=activation, x=x.to(dev), backend=backend, **td)
    gen = rnn_track(**wd, activation=activation, num_sequences=B, length=T, seed=3,
                    backend=backend, **td)
    for name, a, b, r in zip(got._fields, got, gen, ref):
        assert torch.equal(a, b), name  # generated symbols equal random_symbols
        if name == "max_distance":
            torch.testing.assert_close(a.cpu(), r, atol=1e-4, rtol=1e-5)
        else:
            assert torch.equal(a.cpu(), r), name


def test_track_empty_and_noncontiguous(backend):
    w, tables = random_problem(5, 2, 2, 3, 2, 2, seed=1)
    dev = device_of(backend)
    wd = {k: v.to(dev) for k, v in w.items()}
    td = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in tables.items()}
    for B, T in ((0, 5), (3, 0)):
        r = rnn_track(**wd, activation="tanh", num_sequences=B, length=T, backend=backend, **td)
        assert r.first_disagreement.shape == (B,) and (r.agree_steps == 0).all()
    x = random_symbols(6, 10, 2, seed=0)
    xt = x.t().contiguous().t()  # same values, transposed strides
    a = rnn_track(**wd, activation="tanh", x=x.to(dev), backend=backend, **td)
    b = rnn_track(**wd, activation="tanh", x=xt.to(dev), backend=backend, **td)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_random_symbols():
    a = random_symbols(4, 1000, 3, seed=7)
    assert a.shape == (4, 1000) and a.dtype == torch.int64
    assert torch.equal(a, random_symbols(4, 1000, 3, seed=7))
    assert not torch.equal(a, random_symbols(4, 1000, 3, seed=8))
    assert torch.equal(a[:, :10], random_symbols(4, 10, 3, seed=7))  # a prefix, at any length
    counts = torch.bincount(a.reshape(-1), minlength=3).double() / a.numel()
    assert (counts - 1 / 3).abs().max() < 0.03
    with pytest.raises(ValueError, match="seed"):
        random_symbols(1, 1, 2, seed=-1)
    with pytest.raises(ValueError, match="num_symbols"):
        random_symbols(1, 1, 0, seed=0)


@pytest.mark.parametrize("change,match", [
    (dict(w_hh=torch.zeros(4, 5)), "w_hh"),
    (dict(w_hh=torch.zeros(5, 5, dtype=torch.float64)), "w_hh"),
    (dict(w_ih=torch.zeros(4, 2)), "w_ih"),
    (dict(w_out=None), "w_out"),
    (dict(centers=torch.zeros(3, 4)), "centers"),
    (dict(center_state=torch.zeros(2, dtype=torch.int64)), "center_state"),
    (dict(center_state=torch.full((3,), 5)), "center_state"),
    (dict(machine_next=torch.zeros(2, 3, dtype=torch.int64)), "machine_next"),
    (dict(target_next=torch.full((2, 2), -1)), "target_next"),
    (dict(target_out=torch.zeros(3, dtype=torch.int64)), "target_out"),
    (dict(machine_initial=2), "machine_initial"),
    (dict(center_state=torch.zeros(3)), "center_state"),
    (dict(x=torch.full((2, 3), 2)), "x"),
    (dict(x=torch.zeros(2, 3, dtype=torch.int64), num_sequences=2), "either"),
    (dict(num_sequences=-1), "num_sequences"),
    (dict(activation="gelu"), "activation"),
    (dict(h0=torch.zeros(3)), "h0"),
    (dict(bias=torch.zeros(4)), "bias"),
    (dict(b_out=torch.zeros(3)), "b_out"),
    (dict(target_initial=5), "target_initial"),
    (dict(x=torch.zeros(2, 3, 1, dtype=torch.int64)), "x"),
    (dict(x=torch.zeros(2, 3)), "x"),
    (dict(length=2 ** 30), "length"),
    (dict(machine_next=torch.full((2, 2), 7)), "machine_next"),
])
def test_track_bad_inputs(change, match):
    w, tables = random_problem(5, 2, 2, 3, 2, 2, seed=1)
    kw = {**w, **tables, "activation": "tanh", "num_sequences": 2, "length": 3}
    if "x" in change:
        kw.pop("num_sequences"), kw.pop("length")
    kw.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        rnn_track(**kw)


def test_state_map_follows_equivalence():
    raw = MooreMachine([[1, 2], [3, 2], [2, 1], [1, 2], [0, 0]], [0, 0, 1, 0, 1])
    m = raw.minimize()
    sm = state_map(raw, m)
    assert sm[4] == -1  # unreachable
    for s in range(4):
        assert m.outputs[sm[s]] == raw.outputs[s]


def test_validate_trained_parity_at_length_10000(backend):
    m = trained_parity().to(device_of(backend))
    ex = extract(m, target=parity())
    n = 16 if backend != "cuda-emulated" else 4
    v = validate(m, ex, num_sequences=n, length=10_000, seed=0, backend=backend)
    assert v.length == 10_000 and v.num_sequences == n
    assert v.all_agree and (v.agreement == 1.0).all()
    assert (v.accuracy == 1.0).all()
    # centers are cluster means; components chain points, so the distance may exceed eps
    assert np.isfinite(v.max_distance).all() and v.max_distance.max() < 1.0
    s = v.summary()
    assert s["agreeing_sequences"] == n and s["first_disagreement"] is None


def test_validate_raw_machine_and_explicit_sequences():
    m = trained_parity()
    ex = extract(m, target=parity())
    seqs = random_symbols(8, 300, 2, seed=1)
    a = validate(m, ex, sequences=seqs, machine="minimized")
    b = validate(m, ex, num_sequences=8, length=300, seed=1)
    assert np.array_equal(a.first_disagreement, b.first_disagreement)
    raw = validate(m, ex, sequences=seqs, machine="raw")
    assert (raw.accuracy == 1.0).all()
    # the raw machine names clusters; the network may settle in a redundant copy of a state
    assert (raw.agreement <= a.agreement).all()


def test_validate_detects_a_wrong_automaton():
    r = designed_parity()
    ex = extract(r, h0=DESIGNED_H0, max_length=5, eps=1e-3, target=parity())
    wrong = MooreMachine([[0, 0], [1, 1]], [0, 1])  # "never changes state"
    v = validate(r, ex, num_sequences=20, length=200, seed=0, h0=DESIGNED_H0, target=wrong)
    assert v.all_agree  # the network still follows its own extracted automaton
    assert (v.accuracy < 1.0).all()  # but not the wrong target
    # scramble the centers: the nearest state no longer matches the automaton
    ex.centers = ex.centers.roll(1, dims=0)
    v = validate(r, ex, num_sequences=20, length=200, seed=0, h0=DESIGNED_H0)
    assert not v.all_agree and (v.first_disagreement >= 0).any()
    assert v.summary()["first_disagreement"] is not None


def test_validate_torch_rnn_matches_kernel():
    m = trained_parity()
    ex_k = extract(m, target=parity())
    t, readout, h0 = _sequence_rnn_as_torch(m)
    ex_t = extract(t, readout=readout, h0=h0, target=parity(), eps=ex_k.eps)
    a = validate(m, ex_k, num_sequences=5, length=500, seed=2)
    b = validate(t, ex_t, num_sequences=5, length=500, seed=2, readout=readout, h0=h0)
    assert np.array_equal(a.first_disagreement, b.first_disagreement)
    assert np.array_equal(a.accuracy, b.accuracy)
    np.testing.assert_allclose(a.max_distance, b.max_distance, rtol=1e-3, atol=1e-4)


def test_validate_errors():
    m = trained_parity()
    ex = extract(m, max_length=3)
    with pytest.raises(TypeError, match="extraction"):
        validate(m, "automaton")
    with pytest.raises(ValueError, match="machine"):
        validate(m, ex, machine="smallest")
    with pytest.raises(ValueError, match="length"):
        validate(m, ex, length=-5)
    with pytest.raises(ValueError, match="sequences"):
        validate(m, ex, sequences=torch.full((2, 3), 2))
    with pytest.raises(ValueError, match="sequences"):
        validate(m, ex, sequences=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="sequences"):
        validate(m, ex, sequences=torch.zeros(2, 3, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_sequences"):
        validate(m, ex, num_sequences=-1)
    with pytest.raises(ValueError, match="target"):
        validate(m, ex, target=MooreMachine([[0, 0, 0]], [0]))
    with pytest.raises(ValueError, match="readout"):
        validate(nn.RNN(2, 3, batch_first=True), ex, num_sequences=1, length=2)


def test_state_map_reentered_initial_with_a_twin():
    # state 0 (output 1) and state 1 (output 0) have the same successors: starting in either is
    # the same, but once re-entered state 0 emits 1: it maps to its own class, not the start's
    raw = MooreMachine([[1, 0], [1, 0]], [1, 0])
    m = raw.minimize()
    sm = state_map(raw, m)
    assert m.outputs[sm[0]] == 1 and m.outputs[sm[1]] == 0


def test_too_many_centers_on_gpu_backends():
    w, tables = random_problem(5, 2, 2, 3, 2, 2, seed=1)
    tables = dict(tables, centers=torch.zeros(2049, 5),
                  center_state=torch.zeros(2049, dtype=torch.int64))
    with pytest.raises(ValueError, match="centers: at most 2048 centers on backend 'cuda-emulated'"):
        rnn_track(**w, **tables, activation="tanh", num_sequences=1, length=2,
                  backend="cuda-emulated")
    r = rnn_track(**w, **tables, activation="tanh", num_sequences=1, length=2, backend="cpu")
    assert r.agree_steps.shape == (1,)


def test_float64_model_takes_the_stepwise_path():
    m = trained_parity().double()
    ex = extract(m, target=parity(), max_length=6)
    assert ex.equals_target
    v = validate(m, ex, num_sequences=3, length=400, seed=0)
    w = validate(trained_parity(), extract(trained_parity(), target=parity(), max_length=6),
                 num_sequences=3, length=400, seed=0)
    assert v.all_agree and (v.accuracy == 1.0).all()
    assert np.array_equal(v.first_disagreement, w.first_disagreement)
