"""grokfast: fast kernels and tools for studying how neural networks learn algorithms."""

from grokfast._ext import ExtensionUnavailableError, backends, set_cpu_isa
from grokfast import ops, nn, pairs, ref
from grokfast import automata, representation, tasks, models, train

__version__ = "0.1.0"
__all__ = ["ExtensionUnavailableError", "automata", "backends", "models", "nn", "ops", "pairs",
           "ref", "representation", "set_cpu_isa", "tasks", "train", "__version__"]
