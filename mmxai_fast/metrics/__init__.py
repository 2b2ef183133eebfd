"""Explanation quality, evaluated through the engine in batches (issue 13): MSFI and the
modality-importance correlation (Jin et al., AAAI 2022), deletion / insertion curves and
delta-AUPC. :func:`evaluate_explanation` computes all of them for a pipeline case."""
from .evaluation import evaluate_explanation, localisation, plot_curves
from .faithfulness import feature_scores, perturbation_curves
from .modality import kendall_tau_b, modality_importance_correlation, modality_shapley, msfi

__all__ = ["evaluate_explanation", "plot_curves", "localisation", "perturbation_curves", "feature_scores",
           "msfi", "modality_shapley", "kendall_tau_b", "modality_importance_correlation"]
