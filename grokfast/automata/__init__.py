"""Finite automata: Moore machines and the target machines of the sequence tasks."""

from grokfast.automata.moore import MooreMachine
from grokfast.automata.targets import count_mod, parity, random_automaton

__all__ = ["MooreMachine", "count_mod", "parity", "random_automaton"]
