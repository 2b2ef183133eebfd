"""The demo's explanation metrics: the cheap ones of :mod:`mmxai_fast.metrics` for every method.

Every method is scored on the same superpixels (those of the Shapley explanation), so that the
deletion / insertion curves of two methods remove the same regions, only in different orders.
The curves are drawn twice for every method: removed superpixels become zeros (Occlusion's and
IG's baseline), and, when the Shapley baseline is a blur, the blurred input (Shapley's): each
method is then also judged by the removal the others explain.
Cost per explanation and baseline: ``2^M`` evaluations for the exact modality Shapley values
(MSFI) plus ``2 (1 + n_random) (steps + 1)`` for the curves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from torch import Tensor, nn

if TYPE_CHECKING:
    from .pipeline import Case, Explanation

__all__ = ["METRIC_COLUMNS", "BLUR_METRIC_COLUMNS", "explanation_metrics", "CURVE_STEPS", "CURVE_RANDOM_ORDERS"]

#: summary key -> column title of ``summary.md`` (zero baseline).
METRIC_COLUMNS = {"msfi": "MSFI", "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC",
                  "delta_aupc_deletion": "delta-AUPC del.", "delta_aupc_insertion": "delta-AUPC ins."}
#: the curves' columns again with the blurred input as baseline (present when ``blur_sigma > 0``).
BLUR_METRIC_COLUMNS = {f"{key}_blur": f"{title} (blur)" for key, title in METRIC_COLUMNS.items() if key != "msfi"}
CURVE_STEPS = 10
CURVE_RANDOM_ORDERS = 2


def explanation_metrics(model: nn.Module, case: "Case", explanation: "Explanation", feature_mask: Tensor,
                        target: int, seed: int = 0, blur_sigma: float = 0.0) -> Dict[str, float]:
    """MSFI, deletion / insertion areas and delta-AUPC of one explanation (keys of :data:`METRIC_COLUMNS`,
    with ``blur_sigma > 0`` also :data:`BLUR_METRIC_COLUMNS`, plus ``metric_evaluations``, the model
    inputs they took)."""
    from .pipeline import Baseline

    baselines = {"": Baseline.zeros(), **({"_blur": Baseline.blur(blur_sigma)} if blur_sigma > 0 else {})}
    out: Dict[str, float] = {"metric_evaluations": 0.0}
    for suffix, baseline in baselines.items():
        scores = _scores(model, case, explanation, feature_mask, target, seed, baseline)
        out.update({k + suffix: v for k, v in scores.items() if k != "n_evaluations" and not (suffix and k == "msfi")})
        out["metric_evaluations"] += scores["n_evaluations"]
    return out


def _scores(model, case, explanation, feature_mask, target, seed, baseline) -> Dict[str, float]:
    from .metrics import evaluate_explanation

    scores = evaluate_explanation(model, case, explanation.attributions, target=target, feature_mask=feature_mask,
                                  baseline=baseline, steps=CURVE_STEPS, n_random=CURVE_RANDOM_ORDERS, seed=seed)
    return {"msfi": scores["msfi"], "deletion_auc": scores["deletion"]["area"],
            "insertion_auc": scores["insertion"]["area"], "delta_aupc_deletion": scores["delta_aupc"]["deletion"],
            "delta_aupc_insertion": scores["delta_aupc"]["insertion"],
            "n_evaluations": float(scores["n_evaluations"])}
