"""Functional kernels: thin typed wrappers over the compiled extension."""

from grokfast.ops.rnn import RNNOutput, rnn

__all__ = ["RNNOutput", "rnn"]
