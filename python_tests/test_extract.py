"""Automaton extraction (grokfast.automata.extract): prefix trees, clustering, majority
machines, every model kind, and the trained parity network giving the 2-state machine."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grokfast.automata import MooreMachine, PrefixTree, extract, extract_from_states, parity
from grokfast.automata.extract import build_machine, leader_clusters, target_states
from grokfast.models import SequenceRNN
from grokfast.nn import ElmanRNN

DATA = Path(__file__).parent / "data"


def trained_parity() -> SequenceRNN:
    """ReLU, 100 units, trained 800 epochs on streaming parity (generalized at epoch 511)."""
    m = SequenceRNN(2, 2, 100)
    m.load_state_dict(torch.load(DATA / "parity_relu_h100_seed0.pt", weights_only=True))
    return m


def designed_parity() -> ElmanRNN:
    """A ReLU RNN that computes parity exactly: units (a, b, c, d) with even = a + b and
    odd = c + d; a' = relu(even - x), b' = relu(odd + x - 1), c' = relu(odd - x),
    d' = relu(even + x - 1)."""
    r = ElmanRNN(2, 4, 2, activation="relu", tokens=True)
    with torch.no_grad():
        r.weight_hh.copy_(torch.tensor([[1., 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]))
        r.weight_ih.copy_(torch.tensor([[0., -1], [0, 1], [0, -1], [0, 1]]))
        r.bias.copy_(torch.tensor([0., -1, 0, -1]))
        r.readout.weight.copy_(torch.tensor([[1., 1, 0, 0], [0, 0, 1, 1]]))
        r.readout.bias.zero_()
    return r


DESIGNED_H0 = torch.tensor([1., 0, 0, 0])


def brute_prefixes(seqs):
    out = {()}
    for s in seqs:
        for t in range(1, len(s) + 1):
            out.add(tuple(int(v) for v in s[:t]))
    return sorted(out, key=lambda p: (len(p), p))


# --------------------------------------------------------------------------------------------
# Prefix tree


@pytest.mark.parametrize("A,L", [(1, 0), (1, 4), (2, 0), (2, 1), (2, 5), (3, 3)])
def test_full_tree_is_shortlex_and_complete(A, L):
    tree = PrefixTree.full(A, L)
    expected = [()] + [tuple(int(v) for v in np.unravel_index(i, (A,) * d)) if d else ()
                       for d in range(1, L + 1) for i in range(A ** d)]
    assert tree.num_nodes == len(expected)
    assert [tuple(tree.prefix(n)) for n in range(tree.num_nodes)] == expected
    assert tree.max_depth == L
    for d in range(L + 1):
        lvl = tree.level(d)
        assert (tree.depth[lvl] == d).all() and lvl.stop - lvl.start == A ** d


@pytest.mark.parametrize("seqs", [
    [[0, 1, 1], [0, 1], [1], [0, 1, 1]],
    [[2, 0], [], [1, 1, 1, 1], [2, 0, 2]],
    np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]]),
])
def test_tree_from_sequences(seqs):
    tree = PrefixTree.from_sequences(seqs, 3)
    assert [tuple(tree.prefix(n)) for n in range(tree.num_nodes)] == brute_prefixes(seqs)
    assert (tree.parent[1:] < np.arange(1, tree.num_nodes)).all()
    for i, s in enumerate(seqs):  # paths: the node after each prefix of each sequence
        for t in range(len(s) + 1):
            assert tuple(tree.prefix(tree.paths[i, t])) == tuple(int(v) for v in s[:t])


@pytest.mark.parametrize("seqs,A,match", [
    ([[0, 2]], 2, "symbols must lie in"),
    ([[0, -1]], 2, "symbols must lie in"),
    ([], 2, "at least one sequence"),
    ([[0.5, 1.0]], 2, "integer symbols"),
    ([[[0, 1]]], 2, "1-D"),
    ("0101", 2, "expected an int array"),
])
def test_tree_bad_sequences(seqs, A, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PrefixTree.from_sequences(seqs, A)


def test_tree_bad_sizes():
    with pytest.raises(ValueError, match="num_symbols"):
        PrefixTree.full(0, 3)
    with pytest.raises(ValueError, match="max_length"):
        PrefixTree.full(2, -1)
    with pytest.raises(ValueError, match="max_length"):
        PrefixTree.full(2, 40)


# --------------------------------------------------------------------------------------------
# Majority machine, conflicts, clustering


def test_build_machine_majority_and_conflicts():
    # tree over {0, 1} up to length 2: nodes (), 0, 1, 00, 01, 10, 11
    tree = PrefixTree.full(2, 2)
    labels = np.array([0, 1, 2, 0, 2, 2, 2])
    outputs = np.array([1, 0, 1, 0, 1, 1, 0])
    m, conflicts, conflicting, out_conflicts = build_machine(tree, labels, outputs)
    # state 0 = {(), 00}: on 0 -> {1 (from ()), 2? no: 00's child absent}; edges:
    # ()->0 (0,0->1), ()->1 (0,1->2), 0->00 (1,0->0), 0->01 (1,1->2), 1->10 (2,0->2), 1->11 (2,1->2)
    assert m.transitions.tolist() == [[1, 2], [0, 2], [2, 2]]
    assert (conflicts, conflicting) == (0, 0)
    # outputs: state 0 = {() root (does not vote: 00 is there), 00 -> 0}; state 2 = {1, 01, 10,
    # 11} -> votes 1, 1, 1, 0: majority 1, one conflict
    assert m.outputs.tolist() == [0, 0, 1]
    assert out_conflicts == 1
    assert m.initial == 0

    labels = np.array([0, 1, 1, 0, 1, 0, 1])  # 0 -> 1 -> {0, 1}: conflicts on (1, 0) and (1, 1)
    m, conflicts, conflicting, _ = build_machine(tree, labels, outputs)
    # (1, 0): 0->00 gives 0, 1->10 gives 0: no conflict; (1, 1): 01 -> 1, 11 -> 1
    assert m.transitions.tolist() == [[1, 1], [0, 1]]
    labels = np.array([0, 1, 1, 0, 1, 1, 1])  # (1, 0): 00 -> 0 and 10 -> 1: tie, smallest wins
    m, conflicts, conflicting, _ = build_machine(tree, labels, outputs)
    assert m.transitions[1, 0] == 0 and conflicts == 1 and conflicting == 1


def test_undefined_transitions_are_reported():
    tree = PrefixTree.full(2, 2)
    labels = np.arange(7)  # every node its own state: leaves have no outgoing edges
    ex = extract_from_states(tree, torch.arange(7.)[:, None] * 10, np.zeros(7, np.int64), eps=1)
    assert ex.num_states == 7 and ex.undefined_transitions == 8
    assert (ex.labels == labels).all()


@pytest.mark.parametrize("seed", range(4))
def test_leader_clusters_match_greedy_loop(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 3, generator=g)
    eps = 0.6
    labels = leader_clusters(x, eps)
    leaders, expect = [], []
    for i in range(x.shape[0]):  # the paper code's greedy loop, literally
        for k, li in enumerate(leaders):
            if float(((x[i].double() - x[li].double()) ** 2).sum()) <= eps * eps:
                expect.append(k)
                break
        else:
            leaders.append(i)
            expect.append(len(leaders) - 1)
    assert labels.tolist() == expect


# --------------------------------------------------------------------------------------------
# Models


@pytest.mark.parametrize("method", ["components", "leader"])
def test_designed_parity_network(method):
    ex = extract(designed_parity(), h0=DESIGNED_H0, max_length=6, eps=1e-3, method=method,
                 target=parity())
    # even after 0 / after 1 and odd after 0 / after 1 are four points; h0 is even-after-0
    assert ex.num_states == 4
    assert ex.num_states_minimized == 2
    assert ex.minimized == parity().minimize()
    assert ex.equals_target and ex.counterexample is None
    assert ex.output_accuracy == 1.0
    assert ex.transition_conflicts == 0 and ex.undefined_transitions == 0


def test_wrong_network_has_counterexample():
    r = designed_parity()
    with torch.no_grad():
        r.readout.weight.copy_(torch.tensor([[1., 0, 0, 1], [0, 1, 1, 0]]))  # outputs "last bit"
    ex = extract(r, h0=DESIGNED_H0, max_length=4, eps=1e-3, target=parity())
    assert ex.equals_target is False
    cex = ex.counterexample
    assert cex is not None and len(cex) >= 1
    assert ex.machine.run(cex)[-1] != parity().run(cex)[-1]
    assert ex.output_accuracy < 1.0


def test_trained_parity_checkpoint_gives_two_state_machine():
    m = trained_parity()
    ex = extract(m, target=parity())
    assert ex.num_states_minimized == 2
    assert ex.equals_target
    assert ex.minimized == parity().minimize()
    assert ex.output_accuracy == 1.0
    assert ex.tree.num_nodes == 2047
    s = ex.summary()
    assert s["num_states"] == ex.num_states and s["num_states_minimized"] == 2
    assert s["equals_target"] is True
    lead = extract(m, target=parity(), method="leader")
    assert lead.equals_target and lead.num_states_minimized == 2


def test_extraction_eps_rel_and_eps():
    m = trained_parity()
    a = extract(m, eps_rel=0.1)
    std = a.states.double().std(dim=0, unbiased=False).norm()
    assert a.eps == pytest.approx(0.1 * float(std))
    b = extract(m, eps=a.eps)
    assert (a.labels == b.labels).all()
    tiny = extract(m, eps=0.0)
    assert tiny.num_states >= a.num_states
    huge = extract(m, eps=float("inf"))
    assert huge.num_states == 1


def _sequence_rnn_as_torch(m: SequenceRNN):
    r = m.rnn
    t = nn.RNN(2, r.hidden_size, nonlinearity=r.activation, batch_first=True)
    with torch.no_grad():
        t.weight_ih_l0.copy_(r.weight_ih)
        t.weight_hh_l0.copy_(r.weight_hh)
        t.bias_ih_l0.copy_(r.bias)
        t.bias_hh_l0.zero_()
    return t, r.readout, m.h0.reshape(1, 1, -1)


def test_torch_rnn_and_callable_agree_with_elman():
    m = trained_parity()
    ref = extract(m, target=parity(), max_length=7)
    t, readout, h0 = _sequence_rnn_as_torch(m)
    ex = extract(t, readout=readout, h0=h0, target=parity(), max_length=7, eps=ref.eps)
    assert torch.allclose(ex.states, ref.states, atol=1e-5)
    assert (ex.labels == ref.labels).all() and ex.equals_target

    def fn(ids):
        hid, _ = t(nn.functional.one_hot(ids, 2).float(), h0.expand(1, ids.shape[0], -1).contiguous())
        return hid, readout(hid)

    ex = extract(fn, num_symbols=2, h0=m.h0, target=parity(), max_length=7, eps=ref.eps)
    assert (ex.labels == ref.labels).all() and ex.equals_target
    # without h0 the initial state of a callable is a state of its own
    ex = extract(fn, num_symbols=2, target=parity(), max_length=7, eps=ref.eps)
    assert ex.labels[0] == 0 and (ex.labels[1:] != 0).all()
    assert ex.equals_target


@pytest.mark.parametrize("kind,lstm_state,width", [("gru", "hc", 2 * 5), ("lstm", "hc", 2 * 2 * 5),
                                                   ("lstm", "h", 2 * 5)])
def test_gru_lstm_run(kind, lstm_state, width):
    torch.manual_seed(0)
    cls = nn.GRU if kind == "gru" else nn.LSTM
    net = cls(3, 5, num_layers=2, batch_first=True)
    head = nn.Linear(5, 2)
    ex = extract(net, readout=head, max_length=3, eps_rel=0.05, lstm_state=lstm_state)
    assert ex.states.shape == (1 + 3 + 9 + 27, width)
    # the tree states equal running the network over each prefix directly
    node = 22
    seq = torch.tensor(ex.tree.prefix(node))[None]
    out = net(nn.functional.one_hot(seq, 3).float())[1]
    h = out[0] if kind == "lstm" else out
    got = ex.states[node]
    assert torch.allclose(got[:10], h.permute(1, 0, 2).reshape(-1), atol=1e-6)
    assert ex.machine.num_symbols == 3


def test_model_errors():
    m = trained_parity()
    with pytest.raises(ValueError, match="eps"):
        extract(m, eps=0.1, eps_rel=0.1)
    with pytest.raises(ValueError, match="eps"):
        extract(m, eps=-1.0)
    with pytest.raises(ValueError, match="method"):
        extract(m, method="kmeans")
    with pytest.raises(ValueError, match="eps_rel"):
        extract(m, eps_rel=-0.1)
    with pytest.raises(ValueError, match="lstm_state"):
        extract(nn.LSTM(2, 3, batch_first=True), readout=nn.Linear(3, 2), max_length=2,
                lstm_state="c")
    with pytest.raises(ValueError, match="max_length"):
        extract(m, max_length=-1)
    with pytest.raises(ValueError, match="num_symbols"):
        extract(m, num_symbols=3)
    with pytest.raises(ValueError, match="num_symbols"):
        extract(lambda ids: None)
    with pytest.raises(TypeError, match="must return"):
        extract(lambda ids: ids, num_symbols=2, max_length=2)
    with pytest.raises(ValueError, match="readout"):
        extract(nn.RNN(2, 4, batch_first=True), max_length=2)
    with pytest.raises(ValueError, match="input size 3"):
        extract(nn.RNN(3, 4, batch_first=True), readout=nn.Linear(4, 2), num_symbols=2)
    with pytest.raises(ValueError, match="bidirectional"):
        extract(nn.GRU(2, 4, bidirectional=True), readout=nn.Linear(8, 2), max_length=2)
    with pytest.raises(TypeError, match="target"):
        extract(m, target="parity", max_length=2)
    with pytest.raises(TypeError, match="model"):
        extract(42, num_symbols=2, max_length=2)


def test_target_states_follow_the_tree():
    tree = PrefixTree.full(2, 5)
    q = target_states(parity(), tree)
    for n in range(tree.num_nodes):
        assert q[n] == int(tree.prefix(n).sum() % 2)
    with pytest.raises(ValueError, match="target"):
        target_states(MooreMachine([[0, 0, 0]], [0]), tree)
