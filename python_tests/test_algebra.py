"""Binary-operation tasks (grokfast.tasks.algebra): tables, samples, splits, argument checks."""

import itertools
import math

import numpy as np
import pytest
import torch

from grokfast.tasks.algebra import (AlgebraTask, Addition, ModularOp, PermutationGroup,
                                    TableTask)


# ---- Addition ---------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [1, 2, 4, 10, 13])
def test_addition_samples_are_unordered_pairs(p):
    task = Addition(p)
    s, r = task.samples, task.results
    assert s.dtype == torch.int64 and r.dtype == torch.int64
    assert len(task) == p * (p + 1) // 2 == s.shape[0] == r.shape[0]
    expected = [(a, b) for a in range(p) for b in range(a, p)]  # lexicographic, a <= b
    assert [tuple(x) for x in s.tolist()] == expected
    torch.testing.assert_close(r, s[:, 0] + s[:, 1])
    assert task.num_results == 2 * p - 1 and task.unordered and task.commutative
    torch.testing.assert_close(task.table, torch.arange(p)[:, None] + torch.arange(p)[None, :])


def test_addition_10_is_the_papers_toy():
    task = Addition(10)
    assert len(task) == 55 and int(task.results.max()) == 18 and task.p == 10


# ---- Modular operations -----------------------------------------------------------------------

FORMULAS = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": lambda x, y, p: (x * pow(y, -1, p)) % p,
    "x^2+y^2": lambda x, y, p: (x ** 2 + y ** 2) % p,
    "x^2+xy+y^2": lambda x, y, p: (x ** 2 + x * y + y ** 2) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x ** 2 + x * y + y ** 2 + x) % p,
    "x^3+xy": lambda x, y, p: (x ** 3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x ** 3 + x * y ** 2 + y) % p,
}


@pytest.mark.parametrize("expr", list(FORMULAS))
@pytest.mark.parametrize("p", [7, 11])
def test_modular_table_matches_direct_formula(expr, p):
    task = ModularOp(p, expr)
    pairs = [(x, y) for x in range(p) for y in range(p) if not (expr == "x/y" and y == 0)]
    assert [tuple(v) for v in task.samples.tolist()] == pairs
    assert task.results.tolist() == [FORMULAS[expr](x, y, p) for x, y in pairs]
    assert task.num_results == p and not task.unordered
    for x, y in pairs:
        assert int(task.table[x, y]) == FORMULAS[expr](x, y, p)


def test_modular_ops_without_division_accept_composite_p():
    task = ModularOp(6, "x*y")
    assert len(task) == 36 and task.results.tolist() == [(x * y) % 6 for x in range(6)
                                                          for y in range(6)]
    assert ModularOp(6, "x+y").commutative and not ModularOp(6, "x-y").commutative


def test_division_excludes_zero_divisor_and_inverts_multiplication():
    p = 13
    task = ModularOp(p, "x/y")
    assert len(task) == p * (p - 1)
    assert (task.samples[:, 1] != 0).all()
    assert (task.table[:, 0] == -1).all()
    x, y, c = task.samples[:, 0], task.samples[:, 1], task.results
    assert ((c * y) % p == x).all()


def test_larger_modular_tables_match_the_formula_on_a_sample():
    p = 211
    task = ModularOp(p, "x^3+xy^2+y")
    assert len(task) == p * p
    rng = np.random.default_rng(0)
    for x, y in rng.integers(0, p, (50, 2)).tolist():
        assert int(task.table[x, y]) == (x ** 3 + x * y ** 2 + y) % p
    with pytest.raises(ValueError, match="p: at most"):
        ModularOp(10_007, "x+y")


# ---- Permutation groups -----------------------------------------------------------------------

@pytest.mark.parametrize("n, order", [(1, 1), (2, 2), (3, 6), (4, 24), (5, 120)])
def test_permutation_group_is_a_group(n, order):
    g = PermutationGroup(n)
    T = g.table.numpy()
    e = g.elements.numpy()
    assert e.shape == (order, n) and T.shape == (order, order) and len(g) == order ** 2
    assert [tuple(r) for r in e] == list(itertools.permutations(range(n)))  # documented order
    assert (e[0] == np.arange(n)).all()  # identity first
    assert (T[0] == np.arange(order)).all() and (T[:, 0] == np.arange(order)).all()
    for row in (T, T.T):  # Latin square: every row and column a permutation of the elements
        assert (np.sort(row, axis=1) == np.arange(order)).all()
    inv = g.inverse().numpy()
    assert (T[np.arange(order), inv] == 0).all() and (T[inv, np.arange(order)] == 0).all()
    # associativity (a∘b)∘c == a∘(b∘c) for every triple, vectorised
    left = T[T[:, :, None], np.arange(order)[None, None, :]]
    right = T[np.arange(order)[:, None, None], T[None, :, :]]
    assert (left == right).all()
    assert g.num_results == order and g.results.tolist() == T.reshape(-1).tolist()


def test_permutation_composition_convention_and_matrices():
    g = PermutationGroup(4)
    e = g.elements.numpy()
    T = g.table.numpy()
    for a, b in [(1, 2), (5, 17), (23, 7), (3, 3)]:
        composed = tuple(e[a][e[b][i]] for i in range(4))  # (a∘b)(i) = a(b(i))
        assert tuple(e[T[a, b]]) == composed
    M = g.matrices
    assert M.shape == (24, 4, 4)
    prod = torch.einsum("aij,bjk->abik", M, M)
    assert torch.equal(prod, M[g.table])  # matrices[a] @ matrices[b] == matrices[a∘b]


def test_s3_is_not_abelian():
    g = PermutationGroup(3)
    assert not g.commutative and len(g) == 36


# ---- User tables ------------------------------------------------------------------------------

def test_table_task_from_lists_arrays_and_tensors():
    table = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    for t in (table, np.array(table, dtype=np.int32), torch.tensor(table)):
        task = TableTask(t)
        assert len(task) == 9 and task.num_results == 3 and isinstance(task, AlgebraTask)
    task = TableTask(table, unordered=True)
    assert [tuple(s) for s in task.samples.tolist()] == [(0, 0), (0, 1), (0, 2), (1, 1),
                                                           (1, 2), (2, 2)]
    assert task.results.tolist() == [0, 1, 2, 2, 0, 1]


def test_table_task_undefined_entries_are_not_samples():
    task = TableTask([[3, -1], [0, 1]])
    assert [tuple(s) for s in task.samples.tolist()] == [(0, 0), (1, 0), (1, 1)]
    assert task.results.tolist() == [3, 0, 1] and task.num_results == 4


def test_index_of_looks_up_pairs():
    task = Addition(5)
    assert task.index_of([[0, 0], [3, 1], [1, 3]]).tolist() == [0, 7, 7]  # (3,1) = (1,3)
    m = ModularOp(5, "x/y")
    with pytest.raises(ValueError, match="pairs: row 1 = \\(2, 0\\)"):
        m.index_of([[1, 1], [2, 0]])
    with pytest.raises(ValueError, match="pairs"):
        task.index_of([[5, 0]])


# ---- Splits -----------------------------------------------------------------------------------

def test_split_is_reproducible_and_nested():
    task = Addition(10)
    m1, m2 = task.split(0.8, seed=3), task.split(0.8, seed=3)
    assert m1.dtype == torch.bool and m1.shape == (55,)
    assert torch.equal(m1, m2) and int(m1.sum()) == 44
    assert not torch.equal(m1, task.split(0.8, seed=4))
    small = task.split(0.4, seed=3)
    assert int(small.sum()) == 22 and bool((m1 | ~small).all())  # small ⊆ m1
    assert int(task.split(1.0).sum()) == 55 and int(task.split(1e-9).sum()) == 1


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.5", True, None])
def test_split_rejects_fraction_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="train_fraction"):
        Addition(5).split(bad)


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (1.5, TypeError), ("1", TypeError)])
def test_split_rejects_bad_seed(bad, err):
    with pytest.raises(err, match="seed"):
        Addition(5).split(0.5, seed=bad)


# ---- Argument checks --------------------------------------------------------------------------

@pytest.mark.parametrize("make, err, name", [
    (lambda: Addition(0), ValueError, "p"),
    (lambda: Addition(2.5), TypeError, "p"),
    (lambda: ModularOp(7, "x%y"), ValueError, "expr"),
    (lambda: ModularOp(7, 3), TypeError, "expr"),
    (lambda: ModularOp(6, "x/y"), ValueError, "p"),
    (lambda: ModularOp(0, "x+y"), ValueError, "p"),
    (lambda: PermutationGroup(0), ValueError, "n"),
    (lambda: PermutationGroup(7), ValueError, "n"),
    (lambda: TableTask([[0, 1]]), ValueError, "table"),
    (lambda: TableTask([[0.5, 1], [1, 0]]), TypeError, "table"),
    (lambda: TableTask([[0, -2], [1, 0]]), ValueError, "table"),
    (lambda: TableTask([[-1]]), ValueError, "table"),
    (lambda: TableTask([[0, 1], [2, 0]], unordered=True), ValueError, "symmetric"),
    (lambda: TableTask("abc"), TypeError, "table"),
])
def test_bad_arguments_name_the_argument(make, err, name):
    with pytest.raises(err, match=name):
        make()


def test_expression_spelling_is_normalised():
    assert ModularOp(5, "x ** 2 + y ** 2").expr == "x^2+y^2"
    assert math.isclose(len(ModularOp(5, "x / y")), 20)
