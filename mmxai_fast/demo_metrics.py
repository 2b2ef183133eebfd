"""The demo's explanation metrics: the cheap ones of :mod:`mmxai_fast.metrics` for every method.

Every method is scored on the same superpixels (those of the Shapley explanation), so that the
deletion / insertion curves of two methods remove the same regions, only in different orders.
Cost per explanation: ``2^M`` evaluations for the exact modality Shapley values (MSFI) plus
``2 (1 + n_random) (steps + 1)`` for the curves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from torch import Tensor, nn

if TYPE_CHECKING:
    from .pipeline import Case, Explanation

__all__ = ["METRIC_COLUMNS", "explanation_metrics", "CURVE_STEPS", "CURVE_RANDOM_ORDERS"]

#: summary key -> column title of ``summary.md``.
METRIC_COLUMNS = {"msfi": "MSFI", "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC",
                  "delta_aupc_deletion": "delta-AUPC del.", "delta_aupc_insertion": "delta-AUPC ins."}
CURVE_STEPS = 10
CURVE_RANDOM_ORDERS = 2


def explanation_metrics(model: nn.Module, case: "Case", explanation: "Explanation", feature_mask: Tensor,
                        target: int, seed: int = 0) -> Dict[str, float]:
    """MSFI, deletion / insertion areas and delta-AUPC of one explanation (keys of :data:`METRIC_COLUMNS`
    plus ``metric_evaluations``, the model inputs they took)."""
    from .metrics import evaluate_explanation

    scores = evaluate_explanation(model, case, explanation.attributions, target=target, feature_mask=feature_mask,
                                  steps=CURVE_STEPS, n_random=CURVE_RANDOM_ORDERS, seed=seed)
    return {"msfi": scores["msfi"], "deletion_auc": scores["deletion"]["area"],
            "insertion_auc": scores["insertion"]["area"], "delta_aupc_deletion": scores["delta_aupc"]["deletion"],
            "delta_aupc_insertion": scores["delta_aupc"]["insertion"],
            "metric_evaluations": float(scores["n_evaluations"])}
