"""Finite automata: Moore machines, the target machines of the sequence tasks, and the
extraction of the machine a recurrent network implements (with its check at length 10,000)."""

from grokfast.automata.moore import MooreMachine
from grokfast.automata.targets import count_mod, parity, random_automaton
from grokfast.automata.extract import Extraction, PrefixTree, extract, extract_from_states
from grokfast.automata.validate import Validation, validate
from grokfast.automata.dynamics import PHASES, PhaseTracker, merger_stats, phase_labels

__all__ = ["Extraction", "MooreMachine", "PHASES", "PhaseTracker", "PrefixTree", "Validation",
           "count_mod", "extract", "extract_from_states", "merger_stats", "parity", "phase_labels",
           "random_automaton", "validate"]
