"""nn.Modules over the fused kernels."""

from grokfast.nn.elman import ElmanRNN

__all__ = ["ElmanRNN"]
