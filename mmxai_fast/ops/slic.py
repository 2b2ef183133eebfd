"""SLIC superpixels / supervoxels in 2D and 3D: ``slic`` (Achanta et al., TPAMI 2012; maskSLIC,
Irving 2016), with the semantics of :func:`skimage.segmentation.slic` for the arguments it supports.

Every perturbation attribution except Occlusion is fed a superpixel feature mask computed on the
foreground only (background.md section 1), one mask per modality with modality-specific ids.

Algorithm (per modality, as scikit-image): the intensities are rescaled to [0, 1] over the
foreground and divided by ``compactness``; seeds are placed on a regular grid, or with a ``mask``
inside the mask (k-means of a random subset of the mask's coordinates, then 10 spatial-only SLIC
iterations); then ``max_num_iter`` k-means iterations, each voxel compared only with the centres
whose window of +-2 grid steps contains it::

    D(v, k) = ((sz (cz - z))^2 + (sy (cy - y))^2 + (sx (cx - x))^2) / S^2 + sum_c (I_c(v) - I_c(k))^2

(ties go to the lower centre index), and the centres moved to their voxels' means. Finally small
disconnected pieces are merged into a neighbour (``enforce_connectivity``).

Where we differ from scikit-image, deliberately and identically in every backend:

- Centre sums are accumulated in fixed point (int64), so every backend gets bit-identical centres
  whatever the reduction order; distances are computed in the input's float dtype (float32
  unless the image is float64).
- Mask seeding uses the same random subset (``RandomState(123)``) and 5 Lloyd iterations as
  scikit-image's ``kmeans2``; nearest centres are exact.
- Connectivity: pieces are the 6-connected components of equal label; a piece smaller than
  ``min_size_factor * segment size`` joins an adjacent earlier piece (or, lacking one, an adjacent
  large piece; see :func:`merge_small_pieces`) instead of scikit-image's order-dependent pick;
  pieces are never split (scikit-image splits pieces larger than ``max_size_factor`` segments);
  labels are numbered in raster order of each segment's first voxel.

NaN/Inf: NaN or infinite intensities inside the segmented region (the mask, or everything)
raise ``ValueError`` on every backend; outside the mask they are ignored.

Files and naming chain: ``ops/slic_reference.py`` (plain-PyTorch oracle and fallback:
``slic_iterate_reference``, ``kmeans_seeds_reference``, ``merge_small_pieces``),
``ops/slic_seeding.py`` (rescaling and seeds, shared by every backend), here ``_cpu_*`` (C++ in
``csrc/cpu/slic_cpu.cpp``), ``_triton_*`` (``kernels/triton/slic.py``), ``_cuda_*`` (CUDA C++
connectivity ``kernels/cuda/slic_connectivity.cu`` via CuPy), the registered
``torch.ops.mmxai_fast.slic`` and the public ``slic``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, cast

import numpy as np
import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import triton_module
from .._validation import int_at_least, int_in_range, real_in_range
from .slic_reference import (
    SlicProblem,
    _connectivity_reference,
    connected_pieces_reference,
    kmeans_seeds_reference,
    merge_small_pieces,
    slic_iterate_reference,
)
from .slic_seeding import fixed_scale, grid_seeds, mask_seeds, rescale

__all__ = ["slic", "slic_reference", "SlicProblem", "connected_pieces_reference", "merge_small_pieces",
           "kmeans_seeds_reference", "slic_iterate_reference"]

# --------------------------------------------------------------------------------------------
# Compiled backends.
# --------------------------------------------------------------------------------------------

def _cpu_iterate(problem: SlicProblem, centers, n_iter, ignore_color):
    feats = problem.features
    n_channels, depth, height, width = feats.shape
    labels = torch.empty((depth, height, width), dtype=torch.int32)
    centers = centers.contiguous().clone()
    mask = problem.mask.to(torch.uint8).contiguous() if problem.mask is not None else None
    compiled_module().slic_iterate(
        feats.data_ptr(), feats.dtype == torch.float64, mask.data_ptr() if mask is not None else 0,
        n_channels, depth, height, width, centers.data_ptr(), centers.shape[0],
        list(problem.grid_steps), list(problem.spacing), problem.spatial_weight, n_iter,
        ignore_color, problem.fixed_scale, labels.data_ptr())
    return labels, centers


def _cpu_kmeans(points, centers, n_iter, shape):
    points = points.contiguous()
    centers = centers.contiguous().clone()
    compiled_module().slic_kmeans_seeds(points.data_ptr(), points.shape[0], centers.data_ptr(),
                                        centers.shape[0], n_iter, list(shape))
    return centers


def _cpu_connectivity(labels, min_size):
    labels = labels.to(torch.int32).contiguous()
    out = torch.empty(labels.shape, dtype=torch.int64)
    compiled_module().slic_connectivity(labels.data_ptr(), *labels.shape, min_size, out.data_ptr())
    return out


def _triton_iterate(problem: SlicProblem, centers, n_iter, ignore_color):
    return triton_module("slic").slic_iterate_forward(problem, centers, n_iter, ignore_color)


def _cuda_connectivity(labels, min_size):
    return merge_small_pieces(_cuda_connected_pieces(labels), min_size)


def _cuda_connected_pieces(labels: torch.Tensor) -> torch.Tensor:
    """Union-find connected components on the GPU (``kernels/cuda/slic_connectivity.cu``)."""
    from .._cuda import launch

    depth, height, width = labels.shape
    n = labels.numel()
    labels = labels.to(torch.int32).contiguous()
    parent = torch.empty(n, dtype=torch.int64, device=labels.device)
    blocks = (max(1, min(65535 * 4, (n + 255) // 256)),)
    args = (labels, parent, np.int32(depth), np.int32(height), np.int32(width))
    for kernel in ("slic_init_parents", "slic_union_neighbours", "slic_flatten_parents"):
        launch("slic_connectivity", kernel, blocks, (256,), args)
    return parent.reshape(labels.shape)


def _triton_kmeans(points, centers, n_iter, shape, device):
    # The seeding is a small dense problem: plain PyTorch on the GPU (the reference on CPU tensors).
    return kmeans_seeds_reference(points.to(device), centers.to(device), n_iter).cpu()


def _reference_kmeans(points, centers, n_iter, shape, device):
    return kmeans_seeds_reference(points, centers, n_iter)


def _cpu_kmeans_any(points, centers, n_iter, shape, device):
    return _cpu_kmeans(points, centers, n_iter, shape)


@dataclass(frozen=True)
class _Steps:
    """The three steps of one backend: k-means iterations, seeding, connectivity."""

    iterate: Callable
    kmeans: Callable
    connectivity: Callable


_STEPS = {
    "reference": _Steps(slic_iterate_reference, _reference_kmeans, _connectivity_reference),
    "cpu": _Steps(_cpu_iterate, _cpu_kmeans_any, _cpu_connectivity),
    # Triton k-means; connectivity by the reference's torch code on the same device.
    "triton": _Steps(_triton_iterate, _triton_kmeans, _connectivity_reference),
    # Triton k-means; connectivity by the CUDA C++ union-find kernels (CuPy).
    "cuda": _Steps(_triton_iterate, _triton_kmeans, _cuda_connectivity),
}
_FLOATS = (torch.float32, torch.float64)
# Intensities are divided by compactness and squared in float32: outside this range the
# distances overflow (compactness 1e-40 labels nothing) or the intensities vanish.
COMPACTNESS_RANGE = (1e-10, 1e10)
BACKENDS = B.OpBackends("slic", [
    B.cpu(_STEPS["cpu"], dtypes=_FLOATS),
    B.cuda(_STEPS["cuda"], dtypes=_FLOATS, needs=("triton", "cuda", "cupy"),
           summary="Triton k-means + CUDA C++ connectivity compiled by CuPy"),
    B.triton(_STEPS["triton"], dtypes=_FLOATS, summary="Triton k-means + PyTorch connectivity"),
    B.reference(_STEPS["reference"]),
])


def _segment_one(image: torch.Tensor, mask: Optional[torch.Tensor], opts: "_Options", steps: _Steps) -> torch.Tensor:
    """SLIC of one modality ``(C, D, H, W)``; returns ``(D, H, W)`` int64 ids from 0, -1 outside."""
    shape = tuple(image.shape[1:])
    if mask is not None and not bool(mask.any()):
        return torch.full(shape, -1, dtype=torch.int64, device=image.device)
    ratio = 1.0 / opts.compactness
    feats = rescale(image, mask, ratio)
    n_fg = int(mask.sum()) if mask is not None else math.prod(shape)
    if mask is not None:
        seeds, grid_steps, step = mask_seeds(mask.cpu().numpy(), opts.n_segments,
                                             lambda p, c, it: steps.kmeans(p, c, it, shape, image.device))
    else:
        seeds, grid_steps, step = grid_seeds(shape, opts.n_segments)
    n_centers = len(seeds)
    problem = SlicProblem(features=feats, mask=mask, centers=torch.zeros(0), grid_steps=grid_steps,
                          spatial_weight=1.0 / (step * step), spacing=opts.spacing,
                          fixed_scale=fixed_scale(ratio, n_fg))
    centers = torch.zeros((n_centers, 3 + image.shape[0]), dtype=torch.float64, device=image.device)
    centers[:, :3] = torch.from_numpy(seeds).to(image.device)
    iterate = steps.iterate
    if mask is not None:  # maskSLIC step 2: spatial-only iterations spread the seeds
        _, centers = iterate(problem, centers, opts.max_num_iter, True)
    labels, _ = iterate(problem, centers, opts.max_num_iter, False)
    if opts.enforce_connectivity:
        segment_size = n_fg / n_centers
        return steps.connectivity(labels, int(opts.min_size_factor * segment_size))
    return labels.to(torch.int64)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Options:
    n_segments: int
    compactness: float
    max_num_iter: int
    spacing: Tuple[float, float, float]
    enforce_connectivity: bool
    min_size_factor: float


def slic_reference(image, n_segments=100, compactness=10.0, max_num_iter=10, spacing=None,
                   enforce_connectivity=True, min_size_factor=0.5, start_label=1, mask=None, *,
                   channel_axis=-1, modality_axis=None):
    """Plain-PyTorch oracle of :func:`slic` (same arguments)."""
    return slic(image, n_segments, compactness, max_num_iter, spacing=spacing,
                enforce_connectivity=enforce_connectivity, min_size_factor=min_size_factor,
                start_label=start_label, mask=mask, channel_axis=channel_axis,
                modality_axis=modality_axis, backend="reference")


def _as_tensor(value, name: str) -> Tuple[torch.Tensor, bool]:
    if isinstance(value, torch.Tensor):
        return value, False
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)), True
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _normalize_axis(axis, ndim: int, name: str) -> int:
    int_in_range(axis, name, -ndim, ndim, f" for an image with {ndim} dims")
    return axis % ndim


def _layout(image: torch.Tensor, channel_axis, modality_axis) -> Tuple[torch.Tensor, int]:
    """Move axes to ``(M, C, *spatial)``; returns the tensor and the number of spatial dims."""
    ndim = image.dim()
    mod = _normalize_axis(modality_axis, ndim, "modality_axis") if modality_axis is not None else None
    chan = _normalize_axis(channel_axis, ndim, "channel_axis") if channel_axis is not None else None
    if mod is not None and mod == chan:
        raise ValueError(f"modality_axis and channel_axis must differ, both are axis {mod}")
    spatial = [d for d in range(ndim) if d not in (mod, chan)]
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"image must have 2 or 3 spatial dims besides channel_axis={channel_axis} and "
            f"modality_axis={modality_axis}, got shape {tuple(image.shape)} ({len(spatial)} spatial dims)")
    order = ([mod] if mod is not None else []) + ([chan] if chan is not None else []) + spatial
    out = image.permute(order)
    if mod is None:
        out = out.unsqueeze(0)
    if chan is None:
        out = out.unsqueeze(1)
    return out, len(spatial)


def _reject_unsupported(sigma, convert2lab, slic_zero, max_size_factor) -> None:
    """scikit-image options the kernel does not implement: only their defaults are accepted."""
    if sigma != 0:
        raise ValueError(f"sigma: only 0 (no smoothing) is supported, got {sigma!r}; smooth beforehand")
    if convert2lab:
        raise ValueError("convert2lab=True is not supported (no RGB inputs in medical volumes)")
    if slic_zero:
        raise ValueError("slic_zero=True is not supported")
    if max_size_factor != 3:
        raise ValueError(f"max_size_factor: only 3 is supported (large pieces are never split), got {max_size_factor!r}")


def slic(image, n_segments: int = 100, compactness: float = 10.0, max_num_iter: int = 10, sigma=0,
         spacing=None, convert2lab=None, enforce_connectivity: bool = True, min_size_factor: float = 0.5,
         max_size_factor: float = 3, slic_zero: bool = False, start_label: int = 1, mask=None, *,
         channel_axis: Optional[int] = -1, modality_axis: Optional[int] = None, backend: Optional[str] = None):
    """SLIC superpixels (2D) / supervoxels (3D), scikit-image's ``slic`` as a kernel.

    Several modalities in one call: ``modality_axis`` names the axis whose entries are segmented
    independently (each with its own labels, ids of modality ``m`` following those of ``m - 1``);
    ``channel_axis`` names the axis whose entries are clustered jointly (one segmentation over all
    channels). A ``(4, 240, 240, 155)`` BraTS volume with one mask per modality is
    ``slic(volume, modality_axis=0, channel_axis=None, mask=brain)``.

    Args:
        image: ``(*S)`` (``channel_axis=None``), ``(*S, C)``, and/or with a modality axis:
            2 or 3 spatial dims ``S``. numpy array or tensor, any real dtype; computed in float64
            for float64 input, else float32.
        n_segments: approximate number of segments (per modality).
        compactness: weight of space against intensity (larger: more cubic segments), a finite
            number in ``COMPACTNESS_RANGE`` = [1e-10, 1e10] (beyond it float32 distances overflow
            or the intensities vanish).
        max_num_iter: k-means iterations.
        sigma, convert2lab, slic_zero: only scikit-image's defaults for non-RGB data
            (0, None/False, False) are supported.
        spacing: voxel spacing per spatial dim (length 2 or 3), default 1.
        enforce_connectivity: merge small disconnected pieces so every segment is connected.
        min_size_factor: pieces smaller than this fraction of the mean segment size are merged.
        max_size_factor: only 3 (the default) is accepted; large pieces are never split.
        start_label: 0 or 1; voxels outside ``mask`` get ``start_label - 1``.
        mask: bool ``S`` (shared by all modalities) or ``(M, *S)``: only True voxels are segmented.
        channel_axis: axis of jointly clustered channels, or None.
        modality_axis: axis of independently segmented modalities, or None.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``
            (Triton k-means with CUDA C++ connectivity, CuPy).

    Returns:
        int64 labels, ``S`` or ``(M, *S)`` with a modality axis (modalities first), same kind
        (numpy / tensor) and device as ``image``.

    Raises:
        TypeError: ``image``/``mask`` of the wrong type or dtype.
        ValueError: bad shapes, axes, ``start_label``, ``spacing``, ``compactness`` or
            ``min_size_factor`` (non-finite or out of range), unsupported options, unmasked NaN or inf.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    image, was_numpy = _as_tensor(image, "image")
    if image.is_complex() or image.dtype == torch.bool:
        raise TypeError(f"image must have a real (integer or floating) dtype, got {image.dtype}")
    if image.dim() == 2 and channel_axis is not None:
        raise ValueError(f"channel_axis={channel_axis} indicates multichannel, which is not supported for a "
                         "two-dimensional image; use channel_axis=None if the image is grayscale")
    _reject_unsupported(sigma, convert2lab, slic_zero, max_size_factor)
    if start_label not in (0, 1):
        raise ValueError(f"start_label should be 0 or 1, got {start_label!r}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments <= 0:
        raise ValueError(f"n_segments must be a positive int, got {n_segments!r}")
    compactness = real_in_range(compactness, "compactness", *COMPACTNESS_RANGE)
    int_at_least(max_num_iter, "max_num_iter", 0)
    min_size_factor = real_in_range(min_size_factor, "min_size_factor", 0.0, math.inf)
    stacked, n_spatial = _layout(image, channel_axis, modality_axis)
    n_mod, spatial_shape = stacked.shape[0], tuple(stacked.shape[2:])
    spacing3 = _parse_spacing(spacing, n_spatial)
    masks = _parse_mask(mask, spatial_shape, n_mod, modality_axis is not None, image.device)
    volume = stacked.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
    if n_spatial == 2:
        volume = volume.unsqueeze(2)
        masks = masks.unsqueeze(1) if masks is not None else None
    result = run_op("slic", _slic_impl, volume, masks, int(n_segments), compactness, max_num_iter,
                    list(spacing3), bool(enforce_connectivity), min_size_factor, start_label, backend or "")
    if n_spatial == 2:
        result = result.squeeze(1)
    if modality_axis is None:
        result = result[0]
    return result.cpu().numpy() if was_numpy else result


def _slic_impl(volume: torch.Tensor, masks: Optional[torch.Tensor], n_segments: int, compactness: float,
               max_num_iter: int, spacing: List[float], enforce_connectivity: bool, min_size_factor: float,
               start_label: int, backend: str) -> torch.Tensor:
    """``(M, C, D, H, W)`` float volume and ``(M, D, H, W)`` bool masks -> ``(M, D, H, W)`` int64 labels."""
    device = volume.device
    chosen = BACKENDS.select(backend, device, volume.dtype)
    if chosen.name in ("reference", "cpu"):
        volume = volume.cpu()
        masks = masks.cpu() if masks is not None else None
    zyx = cast(Tuple[float, float, float], tuple(spacing))  # _parse_spacing made it three floats
    opts = _Options(n_segments, compactness, max_num_iter, zyx, enforce_connectivity, min_size_factor)
    per_mod = [masks[m] if masks is not None else None for m in range(volume.shape[0])]
    out, offset = [], 0
    segment = lambda m: _segment_one(volume[m], per_mod[m], opts, chosen.impl)  # noqa: E731
    for labels in _map_modalities(segment, volume.shape[0], chosen.name):
        n_labels = int(labels.max()) + 1 if labels.numel() else 0
        out.append(torch.where(labels >= 0, labels + offset + start_label,
                               torch.full_like(labels, start_label - 1)))
        offset += max(n_labels, 0)
    return torch.stack(out).to(device)


_slic_op = torch.library.custom_op("mmxai_fast::slic", mutates_args=())(_slic_impl)


@_slic_op.register_fake
def _(volume, masks, n_segments, compactness, max_num_iter, spacing, enforce_connectivity, min_size_factor,
      start_label, backend):
    return volume.new_empty((volume.shape[0],) + tuple(volume.shape[2:]), dtype=torch.int64)


def _map_modalities(segment, n_mod: int, backend: str):
    """``[segment(m) for m in range(n_mod)]``; on the cpu backend the modalities run concurrently,
    each on its share of the OpenMP threads. Whole modalities per thread need no barrier between
    them, which keeps a busy (shared) machine from stalling every k-means iteration; the kernels
    are deterministic, so the labels do not depend on the split."""
    threads = compiled_module().max_threads() if backend == "cpu" else 1
    workers = min(n_mod, threads)
    if workers < 2:
        return [segment(m) for m in range(n_mod)]
    from concurrent.futures import ThreadPoolExecutor

    def task(m):
        compiled_module().set_num_threads(max(1, threads // workers))  # this thread's OpenMP team
        return segment(m)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(task, range(n_mod)))


def _parse_spacing(spacing, n_spatial: int) -> Tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    try:
        values = [float(s) for s in (spacing.tolist() if hasattr(spacing, "tolist") else spacing)]
    except TypeError:
        raise TypeError(f"spacing must be None or a sequence of {n_spatial} numbers, got {spacing!r}") from None
    if len(values) != n_spatial:
        raise ValueError(f"Input image is {n_spatial}D, but spacing has {len(values)} elements (expected {n_spatial}).")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing values must be finite and > 0, got {values}")
    return cast(Tuple[float, float, float], tuple([1.0] * (3 - n_spatial) + values))  # padded to three dims


def _parse_mask(mask, spatial_shape, n_mod: int, has_modality_axis: bool, device) -> Optional[torch.Tensor]:
    """The mask as a bool ``(M, *S)`` tensor on ``device`` (a shared mask is expanded), or None."""
    if mask is None:
        return None
    mask, _ = _as_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"mask must be a bool or integer array, got {mask.dtype}")
        mask = mask != 0
    mask = mask.to(device)
    if tuple(mask.shape) == spatial_shape:
        return mask.expand((n_mod,) + spatial_shape)
    if has_modality_axis and tuple(mask.shape) == (n_mod,) + spatial_shape:
        return mask
    expected = f"{spatial_shape}" + (f" or {(n_mod,) + spatial_shape}" if has_modality_axis else "")
    raise ValueError(f"mask must have the image's spatial shape {expected}, got {tuple(mask.shape)}")
