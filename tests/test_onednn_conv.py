"""oneDNN for the conv3d calls PyTorch would run on its slow batch-1 path (attr/_onednn_conv.py):
same results as PyTorch's own path (float32 against a float64 reference, 1e-4 relative to the
output's scale), the calls that must pass through untouched, and the policy plumbing."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmxai_fast.attr._model_policy import ModelPolicy
from mmxai_fast.attr._onednn_conv import _ORIGINAL, ConvCounter, onednn_conv3d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")

CASES = [  # (in, out, size, kernel, stride, padding, dilation, groups, bias)
    (4, 8, 12, 3, 1, 1, 1, 1, False),
    (4, 8, 11, 3, 2, 1, 1, 1, True),
    (4, 6, 13, 3, 1, 2, 2, 1, True),
    (2, 4, (9, 12, 10), (3, 1, 3), (1, 2, 1), (1, 0, 1), 1, 1, False),
]


def _reference(x, w, b, stride, padding, dilation, groups):
    return F.conv3d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups)


@pytest.mark.parametrize("cin,cout,size,k,stride,padding,dilation,groups,bias", CASES)
def test_rerouted_calls_match_float64(cin, cout, size, k, stride, padding, dilation, groups, bias):
    torch.manual_seed(0)
    size = (size,) * 3 if isinstance(size, int) else size
    k = (k,) * 3 if isinstance(k, int) else k
    x = torch.randn(1, cin, *size)
    w = torch.randn(cout, cin // groups, *k)
    b = torch.randn(cout) if bias else None
    counter = ConvCounter()
    with torch.no_grad(), onednn_conv3d(counter=counter):
        got = F.conv3d(x, w, b, stride, padding, dilation, groups)
    ref = _reference(x, w, b, stride, padding, dilation, groups)
    assert counter.total == 1 and counter.rerouted == 1
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_untouched_calls_pass_through():
    torch.manual_seed(0)
    w3, w1 = torch.randn(4, 2, 3, 3, 3), torch.randn(4, 2, 1, 1, 1)
    x = torch.randn(1, 2, 10, 10, 10)
    counter = ConvCounter()
    with onednn_conv3d(counter=counter):
        with torch.no_grad():
            F.conv3d(x.double(), w3.double(), padding=1)            # float64
            F.conv3d(x, w1)                                         # 1x1x1 under "auto"
            F.conv3d(x, w3, padding="same")                         # string padding
            F.conv3d(torch.randn(2, 2, 10, 10, 10), w3, padding=1)  # PyTorch already picks oneDNN
            F.conv3d(x[0], w3, padding=1)                           # unbatched input
            F.conv3d(x, torch.randn(4, 1, 3, 3, 3), padding=1, groups=2)  # grouped: PyTorch picks oneDNN
        xg = x.clone().requires_grad_()
        F.conv3d(xg, w3, padding=1).sum().backward()                # gradients wanted
    assert counter.total == 7 and counter.rerouted == 0
    assert xg.grad is not None and xg.grad.shape == x.shape
    counter = ConvCounter()
    with torch.no_grad(), onednn_conv3d(True, counter):
        F.conv3d(x, w1)
    assert counter.rerouted == 1


def test_channels_last_1x1_kernels_run_on_onednn_and_keep_the_layout():
    torch.manual_seed(0)
    w1 = torch.randn(8, 4, 1, 1, 1, dtype=torch.float64)
    x = torch.randn(1, 4, 10, 10, 10, dtype=torch.float64)
    xc = x.float().contiguous(memory_format=torch.channels_last_3d)
    assert not F.conv3d(xc, w1.float()).is_contiguous(memory_format=torch.channels_last_3d)  # PyTorch's slow path
    counter = ConvCounter()
    with torch.no_grad(), onednn_conv3d("auto", counter):
        got = F.conv3d(xc, w1.float())
    assert counter.rerouted == 1 and got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got.double(), F.conv3d(x, w1), rtol=1e-5, atol=1e-5)


def test_modules_and_padding_modes_match_outside_the_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                          nn.Conv3d(6, 4, 3, padding=1, bias=False)).eval()
    x = torch.randn(1, 3, 14, 14, 14)
    with torch.no_grad():
        ref = model.double()(x.double())
        model.float()
        counter = ConvCounter()
        with onednn_conv3d(counter=counter):
            got = model(x)
    assert counter.rerouted == 2
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_conv3d_restored_after_errors_and_nesting():
    original = F.conv3d
    with pytest.raises(ValueError):
        with onednn_conv3d():
            assert F.conv3d is not original
            raise ValueError("boom")
    assert F.conv3d is original
    with onednn_conv3d():
        with onednn_conv3d():
            pass
        assert F.conv3d is not original  # the outer block is still open
    assert F.conv3d is original
    with onednn_conv3d(False):
        assert F.conv3d is original


@pytest.mark.parametrize("setting, said", [("auto", True), (False, False)])
def test_patched_captum_reroutes_and_reports(setting, said):
    import captum.attr

    import mmxai_fast
    from mmxai_fast.attr._model_policy import REPORT, reset_report

    with pytest.raises(ValueError, match="onednn_conv must be one of"):
        ModelPolicy(onednn_conv="yes")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.randn(1, 2, 12, 12, 12)
    mask = (torch.arange(12 ** 3).reshape(1, 1, 12, 12, 12) // 432).expand(1, 2, 12, 12, 12)
    expected = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    reset_report()
    try:
        with mmxai_fast.patch_captum(batch="keep", onednn_conv=setting):
            got = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    finally:
        mmxai_fast.unpatch_captum()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert ("oneDNN conv3d: 1 of 1 conv3d calls" in " ".join(REPORT["FeatureAblation"].notes)) is said
    assert F.conv3d is _ORIGINAL
