import pytest
import torch

from mmxai_fast.ops.perturb import MASK_DTYPES, perturb, perturb_reference
from helpers import CPU_BACKENDS, FLOAT_DTYPES, assert_close_to_reference, non_contiguous

# (x shape, mask shape): odd sizes, 2D, 3D, 4-channel 3D with a full and a channel-shared mask.
CASES = [
    ((1,), (1,)),
    ((7,), (7,)),
    ((5, 123, 123), (5, 123, 123)),
    ((9, 13), (9, 13)),
    ((6, 11, 10), (6, 11, 10)),
    ((4, 6, 7, 5), (4, 6, 7, 5)),
    ((4, 6, 7, 5), (1, 6, 7, 5)),
    ((4, 6, 7, 5), (6, 7, 5)),
]


def _inputs(shape, mask_shape, num_rows, num_features=10, dtype=torch.float32, mask_dtype=torch.int64):
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    mask = torch.randint(0, num_features, mask_shape).to(mask_dtype)
    keep = torch.rand(num_rows, num_features) > 0.5
    return x, mask, keep


def _check(out, x, mask, keep, baseline):
    """Exact match with the reference in x's dtype (a select moves values unchanged), and the
    standard tolerance check against the float64 reference."""
    expected = perturb_reference(x, mask, keep, baseline)
    assert out.shape == (keep.shape[0],) + tuple(x.shape)
    assert out.dtype == x.dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    base64 = baseline.double() if isinstance(baseline, torch.Tensor) else baseline
    assert_close_to_reference(out, perturb_reference(x.double(), mask, keep, base64), x.dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,mask_shape", CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(backend, shape, mask_shape, dtype):
    x, mask, keep = _inputs(shape, mask_shape, num_rows=5, dtype=dtype)
    out = perturb(x, mask, keep, 0.25, backend=backend)
    _check(out, x, mask, keep, 0.25)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_mask_dtypes(backend, mask_dtype):
    x, mask, keep = _inputs((3, 8, 9), (1, 8, 9), num_rows=3, num_features=7, mask_dtype=mask_dtype)
    _check(perturb(x, mask, keep, -1.0, backend=backend), x, mask, keep, -1.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("num_rows", [0, 1, 37])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_batch_sizes(backend, num_rows, dtype):
    # 37 rows span several keep words of the cpu kernel for 16- and 32-bit elements.
    x, mask, keep = _inputs((2, 9, 21), (2, 9, 21), num_rows=num_rows, dtype=dtype)
    _check(perturb(x, mask, keep, backend=backend), x, mask, keep, 0.0)


def test_many_rows_cpu():
    x, mask, keep = _inputs((3, 50), (3, 50), num_rows=131, dtype=torch.float64)
    _check(perturb(x, mask, keep, 2.0, backend="cpu"), x, mask, keep, 2.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    x, mask, keep = _inputs((4, 10, 12), (4, 10, 12), num_rows=4)
    baseline = torch.randn(4, 10, 12)
    cases = [
        (non_contiguous(x), non_contiguous(mask), non_contiguous(baseline)),
        (x.transpose(0, 2), mask.transpose(0, 2), baseline.transpose(0, 2)),
        (x.permute(1, 2, 0), mask[:1].permute(1, 2, 0), baseline.permute(1, 2, 0)[..., :1]),
        (x[:, ::3, 1:], mask[:, ::3, 1:], 1.5),
        (torch.randn(1, 12).expand(10, 12), mask[0], baseline[0]),  # x itself broadcast (stride 0)
    ]
    for xv, mv, bv in cases:
        _check(perturb(xv, mv, keep, bv, backend=backend), xv, mv, keep, bv)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_label_gaps(backend):
    x = torch.randn(3, 17, 19)
    used = torch.tensor([0, 5, 17, 39])
    mask = used[torch.randint(0, 4, (17, 19))]
    keep = torch.rand(6, 40) > 0.5
    _check(perturb(x, mask, keep, backend=backend), x, mask, keep, 0.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_baseline_forms(backend, dtype):
    x, mask, keep = _inputs((4, 6, 7, 5), (1, 6, 7, 5), num_rows=3, dtype=dtype)
    baselines = [
        0, 3, -0.5,
        torch.tensor(0.7),
        torch.tensor(2.5, dtype=torch.float64),      # cast to x.dtype
        torch.randn(4, 6, 7, 5).to(dtype),           # full
        torch.randn(4, 1, 1, 1),                     # per channel
        torch.randn(7, 5),                           # fewer dims
        torch.randint(-3, 3, (1, 6, 7, 1)),          # integer tensor
    ]
    for baseline in baselines:
        _check(perturb(x, mask, keep, baseline, backend=backend), x, mask, keep, baseline)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_special_values_are_moved_bit_exactly(backend, dtype):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1.0, -2.0], dtype=dtype)
    baseline = torch.tensor([-0.0, float("nan"), 1.0, float("inf"), -0.0, float("nan")], dtype=dtype)
    mask = torch.tensor([0, 1, 0, 1, 0, 1], dtype=torch.int32)
    keep = torch.tensor([[True, False], [False, True], [True, True], [False, False]])
    out = perturb(x, mask, keep, baseline, backend=backend)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    kept = keep[:, mask.long()]
    expected = torch.where(kept, x.view(bits), baseline.view(bits))
    assert torch.equal(out.view(bits), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_dim_and_empty(backend):
    keep = torch.tensor([[True, False], [False, True], [False, False]])
    x = torch.tensor(3.0)
    out = perturb(x, torch.tensor(1), keep, torch.tensor(-1.0), backend=backend)
    assert out.shape == (3,) and out.tolist() == [-1.0, 3.0, -1.0]
    empty = torch.zeros(0, 5)
    assert perturb(empty, torch.zeros(1, 5, dtype=torch.int64), keep, backend=backend).shape == (3, 0, 5)
    with pytest.raises(ValueError, match="feature_mask"):  # the ids are checked even with no output
        perturb(empty, torch.full((1, 5), 2), keep, backend=backend)


def test_large_output_streaming_path_cpu():
    # >= 16 MB of output takes the non-temporal store path; odd row length misaligns every row.
    for dtype, num_rows in [(torch.float32, 7), (torch.float16, 14), (torch.float64, 4)]:
        x, mask, keep = _inputs((5, 123, 1001), (1, 123, 1001), num_rows, num_features=50, dtype=dtype)
        assert num_rows * x.numel() * x.element_size() >= 16 << 20
        _check(perturb(x, mask, keep, 0.5, backend="cpu"), x, mask, keep, 0.5)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_out_of_range_ids(backend):
    x, mask, keep = _inputs((3, 4, 5), (3, 4, 5), num_rows=2, num_features=10)
    bad_high = mask.clone()
    bad_high[1, 2, 3] = 10
    with pytest.raises(ValueError, match=r"feature_mask ids must be in \[0, 10\).*min 0, max 10"):
        perturb(x, bad_high, keep, backend=backend)
    bad_low = mask.clone()
    bad_low[0, 0, 0] = -4
    with pytest.raises(ValueError, match=r"feature_mask.*min -4, max 9"):
        perturb(x, bad_low, keep, backend=backend)
    with pytest.raises(ValueError, match=r"feature_mask ids must be in \[0, 6\)"):  # keep too narrow
        perturb(x, mask, keep[:, :6], backend=backend)


def test_validate_ids_false():
    x, mask, keep = _inputs((3, 4, 5), (1, 4, 5), num_rows=3)
    for backend in ("cpu", "triton", "reference"):
        _check(perturb(x, mask, keep, 0.5, backend=backend, validate_ids=False), x, mask, keep, 0.5)
    bad = mask.clone()
    bad[0, 1, 1] = 99
    with pytest.raises(ValueError, match="feature_mask"):  # checked within the cpu kernel's pass anyway
        perturb(x, bad, keep, backend="cpu", validate_ids=False)
    out = perturb(x, bad, keep, backend="triton", validate_ids=False)  # no out-of-bounds read
    good = (bad != 99).expand(x.shape)
    torch.testing.assert_close(out[:, good], perturb_reference(x, mask, keep)[:, good])


def test_bad_arguments_are_named():
    x, mask, keep = _inputs((2, 3, 4), (2, 3, 4), num_rows=2)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        perturb(x.numpy(), mask, keep)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        perturb(x.int(), mask, keep)
    with pytest.raises(TypeError, match="feature_mask must have an integer dtype"):
        perturb(x, mask.float(), keep)
    with pytest.raises(TypeError, match="feature_mask must have an integer dtype"):
        perturb(x, mask > 3, keep)
    with pytest.raises(TypeError, match="feature_mask must be a torch.Tensor"):
        perturb(x, mask.tolist(), keep)
    with pytest.raises(TypeError, match="keep must be a bool tensor"):
        perturb(x, mask, keep.int())
    with pytest.raises(ValueError, match=r"keep must have shape \(B, F\)"):
        perturb(x, mask, keep[0])
    with pytest.raises(ValueError, match="feature_mask of shape .* broadcastable to x"):
        perturb(x, mask[:, :2], keep)
    with pytest.raises(ValueError, match="feature_mask of shape .* broadcastable to x"):
        perturb(x, mask[None], keep)
    with pytest.raises(ValueError, match="baseline of shape .* broadcastable to x"):
        perturb(x, mask, keep, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="baseline must be a real number"):
        perturb(x, mask, keep, "zero")
    with pytest.raises(TypeError, match="baseline must be a real"):
        perturb(x, mask, keep, torch.zeros((), dtype=torch.complex64))
    meta = torch.device("meta")
    with pytest.raises(ValueError, match="keep must be on the same device"):
        perturb(x, mask, keep.to(meta))
    with pytest.raises(ValueError, match="feature_mask must be on the same device"):
        perturb(x, mask.to(meta), keep)
    with pytest.raises(ValueError, match="baseline must be on the same device"):
        perturb(x, mask, keep, torch.zeros((), device=meta))
    with pytest.raises(ValueError, match="backend must be one of"):
        perturb(x, mask, keep, backend="gpu")


def test_torch_compile():
    x, mask, keep = _inputs((4, 6, 7, 5), (1, 6, 7, 5), num_rows=3)

    def f(x, mask, keep):
        return perturb(x, mask, keep, 0.5).sum(0) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, mask, keep), f(x, mask, keep))
    bad = mask.clone()
    bad[0, 0, 0, 0] = 12
    with pytest.raises(ValueError, match="feature_mask"):
        compiled(x, bad, keep)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("shape,mask_shape", [((4, 6, 7, 5), (1, 6, 7, 5)), ((9, 13), (9, 13)), ((1,), (1,))])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_out_buffer_is_written_and_returned(backend, shape, mask_shape, dtype):
    x, mask, keep = _inputs(shape, mask_shape, num_rows=5, dtype=dtype)
    out = torch.full((5,) + shape, float("nan"), dtype=dtype)
    for trial in range(2):  # reuse: the second call overwrites every element of the first
        keep = torch.rand(5, 10) > 0.5
        result = perturb(x, mask, keep, 0.25, backend=backend, out=out)
        assert result is out
        _check(result, x, mask, keep, 0.25)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_buffer_slice_and_empty(backend):
    x, mask, keep = _inputs((3, 8, 9), (1, 8, 9), num_rows=4, num_features=7)
    buffer = torch.zeros((6, 3, 8, 9))
    result = perturb(x, mask, keep, -1.0, backend=backend, out=buffer[:4])  # a leading slice is contiguous
    _check(result, x, mask, keep, -1.0)
    assert bool((buffer[4:] == 0).all())
    assert perturb(x, mask, keep[:0], backend=backend, out=buffer[:0]).shape == (0, 3, 8, 9)


def test_out_buffer_streaming_path_cpu():
    x, mask, keep = _inputs((5, 123, 1001), (1, 123, 1001), 7, num_features=50)
    out = torch.empty((7,) + tuple(x.shape))
    _check(perturb(x, mask, keep, 0.5, backend="cpu", out=out), x, mask, keep, 0.5)


def test_out_buffer_bad_arguments_are_named():
    x, mask, keep = _inputs((2, 3, 4), (2, 3, 4), num_rows=2)
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        perturb(x, mask, keep, out=[0])
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float32 tensor of shape \(2, 2, 3, 4\)"):
        perturb(x, mask, keep, out=torch.empty(3, 2, 3, 4))
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32.*got a contiguous torch.float64"):
        perturb(x, mask, keep, out=torch.empty(2, 2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-contiguous"):
        perturb(x, mask, keep, out=torch.empty(2, 2, 4, 3).transpose(-1, -2))
    with pytest.raises(ValueError, match="out must be on the same device"):
        perturb(x, mask, keep, out=torch.empty(2, 2, 3, 4, device="meta"))
    big = torch.randn(3, 2, 3, 4)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        perturb(big[0], mask, keep, out=big[1:])


def test_out_buffer_torch_compile():
    x, mask, keep = _inputs((4, 6, 7, 5), (1, 6, 7, 5), num_rows=3)

    def f(x, mask, keep, out):
        return perturb(x, mask, keep, 0.5, out=out).sum(0) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, mask, keep, torch.empty(3, 4, 6, 7, 5)),
                               f(x, mask, keep, torch.empty(3, 4, 6, 7, 5)))
