"""Representation measures (grokfast.representation): δ-parallelogram counts and RQI against
brute force, Acc-hat, the ideal model's implied parallelograms (Appendix E rank test), phases of
learning (Appendix A), and argument checks."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import grokfast
from grokfast.representation import (classify_history, classify_phase, ideal_accuracy,
                                     ideal_rqi, ideal_structure, p0_size, parallelogram_count,
                                     predicted_accuracy, rqi)
from grokfast.representation import measures as M
from grokfast.tasks.algebra import Addition, ModularOp, PermutationGroup, TableTask


# ---- brute-force references (loops over all sample pairs) ------------------------------------

def combined(E, task):
    """float32 combined representations, formed like the library: sum in float32, product in
    float64 rounded once."""
    E = torch.as_tensor(E)
    a, b = task.samples[:, 0], task.samples[:, 1]
    if E.dim() == 2:
        return (E.float()[a] + E.float()[b]).double()
    return torch.bmm(E.double()[a], E.double()[b]).float().double().reshape(len(a), -1)


def brute_pairs(Z, results, delta, keep=None):
    """Unordered same-result pairs i < j (both in keep) with |Z_i - Z_j| <= delta."""
    n = len(results)
    keep = [True] * n if keep is None else list(keep)
    count = 0
    for i in range(n):
        for j in range(i + 1, n):
            if keep[i] and keep[j] and results[i] == results[j]:
                d2 = float(((Z[i] - Z[j]) ** 2).sum())
                count += d2 <= delta * delta
    return count


def brute_p0(task):
    r = task.results.tolist()
    return sum(r[i] == r[j] for i in range(len(r)) for j in range(i + 1, len(r)))


def brute_acc_hat(Z, results, train, delta):
    n = len(results)
    covered = 0
    for i in range(n):
        ok = bool(train[i]) or any(
            bool(train[j]) and j != i and results[i] == results[j]
            and float(((Z[i] - Z[j]) ** 2).sum()) <= delta * delta for j in range(n))
        covered += ok
    return covered / n


def brute_ideal(task, train):
    """Eq. 14 literally: rank of A(P0(D)) with and without each candidate row (numpy SVD rank,
    fine for these small integer matrices); then Eq. 12 with P(D)."""
    s, r, p = task.samples.tolist(), task.results.tolist(), task.p
    train = [bool(v) for v in train]
    n = len(s)

    def row(i, j):
        v = np.zeros(p)
        for k in s[i]:
            v[k] += 1
        for k in s[j]:
            v[k] -= 1
        return v

    P0 = [(i, j) for i in range(n) for j in range(i + 1, n) if r[i] == r[j]]
    A = np.array([row(i, j) for i, j in P0 if train[i] and train[j]]).reshape(-1, p)
    rank = np.linalg.matrix_rank(A) if len(A) else 0
    implied = set()
    for i, j in P0:
        aug = np.vstack([A, row(i, j)])
        if np.linalg.matrix_rank(aug) == rank:
            implied.add((i, j))
    covered = sum(train[i] or any(train[j] and ((min(i, j), max(i, j)) in implied)
                                  for j in range(n) if j != i) for i in range(n))
    return len(implied) / len(P0), covered / n, p - rank


# ---- counts against brute force ---------------------------------------------------------------

def _int_embeddings(shape, seed, lo=-2, hi=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).float()


COUNT_CASES = [
    # (task, embeddings) — small integer embeddings give exact ties at integer radii
    (Addition(6), _int_embeddings((6, 1), 0)),
    (Addition(7), _int_embeddings((7, 2), 1)),
    (ModularOp(5, "x+y"), _int_embeddings((5, 2), 2)),
    (ModularOp(5, "x*y"), _int_embeddings((5, 3), 3)),
    (PermutationGroup(3), _int_embeddings((6, 2, 2), 4, -1, 2)),
    (PermutationGroup(3), _int_embeddings((6, 3, 3), 5, -1, 2)),
    (PermutationGroup(3), PermutationGroup(3).matrices),
    (Addition(6), torch.randn(6, 3, generator=torch.Generator().manual_seed(6))),
    (PermutationGroup(3), torch.randn(6, 2, 2, generator=torch.Generator().manual_seed(7))),
]
DELTAS = [0.0, 0.5, 1.0, math.sqrt(2), 2.0, 3.0, 10.0]


@pytest.mark.parametrize("task, E", COUNT_CASES)
def test_parallelogram_counts_match_brute_force(task, E):
    Z = combined(E, task)
    res = task.results.tolist()
    curve = parallelogram_count(E, task, DELTAS)
    assert curve.dtype == torch.int64 and curve.shape == (len(DELTAS),)
    expected = [brute_pairs(Z, res, d) for d in DELTAS]
    assert curve.tolist() == expected
    for d, e in zip(DELTAS[:3], expected):  # a scalar delta gives an int, same count
        assert parallelogram_count(E, task, d) == e
    # with a mask (both samples of a pair in it) and a sample subset
    keep = (torch.arange(len(task)) % 3 != 1)
    assert parallelogram_count(E, task, DELTAS, mask=keep).tolist() == \
        [brute_pairs(Z, res, d, keep.tolist()) for d in DELTAS]
    sub = torch.nonzero(keep).reshape(-1)
    assert parallelogram_count(E, task, DELTAS, samples=sub).tolist() == \
        [brute_pairs(Z, res, d, keep.tolist()) for d in DELTAS]


def test_thresholds_are_inclusive_on_exact_ties():
    # Addition(3) with E = (0, 1, 3): Z(0,2) = 3 and Z(1,1) = 2, distance exactly 1; and
    # with 2x2 matrices a Frobenius distance of exactly 1
    task = Addition(3)
    E = torch.tensor([[0.0], [1.0], [3.0]])
    assert parallelogram_count(E, task, [0.0, math.nextafter(1.0, 0.0), 1.0]).tolist() == [0, 0, 1]
    g = PermutationGroup(3)
    E = g.matrices[:, :2, :2].clone()
    Z = combined(E, g)
    d2 = {float(((Z[i] - Z[j]) ** 2).sum()) for i in range(36) for j in range(36)
          if g.results[i] == g.results[j]}
    assert 1.0 in d2  # a tie at delta = 1 exists
    below, at = parallelogram_count(E, g, [math.nextafter(1.0, 0.0), 1.0]).tolist()
    assert below < at
    assert [below, at] == [brute_pairs(Z, g.results.tolist(), d)
                           for d in [math.nextafter(1.0, 0.0), 1.0]]


def test_rqi_is_count_over_p0_and_numpy_matches_torch():
    task, E = Addition(7), _int_embeddings((7, 2), 1)
    curve = rqi(E, task, DELTAS)
    p0 = brute_p0(task)
    assert curve.dtype == torch.float64
    torch.testing.assert_close(curve, parallelogram_count(E, task, DELTAS).double() / p0)
    torch.testing.assert_close(rqi(E.numpy(), task, np.array(DELTAS)), curve)
    assert rqi(E, task, 1.0) == pytest.approx(float(curve[2]))
    assert (curve[1:] >= curve[:-1]).all()  # monotone in delta
    assert rqi(E, task, float("inf")) == 1.0


def test_rqi_over_a_sample_subset_uses_that_subsets_p0():
    task = Addition(6)
    E = _int_embeddings((6, 1), 0)
    sub = task.split(0.5, seed=1)
    Z = combined(E, task)
    kept = sub.tolist()
    res = task.results.tolist()
    p0 = sum(kept[i] and kept[j] and res[i] == res[j]
             for i in range(len(res)) for j in range(i + 1, len(res)))
    assert p0_size(task, sub) == p0
    assert rqi(E, task, 1.0, samples=sub) == pytest.approx(brute_pairs(Z, res, 1.0, kept) / p0)


def test_empty_p0_gives_nan():
    task = Addition(6)
    one = torch.zeros(len(task), dtype=torch.bool)
    one[0] = True
    assert math.isnan(rqi(torch.zeros(6, 1), task, 0.1, samples=one))
    assert torch.isnan(rqi(torch.zeros(6, 1), task, [0.1, 0.2], samples=one)).all()


# ---- known values -----------------------------------------------------------------------------

@pytest.mark.parametrize("task, expected", [
    (Addition(10), 70), (Addition(4), 3), (PermutationGroup(3), 90),
    (Addition(7), None), (ModularOp(7, "x/y"), None), (ModularOp(6, "x^2+y^2"), None),
    (ModularOp(5, "x^3+xy^2+y"), None), (TableTask([[0, 1], [1, 1]]), None),
])
def test_p0_sizes(task, expected):
    assert p0_size(task) == brute_p0(task)
    if expected is not None:
        assert p0_size(task) == expected


@pytest.mark.parametrize("p, d", [(10, 1), (10, 2), (13, 5)])
def test_linear_representation_has_rqi_one_and_random_zero(p, d):
    g = torch.Generator().manual_seed(p * d)
    a = torch.randint(-3, 4, (d,), generator=g).float()
    b = torch.randint(1, 4, (d,), generator=g).float()
    E = a + torch.arange(p).float()[:, None] * b  # integer-valued: exact at delta = 0
    task = Addition(p)
    assert rqi(E, task, 0.0) == 1.0
    Ef = torch.randn(d) + torch.arange(p).float()[:, None] * torch.randn(d)  # rounding only
    assert rqi(Ef, task, 1e-4) == 1.0
    assert rqi(torch.randn(p, d, generator=g), task, 1e-3) == 0.0
    # the public code's convention: standardize, mean over dimensions of squares <= delta
    assert rqi(Ef, task, 1e-8, metric="mean_sq") == 1.0


def test_permutation_matrices_are_a_perfect_product_representation():
    g = PermutationGroup(3)
    assert rqi(g.matrices, g, 0.0) == 1.0
    assert rqi(torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(0)), g, 1e-3) == 0.0


def test_mean_sq_matches_the_public_code_convention():
    task = Addition(8)
    E = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Es = (E - E.mean(0)) / E.std(0)  # torch's unbiased std, as in toy/train_add.py
    res = task.results.tolist()
    a, b = task.samples[:, 0], task.samples[:, 1]
    Z = Es[a] + Es[b]
    for delta in [0.01, 0.1, 0.5]:
        n = sum(res[i] == res[j] and float(((Z[i] - Z[j]) ** 2).mean()) <= delta
                for i in range(len(res)) for j in range(i + 1, len(res)))
        assert n > 0 or delta < 0.5
        assert rqi(E, task, delta, metric="mean_sq") == pytest.approx(n / brute_p0(task))


# ---- predicted accuracy (Appendix D) ----------------------------------------------------------

def test_predicted_accuracy_hand_made_case():
    # Addition(3): samples (0,0) (0,1) (0,2) (1,1) (1,2) (2,2); only (0,2) and (1,1) share a
    # result. With E = (0, 1, 3): |Z(0,2) - Z(1,1)| = |3 - 2| = 1.
    task = Addition(3)
    E = torch.tensor([[0.0], [1.0], [3.0]])
    train = task.index_of([[0, 2]])
    assert predicted_accuracy(E, task, train, 0.5) == pytest.approx(1 / 6)
    assert predicted_accuracy(E, task, train, 1.0) == pytest.approx(2 / 6)  # inclusive
    torch.testing.assert_close(predicted_accuracy(E, task, train, [0.5, 1.0]),
                               torch.tensor([1 / 6, 2 / 6], dtype=torch.float64))
    mask = torch.zeros(6, dtype=torch.bool)
    mask[[0, 2, 4]] = True
    assert predicted_accuracy(E, task, mask, 1.0) == pytest.approx(4 / 6)  # (1,1) via (0,2)


@pytest.mark.parametrize("task, E", COUNT_CASES[:6])
def test_predicted_accuracy_matches_brute_force(task, E):
    Z = combined(E, task)
    train = task.split(0.5, seed=2)
    res = task.results.tolist()
    got = predicted_accuracy(E, task, train, DELTAS)
    want = [brute_acc_hat(Z, res, train.tolist(), d) for d in DELTAS]
    np.testing.assert_allclose(got.numpy(), want)


# ---- ideal model (Appendix E) -----------------------------------------------------------------

def test_appendix_e_p4_example():
    task = Addition(4)
    D = [(0, 2), (1, 1), (0, 3), (1, 2), (1, 3), (2, 2)]
    s = ideal_structure(task, D)
    assert (s.implied, s.total, s.rqi) == (3, 3, 1.0)  # P(D) = P0 (Eq. 19)
    assert s.nullity == 2 and s.rank == 2  # unique linear structure E_k = a + k b
    assert s.accuracy == pytest.approx(6 / 10)  # (0,0), (0,1), (2,3), (3,3) stay unseen
    assert ideal_rqi(task, D) == 1.0 and ideal_accuracy(task, D) == pytest.approx(0.6)


def test_appendix_c_deduction():
    # (0,4,1,3) and (1,5,2,4) imply (0,5,2,3): with (0,5) trained, (2,3) is predicted
    task = Addition(6)
    D = [(0, 4), (1, 3), (1, 5), (2, 4), (0, 5)]
    s = ideal_structure(task, D)
    covered = {tuple(x) for x in task.samples[s.covered].tolist()}
    assert (2, 3) in covered and (1, 4) not in covered
    assert covered == set(D) | {(2, 3)}


def test_full_data_gives_ideal_rqi_one():
    task = Addition(10)
    s = ideal_structure(task, task.split(1.0))
    assert (s.rqi, s.accuracy, s.nullity, s.implied) == (1.0, 1.0, 2, 70)
    empty = ideal_structure(task, torch.zeros(55, dtype=torch.bool))
    assert empty.implied == 0 and empty.accuracy == 0.0 and empty.nullity == 10


IDEAL_CASES = [(Addition(6), f, s) for f, s in [(0.3, 0), (0.5, 1), (0.7, 2)]] + [
    (Addition(9), 0.4, 3), (ModularOp(5, "x-y"), 0.4, 4), (ModularOp(5, "x*y"), 0.5, 5),
    (ModularOp(7, "x+y"), 0.3, 6), (ModularOp(5, "x^2+xy+y^2"), 0.5, 7),
    (TableTask(np.random.default_rng(0).integers(0, 4, (5, 5))), 0.5, 8),
]


@pytest.mark.parametrize("task, fraction, seed", IDEAL_CASES)
def test_ideal_structure_matches_literal_rank_test(task, fraction, seed):
    train = task.split(fraction, seed=seed)
    s = ideal_structure(task, train)
    rq, acc, nullity = brute_ideal(task, train.tolist())
    assert s.rqi == pytest.approx(rq) and s.accuracy == pytest.approx(acc)
    assert s.nullity == nullity


@pytest.mark.parametrize("seed", range(4))
def test_fraction_free_elimination_is_exact(seed):
    rng = np.random.default_rng(seed)
    S = rng.integers(-3, 4, (6, 9))
    S[:, 2] = S[:, 0] - S[:, 1]  # a dependent column
    rows = [S[i] for i in M._modp_independent_rows(S)]
    got, piv = M._rref_exact(np.stack(rows))
    ref, piv_ref = M._rref_fractions(np.stack(rows))
    assert piv == piv_ref and len(piv) == len(rows)
    for i in range(len(rows)):  # the same reduced row echelon form once pivots are 1
        a = [Fraction(int(v), int(got[i, piv[i]])) for v in got[i]]
        b = [Fraction(int(v), int(ref[i, piv[i]])) for v in ref[i]]
        assert a == b


def test_ideal_structure_repairs_a_basis_missed_by_the_modular_step(monkeypatch):
    # pretend the elimination mod 2^31 - 1 found only one independent row: the exact check
    # must add the missing training equations and reach the same answer
    task = Addition(7)
    train = task.split(0.5, seed=3)
    want = ideal_structure(task, train)
    monkeypatch.setattr(M, "_modp_independent_rows", lambda G: [0] if len(G) else [])
    got = ideal_structure(task, train)
    assert (got.implied, got.rank, got.accuracy) == (want.implied, want.rank, want.accuracy)
    assert torch.equal(got.covered, want.covered)


def test_half_precision_and_float64_embeddings():
    task, E = Addition(7), _int_embeddings((7, 2), 1)
    want = rqi(E, task, DELTAS)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        torch.testing.assert_close(rqi(E.to(dtype), task, DELTAS), want)
    g = PermutationGroup(3)
    torch.testing.assert_close(rqi(g.matrices.double().numpy(), g, DELTAS),
                               rqi(g.matrices, g, DELTAS))


def test_ideal_product_combine_is_not_implemented():
    g = PermutationGroup(3)
    with pytest.raises(NotImplementedError, match="Appendix H"):
        ideal_rqi(g, g.split(0.5), combine="product")
    with pytest.raises(ValueError, match="combine"):
        ideal_rqi(g, g.split(0.5), combine="max")


# ---- phases (Appendix A) ----------------------------------------------------------------------

PHASE_CASES = [
    # train_acc, val_acc, steps, kwargs, phase
    ([0.1, 0.95, 1.0], [0.1, 0.93, 1.0], [0, 100, 200], {}, "comprehension"),
    ([0.1, 0.95, 1.0], [0.1, 0.2, 0.95], [0, 100, 1100], {}, "grokking"),
    ([0.1, 0.95, 1.0], [0.1, 0.2, 0.95], [0, 100, 1099], {}, "comprehension"),
    ([0.1, 0.95, 1.0], [0.1, 0.2, 0.5], [0, 100, 5000], {}, "memorization"),
    ([0.1, 0.5, 0.6], [0.1, 0.2, 0.5], [0, 100, 5000], {}, "confusion"),
    ([0.1, 0.5, 0.95], [0.1, 0.2, 0.95], [0, 100, 200_000], {}, "confusion"),  # past budget
    ([0.9, 0.9], [0.9, 0.9], [0, 1], {}, "confusion"),  # "> 90%" is strict
    ([0.9, 0.9], [0.9, 0.9], [0, 1], {"inclusive": True}, "comprehension"),
    ([0.5, 0.95], [0.95, 0.95], [0, 10], {}, "comprehension"),  # val first: negative delay
    ([0.95, 1.0], [0.0, 0.99], [0, 50], {"max_delay": 50}, "grokking"),
]


@pytest.mark.parametrize("train, val, steps, kwargs, phase", PHASE_CASES)
def test_classify_phase_table_1(train, val, steps, kwargs, phase):
    assert classify_phase(train, val, steps, **kwargs).phase == phase


def test_classify_phase_steps_and_history():
    r = classify_phase([0.1, 0.95, 1.0], [0.1, 0.2, 0.95], [0, 100, 1100])
    assert (r.train_step, r.val_step, r.delay) == (100, 1100, 1000)
    records = [{"step": s, "train_accuracy": a, "val_accuracy": b}
               for s, a, b in zip([0, 100, 1100], [0.1, 0.95, 1.0], [0.1, 0.2, 0.95])]
    records.insert(1, {"step": 50, "loss": 1.0})  # records without accuracies are skipped
    assert classify_history(records) == r
    assert classify_history({"train_accuracy": [0.1, 0.95, 1.0],
                             "val_accuracy": [0.1, 0.2, 0.95],
                             "step": [0, 100, 1100]}) == r
    assert classify_phase(np.array([0.95]), torch.tensor([0.95])).phase == "comprehension"


# ---- argument checks --------------------------------------------------------------------------

BAD_CALLS = [
    (lambda: rqi(torch.zeros(9, 2), Addition(10), 0.1), ValueError, "E: expected one embedding"),
    (lambda: rqi(torch.zeros(10), Addition(10), 0.1), ValueError, "E: expected vectors"),
    (lambda: rqi(torch.zeros(6, 2, 3), PermutationGroup(3), 0.1), ValueError, "E: matrix"),
    (lambda: rqi(torch.zeros(10, 2, dtype=torch.int64), Addition(10), 0.1), TypeError, "E:"),
    (lambda: rqi(torch.full((10, 2), float("nan")), Addition(10), 0.1), ValueError, "E: .*NaN"),
    (lambda: rqi([[0.0]] * 10, Addition(10), 0.1), TypeError, "E:"),
    (lambda: rqi(torch.full((10, 2), 3e38), Addition(10), 0.1), ValueError, "E: .*overflow"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), -0.1), ValueError, "delta"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), [0.1, -1.0]), ValueError, "delta\\[1\\]"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), float("nan")), ValueError, "delta"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), "0.1"), TypeError, "delta"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), np.zeros((2, 2))), ValueError, "delta"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), 0.1, metric="l1"), ValueError, "metric"),
    (lambda: rqi(torch.zeros(6, 2, 2), PermutationGroup(3), 0.1, metric="mean_sq"),
     ValueError, "metric"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), 0.1, metric="mean_sq"), ValueError,
     "E: dimension 0 is constant"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), 0.1, samples=torch.ones(3, dtype=torch.bool)),
     ValueError, "samples"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), 0.1, samples=[99]), ValueError, "samples"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), 0.1, samples=[[0, 10]]), ValueError,
     "samples"),
    (lambda: rqi(torch.zeros(10, 2), Addition(10), 0.1, samples=[0.5]), TypeError, "samples"),
    (lambda: rqi(torch.zeros(10, 2), "add", 0.1), TypeError, "task"),
    (lambda: parallelogram_count(torch.zeros(10, 2), Addition(10), 0.1,
                                 mask=torch.ones(54, dtype=torch.bool)), ValueError, "mask"),
    (lambda: predicted_accuracy(torch.zeros(10, 2), Addition(10), torch.ones(5, dtype=torch.bool),
                                0.1), ValueError, "train_mask"),
    (lambda: ideal_rqi(Addition(10), [(0, 11)]), ValueError, "train_samples"),
    (lambda: classify_phase([0.1, 0.2], [0.1], None), ValueError, "val_acc"),
    (lambda: classify_phase([0.1, 0.2], [0.1, 0.2], [0]), ValueError, "steps"),
    (lambda: classify_phase([0.1, 0.2], [0.1, 0.2], [5, 1]), ValueError, "steps"),
    (lambda: classify_phase(["a"], [0.1], None), TypeError, "train_acc"),
    (lambda: classify_phase([0.1], [0.1], None, threshold="x"), TypeError, "threshold"),
    (lambda: classify_history({"train_accuracy": [0.1]}), ValueError, "history"),
    (lambda: classify_history(3), TypeError, "history"),
]


@pytest.mark.parametrize("call, err, pattern", BAD_CALLS)
def test_bad_inputs_name_the_argument(call, err, pattern):
    with pytest.raises(err, match=pattern):
        call()


def test_plain_tuple_task_and_pair_selection():
    task = Addition(5)
    E = _int_embeddings((5, 1), 9)
    plain = (task.samples.numpy(), task.results.numpy())
    assert rqi(E, plain, DELTAS).tolist() == rqi(E, task, DELTAS).tolist()
    pairs = [(0, 3), (2, 1), (1, 2)]  # (2, 1) is (1, 2) in an unordered task
    with pytest.raises(ValueError, match="samples: row 1"):
        p0_size(plain, pairs)  # a plain tuple does not know the task is unordered
    assert p0_size(task, pairs) == 1


@pytest.mark.skipif(not grokfast.backends()["cuda"], reason="needs a GPU")
def test_cuda_embeddings_match_cpu():
    for task, E in COUNT_CASES:
        torch.testing.assert_close(rqi(E.cuda(), task, DELTAS), rqi(E, task, DELTAS))


def test_empty_sample_sets():
    task = Addition(4)
    E = torch.zeros(4, 1)
    assert parallelogram_count(E, task, [0.0, 1.0], samples=[]).tolist() == [0, 0]
    assert parallelogram_count(E, task, 1.0, samples=[]) == 0 and p0_size(task, []) == 0
    assert math.isnan(rqi(E, task, 1.0, samples=torch.zeros(10, dtype=torch.bool)))
    assert rqi(E, task, [0.0]).tolist() == [1.0]  # all sums equal: every pair of P0
