"""Models for the experiments, with the initialisations of the papers."""

from grokfast.models.rnn import SequenceRNN
from grokfast.models.toy import ToyModel

__all__ = ["SequenceRNN", "ToyModel"]
