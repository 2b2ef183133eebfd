"""One case of a cohort: load it, explain it, write its folder atomically.

Shapley value sampling runs on :func:`~mmxai_fast.cohort.shapley.sharded_shapley_sampling`
(same result on any number of ranks, standard errors, checkpoints); the other methods run on
:func:`mmxai_fast.explain` in one process. The case's files (those of
:func:`mmxai_fast.pipeline.write_explanation`, plus standard-error maps) are written into a
hidden staging folder that is renamed to ``<out>/<case_id>`` in one ``os.replace``: a case
folder is complete or absent.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..pipeline import (Baseline, Case, Explanation, RunStats, Superpixels, explain, load_case, modality_importance,
                        superpixel_mask)
from ..pipeline.outputs import heatmap_filename, publish_output_set, render_explanation
from .discovery import CaseSpec
from .distributed import Dist
from .rows import sharded_rows
from .shapley import sharded_shapley_sampling

__all__ = ["CohortSettings", "CaseOutcome", "load_spec", "explain_case", "publish_case", "WORK_DIR", "SAMPLE_ARG",
           "WITHIN_CASE_METHODS", "stderr_files", "figure_share", "render_case"]

WORK_DIR = ".work"
SHAPLEY = "ShapleyValueSampling"
#: Methods whose work within one case is sharded over ranks (Shapley: permutations; the others:
#: their engine rows, see :mod:`mmxai_fast.cohort.rows`).
WITHIN_CASE_METHODS = (SHAPLEY, "Occlusion", "FeatureAblation", "Lime", "KernelShap")
FIGURES = ("heatmaps.png", "importance.png")
#: The sample-count argument each method takes (set by ``n_samples``), as in ``mmxai-fast explain``.
SAMPLE_ARG = {SHAPLEY: "n_samples", "Lime": "n_samples", "KernelShap": "n_samples", "GradientShap": "n_samples",
              "SmoothGrad": "nt_samples", "IntegratedGradients": "n_steps"}


@dataclass(frozen=True)
class CohortSettings:
    """Everything that determines a case's result (recorded in the manifest).

    ``n_samples`` is the number of permutations for Shapley value sampling, the method's sample
    count otherwise (None: the method's default).
    """

    method: str = SHAPLEY
    n_samples: Optional[int] = 25
    method_kwargs: Dict[str, Any] = field(default_factory=dict)
    n_segments: int = 200
    compactness: float = 0.1
    joint: bool = False
    baseline: str = "zeros"
    seed: int = 0
    target: Optional[int] = None
    normalize: Optional[str] = None
    modalities: tuple = ()
    smooth: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class CaseOutcome:
    explanation: Explanation
    stderr: Optional[torch.Tensor] = None
    comm_s: float = 0.0
    resumed_permutations: int = 0


def load_spec(spec: CaseSpec, settings: CohortSettings) -> Case:
    """The case of ``spec``; raises ``ValueError`` naming the problem when it cannot be loaded."""
    if spec.problem:
        raise ValueError(spec.problem)
    return load_case(spec.modality_paths(), roi=spec.roi, normalize=settings.normalize)


def _predicted_target(model, x: torch.Tensor) -> Optional[int]:
    with torch.no_grad():
        out = model(x)
    if out.dim() <= 1 or (out.dim() == 2 and out.shape[1] == 1):
        return None
    return int(out.argmax(dim=1)[0])


def _explain_shapley(model, case: Case, settings: CohortSettings, seed: int, device: torch.device,
                     dist: Optional[Dist], checkpoint: Optional[Path], checkpoint_every: int, chunk: int,
                     show_progress: bool, desc: str) -> CaseOutcome:
    start = time.perf_counter()
    superpixels = Superpixels(n_segments=settings.n_segments, compactness=settings.compactness, joint=settings.joint)
    mask = superpixel_mask(case, superpixels)
    baseline = Baseline.parse(settings.baseline, seed=seed)
    base = baseline.tensor(case)
    if case.foreground is not None:  # the background keeps the input, as in explain()
        base = torch.where(case.foreground, base, case.image)
    x = case.image[None].to(device)
    target = settings.target if settings.target is not None else _predicted_target(model, x)
    result = sharded_shapley_sampling(model, x, mask[None].to(device), base.to(device), target,
                                      settings.n_samples or 25, seed, dist=dist, chunk=chunk, checkpoint=checkpoint,
                                      checkpoint_every=checkpoint_every, show_progress=show_progress, desc=desc)
    attributions = result.attributions[0].cpu()
    stderr = result.stderr[0].cpu()
    if case.foreground is not None:
        attributions = attributions.masked_fill(~case.foreground, 0.0)
        stderr = stderr.masked_fill(~case.foreground, 0.0)
    stats = RunStats(SHAPLEY, result.model_calls, time.perf_counter() - start, result.model_s, result.model_inputs)
    run_settings = {"method_kwargs": {"n_samples": result.n_permutations}, "baseline": baseline.describe(),
                    "seed": seed, "superpixels": {**asdict(superpixels), "features": int(mask.max())},
                    "stderr": {"max": float(stderr.max()), "mean_foreground": float(
                        stderr[:, case.foreground].mean() if case.foreground is not None else stderr.mean())},
                    "engine": "mmxai_fast.cohort.sharded_shapley_sampling"}
    explanation = Explanation(attributions=attributions, method=SHAPLEY, target=target, feature_mask=mask,
                              modality_importance=modality_importance(attributions, case.modalities), stats=stats,
                              modalities=case.modalities, settings=run_settings)
    return CaseOutcome(explanation, stderr, result.comm_s, result.resumed_permutations)


def explain_case(model, case: Case, settings: CohortSettings, seed: int, device: torch.device,
                 dist: Optional[Dist] = None, checkpoint: Optional[Path] = None, checkpoint_every: int = 8,
                 chunk: int = 32, show_progress: bool = False, desc: str = "case") -> CaseOutcome:
    """Explain one case with the cohort's method; ``dist`` shards the case's work over its ranks
    (Shapley permutations, or the rows of the other :data:`WITHIN_CASE_METHODS`)."""
    if settings.method == SHAPLEY:
        return _explain_shapley(model, case, settings, seed, device, dist, checkpoint, checkpoint_every, chunk,
                                show_progress, desc)
    kwargs = dict(settings.method_kwargs)
    if settings.n_samples is not None:
        kwargs[SAMPLE_ARG[settings.method]] = settings.n_samples
    with sharded_rows(dist):
        exp = explain(model, case, method=settings.method, target=settings.target,
                      superpixels=Superpixels(n_segments=settings.n_segments, compactness=settings.compactness,
                                              joint=settings.joint),
                      baseline=Baseline.parse(settings.baseline, seed=seed), method_kwargs=kwargs, device=device,
                      show_progress=show_progress, seed=seed)
    return CaseOutcome(exp)


def _nifti_gz(volume: torch.Tensor, affine: np.ndarray) -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(volume.numpy().astype(np.float32), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)  # as the heatmaps (9: 4x slower, 2% smaller)


def stderr_files(case: Case, outcome: CaseOutcome) -> Dict[str, bytes]:
    """``<modality>_stderr.nii.gz`` of every modality (none without standard errors)."""
    if outcome.stderr is None:
        return {}
    return {heatmap_filename(name).replace("_heatmap.nii.gz", "_stderr.nii.gz"): _nifti_gz(volume, case.affine)
            for name, volume in zip(case.modalities, outcome.stderr)}


def figure_share(rank: int, world_size: int) -> List[str]:
    """The PNG figures rank ``rank`` renders when a case's ranks share its publication: the
    heatmaps (the slowest file) on rank 1, the rest on the next ranks or on rank 0, which renders
    and writes everything else."""
    return [name for i, name in enumerate(FIGURES) if (i + 1) % world_size == rank] if world_size > 1 else []


def render_case(case: Case, outcome: CaseOutcome, settings: CohortSettings,
                figures: Optional[Dict[str, bytes]] = None) -> Dict[str, bytes]:
    """Every file of the case folder, in memory: those of
    :func:`~mmxai_fast.pipeline.outputs.render_explanation` (``figures``: PNGs rendered
    elsewhere, or placeholders to be replaced) and the standard-error maps."""
    files = render_explanation(case, outcome.explanation, smooth_sigma=settings.smooth, figures=figures)
    return {**files, **stderr_files(case, outcome)}


def publish_case(out_dir: Path, case_id: str, files: Dict[str, bytes], staging_name: str) -> Path:
    """Write ``files`` (:func:`render_case`) into ``<out>/.work/staging/<staging_name>`` (each
    fsynced) and rename that folder to ``<out>/<case_id>``. Returns the case folder."""
    staging = out_dir / WORK_DIR / "staging" / staging_name
    if staging.exists():
        shutil.rmtree(staging)
    publish_output_set(staging, files)  # the rename publishes the folder: its files are on disk
    final = out_dir / case_id
    os.replace(staging, final)
    return final
