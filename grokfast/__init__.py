"""grokfast: fast kernels and tools for studying how neural networks learn algorithms."""

from grokfast._ext import ExtensionUnavailableError, backends
from grokfast import ops, nn, ref

__version__ = "0.1.0"
__all__ = ["ExtensionUnavailableError", "backends", "nn", "ops", "ref", "__version__"]
