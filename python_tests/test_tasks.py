"""Moore machines, target automata and the streaming tasks built from them."""

from collections import deque

import numpy as np
import pytest
import torch

from grokfast.automata import MooreMachine, count_mod, parity, random_automaton
from grokfast.tasks import (AutomatonTask, CountMod, LengthData, RandomAutomatonTask,
                            StreamingParity, all_sequences)


# ---- Moore machines -------------------------------------------------------------------------

def test_parity_machine_runs_cumulative_xor():
    m = parity()
    assert (m.num_states, m.num_symbols, m.num_outputs, m.initial) == (2, 2, 2, 0)
    seq = [1, 0, 1, 1, 0, 1]
    np.testing.assert_array_equal(m.run(seq), np.cumsum(seq) % 2)


def test_run_batch_keeps_the_input_kind():
    m = parity()
    ids = torch.tensor([[1, 1, 0], [0, 1, 0]])
    out = m.run_batch(ids)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    torch.testing.assert_close(out, torch.tensor([[1, 0, 0], [0, 1, 1]]))
    out_np = m.run_batch(ids.numpy())
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_array_equal(out_np, out.numpy())
    assert m.run_batch(np.zeros((3, 0), dtype=np.int64)).shape == (3, 0)


def test_states_batch_and_initial_state():
    m = MooreMachine([[1, 0], [1, 1]], [5, 7], initial=1)
    np.testing.assert_array_equal(m.states_batch([[0, 1]]), [[1, 1]])
    np.testing.assert_array_equal(m.run([0, 1]), [7, 7])
    assert m.num_outputs == 8


def test_dict_round_trip_and_equality():
    m = random_automaton(6, 3, seed=4)
    assert MooreMachine.from_dict(m.to_dict()) == m
    assert m != parity()


@pytest.mark.parametrize("args, message", [
    (([0, 1], [0]), "transitions: expected 2 dimension"),
    (([[0.5, 1]], [0]), "transitions: expected an integer array"),
    ((np.zeros((0, 2), dtype=int), []), "at least one state"),
    (([[0, 2], [1, 0]], [0, 1]), r"transitions: entries must be states in \[0, 2\) or -1"),
    (([[0, -2], [1, 0]], [0, 1]), "transitions: entries must be states"),
    (([[0, 1], [1, 0]], [0]), r"outputs: expected one output per state \(2\)"),
    (([[0, 1], [1, 0]], [0, -1]), "outputs: expected non-negative"),
    (([[0, 1], [1, 0]], [0, 1], 2), r"initial: expected a state in \[0, 2\)"),
])
def test_moore_machine_rejects_bad_definitions(args, message):
    with pytest.raises((ValueError, TypeError), match=message):
        MooreMachine(*args)


def test_run_rejects_unknown_symbols_and_undefined_transitions():
    with pytest.raises(ValueError, match=r"ids: symbols must lie in \[0, 2\)"):
        parity().run([0, 2])
    partial = MooreMachine([[1, -1], [0, 0]], [0, 1])
    with pytest.raises(ValueError, match="sequence 1 reaches an undefined transition at step 0"):
        partial.run_batch([[0, 0], [1, 0]])
    with pytest.raises(ValueError, match="ids: expected 2 dimension"):
        parity().run_batch([0, 1])


def test_count_mod():
    m = count_mod(3)
    seq = np.array([1, 1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(m.run(seq), np.cumsum(seq) % 3)
    assert count_mod(2) == parity()
    for k in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="k: expected an integer >= 2"):
            count_mod(k)


def _reachable(m: MooreMachine) -> set:
    seen, queue = {m.initial}, deque([m.initial])
    while queue:
        s = queue.popleft()
        for nxt in m.transitions[s]:
            if nxt not in seen:
                seen.add(int(nxt))
                queue.append(int(nxt))
    return seen


@pytest.mark.parametrize("n_states, n_symbols", [(1, 1), (2, 2), (7, 2), (12, 3), (30, 1)])
def test_random_automaton_is_complete_reachable_and_seeded(n_states, n_symbols):
    for seed in range(5):
        m = random_automaton(n_states, n_symbols, seed)
        assert m.is_complete and m.num_states == n_states and m.num_symbols == n_symbols
        assert _reachable(m) == set(range(n_states))
        assert m == random_automaton(n_states, n_symbols, seed)
        if n_states >= 2:
            assert set(m.outputs.tolist()) == {0, 1}  # every output value used
    if n_states >= 7:
        assert random_automaton(n_states, n_symbols, 0) != random_automaton(n_states, n_symbols, 1)


def test_random_automaton_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_states: expected an integer >= 1, got 0"):
        random_automaton(0)
    with pytest.raises(ValueError, match="n_symbols: expected an integer >= 1, got -1"):
        random_automaton(3, -1)
    with pytest.raises(ValueError, match="seed: expected an integer >= 0"):
        random_automaton(3, 2, seed=-5)
    with pytest.raises(ValueError, match="n_outputs: expected an integer >= 1"):
        random_automaton(3, 2, n_outputs=0)


# ---- sequences and tasks --------------------------------------------------------------------

def test_all_sequences_lexicographic():
    s = all_sequences(2, 3)
    assert s.dtype == torch.int64 and s.shape == (8, 3)
    assert s[5].tolist() == [1, 0, 1]
    assert all_sequences(3, 2).tolist()[:4] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    with pytest.raises(ValueError, match="length: expected an integer >= 1, got 0"):
        all_sequences(2, 0)
    with pytest.raises(ValueError, match="num_symbols: expected an integer >= 1"):
        all_sequences(0, 3)
    with pytest.raises(ValueError, match="exceed the limit"):
        all_sequences(2, 40)


def test_streaming_parity_sizes_and_targets():
    task = StreamingParity(10)
    assert task.num_sequences == 2046 and task.num_train == 2046
    assert task.lengths == list(range(1, 11))
    for n in task.lengths:
        data = task.all_data(n)
        assert isinstance(data, LengthData) and len(data) == 2 ** n
        assert data.inputs.shape == data.targets.shape == (2 ** n, n)
        assert len({tuple(r) for r in data.inputs.tolist()}) == 2 ** n  # all distinct
        torch.testing.assert_close(data.targets, data.inputs.cumsum(1) % 2)
        assert task.train_data(n) is data or torch.equal(task.train_data(n).inputs, data.inputs)


def test_count_mod_and_random_tasks_targets():
    task = CountMod(3, 6)
    assert task.num_sequences == 2 + 4 + 8 + 16 + 32 + 64 and task.num_outputs == 3
    data = task.all_data(6)
    torch.testing.assert_close(data.targets, data.inputs.cumsum(1) % 3)
    rt = RandomAutomatonTask(5, 3, automaton_seed=2, max_length=4)
    assert rt.num_sequences == 3 + 9 + 27 + 81
    d = rt.all_data(4)
    for row, target in zip(d.inputs[:20], d.targets[:20]):
        assert target.tolist() == rt.machine.run(row).tolist()


def test_train_fraction_subsets():
    task = StreamingParity(10, train_fraction=0.5, seed=3)
    again = StreamingParity(10, train_fraction=0.5, seed=3)
    other = StreamingParity(10, train_fraction=0.5, seed=4)
    sizes = [len(task.train_data(n)) for n in task.lengths]
    assert sizes == [len(again.train_data(n)) for n in task.lengths]
    assert sizes != [len(other.train_data(n)) for n in task.lengths]
    assert min(sizes) >= 1
    assert abs(sizes[-1] - 512) < 5 * 16  # Binomial(1024, 0.5): sd 16
    for n in task.lengths:
        sub, full = task.train_data(n), task.all_data(n)
        rows = [tuple(r) for r in sub.inputs.tolist()]
        assert rows == sorted(set(rows))  # distinct, lexicographic
        assert set(rows) <= {tuple(r) for r in full.inputs.tolist()}
        torch.testing.assert_close(sub.targets, sub.inputs.cumsum(1) % 2)
    assert task.num_train == sum(sizes)


def test_small_fraction_keeps_one_sequence_per_length():
    task = StreamingParity(8, train_fraction=1e-6, seed=0)
    assert [len(task.train_data(n)) for n in task.lengths] == [1] * 8


def test_eval_data_is_seeded_and_independent_of_other_lengths():
    task = StreamingParity(4)
    a = task.eval_data([25, 1000], count=10, seed=7)
    b = task.eval_data([1000], count=10, seed=7)
    c = task.eval_data([25, 1000], count=10, seed=8)
    assert a[25].inputs.shape == (10, 25) and a[1000].targets.shape == (10, 1000)
    torch.testing.assert_close(a[1000].inputs, b[1000].inputs)
    assert not torch.equal(a[1000].inputs, c[1000].inputs)
    torch.testing.assert_close(a[1000].targets, a[1000].inputs.cumsum(1) % 2)
    assert set(a[1000].inputs.unique().tolist()) == {0, 1}


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_fractions_outside_unit_interval_are_rejected(fraction):
    with pytest.raises(ValueError, match=r"train_fraction: expected a fraction in \(0, 1\]"):
        StreamingParity(5, train_fraction=fraction)


def test_task_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_length: expected an integer >= 1, got 0"):
        StreamingParity(0)
    with pytest.raises(ValueError, match="max_length: expected an integer >= 1, got -2"):
        StreamingParity(-2)
    with pytest.raises(ValueError, match="more than the limit"):
        StreamingParity(30)
    with pytest.raises(ValueError, match="seed: expected an integer >= 0"):
        StreamingParity(3, seed=-1)
    with pytest.raises(ValueError, match="machine: every transition must be defined"):
        AutomatonTask(MooreMachine([[1, -1], [0, 0]], [0, 1]), 3)
    with pytest.raises(TypeError, match="machine: expected a MooreMachine"):
        AutomatonTask("parity", 3)
    task = StreamingParity(3)
    with pytest.raises(ValueError, match=r"length: expected a training length in 1..3, got 4"):
        task.train_data(4)
    with pytest.raises(ValueError, match="lengths: expected an integer >= 1, got 0"):
        task.eval_data([25, 0], count=3, seed=0)
    with pytest.raises(ValueError, match="count: expected an integer >= 1, got 0"):
        task.eval_data([25], count=0, seed=0)
