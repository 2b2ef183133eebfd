import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import (Case, Explanation, RunStats, choose_axial_slice, modality_importance,
                                 plot_explanation, plot_modality_importance, scale_signed)
from mmxai_fast.pipeline.figures import smooth


def _explanation(attr, names=("t1", "t2")):
    return Explanation(attributions=attr, method="Saliency", target=1, feature_mask=None,
                       modality_importance=modality_importance(attr, names), stats=RunStats("Saliency", 2, 1.0, 0.5),
                       modalities=tuple(names))


def test_scale_signed_keeps_sign_and_ratios():
    attr = torch.tensor([[-4.0, 2.0], [1.0, 0.0]])
    out = scale_signed(attr)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.5], [0.25, 0.0]]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, 7, generator=g) * 1e-7
    y = scale_signed(x)
    assert float(y.abs().max()) == 1.0 and bool((y.abs() <= 1).all())
    assert torch.equal(torch.sign(y), torch.sign(x))
    torch.testing.assert_close(y * x.abs().max(), x)
    assert torch.equal(scale_signed(np.zeros((2, 3))), torch.zeros(2, 3))  # zero-safe, numpy accepted
    assert scale_signed(torch.zeros(0)).numel() == 0


def test_choose_axial_slice():
    roi = torch.zeros(6, 6, 5, dtype=torch.bool)
    roi[1:3, 1:3, 1] = True   # area 4
    roi[0:4, 0:3, 3] = True   # area 12: the largest
    assert choose_axial_slice(roi) == 3
    attr = torch.zeros(2, 6, 6, 5)
    attr[0, 0, 0, 2] = -5.0   # largest |attribution| is negative
    attr[1, :, :, 4] = 0.1    # total 3.6
    assert choose_axial_slice(attr) == 2
    assert choose_axial_slice(torch.ones(4, 4, 3)) == 0  # ties: lowest index
    with pytest.raises(ValueError, match=r"\[X, Y, Z\] volume"):
        choose_axial_slice(torch.ones(4, 4))


def test_smooth_is_per_modality():
    attr = torch.zeros(2, 9, 9, 9)
    attr[0, 4, 4, 4] = 1.0
    out = smooth(attr, 1.0)
    assert float(out[1].abs().max()) == 0.0
    assert 0 < float(out[0, 4, 4, 4]) < 1 and float(out[0, 5, 4, 4]) > 0
    torch.testing.assert_close(out.sum(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    assert torch.equal(smooth(attr, None), attr)


def _case(roi=True):
    fg = torch.ones(8, 7, 6, dtype=torch.bool)
    roi_mask = torch.zeros(8, 7, 6, dtype=torch.bool)
    if roi:
        roi_mask[2:5, 2:5, 4] = True
    return Case(torch.rand(2, 8, 7, 6), ("t1", "t2"), np.eye(4), foreground=fg, roi=roi_mask)


def test_plot_explanation_draws_the_scaled_heatmap_on_the_roi_slice():
    case = _case()
    attr = torch.randn(2, 8, 7, 6)
    attr[..., 1] *= 10  # attributions would pick slice 1, the ROI picks slice 4
    fig = plot_explanation(case, _explanation(attr))
    panels = [ax for ax in fig.axes if len(ax.images) == 2]  # anatomy + heatmap; the colorbar is extra
    assert len(panels) == 2 and len(fig.axes) == 3
    assert [ax.get_title().split()[0] for ax in panels] == ["t1", "t2"]
    heat = scale_signed(attr)
    for m, ax in enumerate(panels):
        np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), heat[m, :, :, 4].numpy().T)
        assert ax.images[1].get_cmap().name == "bwr"
        assert ax.images[1].norm.vmin == -1 and ax.images[1].norm.vmax == 1
    assert "axial slice 4" in fig._suptitle.get_text()


def test_plot_explanation_slice_choice_without_roi_and_explicit():
    attr = torch.zeros(2, 8, 7, 6)
    attr[1, 3, 3, 2] = -1.0
    fig = plot_explanation(_case(roi=False), _explanation(attr))
    assert "axial slice 2" in fig._suptitle.get_text()
    fig = plot_explanation(_case(roi=False), _explanation(attr), slice=5)
    assert "axial slice 5" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match=r"slice must be an int in \[0, 6\)"):
        plot_explanation(_case(), _explanation(attr), slice=6)


def test_plot_2d_case_and_importance_chart():
    case = Case(torch.rand(2, 8, 7), ("t1", "t2"), np.eye(4))
    fig = plot_explanation(case, _explanation(torch.randn(2, 8, 7)))
    assert len([ax for ax in fig.axes if len(ax.images) == 2]) == 2
    chart = plot_modality_importance({"t1": 0.25, "t2": 0.75})
    heights = [p.get_height() for p in chart.axes[0].patches]
    assert heights == pytest.approx([25.0, 75.0])
    assert plot_modality_importance(_explanation(torch.ones(2, 8, 7))).axes[0].get_title().startswith("Saliency")
