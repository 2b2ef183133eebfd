"""Incremental inference for perturbation explanations of 2D/3D CNNs: recompute only the part of
each activation that a perturbation changes (Krypton, Nakandala et al., SIGMOD 2019).

    plan = IncrementalPlan.from_module(model, x)        # torch.fx trace; plan.report()
    runner = IncrementalRunner(plan, x, memory_budget=2**30)
    out = runner.run(perturbed, boxes)                   # boxes [B, nd, 2]: changed box per row

See docs/incremental.md.
"""
from .approximate import drilldown_occlusion, error_report
from .drivers import (dense_evaluator, feature_boxes, occlusion, occlusion_diffs, occlusion_windows, shapley,
                      window_boxes, window_patches)
from .executor import IncrementalRunner
from .plan import IncrementalPlan

__all__ = ["IncrementalPlan", "IncrementalRunner", "occlusion", "shapley", "drilldown_occlusion", "error_report",
           "occlusion_diffs", "occlusion_windows", "window_boxes", "window_patches", "feature_boxes",
           "dense_evaluator"]
