"""One entry point for every attribution method on a multi-modal case: :func:`explain`.

The six perturbation methods of Jin et al. (2023) run on the engine (``mmxai_fast.attr``; a
method not ported yet falls back to Captum's class), the ten gradient methods are Captum's.
The model sees ``case.image[None]``, i.e. ``[1, M, X, Y, Z]``. How each method is built and
called is the table :data:`~mmxai_fast.pipeline.methods.RUNNERS`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .baselines import Baseline
from .case import Case
from .methods import (GRADIENT_BATCH_VOXELS, GRADIENT_METHODS, HOOK_METHODS, METHODS,  # noqa: F401 (re-exported)
                      PERTURBATION_METHODS, RUNNERS, MethodRunner, RunContext, baseline_input, check_method_kwargs,
                      resolve_method)
from .superpixels import Superpixels, superpixel_mask

__all__ = ["explain", "Explanation", "RunStats", "resolve_method", "resolve_layer", "modality_importance",
           "check_method_kwargs", "MethodRunner", "RUNNERS",
           "PERTURBATION_METHODS", "GRADIENT_METHODS", "METHODS"]


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
        settings: the method's arguments, superpixels and baseline, for the record (and
            ``stderr``: median and max standard error, when the method estimates them).
        stderr: float32 ``[M, *S]`` standard errors of ``attributions`` (ShapleyValueSampling's
            ``last_stderr``; 0 off the foreground), else None.
    """

    attributions: Tensor
    method: str
    target: Optional[int]
    feature_mask: Optional[Tensor]
    modality_importance: Dict[str, float]
    stats: RunStats
    modalities: Tuple[str, ...] = ()
    settings: Dict[str, Any] = field(default_factory=dict)
    stderr: Optional[Tensor] = None


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
        setattr(m, "inplace", False)
    try:
        yield
    finally:
        for m in changed:
            setattr(m, "inplace", True)


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


def _check_target(target, model: nn.Module, timed: nn.Module, x: Tensor) -> Optional[int]:
    """One forward on the case (counted when it picks the target): a tensor output, ``target``
    within its classes; None picks the argmax."""
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
        raise ValueError(f"target must be a class index >= 0 or None, got {target!r}")
    with torch.no_grad():
        out = (timed if target is None else model)(x)
    if not isinstance(out, Tensor):
        raise ValueError(f"model must return one tensor of outputs (to pick the target's output), got "
                         f"{type(out).__name__}; wrap it so that forward returns the logits tensor")
    if target is not None:
        if out.dim() >= 2 and target >= out.shape[1]:
            raise ValueError(f"target must be a class index in [0, {out.shape[1]}) for this model's output of "
                             f"shape {tuple(out.shape)}, got {target}")
        return target
    if out.dim() <= 1 or out.shape[-1] == 1 and out.dim() == 2:
        return None  # one output: nothing to choose
    if out.dim() != 2:
        raise ValueError(f"model output must be [1, classes] to pick a target, got shape {tuple(out.shape)}; "
                         f"pass target=")
    return int(out.argmax(dim=1)[0])


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
        ValueError: unknown method, layer or method argument, bad target (or one out of the
            model's classes), a model not returning one tensor, a hook-based method on
            TorchScript; raised before any attribution work (after one forward on the case).
    """
    start = time.perf_counter()
    name = resolve_method(method)
    runner = RUNNERS[name]
    if not isinstance(case, Case):
        raise ValueError(f"case must be a mmxai_fast.pipeline.Case, got {type(case).__name__}")
    if not isinstance(superpixels, Superpixels):
        raise ValueError(f"superpixels must be a Superpixels, got {type(superpixels).__name__}")
    if not isinstance(baseline, Baseline):
        raise ValueError(f"baseline must be a Baseline, got {type(baseline).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if runner.needs_hooks and isinstance(model, torch.jit.ScriptModule):
        raise ValueError(f"method {name} needs module hooks, which TorchScript models do not support; "
                         f"load the model from a state dict and factory instead")
    kwargs = check_method_kwargs(name, method_kwargs)
    for key in ("sliding_window_shapes", "strides"):  # JSON gives lists
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    grad_layer = resolve_layer(model, layer) if runner.needs_layer else None
    if device is not None:
        model.to(device)
    device = _model_device(model) if device is None else torch.device(device)

    timed = _TimedModel(model)
    was_training = model.training
    model.eval()
    try:
        x = case.image[None].to(device)
        target = _check_target(target, model, timed, x)
        fg = case.foreground
        base = baseline_input(case, baseline)[None].to(device)
        mask = superpixel_mask(case, superpixels, show_progress=show_progress) if runner.uses_superpixels else None
        engine_mask = None if mask is None else (mask - 1 if int(mask.min()) > 0 else mask)[None].to(device)
        hooks = _no_inplace(model) if runner.needs_hooks else contextlib.nullcontext()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), hooks:
            torch.manual_seed(seed)
            ctx = RunContext(timed, x.clone().requires_grad_() if runner.is_gradient else x, base, target,
                             engine_mask, case, baseline, grad_layer, show_progress)
            out, method_object = runner.run(ctx, kwargs)
        attributions = _to_heatmap(out, runner, fg)
        stderr = runner.stderr(method_object)
        stderr = None if stderr is None else _to_heatmap(stderr, runner, fg)
    finally:
        model.train(was_training)
    stats = RunStats(name, timed.calls, time.perf_counter() - start, timed.seconds, timed.examples)
    plain = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool, list, tuple))}
    settings = {"method_kwargs": plain, "baseline": baseline.describe(), "seed": seed}
    if mask is not None:
        settings["superpixels"] = {**asdict(superpixels), "features": int(mask.max())}
    if grad_layer is not None:
        settings["layer"] = next((n for n, m in model.named_modules() if m is grad_layer), repr(grad_layer))
    if stderr is not None:
        settings["stderr"] = _stderr_summary(stderr, fg)
    return Explanation(attributions=attributions, method=name, target=target, feature_mask=mask,
                       modality_importance=modality_importance(attributions, case.modalities), stats=stats,
                       modalities=case.modalities, settings=settings, stderr=stderr)


def _to_heatmap(out: Tensor, runner: MethodRunner, fg: Optional[Tensor]) -> Tensor:
    """``[1, M, *S]`` -> float32 ``[M, *S]`` on the CPU; 0 off the foreground (perturbation methods)."""
    heat = out[0].detach().float().cpu().contiguous()
    return heat.masked_fill(~fg.cpu(), 0.0) if fg is not None and not runner.is_gradient else heat


def _stderr_summary(stderr: Tensor, fg: Optional[Tensor]) -> Dict[str, float]:
    values = (stderr if fg is None else stderr[fg.cpu().expand_as(stderr)]).double().flatten()
    return {"median": float(values.median()), "max": float(values.max())} if values.numel() else {}
