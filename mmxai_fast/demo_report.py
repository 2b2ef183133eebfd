"""The demo's report: the per-case overview figure and the summary table (``summary.md``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import numpy as np
import torch

from .demo_metrics import BLUR_METRIC_COLUMNS, METRIC_COLUMNS

if TYPE_CHECKING:
    from .demo import DemoResult
    from .pipeline import Explanation

__all__ = ["overview_figure", "summary_markdown"]


def overview_figure(case, explanations: Dict[str, "Explanation"]):
    """Rows = methods, columns = modalities on the axial slice with the largest tumour area: each
    method's map scaled to [-1, 1] by its largest magnitude (red = evidence for high grade), the
    tumour outlined; last column each modality's share of |attribution| and of the evidence."""
    from matplotlib.figure import Figure

    from .demo import evidence_share
    from .pipeline import choose_axial_slice, scale_signed

    z = choose_axial_slice(case.roi)
    names = case.modalities
    fig = Figure(figsize=(2.3 * len(names) + 2.4, 2.4 * len(explanations)), layout="constrained")
    axes = fig.subplots(len(explanations), len(names) + 1, squeeze=False)
    for row, (method, explanation) in enumerate(explanations.items()):
        heat = scale_signed(explanation.attributions)
        for col, name in enumerate(names):
            ax = axes[row, col]
            ax.imshow(case.image[col, :, :, z].numpy().T, cmap="gray", origin="lower")
            values = heat[col, :, :, z].numpy().T
            ax.imshow(values, cmap="bwr", vmin=-1, vmax=1, origin="lower", alpha=np.clip(np.abs(values) * 1.5, 0, 0.85))
            ax.contour(case.roi[:, :, z].float().numpy().T, levels=[0.5], colors="lime", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(method, fontsize=8)
        ax = axes[row, -1]
        rows_y = np.arange(len(names))[::-1]
        evidence = evidence_share(explanation.attributions, names)
        ax.barh(rows_y + 0.2, [100 * explanation.modality_importance[n] for n in names], height=0.4,
                color="tab:gray", label="|attribution|")
        ax.barh(rows_y - 0.2, [100 * evidence[n] for n in names], height=0.4, color="tab:red", label="evidence (> 0)")
        ax.set_yticks(rows_y, names)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("% per modality", fontsize=7)
        if row == 0:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"high-grade case, axial slice {z}: evidence for 'high grade' (red), tumour outlined", fontsize=9)
    return fig


def summary_markdown(result: "DemoResult") -> str:
    cfg = result.config
    columns = {**METRIC_COLUMNS, **(BLUR_METRIC_COLUMNS if cfg.shapley_blur_sigma > 0 else {})}
    lines = [
        "# mmxai-fast demo",
        "",
        f"Task: high- vs low-grade glioma, {result.anatomy} anatomy, {'x'.join(map(str, cfg.shape))} voxels, "
        f"T1/T1ce/T2/FLAIR; only the enhancing rim in T1ce tells the grades apart.",
        f"VGG3D {list(cfg.widths)} trained on {cfg.n_train} cases, {cfg.epochs} epochs, in {result.train_s:.1f} s "
        f"({torch.get_num_threads()} threads); held-out accuracy {result.accuracy:.3f} on {cfg.n_val} cases.",
        "",
        f"Removed features become: for ShapleyEstimator ({cfg.shapley_method}, {cfg.shapley_evaluations} "
        f"evaluations, {cfg.n_segments} superpixels per modality) "
        + (f"the input blurred (Gaussian, sigma {cfg.shapley_blur_sigma:g} voxels)" if cfg.shapley_blur_sigma > 0
           else "zeros") + "; for the other methods zeros (the metrics' curves use both, below).",
        "",
        "localisation = share of the positive attribution inside the tumour (core, rim and oedema); "
        "a map blind to the tumour scores about the tumour's volume fraction (in brackets: its share of the brain).",
        "",
        "modality ranking = by share of |attribution| (mmxai_fast.pipeline); evidence = by share of the positive "
        "attribution, i.e. of the evidence for 'high grade'.",
        "",
        "MSFI (Jin et al. 2022, exact modality Shapley values, tumour as every modality's region); deletion / "
        "insertion = areas under the 'high grade' logit as superpixels are removed / restored in heatmap order "
        "(deletion: lower is better, insertion: higher); delta-AUPC = their gain over random orders "
        "(> 0: better than random; mmxai_fast.metrics); removed superpixels become zeros, '(blur)': the blurred "
        "input (Shapley's baseline).",
        "",
        "| case | method | wall s | model inputs (calls) | time in model | localisation | tumour fraction "
        "| modality ranking | evidence for high grade | " + " | ".join(columns.values()) + " |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |" + " ---: |" * len(columns),
    ]
    for row in result.rows:
        share = row.model_s / row.wall_s if row.wall_s > 0 else 0.0
        metrics = " | ".join(f"{row.metrics[k]:.3g}" if k in row.metrics else "-" for k in columns)
        lines.append(f"| {row.case} | {row.method} | {row.wall_s:.2f} | {row.model_inputs} ({row.model_calls}) | "
                     f"{share:.0%} | {row.localisation:.3f} | {row.tumour_fraction:.3f} "
                     f"({row.tumour_fraction_of_brain:.3f}) | {' > '.join(row.modality_ranking)} | "
                     f"{' > '.join(f'{m} {row.evidence_share[m]:.0%}' for m in row.evidence_ranking)} | {metrics} |")
    return "\n".join(lines) + "\n"
