"""Run unmodified Captum pipelines on the engine: :func:`patch_captum` / :func:`unpatch_captum`.

:func:`patch_captum` replaces the perturbation classes that :mod:`mmxai_fast.attr` implements
(``FeatureAblation``, ``Occlusion``, ``ShapleyValueSampling``, ``ShapleyValues``,
``FeaturePermutation``, ``Lime``, ``KernelShap``) in
``captum.attr`` and in the ``captum.attr._core.<module>`` that defines each one, so code that
looks them up there (``captum.attr.Occlusion(model)``, or ``from captum.attr import Occlusion``
run after the call) gets the engine's drop-in classes. Names already bound elsewhere before the
call (``from captum.attr import X`` executed earlier) are patched in place: each Captum class's
own ``attribute`` dispatches, for instances of exactly that class (created before or after the
call), to the engine's class (the instance's ``__class__`` is ours for the duration of the call:
our classes subclass Captum's and add no state of their own). Subclasses written by users keep
Captum's behaviour. :func:`unpatch_captum` restores every replaced attribute.

``patch_captum(batch="auto")`` (and the other :class:`~mmxai_fast.attr._model_policy.ModelPolicy`
settings) also runs every ``attribute`` call in a policy session: ``perturbations_per_eval=1``
becomes the Evaluator's ``"auto"`` (a chunk grown by measured throughput, checked for batch
dependence, channels-last where faster), the Evaluator applies the other settings to every model
call, and calls and model time are counted in :data:`~mmxai_fast.attr._model_policy.REPORT`.

One exception keeps Captum itself working: a defining module whose own code looks a class up by
its global name (Captum 0.9's ``ShapleyValues.__init__`` calls
``ShapleyValueSampling.__init__``) keeps the original under that name there, because our classes
subclass Captum's and calling theirs through ours would recurse. ``captum.attr`` still gets ours.
"""
import functools
import importlib
import inspect
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import captum.attr
import torch

from . import feature_ablation, feature_permutation, kernel_shap, lime, occlusion, shapley_value
from ._model_policy import CALLS, REPORT, ModelPolicy, policy_session

__all__ = ["patch_captum", "unpatch_captum"]

_OURS = {
    "FeatureAblation": (feature_ablation.FeatureAblation, "captum.attr._core.feature_ablation"),
    "Occlusion": (occlusion.Occlusion, "captum.attr._core.occlusion"),
    "ShapleyValueSampling": (shapley_value.ShapleyValueSampling, "captum.attr._core.shapley_value"),
    "ShapleyValues": (shapley_value.ShapleyValues, "captum.attr._core.shapley_value"),
    "FeaturePermutation": (feature_permutation.FeaturePermutation, "captum.attr._core.feature_permutation"),
    "Lime": (lime.Lime, "captum.attr._core.lime"),
    "KernelShap": (kernel_shap.KernelShap, "captum.attr._core.kernel_shap"),
}

#: (module, name, original value) of every attribute replaced; empty when not patched.
_saved: List[Tuple[Any, str, object]] = []


def _code_names(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _globals_used_by_own_classes(module: types.ModuleType) -> set:
    """Global names read by the methods of the classes ``module`` defines."""
    names = set()
    for cls in vars(module).values():
        if not (inspect.isclass(cls) and cls.__module__ == module.__name__):
            continue
        for member in vars(cls).values():
            func = getattr(member, "__func__", member)
            if inspect.isfunction(func):
                names |= _code_names(inspect.unwrap(func).__code__)
                names |= _code_names(func.__code__)
    return names


def _targets() -> Dict[str, List[types.ModuleType]]:
    targets: Dict[str, List[types.ModuleType]] = {}
    for name, (_, module_name) in _OURS.items():
        modules = [captum.attr]
        module = importlib.import_module(module_name)
        if name not in _globals_used_by_own_classes(module):
            modules.append(module)
        targets[name] = modules
    return targets


_local = threading.local()  # the policy call in progress on this thread (nested calls pass through)


def _policy_attribute(original: Callable, policy: ModelPolicy) -> Callable:
    """``original`` (an unwrapped ``attribute``) run in a :func:`policy_session`: its Evaluator
    applies ``policy``; ``batch="auto"`` turns ``perturbations_per_eval=1`` into ``"auto"``."""
    signature = inspect.signature(original)

    def attribute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "active", False):
            return original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        inputs = bound.arguments["inputs"]
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        if (policy.batch == "auto" and bound.arguments.get("perturbations_per_eval", None) == 1
                and all(isinstance(x, torch.Tensor) for x in inputs)):
            bound.arguments["perturbations_per_eval"] = "auto"
        stats = REPORT[type(self).__name__]
        start, model_before, evaluations_before = time.perf_counter(), stats.model_s, stats.evaluations
        _local.active = True
        try:
            with policy_session(policy, stats):
                return original(*bound.args, **bound.kwargs)
        finally:
            _local.active = False
            wall = time.perf_counter() - start
            stats.calls += 1
            stats.wall_s += wall
            CALLS.append((type(self).__name__, wall, stats.model_s - model_before, stats.evaluations - evaluations_before))

    return attribute


def _dispatcher(captum_cls: type, ours: type, original: Callable) -> Callable:
    """Captum's ``attribute`` that runs ours for instances of exactly ``captum_cls``."""

    def unwrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        if type(self) is not captum_cls:
            return inspect.unwrap(original)(self, *args, **kwargs)
        self.__class__ = ours
        try:
            return inspect.unwrap(getattr(ours, "attribute"))(self, *args, **kwargs)
        finally:
            self.__class__ = captum_cls

    @functools.wraps(original)
    def attribute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if type(self) is not captum_cls:
            return original(self, *args, **kwargs)
        self.__class__ = ours
        try:
            return getattr(ours, "attribute")(self, *args, **kwargs)
        finally:
            self.__class__ = captum_cls

    attribute.__wrapped__ = unwrapped  # NoiseTunnel calls attribute.__wrapped__(instance, ...)
    return attribute


_ABSENT = object()  # marks an attribute that only a base class defined: unpatching deletes it


def _replace(owner: Any, name: str, value: Any) -> None:
    _saved.append((owner, name, vars(owner).get(name, _ABSENT)))
    setattr(owner, name, value)


def _install_policy(ours: type, policy: ModelPolicy) -> None:
    if "attribute" not in vars(ours):
        return  # inherited from one of our classes, which gets the policy itself
    original = vars(ours)["attribute"]
    unwrapped = inspect.unwrap(original)
    wrapped_policy = _policy_attribute(unwrapped, policy)

    @functools.wraps(original)
    def attribute(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapped_policy(self, *args, **kwargs)

    attribute.__wrapped__ = wrapped_policy
    _replace(ours, "attribute", attribute)


class _Patch:
    """Returned by :func:`patch_captum`; as a context manager it unpatches on exit."""

    def __enter__(self) -> "_Patch":
        return self

    def __exit__(self, *exc_info) -> None:
        unpatch_captum()


def patch_captum(batch: Optional[str] = None, *, policy: Optional[ModelPolicy] = None, **settings: Any) -> _Patch:
    """Run Captum's perturbation classes on the engine (see the module docstring).

    Args:
        batch: ``"auto"``: ``perturbations_per_eval=1`` becomes a measured chunk size where that is
            safe; ``"keep"`` or ``None`` (default): the caller's value is kept.
        policy: a whole :class:`~mmxai_fast.attr._model_policy.ModelPolicy` instead of keywords.
        **settings: other ``ModelPolicy`` fields (``channels_last``, ``inference_mode``,
            ``autocast``, ``compile``, ``cuda_graphs``).

    With no argument only the classes are swapped (Captum's results, the caller's batching).
    Idempotent while patched (a second call changes nothing; unpatch first to change settings).
    Usable as a context manager::

        with mmxai_fast.patch_captum(batch="auto"):
            attr = captum.attr.Occlusion(model).attribute(x, (1, 8, 8, 8), target=0)

    Returns:
        an object whose ``__exit__`` calls :func:`unpatch_captum`.
    """
    if policy is None and (batch is not None or settings):
        policy = ModelPolicy(batch=batch, **settings)
    if not _saved:
        for name, modules in _targets().items():
            ours = _OURS[name][0]
            captum_cls = vars(modules[0])[name]
            for module in modules:
                _replace(module, name, ours)
            _replace(captum_cls, "attribute", _dispatcher(captum_cls, ours, captum_cls.attribute))
            if policy is not None:
                _install_policy(ours, policy)
    return _Patch()


def unpatch_captum() -> None:
    """Restore Captum's original classes (no-op when not patched)."""
    while _saved:
        owner, name, original = _saved.pop()
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
