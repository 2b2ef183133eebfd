"""``mmxai-fast demo``: train a small 3D CNN on synthetic brain MRI, explain it, score the explanations.

Nothing is downloaded. The demo

1. draws 4-sequence brain phantoms (:mod:`mmxai_fast.phantom`, or the MNI152 anatomy shipped with
   nilearn) with a low- or high-grade glioma; the only evidence of grade is the enhancing rim in T1ce;
2. trains :class:`~mmxai_fast.models.VGG3D` (small widths) to tell the grades apart (held-out accuracy);
3. explains held-out high-grade cases with a few fast methods (Shapley value sampling on superpixels,
   occlusion, integrated gradients) for the "high grade" logit;
4. writes per case and method the heatmaps and figures, and a summary table (``summary.md`` and
   ``summary.json``): wall time, model evaluations, share of time in the model, localisation
   score and two modality rankings: by share of ``|attribution|`` and by share of the positive
   attribution (the evidence for "high grade").

The localisation score is the share of the positive attribution that falls inside the tumour
(whole lesion: core, rim and oedema), summed over the modalities: a map that ignores the tumour
scores about the tumour's volume fraction, a map confined to it scores 1.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .demo_report import summary_markdown
from .demo_shapley import ESTIMATOR_METHOD
from .models import VGG3D
from .phantom import GRADES, BrainPhantom, make_phantom_dataset
from ._validation import int_at_least

if TYPE_CHECKING:
    from .pipeline import Case, Explanation

__all__ = ["DemoConfig", "TrainResult", "MethodResult", "DemoResult", "DEFAULT_METHODS", "ANATOMIES", "run_demo",
           "train_grade_classifier", "phantom_case", "localisation_score", "evidence_share", "modality_ranking",
           "resolve_demo_method"]

DEFAULT_METHODS = (ESTIMATOR_METHOD, "Occlusion", "IntegratedGradients")
ANATOMIES = ("phantom", "mni152")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. The defaults take about 2.5 CPU-minutes (2 cores), :meth:`quick` under one.

    Attributes:
        shape: phantom volume ``(X, Y, Z)``.
        n_train / n_val: training and held-out cases (grades alternate, so classes are balanced).
        epochs, batch_size, learning_rate: Adam training of the classifier (cosine-decayed rate).
        widths: channels of the VGG3D blocks.
        n_cases: held-out high-grade cases to explain.
        n_segments: SLIC superpixels per modality for the Shapley methods (and the metrics' curves).
        compactness: their SLIC compactness (low: segments follow tissue edges, such as the rim's).
        shapley_method: estimator of ``ShapleyEstimator`` (:data:`mmxai_fast.estimators.METHODS`).
        shapley_evaluations: its budget in model inputs.
        shapley_blur_sigma: its baseline, the input blurred by a Gaussian of this sigma in voxels
            (:meth:`~mmxai_fast.pipeline.Baseline.blur`); 0: zeros. A zero-filled region of one modality
            looks abnormal next to the others (a blank T1 makes T1ce look enhanced), so with zeros
            superpixels far from the tumour change the logit (localisation 0.20 instead of 0.8).
        coarse_segments: SLIC segments per modality of the Owen hierarchy's coarse level.
        shapley_samples: permutations for Captum's ShapleyValueSampling (``--methods``).
        occlusion_window / occlusion_stride: cubic occlusion window (one modality at a time).
        ig_steps: integrated-gradients steps.
        seed: seeds the data, the initialisation and the training order.
    """

    shape: Tuple[int, int, int] = (48, 48, 48)
    n_train: int = 128
    n_val: int = 32
    epochs: int = 6
    batch_size: int = 16
    learning_rate: float = 1e-2
    widths: Tuple[int, ...] = (8, 16, 32)
    n_cases: int = 2
    n_segments: int = 150
    compactness: float = 0.1
    shapley_method: str = "permutation"
    shapley_evaluations: int = 1200
    shapley_blur_sigma: float = 3.0
    coarse_segments: int = 15
    shapley_samples: int = 2
    occlusion_window: int = 8
    occlusion_stride: int = 8
    ig_steps: int = 16
    seed: int = 0

    def __post_init__(self):
        for name in ("n_train", "n_val", "epochs", "batch_size", "n_cases", "n_segments", "shapley_samples",
                     "occlusion_window", "occlusion_stride", "ig_steps", "shapley_evaluations", "coarse_segments"):
            value = getattr(self, name)
            int_at_least(value, f"DemoConfig.{name}", 1)
        if (not isinstance(self.shape, tuple) or len(self.shape) != 3
                or not all(isinstance(s, int) and s >= 16 for s in self.shape)):
            raise ValueError(f"DemoConfig.shape must be three ints >= 16, got {self.shape!r}")
        if not self.widths or not all(isinstance(w, int) and w >= 1 for w in self.widths):
            raise ValueError(f"DemoConfig.widths must be ints >= 1, got {self.widths!r}")
        from .estimators import METHODS

        if self.shapley_method not in METHODS:
            raise ValueError(f"DemoConfig.shapley_method must be one of {METHODS}, got {self.shapley_method!r}")
        sigma = self.shapley_blur_sigma
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):
            raise ValueError(f"DemoConfig.shapley_blur_sigma must be a finite number >= 0, got {sigma!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"DemoConfig.learning_rate must be > 0, got {self.learning_rate!r}")

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """A smaller run (32^3 volumes, fewer cases and epochs, one explained case)."""
        values: Dict[str, Any] = dict(shape=(32, 32, 32), n_train=96, n_val=32, epochs=5, n_cases=1, n_segments=100,
                      occlusion_window=6, occlusion_stride=6, shapley_blur_sigma=2.0)
        values.update(overrides)
        return cls(**values)


@dataclass
class TrainResult:
    """A trained grade classifier (class 0 = low grade, 1 = high grade) and its held-out accuracy."""

    model: nn.Module
    accuracy: float
    n_val: int
    train_s: float
    losses: List[float]
    val_images: Tensor = field(repr=False)
    val_labels: Tensor = field(repr=False)
    val_phantoms: List[BrainPhantom] = field(repr=False)


@dataclass
class MethodResult:
    """One explanation of one case, scored."""

    case: str
    method: str
    wall_s: float
    model_inputs: int  # volumes passed through the model
    model_calls: int  # forward calls (batches)
    model_s: float
    localisation: float
    tumour_fraction: float
    tumour_fraction_of_brain: float
    modality_importance: Dict[str, float]  # share of |attribution| per modality
    modality_ranking: List[str]
    evidence_share: Dict[str, float]  # share of the positive attribution (evidence for the target) per modality
    evidence_ranking: List[str]
    p_high: float  # the model's probability of "high grade" for the case
    metrics: Dict[str, float] = field(default_factory=dict)  # mmxai_fast.metrics (demo_metrics.METRIC_COLUMNS)
    files: Dict[str, str] = field(default_factory=dict)


@dataclass
class DemoResult:
    config: DemoConfig
    anatomy: str
    accuracy: float
    train_s: float
    rows: List[MethodResult]
    files: Dict[str, str]


def train_grade_classifier(config: DemoConfig = DemoConfig(), anatomy: str = "phantom",
                           show_progress: bool = True) -> TrainResult:
    """Train :class:`~mmxai_fast.models.VGG3D` to tell high- from low-grade phantoms.

    Args:
        config: sizes, seed and optimiser settings.
        anatomy: ``"phantom"`` (synthetic head) or ``"mni152"`` (nilearn's template anatomy).
        show_progress: tqdm progress bars.

    Returns:
        :class:`TrainResult` with the model in eval mode (channels_last_3d) and the held-out
        accuracy on ``config.n_val`` cases drawn with a different seed.

    Raises:
        ValueError: unknown ``anatomy``.
        ImportError: ``anatomy="mni152"`` without nilearn.
    """
    start = time.perf_counter()
    anatomy_labels = _anatomy_labels(anatomy, config.shape)
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
        torch.manual_seed(config.seed)
        return _train(config, anatomy_labels, start, show_progress)


def _train(config: DemoConfig, anatomy_labels, start: float, show_progress: bool) -> TrainResult:
    from tqdm.auto import tqdm

    train_x, train_y, _ = make_phantom_dataset(config.n_train, config.shape, seed=2 * config.seed,
                                               anatomy=anatomy_labels, show_progress=show_progress)
    val_x, val_y, val_phantoms = make_phantom_dataset(config.n_val, config.shape, seed=2 * config.seed + 1,
                                                      anatomy=anatomy_labels, show_progress=show_progress)
    # The evidence is a thin enhancing rim in a small part of the volume: global average pooling
    # dilutes it and needs far more data than a one-minute training; max pooling asks "is there an
    # enhancing rim anywhere", which a few dozen cases teach.
    model = VGG3D(in_channels=train_x.shape[1], num_classes=len(GRADES), widths=config.widths, hidden=32,
                  pool="max")
    # Module.to accepts memory_format at run time; torch's overloads leave it out
    model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-config.n_train // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    losses = []
    model.train()
    with tqdm(total=steps, desc="training VGG3D", disable=not show_progress) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(config.n_train, generator=generator)
            for batch in order.split(config.batch_size):
                x = train_x[batch].contiguous(memory_format=torch.channels_last_3d)
                loss = nn.functional.cross_entropy(model(x), train_y[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    _precise_batchnorm(model, train_x, config.batch_size)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x.contiguous(memory_format=torch.channels_last_3d))
                            for x in val_x.split(config.batch_size)])
    accuracy = (logits.argmax(1) == val_y).float().mean().item()
    return TrainResult(model=model, accuracy=accuracy, n_val=config.n_val, train_s=time.perf_counter() - start,
                       losses=losses, val_images=val_x, val_labels=val_y, val_phantoms=val_phantoms)


@torch.no_grad()
def _precise_batchnorm(model: nn.Module, images: Tensor, batch_size: int) -> None:
    """Replace the BatchNorm running statistics by their average over ``images`` (Wu & Johnson,
    "Rethinking BatchNorm", 2021): with a few dozen steps the exponential averages still lag the
    weights, and held-out accuracy in eval mode swings from epoch to epoch."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in images.split(batch_size):
        model(x.contiguous(memory_format=torch.channels_last_3d))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def _anatomy_labels(anatomy: str, shape) -> Optional[np.ndarray]:
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if anatomy == "phantom":
        return None
    from .phantom import mni152_anatomy

    return mni152_anatomy(shape)


def localisation_score(attributions: Tensor, tumour: Tensor) -> float:
    """Share of the positive attribution inside the tumour: ``sum(relu(a) * T) / sum(relu(a))``.

    Args:
        attributions: ``[M, X, Y, Z]`` (or ``[X, Y, Z]``).
        tumour: bool ``[X, Y, Z]``, broadcast over the modalities.

    Returns:
        A number in [0, 1]; 0 when no attribution is positive.
    """
    positive = attributions.double().clamp(min=0)
    total = positive.sum()
    if total <= 0:
        return 0.0
    return float((positive * tumour.to(positive.dtype)).sum() / total)


def evidence_share(attributions: Tensor, modalities: Sequence[str]) -> Dict[str, float]:
    """Each modality's share of the positive attribution ``[M, X, Y, Z]`` (the evidence for the
    explained class); equal shares when nothing is positive.

    Unlike the share of ``|attribution|`` (:func:`mmxai_fast.pipeline.modality_importance`), a
    modality whose removal only makes the class *more* likely does not count: with a zero
    baseline, blanking T1 makes T1ce look enhanced everywhere, a large but negative effect.
    """
    per = attributions.double().clamp(min=0).flatten(1).sum(1)
    total = float(per.sum())
    shares = (per / total).tolist() if total > 0 else [1.0 / len(per)] * len(per)
    return dict(zip(modalities, shares))


def modality_ranking(importance: Dict[str, float]) -> List[str]:
    """Modalities from the most to the least important."""
    return sorted(importance, key=lambda name: -importance[name])


def phantom_case(phantom: BrainPhantom, voxel_mm: float = 4.0) -> "Case":
    """The phantom as a :class:`~mmxai_fast.pipeline.Case`: foreground = the head, roi = the tumour,
    an isotropic ``voxel_mm`` grid centred on the origin (a 48^3 phantom at 4 mm is a 19 cm head box)."""
    from .pipeline import Case

    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -voxel_mm * (np.asarray(phantom.image.shape[1:]) - 1) / 2
    return Case(image=phantom.image, modalities=phantom.modalities, affine=affine, foreground=phantom.head,
                roi=phantom.tumour, sources=tuple(f"phantom:{m}" for m in phantom.modalities))


def _method_kwargs(method: str, config: DemoConfig) -> Dict[str, object]:
    w, s = config.occlusion_window, config.occlusion_stride
    per_method: Dict[str, Dict[str, object]] = {
        "ShapleyValueSampling": {"n_samples": config.shapley_samples, "perturbations_per_eval": config.batch_size},
        "Occlusion": {"sliding_window_shapes": (1, w, w, w), "strides": (1, s, s, s),
                      "perturbations_per_eval": config.batch_size},
        "IntegratedGradients": {"n_steps": config.ig_steps, "internal_batch_size": config.batch_size},
    }
    return per_method.get(method, {})


def resolve_demo_method(name: str) -> str:
    """``ShapleyEstimator`` (the demo's Shapley method) or a method of :func:`~mmxai_fast.pipeline.explain`."""
    from .pipeline import resolve_method

    return ESTIMATOR_METHOD if name.lower() == ESTIMATOR_METHOD.lower() else resolve_method(name)


def _explain(model: nn.Module, case: "Case", method: str, target: int, superpixels, config: DemoConfig,
             show_progress: bool) -> "Explanation":
    from .demo_shapley import shapley_explanation
    from .pipeline import Baseline, explain

    if method == ESTIMATOR_METHOD:
        sigma = config.shapley_blur_sigma
        return shapley_explanation(model, case, target, superpixels, config.shapley_method,
                                   config.shapley_evaluations, seed=config.seed,
                                   coarse_segments=config.coarse_segments, batch_size=config.batch_size,
                                   baseline=Baseline.blur(sigma) if sigma > 0 else Baseline.zeros())
    return explain(model, case, method, target=target, superpixels=superpixels, baseline=Baseline.zeros(),
                   method_kwargs=_method_kwargs(method, config), show_progress=show_progress, seed=config.seed)


def run_demo(out_dir, config: Optional[DemoConfig] = None, anatomy: str = "phantom",
             methods: Sequence[str] = DEFAULT_METHODS, show_progress: bool = True,
             trained: Optional[TrainResult] = None, echo: bool = True) -> DemoResult:
    """Train the grade classifier on phantoms, explain held-out high-grade cases, score and write the results.

    Args:
        out_dir: output folder (created). Per explained case ``<case>/overview.png`` (every method
            and modality) and ``<case>/<method>/`` (:func:`~mmxai_fast.pipeline.write_explanation`:
            NIfTI heatmaps, importance/summary JSON, figures); ``summary.md`` and ``summary.json``.
        config: sizes (default :class:`DemoConfig`; :meth:`DemoConfig.quick` for a short run).
        anatomy: ``"phantom"`` or ``"mni152"`` (needs nilearn).
        methods: attribution methods (names or aliases of :func:`~mmxai_fast.pipeline.explain`).
        show_progress: tqdm progress bars.
        trained: reuse a classifier from :func:`train_grade_classifier` (same ``config`` and
            ``anatomy``) instead of training one.
        echo: print the summary table.

    Returns:
        :class:`DemoResult` with one :class:`MethodResult` per case and method.

    Raises:
        ValueError: unknown ``anatomy`` or method, or no held-out high-grade case classified right.
        ImportError: ``anatomy="mni152"`` without nilearn.
    """
    from .demo_metrics import explanation_metrics
    from .demo_report import overview_figure
    from .pipeline import Superpixels, superpixel_mask, write_explanation
    from .pipeline.outputs import _png_bytes, write_files_atomically

    config = config or DemoConfig()
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods must be a non-empty list of method names, got {methods!r}")
    methods = tuple(resolve_demo_method(m) for m in methods)
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    out_dir = Path(out_dir)

    trained = trained or train_grade_classifier(config, anatomy=anatomy, show_progress=show_progress)
    model = trained.model
    high = GRADES.index("high")
    with torch.no_grad():
        probs = torch.cat([model(x.contiguous(memory_format=torch.channels_last_3d)).softmax(1)[:, high]
                           for x in trained.val_images.split(config.batch_size)])
    picks = [i for i, p in enumerate(trained.val_phantoms) if p.grade == "high" and probs[i] > 0.5][:config.n_cases]
    if not picks:
        raise ValueError("the classifier got no held-out high-grade case right; train longer (epochs, n_train)")

    rows, files = [], {}
    superpixels = Superpixels(n_segments=config.n_segments, compactness=config.compactness)
    for i in picks:
        phantom = trained.val_phantoms[i]
        case, name = phantom_case(phantom), f"case{i:03d}"
        explanations = {method: _explain(model, case, method, high, superpixels, config, show_progress)
                        for method in methods}
        # every method's curves remove the same superpixels (the Shapley ones), in its own order
        mask = next((e.feature_mask for e in explanations.values() if e.feature_mask is not None), None)
        mask = superpixel_mask(case, superpixels) if mask is None else mask
        for method, explanation in explanations.items():
            written = write_explanation(case, explanation, out_dir / name / method)
            stats = explanation.stats
            rows.append(MethodResult(
                case=name, method=method, wall_s=stats.wall_s, model_inputs=stats.model_inputs,
                model_calls=stats.model_evaluations, model_s=stats.model_s,
                localisation=localisation_score(explanation.attributions, phantom.tumour),
                tumour_fraction=float(phantom.tumour.float().mean()),
                tumour_fraction_of_brain=float(phantom.tumour.sum() / phantom.brain.sum()),
                modality_importance=explanation.modality_importance,
                modality_ranking=modality_ranking(explanation.modality_importance),
                evidence_share=(evidence := evidence_share(explanation.attributions, case.modalities)),
                evidence_ranking=modality_ranking(evidence), p_high=float(probs[i]),
                metrics=explanation_metrics(model, case, explanation, mask, high, seed=config.seed,
                                            blur_sigma=config.shapley_blur_sigma),
                files={k: str(v) for k, v in written.items()}))
        figure = _png_bytes(overview_figure(case, explanations))
        overview = write_files_atomically(out_dir / name, {"overview.png": figure})
        files[f"{name}/overview.png"] = str(overview["overview.png"])

    result = DemoResult(config=config, anatomy=anatomy, accuracy=trained.accuracy, train_s=trained.train_s,
                        rows=rows, files=files)
    markdown = summary_markdown(result)
    summary = {"config": asdict(config), "anatomy": anatomy, "accuracy": result.accuracy, "n_val": trained.n_val,
               "train_s": result.train_s, "threads": torch.get_num_threads(), "rows": [asdict(r) for r in rows]}
    written = write_files_atomically(out_dir, {"summary.md": markdown.encode(),
                                               "summary.json": (json.dumps(summary, indent=2) + "\n").encode()})
    files.update({k: str(v) for k, v in written.items()})
    if echo:
        print(markdown)
        print(f"figures and heatmaps in {out_dir}/")
    return result
