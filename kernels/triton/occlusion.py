"""Triton kernels for the occlusion sweep (Captum ``Occlusion`` semantics).

Both kernels read the window geometry from an int64 ``[NDIM, 8]`` table built by
``OcclusionWindows._geometry``; one row per dim: (size, pitch, window, stride, count, mult,
span, span_pitch). Element ``e`` of a contiguous ``input_shape`` volume has index
``(e // pitch) % size`` in a dim; window position ``j`` of a dim starts at ``j * stride`` and adds
``j * mult`` to the window index (first dim fastest).

Index arithmetic within one volume is int32 (the launchers check ``volume < 2^31``); only the
output offsets are int64. Each program handles a ``[ROWS, BLOCK]`` tile (window ids x elements),
so an element's per-dim indices are computed once per program, not once per output element.
"""
import torch
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard

_MAX_GRID_Y = 65535  # CUDA limit of grid dims 1 and 2
_INT32_MAX = 2**31 - 1


@triton.jit
def _occlusion_batch_kernel(x_ptr, fill_ptr, ids_ptr, geom_ptr, out_ptr, numel, volume, n_ids, n_blocks,
                            NDIM: tl.constexpr, FILL_FULL: tl.constexpr, ROWS: tl.constexpr,
                            BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    lead = pid // n_blocks
    e = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    valid = e < volume
    offs = lead.to(tl.int64) * volume + e
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_ids
    rest = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    inside = valid[None, :] & row_ok[:, None]
    for k in tl.static_range(NDIM):
        size = tl.load(geom_ptr + k * 8 + 0).to(tl.int32)
        pitch = tl.load(geom_ptr + k * 8 + 1).to(tl.int32)
        window = tl.load(geom_ptr + k * 8 + 2).to(tl.int32)
        stride = tl.load(geom_ptr + k * 8 + 3).to(tl.int32)
        count = tl.load(geom_ptr + k * 8 + 4)
        start = ((rest % count) * stride).to(tl.int32)
        rest = rest // count
        i = (e // pitch) % size  # once per element of the program, shared by its ROWS windows
        # i < size always, so the window is cropped at the border implicitly.
        inside = inside & (i[None, :] >= start[:, None]) & (i[None, :] < (start + window)[:, None])
    x = tl.load(x_ptr + offs, mask=valid, other=0)
    if FILL_FULL:
        fill = tl.load(fill_ptr + offs, mask=valid, other=0)
    else:
        fill = tl.load(fill_ptr)
    out = tl.where(inside, fill, x[None, :])
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * numel + offs[None, :], out,
             mask=valid[None, :] & row_ok[:, None])


@triton.jit
def _occlusion_attribution_kernel(diffs_ptr, geom_ptr, out_ptr, volume, n_windows, n_combos, n_blocks,
                                  NDIM: tl.constexpr, COMBOS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    lead = pid // n_blocks
    e = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    valid = e < volume
    row = diffs_ptr + lead.to(tl.int64) * n_windows

    # Coverage: product over dims of the number of positions covering the element's index.
    coverage = tl.full([BLOCK], 1, tl.int32)
    for k in tl.static_range(NDIM):
        size = tl.load(geom_ptr + k * 8 + 0).to(tl.int32)
        pitch = tl.load(geom_ptr + k * 8 + 1).to(tl.int32)
        window = tl.load(geom_ptr + k * 8 + 2).to(tl.int32)
        stride = tl.load(geom_ptr + k * 8 + 3).to(tl.int32)
        count = tl.load(geom_ptr + k * 8 + 4).to(tl.int32)
        i = (e // pitch) % size
        lo = tl.maximum(i - window + stride, 0) // stride  # ceil((i - w + 1) / s), clamped at 0
        hi = tl.minimum(i // stride, count - 1)
        coverage *= tl.maximum(hi - lo + 1, 0)

    # Sum over the covering windows: enumerate COMBOS candidate position combinations at a time
    # (at most span per dim, from each dim's first covering position); candidates past the last
    # covering one are masked.
    if out_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for t0 in range(0, n_combos, COMBOS):
        t = t0 + tl.arange(0, COMBOS)
        index = tl.zeros([COMBOS, BLOCK], dtype=tl.int32)
        covered = valid[None, :] & (t < n_combos)[:, None]
        for k in tl.static_range(NDIM):
            size = tl.load(geom_ptr + k * 8 + 0).to(tl.int32)
            pitch = tl.load(geom_ptr + k * 8 + 1).to(tl.int32)
            window = tl.load(geom_ptr + k * 8 + 2).to(tl.int32)
            stride = tl.load(geom_ptr + k * 8 + 3).to(tl.int32)
            count = tl.load(geom_ptr + k * 8 + 4).to(tl.int32)
            mult = tl.load(geom_ptr + k * 8 + 5).to(tl.int32)
            span = tl.load(geom_ptr + k * 8 + 6).to(tl.int32)
            span_pitch = tl.load(geom_ptr + k * 8 + 7).to(tl.int32)
            i = (e // pitch) % size
            j = (tl.maximum(i - window + stride, 0) // stride)[None, :] + ((t // span_pitch) % span)[:, None]
            covered = covered & (j <= tl.minimum(i // stride, count - 1)[None, :])
            index += j * mult
        values = tl.load(row + index, mask=covered, other=0).to(acc.dtype)
        acc += tl.sum(values, axis=0)

    # Elements no window covers: 0 / 0 = NaN, as Captum's total / weights.
    mean = acc / tl.maximum(coverage, 1).to(acc.dtype)
    mean = tl.where(coverage > 0, mean, float("nan"))
    tl.store(out_ptr + lead.to(tl.int64) * volume + e, mean.to(out_ptr.dtype.element_ty), mask=valid)


def _check_int32(name, value):
    if value > _INT32_MAX:
        raise ValueError(f"{name} must be < 2^31 for the triton occlusion kernels, got {value}")


def occlusion_batch_forward(x, fill, fill_full, ids, geometry, volume, out, rows=8, block=512):
    """x: contiguous flat ``[lead * volume]``; fill: 1 element or x's shape (contiguous);
    ids: int64 ``[P]`` on x's device; geometry: int64 ``[NDIM, 8]``; volume: elements of one
    input_shape volume; out: ``[P, lead * volume]``."""
    numel = x.numel()
    _check_int32("the input_shape volume", volume)
    n_blocks = triton.cdiv(volume, block)
    lead = numel // volume
    with device_guard(x):
        for p0 in range(0, ids.numel(), _MAX_GRID_Y * rows):
            part = ids[p0:p0 + _MAX_GRID_Y * rows]
            grid = (lead * n_blocks, triton.cdiv(part.numel(), rows))
            _occlusion_batch_kernel[grid](x, fill.view(-1), part, geometry, out[p0:p0 + part.numel()], numel,
                                          volume, part.numel(), n_blocks, NDIM=geometry.shape[0],
                                          FILL_FULL=bool(fill_full), ROWS=rows, BLOCK=block, num_warps=4)
    return out


def occlusion_attribution_forward(diffs, geometry, n_combos, out, block=None):
    """diffs: contiguous ``[lead, num_windows]``; geometry: int64 ``[NDIM, 8]``; n_combos: the
    product of the per-dim spans; out: ``[lead, volume]``."""
    lead, volume = out.shape
    _check_int32("the input_shape volume", volume)
    _check_int32("the number of windows", diffs.shape[1])
    if block is None:
        block = 128 if out.dtype == torch.float64 else 256  # no spills on sm_80 / sm_90
    n_blocks = triton.cdiv(volume, block)
    combos = min(8, triton.next_power_of_2(max(n_combos, 1)))
    with device_guard(out):
        _occlusion_attribution_kernel[(lead * n_blocks,)](diffs, geometry, out, volume, diffs.shape[1],
                                                          n_combos, n_blocks, NDIM=geometry.shape[0],
                                                          COMBOS=combos, BLOCK=block, num_warps=4)
    return out
