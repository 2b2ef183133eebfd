"""mmxai_fast.attr.Occlusion against captum.attr.Occlusion (Captum 0.9)."""
import inspect
import itertools
from unittest import mock

import captum.attr as ca
import pytest
import torch

import mmxai_fast.attr._perturbers as occ_module
from mmxai_fast.attr import AttributionInputError, Occlusion

ATOL, RTOL = 1e-5, 1e-4


class ConvNet(torch.nn.Module):
    """Small 3D conv net: [N, 2, 4, 5, 3] -> [N, 3]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 4 * 5 * 3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class TupleMLP(torch.nn.Module):
    """MLP over ([N, 6], [N, 2, 3]) with extra args (tensor [N, 1], float) -> [N, 3]."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, a, b, scale=None, shift=0.0):
        h = torch.cat([a, b.flatten(1)], 1)
        if scale is not None:
            h = h * scale
        return self.fc2(torch.tanh(self.fc1(h))) + shift


def _close(ours, theirs):
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def _both(model, *args, **kwargs):
    return Occlusion(model).attribute(*args, **kwargs), ca.Occlusion(model).attribute(*args, **kwargs)


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(1)
    return TupleMLP().eval()


CONV_GEOMETRY = [  # (window, strides): full, strided, stride not dividing (cropped), spanning dims
    ((1, 1, 1, 1), None),
    ((1, 2, 2, 2), (1, 2, 2, 1)),
    ((2, 3, 3, 2), 2),
    ((2, 4, 2, 3), (1, 3, 2, 2)),
]


@pytest.mark.parametrize("geometry,n,ppe", list(itertools.product(CONV_GEOMETRY, [1, 3], [1, 4])))
def test_conv_matches_captum(conv, geometry, n, ppe):
    window, strides = geometry
    x = torch.randn(n, 2, 4, 5, 3)
    target = 1 if n == 1 else [0, 2, 1]
    ours, theirs = _both(conv, x, sliding_window_shapes=window, strides=strides, target=target,
                         perturbations_per_eval=ppe)
    _close(ours, theirs)


@pytest.mark.parametrize("baselines", [None, 0.5, "tensor1", "tensorN"])
def test_conv_baselines(conv, baselines):
    x = torch.randn(3, 2, 4, 5, 3)
    if baselines == "tensor1":
        baselines = torch.randn(1, 2, 4, 5, 3)
    elif baselines == "tensorN":
        baselines = torch.randn(3, 2, 4, 5, 3)
    _close(*_both(conv, x, (1, 2, 3, 2), strides=(1, 1, 2, 1), baselines=baselines, target=2,
                  perturbations_per_eval=4))


@pytest.mark.parametrize("target", [0, torch.tensor(2), torch.tensor([0, 1, 2]), [2, 2, 0]])
def test_conv_targets(conv, target):
    x = torch.randn(3, 2, 4, 5, 3)
    _close(*_both(conv, x, (2, 2, 2, 2), strides=2, target=target, perturbations_per_eval=3))


@pytest.mark.parametrize("n,ppe,strides", list(itertools.product([1, 3], [1, 4], [None, (2, (1, 2)), ((3,), 1)])))
def test_tuple_mlp_matches_captum(mlp, n, ppe, strides):
    a, b = torch.randn(n, 6), torch.randn(n, 2, 3)
    scale = torch.rand(n, 1) + 0.5
    baselines = (torch.randn(1, 6), 0.25)
    target = 1 if n == 1 else [2, 0, 1]
    ours, theirs = _both(mlp, (a, b), sliding_window_shapes=((3,), (1, 2)), strides=strides,
                         baselines=baselines, target=target, additional_forward_args=(scale, 0.1),
                         perturbations_per_eval=ppe)
    assert isinstance(ours, tuple)
    _close(ours, theirs)


def test_no_target_scalar_per_example_and_1d_inputs():
    def model(a, b):  # scalar per example; b is 1-d [N]
        return (a ** 2).sum(1) + 3 * b

    a, b = torch.randn(3, 5), torch.randn(3)
    _close(*_both(model, (a, b), ((2,), ()), strides=(1, 1), baselines=(0.0, torch.randn(3)),
                  perturbations_per_eval=2))


def test_float64_model_and_auto(conv):
    model = ConvNet().double().eval()
    x = torch.randn(2, 2, 4, 5, 3, dtype=torch.float64)
    theirs = ca.Occlusion(model).attribute(x, (1, 3, 3, 2), strides=(1, 2, 2, 1), target=0)
    ours = Occlusion(model).attribute(x, (1, 3, 3, 2), strides=(1, 2, 2, 1), target=0,
                                      perturbations_per_eval="auto")
    _close(ours, theirs)


def test_batches_built_by_occlusion_batch(conv):
    x = torch.randn(2, 2, 4, 5, 3)
    with mock.patch.object(occ_module, "occlusion_batch", wraps=occ_module.occlusion_batch) as spy:
        Occlusion(conv).attribute(x, (2, 2, 2, 2), strides=2, target=0, perturbations_per_eval=4)
    windows = 1 * 2 * 3 * 2
    assert spy.call_count == -(-windows // 4)


def test_show_progress(conv, capsys):
    x = torch.randn(1, 2, 4, 5, 3)
    _close(*_both(conv, x, (2, 4, 5, 3), target=0, show_progress=True))
    assert "Occlusion attribution" in capsys.readouterr().err


def test_signature_matches_captum():
    ours = inspect.signature(Occlusion.attribute).parameters.values()
    theirs = list(inspect.signature(ca.Occlusion.attribute).parameters.values())
    assert [p for p in ours if p.kind != p.KEYWORD_ONLY] == theirs
    assert [(p.name, p.default) for p in ours if p.kind == p.KEYWORD_ONLY] == [("incremental", None)]  # extension
    assert inspect.signature(Occlusion.__init__) == inspect.signature(ca.Occlusion.__init__)
    assert issubclass(Occlusion, ca.Occlusion)


def test_bad_arguments(conv, mlp):
    x = torch.randn(2, 2, 4, 5, 3)
    occ = Occlusion(conv)
    with pytest.raises(AttributionInputError, match="sliding_window_shapes\\[0\\] must have 4 dims"):
        occ.attribute(x, (2, 2), target=0)
    with pytest.raises(AttributionInputError, match="cannot exceed"):
        occ.attribute(x, (3, 2, 2, 2), target=0)
    with pytest.raises(AttributionInputError, match="strides\\[0\\].*cannot be larger"):
        occ.attribute(x, (1, 2, 2, 2), strides=(1, 3, 1, 1), target=0)
    with pytest.raises(AttributionInputError, match="strides\\[0\\] must be an int or a tuple of 4"):
        occ.attribute(x, (1, 2, 2, 2), strides=(1, 1), target=0)
    with pytest.raises(AttributionInputError, match="perturbations_per_eval"):
        occ.attribute(x, (1, 2, 2, 2), target=0, perturbations_per_eval=0)
    with pytest.raises(AttributionInputError, match="baselines\\[0\\] must be broadcastable"):
        occ.attribute(x, (1, 2, 2, 2), target=0, baselines=torch.zeros(3, 3))
    with pytest.raises(AttributionInputError, match="one shape per input"):
        Occlusion(mlp).attribute((torch.randn(2, 6), torch.randn(2, 2, 3)), (3,), target=0)
    with pytest.raises(AssertionError):  # Captum-style catch still works
        occ.attribute(x, (3, 2, 2, 2), target=0)
