"""grokfast.automata.dynamics: merger statistics (against brute-force pair enumeration) and
the training phases."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import grokfast.pairs as P
from grokfast.automata import MooreMachine, parity, random_automaton
from grokfast.automata.dynamics import (FINITE_AUTOMATON, MERGING, PHASES, RANDOM,
                                        TREE_FITTING, PhaseTracker, first_epoch_in_phase,
                                        merger_stats, phase_labels, refinement_levels)
from grokfast.automata.extract import PrefixTree, extract, target_states
from grokfast.nn import ElmanRNN


# ---- brute force ----------------------------------------------------------------------------

def _words(A, k):
    for n in range(k + 1):
        yield from itertools.product(range(A), repeat=n)


def _emitted(machine: MooreMachine, state: int, word) -> int:
    """The output after reading ``word`` from ``state``; -1 for the sink of an undefined
    transition (the empty word: the state's own output)."""
    s = state
    for a in word:
        if s < 0:
            return -1
        s = int(machine.transitions[s, a])
    return -1 if s < 0 else int(machine.outputs[s])


def _agree(machine, q_u, q_v, k):
    return all(_emitted(machine, q_u, w) == _emitted(machine, q_v, w)
               for w in _words(machine.num_symbols, k))


def brute_force(ext, target, L):
    tree = ext.tree
    q = target_states(target, tree)
    depth = tree.depth
    X = ext.states.double().numpy()
    nodes = range(1, tree.num_nodes)
    merged = within = agreeing = merged_agreeing = 0
    by_length = np.zeros((L + 1, L + 1), dtype=np.int64)
    for u, v in itertools.combinations(nodes, 2):
        same = ext.labels[u] == ext.labels[v]
        k = L - max(depth[u], depth[v])
        if q[u] < 0 or q[v] < 0:  # the sink agrees only with the sink
            ok = q[u] < 0 and q[v] < 0
        else:
            ok = _agree(target, int(q[u]), int(q[v]), k)
        merged += same
        within += np.sqrt(((X[u] - X[v]) ** 2).sum()) <= ext.eps
        agreeing += ok
        merged_agreeing += ok and same
        if ok and not same:
            i, j = sorted((depth[u], depth[v]))
            by_length[i, j] += 1
    return dict(pairs_within_eps=int(within), merged_pairs=int(merged),
                merged_agreeing_pairs=int(merged_agreeing), agreeing_pairs=int(agreeing),
                merged_agreeing_fraction=merged_agreeing / merged if merged else None,
                agreeing_unmerged_by_length=by_length.tolist())


def random_case(seed, *, method, num_states=3, partial=False):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(2, 6))
    seqs = [rng.integers(0, 2, int(rng.integers(0, L + 1))) for _ in range(int(rng.integers(3, 12)))]
    seqs.append(rng.integers(0, 2, L))
    tree = PrefixTree.from_sequences(seqs, 2)
    N = tree.num_nodes
    # a few centres, points on them (exact duplicates) or jittered around them
    centres = rng.normal(0, 1, (4, 3))
    X = centres[rng.integers(0, 4, N)] + rng.normal(0, 0.05, (N, 3)) * (rng.random((N, 1)) < 0.5)
    states = torch.from_numpy(X.astype(np.float32))
    eps = 0.08
    if method == "components":
        labels = P.components(states, eps).numpy()
    else:  # arbitrary clusters: the merged pairs need not be the eps pairs
        labels = rng.integers(0, 5, N)
    target = random_automaton(num_states, 2, seed=seed)
    if partial:
        t = target.transitions.copy()
        t[rng.integers(0, num_states), rng.integers(0, 2)] = -1
        target = MooreMachine(t, target.outputs, target.initial)
    ext = SimpleNamespace(tree=tree, labels=labels, states=states, eps=eps, method=method)
    return ext, target, L


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("method", ["components", "leader"])
def test_merger_stats_match_brute_force(seed, method):
    ext, target, L = random_case(seed, method=method, num_states=2 + seed % 4,
                                 partial=seed % 3 == 2)
    got = merger_stats(ext, target)
    assert got == brute_force(ext, target, L)


def test_merger_stats_longer_horizon_and_parity():
    ext, _, L = random_case(3, method="components")
    got = merger_stats(ext, parity(), max_length=L + 2)
    assert got == brute_force(ext, parity(), L + 2)
    assert len(got["agreeing_unmerged_by_length"]) == L + 3
    with pytest.raises(ValueError, match=r"max_length: expected an integer >= the tree's depth"):
        merger_stats(ext, parity(), max_length=L - 1)
    with pytest.raises(TypeError, match="target: expected a MooreMachine"):
        merger_stats(ext, "parity")


def test_refinement_levels_are_k_equivalence():
    for seed in range(6):
        m = random_automaton(6, 2, seed=seed, n_outputs=2)
        levels = refinement_levels(m, 4)
        for k in range(5):
            for a, b in itertools.combinations(range(6), 2):
                assert (levels[k, a] == levels[k, b]) == _agree(m, a, b, k)
    with pytest.raises(ValueError, match="levels: expected an integer >= 0"):
        refinement_levels(parity(), -1)


def test_exact_count_paths_agree_with_count_pairs():
    """Tight big clusters (counted without distances), a loose big cluster (a chain, one
    eps-component wider than eps) and small clusters, against one full count_pairs."""
    rng = np.random.default_rng(0)
    tight = [c + rng.normal(0, 0.004, (300, 8)) for c in (np.zeros(8), np.full(8, 5.0))]
    chain = np.linspace(0, 1, 400)[:, None] * np.eye(8)[0] + 10.0  # spacing 0.0025
    chain = chain + rng.normal(0, 0.0003, chain.shape)
    small = [c + rng.normal(0, 0.02, (int(rng.integers(1, 6)), 8))
             for c in rng.normal(0, 1, (20, 8)) * 20 - 30]
    X = torch.from_numpy(np.concatenate(tight + [chain] + small).astype(np.float32))
    X = X[torch.from_numpy(rng.permutation(X.shape[0]))]
    X = torch.cat([torch.zeros(1, 8), X])  # the root row is left out
    eps = 0.1
    n = X.shape[0]
    tree_small = PrefixTree.from_sequences([np.zeros(n - 1, np.int64)], 2)  # a path of n nodes
    labels = P.components(X, eps).numpy()
    ext = SimpleNamespace(tree=tree_small, labels=labels, states=X, eps=eps,
                          method="components")
    expected = int(P.count_pairs(X[1:], eps))
    assert merger_stats(ext, parity())["pairs_within_eps"] == expected
    ext.method = "leader"
    assert merger_stats(ext, parity())["pairs_within_eps"] == expected


def test_on_a_real_extraction():
    torch.manual_seed(0)
    model = ElmanRNN(2, 16, 2, tokens=True)
    ext = extract(model, max_length=5, target=parity())
    got = merger_stats(ext, parity())
    assert got == brute_force(ext, parity(), 5)
    assert got["pairs_within_eps"] == int(P.count_pairs(ext.states[1:], ext.eps))


# ---- phases ---------------------------------------------------------------------------------

def _records(states, acc, equal=None, undefined=None):
    n = len(states)
    equal = equal or [False] * n
    undefined = undefined or [0] * n
    return [{"epoch": i + 1, "num_states": s, "output_accuracy": a, "equals_target": e,
             "undefined_transitions": u}
            for i, (s, a, e, u) in enumerate(zip(states, acc, equal, undefined))]


def test_phases_of_a_typical_run():
    states = [7, 7, 9, 20, 40, 42, 41, 37, 30, 12, 9, 9]
    acc = [0.5, 0.5, 0.6, 0.8, 0.92, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    equal = [False] * 10 + [True, True]
    got = phase_labels(_records(states, acc, equal))
    # 9 >= 1.25 * 7: the tree has expanded before its outputs fit
    assert got == [RANDOM] * 2 + [TREE_FITTING] * 5 + [MERGING] * 3 + [FINITE_AUTOMATON] * 2
    tracker = PhaseTracker()
    assert [tracker.update(s, a, e, True) for s, a, e in zip(states, acc, equal)] == got
    assert tracker.peak == 42 and tracker.phase == FINITE_AUTOMATON


def test_phase_rules_in_detail():
    # the drop is measured from the peak since the fit was reached: 10 -> 9 is 10% (merging)
    assert phase_labels(_records([10, 9], [0.95, 0.95])) == [TREE_FITTING, MERGING]
    assert phase_labels(_records([10, 9], [0.95, 0.95]), merge_drop=0.2) == [TREE_FITTING] * 2
    # falling below the threshold resets the peak
    assert phase_labels(_records([30, 30, 10, 9], [0.95, 0.5, 0.95, 0.95])) == \
        [TREE_FITTING, RANDOM, TREE_FITTING, MERGING]
    # equal to the target but incomplete is not a finite automaton
    assert phase_labels(_records([5], [1.0], [True], [1])) == [TREE_FITTING]
    # equal and complete wins even below the fit threshold; unknown accuracy is random unless
    # the state count has grown by the growth factor over the first one
    assert phase_labels(_records([2, 4], [0.5, None], [True, None])) == \
        [FINITE_AUTOMATON, TREE_FITTING]
    assert phase_labels(_records([8, 9, 10, 9], [0.5] * 4)) == \
        [RANDOM, RANDOM, TREE_FITTING, RANDOM]  # 10 >= 1.25 * 8; 9 is back below and unfitted
    assert phase_labels(_records([8, 9, 10, 9], [0.5] * 4), growth=0.1) == \
        [RANDOM, TREE_FITTING, TREE_FITTING, MERGING]
    assert phase_labels(_records([2, 3], [None, None]), growth=0.0) == [RANDOM, TREE_FITTING]
    assert phase_labels(_records([4, 4], [0.85, 0.85]), fit_threshold=0.8) == [TREE_FITTING] * 2
    # records without an extraction keep the tracker as it was
    recs = _records([10, 9], [0.95, 0.95])
    recs.insert(1, {"epoch": 1.5, "train_loss": 0.1})
    assert phase_labels(recs) == [TREE_FITTING, None, MERGING]
    assert set(PHASES) == {RANDOM, TREE_FITTING, MERGING, FINITE_AUTOMATON}


def test_first_epoch_in_phase_and_bad_settings():
    recs = [{"epoch": 1, "phase": RANDOM}, {"epoch": 2}, {"epoch": 3, "phase": FINITE_AUTOMATON},
            {"epoch": 4, "phase": FINITE_AUTOMATON}]
    assert first_epoch_in_phase(recs, FINITE_AUTOMATON) == 3
    assert first_epoch_in_phase(recs, MERGING) is None
    with pytest.raises(ValueError, match="phase: expected one of"):
        first_epoch_in_phase(recs, "grokked")
    with pytest.raises(ValueError, match=r"fit_threshold: expected a number in \[0, 1\]"):
        PhaseTracker(fit_threshold=1.5)
    with pytest.raises(ValueError, match=r"merge_drop: expected a number in \[0, 1\)"):
        PhaseTracker(merge_drop=1.0)
    with pytest.raises(ValueError, match=r"growth: expected a number >= 0"):
        PhaseTracker(growth=-0.5)
