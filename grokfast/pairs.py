"""Pairwise-distance kernels (csrc/pairs): exact connected components of the eps-graph
(DBSCAN with min_samples=1), nearest center within eps, and pair counts within several radii,
optionally split by group label. Re-exported from grokfast.ops; see grokfast.ops.pairs for the
exactness guarantee."""

from grokfast.ops.pairs import (Assignment, ClassCounts, assign, components, count_pairs,
                                count_within_classes)

__all__ = ["Assignment", "ClassCounts", "assign", "components", "count_pairs",
           "count_within_classes"]
