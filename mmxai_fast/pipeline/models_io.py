"""Loading a trained model from files (command line): a TorchScript file, or a state dict plus
an importable ``module:factory``. Checkpoints are read with ``torch.load(weights_only=True)``, so
a file can never run code while it is loaded."""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["ModelLoadError", "load_torchscript", "resolve_factory", "parse_factory_kwargs",
           "load_state_dict_model"]

PathLike = Union[str, os.PathLike]
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class ModelLoadError(ValueError):
    """The model cannot be loaded; the message names the argument and the cause.

    Attributes:
        argument: the argument at fault (``"model"``, ``"state-dict"``, ``"factory"``,
            ``"factory-kwargs"``), the command line's flag without ``--``.
    """

    def __init__(self, message: str, argument: Optional[str] = None):
        super().__init__(message)
        self.argument = argument or message.split(":", 1)[0]


def _existing(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what}: file {str(path)!r} does not exist")
    return path


def load_torchscript(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> torch.jit.ScriptModule:
    """A model saved with ``torch.jit.save``.

    Raises:
        ModelLoadError: missing file or not a TorchScript archive.
    """
    path = _existing(path, "model")
    try:
        return torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:
        raise ModelLoadError(f"model: {str(path)!r} is not a TorchScript file ({type(exc).__name__}); save one with "
                             f"torch.jit.save(torch.jit.script(model), path), or pass a state dict with a factory") from exc


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """``"package.module:callable"`` -> the callable (imported, not called).

    Raises:
        ModelLoadError: malformed spec, module not importable, no such attribute, not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"factory must look like 'package.module:callable', got {spec!r}", "factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"factory: cannot import module {module_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"factory: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"factory: {spec!r} is not callable")
    return obj


def parse_factory_kwargs(text: Optional[str]) -> Dict[str, Any]:
    """JSON object text -> dict (None/empty -> {}).

    Raises:
        ModelLoadError: not valid JSON or not an object.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"factory-kwargs: not valid JSON ({exc.msg} at char {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"factory-kwargs: must be a JSON object like '{{\"in_channels\": 4}}', got {text!r}")
    return value


def _state_dict(checkpoint: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        for key in _NESTED_KEYS:
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                checkpoint = inner
                break
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            # DataParallel checkpoints prefix every key with "module."
            if all(k.startswith("module.") for k in checkpoint):
                checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
            return checkpoint
    raise ModelLoadError(f"state-dict: {str(path)!r} holds no state dict (a mapping of parameter names to tensors, "
                         f"possibly under one of {_NESTED_KEYS})")


def load_state_dict_model(state_dict: PathLike, factory: Union[str, Callable[..., nn.Module]],
                          factory_kwargs: Optional[Mapping[str, Any]] = None,
                          map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Build the model with ``factory(**factory_kwargs)`` and load the weights (strict).

    Args:
        state_dict: checkpoint file (a state dict, or a dict holding one under ``state_dict``,
            ``model_state_dict`` or ``model``), read with ``weights_only=True``.
        factory: ``"package.module:callable"`` or the callable.
        factory_kwargs: keyword arguments for the factory.

    Returns:
        the model in eval mode.

    Raises:
        ModelLoadError: missing file, unreadable or unsafe checkpoint, factory failure, missing
            or unexpected parameter names, shape mismatches.
    """
    path = _existing(state_dict, "state-dict")
    make = resolve_factory(factory) if isinstance(factory, str) else factory
    try:
        model = make(**dict(factory_kwargs or {}))
    except Exception as exc:
        raise ModelLoadError(f"factory: calling {getattr(make, '__name__', make)}(**{dict(factory_kwargs or {})}) "
                             f"failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"factory: must return a torch.nn.Module, got {type(model).__name__}")
    try:
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"state-dict: cannot load {str(path)!r} with weights_only=True "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    try:
        model.load_state_dict(_state_dict(checkpoint, path), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"state-dict: {str(path)!r} does not fit the factory's model: "
                             f"{' '.join(str(exc).split())[:500]}") from exc
    return model.eval()
