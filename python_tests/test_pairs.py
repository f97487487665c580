"""grokfast.pairs (components, assign, count_pairs) against grokfast.ref, scikit-learn's DBSCAN
and brute force, on every backend; adversarial ties where the float32 GEMM expansion rounds the
wrong way; bad inputs."""

import functools
import math

import numpy as np
import pytest
import torch

import grokfast
from grokfast import pairs, ref
from grokfast.ops.pairs import _assign_stats, _components_stats, _count_pairs_stats
from conftest import device_of

sklearn_cluster = pytest.importorskip("sklearn.cluster")


# ---------------------------------------------------------------------------------------------
# Data


def canon(labels) -> np.ndarray:
    """Renumber a partition by first appearance."""
    labels = np.asarray(labels)
    seen, out = {}, np.empty(len(labels), dtype=np.int64)
    for i, l in enumerate(labels.tolist()):
        out[i] = seen.setdefault(l, len(seen))
    return out


def dbscan(x: np.ndarray, eps: float) -> np.ndarray:
    return canon(sklearn_cluster.DBSCAN(eps=eps, min_samples=1).fit(x).labels_)


@functools.lru_cache(maxsize=None)
def blobs(N: int, D: int, seed: int = 0, noise: float = 0.1):
    """Gaussian blobs (spread 0.05 per dimension) at unit-scale centres plus uniform noise, and
    an eps at which blobs join internally but stay apart from one another."""
    rng = np.random.default_rng(seed)
    k = max(1, min(8, N // 4))
    centres = rng.uniform(-1, 1, (k, D)) * 2.0
    x = centres[rng.integers(0, k, N)] + rng.normal(0, 0.05, (N, D))
    n_noise = int(noise * N)
    x[:n_noise] = rng.uniform(-2, 2, (n_noise, D))
    eps = 0.05 * math.sqrt(2 * D) * 1.6 if D > 1 else 0.05
    return x.astype(np.float32), float(eps)


@functools.lru_cache(maxsize=None)
def adversarial(D: int, spread: float, seed: int = 0):
    """Points whose squared distances are exact in float64 (coordinates on a 1/1024 grid below
    2048 in magnitude) at exactly, just below and just above eps = 1, around far-apart bases with
    norms ~ spread * sqrt(D): the float32 expansion |x|^2 + |y|^2 - 2 x.y cannot tell them apart.
    Returns (points, pairs at exactly 1, pairs just inside, pairs just outside)."""
    rng = np.random.default_rng(seed)
    grid = 1024.0

    def base():
        return np.round(rng.uniform(-spread, spread, D) * grid) / grid

    dims = rng.permutation(D)[: min(D, 5)]
    v = np.zeros(D)
    if D >= 4:
        v[dims[:4]] = 0.5  # |v| = 1
    else:
        v[dims[0]] = 1.0
    pts, exact, inside, outside = [], [], [], []
    for _ in range(3):  # chains b, b + v, b + 2v, ... with consecutive points exactly 1 apart
        b = base()
        start = len(pts)
        pts += [b + m * v for m in range(4)]
        exact += [(start + m, start + m + 1) for m in range(3)]
    for _ in range(3):  # |w|^2 = 1 + 2^-10: just outside
        b = base()
        w = v.copy()
        if D >= 5:
            w[dims[4]] = 1 / 32
        else:
            w[dims[0]] += 1 / grid
        pts += [b, b + w]
        outside.append((len(pts) - 2, len(pts) - 1))
    for _ in range(3):  # |w|^2 < 1 by a hair: just inside
        b = base()
        w = v.copy()
        w[dims[0]] -= 1 / grid
        pts += [b, b + w]
        inside.append((len(pts) - 2, len(pts) - 1))
    x = np.asarray(pts)
    assert np.all(np.abs(x) < 2048) and np.all(np.round(x * grid) == x * grid)
    return x.astype(np.float32), exact, inside, outside


def lattice(N: int, D: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = 2 if D > 10 else 4
    return rng.integers(0, hi, (N, D)).astype(np.float32)


def to(backend: str, x):
    return torch.as_tensor(x).to(device_of(backend))


def gemm_decisions_disagree(x: np.ndarray, eps: float) -> bool:
    """Whether the plain float32 expansion on mean-centred points gets some pair wrong."""
    xc = torch.as_tensor(x - x.mean(0, dtype=np.float64).astype(np.float32))
    n = (xc * xc).sum(1)
    d2_32 = n[:, None] + n[None, :] - 2 * xc @ xc.T
    x64 = torch.as_tensor(x, dtype=torch.float64)
    d2 = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    off = ~torch.eye(len(x), dtype=torch.bool)
    return bool(((d2_32 <= eps * eps) != (d2 <= eps * eps))[off].any())


# ---------------------------------------------------------------------------------------------
# components


@pytest.mark.parametrize("N", [0, 1, 2, 17, 1000])
@pytest.mark.parametrize("D", [1, 3, 100])
def test_components_match_dbscan_on_blobs(backend, N, D):
    x, eps = blobs(N, D)
    labels = pairs.components(to(backend, x), eps, backend=backend)
    assert labels.dtype == torch.int64 and labels.shape == (N,)
    assert labels.device.type == device_of(backend).type
    if N == 0:
        return
    got = labels.cpu().numpy()
    np.testing.assert_array_equal(got, canon(got))  # numbered by first appearance
    np.testing.assert_array_equal(got, dbscan(x, eps))
    if N == 1000:
        assert 1 < got.max() + 1 < N  # the data has structure: neither one nor N components


@pytest.mark.parametrize("D", [1, 3, 100])
@pytest.mark.parametrize("eps_kind", ["exact", "below", "sqrt"])
def test_components_lattice_ties(backend, D, eps_kind):
    """Integer points with eps exactly a lattice distance: inclusive; just below: exclusive."""
    x = lattice(300, D)
    base = {1: 1.0, 3: 1.0, 100: 6.0}[D]
    eps = {"exact": base, "below": math.nextafter(base, 0.0), "sqrt": math.sqrt(base * base + 1)}[eps_kind]
    got = pairs.components(to(backend, x), eps, backend=backend).cpu().numpy()
    expected = ref.components_reference(x, eps).numpy()
    np.testing.assert_array_equal(got, expected)
    if sklearn_is_float64(D, eps):
        np.testing.assert_array_equal(got, dbscan(x, eps))


def sklearn_is_float64(D: int, eps: float) -> bool:
    """Whether DBSCAN on float32 points decides like the float64 definition: below 16
    dimensions it uses a float64 KD-tree; above, a float64 GEMM expansion (exact on these
    grids) but a radius rounded to float32, so only float32-exact radii compare alike."""
    return D <= 15 or float(np.float32(eps)) == eps


def test_lattice_ties_decide_something():
    """The tie cases above are not vacuous: including or excluding exact ties changes them."""
    for D, base in ((3, 1.0), (100, 6.0)):
        x = lattice(300, D)
        a = ref.components_reference(x, base)
        b = ref.components_reference(x, math.nextafter(base, 0.0))
        assert not torch.equal(a, b)


def test_sklearn_rounds_the_radius_to_float32_above_15_dimensions():
    """What the comparisons above skip: for float32 data with D > 15, DBSCAN's threshold is
    float32(eps)^2, so at eps = nextafter(6, 0) it still joins points exactly 6 apart, whereas
    the float64 definition (and grokfast) does not; with eps rounded to float32 they agree."""
    x = lattice(300, 100)
    eps = math.nextafter(6.0, 0.0)
    ours = pairs.components(x, eps).numpy()
    theirs = dbscan(x, eps)
    assert not np.array_equal(ours, theirs)
    np.testing.assert_array_equal(theirs, pairs.components(x, float(np.float32(eps))).numpy())


@pytest.mark.parametrize("D,spread", [(3, 1000.0), (100, 0.5), (100, 1000.0)])
def test_components_adversarial_gemm_rounding(backend, D, spread):
    x, exact, inside, outside = adversarial(D, spread)
    assert gemm_decisions_disagree(x, 1.0)  # float32 alone would decide some pair wrongly
    labels, stats = _components_stats(to(backend, x), 1.0, backend=backend)
    got = labels.cpu().numpy()
    np.testing.assert_array_equal(got, ref.components_reference(x, 1.0).numpy())
    np.testing.assert_array_equal(got, dbscan(x, 1.0))
    for i, j in exact + inside:
        assert got[i] == got[j]
    for i, j in outside:
        assert got[i] != got[j]
    assert stats["exact"] > 0  # the guard band sent the ties to the float64 recomputation
    below = pairs.components(to(backend, x), math.nextafter(1.0, 0.0), backend=backend).cpu().numpy()
    for i, j in exact:
        assert below[i] != below[j]
    for i, j in inside:
        assert below[i] == below[j]


def test_components_duplicates_and_eps_zero(backend):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20, 5)).astype(np.float32)
    x = base[rng.integers(0, 20, 200)]
    got = pairs.components(to(backend, x), 0.0, backend=backend).cpu().numpy()
    _, first = np.unique(x, axis=0, return_inverse=True)
    np.testing.assert_array_equal(got, canon(first.reshape(-1)))
    got_inf = pairs.components(to(backend, x), math.inf, backend=backend).cpu().numpy()
    np.testing.assert_array_equal(got_inf, np.zeros(200, dtype=np.int64))


def test_components_non_contiguous_and_numpy(backend):
    x, eps = blobs(1000, 3)
    wide = np.zeros((1000, 6), dtype=np.float32)
    wide[:, ::2] = x
    expected = dbscan(x, eps)
    strided = to(backend, wide)[:, ::2]
    assert not strided.is_contiguous()
    np.testing.assert_array_equal(pairs.components(strided, eps, backend=backend).cpu().numpy(), expected)
    transposed = to(backend, np.ascontiguousarray(x.T)).T
    assert not transposed.is_contiguous()
    np.testing.assert_array_equal(pairs.components(transposed, eps, backend=backend).cpu().numpy(), expected)
    if backend != "cuda":
        np.testing.assert_array_equal(pairs.components(x, eps, backend=backend).numpy(), expected)


def test_components_zero_dimensions(backend):
    x = torch.zeros(5, 0).to(device_of(backend))
    assert pairs.components(x, 0.0, backend=backend).tolist() == [0] * 5


@functools.lru_cache(maxsize=None)
def ring_of_blobs(seed: int = 0):
    """A chain of 24 blobs of radius 0.3 whose centres are 1.2 to 1.7 apart, eps = 1: whether
    neighbouring blobs connect depends on their closest members (the CPU leader pass's group
    bounds are inconclusive there); plus 600 far-apart tight clusters of 10 (more than one
    chunk's leader budget) and 300 isolated points. Returns (points, blob of each point or -1)."""
    rng = np.random.default_rng(seed)
    pts, centre = [], np.zeros(3)
    for b in range(24):
        step = rng.normal(size=3)
        centre = centre + step / np.linalg.norm(step) * rng.uniform(1.2, 1.7)
        d = rng.normal(size=(80, 3))
        d *= rng.uniform(0, 0.3, (80, 1)) ** (1 / 3) * 0.3 / np.linalg.norm(d, axis=1, keepdims=True)
        pts.append(centre + d)
    pts.append(rng.uniform(-1, 1, (300, 3)) * 400 + 100)
    far = rng.uniform(-1, 1, (600, 3)) * 400 - 100
    pts.append(np.repeat(far, 10, axis=0) + rng.normal(0, 0.01, (6000, 3)))
    x = np.concatenate(pts).astype(np.float32)
    order = rng.permutation(len(x))
    blob_of = np.concatenate([np.repeat(np.arange(24), 80), np.full(6300, -1)])[order]
    return x[order], blob_of


def test_components_group_bounds_and_many_chunks(backend):
    x, blob_of = ring_of_blobs()
    labels, stats = _components_stats(to(backend, x), 1.0, backend=backend)
    got = labels.cpu().numpy()
    expected = dbscan(x, 1.0)
    np.testing.assert_array_equal(got, expected)
    # Not vacuous: some gaps between neighbouring blobs are bridged, others are not.
    assert 1 < len(np.unique(expected[blob_of >= 0])) < 24
    if backend == "cpu":
        assert stats["groups"] < len(x) / 2  # the leader pass formed multi-point groups


def test_components_is_independent_of_threads(cpu_isa, monkeypatch):
    x, _ = ring_of_blobs()
    expected = dbscan(x, 1.0)
    for threads in ("1", "2"):
        monkeypatch.setenv("GROKFAST_NUM_THREADS", threads)
        np.testing.assert_array_equal(pairs.components(x, 1.0, backend="cpu").numpy(), expected)


# ---------------------------------------------------------------------------------------------
# assign


@pytest.mark.parametrize("N,C,D", [(0, 3, 3), (17, 0, 3), (1, 1, 1), (1000, 50, 100), (300, 17, 3)])
@pytest.mark.parametrize("eps", [0.0, 0.8, math.inf])
def test_assign_matches_reference(backend, N, C, D, eps):
    x, _ = blobs(N, D, seed=1)
    centers, _ = blobs(C, D, seed=2)
    if N and C:
        x[: min(N, C)] = centers[: min(N, C)]  # exact hits, so eps = 0 assigns something
    out = pairs.assign(to(backend, x), to(backend, centers), eps, backend=backend)
    index, distance = ref.assign_reference(x, centers, eps)
    assert out.index.dtype == torch.int64 and out.distance.dtype == torch.float32
    assert out.index.shape == (N,) and out.distance.shape == (N,)
    torch.testing.assert_close(out.index.cpu(), index, rtol=0, atol=0)
    torch.testing.assert_close(out.distance.cpu(), distance, rtol=0, atol=0)
    if N >= 300 and eps > 0:  # both outcomes occur
        assert (index >= 0).any() and (eps == math.inf or (index < 0).any())


def test_assign_ties_take_lowest_index(backend):
    x = np.array([[0, 0], [1, 0], [5, 5], [0.5, 0]], dtype=np.float32)
    centers = np.array([[2, 0], [-1, 0], [1, 0], [0, 0], [1, 0], [0, 1]], dtype=np.float32)
    out = pairs.assign(to(backend, x), to(backend, centers), 1.0, backend=backend)
    # point 0: centers 1, 2?, 3, 5 -> d = 1, -, 0, 1: center 3; point 1: centers 0, 2, 4 at
    # distances 1, 0, 0 -> 2 (lowest of the tie); point 2: none; point 3: 2, 3, 4 at 0.5 -> 2.
    assert out.index.cpu().tolist() == [3, 2, -1, 2]
    assert out.distance.cpu().tolist() == [0.0, 0.0, math.inf, 0.5]
    out = pairs.assign(to(backend, x), to(backend, centers[[0, 1, 5]]), 1.0, backend=backend)
    assert out.index.cpu().tolist() == [1, 0, -1, -1]  # point 0: centers 1 and 5 tie at 1


@pytest.mark.parametrize("D,spread", [(3, 1000.0), (100, 1000.0)])
def test_assign_adversarial(backend, D, spread):
    x, exact, inside, outside = adversarial(D, spread)
    heads = sorted({i for i, _ in exact + inside + outside})
    for eps in (1.0, math.nextafter(1.0, 0.0)):
        out, stats = _assign_stats(to(backend, x), to(backend, x[heads]), eps, backend=backend)
        index, distance = ref.assign_reference(x, x[heads], eps)
        assert out.index.cpu().tolist() == index.tolist()
        assert out.distance.cpu().tolist() == distance.tolist()
        assert stats["exact"] > 0


# ---------------------------------------------------------------------------------------------
# count_pairs


RADII = [0.0, 0.3, 0.8, 2.5, math.inf]


@functools.lru_cache(maxsize=None)
def count_grouped(N: int, D: int):
    x, eps = blobs(N, D, seed=4)
    radii = RADII + [eps]
    groups = np.random.default_rng(5).integers(-3, 3, N) * 1000
    return x, radii, groups, ref.count_pairs_reference(x, radii, groups)


def count_case(N: int, D: int, grouped: bool):
    x, radii, groups, expected = count_grouped(N, D)
    if grouped:
        return x, radii, groups, expected
    return x, radii, None, expected.sum(1)  # same + different = all pairs


@pytest.mark.parametrize("N,D", [(0, 3), (1, 3), (2, 1), (17, 3), (1000, 100), (300, 3)])
@pytest.mark.parametrize("grouped", [False, True])
def test_count_pairs_matches_reference(backend, N, D, grouped):
    x, radii, groups, expected = count_case(N, D, grouped)
    got = pairs.count_pairs(to(backend, x), radii, None if groups is None else to(backend, groups),
                            backend=backend)
    assert got.dtype == torch.int64
    assert got.shape == ((len(radii), 2) if grouped else (len(radii),))
    assert got.cpu().tolist() == expected.tolist()
    total = got.sum(-1) if grouped else got
    assert total[-2].item() == N * (N - 1) // 2  # inf
    if N == 1000:
        assert 0 < total[-1].item() < N * (N - 1) // 2


def test_count_pairs_brute_force_and_shapes(backend):
    x = lattice(200, 3)
    g = np.arange(200) % 3
    d2 = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    iu = np.triu_indices(200, 1)
    same = (g[:, None] == g[None])[iu]
    for r in (0.0, 1.0, math.sqrt(2), math.sqrt(3), 2.0):
        within = d2[iu] <= r * r
        brute = [int((within & same).sum()), int((within & ~same).sum())]
        assert pairs.count_pairs(to(backend, x), r, backend=backend).item() == sum(brute)
        got = pairs.count_pairs(to(backend, x), r, to(backend, g), backend=backend)
        assert got.shape == (2,) and got.cpu().tolist() == brute
    # exact lattice distances: sqrt(3)^2 rounds below 3 in float64, sqrt(2)^2 above 2
    ties = pairs.count_pairs(to(backend, x), [1.0, math.nextafter(1.0, 0.0)], backend=backend)
    assert ties[0] > ties[1]
    for eps in (np.array([1.0, 2.0]), torch.tensor([1.0, 2.0]), (1.0, 2.0)):
        assert pairs.count_pairs(to(backend, x), eps, backend=backend).shape == (2,)
    for eps in (np.float32(1.0), torch.tensor(1.0), 1):
        assert pairs.count_pairs(to(backend, x), eps, backend=backend).shape == ()
    assert pairs.count_pairs(to(backend, x), [], backend=backend).shape == (0,)


@pytest.mark.parametrize("D,spread", [(3, 1000.0), (100, 1000.0)])
def test_count_pairs_adversarial(backend, D, spread):
    x, exact, inside, outside = adversarial(D, spread)
    radii = [1.0, math.nextafter(1.0, 0.0), 1.0 + 2 ** -20]
    groups = np.arange(len(x)) % 2
    got, stats = _count_pairs_stats(to(backend, x), radii, to(backend, groups), backend=backend)
    expected = ref.count_pairs_reference(x, radii, groups)
    assert got.cpu().tolist() == expected.tolist()
    assert expected.sum(1)[0] - expected.sum(1)[1] == len(exact)
    assert stats["exact"] > 0


def test_count_pairs_non_contiguous_groups(backend):
    x, eps = blobs(300, 3, seed=6)
    g = np.random.default_rng(0).integers(0, 4, (300, 2))
    gt = to(backend, g)[:, 1]
    assert not gt.is_contiguous()
    got = pairs.count_pairs(to(backend, x), [eps, 2 * eps], gt, backend=backend)
    assert got.cpu().tolist() == ref.count_pairs_reference(x, [eps, 2 * eps], g[:, 1]).tolist()


# ---------------------------------------------------------------------------------------------
# Bad inputs


X3 = np.zeros((4, 3), dtype=np.float32)


def _nan():
    x = X3.copy()
    x[1, 2] = np.nan
    return x


def _inf():
    x = X3.copy()
    x[0, 0] = np.inf
    return x


BAD_COMPONENTS = [
    (dict(X=X3.astype(np.float64)), TypeError, r"X: expected dtype float32 .*astype"),
    (dict(X=X3.astype(np.int64)), TypeError, r"X: expected dtype float32, got torch.int64"),
    (dict(X=None), TypeError, r"X: expected a torch.Tensor or numpy array"),
    (dict(X=[[0.0, 1.0]]), TypeError, r"X: expected a torch.Tensor or numpy array, got list"),
    (dict(X=np.zeros(4, dtype=np.float32)), ValueError, r"X: expected a 2-D array of points \[N, D\]"),
    (dict(X=np.zeros((2, 2, 2), dtype=np.float32)), ValueError, r"X: expected a 2-D array"),
    (dict(X=_nan()), ValueError, r"X: contains NaN or infinite"),
    (dict(X=_inf()), ValueError, r"X: contains NaN or infinite"),
    (dict(eps=-0.5), ValueError, r"eps: expected a radius >= 0, got -0.5"),
    (dict(eps=math.nan), ValueError, r"eps: expected a radius >= 0, got nan"),
    (dict(eps="1"), TypeError, r"eps: expected a number, got str"),
    (dict(eps=[1.0, 2.0]), TypeError, r"eps: expected a number, got list"),
    (dict(eps=torch.tensor([1.0, 2.0])), TypeError, r"eps: expected a number, got a tensor"),
    (dict(eps=True), TypeError, r"eps: expected a number, got bool"),
    (dict(backend="gpu"), ValueError, r"backend: expected one of"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_COMPONENTS)
def test_components_bad_inputs(kwargs, error, match):
    args = dict(X=X3, eps=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pairs.components(args.pop("X"), args.pop("eps"), **args)


BAD_ASSIGN = [
    (dict(centers=np.zeros((2, 4), dtype=np.float32)), ValueError, r"centers: expected shape \(C, 3\)"),
    (dict(centers=np.zeros((2, 3), dtype=np.float64)), TypeError, r"centers: expected dtype float32"),
    (dict(centers=np.zeros(3, dtype=np.float32)), ValueError, r"centers: expected a 2-D array"),
    (dict(centers=_nan()), ValueError, r"centers: contains NaN"),
    (dict(centers=None), TypeError, r"centers: expected a torch.Tensor"),
    (dict(X=X3.astype(np.float16)), TypeError, r"X: expected dtype float32"),
    (dict(eps=-1), ValueError, r"eps: expected a radius >= 0"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_ASSIGN)
def test_assign_bad_inputs(kwargs, error, match):
    args = dict(X=X3, centers=X3[:2], eps=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pairs.assign(args["X"], args["centers"], args["eps"])


BAD_COUNT = [
    (dict(groups=np.zeros(5, dtype=np.int64)), ValueError, r"groups: expected shape \(4,\)"),
    (dict(groups=np.zeros((4, 1), dtype=np.int64)), ValueError, r"groups: expected shape \(4,\)"),
    (dict(groups=np.zeros(4, dtype=np.float32)), TypeError, r"groups: expected integer group labels"),
    (dict(groups=np.zeros(4, dtype=bool)), TypeError, r"groups: expected integer group labels"),
    (dict(groups=[0, 0, 1, 1]), TypeError, r"groups: expected a torch.Tensor or numpy array"),
    (dict(eps=[1.0, -2.0]), ValueError, r"eps\[1\]: expected a radius >= 0, got -2.0"),
    (dict(eps=[1.0, math.nan]), ValueError, r"eps\[1\]: expected a radius >= 0, got nan"),
    (dict(eps=np.ones((2, 2))), ValueError, r"eps: expected a number or a 1-D sequence"),
    (dict(eps=None), TypeError, r"eps: expected a number, got NoneType"),
    (dict(X=_inf()), ValueError, r"X: contains NaN or infinite"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_COUNT)
def test_count_pairs_bad_inputs(kwargs, error, match):
    args = dict(X=X3, eps=[1.0], groups=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pairs.count_pairs(args["X"], args["eps"], args["groups"])


def test_other_devices_are_rejected():
    with pytest.raises(ValueError, match=r"X: expected a tensor on the CPU or a CUDA device, got meta"):
        pairs.components(torch.empty(4, 3, device="meta"), 1.0)


def test_inputs_that_require_grad():
    x = torch.as_tensor(lattice(50, 3)).requires_grad_(True)
    assert pairs.components(x, 1.0).tolist() == ref.components_reference(x.detach(), 1.0).tolist()
    assert pairs.count_pairs(x, 1.0).item() == ref.count_pairs_reference(x.detach(), 1.0).item()


def test_huge_dimension_recomputes_every_pair(cpu_isa):
    """Above 10^6 dimensions the float32 bound is not used: every pair is decided in float64."""
    x = torch.zeros(3, 1_000_001)
    x[1, 0] = 1.0
    x[2, :4] = 0.5  # |x2 - x0| = 1, |x2 - x1| = 1
    labels, stats = _components_stats(x, math.nextafter(1.0, 0.0), backend="cpu")
    assert labels.tolist() == [0, 1, 2] and stats["exact"] == 3
    assert pairs.components(x, 1.0, backend="cpu").tolist() == [0, 0, 0]
    assert pairs.count_pairs(x, [1.0, 0.5], backend="cpu").tolist() == [3, 0]
    out = pairs.assign(x, x[1:], 1.0, backend="cpu")
    assert out.index.tolist() == [0, 0, 1] and out.distance.tolist() == [1.0, 0.0, 0.0]


def test_backend_must_match_device():
    with pytest.raises(ValueError, match=r"backend='cuda' needs X on a CUDA device"):
        pairs.components(X3, 1.0, backend="cuda")
    with pytest.raises(ValueError, match=r"unknown|backend: expected one of"):
        pairs.count_pairs(X3, 1.0, backend="tpu")


@pytest.mark.skipif(not grokfast.backends()["cuda"], reason="needs a GPU")
def test_cuda_device_mismatch():
    xc = torch.as_tensor(X3).cuda()
    with pytest.raises(ValueError, match=r"centers: expected a tensor on cuda"):
        pairs.assign(xc, torch.as_tensor(X3), 1.0)
    with pytest.raises(ValueError, match=r"groups: expected a tensor on cuda"):
        pairs.count_pairs(xc, 1.0, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"backend='cpu' needs X on the CPU"):
        pairs.components(xc, 1.0, backend="cpu")


def test_too_many_radii_on_gpu_backends():
    with pytest.raises(ValueError, match=r"eps: at most 1024 radii on backend 'cuda-emulated'"):
        pairs.count_pairs(X3, [1.0] * 1025, backend="cuda-emulated")
    assert pairs.count_pairs(X3, [1.0] * 1025, backend="cpu").shape == (1025,)


def test_public_namespace():
    assert grokfast.pairs.components is grokfast.ops.components
    assert set(grokfast.pairs.__all__) == {"Assignment", "ClassCounts", "assign", "components",
                                           "count_pairs", "count_within_classes"}
    assert "pairs" in grokfast.__all__
    for name in ("components_reference", "assign_reference", "count_pairs_reference",
                 "count_within_classes_reference"):
        assert callable(getattr(ref, name))


# --------------------------------------------------------------------------------------------
# count_within_classes: only same-class pairs, optional mask and per-point neighbour counts

CLASS_CASES = [  # N, D, number of classes, rounding (ties), seed
    (0, 3, 1, None, 0),
    (1, 3, 1, None, 0),
    (2, 1, 1, 1, 1),
    (65, 4, 1, 1, 2),      # one class over two tiles
    (200, 5, 3, 1, 3),
    (500, 17, 40, None, 4),
    (129, 130, 2, 1, 5),   # D above the 128 register columns, tiles with padding lanes
    (300, 2, 300, 1, 6),   # every point its own class: nothing to count
]
CLASS_RADII = [0.0, 0.5, 1.0, 2.0, 4.0, 100.0]


@pytest.mark.parametrize("N,D,C,decimals,seed", CLASS_CASES)
@pytest.mark.parametrize("masked", [False, True])
def test_count_within_classes_matches_reference(backend, N, D, C, decimals, seed, masked):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    if decimals is not None:
        x = x.round(decimals=decimals)  # many exact ties at the radii
    cls = torch.randint(0, C, (N,), generator=g) * 7 - 3  # arbitrary label values
    mask = (torch.rand(N, generator=g) > 0.3) if masked else None
    want_pairs, want_nb = ref.count_within_classes_reference(x, cls, CLASS_RADII, mask)
    dev = device_of(backend)
    out = pairs.count_within_classes(x.to(dev), cls.to(dev), CLASS_RADII,
                                     mask=mask.to(dev) if mask is not None else None,
                                     neighbors=True, backend=backend)
    assert torch.equal(out.pairs.cpu(), want_pairs)
    assert torch.equal(out.neighbors.cpu(), want_nb)
    if not masked:  # without a mask: every within pair is two neighbour entries
        assert torch.equal(out.neighbors.sum(0).cpu(), 2 * want_pairs)


def test_count_within_classes_is_count_pairs_restricted_to_classes(backend):
    x = torch.from_numpy(blobs(400, 6, seed=3)[0])
    cls = torch.arange(400) % 5
    dev = device_of(backend)
    radii = [0.1, 0.5, 2.0]
    same = pairs.count_pairs(x.to(dev), radii, groups=cls.to(dev), backend=backend)[:, 0]
    got = pairs.count_within_classes(x.to(dev), cls.to(dev), radii, backend=backend)
    assert torch.equal(got.pairs, same) and got.neighbors is None


def test_count_within_classes_scalar_eps_and_noncontiguous():
    x = torch.randn(50, 8).round(decimals=1)
    cls = torch.arange(50) % 3
    a = pairs.count_within_classes(x, cls, 1.5, neighbors=True)
    assert a.pairs.shape == () and a.neighbors.shape == (50,)
    xt = x.t().contiguous().t()
    b = pairs.count_within_classes(xt, cls.numpy(), 1.5, neighbors=True)
    assert torch.equal(a.pairs, b.pairs) and torch.equal(a.neighbors, b.neighbors)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(classes=torch.zeros(3, dtype=torch.int64)), ValueError, "classes: expected shape"),
    (dict(classes=torch.zeros(10)), TypeError, "classes: expected integer"),
    (dict(mask=torch.ones(10)), TypeError, "mask: expected a bool"),
    (dict(mask=torch.ones(4, dtype=torch.bool)), ValueError, "mask: expected shape"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(X=torch.full((10, 2), float("nan"))), ValueError, "X: contains NaN"),
    (dict(X=torch.zeros(10, 2, dtype=torch.float64)), TypeError, "X: expected dtype float32"),
])
def test_count_within_classes_bad_inputs(kwargs, err, match):
    args = dict(X=torch.zeros(10, 2), classes=torch.zeros(10, dtype=torch.int64), eps=1.0)
    args.update(kwargs)
    X, classes, eps = args.pop("X"), args.pop("classes"), args.pop("eps")
    with pytest.raises(err, match=match):
        pairs.count_within_classes(X, classes, eps, **args)
