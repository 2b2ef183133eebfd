"""One entry point for every attribution method on a multi-modal case: :func:`explain`.

The six perturbation methods of Jin et al. (2023) run on the engine (``mmxai_fast.attr``; a
method not ported yet falls back to Captum's class), the ten gradient methods are Captum's.
The model sees ``case.image[None]``, i.e. ``[1, M, X, Y, Z]``.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .baselines import Baseline
from .case import Case
from .superpixels import Superpixels, superpixel_mask

__all__ = ["explain", "Explanation", "RunStats", "resolve_method", "resolve_layer", "modality_importance",
           "check_method_kwargs",
           "PERTURBATION_METHODS", "GRADIENT_METHODS", "METHODS"]

PERTURBATION_METHODS = ("Occlusion", "FeatureAblation", "FeaturePermutation", "Lime", "ShapleyValueSampling",
                        "KernelShap")
GRADIENT_METHODS = ("Saliency", "Deconvolution", "GuidedBackprop", "SmoothGrad", "InputXGradient",
                    "IntegratedGradients", "DeepLift", "GradientShap", "LayerGradCam", "GuidedGradCam")
METHODS = PERTURBATION_METHODS + GRADIENT_METHODS
# Methods that need module hooks (impossible on TorchScript, broken by in-place ReLUs).
HOOK_METHODS = ("Deconvolution", "GuidedBackprop", "DeepLift", "LayerGradCam", "GuidedGradCam")
_SUPERPIXEL_METHODS = ("FeatureAblation", "FeaturePermutation", "Lime", "ShapleyValueSampling", "KernelShap")
_ALIASES = {
    "shapley": "ShapleyValueSampling", "svs": "ShapleyValueSampling", "ablation": "FeatureAblation",
    "permutation": "FeaturePermutation", "kernelshap": "KernelShap", "gradient": "Saliency",
    "deconv": "Deconvolution", "ig": "IntegratedGradients", "gradcam": "LayerGradCam",
    "guidedgradcam": "GuidedGradCam", "inputxgrad": "InputXGradient",
}
#: Input voxels per model call for the batched gradient methods (IG steps, SmoothGrad samples).
GRADIENT_BATCH_VOXELS = 2**24


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


@dataclass
class RunStats:
    """Cost of one explanation.

    Attributes:
        method: canonical method name.
        model_evaluations: model calls (forward passes, each on a batch), the prediction of the
            target included.
        wall_s: wall time of :func:`explain` (superpixels included).
        model_s: time inside the model's forward calls, plus the backward passes that reach the
            input (gradient methods).
        model_inputs: examples passed through the model in all calls together.
    """

    method: str
    model_evaluations: int
    wall_s: float
    model_s: float
    model_inputs: int = 0

    @property
    def model_share(self) -> float:
        return self.model_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "model_share": self.model_share}


@dataclass
class Explanation:
    """Result of :func:`explain`.

    Attributes:
        attributions: float32 ``[M, *S]`` on the CPU, one heatmap per modality.
        method: canonical method name.
        target: the explained output index (None for a single-output model).
        feature_mask: int64 ``[M, *S]`` superpixels (0 = background) for the superpixel
            methods, else None.
        modality_importance: ``{modality: share of the total |attribution|}`` (sums to 1).
        stats: :class:`RunStats`.
        modalities: modality names, in the order of ``attributions``.
        settings: the method's arguments, superpixels and baseline, for the record.
    """

    attributions: Tensor
    method: str
    target: Optional[int]
    feature_mask: Optional[Tensor]
    modality_importance: Dict[str, float]
    stats: RunStats
    modalities: Tuple[str, ...] = ()
    settings: Dict[str, Any] = field(default_factory=dict)


def modality_importance(attributions: Tensor, modalities) -> Dict[str, float]:
    """Share of the total absolute attribution per modality (``[M, *S]`` -> sums to 1; equal
    shares when every attribution is 0)."""
    per = attributions.detach().abs().double().reshape(attributions.shape[0], -1).sum(dim=1)
    total = float(per.sum())
    shares = (per / total).tolist() if total > 0 else [1.0 / len(per)] * len(per)
    return dict(zip(modalities, shares))


class _Stamp(torch.autograd.Function):
    """Identity whose backward records when the gradient passes (times the model's backward)."""

    @staticmethod
    def forward(ctx, x, clock, edge):
        ctx.clock, ctx.edge = clock, edge
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.clock.backward_edge(ctx.edge, grad.device)
        return grad, None, None


class _TimedModel(nn.Module):
    """Wraps the model: counts calls and examples, times forwards (and backwards to the input)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls = self.examples = 0
        self.seconds = 0.0
        self._backward_starts: List[float] = []

    def _now(self, device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def backward_edge(self, edge: str, device) -> None:
        now = self._now(device)
        if edge == "output":
            self._backward_starts.append(now)
        elif self._backward_starts:
            self.seconds += now - self._backward_starts.pop()

    def forward(self, x: Tensor) -> Tensor:
        start = self._now(x.device)
        track = torch.is_grad_enabled() and x.requires_grad
        out = self.model(_Stamp.apply(x, self, "input") if track else x)
        if track and isinstance(out, Tensor) and out.requires_grad:
            out = _Stamp.apply(out, self, "output")
        self.seconds += self._now(x.device) - start
        self.calls += 1
        self.examples += x.shape[0]
        return out


@contextlib.contextmanager
def _no_inplace(model: nn.Module):
    """Turn off ``inplace`` on activations while hooks are attached (Captum's ReLU hooks and
    DeepLift fail on in-place outputs); restored afterwards."""
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def resolve_layer(model: nn.Module, layer: Union[None, str, nn.Module]) -> nn.Module:
    """Grad-CAM layer: a module, a name from ``model.named_modules()``, or None for the last
    Conv layer before the head (:func:`mmxai_fast.models.last_conv_layer`).

    Raises:
        ValueError: unknown name (the message lists the model's conv layers).
    """
    from ..models import last_conv_layer

    if layer is None:
        return last_conv_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; its conv layers are {convs}")
    return modules[layer]


def _perturbation_class(name: str):
    """The engine's class (all perturbation methods are on the engine)."""
    return getattr(importlib.import_module("mmxai_fast.attr"), name)


def _constructor_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the entries of ``kwargs`` that ``cls``'s constructor takes (Lime's
    ``interpretable_model``, ``similarity_func``...); the rest go to ``attribute``."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "forward_func", "model", "layer"}
    return {k: kwargs.pop(k) for k in list(kwargs) if k in names}


# Arguments explain() passes itself; method_kwargs may not set them.
_RESERVED = {"inputs", "target", "baselines", "feature_mask", "nt_type", "forward_func", "model", "layer"}


def _method_classes(name: str):
    import captum.attr as ca

    if name in PERTURBATION_METHODS:
        return [_perturbation_class(name)]
    if name == "SmoothGrad":
        return [ca.NoiseTunnel, ca.Saliency]
    return [getattr(ca, name)]


def check_method_kwargs(method: str, method_kwargs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Reject ``method_kwargs`` entries the method does not take, before any work.

    Accepted: the parameters of the method class's ``attribute`` and constructor (for SmoothGrad
    those of NoiseTunnel and Saliency), ``permutation_batch`` for FeaturePermutation.

    Raises:
        ValueError: not a mapping, an unknown name, or one that explain() sets itself.
    """
    name = resolve_method(method)
    if method_kwargs is None:
        return {}
    if not isinstance(method_kwargs, Mapping):
        raise ValueError(f"method_kwargs must be a mapping, got {type(method_kwargs).__name__}")
    accepted = {"permutation_batch"} if name == "FeaturePermutation" else set()
    for cls in _method_classes(name):
        for fn in (cls.attribute, cls.__init__):
            accepted |= {p.name for p in inspect.signature(fn).parameters.values()
                         if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    accepted -= _RESERVED | {"self"}
    for key in method_kwargs:
        if key in _RESERVED:
            raise ValueError(f"method_kwargs: {key!r} is set by explain() itself (use its own argument)")
        if key not in accepted:
            raise ValueError(f"method_kwargs: {name} takes no argument {key!r}; it takes {sorted(accepted)}")
    size = method_kwargs.get("permutation_batch", 2)
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"method_kwargs['permutation_batch'] must be an int >= 2, got {size!r}")
    return dict(method_kwargs)


def _default_occlusion_window(image: Tensor) -> Tuple[int, ...]:
    # One modality at a time, an eighth of each spatial edge: 8^d windows per modality.
    return (1,) + tuple(max(1, s // 8) for s in image.shape[1:])


def _run_perturbation(name, model, x, base, target, mask, kwargs, show_progress, baseline: Baseline, case):
    cls = _perturbation_class(name)
    kwargs = dict(kwargs)
    kwargs.setdefault("perturbations_per_eval", "auto")
    kwargs.setdefault("show_progress", show_progress)
    method = cls(model, **_constructor_kwargs(cls, kwargs))
    if name == "Occlusion":
        window = tuple(kwargs.pop("sliding_window_shapes", _default_occlusion_window(case.image)))
        kwargs.setdefault("strides", window)
        return method.attribute(x, sliding_window_shapes=window, baselines=base, target=target, **kwargs)
    if name == "FeaturePermutation":
        # Permutation swaps a feature between the examples of a batch: the case is batched with
        # baseline draws (the paper used batches of 4), so a permuted feature takes a baseline value.
        size = kwargs.pop("permutation_batch", 4)
        draws = [base] + [_baseline_input(case, Baseline.gaussian(baseline.seed + i) if baseline.kind == "gaussian"
                                          else baseline)[None].to(x.device) for i in range(1, size - 1)]
        batch = torch.cat([x] + draws)
        return method.attribute(batch, target=target, feature_mask=mask, **kwargs)[:1]
    if name == "FeatureAblation" and mask is not None and int(mask.min()) == 0:
        kwargs.setdefault("background_id", 0)  # superpixel 0 is the background: no model calls for it
    return method.attribute(x, baselines=base, target=target, feature_mask=mask, **kwargs)


def _baseline_input(case: Case, baseline: Baseline) -> Tensor:
    """``baseline`` on the foreground, the input itself on the background: ``[M, *S]``."""
    base = baseline.tensor(case)
    return base if case.foreground is None else torch.where(case.foreground.to(base.device), base, case.image)


def _gradient_batch(x: Tensor) -> int:
    return max(1, GRADIENT_BATCH_VOXELS // max(1, x.numel()))


def _run_gradient(name, model, x, base, target, layer, kwargs):
    import captum.attr as ca
    from captum.attr import LayerAttribution

    kwargs = dict(kwargs)
    mode = "trilinear" if x.dim() == 5 else "bilinear"

    def build(cls, *args):
        return cls(*args, **_constructor_kwargs(cls, kwargs))

    if name == "SmoothGrad":
        kwargs.setdefault("nt_samples", 10)
        # SmoothGrad's noise level: 15% of the input range (Smilkov et al. 2017 suggest 10-20%).
        kwargs.setdefault("stdevs", 0.15 * float(x.detach().max() - x.detach().min()) or 1.0)
        kwargs.setdefault("nt_samples_batch_size", _gradient_batch(x))
        return build(ca.NoiseTunnel, build(ca.Saliency, model)).attribute(x, nt_type="smoothgrad", target=target,
                                                                          **kwargs)
    if name in ("IntegratedGradients", "DeepLift", "GradientShap"):
        if name == "IntegratedGradients":
            kwargs.setdefault("internal_batch_size", _gradient_batch(x))
        return build(getattr(ca, name), model).attribute(x, baselines=base, target=target, **kwargs)
    if name == "LayerGradCam":
        cam = build(ca.LayerGradCam, model, layer).attribute(x, target=target, **kwargs)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=mode)
        return cam.expand_as(x)
    if name == "GuidedGradCam":
        kwargs.setdefault("interpolate_mode", mode)
        return build(ca.GuidedGradCam, model, layer).attribute(x, target=target, **kwargs)
    # Saliency, Deconvolution, GuidedBackprop, InputXGradient
    return build(getattr(ca, name), model).attribute(x, target=target, **kwargs)


def _predict_target(model: nn.Module, x: Tensor) -> Optional[int]:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, Tensor):
        raise ValueError(f"model must return a tensor, got {type(out).__name__}")
    if out.dim() <= 1 or out.shape[-1] == 1 and out.dim() == 2:
        return None  # one output: nothing to choose
    if out.dim() != 2:
        raise ValueError(f"model output must be [1, classes] to pick a target, got shape {tuple(out.shape)}; "
                         f"pass target=")
    return int(out.argmax(dim=1)[0])


def _check_target(target, stats_model: nn.Module, x: Tensor) -> Optional[int]:
    if target is None:
        return _predict_target(stats_model, x)
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target must be a class index >= 0 or None, got {target!r}")
    return target


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def explain(model: nn.Module, case: Case, method: str = "ShapleyValueSampling", target: Optional[int] = None,
            superpixels: Superpixels = Superpixels(), baseline: Baseline = Baseline.zeros(),
            layer: Union[None, str, nn.Module] = None, method_kwargs: Optional[Mapping[str, Any]] = None,
            device: Union[None, str, torch.device] = None, show_progress: bool = True, seed: int = 0) -> Explanation:
    """Explain ``model``'s prediction on ``case``: one heatmap per modality.

    Perturbation methods (Occlusion, FeatureAblation, FeaturePermutation, Lime,
    ShapleyValueSampling, KernelShap) remove features by replacing them with ``baseline``;
    all but Occlusion use the :class:`Superpixels` feature mask (SLIC on the foreground, one
    mask per modality unless ``joint``). The background (outside ``case.foreground``) is never
    removed: the baseline keeps the input there, and its attributions are set to 0.
    Gradient methods (Saliency, Deconvolution, GuidedBackprop, SmoothGrad, InputXGradient,
    IntegratedGradients, DeepLift, GradientShap, LayerGradCam, GuidedGradCam) are Captum's;
    IntegratedGradients, DeepLift and GradientShap take the same baseline as reference (zeros by
    default, as in the paper). Grad-CAM maps are upsampled (trilinear in 3D) to the input size
    and shown on every modality.

    Args:
        model: ``torch.nn.Module`` (or TorchScript) taking ``[N, M, *S]``; put in eval mode for
            the call and restored afterwards.
        case: :class:`~mmxai_fast.pipeline.Case`.
        method: Captum class name or alias (:func:`resolve_method`).
        target: output index to explain; None: the model's argmax on the case.
        superpixels: feature mask settings (superpixel methods).
        baseline: :class:`Baseline` for removed features / gradient reference.
        layer: Grad-CAM layer (module or name); None: last Conv layer.
        method_kwargs: extra arguments for the method's ``attribute`` (``n_samples``,
            ``sliding_window_shapes``/``strides`` for Occlusion, ``n_steps``, ``nt_samples``,
            ``stdevs``...; ``permutation_batch`` for FeaturePermutation, default 4); entries
            named like a constructor argument of the method's class go to the constructor
            (Lime's ``interpretable_model``...).
        device: where the model runs (the model is moved there); None: the model's device.
        show_progress: tqdm bars (SLIC and perturbation methods).
        seed: seeds the torch RNG for the sampling methods (restored afterwards).

    Returns:
        :class:`Explanation` with ``attributions`` float32 ``[M, *S]`` on the CPU.

    Raises:
        ValueError: unknown method, layer or method argument, bad target, a hook-based method
            on TorchScript; raised before any attribution work.
    """
    start = time.perf_counter()
    name = resolve_method(method)
    if not isinstance(case, Case):
        raise ValueError(f"case must be a mmxai_fast.pipeline.Case, got {type(case).__name__}")
    if not isinstance(superpixels, Superpixels):
        raise ValueError(f"superpixels must be a Superpixels, got {type(superpixels).__name__}")
    if not isinstance(baseline, Baseline):
        raise ValueError(f"baseline must be a Baseline, got {type(baseline).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if name in HOOK_METHODS and isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"method {name} needs module hooks, which TorchScript models do not support; "
                         f"load the model from a state dict and factory instead")
    kwargs = check_method_kwargs(name, method_kwargs)
    for key in ("sliding_window_shapes", "strides"):  # JSON gives lists
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    grad_layer = resolve_layer(model, layer) if name in ("LayerGradCam", "GuidedGradCam") else None
    if device is not None:
        model.to(device)
    device = _model_device(model) if device is None else torch.device(device)

    timed = _TimedModel(model)
    was_training = model.training
    model.eval()
    try:
        x = case.image[None].to(device)
        target = _check_target(target, timed, x)
        fg = case.foreground
        base = _baseline_input(case, baseline)[None].to(device)
        mask = None
        if name in _SUPERPIXEL_METHODS:
            mask = superpixel_mask(case, superpixels, show_progress=show_progress)
        hooks = _no_inplace(model) if name in HOOK_METHODS else contextlib.nullcontext()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), hooks:
            torch.manual_seed(seed)
            if name in PERTURBATION_METHODS:
                engine_mask = None if mask is None else (mask - 1 if int(mask.min()) > 0 else mask)
                engine_mask = None if engine_mask is None else engine_mask[None].to(device)
                out = _run_perturbation(name, timed, x, base, target, engine_mask, kwargs, show_progress,
                                        baseline, case)
            else:
                out = _run_gradient(name, timed, x.clone().requires_grad_(), base, target, grad_layer, kwargs)
        attributions = out[0].detach().float().cpu().contiguous()
        if name in PERTURBATION_METHODS and fg is not None:
            attributions = attributions.masked_fill(~fg.cpu(), 0.0)
    finally:
        model.train(was_training)
    stats = RunStats(name, timed.calls, time.perf_counter() - start, timed.seconds, timed.examples)
    settings = {"method_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, list, tuple))},
                "baseline": baseline.describe(), "seed": seed}
    if mask is not None:
        settings["superpixels"] = {**asdict(superpixels), "features": int(mask.max())}
    if grad_layer is not None:
        settings["layer"] = next((n for n, m in model.named_modules() if m is grad_layer), repr(grad_layer))
    return Explanation(attributions=attributions, method=name, target=target, feature_mask=mask,
                       modality_importance=modality_importance(attributions, case.modalities), stats=stats,
                       modalities=case.modalities, settings=settings)
