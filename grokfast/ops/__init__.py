"""Functional kernels: thin typed wrappers over the compiled extension."""

from grokfast.ops.pairs import Assignment, assign, components, count_pairs
from grokfast.ops.rnn import RNNOutput, rnn

__all__ = ["Assignment", "RNNOutput", "assign", "components", "count_pairs", "rnn"]
