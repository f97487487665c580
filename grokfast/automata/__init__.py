"""Finite automata: Moore machines, the target machines of the sequence tasks, and the
extraction of the machine a recurrent network implements (with its check at length 10,000)."""

from grokfast.automata.moore import MooreMachine
from grokfast.automata.targets import count_mod, parity, random_automaton
from grokfast.automata.extract import Extraction, PrefixTree, extract, extract_from_states
from grokfast.automata.validate import Validation, validate

__all__ = ["Extraction", "MooreMachine", "PrefixTree", "Validation", "count_mod", "extract",
           "extract_from_states", "parity", "random_automaton", "validate"]
