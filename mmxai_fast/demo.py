"""``mmxai-fast demo``: train a small 3D CNN on synthetic brain MRI, explain it, score the explanations.

Nothing is downloaded. The demo

1. draws 4-sequence brain phantoms (:mod:`mmxai_fast.phantom`, or the MNI152 anatomy shipped with
   nilearn) with a low- or high-grade glioma; the only evidence of grade is the enhancing rim in T1ce;
2. trains :class:`~mmxai_fast.models.VGG3D` (small widths) to tell the grades apart and reports its
   held-out accuracy;
3. explains held-out high-grade cases with a few fast methods (Shapley value sampling on superpixels,
   occlusion, integrated gradients) for the "high grade" logit;
4. writes per case and method the heatmaps and figures, and a summary table (``summary.md`` and
   ``summary.json``): wall time, model evaluations, share of time in the model, localisation
   score and the modality ranking.

The localisation score is the share of the positive attribution that falls inside the tumour
(whole lesion: core, rim and oedema), summed over the modalities: a map that ignores the tumour
scores about the tumour's volume fraction, a map confined to it scores 1.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .models import VGG3D
from .phantom import GRADES, BrainPhantom, make_phantom_dataset

__all__ = ["DemoConfig", "TrainResult", "MethodResult", "DemoResult", "DEFAULT_METHODS",
           "train_grade_classifier", "localisation_score", "modality_ranking", "run_demo"]

DEFAULT_METHODS = ("ShapleyValueSampling", "Occlusion", "IntegratedGradients")
ANATOMIES = ("phantom", "mni152")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. The defaults take a few minutes on 2 CPU cores; :meth:`quick` well under one.

    Attributes:
        shape: phantom volume ``(X, Y, Z)``.
        n_train / n_val: training and held-out cases (grades alternate, so classes are balanced).
        epochs, batch_size, learning_rate: Adam training of the classifier.
        widths: channels of the VGG3D blocks.
        n_cases: held-out high-grade cases to explain.
        n_segments: SLIC superpixels per modality for Shapley value sampling.
        shapley_samples: permutations for Shapley value sampling.
        occlusion_window / occlusion_stride: cubic occlusion window (one modality at a time).
        ig_steps: integrated-gradients steps.
        seed: seeds the data, the initialisation and the training order.
    """

    shape: Tuple[int, int, int] = (48, 48, 48)
    n_train: int = 192
    n_val: int = 48
    epochs: int = 6
    batch_size: int = 16
    learning_rate: float = 3e-3
    widths: Tuple[int, ...] = (8, 16, 32)
    n_cases: int = 2
    n_segments: int = 60
    shapley_samples: int = 2
    occlusion_window: int = 8
    occlusion_stride: int = 8
    ig_steps: int = 16
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """A smaller run (32^3 volumes, fewer cases and epochs, one explained case)."""
        values = dict(shape=(32, 32, 32), n_train=96, n_val=32, epochs=5, n_cases=1, n_segments=40,
                      occlusion_window=6, occlusion_stride=6)
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
    model_evaluations: int
    model_s: float
    localisation: float
    tumour_fraction: float
    tumour_fraction_of_brain: float
    modality_importance: Dict[str, float]
    modality_ranking: List[str]
    files: Dict[str, str] = field(default_factory=dict)


@dataclass
class DemoResult:
    config: DemoConfig
    anatomy: str
    accuracy: float
    train_s: float
    rows: List[MethodResult]
    files: Dict[str, str]


def _set_threads_and_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


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
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    _set_threads_and_seed(config.seed)
    anatomy_labels = _anatomy_labels(anatomy, config.shape)
    train_x, train_y, _ = make_phantom_dataset(config.n_train, config.shape, seed=2 * config.seed,
                                               anatomy=anatomy_labels, show_progress=show_progress)
    val_x, val_y, val_phantoms = make_phantom_dataset(config.n_val, config.shape, seed=2 * config.seed + 1,
                                                      anatomy=anatomy_labels, show_progress=show_progress)
    model = VGG3D(in_channels=train_x.shape[1], num_classes=len(GRADES), widths=config.widths, hidden=32)
    # The evidence is a thin enhancing rim in a small part of the volume: global average pooling
    # dilutes it and needs far more data than a one-minute training; max pooling asks "is there an
    # enhancing rim anywhere", which a few dozen cases teach.
    model.pool = nn.AdaptiveMaxPool3d(1)
    model = model.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-config.n_train // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.learning_rate, total_steps=steps)
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
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x.contiguous(memory_format=torch.channels_last_3d))
                            for x in val_x.split(config.batch_size)])
    accuracy = (logits.argmax(1) == val_y).float().mean().item()
    return TrainResult(model=model, accuracy=accuracy, n_val=config.n_val, train_s=time.perf_counter() - start,
                       losses=losses, val_images=val_x, val_labels=val_y, val_phantoms=val_phantoms)


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


def modality_ranking(importance: Dict[str, float]) -> List[str]:
    """Modalities from the most to the least important."""
    return sorted(importance, key=lambda name: -importance[name])
