"""Functional kernels: thin typed wrappers over the compiled extension."""

from grokfast.ops.pairs import (Assignment, ClassCounts, assign, components, count_pairs,
                                count_within_classes)
from grokfast.ops.rnn import RNNOutput, rnn
from grokfast.ops.track import TrackResult, random_symbols, rnn_track

__all__ = ["Assignment", "ClassCounts", "RNNOutput", "TrackResult", "assign", "components",
           "count_pairs", "count_within_classes", "random_symbols", "rnn", "rnn_track"]
