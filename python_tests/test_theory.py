"""The effective theory (Liu et al. 2022, Section 3.2, Appendices F, L):
grokfast.representation.theory."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from grokfast.representation import theory as th
from grokfast.representation.theory import (conserved_quantities, critical_fraction,
                                             effective_flow, effective_hessian, effective_loss,
                                             grokking_rate, predicted_grokking_steps,
                                             unique_structure_probability)


def addition(p):
    a, b = np.triu_indices(p)
    return np.stack([a, b], 1).astype(np.int64), (a + b).astype(np.int64)


def modular_addition(p):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    s = np.stack([a.ravel(), b.ravel()], 1).astype(np.int64)
    return s, (s.sum(1) % p).astype(np.int64)


def subset(samples, results, n, seed):
    idx = np.random.default_rng(seed).permutation(samples.shape[0])[:n]
    return samples[idx], results[idx]


def parallelogram_rows(samples, results, p):
    """A(P0(D)) by enumeration: one row per unordered pair of distinct same-result samples."""
    rows = []
    for s, t in itertools.combinations(range(samples.shape[0]), 2):
        if results[s] == results[t]:
            v = np.zeros(p, dtype=np.int64)
            np.add.at(v, samples[s], 1)
            np.add.at(v, samples[t], -1)
            rows.append(v)
    return np.array(rows, dtype=np.int64).reshape(-1, p)


def rank_fractions(M):
    M = [[Fraction(int(x)) for x in row] for row in M]
    rank, cols = 0, len(M[0]) if M else 0
    for c in range(cols):
        piv = next((i for i in range(rank, len(M)) if M[i][c] != 0), None)
        if piv is None:
            continue
        M[rank], M[piv] = M[piv], M[rank]
        for i in range(len(M)):
            if i != rank and M[i][c] != 0:
                f = M[i][c] / M[rank][c]
                M[i] = [u - f * v for u, v in zip(M[i], M[rank])]
        rank += 1
    return rank


def normalized_linear(p, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(
        d, generator=g, dtype=torch.float64)
    E = a + torch.arange(p, dtype=torch.float64)[:, None] * b
    E = E - E.mean(0)
    return E / ((E * E).sum() / p).sqrt()


# ---------------------------------------------------------------------------------------------
# effective loss


def test_effective_loss_zero_on_linear_positive_on_random():
    S, R = addition(10)
    k = torch.arange(10, dtype=torch.float64)[:, None]
    E = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64) + k * torch.tensor(
        [0.7, 0.2, -0.4], dtype=torch.float64)
    assert float(effective_loss(E, S, R)) < 1e-14
    s, r = subset(S, R, 30, 1)
    assert float(effective_loss(E, s, r)) < 1e-14
    rnd = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert float(effective_loss(rnd, S, R)) > 0.05
    assert float(effective_loss(rnd, s, r)) > 0.05


def test_effective_loss_matches_definition():
    for S, R, p in [(*addition(7), 7), (*modular_addition(5), 5)]:
        s, r = subset(S, R, 2 * S.shape[0] // 3, 2)
        E = torch.randn(p, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        A = torch.from_numpy(parallelogram_rows(s, r, p)).double()
        l0 = ((A @ E) ** 2).sum() / A.shape[0]  # Eq. (5): mean over P0(D)
        torch.testing.assert_close(effective_loss(E, s, r), l0 / (E * E).sum())
        # normalize=True: Eq. (5) on Ẽ = (E - μ)/σ
        C = E - E.mean(0)
        Et = C / ((C * C).sum() / p).sqrt()
        torch.testing.assert_close(effective_loss(E, s, r, normalize=True),
                                   ((A @ Et) ** 2).sum() / A.shape[0] / p)


def test_effective_loss_invariances_and_inputs():
    S, R = addition(8)
    s, r = subset(S, R, 20, 4)
    E = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    base = effective_loss(E, s, r)
    torch.testing.assert_close(effective_loss(3.5 * E, s, r), base)  # scale invariant
    shifted = E + torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert not torch.allclose(effective_loss(shifted, s, r), base)  # Z0 is not translation inv.
    torch.testing.assert_close(effective_loss(shifted, s, r, normalize=True),
                               effective_loss(E, s, r, normalize=True))
    # numpy inputs everywhere; float32 stays float32
    out = effective_loss(E.numpy(), torch.from_numpy(s), r.tolist())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, base)
    assert effective_loss(E.float(), s, r).dtype == torch.float32
    # no parallelogram in D: ℓ0 = 0
    assert float(effective_loss(E, s[:2], np.array([0, 1]))) == 0.0


def test_effective_loss_gradient():
    S, R = addition(6)
    s, r = subset(S, R, 14, 6)
    E = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7),
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: effective_loss(x, s, r), (E,))
    assert torch.autograd.gradcheck(lambda x: effective_loss(x, s, r, normalize=True), (E,))


def test_flow_gradient_matches_autograd():
    S, R = addition(7)
    s, r = subset(S, R, 20, 8)
    E = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    x = E.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(effective_loss(x, s, r), x)
    lr = 0.01
    out = effective_flow(E, s, r, lr, 1, normalize=False)
    torch.testing.assert_close(out.trajectory[1], E - lr * g)
    torch.testing.assert_close(out.trajectory[0], E)
    torch.testing.assert_close(out.loss[0], effective_loss(E, s, r))


# ---------------------------------------------------------------------------------------------
# conservation laws (Appendix F)


def test_conservation_normalized_flow():
    S, R = addition(10)
    E0 = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    out = effective_flow(E0, S, R, 0.25, 400, method="rk4", record_every=50)
    C, Z0 = conserved_quantities(out.trajectory)
    assert C.shape == (out.steps.numel(), 2) and Z0.shape == (out.steps.numel(),)
    assert out.steps.tolist() == list(range(0, 401, 50))
    assert float(C.abs().max()) < 1e-12  # starts centred, stays centred
    assert float((Z0 - 10.0).abs().max()) < 1e-7  # unit variance: Z0 = p, conserved (RK4)
    assert (out.loss[1:] <= out.loss[:-1] + 1e-15).all()
    assert float(out.loss[-1]) < 1e-3 * float(out.loss[0])  # reaches the linear structure


def test_conservation_euler_drift_is_second_order():
    S, R = addition(8)
    E0 = torch.randn(8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    drift = []
    for lr in (0.2, 0.1, 0.05):  # same total time 4: drift per step ~ lr^2, total ~ lr
        out = effective_flow(E0, S, R, lr, round(4 / lr), record_every=10 ** 6)
        C, Z0 = conserved_quantities(out.trajectory)
        assert out.steps.tolist() == [0, round(4 / lr)]
        assert float(C.abs().max()) < 1e-12
        drift.append(float(Z0[-1] - Z0[0]))
    assert all(x > 0 for x in drift)  # |E - lr g|^2 = |E|^2 + lr^2 |g|^2 since g ⟂ E
    assert 1.7 < drift[0] / drift[1] < 2.3 and 1.7 < drift[1] / drift[2] < 2.3
    assert drift[2] < 1e-2


def test_uncentred_flow_conserves_z0_but_not_c():
    """Appendix F claims dC/dt = 0; the flow gives dC/dt = (2 ℓ_eff / Z0) C (Eq. 25 summed):
    Z0 is conserved, C keeps its direction and grows as exp(∫ 2 ℓ_eff / Z0 dt)."""
    S, R = addition(6)
    g = torch.Generator().manual_seed(12)
    E0 = torch.randn(6, 2, dtype=torch.float64, generator=g) + torch.tensor([0.5, -0.3],
                                                                            dtype=torch.float64)
    lr, steps = 0.01, 300
    out = effective_flow(E0, S, R, lr, steps, method="rk4", normalize=False)
    C, Z0 = conserved_quantities(out.trajectory)
    assert float((Z0 - Z0[0]).abs().max()) < 1e-9
    growth = torch.exp(torch.trapezoid(2 * out.loss / Z0[0], dx=lr))
    torch.testing.assert_close(C[-1], C[0] * growth, rtol=1e-6, atol=0)
    assert float(growth) > 1.05  # the paper's dC/dt = 0 fails visibly off C = 0


# ---------------------------------------------------------------------------------------------
# Hessian and grokking rate (Eq. 7-9)


def test_gram_matches_enumerated_rows():
    for S, R, p in [(*addition(9), 9), (*modular_addition(6), 6)]:
        for n, seed in [(S.shape[0], 0), (S.shape[0] // 2, 1), (5, 2)]:
            s, r = subset(S, R, n, seed)
            A = parallelogram_rows(s, r, p)
            assert np.array_equal(th._gram(th._data(s, r, p)), A.T @ A)


def test_exact_rank():
    rng = np.random.default_rng(13)
    for _ in range(20):
        m, n = rng.integers(1, 7, size=2)
        M = rng.integers(-2, 3, size=(m, n)) * (rng.random((m, n)) < 0.6)
        if rng.random() < 0.5 and m > 1:
            M[-1] = M[0] * 2 - M[min(1, m - 1)]  # a dependent row
        assert th._exact_rank(M) == rank_fractions(M) == np.linalg.matrix_rank(M)
    q = 2 ** 31 - 1  # a minor divisible by the first modulus: rank 2 over Q, 1 modulo q
    assert th._exact_rank(np.array([[q, 0], [0, 1]])) == 2
    assert th._exact_rank(np.array([[q, 1], [2 * q, 2]])) == 1
    assert th._exact_rank(np.zeros((3, 4), dtype=np.int64)) == 0


def test_hessian_full_data():
    p = 10
    S, R = addition(p)
    w = effective_hessian(S, R, p)
    assert w.dtype == torch.float64 and w.shape == (p,)
    assert float(w[0]) == 0.0 and float(w[1]) == 0.0 and float(w[2]) > 0.05
    assert (w[1:] >= w[:-1]).all()
    A = parallelogram_rows(S, R, p).astype(np.float64)  # H = 2 A^T A / (|P0| Z0), Z0 = p
    ref = np.linalg.eigvalsh(2 * A.T @ A / (A.shape[0] * p))
    np.testing.assert_allclose(w[2:].numpy(), ref[2:], rtol=1e-12)
    assert abs(ref[:2]).max() < 1e-12
    lam3 = grokking_rate(S, R, p)
    assert lam3 == float(w[2])
    assert math.isclose(grokking_rate(S, R, p, z0=2 * p), lam3 / 2)
    assert math.isclose(predicted_grokking_steps(S, R, p, 1e-3), 1 / (lam3 * 1e-3))
    assert grokking_rate(S, R) == lam3  # p inferred


def test_hessian_is_the_hessian_of_the_effective_loss_at_a_ground_state():
    p = 8
    S, R = addition(p)
    s, r = subset(S, R, 30, 14)
    x = normalized_linear(p).reshape(-1)  # 1-D ground state, zero mean, unit variance
    Hx = torch.autograd.functional.hessian(lambda v: effective_loss(v.view(p, 1), s, r), x)
    w, V = effective_hessian(s, r, p, eigenvectors=True)
    torch.testing.assert_close(V @ torch.diag(w) @ V.T, Hx, atol=1e-12, rtol=1e-9)


def test_flow_decays_at_the_grokking_rate():
    """Near the linear structure the Euler flow is E <- (I - lr H) E (Eq. 9): the component
    along the third eigenvector shrinks by (1 - lr λ3) per step."""
    p = 10
    S, R = addition(p)
    s, r = subset(S, R, 40, 15)
    w, V = effective_hessian(s, r, p, eigenvectors=True)
    lam3, v3 = float(w[2]), V[:, 2]
    assert lam3 > 0
    E0 = normalized_linear(p)[:, 0] + 1e-4 * v3
    lr, steps = 0.5, 100
    out = effective_flow(E0[:, None], s, r, lr, steps, normalize=False)
    amp = out.trajectory[:, :, 0] @ v3
    expected = (1 - lr * lam3) ** steps
    assert math.isclose(float(amp[-1] / amp[0]), expected, rel_tol=1e-4)
    assert steps < predicted_grokking_steps(s, r, p, lr) * 4


def test_tiny_training_set_has_no_grokking_rate():
    p = 10
    S, R = addition(p)
    s, r = subset(S, R, 8, 16)
    w = effective_hessian(s, r, p)
    nullity = p - rank_fractions(parallelogram_rows(s, r, p))
    assert nullity > 2
    assert (w[:nullity] == 0).all() and (w[nullity:] > 0).all()
    assert grokking_rate(s, r, p) == 0.0
    assert predicted_grokking_steps(s, r, p, 1e-3) == math.inf
    # no parallelogram at all: H = 0
    assert (effective_hessian(s[:1], r[:1], p) == 0).all()


def test_grokking_rate_increases_with_fraction():
    p = 10
    S, R = addition(p)
    N = S.shape[0]
    means = []
    for f in (0.2, 0.5, 0.7, 0.9):
        n = int(np.floor(f * N + 0.5))
        rates = [grokking_rate(*subset(S, R, n, 100 + k), p) for k in range(25)]
        means.append(np.mean(rates))
        if f == 0.2:
            assert np.mean(np.array(rates) == 0.0) > 0.9
    means.append(grokking_rate(S, R, p))
    assert all(b > a for a, b in zip(means, means[1:])), means


# ---------------------------------------------------------------------------------------------
# unique linear structure, critical fraction (Figure 4a)


def test_first_unique_sizes_match_bruteforce():
    p, trials, seed = 6, 25, 17
    S, R = addition(p)
    N = S.shape[0]
    nstar = th._first_unique_sizes(p, trials, seed)
    order = np.random.default_rng([seed, p]).permuted(np.tile(np.arange(N), (trials, 1)),
                                                      axis=1)
    for j in range(trials):
        ranks = [rank_fractions(parallelogram_rows(S[order[j, :n]], R[order[j, :n]], p))
                 if n > 1 else 0 for n in range(N + 1)]
        assert nstar[j] == next(n for n in range(N + 1) if ranks[n] == p - 2)


def test_unique_structure_probability():
    p = 10
    grid = np.linspace(0.05, 1.0, 20)
    prob = unique_structure_probability(p, grid, trials=400, seed=0)
    assert isinstance(prob, np.ndarray) and prob.shape == grid.shape
    assert (prob[grid <= 0.15] == 0).all()  # <= 8 samples: rank <= n - 1 < p - 2
    assert prob[-1] == 1.0
    assert (np.diff(prob) >= 0).all()
    assert 0.1 < unique_structure_probability(p, 0.4, trials=400) < 0.8
    assert isinstance(unique_structure_probability(p, 1.0, trials=10), float)
    two_d = unique_structure_probability(p, torch.tensor([[0.3, 0.6], [0.9, 1.0]]), trials=50)
    assert two_d.shape == (2, 2)
    assert unique_structure_probability(2, 0.5, trials=5) == 1.0  # p = 2: nothing to fix


def test_critical_fraction_p10():
    rc = critical_fraction(10, trials=2000, seed=0)
    assert 0.35 < rc < 0.45  # the paper: r_c ≈ 0.4
    assert critical_fraction(10, level=0.1, trials=500) < critical_fraction(
        10, level=0.9, trials=500)
    assert critical_fraction(2, trials=3) == 0.0


# ---------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("call, exc, name", [
    (lambda S, R, E: effective_loss(E, S, R[:-1]), ValueError, "results"),
    (lambda S, R, E: effective_loss(E, S[:, :1], R), ValueError, "samples"),
    (lambda S, R, E: effective_loss(E, S.astype(float), R), TypeError, "samples"),
    (lambda S, R, E: effective_loss(E, np.concatenate([S, S[:1]]), np.concatenate([R, R[:1]])),
     ValueError, "samples"),
    (lambda S, R, E: effective_loss(E[:4], S, R), ValueError, "samples"),
    (lambda S, R, E: effective_loss(E[:, 0], S, R), ValueError, "E"),
    (lambda S, R, E: effective_loss(E * float("nan"), S, R), ValueError, "E"),
    (lambda S, R, E: effective_loss(E * 0, S, R), ValueError, "E"),
    (lambda S, R, E: effective_loss(E.long(), S, R), TypeError, "E"),
    (lambda S, R, E: effective_loss([[0.0]], S, R), TypeError, "E"),
    (lambda S, R, E: effective_flow(E, S, R, 0.0, 10), ValueError, "lr"),
    (lambda S, R, E: effective_flow(E, S, R, -1e-3, 10), ValueError, "lr"),
    (lambda S, R, E: effective_flow(E, S, R, float("inf"), 10), ValueError, "lr"),
    (lambda S, R, E: effective_flow(E, S, R, 0.1, -1), ValueError, "steps"),
    (lambda S, R, E: effective_flow(E, S, R, 0.1, 5, record_every=0), ValueError,
     "record_every"),
    (lambda S, R, E: effective_flow(E, S, R, 0.1, 5, method="adam"), ValueError, "method"),
    (lambda S, R, E: effective_flow(E[:, :1] * 0 + 1, S, R, 0.1, 5), ValueError, "E0"),
    (lambda S, R, E: effective_hessian(S, R, 1), ValueError, "p"),
    (lambda S, R, E: effective_hessian(S, R, 3), ValueError, "samples"),
    (lambda S, R, E: effective_hessian(S, R, 6, z0=0), ValueError, "z0"),
    (lambda S, R, E: effective_hessian(S, R[:3], 6), ValueError, "results"),
    (lambda S, R, E: grokking_rate(*addition(2), 2), ValueError, "p"),
    (lambda S, R, E: predicted_grokking_steps(S, R, 6, 0), ValueError, "lr"),
    (lambda S, R, E: unique_structure_probability(10, 0.0), ValueError, "fraction"),
    (lambda S, R, E: unique_structure_probability(10, [0.5, 1.2]), ValueError, "fraction"),
    (lambda S, R, E: unique_structure_probability(10, float("nan")), ValueError, "fraction"),
    (lambda S, R, E: unique_structure_probability(1, 0.5), ValueError, "p"),
    (lambda S, R, E: unique_structure_probability(10, 0.5, trials=0), ValueError, "trials"),
    (lambda S, R, E: critical_fraction(1), ValueError, "p"),
    (lambda S, R, E: critical_fraction(10, level=1.0), ValueError, "level"),
    (lambda S, R, E: conserved_quantities(E[:, 0].long()), TypeError, "E"),
])
def test_bad_inputs(call, exc, name):
    S, R = addition(6)
    E = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(exc, match=rf"^{name}\b"):
        call(S, R, E)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    S, R = addition(10)
    E = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(effective_loss(E.cuda(), S, R).cpu(), effective_loss(E, S, R))
    a = effective_flow(E, S, R, 0.1, 20).trajectory
    b = effective_flow(E.cuda(), S, R, 0.1, 20).trajectory
    assert b.is_cuda
    torch.testing.assert_close(b.cpu(), a)
