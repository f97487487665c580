"""Representation quality of learned embeddings and the effective theory of grokking
(Liu et al. 2022): δ-parallelogram counts, RQI, predicted and ideal accuracy, phases of learning
(measures), and the effective loss, its flow and Hessian, grokking rates and critical training
fractions (theory)."""

from grokfast.representation.measures import (METRICS, PHASES, IdealStructure, PhaseResult,
                                              classify_history, classify_phase, ideal_accuracy,
                                              ideal_rqi, ideal_structure, p0_size,
                                              parallelogram_count, predicted_accuracy, rqi)
from grokfast.representation.theory import (EffectiveFlow, conserved_quantities, critical_fraction,
                                            effective_flow, effective_hessian, effective_loss,
                                            grokking_rate, predicted_grokking_steps,
                                            unique_structure_probability)

__all__ = ["METRICS", "PHASES", "EffectiveFlow", "IdealStructure", "PhaseResult", "classify_history",
           "classify_phase", "conserved_quantities", "critical_fraction", "effective_flow",
           "effective_hessian", "effective_loss", "grokking_rate", "ideal_accuracy", "ideal_rqi",
           "ideal_structure", "p0_size", "parallelogram_count", "predicted_accuracy",
           "predicted_grokking_steps", "rqi", "unique_structure_probability"]
