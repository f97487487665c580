"""Learning dynamics of extracted automata: which tree states merged, and the training phase.

van Rossem & Saxe (streaming parity, implicit state mergers) predict that two hidden states
merge only when they agree on every future output the training set asks of them, and that
training passes through four phases: random, tree fitting, merging, finite automaton. This
module measures both on ``grokfast.automata.extract.Extraction`` results (an analysis layer:
it takes extractions, tensors and Moore machines, never experiment objects).

merger_stats: pair counts over the prefix-tree nodes (the root excluded: its output is never
trained), computed from group sizes, never by enumerating pairs.

Phases (``phase`` / ``PhaseTracker`` / ``phase_labels``), decided per extracted epoch in
this order:

1. "finite automaton": the extracted machine is complete (no undefined transitions) and
   equivalent to the target;
2. "random": the tree is neither fitted nor expanded: the tree output accuracy
   (``Extraction.output_accuracy``: fraction of non-root prefixes whose readout prediction
   equals the target's output) is below ``fit_threshold`` (default 0.9) or unknown, and the
   raw state count is below ``1 + growth`` (default 1.25) times the first extracted count
   (the network has not yet separated the prefixes into more states than at the start);
3. "merging": the raw state count is at least ``merge_drop`` (default 10%) below its running
   peak, the peak taken over the current stretch of fitted or expanded epochs (a random epoch
   ends the stretch and resets the peak);
4. "tree fitting": otherwise (the tree states spread apart, or the outputs fit the tree).

With the paper's defaults the loss sits on its plateau for ~500 epochs while the raw state
count grows (7 -> 27 for seed 0): that growth is the tree phase, so expansion counts as well
as fit.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch

from grokfast.automata.extract import target_states
from grokfast.automata.moore import MooreMachine

RANDOM, TREE_FITTING, MERGING, FINITE_AUTOMATON = (
    "random", "tree fitting", "merging", "finite automaton")
PHASES = (RANDOM, TREE_FITTING, MERGING, FINITE_AUTOMATON)
DEFAULT_FIT_THRESHOLD = 0.9
DEFAULT_MERGE_DROP = 0.1
DEFAULT_GROWTH = 0.25
MERGER_KEYS = ("pairs_within_eps", "merged_pairs", "merged_agreeing_pairs",
               "merged_agreeing_fraction", "agreeing_pairs", "agreeing_unmerged_by_length")


# --------------------------------------------------------------------------------------------
# Agreement on the target: Moore's refinement levels


def refinement_levels(machine: MooreMachine, levels: int) -> np.ndarray:
    """k-equivalence classes of the states of ``machine`` for k = 0..levels: int64
    [levels + 1, S]. Two states are k-equivalent when they emit the same outputs after every
    continuation w with |w| <= k, the empty one included (0-equivalent = same output).
    Classes are numbered 0..C_k-1 within each level. An undefined transition (-1) leads to a
    sink that is equivalent only to itself (its own class at every level)."""
    if not isinstance(machine, MooreMachine):
        raise TypeError(f"machine: expected a MooreMachine, got {type(machine).__name__}")
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 0:
        raise ValueError(f"levels: expected an integer >= 0, got {levels!r}")
    S = machine.num_states
    out = np.empty((int(levels) + 1, S), dtype=np.int64)
    cls = np.unique(machine.outputs, return_inverse=True)[1].reshape(-1)
    trans = machine.transitions
    for k in range(int(levels) + 1):
        if k:
            # the sink (undefined transition) gets class -1 in every signature
            nxt = np.where(trans >= 0, cls[np.maximum(trans, 0)], -1)
            sig = np.concatenate([cls[:, None], nxt], axis=1)
            new = np.unique(sig, axis=0, return_inverse=True)[1].reshape(-1)
            if new.max() == cls.max():  # stable: every further level is the same partition
                out[k:] = cls
                break
            cls = new
        out[k] = cls
    return out


# --------------------------------------------------------------------------------------------
# Merger statistics


def _pair_rows(depth: np.ndarray, key: np.ndarray, d2: int, num_keys: int) -> np.ndarray:
    """For nodes with depth <= d2 and keys in [0, num_keys): number of unordered pairs with
    equal key, one node at depth d2 and the other at depth d, for d = 0..d2 (int64 [d2 + 1])."""
    if (d2 + 1) * num_keys > 4 * key.shape[0] + 1024:  # sparse keys: compress them first
        uniq, key = np.unique(key, return_inverse=True)
        key, num_keys = key.reshape(-1), uniq.shape[0]
    M = np.bincount(depth * num_keys + key, minlength=(d2 + 1) * num_keys)
    M = M.reshape(d2 + 1, num_keys)
    top = M[d2]
    row = M @ top
    row[d2] = (top * (top - 1) // 2).sum()
    return row


_BIG_CLUSTER = 256  # clusters at least this large get a count_pairs call of their own
_MARGIN = 1e-9       # relative safety margin of the float64 bounds and distances
_MAX_OUTER = 0.25    # outer points per cluster member up to which distances are computed here


def _pairs_in_cluster(xc: np.ndarray, r: np.ndarray, eps: float) -> Optional[int]:
    """Pairs within eps among the points xc [n, D] (float64, centred on their mean, r their
    norms), decided by bounds: two "inner" points (2 r (1 + m) <= eps (1 - m)) are within eps
    of each other by the triangle inequality, so only the pairs with an outer point need a
    distance (one small GEMM). None when that is not cheaper than count_pairs, or when some
    distance lies within the margin of eps (the caller then asks count_pairs)."""
    n = r.shape[0]
    inner = 2.0 * r * (1.0 + _MARGIN) <= eps * (1.0 - _MARGIN)
    outer = np.flatnonzero(~inner)
    m = outer.shape[0]
    total = (n - m) * (n - m - 1) // 2
    if m == 0:
        return total
    if m > _MAX_OUTER * n:
        return None
    # rounding of the expansion below: ~D * 1e-16 * r^2; keep it far inside the margin
    if xc.shape[1] * 1e-15 * float(r.max()) ** 2 > _MARGIN * eps * eps:
        return None
    a = xc[outer]
    d2 = (r[outer] ** 2)[:, None] + (r ** 2)[None, :] - 2.0 * (a @ xc.T)  # [m, n]
    e2 = eps * eps
    if (np.abs(d2 - e2) <= 4 * _MARGIN * e2).any():
        return None
    near = d2 <= e2
    total += int(near[:, inner].sum())
    total += int(np.triu(near[:, outer], 1).sum())
    return total


def _count_within_eps(states, labels: np.ndarray, eps: float, clusters_are_components: bool
                      ) -> int:
    """Unordered pairs of rows of ``states`` within eps, as
    ``grokfast.pairs.count_pairs(states, eps)`` counts them (inclusive radius, exact).

    When the clusters are the eps-components (CPU tensors), every such pair lies inside one
    cluster, so the pairs across clusters are skipped, and inside a cluster the triangle
    inequality through the cluster mean settles most pairs without a distance
    (``_pairs_in_cluster``); the clusters it cannot settle cheaply go to count_pairs (large
    ones one by one, small ones together in one count grouped by cluster)."""
    from grokfast.pairs import count_pairs
    N = states.shape[0]
    if N < 2:
        return 0
    on_cpu = not isinstance(states, torch.Tensor) or states.device.type == "cpu"
    if not (clusters_are_components and on_cpu and eps > 0):
        return int(count_pairs(states, eps))
    host = states.numpy() if isinstance(states, torch.Tensor) else np.asarray(states)
    # numpy throughout: torch's parallel gather/reduce kernels cost milliseconds per call
    # here when the other core is busy
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    present = np.flatnonzero(sizes)
    n = sizes[present]
    ends = np.cumsum(n)
    starts = ends - n
    xs = host[order].astype(np.float64)
    if not np.isfinite(xs).all() or np.abs(xs).max() > 1e5 * eps:
        return int(count_pairs(states, eps))  # far from the origin: leave it to the kernel
    xs -= np.repeat(np.add.reduceat(xs, starts, axis=0) / n[:, None], n, axis=0)
    r = np.sqrt(np.square(xs).sum(axis=1))
    total = 0
    unsettled = []
    for c, lo, hi in zip(present.tolist(), starts.tolist(), ends.tolist()):
        if hi - lo < 2:
            continue
        got = _pairs_in_cluster(xs[lo:hi], r[lo:hi], eps)
        if got is None:
            unsettled.append(c)
        else:
            total += got
    small = []
    for c in unsettled:
        if sizes[c] >= _BIG_CLUSTER:
            total += int(count_pairs(np.ascontiguousarray(host[labels == c]), eps))
        else:
            small.append(c)
    if small:
        mask = np.isin(labels, small)
        total += int(count_pairs(np.ascontiguousarray(host[mask]), eps,
                                 groups=labels[mask])[0])
    return total


def merger_stats(extraction, target: MooreMachine,
                 max_length: Optional[int] = None) -> dict[str, Any]:
    """Which pairs of prefix-tree states merged, and whether the target says they may.

    extraction: an ``Extraction`` (or any object with ``tree``, ``labels`` [N], ``states``
    [N, D] and ``eps``). target: the Moore machine the network is trained on. Nodes are the
    tree's prefixes except the root (the empty prefix: its output is never trained).

    Two nodes u, v *agree* when the target emits the same outputs after u.w and v.w for every
    continuation w, the empty one included, with |u.w| and |v.w| both <= ``max_length``
    (default: the tree's depth): the target states after u and v are k-equivalent with
    k = max_length - max(|u|, |v|) (``refinement_levels``). Shortcut: the continuations are
    all sequences up to max_length, also when the tree holds only a training subset
    (train_fraction < 1), where the paper's condition asks only about the continuations
    present in the training set. Two nodes are *merged* when they lie in the same cluster.

    Returns (JSON-serialisable):
      pairs_within_eps: unordered node pairs within eps (``grokfast.pairs.count_pairs``);
      merged_pairs: node pairs in the same cluster;
      merged_agreeing_pairs, merged_agreeing_fraction: how many merged pairs agree, and their
        share of merged_pairs (None without merged pairs; the theory predicts 1.0);
      agreeing_pairs: node pairs that agree, merged or not;
      agreeing_unmerged_by_length: [L + 1][L + 1] nested list (L = max_length), upper
        triangular: entry [i][j], i <= j, counts agreeing pairs in different clusters with one
        prefix of length i and the other of length j; entries below the diagonal and row /
        column 0 (the root) are 0.
    Counts come from group sizes per (cluster, depth, target class), never from a pair loop.
    """
    tree = extraction.tree
    labels = np.asarray(extraction.labels, dtype=np.int64)
    if labels.shape != (tree.num_nodes,):
        raise ValueError(f"extraction: labels must have one entry per tree node "
                         f"({tree.num_nodes}), got shape {labels.shape}")
    if not isinstance(target, MooreMachine):
        raise TypeError(f"target: expected a MooreMachine, got {type(target).__name__}")
    depth_max = tree.max_depth
    if max_length is None:
        L = depth_max
    elif isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) \
            or max_length < depth_max:
        raise ValueError(f"max_length: expected an integer >= the tree's depth ({depth_max}), "
                         f"got {max_length!r}")
    else:
        L = int(max_length)

    q = target_states(target, tree)  # -1 past an undefined transition: the sink
    S = target.num_states
    classes = refinement_levels(target, L)
    classes = np.concatenate([classes, classes.max(axis=1, keepdims=True) + 1], axis=1)
    q = np.where(q < 0, S, q)[1:]
    depth = tree.depth[1:]
    lab = labels[1:]
    num_clusters = int(labels.max()) + 1 if labels.size else 0

    agree = np.zeros((L + 1, L + 1), dtype=np.int64)
    agree_merged = np.zeros((L + 1, L + 1), dtype=np.int64)
    for d2 in range(1, depth_max + 1):
        hi = tree.level(d2).stop - 1  # nodes 1..hi have depth <= d2 (shortlex order)
        cls = classes[L - d2][q[:hi]]
        dep = depth[:hi]
        agree[:d2 + 1, d2] = _pair_rows(dep, cls, d2, S + 1)
        agree_merged[:d2 + 1, d2] = _pair_rows(dep, lab[:hi] * (S + 1) + cls, d2,
                                               num_clusters * (S + 1))

    sizes = np.bincount(lab, minlength=num_clusters)
    merged = int((sizes * (sizes - 1) // 2).sum())
    merged_agreeing = int(agree_merged.sum())
    within = _count_within_eps(extraction.states[1:], lab, float(extraction.eps),
                               getattr(extraction, "method", None) == "components")
    return {
        "pairs_within_eps": within,
        "merged_pairs": merged,
        "merged_agreeing_pairs": merged_agreeing,
        "merged_agreeing_fraction": merged_agreeing / merged if merged else None,
        "agreeing_pairs": int(agree.sum()),
        "agreeing_unmerged_by_length": (agree - agree_merged).tolist(),
    }


# --------------------------------------------------------------------------------------------
# Phases


def _check_fraction(name: str, value, *, allow_one: bool) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and 0 <= value <= 1 and (allow_one or value < 1))
    if not ok:
        upper = "1]" if allow_one else "1)"
        raise ValueError(f"{name}: expected a number in [0, {upper}, got {value!r}")
    return float(value)


@dataclass
class PhaseTracker:
    """The training phase, one extracted epoch at a time (see the module docstring for the
    rule). Call ``update`` (or ``update_record`` with a metrics.jsonl record) once per
    extracted epoch, in order; the tracker keeps the running peak of the raw state count.
    ``phase_labels`` replays a list of records through a fresh tracker, which is how a
    resumed run rebuilds it."""

    fit_threshold: float = DEFAULT_FIT_THRESHOLD
    merge_drop: float = DEFAULT_MERGE_DROP
    growth: float = DEFAULT_GROWTH
    initial: Optional[int] = field(default=None, init=False)
    peak: Optional[int] = field(default=None, init=False)
    phase: Optional[str] = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.fit_threshold = _check_fraction("fit_threshold", self.fit_threshold,
                                             allow_one=True)
        self.merge_drop = _check_fraction("merge_drop", self.merge_drop, allow_one=False)
        if isinstance(self.growth, bool) or not isinstance(self.growth, numbers.Real) \
                or not self.growth >= 0:
            raise ValueError(f"growth: expected a number >= 0, got {self.growth!r}")
        self.growth = float(self.growth)

    def update(self, num_states: int, output_accuracy: Optional[float],
               equals_target: Optional[bool], complete: bool) -> str:
        """The phase of one extracted epoch: raw state count, tree output accuracy (None when
        unknown), whether the machine equals the target (None: no target) and whether it is
        complete (no undefined transitions)."""
        if self.initial is None:
            self.initial = num_states
        fitted = output_accuracy is not None and output_accuracy >= self.fit_threshold
        expanded = num_states > self.initial and \
            num_states >= (1.0 + self.growth) * self.initial - 1e-9
        if fitted or expanded:
            self.peak = num_states if self.peak is None else max(self.peak, num_states)
        else:
            self.peak = None
        if complete and equals_target:
            phase = FINITE_AUTOMATON
        elif not (fitted or expanded):
            phase = RANDOM
        elif num_states <= (1.0 - self.merge_drop) * self.peak + 1e-9:
            phase = MERGING
        else:
            phase = TREE_FITTING
        self.phase = phase
        return phase

    def update_record(self, record: dict[str, Any]) -> Optional[str]:
        """``update`` from a record with the keys num_states, output_accuracy, equals_target
        and undefined_transitions; a record without num_states (an epoch not extracted)
        leaves the tracker as it is and gives None."""
        if record.get("num_states") is None:
            return None
        return self.update(int(record["num_states"]), record.get("output_accuracy"),
                           record.get("equals_target"),
                           record.get("undefined_transitions", 0) == 0)


def phase_of(extraction, tracker: PhaseTracker) -> str:
    """``tracker.update`` with the numbers of an ``Extraction``."""
    return tracker.update(extraction.num_states, extraction.output_accuracy,
                          extraction.equals_target, extraction.undefined_transitions == 0)


def phase_labels(records: Iterable[dict[str, Any]], *,
                 fit_threshold: float = DEFAULT_FIT_THRESHOLD,
                 merge_drop: float = DEFAULT_MERGE_DROP,
                 growth: float = DEFAULT_GROWTH) -> list[Optional[str]]:
    """The phase of every record (per-epoch dicts, as in metrics.jsonl), None for records
    without an extraction (no num_states)."""
    tracker = PhaseTracker(fit_threshold, merge_drop, growth)
    return [tracker.update_record(r) for r in records]


def first_epoch_in_phase(records: Iterable[dict[str, Any]], phase: str) -> Optional[int]:
    """The first record's epoch whose "phase" key equals ``phase``, or None."""
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    for r in records:
        if r.get("phase") == phase:
            return int(r["epoch"])
    return None


__all__ = ["FINITE_AUTOMATON", "MERGER_KEYS", "MERGING", "PHASES", "PhaseTracker", "RANDOM",
           "TREE_FITTING", "first_epoch_in_phase", "merger_stats", "phase_labels", "phase_of",
           "refinement_levels"]
