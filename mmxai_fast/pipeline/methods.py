"""The attribution methods :func:`~mmxai_fast.pipeline.explain` runs, as a table.

:data:`RUNNERS` maps each canonical (Captum class) name to a :class:`MethodRunner`: the classes
whose arguments it takes, how it is built and called, and what it needs (superpixels, hooks, a
Grad-CAM layer). ``explain`` only reads the table; adding a method is adding a row.
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from .baselines import Baseline
from .case import Case
from .._validation import int_at_least

__all__ = ["MethodRunner", "RunContext", "RUNNERS", "resolve_method", "check_method_kwargs", "baseline_input",
           "PERTURBATION_METHODS", "GRADIENT_METHODS", "METHODS", "HOOK_METHODS", "GRADIENT_BATCH_VOXELS"]

_ALIASES = {
    "shapley": "ShapleyValueSampling", "svs": "ShapleyValueSampling", "ablation": "FeatureAblation",
    "permutation": "FeaturePermutation", "kernelshap": "KernelShap", "gradient": "Saliency",
    "deconv": "Deconvolution", "ig": "IntegratedGradients", "gradcam": "LayerGradCam",
    "guidedgradcam": "GuidedGradCam", "inputxgrad": "InputXGradient",
}
#: Input voxels per model call for the batched gradient methods (IG steps, SmoothGrad samples).
GRADIENT_BATCH_VOXELS = 2**24
# Arguments explain() passes itself; method_kwargs may not set them.
_RESERVED = {"inputs", "target", "baselines", "feature_mask", "nt_type", "forward_func", "model", "layer"}


@dataclass
class RunContext:
    """What a runner gets: the (timed) model, the batched input ``x`` ``[1, M, *S]``, the
    baseline input ``base``, the engine's feature mask (``[1, M, *S]`` from 0, or None)."""

    model: nn.Module
    x: Tensor
    base: Tensor
    target: Optional[int]
    mask: Optional[Tensor]
    case: Case
    baseline: Baseline
    layer: Optional[nn.Module]
    show_progress: bool


@dataclass(frozen=True)
class MethodRunner:
    """One row of :data:`RUNNERS`.

    Attributes:
        name: canonical method name.
        classes: the classes whose ``attribute``/constructor arguments ``method_kwargs`` may set
            (a function: Captum is imported lazily).
        run: ``run(ctx, kwargs) -> (attributions [1, M, *S], attribution object)``.
        uses_superpixels: takes the :class:`Superpixels` feature mask.
        is_gradient: a Captum gradient method (the input needs ``requires_grad``).
        needs_hooks: uses module hooks (no TorchScript, no in-place activations).
        needs_layer: takes a Grad-CAM layer.
        extra_kwargs: ``method_kwargs`` names explain() handles itself.
    """

    name: str
    classes: Callable[[], list]
    run: Callable[[RunContext, Dict[str, Any]], Tuple[Tensor, Any]]
    uses_superpixels: bool = False
    is_gradient: bool = False
    needs_hooks: bool = False
    needs_layer: bool = False
    extra_kwargs: frozenset = frozenset()

    def stderr(self, method_object) -> Optional[Tensor]:
        """The method's standard errors (ShapleyValueSampling's ``last_stderr``), else None."""
        value = getattr(method_object, "last_stderr", None)
        return value if isinstance(value, Tensor) else None


def _constructor_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the entries of ``kwargs`` that ``cls``'s constructor takes (Lime's
    ``interpretable_model``, ``similarity_func``...); the rest go to ``attribute``."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "forward_func", "model", "layer"}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}


_warned_slow_path: Set[str] = set()


def _warn_if_captum_path(method) -> None:
    """Once per method: a custom ``perturb_func``/``similarity_func`` runs Captum's own code."""
    runs_on_engine = getattr(method, "_runs_on_engine", None)
    name = type(method).__name__
    if runs_on_engine is None or runs_on_engine() or name in _warned_slow_path:
        return
    _warned_slow_path.add(name)
    warnings.warn(f"{name}: a custom perturb_func, similarity_func or interpretable-space transform in "
                  f"method_kwargs runs Captum's own (slow, per-sample) implementation instead of the engine; "
                  f"drop it to use the engine's batched path", stacklevel=4)


def _engine_class(name: str):
    return getattr(importlib.import_module("mmxai_fast.attr"), name)


def _default_occlusion_window(image: Tensor) -> Tuple[int, ...]:
    # One modality at a time, an eighth of each spatial edge: 8^d windows per modality.
    return (1,) + tuple(max(1, s // 8) for s in image.shape[1:])


def baseline_input(case: Case, baseline: Baseline) -> Tensor:
    """``baseline`` on the foreground, the input itself on the background: ``[M, *S]``."""
    base = baseline.tensor(case)
    return base if case.foreground is None else torch.where(case.foreground.to(base.device), base, case.image)


#: Methods the pipeline declares its superpixel background (id 0) to. Its baseline is the input
#: itself (``baseline_input``), so as a feature it changes no model input: FeatureAblation spends
#: a call on it and Lime/KernelShap fit a column of noise whose coefficient lands on the background.
_DECLARES_BACKGROUND = ("FeatureAblation", "Lime", "KernelShap")


def _perturbation(name: str):
    def run(ctx: RunContext, kwargs: Dict[str, Any]):
        cls = _engine_class(name)
        kwargs = dict(kwargs)
        kwargs.setdefault("perturbations_per_eval", "auto")
        kwargs.setdefault("show_progress", ctx.show_progress)
        method = cls(ctx.model, **_constructor_kwargs(cls, kwargs))
        _warn_if_captum_path(method)
        x, base, target, mask = ctx.x, ctx.base, ctx.target, ctx.mask
        if name == "Occlusion":
            window = tuple(kwargs.pop("sliding_window_shapes", _default_occlusion_window(ctx.case.image)))
            kwargs.setdefault("strides", window)
            return method.attribute(x, sliding_window_shapes=window, baselines=base, target=target, **kwargs), method
        if name == "FeaturePermutation":
            # Permutation swaps a feature between the examples of a batch: the case is batched with
            # baseline draws (the paper used batches of 4), so a permuted feature takes a baseline value.
            size, b = kwargs.pop("permutation_batch", 4), ctx.baseline
            draws = [base] + [baseline_input(ctx.case, Baseline.gaussian(b.seed + i) if b.kind == "gaussian" else b)
                              [None].to(x.device) for i in range(1, size - 1)]
            out = method.attribute(torch.cat([x] + draws), target=target, feature_mask=mask, **kwargs)
            return out[:1], method
        if name in _DECLARES_BACKGROUND and mask is not None and int(mask.min()) == 0 \
                and getattr(method, "_runs_on_engine", lambda: True)():
            # superpixel 0 is the background: no model calls (FeatureAblation), no column (Lime, KernelShap)
            kwargs.setdefault("background_id", 0)
        return method.attribute(x, baselines=base, target=target, feature_mask=mask, **kwargs), method
    return run


def _gradient_batch(x: Tensor) -> int:
    return max(1, GRADIENT_BATCH_VOXELS // max(1, x.numel()))


def _captum(name: str):
    return getattr(importlib.import_module("captum.attr"), name)


def _gradient(name: str, defaults: Callable[[Tensor, Dict[str, Any]], None] = lambda x, kw: None,
              with_baselines: bool = False):
    """Captum's ``name(model)`` called with the input (and the baseline as reference)."""
    def run(ctx: RunContext, kwargs: Dict[str, Any]):
        kwargs = dict(kwargs)
        defaults(ctx.x, kwargs)
        cls = _captum(name)
        method = cls(ctx.model, **_constructor_kwargs(cls, kwargs))
        if with_baselines:
            kwargs["baselines"] = ctx.base
        return method.attribute(ctx.x, target=ctx.target, **kwargs), method
    return run


def _smoothgrad(ctx: RunContext, kwargs: Dict[str, Any]):
    kwargs, x = dict(kwargs), ctx.x
    kwargs.setdefault("nt_samples", 10)
    # SmoothGrad's noise level: 15% of the input range (Smilkov et al. 2017 suggest 10-20%).
    kwargs.setdefault("stdevs", 0.15 * float(x.detach().max() - x.detach().min()) or 1.0)
    kwargs.setdefault("nt_samples_batch_size", _gradient_batch(x))
    saliency = _captum("Saliency")(ctx.model, **_constructor_kwargs(_captum("Saliency"), kwargs))
    method = _captum("NoiseTunnel")(saliency, **_constructor_kwargs(_captum("NoiseTunnel"), kwargs))
    return method.attribute(x, nt_type="smoothgrad", target=ctx.target, **kwargs), method


def _interpolate_mode(x: Tensor) -> str:
    return "trilinear" if x.dim() == 5 else "bilinear"


def _layer_gradcam(ctx: RunContext, kwargs: Dict[str, Any]):
    from captum.attr import LayerAttribution

    kwargs, cls = dict(kwargs), _captum("LayerGradCam")
    method = cls(ctx.model, ctx.layer, **_constructor_kwargs(cls, kwargs))
    cam = method.attribute(ctx.x, target=ctx.target, **kwargs)
    cam = LayerAttribution.interpolate(cam, tuple(ctx.x.shape[2:]), interpolate_mode=_interpolate_mode(ctx.x))
    return cam.expand_as(ctx.x), method


def _guided_gradcam(ctx: RunContext, kwargs: Dict[str, Any]):
    kwargs, cls = dict(kwargs), _captum("GuidedGradCam")
    kwargs.setdefault("interpolate_mode", _interpolate_mode(ctx.x))
    method = cls(ctx.model, ctx.layer, **_constructor_kwargs(cls, kwargs))
    return method.attribute(ctx.x, target=ctx.target, **kwargs), method


def _ig_defaults(x: Tensor, kwargs: Dict[str, Any]) -> None:
    kwargs.setdefault("internal_batch_size", _gradient_batch(x))


def _rows():
    rows = [MethodRunner("Occlusion", lambda: [_engine_class("Occlusion")], _perturbation("Occlusion"))]
    for name in ("FeatureAblation", "FeaturePermutation", "Lime", "ShapleyValueSampling", "KernelShap"):
        extra = frozenset({"permutation_batch"}) if name == "FeaturePermutation" else frozenset()
        rows.append(MethodRunner(name, lambda n=name: [_engine_class(n)], _perturbation(name),
                                 uses_superpixels=True, extra_kwargs=extra))
    plain = {"Saliency": {}, "Deconvolution": dict(needs_hooks=True), "GuidedBackprop": dict(needs_hooks=True),
             "InputXGradient": {}}
    for name, flags in plain.items():
        rows.append(MethodRunner(name, lambda n=name: [_captum(n)], _gradient(name), is_gradient=True, **flags))
    rows.append(MethodRunner("SmoothGrad", lambda: [_captum("NoiseTunnel"), _captum("Saliency")], _smoothgrad,
                             is_gradient=True))
    rows.append(MethodRunner("IntegratedGradients", lambda: [_captum("IntegratedGradients")],
                             _gradient("IntegratedGradients", _ig_defaults, with_baselines=True), is_gradient=True))
    rows.append(MethodRunner("DeepLift", lambda: [_captum("DeepLift")], _gradient("DeepLift", with_baselines=True),
                             is_gradient=True, needs_hooks=True))
    rows.append(MethodRunner("GradientShap", lambda: [_captum("GradientShap")],
                             _gradient("GradientShap", with_baselines=True), is_gradient=True))
    rows.append(MethodRunner("LayerGradCam", lambda: [_captum("LayerGradCam")], _layer_gradcam, is_gradient=True,
                             needs_hooks=True, needs_layer=True))
    rows.append(MethodRunner("GuidedGradCam", lambda: [_captum("GuidedGradCam")], _guided_gradcam,
                             is_gradient=True, needs_hooks=True, needs_layer=True))
    return {row.name: row for row in rows}


#: Canonical method name -> :class:`MethodRunner`.
RUNNERS: Dict[str, MethodRunner] = _rows()
PERTURBATION_METHODS = tuple(n for n, r in RUNNERS.items() if not r.is_gradient)
GRADIENT_METHODS = ("Saliency", "Deconvolution", "GuidedBackprop", "SmoothGrad", "InputXGradient",
                    "IntegratedGradients", "DeepLift", "GradientShap", "LayerGradCam", "GuidedGradCam")
METHODS = PERTURBATION_METHODS + GRADIENT_METHODS
# Methods that need module hooks (impossible on TorchScript, broken by in-place ReLUs).
HOOK_METHODS = tuple(n for n in METHODS if RUNNERS[n].needs_hooks)


def resolve_method(name: str) -> str:
    """Canonical (Captum class) name of ``name``; case, ``_`` and ``-`` are ignored
    (``"shapley"``, ``"integrated_gradients"``, ``"ig"``, ``"GradCAM"``...).

    Raises:
        ValueError: unknown method (the message lists them).
    """
    if not isinstance(name, str):
        raise ValueError(f"method must be a string, got {type(name).__name__}")
    key = name.lower().replace("_", "").replace("-", "")
    table = {m.lower(): m for m in METHODS}
    table.update(_ALIASES)
    if key not in table:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (or an alias such as 'shapley', 'ig', "
                         f"'gradcam'), got {name!r}")
    return table[key]


def check_method_kwargs(method: str, method_kwargs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Reject ``method_kwargs`` entries the method does not take, before any work.

    Accepted: the parameters of the method class's ``attribute`` and constructor (for SmoothGrad
    those of NoiseTunnel and Saliency), ``permutation_batch`` for FeaturePermutation.

    Raises:
        ValueError: not a mapping, an unknown name, or one that explain() sets itself.
    """
    runner = RUNNERS[resolve_method(method)]
    if method_kwargs is None:
        return {}
    if not isinstance(method_kwargs, Mapping):
        raise ValueError(f"method_kwargs must be a mapping, got {type(method_kwargs).__name__}")
    accepted = set(runner.extra_kwargs)
    for cls in runner.classes():
        for fn in (cls.attribute, cls.__init__):
            accepted |= {p.name for p in inspect.signature(fn).parameters.values()
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    accepted -= _RESERVED | {"self"}
    for key in method_kwargs:
        if key in _RESERVED:
            raise ValueError(f"method_kwargs: {key!r} is set by explain() itself (use its own argument)")
        if key not in accepted:
            raise ValueError(f"method_kwargs: {runner.name} takes no argument {key!r}; it takes {sorted(accepted)}")
    size = method_kwargs.get("permutation_batch", 2)
    int_at_least(size, "method_kwargs['permutation_batch']", 2)
    return dict(method_kwargs)
