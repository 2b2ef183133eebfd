"""Checks of ``mmxai-fast explain``'s values that argparse cannot express: finite ranges, the
device, the values inside ``--method-kwargs``, and one test run of the model on the case. Each
returns an error message naming the flag (or None); :mod:`.cli` turns it into one line, exit 2."""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Mapping, Optional, Sequence

INT32_MAX = 2**31 - 1
SEED_MAX = 2**63 - 1
GRADCAM_METHODS = ("LayerGradCam", "GuidedGradCam")
# Counts and batch sizes: ints >= 1 (perturbations_per_eval may also be "auto" on the engine).
_COUNTS = ("n_samples", "nt_samples", "n_steps", "perturbations_per_eval", "internal_batch_size",
           "nt_samples_batch_size", "max_samples")
_POSITIVE_REALS = ("target_stderr", "target_relative_stderr")
_NON_NEGATIVE_REALS = ("stdevs", "eps")
_WINDOWS = ("sliding_window_shapes", "strides")
# Arguments that change what attribute() returns, or that take Python objects JSON cannot give.
_REFUSED = {"return_convergence_delta": "explain() keeps the attributions only",
            "return_input_shape": "explain() needs attributions of the input's shape",
            "additional_forward_args": "the model takes the case as its only input"}


def number(value, flag: str, *, low=None, high=None, low_open: bool = False, integer: bool = False,
           sep: str = ": ") -> Optional[str]:
    """None if ``value`` is a finite number in range, else the message ``<flag><sep>must be...``."""
    flag += sep.rstrip()
    if value is None:
        return None
    kind = "an int" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return f"{flag} must be {kind}, got {value!r}"
    if not integer and not math.isfinite(value):
        return f"{flag} must be finite, got {value!r}"
    if low is not None and (value <= low if low_open else value < low):
        return f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value!r}"
    if high is not None and value > high:
        return f"{flag} must be <= {high}, got {value!r}"
    return None


def device_error(text: Optional[str]) -> Optional[str]:
    """None if ``--device`` names a usable cpu or cuda device here."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        return f"--device: must be cpu or cuda[:INDEX], got {text!r}"
    if device.type not in ("cpu", "cuda"):
        return f"--device: must be cpu or cuda[:INDEX], got {text!r}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device: {text!r} requested but no CUDA device is available"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device: {text!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
    return None


def _parameter_defaults(method: str) -> Dict[str, Any]:
    import captum.attr as ca

    import mmxai_fast.attr as engine

    classes = ([ca.NoiseTunnel, ca.Saliency] if method == "SmoothGrad"
               else [getattr(engine, method, None) or getattr(ca, method)])
    defaults: Dict[str, Any] = {}
    for cls in classes:
        for fn in (cls.attribute, cls.__init__):
            for p in inspect.signature(fn).parameters.values():
                defaults.setdefault(p.name, p.default)
    return defaults


def _non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _window_error(key: str, value, ndim: int) -> Optional[str]:
    items = [value] if key == "strides" and isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(items, (list, tuple)) or (len(items) != ndim and not isinstance(value, int))
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items)):
        return (f"--method-kwargs: {key!r} must be {ndim} ints >= 1 (modality, then each spatial axis)"
                f"{' or one int' if key == 'strides' else ''}, got {value!r}")
    return None


def _number_rules() -> Dict[str, Dict[str, Any]]:
    rules: Dict[str, Dict[str, Any]] = {key: dict(low=1, high=INT32_MAX, integer=True) for key in _COUNTS}
    rules.update({key: dict(low=0, low_open=True) for key in _POSITIVE_REALS})
    rules.update({key: dict(low=0) for key in _NON_NEGATIVE_REALS})
    rules["permutation_batch"] = dict(low=2, high=1024, integer=True)
    return rules


def _like_default_error(where: str, value: Any, default: Any) -> Optional[str]:
    """A value for a keyword the checks do not know: it must have its default's type."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{where} must be true or false, got {value!r}"
    if isinstance(default, (int, float, str)):
        same_type = isinstance(value, type(default)) and not isinstance(value, bool)
        int_for_float = isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        return None if same_type or int_for_float else \
            f"{where} must be a {type(default).__name__} like {default!r}, got {value!r}"
    return None if value is None else (f"{where} takes a Python object, which a JSON value cannot give; call "
                                       f"mmxai_fast.explain() from Python instead")


_NUMBER_RULES = _number_rules()


def method_kwargs_error(method: str, kwargs: Mapping[str, Any], ndim: int) -> Optional[str]:
    """None if every value of ``kwargs`` (names already checked) has the type and range its
    method expects; ``ndim``: dims of one case, modality axis included (Occlusion's windows)."""
    defaults = _parameter_defaults(method)
    for key, value in kwargs.items():
        where = f"--method-kwargs: {key!r}"
        if _non_finite(value):
            return f"{where} must be finite, got {value!r}"
        if key in _REFUSED:
            return f"{where} is not supported here ({_REFUSED[key]})"
        if key in _WINDOWS:
            message = _window_error(key, value, ndim)
        elif key == "perturbations_per_eval" and value == "auto":
            message = None
        elif key in _NUMBER_RULES:
            message = (f"{where} must be a number, got null" if value is None
                       else number(value, where, sep=" ", **_NUMBER_RULES[key]))
        else:
            message = _like_default_error(where, value, defaults.get(key, inspect.Parameter.empty))
        if message:
            return message
    return None


def model_run_error(model, case, device: Optional[str], target: Optional[int]) -> Optional[str]:
    """Run ``model`` once on the case (batch 1, no_grad, eval mode) and check what the
    explanation needs: a finite ``[1, classes]`` (or ``[1]``) tensor, ``target < classes``."""
    import torch

    shape = (1,) + tuple(case.image.shape)
    was_training = model.training
    try:
        if device is not None:
            model.to(device)
        model.eval()
        x = case.image[None].to(device or next((t.device for t in model.parameters()), "cpu"))
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # any failure of the user's model is reported, not crashed on
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return (f"--model: fails on this case's input of shape {list(shape)} (modalities, then X, Y, Z): "
                f"{type(exc).__name__}: {first}")
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        return f"--model: must return one tensor, got {type(out).__name__}"
    if not (out.dim() == 1 and out.shape[0] == 1 or out.dim() == 2 and out.shape[0] == 1 and out.shape[1] >= 1):
        return f"--model: must return [1, classes] for one case of shape {list(shape)}, got shape {list(out.shape)}"
    if not bool(torch.isfinite(out).all()):
        return f"--model: returns non-finite values on this case: {out.flatten()[:8].tolist()}"
    classes = 1 if out.dim() == 1 else int(out.shape[1])
    if target is not None and target >= classes:
        return f"--target: must be < {classes} (the model's outputs), got {target}"
    return None


def names_error(names: Sequence[str], flag: str) -> Optional[str]:
    """Modality names must be unique and give distinct, short enough file names."""
    from .outputs import OutputError, check_output_names

    if len(set(names)) != len(names):
        return f"{flag}: modality names must be unique, got {list(names)}"
    try:
        check_output_names(list(names))
    except OutputError as exc:
        return f"{flag}: {exc}"
    return None
