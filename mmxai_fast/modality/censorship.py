"""Modality censorship and exact modality Shapley values (Yi et al., Table V; background.md section 4).

The model is evaluated on every subset ``S`` of the ``M`` modalities (removed modalities set to
the baseline: zeros or a given tensor), ``2^M`` coalition rows batched through
:class:`~mmxai_fast.attr._engine.PerturbationEngine` with one feature per modality. With the
table ``v(S)`` the Shapley value of modality ``m`` is exact (Shapley 1953)::

    phi_m = sum_{S not containing m} |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validation import require_tensor
from ..attr._engine import PerturbationEngine
from ._layout import channels_per_modality, check_num_modalities, modality_of_channel, normalized_dim

__all__ = ["ModalityCensorship", "modality_censorship", "exact_shapley_from_subsets"]

#: 2^M model evaluations: beyond this many modalities use ShapleyValueSampling instead.
MAX_MODALITIES = 16


def subset_membership(num_modalities: int, device=None) -> Tensor:
    """bool ``(2^M, M)``: row ``s`` holds modality ``m`` iff bit ``m`` of ``s`` is set."""
    subsets = torch.arange(2 ** num_modalities, device=device)
    return (subsets[:, None] >> torch.arange(num_modalities, device=device)) & 1 == 1


def exact_shapley_from_subsets(values: Tensor) -> Tensor:
    """Exact Shapley values from the value of every coalition.

    Args:
        values: ``(2^M, *T)``, ``values[s]`` = value of the subset whose bit ``m`` says whether
            modality ``m`` is present (row 0: none, row ``2^M - 1``: all).

    Returns:
        float64 ``(M, *T)``; they sum to ``values[-1] - values[0]`` (efficiency).
    """
    require_tensor(values, "values")
    num_modalities = int(values.shape[0]).bit_length() - 1 if values.dim() else -1
    if num_modalities < 0 or values.shape[0] != 2 ** num_modalities:
        raise ValueError(f"values must have 2^M rows, got shape {tuple(values.shape)}")
    v = values.to(torch.float64)
    subsets = torch.arange(2 ** num_modalities, device=v.device)
    sizes = subset_membership(num_modalities, v.device).sum(1)
    weight_of_size = torch.tensor([math.factorial(s) * math.factorial(num_modalities - s - 1) / math.factorial(num_modalities)
                                   for s in range(num_modalities)], dtype=torch.float64, device=v.device)
    phi = []
    for m in range(num_modalities):
        without = subsets[(subsets >> m) & 1 == 0]
        weights = weight_of_size[sizes[without]].reshape((-1,) + (1,) * (v.dim() - 1))
        phi.append((weights * (v[without | (1 << m)] - v[without])).sum(0))
    return torch.stack(phi) if phi else v.new_zeros((0,) + tuple(v.shape[1:]))


@dataclass(frozen=True)
class ModalityCensorship:
    """The model on every subset of modalities, and each modality's exact Shapley value.

    Attributes:
        names: the modality names, ``M``.
        present: bool ``(2^M, M)``, row ``s`` = modalities present in subset ``s`` (bit ``m``).
        values: float64 ``(2^M, *T)``, the metric (or model output) of each subset.
        shapley: float64 ``(M, *T)``, exact Shapley value of each modality.
    """

    names: Tuple[str, ...]
    present: Tensor
    values: Tensor
    shapley: Tensor

    def value(self, modalities: Sequence[Union[str, int]]) -> Tensor:
        """The value of the subset holding exactly ``modalities`` (names or indices)."""
        index = 0
        for m in modalities:
            index |= 1 << (self.names.index(m) if isinstance(m, str) else int(m))
        return self.values[index]

    def censorship(self) -> Tensor:
        """``(M, *T)``: ``v(all) - v(all without m)``, the drop when modality ``m`` alone is removed
        (the paper's censorship ranking)."""
        full = 2 ** len(self.names) - 1
        return torch.stack([self.values[full] - self.values[full ^ (1 << m)] for m in range(len(self.names))])

    def table(self) -> List[dict]:
        """One row per subset: ``{"modalities": (names...), "value": float or list}``."""
        rows = []
        for s in range(self.values.shape[0]):
            value = self.values[s]
            rows.append({"modalities": tuple(n for n, p in zip(self.names, self.present[s].tolist()) if p),
                         "value": value.item() if value.numel() == 1 else value.tolist()})
        return rows

    def __str__(self) -> str:
        lines = [f"{'modalities present':40s} value"]
        for row in self.table():
            value = f"{row['value']:.6g}" if isinstance(row["value"], float) else str(row["value"])
            lines.append(f"{'+'.join(row['modalities']) or '(none)':40s} {value}")
        for name, phi in zip(self.names, self.shapley):
            lines.append(f"Shapley {name:32s} {phi.item():.6g}" if phi.numel() == 1 else f"Shapley {name}: {phi.tolist()}")
        return "\n".join(lines)


def modality_censorship(forward_func: Callable, inputs: Tensor, num_modalities: int, *, channel_dim: int = 1,
                        baselines: Union[float, Tensor] = 0.0, target: Any = None,
                        additional_forward_args: Optional[Tuple[Any, ...]] = None,
                        metric: Optional[Callable[[Tensor], Union[Tensor, float]]] = None,
                        names: Optional[Sequence[str]] = None,
                        perturbations_per_eval: Union[int, str] = "auto",
                        show_progress: bool = False) -> ModalityCensorship:
    """Evaluate the model with every subset of modalities removed (set to the baseline).

    Args:
        forward_func: the model, called like Captum (``forward_func(x, *additional_forward_args)``).
        inputs: ``(N, C, ...)`` with ``C = M * S`` channels at ``channel_dim`` (modality-major).
        num_modalities: ``M`` (at most 16: ``2^M`` subsets).
        channel_dim: dim of ``inputs`` holding the channels (not 0, the batch).
        baselines: value of a removed modality: a number (0: zeros) or a tensor broadcastable to
            ``inputs`` (e.g. the training mean of each channel).
        target: Captum target selecting the output (e.g. a class index), or None.
        additional_forward_args: extra model arguments, as in Captum.
        metric: optional ``metric(outputs) -> scalar or tensor`` applied to the model's outputs
            on the ``N`` examples of each subset (accuracy, Dice...); the game value. None: the
            (target-selected) outputs themselves, ``T = output shape``.
        names: modality names (default ``"m0", "m1", ...``).
        perturbations_per_eval: subsets per model call (int >= 1) or ``"auto"``.
        show_progress: tqdm bar over model calls.

    Returns:
        :class:`ModalityCensorship` with the ``(2^M, *T)`` table and the ``(M, *T)`` exact
        Shapley values.

    Raises:
        ValueError: bad ``num_modalities``/``channel_dim``/``names``, channels not a multiple of
            ``M``; the engine's :class:`~mmxai_fast.attr.AttributionInputError` for bad
            baselines, targets or model outputs.
    """
    require_tensor(inputs, "inputs")
    num_modalities = check_num_modalities(num_modalities)
    if num_modalities > MAX_MODALITIES:
        raise ValueError(f"num_modalities must be <= {MAX_MODALITIES} (2^M model evaluations), got {num_modalities}")
    if inputs.dim() < 2:
        raise ValueError(f"inputs must be (N, C, ...), got shape {tuple(inputs.shape)}")
    channel_dim = normalized_dim(channel_dim, inputs.dim(), "channel_dim")
    if channel_dim == 0:
        raise ValueError("channel_dim must not be 0, the batch dim of inputs")
    names = tuple(names) if names is not None else tuple(f"m{m}" for m in range(num_modalities))
    if len(names) != num_modalities or len(set(names)) != num_modalities:
        raise ValueError(f"names must be {num_modalities} distinct names, got {names!r}")
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be callable or None, got {type(metric).__name__}")
    per_modality = channels_per_modality(inputs, num_modalities, channel_dim)
    mask_shape = [1] * inputs.dim()
    mask_shape[channel_dim] = inputs.shape[channel_dim]
    mask = modality_of_channel(num_modalities, per_modality, inputs.device).reshape(mask_shape)
    if additional_forward_args is not None and not isinstance(additional_forward_args, tuple):
        additional_forward_args = (additional_forward_args,)

    present = subset_membership(num_modalities, inputs.device)
    with torch.no_grad():
        engine = PerturbationEngine(forward_func, (inputs,), (baselines,), (mask,), target, additional_forward_args,
                                    perturbations_per_eval, compact_ids=False)
        with engine.progress_bar(show_progress, "Modality censorship"):
            full = engine.initialize(present[-1])
            engine.set_progress_total(1 + math.ceil((len(present) - 1) / engine.rows_per_eval))
            rest = engine.evaluate(present[:-1])
    outputs = torch.cat((rest, full.reshape((1,) + engine.row_shape)))
    if metric is None:
        values = outputs.to(torch.float64)
    else:
        values = torch.stack([torch.as_tensor(metric(out), dtype=torch.float64).to(outputs.device) for out in outputs])
    return ModalityCensorship(names=names, present=present.cpu(), values=values,
                              shapley=exact_shapley_from_subsets(values))
