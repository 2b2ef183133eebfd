"""Triton kernels for the occlusion sweep (Captum ``Occlusion`` semantics).

Both kernels read the window geometry from an int64 ``[NDIM, 8]`` table built by
``OcclusionWindows._geometry``; one row per dim: (size, pitch, window, stride, count, mult,
span, span_pitch). Element ``e`` of a contiguous ``input_shape`` volume has index
``(e // pitch) % size`` in a dim; window position ``j`` of a dim starts at ``j * stride`` and adds
``j * mult`` to the window index (first dim fastest).
"""
import triton
import triton.language as tl

_MAX_GRID_Y = 65535  # CUDA limit of grid dims 1 and 2


@triton.jit
def _occlusion_batch_kernel(x_ptr, fill_ptr, ids_ptr, geom_ptr, out_ptr, numel, volume,
                            NDIM: tl.constexpr, FILL_FULL: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    element = offs % volume
    rest = tl.load(ids_ptr + p)
    inside = valid
    for k in tl.static_range(NDIM):
        size = tl.load(geom_ptr + k * 8 + 0)
        pitch = tl.load(geom_ptr + k * 8 + 1)
        window = tl.load(geom_ptr + k * 8 + 2)
        stride = tl.load(geom_ptr + k * 8 + 3)
        count = tl.load(geom_ptr + k * 8 + 4)
        start = (rest % count) * stride
        rest = rest // count
        i = (element // pitch) % size
        # i < size always, so the window is cropped at the border implicitly.
        inside = inside & (i >= start) & (i < start + window)
    x = tl.load(x_ptr + offs, mask=valid, other=0)
    if FILL_FULL:
        fill = tl.load(fill_ptr + offs, mask=inside, other=0)
    else:
        fill = tl.load(fill_ptr)
    tl.store(out_ptr + p * numel + offs, tl.where(inside, fill, x), mask=valid)


@triton.jit
def _occlusion_attribution_kernel(diffs_ptr, geom_ptr, out_ptr, volume, n_windows, n_combos,
                                  NDIM: tl.constexpr, BLOCK: tl.constexpr):
    lead = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < volume
    row = diffs_ptr + lead * n_windows

    # Coverage: product over dims of the number of positions covering the element's index.
    coverage = tl.full([BLOCK], 1, tl.int64)
    for k in tl.static_range(NDIM):
        size = tl.load(geom_ptr + k * 8 + 0)
        pitch = tl.load(geom_ptr + k * 8 + 1)
        window = tl.load(geom_ptr + k * 8 + 2)
        stride = tl.load(geom_ptr + k * 8 + 3)
        count = tl.load(geom_ptr + k * 8 + 4)
        i = (offs // pitch) % size
        lo = tl.maximum(i - window + stride, 0) // stride  # ceil((i - w + 1) / s), clamped at 0
        hi = tl.minimum(i // stride, count - 1)
        coverage *= tl.maximum(hi - lo + 1, 0)

    # Sum over the covering windows: enumerate the (at most span per dim) candidate positions
    # from each dim's first covering position; candidates past the last one are masked.
    if out_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(n_combos):
        index = tl.zeros([BLOCK], dtype=tl.int64)
        covered = valid
        for k in tl.static_range(NDIM):
            size = tl.load(geom_ptr + k * 8 + 0)
            pitch = tl.load(geom_ptr + k * 8 + 1)
            window = tl.load(geom_ptr + k * 8 + 2)
            stride = tl.load(geom_ptr + k * 8 + 3)
            count = tl.load(geom_ptr + k * 8 + 4)
            mult = tl.load(geom_ptr + k * 8 + 5)
            span = tl.load(geom_ptr + k * 8 + 6)
            span_pitch = tl.load(geom_ptr + k * 8 + 7)
            i = (offs // pitch) % size
            j = tl.maximum(i - window + stride, 0) // stride + (t // span_pitch) % span
            covered = covered & (j <= tl.minimum(i // stride, count - 1))
            index += j * mult
        acc += tl.load(row + index, mask=covered, other=0).to(acc.dtype)

    # Elements no window covers: 0 / 0 = NaN, as Captum's total / weights.
    mean = acc / tl.maximum(coverage, 1).to(acc.dtype)
    mean = tl.where(coverage > 0, mean, float("nan"))
    tl.store(out_ptr + lead * volume + offs, mean.to(out_ptr.dtype.element_ty), mask=valid)


def occlusion_batch_forward(x, fill, fill_full, ids, geometry, volume, out, block=1024):
    """x: contiguous flat ``[lead * volume]``; fill: 1 element or x's shape (contiguous);
    ids: int64 ``[P]``; geometry: int64 ``[NDIM, 8]``; volume: elements of one input_shape
    volume; out: ``[P, lead * volume]``."""
    numel = x.numel()
    for p0 in range(0, ids.numel(), _MAX_GRID_Y):
        part = ids[p0:p0 + _MAX_GRID_Y]
        grid = (triton.cdiv(numel, block), part.numel())
        _occlusion_batch_kernel[grid](x, fill.view(-1), part, geometry, out[p0:p0 + part.numel()], numel, volume,
                                      NDIM=geometry.shape[0], FILL_FULL=bool(fill_full), BLOCK=block)
    return out


def occlusion_attribution_forward(diffs, geometry, n_combos, out, block=1024):
    """diffs: contiguous ``[lead, num_windows]``; geometry: int64 ``[NDIM, 8]``; n_combos: the
    product of the per-dim spans; out: ``[lead, volume]``."""
    lead, volume = out.shape
    for l0 in range(0, lead, _MAX_GRID_Y):
        part = out[l0:l0 + _MAX_GRID_Y]
        grid = (triton.cdiv(volume, block), part.shape[0])
        _occlusion_attribution_kernel[grid](diffs[l0:l0 + part.shape[0]], geometry, part, volume,
                                            diffs.shape[1], n_combos, NDIM=geometry.shape[0], BLOCK=block)
    return out
