"""The channels-last 2x2x2 average pool: against PyTorch's pool in float64, the calls it leaves to
PyTorch, the layout it keeps, and its use by the Evaluator's model caller."""
import pytest
import torch
import torch.nn.functional as F

from mmxai_fast.attr import _channels_last_pool as clpool
from mmxai_fast.attr._evaluator_policy import ModelCaller
from mmxai_fast.attr._model_policy import ModelPolicy

CL = torch.channels_last_3d


def _cl(*shape, dtype=torch.float32):
    torch.manual_seed(sum(shape))
    return torch.randn(*shape, dtype=dtype).contiguous(memory_format=CL)


@pytest.mark.parametrize("shape, ceil_mode", [((1, 16, 8, 8, 8), False), ((2, 3, 6, 4, 10), False),
                                              ((1, 5, 7, 9, 5), False), ((1, 4, 6, 6, 6), True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spelling", [dict(kernel_size=2), dict(kernel_size=(2, 2, 2), stride=2),
                                      dict(kernel_size=[2, 2, 2], stride=(2, 2, 2), padding=(0, 0, 0))])
def test_matches_pytorchs_pool_and_keeps_channels_last(shape, ceil_mode, dtype, spelling):
    x = _cl(*shape, dtype=dtype)
    assert clpool._takes_fast_path(x, spelling["kernel_size"], spelling.get("stride"), spelling.get("padding", 0),
                                   ceil_mode, None)
    got = clpool.avg_pool3d(x, ceil_mode=ceil_mode, **spelling)
    exact = F.avg_pool3d(x.double().contiguous(), ceil_mode=ceil_mode, **spelling)
    assert got.shape == exact.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=CL)
    tol = 2e-7 if dtype == torch.float32 else 1e-15  # float32: within the rounding of an 8-term sum
    assert float((got.double() - exact).abs().max()) <= tol * float(exact.abs().max())


@pytest.mark.parametrize("x, kwargs", [
    (torch.randn(1, 4, 8, 8, 8), dict(kernel_size=2)),                                  # plain layout
    (_cl(1, 4, 8, 8, 8), dict(kernel_size=3, stride=2)),                                # another kernel
    (_cl(1, 4, 8, 8, 8), dict(kernel_size=2, stride=1)),                                # overlapping windows
    (_cl(1, 4, 8, 8, 8), dict(kernel_size=2, padding=1)),                               # padding
    (_cl(1, 4, 8, 8, 8), dict(kernel_size=2, divisor_override=3)),
    (_cl(1, 4, 7, 8, 8), dict(kernel_size=2, ceil_mode=True)),                          # a partial last window
    (_cl(1, 1, 8, 8, 8), dict(kernel_size=2)),                                          # one channel
    (_cl(1, 4, 2, 8, 9), dict(kernel_size=2, ceil_mode=True)),                          # an odd axis, ceil
])
def test_other_calls_go_to_pytorch_unchanged(x, kwargs):
    expected = F.avg_pool3d(x, **kwargs)
    got = clpool.avg_pool3d(x, **kwargs)
    assert torch.equal(got, expected) and got.stride() == expected.stride()


def test_half_precision_is_left_to_pytorch():  # whose CPU pool accumulates in float32
    assert not clpool._takes_fast_path(_cl(1, 4, 8, 8, 8).bfloat16(), 2, None, 0, False, None)
    assert not clpool._takes_fast_path(_cl(1, 4, 8, 8, 8).half(), 2, None, 0, False, None)


def test_gradients_match_pytorchs():
    x = _cl(1, 3, 6, 6, 6, dtype=torch.float64).requires_grad_()
    weights = torch.randn(1, 3, 3, 3, 3, dtype=torch.float64)
    (clpool.avg_pool3d(x, 2) * weights).sum().backward()
    got, x.grad = x.grad, None
    (F.avg_pool3d(x, 2) * weights).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-12, atol=1e-14)


def test_the_block_replaces_functional_avg_pool3d_and_restores_it():
    original = F.avg_pool3d
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AvgPool3d(2))
    x = _cl(1, 2, 8, 8, 8)
    with torch.no_grad():
        expected = model(x)
        assert not expected.is_contiguous(memory_format=CL)  # PyTorch's pool drops the layout
        with clpool.channels_last_pooling():
            with clpool.channels_last_pooling():  # nested blocks: replaced once, restored at the outer end
                assert F.avg_pool3d is clpool.avg_pool3d
            assert F.avg_pool3d is clpool.avg_pool3d
            got = model(x)
        with clpool.channels_last_pooling(False):
            assert F.avg_pool3d is original
    assert F.avg_pool3d is original
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_model_calls_in_channels_last_keep_the_layout_through_pools():
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.AvgPool3d(2)
            self.head = torch.nn.Conv3d(4, 2, 3, padding=1)

        def forward(self, x):
            pooled = self.pool(self.conv(x))
            seen.append(pooled.is_contiguous(memory_format=CL))
            return self.head(pooled).mean((2, 3, 4))

    model, x = Net().eval(), torch.randn(1, 2, 8, 8, 8)
    caller = ModelCaller(model, ModelPolicy(), None, lambda text: None)
    caller.channels_last = True
    got = caller(x)
    caller.channels_last = False
    plain = caller(x)
    assert seen == [True, False]
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)
    assert F.avg_pool3d is clpool._ORIGINAL
