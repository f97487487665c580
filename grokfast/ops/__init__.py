"""Functional kernels: thin typed wrappers over the compiled extension."""

from grokfast.ops.pairs import Assignment, assign, components, count_pairs
from grokfast.ops.rnn import RNNOutput, rnn
from grokfast.ops.track import TrackResult, random_symbols, rnn_track

__all__ = ["Assignment", "RNNOutput", "TrackResult", "assign", "components", "count_pairs",
           "random_symbols", "rnn", "rnn_track"]
