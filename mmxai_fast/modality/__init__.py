"""Modality robustness and importance for multi-sequence inputs (pulse-sequence integration,
Yi et al.; background.md section 4).

- :class:`ModalityDropout`: input-level dropout of whole modalities (all their slices together).
- :func:`modality_censorship`: the model on every subset of modalities (2^M, batched on the
  engine) and the exact Shapley value of each modality.
- :func:`saliency_aggregates` and :class:`CumulativeSaliency`: sums of |dL/dx| per modality and
  per z-slice, once or accumulated over training iterations.

Layout convention: the ``C`` channels of an input are ``M`` modalities of ``C // M`` channels each,
modality-major (channel ``c`` belongs to modality ``c // (C // M)``), e.g. 4 sequences x 5 slices.
"""
from .censorship import ModalityCensorship, exact_shapley_from_subsets, modality_censorship
from .dropout import ModalityDropout, apply_modality_drops, modality_dropout_distribution, sample_modality_drops
from .saliency import CumulativeSaliency, SaliencyAggregates, aggregate_abs_gradient, saliency_aggregates

__all__ = [
    "ModalityDropout", "sample_modality_drops", "apply_modality_drops", "modality_dropout_distribution",
    "ModalityCensorship", "modality_censorship", "exact_shapley_from_subsets",
    "SaliencyAggregates", "saliency_aggregates", "aggregate_abs_gradient", "CumulativeSaliency",
]
