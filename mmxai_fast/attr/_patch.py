"""Run unmodified Captum pipelines on the engine: :func:`patch_captum` / :func:`unpatch_captum`.

:func:`patch_captum` replaces the perturbation classes that :mod:`mmxai_fast.attr` implements
(``FeatureAblation``, ``Occlusion``, ``ShapleyValueSampling``, ``ShapleyValues``,
``FeaturePermutation``, ``Lime``, ``KernelShap``) in
``captum.attr`` and in the ``captum.attr._core.<module>`` that defines each one, so code that
looks them up there (``captum.attr.Occlusion(model)``, or ``from captum.attr import Occlusion``
run after the call) gets the engine's drop-in classes. Names already bound elsewhere before the
call (``from captum.attr import X`` executed earlier) are not touched.

One exception keeps Captum itself working: a defining module whose own code looks a class up by
its global name (Captum 0.9's ``ShapleyValues.__init__`` calls
``ShapleyValueSampling.__init__``) keeps the original under that name there, because our classes
subclass Captum's and calling theirs through ours would recurse. ``captum.attr`` still gets ours.
"""
import importlib
import inspect
import types
from typing import Dict, List, Tuple

import captum.attr

from . import feature_ablation, feature_permutation, kernel_shap, lime, occlusion, shapley_value

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
_saved: List[Tuple[types.ModuleType, str, object]] = []


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


class _Patch:
    """Returned by :func:`patch_captum`; as a context manager it unpatches on exit."""

    def __enter__(self) -> "_Patch":
        return self

    def __exit__(self, *exc_info) -> bool:
        unpatch_captum()
        return False


def patch_captum() -> _Patch:
    """Swap the engine's drop-in classes into ``captum.attr`` (see the module docstring).

    Idempotent: a second call while patched changes nothing. Usable as a context manager::

        with mmxai_fast.patch_captum():
            attr = captum.attr.Occlusion(model).attribute(x, (1, 8, 8, 8), target=0)

    Returns:
        an object whose ``__exit__`` calls :func:`unpatch_captum`.
    """
    if not _saved:
        for name, modules in _targets().items():
            ours = _OURS[name][0]
            for module in modules:
                _saved.append((module, name, vars(module)[name]))
                setattr(module, name, ours)
    return _Patch()


def unpatch_captum() -> None:
    """Restore Captum's original classes (no-op when not patched)."""
    while _saved:
        module, name, original = _saved.pop()
        setattr(module, name, original)
