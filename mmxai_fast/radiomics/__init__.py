"""Deep radiomics with vector quantisation (Kobayashi et al., Sci Rep 2021; background.md section 5).

- :class:`VectorQuantizer`: the VQ-VAE bottleneck on ``vq_nearest`` (straight-through, codebook +
  commitment loss, optional EMA codebook).
- :func:`volume_codeword_histograms`: per-volume codeword counts, the radiomics feature vector.
- :func:`difference_ratio`, :func:`intensity_robustness`: histogram changes under intensity
  scaling ``x * (1 + s)`` and shifting ``x + s``, ``s`` = 0.0 .. 1.0.
- :func:`background_codeword`, :func:`latent_feature_ablation`: the region each codeword encodes.
"""
from .ablation import background_codeword, latent_feature_ablation, latent_feature_ablation_reference
from .histograms import volume_codeword_histograms, volume_codeword_histograms_reference
from .quantizer import VectorQuantizer, ema_codebook_update
from .robustness import (INTENSITY_STRENGTHS, IntensityRobustness, difference_ratio, intensity_robustness,
                         perturb_intensity)

__all__ = [
    "VectorQuantizer", "ema_codebook_update",
    "volume_codeword_histograms", "volume_codeword_histograms_reference",
    "INTENSITY_STRENGTHS", "IntensityRobustness", "difference_ratio", "perturb_intensity", "intensity_robustness",
    "background_codeword", "latent_feature_ablation", "latent_feature_ablation_reference",
]
