import importlib

import pytest
import torch

from mmxai_fast.ops.codeword_histogram import codeword_histogram
from mmxai_fast.ops.vq_nearest import vq_nearest, vq_nearest_reference
from helpers import CPU_BACKENDS, FLOAT_DTYPES, TOLERANCES, non_contiguous

vq_module = importlib.import_module("mmxai_fast.ops.vq_nearest")  # ops.vq_nearest is the function

ALL_BACKENDS = ["reference"] + CPU_BACKENDS
# (N, K, D): single row, odd sizes, D = 1, K = 1, and sizes spanning several C++ panels (64
# codewords) / row blocks (48 rows) and Triton tiles, with D not a multiple of any tile.
SHAPES = [(1, 7, 3), (123, 37, 5), (50, 1, 4), (31, 9, 1), (200, 150, 70)]


def _pairwise_sq(z, e):
    """Exact float64 squared distances [N, K] (small sizes only)."""
    return ((z.double()[:, None, :] - e.double()[None, :, :]) ** 2).sum(-1)


def _tolerance(z, e, dtype):
    """Per-row error bound of the expanded distance, relative to ||z||^2 + ||e||^2: the kernels
    compute ||z||^2 + (||e||^2 - 2 z.e), whose rounding error scales with those norms, not with the
    (possibly much smaller) distance. ``dtype``'s entry of TOLERANCES sets the relative size."""
    rtol, atol = TOLERANCES[dtype]
    scale = z.double().pow(2).sum(1) + e.double().pow(2).sum(1).max()
    return atol + rtol * scale


def _check_against_float64(z, e, indices, dist):
    """indices pick a codeword within tolerance of the true minimum; sq_dist is within tolerance of
    it; wherever the float64 best-vs-second-best gap is comfortably above the tolerance the index
    must be exactly the float64 argmin. Returns the number of rows compared exactly.

    float16/bfloat16 inputs are exact in float32, where every backend compares the scores, so the
    index tolerance is float32's; sq_dist is also rounded to the input dtype, so its tolerance is
    that dtype's."""
    n, k = z.shape[0], e.shape[0]
    assert indices.dtype == torch.int64 and indices.shape == (n,)
    assert dist.dtype == z.dtype and dist.shape == (n,)
    if n == 0:
        return 0
    sq = _pairwise_sq(z, e)
    best, best_idx = sq.min(1)
    compute_tol = _tolerance(z, e, torch.float64 if z.dtype == torch.float64 else torch.float32)
    dist_tol = _tolerance(z, e, z.dtype)
    assert ((indices >= 0) & (indices < k)).all()
    chosen = sq.gather(1, indices[:, None])[:, 0]
    assert (chosen <= best + compute_tol).all(), "picked a codeword farther than the tolerance"
    assert ((dist.double() - best).abs() <= dist_tol).all(), "sq_dist differs from the float64 minimum"
    assert (dist >= 0).all()
    second = sq.topk(2, dim=1, largest=False).values[:, 1] if k > 1 else torch.full_like(best, float("inf"))
    clear = (second - best) > 4 * compute_tol
    assert torch.equal(indices[clear], best_idx[clear])
    return int(clear.sum())


def _random(n, k, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = torch.randn(k, d, generator=g, dtype=torch.float64)
    return z.to(dtype), e.to(dtype)


def _separated(n, k, d, dtype, seed=0, noise=0.05):
    """Codewords far apart and z close to known codewords: the nearest one is unambiguous even
    in bfloat16."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(k, d, generator=g, dtype=torch.float64) * 4
    targets = torch.randint(0, k, (n,), generator=g)
    z = e[targets] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z.to(dtype), e.to(dtype), targets


# --------------------------------------------------------------------------- vq_nearest


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_vq_nearest_matches_float64(backend, shape, dtype):
    z, e = _random(*shape, dtype)
    indices, dist = vq_nearest(z, e, backend=backend)
    exact = _check_against_float64(z, e, indices, dist)
    assert exact >= shape[0] // 2, "the gap filter left too few rows to compare exactly"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_well_separated_indices_are_exact(backend, dtype):
    z, e, targets = _separated(97, 70, 19, dtype)
    indices, dist = vq_nearest(z, e, backend=backend)
    assert torch.equal(indices, targets)
    _check_against_float64(z, e, indices, dist)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_duplicate_codewords_give_lowest_index(backend, dtype):
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(150, 12, generator=g, dtype=torch.float64) * 3).to(dtype)
    e = base.clone()
    # Codeword 3 repeated inside the first tile, across C++ panel / Triton tile boundaries, and in
    # the same lane of later panels (35, 67, 131: the C++ running minimum keeps one slot per lane).
    for k in (5, 35, 64, 67, 70, 128, 131, 149):
        e[k] = e[3]
    z = torch.stack([e[3], e[3] + 0.01, e[70] - 0.01, e[10] + 0.01, e[149]])
    indices, dist = vq_nearest(z, e, backend=backend)
    assert indices.tolist() == [3, 3, 3, 10, 3]
    _check_against_float64(z, e, indices, dist)  # rows 0 and 4: 0 up to the expansion's rounding


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicates_across_narrow_panels(backend, dtype):
    # AVX2 builds use panels of 16 (float) / 8 (double) codewords and 6-row tiles: the duplicates
    # sit in the same lane of later panels and across panel edges, and N is not a multiple of 6.
    g = torch.Generator().manual_seed(2)
    e = (torch.randn(53, 64, generator=g, dtype=torch.float64) * 3).to(dtype)
    for k in (7, 8, 11, 15, 16, 19, 24, 27, 32, 43, 52):
        e[k] = e[3]
    z = torch.cat([e[3].expand(7, 64), e[3] + 0.01 * torch.randn(4, 64, generator=g, dtype=dtype), e[20:22]])
    indices, dist = vq_nearest(z, e, backend=backend)
    assert indices.tolist() == [3] * 11 + [20, 21]
    _check_against_float64(z, e, indices, dist)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(13, 17, 16), (97, 33, 64), (49, 9, 7)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_panel_and_tile_edges_match_float64(backend, shape, dtype):
    z, e = _random(*shape, dtype, seed=5)
    indices, dist = vq_nearest(z, e, backend=backend)
    _check_against_float64(z, e, indices, dist)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_all_identical_codebook(backend, dtype):
    e = torch.full((77, 6), 0.5, dtype=dtype)
    z = _random(40, 1, 6, dtype)[0]
    indices, dist = vq_nearest(z, e, backend=backend)
    assert torch.equal(indices, torch.zeros(40, dtype=torch.int64))
    _check_against_float64(z, e, indices, dist)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_symmetric_tie_goes_to_lowest(backend):
    # At z = 0 every codeword of the same norm scores the same: +v and -v tie exactly.
    v = torch.tensor([0.5, -1.25, 2.0, 0.75])
    e = torch.stack([3 * v, v, -v, v.flip(0), -v.flip(0)])
    indices, dist = vq_nearest(torch.zeros(3, 4), e, backend=backend)
    assert indices.tolist() == [1, 1, 1]
    torch.testing.assert_close(dist, torch.full((3,), float(v.pow(2).sum())))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_single_codeword_and_empty(backend):
    z, e = _random(9, 1, 4, torch.float32)
    indices, dist = vq_nearest(z, e, backend=backend)
    assert torch.equal(indices, torch.zeros(9, dtype=torch.int64))
    _check_against_float64(z, e, indices, dist)
    empty_idx, empty_dist = vq_nearest(torch.zeros(0, 4), e, backend=backend)
    assert empty_idx.shape == (0,) and empty_idx.dtype == torch.int64
    assert empty_dist.shape == (0,) and empty_dist.dtype == torch.float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_contiguous_inputs(backend, dtype):
    z, e = _random(45, 33, 10, dtype)
    z_view = non_contiguous(z)
    e_view = e.t().contiguous().t()  # column-major codebook
    assert not z_view.is_contiguous() and not e_view.is_contiguous()
    expected = vq_nearest(z, e, backend=backend)
    got = vq_nearest(z_view, e_view, backend=backend)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    _check_against_float64(z, e, *got)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_large_values_relative_tolerance(backend):
    # Offset data: ||z||^2 + ||e||^2 is ~1e4 times the distances, the expansion's worst case.
    z, e, targets = _separated(64, 40, 16, torch.float64, noise=0.3)
    z, e = (z + 100).float(), (e + 100).float()
    indices, dist = vq_nearest(z, e, backend=backend)
    assert torch.equal(indices, targets)
    _check_against_float64(z, e, indices, dist)


def test_reference_chunks_keep_first_minimum(monkeypatch):
    # Force row and codeword chunks of a few elements; duplicates straddle codeword chunks.
    monkeypatch.setattr(vq_module, "_REFERENCE_CHUNK_ELEMENTS", 24)
    z, e = _random(31, 20, 6, torch.float32)
    e[13] = e[2]
    z[0] = e[2]
    indices, dist = vq_nearest_reference(z, e)
    sq = _pairwise_sq(z, e)
    assert torch.equal(indices, sq.argmin(1))
    assert indices[0] == 2
    torch.testing.assert_close(dist, sq.min(1).values.float())


def test_cpu_matches_reference_on_a_larger_problem():
    # Several row blocks per thread and a codebook of 8 panels, D=64 as in the paper's setting.
    z, e = _random(1000, 512, 64, torch.float32, seed=3)
    indices, dist = vq_nearest(z, e, backend="cpu")
    assert _check_against_float64(z, e, indices, dist) > 990


def test_vq_nearest_bad_arguments():
    z, e = _random(4, 3, 5, torch.float32)
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        vq_nearest(z.numpy(), e)
    with pytest.raises(TypeError, match="codebook must have the dtype of z"):
        vq_nearest(z, e.double())
    with pytest.raises(TypeError, match="z must be float16"):
        vq_nearest(z.int(), e.int())
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\)"):
        vq_nearest(z[0], e)
    with pytest.raises(ValueError, match=r"codebook must have shape \(K, D\)"):
        vq_nearest(z, e[None])
    with pytest.raises(ValueError, match="z feature size must match codebook's D=5"):
        vq_nearest(z[:, :4], e)
    with pytest.raises(ValueError, match="K >= 1"):
        vq_nearest(z, e[:0])
    with pytest.raises(ValueError, match="D must be >= 1"):
        vq_nearest(z[:, :0], e[:, :0])
    with pytest.raises(ValueError, match="backend must be one of"):
        vq_nearest(z, e, backend="fastest")


# --------------------------------------------------------------------------- pipeline


def _bincount_per_batch(indices, k, batch_dims):
    if batch_dims == 0:
        return torch.bincount(indices.reshape(-1).long(), minlength=k)
    rows = [torch.bincount(indices[b].reshape(-1).long(), minlength=k) for b in range(indices.shape[0])]
    return torch.stack(rows) if rows else torch.zeros((0, k), dtype=torch.int64)



@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_monai_ema_quantizer(backend):
    vector_quantizer = pytest.importorskip("monai.networks.layers.vector_quantizer")
    torch.manual_seed(0)
    quantizer = vector_quantizer.EMAQuantizer(spatial_dims=3, num_embeddings=64, embedding_dim=8).eval()
    codebook = quantizer.embedding.weight.detach()
    targets = torch.randint(0, 64, (2, 4, 5, 3))
    z_e = codebook[targets] + 0.01 * torch.randn(2, 4, 5, 3, 8)  # channel last [B, H, W, D, C]
    _, _, monai_indices = quantizer.quantize(z_e.permute(0, 4, 1, 2, 3))
    indices, _ = vq_nearest(z_e.reshape(-1, 8), codebook, backend=backend)
    assert torch.equal(indices.view(2, 4, 5, 3), monai_indices)
    per_volume = codeword_histogram(indices.view(2, -1), 64, batch_dims=1, backend=backend)
    assert torch.equal(per_volume, _bincount_per_batch(monai_indices, 64, 1))


def test_torch_compile():
    z, e = _random(40, 16, 8, torch.float32)

    def radiomics(z, e):
        indices, dist = vq_nearest(z, e)
        return codeword_histogram(indices.view(4, 10), e.shape[0], batch_dims=1), dist.sum()

    compiled = torch.compile(radiomics, backend="eager", fullgraph=True)
    got, expected = compiled(z, e), radiomics(z, e)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
