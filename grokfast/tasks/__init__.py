"""Data sets: streaming tasks whose targets are computed by a Moore machine, and binary
operations over {0..p-1} (algebra)."""

from grokfast.tasks.algebra import Addition, AlgebraTask, ModularOp, PermutationGroup, TableTask
from grokfast.tasks.sequences import (AutomatonTask, CountMod, LengthData, RandomAutomatonTask,
                                      StreamingParity, all_sequences, check_fraction)

__all__ = ["Addition", "AlgebraTask", "ModularOp", "PermutationGroup", "TableTask",
           "AutomatonTask", "CountMod", "LengthData", "RandomAutomatonTask", "StreamingParity",
           "all_sequences", "check_fraction"]
