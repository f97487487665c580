"""Models for the experiments, with the initialisations of the papers."""

from grokfast.models.rnn import SequenceRNN

__all__ = ["SequenceRNN"]
