"""Data sets: streaming tasks whose targets are computed by a Moore machine."""

from grokfast.tasks.sequences import (AutomatonTask, CountMod, LengthData, RandomAutomatonTask,
                                      StreamingParity, all_sequences, check_fraction)

__all__ = ["AutomatonTask", "CountMod", "LengthData", "RandomAutomatonTask", "StreamingParity",
           "all_sequences", "check_fraction"]
