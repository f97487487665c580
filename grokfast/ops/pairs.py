"""Pairwise-distance kernels with an inclusive Euclidean radius: connected components of the
eps-graph, nearest center within eps, and pair counts within several radii (optionally split by
group label). Plain functions (not differentiable); they take torch tensors on the CPU or a CUDA
device, or numpy arrays, and return torch tensors on the device of the points.

Exactness: a pair (i, j) is within radius r iff the float64 evaluation of
sum_k (x_ik - x_jk)^2 over the float32 inputs is <= r * r (float64). The kernels use the float32
expansion |x|^2 + |y|^2 - 2 x.y only outside a guard band derived from a float32 rounding-error
bound and recompute the pairs inside it in float64 (csrc/pairs/pairs_common.h), so no decision is
left to rounding. scikit-learn computes in float64 as well (KD-tree below 16 dimensions, the
float64 GEMM expansion above), so it agrees wherever its own float64 rounding is exact.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from grokfast._ext import ext
from grokfast.ops._validate import as_tensor, check_same_device, resolve_backend

_GPU_BACKENDS = ("cuda", "cuda-emulated")
MAX_POINTS = 2 ** 31 - 1

Radius = Union[float, int]


class Assignment(NamedTuple):
    """index: int64 [N], the nearest center within eps (ties: lowest index), -1 where none;
    distance: float32 [N], its Euclidean distance (float64 value rounded), +inf where none."""

    index: Tensor
    distance: Tensor


# --------------------------------------------------------------------------------------------
# Validation


def _points(name: str, value) -> Tensor:
    x = as_tensor(name, value).detach()
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a tensor on the CPU or a CUDA device, got {x.device}")
    if x.dtype != torch.float32:
        hint = " (convert with .float() / .astype(np.float32): decisions are made on the float32 values)"
        raise TypeError(f"{name}: expected dtype float32{hint if x.is_floating_point() else ''}, "
                        f"got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D array of points [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] > MAX_POINTS:
        raise ValueError(f"{name}: at most {MAX_POINTS} points are supported, got {x.shape[0]}")
    if x.numel() > 0 and not _all_finite(x):
        raise ValueError(f"{name}: contains NaN or infinite values (distances need finite points)")
    return x


def _all_finite(x: Tensor) -> bool:
    # A sum is finite when every value is (one pass, no temporary); only if it is not does an
    # exact check tell a NaN or infinity from a finite sum that overflowed. On the CPU numpy's
    # single-threaded sum is used: torch's thread pool is slow to wake on a busy machine.
    if x.is_cuda:
        return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())
    a = x.numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum(dtype=np.float32))) or bool(np.isfinite(a).all())


def _radius(name: str, value, what: str = "radius") -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dim() > 1:
            raise TypeError(f"{name}: expected a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.size != 1 or value.ndim > 1:
            raise TypeError(f"{name}: expected a number, got an array of shape {value.shape}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    r = float(value)
    if math.isnan(r) or r < 0:
        raise ValueError(f"{name}: expected a {what} >= 0, got {r}")
    return r


def _radii(name: str, value, what: str = "radius") -> tuple[list[float], bool]:
    """(radii, scalar): a number gives one radius; a 1-D sequence, array or tensor several.
    ``what`` names one value in errors ("radius", "threshold")."""
    if isinstance(value, (Tensor, np.ndarray)) and value.ndim == 0:
        return [_radius(name, value, what)], True
    if isinstance(value, (Tensor, np.ndarray)):
        if value.ndim != 1:
            raise ValueError(f"{name}: expected a number or a 1-D sequence of {what} values, "
                             f"got shape {tuple(value.shape)}")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_radius(f"{name}[{k}]", v, what) for k, v in enumerate(value)], False
    return [_radius(name, value, what)], True


# --------------------------------------------------------------------------------------------
# Plumbing


def _check_radii_count(R: int, backend: str) -> None:
    limit = ext().pairs_max_radii_gpu
    if backend in _GPU_BACKENDS and R > limit:
        raise ValueError(f"eps: at most {limit} radii on backend {backend!r}, got {R}; "
                         "use backend='cpu'")


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _points_struct(x: Tensor):
    p = ext().PairsPoints()
    p.data = _ptr(x)
    p.n, p.d = x.shape
    p.stride_n, p.stride_d = x.stride()
    return p


def _finish(p, x: Tensor, backend: str, workspace_fn, stats: Optional[Tensor]):
    """Workspace, stream and stats common to every op; returns what must outlive the call."""
    keep = []
    if backend in _GPU_BACKENDS:
        nbytes = int(workspace_fn(p))
        ws = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
        keep.append(ws)
        p.workspace, p.workspace_bytes = _ptr(ws), nbytes
    p.stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
    p.stats = _ptr(stats)
    return keep


def _run_count(x: Tensor, radii: list[float], counts: Tensor, backend: str,
               stats: Optional[Tensor], **fields) -> None:
    """The count kernel over x for the radii into counts; ``fields`` set the rest of
    PairsCountParams (groups, or the within-class mode)."""
    c = ext()
    r = torch.tensor(radii, dtype=torch.float64, device=x.device)
    p = c.PairsCountParams()
    p.x = _points_struct(x)
    p.R = len(radii)
    p.radii = _ptr(r)
    p.counts = _ptr(counts)
    for name, value in fields.items():
        setattr(p, name, value)
    with _device_ctx(x):
        keep = _finish(p, x, backend, c.pairs_count_workspace, stats)
        c.pairs_count(p, backend)
    keep.clear()  # the workspace may go once the kernel is queued


def _device_ctx(x: Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else _NullCtx()


class _NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _new_stats(x: Tensor, want: bool) -> Optional[Tensor]:
    return torch.zeros(ext().pairs_num_stats, dtype=torch.int64, device=x.device) if want else None


def _stats_dict(stats: Optional[Tensor]) -> dict:
    if stats is None:
        return {}
    v = stats.tolist()
    return {"exact": v[0], "tiles": v[1], "tiles_skipped": v[2], "groups": v[3]}


# --------------------------------------------------------------------------------------------
# Ops


def _components(X, eps, backend, want_stats):
    x = _points("X", X)
    r = _radius("eps", eps)
    backend = resolve_backend(backend, x.device, "X")
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    stats = _new_stats(x, want_stats)
    if x.shape[0] == 0:
        return labels, stats
    c = ext()
    p = c.PairsComponentsParams()
    p.x = _points_struct(x)
    p.eps = r
    p.labels = _ptr(labels)
    with _device_ctx(x):
        keep = _finish(p, x, backend, c.pairs_components_workspace, stats)
        c.pairs_components(p, backend)
    keep.clear()  # the workspace may go once the kernel is queued
    return labels, stats


def components(X, eps: Radius, *, backend: Optional[str] = None) -> Tensor:
    """Connected components of the eps-graph of the points X: i and j are joined when
    |x_i - x_j| <= eps (inclusive), transitively; the same partition as scikit-learn's
    DBSCAN(eps, min_samples=1), computed from tiled distances and a union-find without an N x N
    matrix.

    X: float32 [N, D] (torch tensor on the CPU or a CUDA device, or numpy array; any strides).
    eps: radius >= 0 (may be inf). backend: "cpu", "cuda" or "cuda-emulated" (the CUDA kernel on
    host threads); default from the device of X.
    Returns int64 labels [N] numbered by first appearance: labels[0] == 0, the next point outside
    component 0 gets 1, and so on.
    """
    return _components(X, eps, backend, False)[0]


def _assign(X, centers, eps, backend, want_stats):
    x = _points("X", X)
    cen = _points("centers", centers)
    r = _radius("eps", eps)
    check_same_device({"centers": cen}, x.device, "X")
    if cen.shape[1] != x.shape[1]:
        raise ValueError(f"centers: expected shape (C, {x.shape[1]}) (D = columns of X), "
                         f"got {tuple(cen.shape)}")
    backend = resolve_backend(backend, x.device, "X")
    N = x.shape[0]
    index = torch.empty(N, dtype=torch.int64, device=x.device)
    distance = torch.empty(N, dtype=torch.float32, device=x.device)
    stats = _new_stats(x, want_stats)
    if N == 0:
        return Assignment(index, distance), stats
    c = ext()
    p = c.PairsAssignParams()
    p.x = _points_struct(x)
    p.centers = _points_struct(cen)
    p.eps = r
    p.index, p.distance = _ptr(index), _ptr(distance)
    with _device_ctx(x):
        keep = _finish(p, x, backend, c.pairs_assign_workspace, stats)
        c.pairs_assign(p, backend)
    keep.clear()  # the workspace may go once the kernel is queued
    return Assignment(index, distance), stats


def assign(X, centers, eps: Radius, *, backend: Optional[str] = None) -> Assignment:
    """Nearest center within eps for every point.

    X: float32 [N, D]; centers: float32 [C, D] (same device as X); eps: radius >= 0.
    Returns Assignment(index, distance): index int64 [N] is the center with the smallest
    distance among those with |x - c| <= eps (ties: the lowest index), -1 where there is none;
    distance float32 [N] is that distance (its float64 value rounded to float32), +inf where
    there is none.
    """
    return _assign(X, centers, eps, backend, False)[0]


def _count_pairs(X, eps, groups, backend, want_stats):
    x = _points("X", X)
    radii, scalar = _radii("eps", eps)
    g = as_tensor("groups", groups, optional=True)
    N = x.shape[0]
    if g is not None:
        check_same_device({"groups": g}, x.device, "X")
        if g.dtype == torch.bool or g.is_floating_point() or g.is_complex():
            raise TypeError(f"groups: expected integer group labels, got {g.dtype}")
        if g.dim() != 1 or g.shape[0] != N:
            raise ValueError(f"groups: expected shape ({N},) (one label per point of X), "
                             f"got {tuple(g.shape)}")
        g = g.detach().to(torch.int64)
    backend = resolve_backend(backend, x.device, "X")
    R = len(radii)
    _check_radii_count(R, backend)
    counts = torch.zeros(R, dtype=torch.int64, device=x.device)
    same = torch.zeros(R, dtype=torch.int64, device=x.device) if g is not None else None
    stats = _new_stats(x, want_stats)
    if R > 0 and N > 1:
        extra = {}
        if g is not None:
            extra = dict(groups=_ptr(g), groups_stride=g.stride(0), counts_same=_ptr(same))
        _run_count(x, radii, counts, backend, stats, **extra)
    out = counts if same is None else torch.stack([same, counts - same], 1)
    return (out[0] if scalar else out), stats


def count_pairs(X, eps: Union[Radius, Sequence[Radius], Tensor, np.ndarray], groups=None, *,
                backend: Optional[str] = None) -> Tensor:
    """Number of unordered pairs i < j with |x_i - x_j| <= eps, for one or several radii in one
    pass, optionally split by whether the two points carry the same group label.

    X: float32 [N, D]. eps: a radius >= 0, or a 1-D sequence / array / tensor of R radii.
    groups: optional integer labels [N] (any values; equal labels = same group).
    Returns an int64 tensor on the device of X:
      without groups: shape [R] (one count per radius), or [] for a scalar eps;
      with groups:    shape [R, 2] with columns (same group, different groups), or [2] for a
                      scalar eps; the two columns add up to the count without groups.
    """
    return _count_pairs(X, eps, groups, backend, False)[0]


class ClassCounts(NamedTuple):
    """pairs: int64 [R] (or [] for a scalar eps), unordered same-class pairs within each radius
    (both points in the mask, when one is given); neighbors: int64 [N, R] (or [N]) with, for
    every point, its same-class neighbours within each radius (neighbours in the mask, when
    given), or None when not requested."""

    pairs: Tensor
    neighbors: Optional[Tensor]


def _class_ids(name: str, value, N: int, device) -> Tensor:
    t = as_tensor(name, value)
    check_same_device({name: t}, device, "X")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name}: expected integer class labels, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != N:
        raise ValueError(f"{name}: expected shape ({N},) (one label per point of X), "
                         f"got {tuple(t.shape)}")
    return t.detach().to(torch.int64)


def _mask(value, N: int, device) -> Optional[Tensor]:
    m = as_tensor("mask", value, optional=True)
    if m is None:
        return None
    check_same_device({"mask": m}, device, "X")
    if m.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got {m.dtype}")
    if m.dim() != 1 or m.shape[0] != N:
        raise ValueError(f"mask: expected shape ({N},) (one flag per point of X), "
                         f"got {tuple(m.shape)}")
    return m.detach()


def count_within_classes(X, classes, eps, *, mask=None, neighbors: bool = False,
                         backend: Optional[str] = None) -> ClassCounts:
    """Pairs of points of the same class within each radius, never comparing points of
    different classes: the cost is the sum over classes of n_c^2, not N^2. The δ-parallelogram
    counter of grokfast.representation is a client: points are combined representations
    E_a + E_b (or E_a E_b), classes their results.

    X: float32 [N, D]; classes: integer labels [N] (any values); eps: a radius >= 0 or a 1-D
    sequence of radii; mask: optional bool [N] (e.g. the training set) restricting both points
    of a counted pair, and the neighbour side of ``neighbors``. neighbors=True also returns, for
    every point, how many same-class points lie within each radius. Exact like count_pairs.
    Points already ordered by class are used in place (no sorted copy).
    """
    x = _points("X", X)
    radii, scalar = _radii("eps", eps)
    N = x.shape[0]
    cls = _class_ids("classes", classes, N, x.device)
    m = _mask(mask, N, x.device)
    backend = resolve_backend(backend, x.device, "X")
    R = len(radii)
    _check_radii_count(R, backend)
    dev = x.device
    pairs = torch.zeros(R, dtype=torch.int64, device=dev)
    nb = torch.zeros(N, R, dtype=torch.int64, device=dev) if neighbors else None
    if R > 0 and N > 1:
        # Sort by class: each class is a contiguous block and only blocks meet themselves.
        _, dense = torch.unique(cls, return_inverse=True)
        presorted = bool((dense[1:] >= dense[:-1]).all())
        order = None if presorted else torch.argsort(dense, stable=True)
        sizes = torch.bincount(dense)
        offsets = torch.zeros(sizes.shape[0] + 1, dtype=torch.int64, device=dev)
        offsets[1:] = torch.cumsum(sizes, 0)
        blocks = (sizes + 63) // 64
        tiles = torch.zeros_like(offsets)
        tiles[1:] = torch.cumsum(blocks * (blocks + 1) // 2, 0)
        xs = x if order is None else x[order].contiguous()
        ms = None
        if m is not None:
            ms = (m if order is None else m[order]).to(torch.uint8).contiguous()
        nbs = None
        if neighbors:
            nbs = nb if order is None else torch.zeros(N, R, dtype=torch.int64, device=dev)
        _run_count(xs, radii, pairs, backend, None, C=int(sizes.shape[0]),
                   class_offsets=_ptr(offsets), tile_offsets=_ptr(tiles),
                   total_tiles=int(tiles[-1]), mask=_ptr(ms), neighbors=_ptr(nbs))
        if neighbors and order is not None:
            nb[order] = nbs
    if scalar:
        pairs = pairs[0]
        nb = nb[:, 0] if nb is not None else None
    return ClassCounts(pairs, nb)


# Diagnostics for tests and benchmarks: the result plus the kernels' counters (pairs decided by
# the float64 recomputation, tiles computed / skipped, groups of the CPU leader pass).
def _components_stats(X, eps, *, backend=None):
    labels, stats = _components(X, eps, backend, True)
    return labels, _stats_dict(stats)


def _assign_stats(X, centers, eps, *, backend=None):
    out, stats = _assign(X, centers, eps, backend, True)
    return out, _stats_dict(stats)


def _count_pairs_stats(X, eps, groups=None, *, backend=None):
    out, stats = _count_pairs(X, eps, groups, backend, True)
    return out, _stats_dict(stats)
