"""Experiments: a config, a run directory, training, evaluation, figures and a summary."""

from grokfast.experiments.parity import (DEFAULT_EVAL_LENGTHS, ParityConfig, format_summary,
                                         plot_run, run_parity)

__all__ = ["DEFAULT_EVAL_LENGTHS", "ParityConfig", "format_summary", "plot_run", "run_parity"]
