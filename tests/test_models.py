import pytest
import torch

from mmxai_fast.models import DenseNet3D, VGG3D, last_conv_layer


@pytest.mark.parametrize("model_cls,classes", [(VGG3D, 2), (DenseNet3D, 3)])
@pytest.mark.parametrize("shape", [(2, 4, 16, 16, 16), (1, 4, 17, 20, 15)])
def test_output_shape_and_batch_independence(model_cls, classes, shape):
    model = model_cls(in_channels=shape[1], num_classes=classes).eval()
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], classes)
    torch.testing.assert_close(model(x[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_channels_last_3d_gives_the_same_logits():
    model = VGG3D(in_channels=4, num_classes=2).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    ref = model(x)
    out = model.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_last_conv_layer():
    model = VGG3D(widths=(4, 8))
    assert last_conv_layer(model) is model.features[1][0]
    with pytest.raises(ValueError, match="no Conv2d/Conv3d"):
        last_conv_layer(torch.nn.Linear(2, 2))


def test_vgg_pool_option():
    assert isinstance(VGG3D(pool="max").pool, torch.nn.AdaptiveMaxPool3d)
    assert isinstance(VGG3D().pool, torch.nn.AdaptiveAvgPool3d)
    with pytest.raises(ValueError, match="pool must be 'avg' or 'max'"):
        VGG3D(pool="sum")
