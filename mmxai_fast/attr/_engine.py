"""Shared core of the perturbation attribution classes: :class:`PerturbationEngine`.

Every perturbation method (feature ablation, Shapley sampling, and later occlusion, feature
permutation, KernelSHAP, LIME) evaluates the model on copies of the input in which some
features come from the input and the others from the baseline. The engine describes each copy
by one boolean **coalition row** ``keep[r, f]`` (True: feature ``f`` taken from the input,
False: from the baseline) and does the rest:

1. Validation, once per call and before any model evaluation: inputs are tensors with a batch
   dim (``N`` is counted on ``inputs[0]``; like Captum, other tensors may hold a different number
   of rows, e.g. a sparse feature list); baselines are numbers, bools or tensors broadcastable to
   their input; feature masks are
   integer tensors broadcastable to their input with non-negative ids; the chunk size is an
   int >= 1 or ``"auto"``.
2. Feature-id map, built once: masks are reshaped to their input's number of dims and moved to
   its device. With ``compact_ids=True`` the ids present are renumbered ``0 .. F - 1`` (sorted
   order; :attr:`feature_order` gives Captum's visiting order and :attr:`feature_ids` the
   original ids); otherwise columns are the raw ids and ``F = max id + 1``.
3. Batched perturbation: a chunk of ``rows`` coalition rows becomes, for every input tensor,
   one :func:`mmxai_fast.ops.perturb` call (one ``torch.where`` for tiny batches) producing
   ``[rows * N, ...]`` (perturbation-major, like Captum: example ``n`` of row ``r`` is at
   ``r * N + n``). Targets and additional
   forward args are expanded like Captum (``_expand_target``,
   ``_expand_additional_forward_args``), cached per chunk size.
4. Chunked evaluation: ``perturbations_per_eval`` rows per model call; ``"auto"`` picks a
   large chunk from a memory budget and halves it and retries on ``torch.OutOfMemoryError``.
   The first chunk's output shape is checked (the model must return ``rows * n0`` leading
   entries when the unperturbed call returned ``n0``), and NaN outputs raise an error naming
   the first model call that produced them.
5. Scatter back: a ``[F, *T]`` per-feature table (``T``: per-row output shape, ``T[0]`` aligned
   with the masks' first dim) becomes one ``[*T, *input.shape[1:]]`` tensor per input
   (:meth:`to_input_shapes`), a gather rather than Captum's per-feature masked sums.

Interface used by the attribution classes::

    engine = PerturbationEngine(forward_func, inputs, baselines, feature_mask, target,
                                additional_forward_args, perturbations_per_eval,
                                compact_ids=True, progress=bar)
    ref = engine.initialize()              # unperturbed inputs (or initialize(keep_row))
    out = engine.evaluate(keep)            # keep: [R, F] bool -> [R, *engine.row_shape]
    out = engine.evaluate_chunks(R, make_keep)  # make_keep(start, stop) -> [stop-start, F]
    attrs = engine.to_input_shapes(table)  # table: [F, *T] -> tuple of [*T, *inp.shape[1:]]

Extension point for incremental inference: every model call goes through
:meth:`PerturbationEngine.run_rows` ``(keep, previous_keep)``, which receives the coalition rows
of the chunk and those of the previous chunk (None for the first), so a subclass can hand the
model "what changed where" instead of (or besides) the flattened perturbed inputs.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.common import _expand_additional_forward_args, _expand_target, _run_forward
from captum._utils.progress import progress as captum_progress
from torch import Tensor

from ..ops.perturb import MASK_DTYPES, perturb

__all__ = ["AttributionInputError", "PerturbationEngine", "check_perturbations_per_eval", "ids_present"]

#: Row cap and memory budgets (bytes of perturbed inputs per model call) for ``"auto"``.
AUTO_MAX_ROWS = 512
AUTO_CPU_BUDGET = 256 * 2**20
AUTO_CUDA_FRACTION = 0.125
#: Perturbed batches of at most this many elements are built with one ``torch.where`` instead of
#: the kernel: for tiny inputs the op's dispatch (~0.5 ms a call) costs 10x the select itself.
SMALL_BATCH_NUMEL = 1 << 14


class AttributionInputError(ValueError, AssertionError):
    """Bad argument or model behaviour. A ``ValueError``; also an ``AssertionError`` so code
    written against Captum (whose checks are ``assert`` statements) still catches it."""


def check_perturbations_per_eval(value: Any) -> Union[int, str]:
    """``perturbations_per_eval`` must be an int >= 1 or ``"auto"``."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttributionInputError(
            f"perturbations_per_eval must be an int >= 1 or 'auto', got {value!r}")
    return value


def _as_output_tensor(output: Any) -> Tensor:
    """Captum's ``_parse_forward_out``: tensors pass, ints/floats become 0-d tensors."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return torch.tensor(output, dtype=torch.int64 if isinstance(output, int) else torch.float64)
    raise AttributionInputError(
        f"forward_func must return a tensor, int or float, got {type(output).__name__}")


def ids_present(mask: Tensor) -> Tensor:
    """Sorted distinct ids of a non-negative integer mask, as a CPU int64 tensor.

    A bincount (one linear pass) when the largest id is at most a few times the mask's size, the
    usual case for superpixel masks; ``torch.unique`` (a sort, ~100x slower on a 4x64^3 mask)
    otherwise.
    """
    if mask.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    high = int(mask.max())
    if high < 4 * mask.numel() + 1024:
        return torch.bincount(mask.reshape(-1).long(), minlength=high + 1).nonzero().flatten().cpu()
    return torch.unique(mask).long().cpu()


def _broadcastable(shape: Sequence[int], target: Sequence[int]) -> bool:
    shape, target = tuple(shape), tuple(target)
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


class PerturbationEngine:
    """Evaluate a model on batches of coalition rows (see the module docstring).

    Args:
        forward_func: the model or function, called like Captum's ``_run_forward``.
        inputs: formatted inputs, a tuple of tensors with a batch dim (``N = inputs[0].shape[0]``).
        baselines: one number, bool or tensor per input (broadcastable to it).
        feature_mask: one integer tensor per input, broadcastable to it; ids shared across the
            tuple (the same id in two tensors is one feature).
        target: Captum target (int, tuple, tensor, list or None), for ``N`` examples.
        additional_forward_args: formatted tuple or None.
        perturbations_per_eval: rows per model call (int >= 1) or ``"auto"``.
        compact_ids: renumber the ids present to ``0 .. F - 1`` (see :attr:`feature_ids`).
        progress: object with ``update()``; called once per model call.
        check_nan: raise when the model returns NaN.

    Raises:
        AttributionInputError: any invalid argument (message names it).
        TypeError: non-integer feature masks.
    """

    #: Scalar-per-batch models need masks with first dim 1 (FeatureAblation's rule); LIME-style
    #: subclasses whose rows carry per-example ids turn the check off.
    require_shared_masks_in_agg_mode = True

    def __init__(self, forward_func: Callable, inputs: Tuple[Tensor, ...],
                 baselines: Tuple[Union[Tensor, int, float], ...], feature_mask: Tuple[Tensor, ...],
                 target: Any = None, additional_forward_args: Optional[Tuple[Any, ...]] = None,
                 perturbations_per_eval: Union[int, str] = 1, *, compact_ids: bool = False,
                 progress: Any = None, check_nan: bool = True) -> None:
        self.forward_func = forward_func
        self.inputs = self._check_inputs(inputs)
        self.num_examples = self.inputs[0].shape[0]
        self.baselines = self._check_baselines(baselines)
        self.target = target
        self.additional_forward_args = additional_forward_args
        self.perturbations_per_eval = check_perturbations_per_eval(perturbations_per_eval)
        self.progress = progress
        self.check_nan = check_nan
        self.masks, self.num_features, self.feature_ids, self.feature_order = \
            self._build_feature_map(feature_mask, compact_ids)
        self.row_shape: Optional[Tuple[int, ...]] = None
        self.agg_mode = False
        self.rows_per_eval: Optional[int] = None
        self.num_model_calls = 0
        self._expanded: Dict[int, Tuple[Any, Any]] = {}
        self._buffers: Dict[int, Tensor] = {}
        self._into_buffers = False  # set while run_rows builds a model call's inputs
        self._nan_flags: List[Tuple[int, Tensor]] = []
        self._shape_checked = False

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _check_inputs(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        if not isinstance(inputs, tuple) or not inputs:
            raise AttributionInputError("inputs must be a tensor or a non-empty tuple of tensors")
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Tensor):
                raise AttributionInputError(f"inputs[{i}] must be a torch.Tensor, got {type(inp).__name__}")
            if inp.dim() == 0:
                raise AttributionInputError(f"inputs[{i}] must have a batch dim, got a 0-d tensor")
        # No common dim 0 is required: like Captum, a tensor may hold a variable-length list
        # (sparse features, possibly empty); every tensor is repeated whole per perturbation and
        # the examples are counted on inputs[0].
        return inputs

    def _check_baselines(self, baselines) -> Tuple[Union[Tensor, float], ...]:
        if len(baselines) != len(self.inputs):
            raise AttributionInputError(
                f"baselines must give one value per input tensor ({len(self.inputs)}), got {len(baselines)}")
        checked = []
        for i, (base, inp) in enumerate(zip(baselines, self.inputs)):
            if isinstance(base, Tensor):
                if not _broadcastable(base.shape, inp.shape):
                    raise AttributionInputError(
                        f"baselines[{i}] must be broadcastable to inputs[{i}] {tuple(inp.shape)}, "
                        f"got shape {tuple(base.shape)}")
                if base.device != inp.device:
                    raise AttributionInputError(
                        f"baselines[{i}] must be on the device of inputs[{i}] ({inp.device}), got {base.device}")
            elif isinstance(base, bool):  # Captum's default baseline for bool inputs is False
                base = int(base)
            elif not isinstance(base, (int, float)):
                raise AttributionInputError(
                    f"baselines[{i}] must be a number, a bool or a tensor, got {type(base).__name__}")
            checked.append(base)
        return tuple(checked)

    def _check_masks(self, feature_mask) -> List[Tensor]:
        if len(feature_mask) != len(self.inputs):
            raise AttributionInputError(
                f"feature_mask must give one tensor per input tensor ({len(self.inputs)}), got {len(feature_mask)}")
        masks = []
        for i, (mask, inp) in enumerate(zip(feature_mask, self.inputs)):
            if not isinstance(mask, Tensor):
                raise TypeError(f"feature_mask[{i}] must be a torch.Tensor, got {type(mask).__name__}")
            if mask.dtype not in MASK_DTYPES:
                raise TypeError(f"feature_mask[{i}] must have an integer dtype of {MASK_DTYPES}, got {mask.dtype}")
            if not _broadcastable(mask.shape, inp.shape):
                raise AttributionInputError(
                    f"feature_mask[{i}] must be broadcastable to inputs[{i}] {tuple(inp.shape)}, "
                    f"got shape {tuple(mask.shape)}")
            mask = mask.reshape((1,) * (inp.dim() - mask.dim()) + tuple(mask.shape)).to(inp.device)
            masks.append(mask)
        lows = [int(m.min()) for m in masks if m.numel()]
        if lows and min(lows) < 0:
            i = next(k for k, m in enumerate(masks) if m.numel() and int(m.min()) < 0)
            raise AttributionInputError(f"feature_mask[{i}] ids must be >= 0, got min {int(masks[i].min())}")
        if not lows:
            raise AttributionInputError("feature_mask is empty: no features to perturb")
        return masks

    def _build_feature_map(self, feature_mask, compact_ids):
        masks = self._check_masks(feature_mask)
        live = [m for m, inp in zip(masks, self.inputs) if inp.numel() and m.numel()]
        if not compact_ids:
            num_features = max(int(m.max()) for m in masks if m.numel()) + 1
            ids = torch.arange(num_features)
            return tuple(m.long() for m in masks), num_features, ids, ids
        # Captum's visiting order: sorted ids of tensor 0, then new ids of tensor 1, ...
        per_tensor = [ids_present(m) for m in live]
        ids = torch.unique(torch.cat(per_tensor)) if per_tensor else torch.zeros(0, dtype=torch.int64)
        seen = torch.zeros(ids.numel(), dtype=torch.bool)
        order = []
        for uniq in per_tensor:
            pos = torch.searchsorted(ids, uniq)
            order.append(pos[~seen[pos]])
            seen[pos] = True
        order = torch.cat(order) if order else torch.zeros(0, dtype=torch.int64)
        dense = tuple(self._renumber(m, ids) for m in masks)
        return dense, max(ids.numel(), 1), ids, order

    @staticmethod
    def _renumber(mask: Tensor, ids: Tensor) -> Tensor:
        """``mask``'s ids -> their positions in the sorted ``ids`` (ids not in ``ids``, possible
        only in masks of empty inputs, get a neighbour's position)."""
        if mask.numel() == 0:
            return mask.long()
        high = int(mask.max())
        if ids.numel() and high < 4 * mask.numel() + 1024:  # a lookup table: one gather pass
            table = torch.searchsorted(ids, torch.arange(high + 1)).clamp_(max=ids.numel() - 1)
            return table.to(mask.device)[mask.long()]
        return torch.searchsorted(ids.to(mask.device), mask.long().contiguous()).clamp_(max=max(ids.numel() - 1, 0))

    # ------------------------------------------------------------------ evaluation

    def _expanded_args(self, rows: int):
        if rows not in self._expanded:
            if rows == 1:
                self._expanded[rows] = (self.target, self.additional_forward_args)
            else:
                args = (None if self.additional_forward_args is None
                        else _expand_additional_forward_args(self.additional_forward_args, rows))
                self._expanded[rows] = (_expand_target(self.target, rows), args)
        return self._expanded[rows]

    @contextlib.contextmanager
    def progress_bar(self, show: bool, desc: str):
        """Captum's progress bar (same description text), ticked once per model call while the
        block runs; its total is set later with :meth:`set_progress_total`."""
        if not show:
            yield
            return
        self.progress = captum_progress(desc=desc, total=None)
        self.progress.update(0)
        try:
            yield
        finally:
            self.progress.close()

    def set_progress_total(self, model_calls: int) -> None:
        if self.progress is not None:
            self.progress.total = model_calls

    def _forward(self, model_inputs: Tuple[Tensor, ...], rows: int) -> Tensor:
        target, args = self._expanded_args(rows)
        out = _as_output_tensor(_run_forward(self.forward_func, model_inputs, target, args))
        self.num_model_calls += 1
        if self.progress is not None:
            self.progress.update()
        return out

    def output_buffer(self, i: int, rows: int) -> Tensor:
        """A reusable ``[rows, *inputs[i].shape]`` buffer for the perturbed copies of input ``i``.

        One allocation per call (grown when a chunk is larger) instead of a fresh, page-faulted
        ``rows``-times-the-input tensor per model call. :meth:`evaluate_chunks` clones model
        outputs that alias a buffer, so reuse never changes results.
        """
        x = self.inputs[i]
        buffer = self._buffers.get(i)
        if buffer is None or buffer.shape[0] < rows:
            self._buffers.pop(i, None)  # free the old one before allocating the larger one
            buffer = torch.empty((rows,) + tuple(x.shape), dtype=x.dtype, device=x.device)
            self._buffers[i] = buffer
        return buffer[:rows]

    def release_buffers(self) -> None:
        self._buffers.clear()

    def _aliases_buffer(self, out: Tensor) -> bool:
        if not self._buffers or out.numel() == 0:
            return False
        storage = out.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == storage for b in self._buffers.values())

    def perturbed_inputs(self, keep: Tensor) -> Tuple[Tensor, ...]:
        """``[rows, F]`` coalition rows -> one ``[rows * N, ...]`` tensor per input.

        Freshly allocated, except inside :meth:`run_rows` (the model-call path), where they are
        views of the engine's :meth:`output_buffer` s, overwritten by the next model call.
        """
        rows = keep.shape[0]
        batches = []
        for i, (x, mask, base) in enumerate(zip(self.inputs, self.masks, self.baselines)):
            keep_dev = keep.to(x.device)
            if x.is_floating_point() and rows * x.numel() > SMALL_BATCH_NUMEL:
                out = perturb(x, mask, keep_dev, base, validate_ids=False,
                              out=self.output_buffer(i, rows) if self._into_buffers else None)
            else:  # integer/bool inputs (the kernel is floating-only) and tiny batches (see above)
                base_t = torch.as_tensor(base, device=x.device).to(x.dtype)
                out = torch.where(keep_dev[:, mask], x, base_t).expand((rows,) + tuple(x.shape))
            batches.append(out.reshape((rows * x.shape[0],) + tuple(x.shape[1:])))
        return tuple(batches)

    def run_rows(self, keep: Tensor, previous_keep: Optional[Tensor]) -> Tensor:
        """One model call on the coalition rows ``keep`` ``[rows, F]``; returns the raw output.

        Override point for incremental inference: ``previous_keep`` holds the rows of the
        previous call (None for the first), so an override can tell the model what changed.
        """
        self._into_buffers = True
        try:
            batches = self.perturbed_inputs(keep)
        finally:
            self._into_buffers = False
        return self._forward(batches, keep.shape[0])

    def initialize(self, keep_row: Optional[Tensor] = None) -> Tensor:
        """First model call (one row): the unperturbed inputs, or the coalition ``keep_row``.

        Sets :attr:`row_shape` (the per-row output shape), :attr:`agg_mode` (the model returns
        one fixed-size output per batch, Captum's scalar-per-batch mode) and
        :attr:`rows_per_eval`. Returns the output (int/float outputs become 0-d tensors).

        Raises:
            AttributionInputError: scalar-per-batch output with ``perturbations_per_eval > 1``
                or with per-example feature masks; NaN output.
        """
        if keep_row is None:
            out = self._forward(self.inputs, 1)
        else:
            out = self.run_rows(keep_row.reshape(1, -1), None)
            if isinstance(out, Tensor) and self._aliases_buffer(out):
                out = out.clone()
            self.release_buffers()
        self.row_shape = tuple(out.shape)
        n = self.num_examples
        self.agg_mode = out.dim() == 0 or (n > 1 and out.numel() == 1)
        if self.agg_mode:
            if self.perturbations_per_eval not in (1, "auto"):
                raise AttributionInputError(
                    "perturbations_per_eval must be 1 when forward_func returns a scalar per batch, "
                    f"got {self.perturbations_per_eval}")
            for i, mask in enumerate(self.masks):
                # an empty mask (empty input) holds no feature
                if mask.shape[0] != 1 and mask.numel() and self.require_shared_masks_in_agg_mode:
                    raise AttributionInputError(
                        f"feature_mask[{i}] must have first dim 1 when forward_func returns a scalar "
                        f"per batch (one mask for all examples), got shape {tuple(mask.shape)}")
        self.rows_per_eval = 1 if self.agg_mode else self._initial_rows_per_eval()
        self._record_nan(out, "the first evaluation")
        self._raise_on_nan()
        return out

    def _initial_rows_per_eval(self) -> int:
        if self.perturbations_per_eval != "auto":
            return self.perturbations_per_eval
        row_bytes = sum(x.numel() * x.element_size() for x in self.inputs) or 1
        device = self.inputs[0].device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * AUTO_CUDA_FRACTION)
        else:
            budget = AUTO_CPU_BUDGET
        return int(max(1, min(AUTO_MAX_ROWS, budget // row_bytes)))

    def evaluate(self, keep: Tensor) -> Tensor:
        """Model outputs on the coalition rows ``keep`` ``[R, F]`` bool: ``[R, *row_shape]``."""
        if keep.dtype != torch.bool or keep.dim() != 2 or keep.shape[1] != self.num_features:
            raise AttributionInputError(
                f"keep must be a bool tensor of shape [R, {self.num_features}], got {keep.dtype} "
                f"{tuple(keep.shape)}")
        return self.evaluate_chunks(keep.shape[0], lambda a, b: keep[a:b])

    def evaluate_chunks(self, num_rows: int, make_keep: Callable[[int, int], Tensor]) -> Tensor:
        """Like :meth:`evaluate`, with the rows built lazily chunk by chunk.

        Args:
            num_rows: ``R``, the number of coalition rows.
            make_keep: ``make_keep(start, stop)`` returns rows ``start:stop`` as a
                ``[stop - start, F]`` bool tensor (on any device).

        Returns:
            ``[R, *row_shape]`` outputs, in row order, on the model's output device.
        """
        if self.row_shape is None:
            raise RuntimeError("PerturbationEngine.initialize() must be called before evaluate")
        results: List[Tensor] = []
        start, previous = 0, None
        while start < num_rows:
            rows = min(self.rows_per_eval, num_rows - start)
            keep = make_keep(start, start + rows)
            try:
                out = self.run_rows(keep, previous)
            except torch.OutOfMemoryError:
                self.release_buffers()
                if self.perturbations_per_eval != "auto" or rows == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.rows_per_eval = max(1, rows // 2)
                continue
            if isinstance(out, Tensor) and self._aliases_buffer(out):
                out = out.clone()  # a view of the input buffer, which the next chunk overwrites
            results.append(self._check_chunk(out, rows))
            previous, start = keep, start + rows
        self.release_buffers()
        self._raise_on_nan()
        if not results:
            return torch.zeros((0,) + self.row_shape)
        return torch.cat(results) if len(results) > 1 else results[0]

    def _check_chunk(self, out: Tensor, rows: int) -> Tensor:
        expected = rows * math.prod(self.row_shape)
        grows = rows == 1 or (out.dim() >= 1 and len(self.row_shape) >= 1
                              and out.shape[0] == rows * self.row_shape[0])
        if not grows or out.numel() != expected:
            n = self.num_examples
            raise AttributionInputError(
                f"forward_func output must grow with the batch: with {n} examples it returned shape "
                f"{self.row_shape}, with {rows * n} examples ({rows} perturbations per evaluation) it "
                f"returned {tuple(out.shape)}; use perturbations_per_eval=1 for models that aggregate "
                f"the batch")
        self._record_nan(out, f"model call {self.num_model_calls}")
        return out.reshape((rows,) + self.row_shape)

    def _record_nan(self, out: Tensor, where: str) -> None:
        # Flags stay on the device; one sync per evaluate() call, not per chunk.
        if self.check_nan and out.is_floating_point():
            self._nan_flags.append((where, torch.isnan(out).any()))

    def _raise_on_nan(self) -> None:
        flags, self._nan_flags = self._nan_flags, []
        if not flags:
            return
        bad = torch.stack([f.to("cpu", non_blocking=False) for _, f in flags])
        if bool(bad.any()):
            where = flags[int(bad.nonzero()[0, 0])][0]
            raise AttributionInputError(
                f"forward_func returned NaN, first at {where} (model calls counted from 1, the first "
                f"being the unperturbed/reference evaluation)")

    # ------------------------------------------------------------------ scatter back

    def to_input_shapes(self, table: Tensor) -> Tuple[Tensor, ...]:
        """Per-feature values ``[F, *T]`` -> one ``[*T, *inputs[i].shape[1:]]`` tensor per input.

        ``out[i][o, ..., idx] = table[mask_i[o or 0, idx], o, ...]``: ``T[0]`` is aligned with
        the masks' first dim (1 or ``T[0]``), like Captum's broadcasting of output differences
        against feature masks. Results live on each input's device, dtype of ``table``.

        Raises:
            AttributionInputError: a mask whose first dim is neither 1 nor ``T[0]``.
        """
        out_dims = tuple(table.shape[1:])
        if not out_dims:
            table, out_dims = table.reshape(-1, 1), (1,)
        lead, inner = out_dims[0], math.prod(out_dims[1:])
        per_feature = table.reshape(table.shape[0], lead, inner)
        results = []
        for i, (mask, inp) in enumerate(zip(self.masks, self.inputs)):
            full = out_dims + tuple(inp.shape[1:])
            if inp.numel() == 0 or mask.numel() == 0:
                results.append(torch.zeros(full, dtype=table.dtype, device=inp.device))
                continue
            if mask.shape[0] not in (1, lead):
                raise AttributionInputError(
                    f"feature_mask[{i}] first dim must be 1 or match the output's first dim ({lead}), "
                    f"got shape {tuple(mask.shape)}")
            values = per_feature.to(inp.device).permute(1, 2, 0)  # [lead, inner, F]
            rest = tuple(mask.shape[1:])
            idx = mask.expand((lead,) + rest).reshape(lead, 1, -1).expand(lead, inner, math.prod(rest))
            gathered = torch.gather(values, 2, idx).reshape(out_dims + rest)
            results.append(gathered.expand(full).contiguous())
        return tuple(results)
