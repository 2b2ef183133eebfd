"""Incremental inference on whole models (the project's, MONAI's) and through the drivers:
Occlusion, Shapley permutation chains, autocast, the approximate modes and their error report."""
import pytest
import torch

from mmxai_fast.incremental import (IncrementalPlan, IncrementalRunner, dense_evaluator, drilldown_occlusion,
                                    error_report, feature_boxes, occlusion, shapley)
from mmxai_fast.models import DenseNet3D, VGG3D
from mmxai_fast.ops import random_permutations
from test_incremental import boxes_for, check, randomise_norms


@pytest.mark.parametrize("factory", [lambda: VGG3D(in_channels=2, widths=(4, 8, 8), convs_per_block=2, pool="max"),
                                     lambda: DenseNet3D(in_channels=2, block_layers=(1, 2), growth=4, init_features=4)])
def test_project_models_exact(factory):
    torch.manual_seed(0)
    model = randomise_norms(factory())
    x = torch.randn(1, 2, 15, 12, 13)
    plan, _ = check(model, x, boxes_for((15, 12, 13), side=4), atol=1e-5)
    assert plan.unsupported == []


@pytest.mark.parametrize("name,boxes", [
    ("resnet18", [[[12, 20], [24, 32], [0, 8]]]),  # an edge box
    ("DenseNet121", [[[20, 28], [0, 8], [12, 20]]]),
])
def test_monai_models_exact(name, boxes):
    monai = pytest.importorskip("monai")
    torch.manual_seed(0)
    nets = monai.networks.nets
    model = (nets.resnet18(spatial_dims=3, n_input_channels=4, num_classes=2) if name == "resnet18" else
             nets.DenseNet121(spatial_dims=3, in_channels=4, out_channels=2))
    x = torch.randn(1, 4, 32, 32, 32)
    plan, _ = check(randomise_norms(model), x, boxes, atol=1e-5)
    assert plan.unsupported == []


def small_model():
    torch.manual_seed(0)
    return randomise_norms(VGG3D(in_channels=2, widths=(4, 8), hidden=8)).eval()


def test_occlusion_driver_matches_dense_and_captum():
    captum = pytest.importorskip("captum.attr")
    model, x = small_model(), torch.randn(1, 2, 10, 9, 11)
    inc = occlusion(model, x, (4, 3, 4), 3, baseline=0.5, target=1, chunk=7)
    dense = occlusion(model, x, (4, 3, 4), 3, baseline=0.5, target=1, incremental=False)
    ref = captum.Occlusion(model).attribute(x, sliding_window_shapes=(2, 4, 3, 4), strides=(1, 3, 3, 3),
                                            baselines=0.5, target=1)
    # the map holds differences of O(1) float32 outputs: absolute tolerance, not relative to the map
    assert (inc - dense).abs().max() <= 1e-6
    assert (inc - ref).abs().max() <= 1e-6


def test_shapley_chains_match_dense_chains():
    model, x = small_model(), torch.randn(1, 2, 9, 10, 8)
    mask = (torch.arange(9)[:, None, None] // 3 * 9 + torch.arange(10)[None, :, None] // 4 * 3
            + torch.arange(8)[None, None, :] // 3).unsqueeze(0)
    num_features = int(mask.max()) + 1
    perms = random_permutations(2, num_features, generator=torch.Generator().manual_seed(0))
    inc = shapley(model, x, mask, perms, baseline=0.0, target=0, chains=2)
    dense = shapley(model, x, mask, perms, baseline=0.0, target=0, chains=2, incremental=False)
    assert (inc - dense).abs().max() <= 1e-5 * dense.abs().max()
    with torch.no_grad():  # efficiency: the values add up to f(x) - f(baseline)
        gap = (model(x) - model(torch.zeros_like(x)))[0, 0]
    assert torch.allclose(inc.sum(), gap, atol=1e-5)


def test_feature_boxes():
    mask = torch.zeros(1, 5, 6, dtype=torch.long)
    mask[0, 1:3, 2:5] = 1
    mask[0, 4, 0] = 3
    boxes = feature_boxes(mask, 4, (5, 6))
    assert boxes[1].tolist() == [[1, 3], [2, 5]] and boxes[3].tolist() == [[4, 5], [0, 1]]
    assert boxes[2].tolist() == [[0, 0], [0, 0]]  # absent id: empty box


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_dense_autocast(dtype):
    model, x = small_model(), torch.randn(1, 2, 12, 12, 12)
    boxes = boxes_for((12, 12, 12), side=4)
    with torch.autocast("cpu", dtype=dtype):
        runner = IncrementalRunner(IncrementalPlan.from_module(model, x), x)
        from test_incremental import perturbed
        inputs = perturbed(x, boxes)
        out = runner.run(inputs, torch.tensor(boxes))
        with torch.no_grad():
            dense = model(inputs)
    with torch.no_grad():
        exact = model(inputs)
    # incremental error against float32 stays within 2x the error dense autocast itself makes
    dense_err = (dense.float() - exact).abs().max().item()
    assert (out.float() - exact).abs().max().item() <= 2 * dense_err + 1e-2 * exact.abs().max().item()


def test_threshold_one_is_exact_and_small_threshold_is_measured():
    model, x = small_model(), torch.randn(1, 2, 16, 16, 16)
    exact = occlusion(model, x, (4, 4, 4), 4)
    assert (occlusion(model, x, (4, 4, 4), 4, threshold=1.0) - exact).abs().max() <= 1e-6 * exact.abs().max()
    approx = occlusion(model, x, (4, 4, 4), 4, threshold=0.25)
    report = error_report(approx, exact)
    assert report["max_abs"] > 0 and -1 <= report["rank_correlation"] <= 1


def test_error_report_identical_and_disjoint():
    a = torch.arange(200.0)
    assert error_report(a, a) == {"max_abs": 0.0, "rank_correlation": 1.0, "top_overlap": 1.0}
    r = error_report(-a, a)
    assert r["rank_correlation"] == pytest.approx(-1.0) and r["top_overlap"] == 0.0


def test_drilldown_full_fraction_is_exact_and_partial_is_cheaper():
    model, x = small_model(), torch.randn(1, 2, 14, 13, 12)
    runner = IncrementalRunner(IncrementalPlan.from_module(model, x), x)
    exact = occlusion(model, x, (4, 4, 4), 2, runner=runner)
    full, stats = drilldown_occlusion(runner.run, runner.reference_output, x, (4, 4, 4), 2, fraction=1.0)
    assert stats["evaluated"] == stats["windows"] and (full - exact).abs().max() <= 1e-6  # float32 diffs
    part, stats = drilldown_occlusion(dense_evaluator(model), runner.reference_output, x, (4, 4, 4), 2,
                                      coarse_factor=2, fraction=0.1, focus=0.0)
    assert stats["evaluated"] < stats["windows"] / 2 and stats["rounds"] == 0
    assert error_report(part, exact)["rank_correlation"] > 0.5
    # the focus refinement makes the windows under the (optimistic) top region exact: more windows
    focused, fstats = drilldown_occlusion(runner, runner.reference_output, x, (4, 4, 4), 2, fraction=0.1)
    assert stats["evaluated"] < fstats["evaluated"] < fstats["windows"] and fstats["rounds"] >= 1
    assert error_report(focused, exact)["top_overlap"] >= error_report(part, exact)["top_overlap"]
    with pytest.raises(ValueError, match="focus must be in"):
        drilldown_occlusion(runner, runner.reference_output, x, (4, 4, 4), 2, focus=2.0)


def test_chain_memory_budget_is_enforced():
    model, x = small_model(), torch.zeros(1, 2, 8, 8, 8)
    runner = IncrementalRunner(IncrementalPlan.from_module(model, x), x, memory_budget=10 ** 6)
    with pytest.raises(ValueError, match="memory_budget"):
        runner.start_chains(10 ** 6 // runner.cache_bytes + 1)
    with pytest.raises(ValueError, match="chains must be"):
        runner.start_chains(0)
