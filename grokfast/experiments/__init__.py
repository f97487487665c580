"""Experiments: a config, a run directory, training, evaluation, figures and a summary."""

from grokfast.experiments.parity import (DEFAULT_EVAL_LENGTHS, ParityConfig, format_summary,
                                         plot_run, run_parity)
from grokfast.experiments.toy import ToyConfig, run_toy

__all__ = ["DEFAULT_EVAL_LENGTHS", "ParityConfig", "ToyConfig", "format_summary", "plot_run",
           "run_parity", "run_toy"]
