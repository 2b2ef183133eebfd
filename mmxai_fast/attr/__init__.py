"""Captum-compatible attribution classes running on the mmxai_fast engine.

Perturbation methods (:class:`FeatureAblation`, :class:`Occlusion`,
:class:`ShapleyValueSampling`, :class:`ShapleyValues`, :class:`FeaturePermutation`, :class:`Lime`,
:class:`KernelShap`) are re-implemented on :class:`~mmxai_fast.attr._engine.PerturbationEngine`
with Captum 0.9's constructors, ``attribute`` signatures and results. Gradient methods are
Captum's own classes, re-exported unchanged so one import serves both.
"""
from captum.attr import (DeepLift, Deconvolution, GradientShap, GuidedBackprop, GuidedGradCam,
                         InputXGradient, IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency)

from ._engine import AttributionInputError, PerturbationEngine, coalition_evaluator
from ._evaluator import Evaluator
from .feature_ablation import FeatureAblation
from .feature_permutation import FeaturePermutation
from .kernel_shap import KernelShap
from .lime import Lime
from .linear_model import TorchWeightedLinearRegression
from .occlusion import Occlusion
from ._patch import patch_captum, unpatch_captum
from .shapley_value import ShapleyValues, ShapleyValueSampling

__all__ = [
    "FeatureAblation", "Occlusion", "ShapleyValueSampling", "ShapleyValues", "FeaturePermutation", "Lime",
    "KernelShap", "TorchWeightedLinearRegression",
    "AttributionInputError", "Evaluator", "PerturbationEngine", "coalition_evaluator", "patch_captum", "unpatch_captum",
    "Saliency", "Deconvolution", "GuidedBackprop", "NoiseTunnel", "InputXGradient",
    "IntegratedGradients", "DeepLift", "GradientShap", "LayerGradCam", "GuidedGradCam",
]
