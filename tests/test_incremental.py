"""Exactness of incremental inference: IncrementalRunner.run equals dense inference for every
supported layer type, boxes at corners / edges / centre, odd sizes, 2D and 3D.

Layer tests run in float64 (tolerance 1e-10: only summation order differs); model tests in float32
against dense float32 (tolerance 1e-5 relative to the output scale)."""
import pytest
import torch
from torch import nn

from mmxai_fast.incremental import IncrementalPlan, IncrementalRunner


def perturbed(x, boxes, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = x.repeat(len(boxes), *([1] * (x.dim() - 1)))
    for b, box in enumerate(boxes):
        sl = (b, slice(None)) + tuple(slice(lo, hi) for lo, hi in box)
        out[sl] = torch.randn(out[sl].shape, generator=g, dtype=x.dtype)
    return out


def boxes_for(spatial, side=3):
    """Corner, far corner, centre and an edge box, clipped to the map."""
    lo_corner = [[0, min(side, n)] for n in spatial]
    hi_corner = [[max(n - side, 0), n] for n in spatial]
    centre = [[n // 2 - 1, min(n // 2 + side - 1, n)] for n in spatial]
    edge = [[0, min(side, spatial[0])]] + [[n // 2, n // 2 + 1] for n in spatial[1:]]
    return [lo_corner, hi_corner, centre, edge]


def check(model, x, boxes, atol, **runner_kwargs):
    model = model.eval()
    plan = IncrementalPlan.from_module(model, x)
    runner = IncrementalRunner(plan, x, **runner_kwargs)
    inputs = perturbed(x, boxes)
    with torch.no_grad():
        dense = model(inputs)
    out = runner.run(inputs, torch.tensor(boxes))
    scale = dense.abs().max().item() + 1e-12
    assert (out - dense).abs().max().item() <= atol * scale, plan.report()
    return plan, runner


def randomise_norms(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and \
                m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


class Residual(nn.Module):
    def __init__(self, conv, ch, stride=1):
        super().__init__()
        self.a = conv(ch, ch, 3, stride, 1)
        self.b = conv(ch, ch, 3, 1, 1)
        self.skip = conv(ch, ch, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.b(torch.relu(self.a(x))) + self.skip(x)) * 0.5


class Dense(nn.Module):
    def __init__(self, conv, ch):
        super().__init__()
        self.c1 = conv(ch, 4, 3, 1, 1)
        self.c2 = conv(ch + 4, 4, 3, 1, 2, 2)

    def forward(self, x):
        x = torch.cat([x, self.c1(x)], 1)
        return torch.cat([x, torch.sigmoid(self.c2(x))], dim=1)


def layers(nd):
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[nd]
    bn, inorm = {2: (nn.BatchNorm2d, nn.InstanceNorm2d), 3: (nn.BatchNorm3d, nn.InstanceNorm3d)}[nd]
    maxpool, avgpool = {2: (nn.MaxPool2d, nn.AvgPool2d), 3: (nn.MaxPool3d, nn.AvgPool3d)}[nd]
    return {
        "conv3": nn.Sequential(conv(3, 5, 3, padding=1)),
        "conv_k4_s3_p2": nn.Sequential(conv(3, 5, 4, stride=3, padding=2)),
        "conv_stride2": nn.Sequential(conv(3, 5, 3, stride=2, padding=1), nn.ReLU(), conv(5, 4, 3, stride=2)),
        "conv_dilation2": nn.Sequential(conv(3, 5, 3, padding=2, dilation=2), nn.LeakyReLU(0.1)),
        "conv_grouped": nn.Sequential(conv(3, 6, 3, padding=1, groups=3), conv(6, 4, 3, padding=1, groups=2)),
        "conv_1x1_nopad": nn.Sequential(conv(3, 5, 1), nn.GELU(), conv(5, 4, 2)),
        "maxpool_k3_s2_p1": nn.Sequential(conv(3, 4, 3, padding=1), maxpool(3, 2, 1)),
        "maxpool_ceil_dilated": nn.Sequential(conv(3, 4, 3), maxpool(2, 2, ceil_mode=True), maxpool(2, 1, 0, 2)),
        "avgpool": nn.Sequential(conv(3, 4, 3, padding=1), avgpool(2), avgpool(3, 2, 1)),
        "batchnorm_eval": nn.Sequential(conv(3, 4, 3, padding=1), bn(4), nn.ReLU(inplace=True)),
        "instancenorm_running": nn.Sequential(conv(3, 4, 3), inorm(4, track_running_stats=True), nn.SiLU()),
        "activations": nn.Sequential(nn.Tanh(), conv(3, 4, 3, padding=1), nn.ELU(), nn.Hardswish(), nn.PReLU(4),
                                     nn.Dropout(0.5), nn.Softplus()),
        "residual": nn.Sequential(conv(3, 4, 3, padding=1), Residual(conv, 4), Residual(conv, 4, stride=2)),
        "dense_block": nn.Sequential(Dense(conv, 3), conv(11, 3, 3, stride=2, padding=1)),
    }


@pytest.mark.parametrize("nd,spatial", [(3, (11, 9, 13)), (2, (17, 14))])
@pytest.mark.parametrize("name", list(layers(3)))
def test_layer_exact(nd, spatial, name):
    torch.manual_seed(0)
    model = randomise_norms(layers(nd)[name]).double()
    x = torch.randn(1, 3, *spatial, dtype=torch.float64)
    plan, _ = check(model, x, boxes_for(spatial), atol=1e-10)
    assert plan.unsupported == [], plan.report()


def test_box_covering_whole_map_and_unit_boxes():
    torch.manual_seed(0)
    model = layers(3)["residual"].double()
    x = torch.randn(1, 3, 7, 8, 9, dtype=torch.float64)
    full = [[0, 7], [0, 8], [0, 9]]
    unit = [[6, 7], [0, 1], [4, 5]]
    empty = [[3, 3], [2, 2], [1, 1]]  # unchanged row
    check(model, x, [full, unit, empty], atol=1e-10)


class Partly(nn.Module):
    """GroupNorm (not per-position), a map-sized pooling and an in-place op on a shared value."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(2, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.c2 = nn.Conv3d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.c1(x)
        z = self.c2(self.gn(torch.relu(y)))
        return self.head(nn.functional.adaptive_max_pool3d(z, 1).flatten(1))


class SharedInplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(2, 3, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        z = nn.functional.relu(y, inplace=True)
        return z + y


def test_partly_supported_model_falls_back_with_report():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 9, 8, 7, dtype=torch.float64)
    plan, _ = check(Partly().double(), x, boxes_for((9, 8, 7)), atol=1e-10)
    assert [name for name, _ in plan.unsupported] == ["gn"]
    assert "GroupNorm" in plan.report()
    plan, _ = check(SharedInplace().double(), x, boxes_for((9, 8, 7)), atol=1e-10)
    assert plan.unsupported and "in-place" in plan.unsupported[0][1]


def test_adaptive_pool_not_global_falls_back_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten())
    x = torch.randn(1, 1, 13, 11, dtype=torch.float64)
    plan, _ = check(model.double(), x, boxes_for((13, 11)), atol=1e-10)
    assert "global pooling" in plan.report()


def test_memory_budget_cuts_the_cache_and_stays_exact():
    torch.manual_seed(0)
    model = layers(3)["residual"].double()
    x = torch.randn(1, 3, 9, 9, 9, dtype=torch.float64)
    _, full = check(model, x, boxes_for((9, 9, 9)), atol=1e-10)
    budget = full.cache_bytes // 3
    _, cut = check(model, x, boxes_for((9, 9, 9)), atol=1e-10, memory_budget=budget)
    assert cut.dense_from is not None and cut.cache_bytes <= budget < full.cache_bytes


def test_predicted_speedup_tracks_box_size():
    model = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.zeros(1, 2, 32, 32, 32)
    runner = IncrementalRunner(IncrementalPlan.from_module(model.eval(), x), x)
    small = runner.predicted_speedup(torch.tensor([[[10, 14]] * 3]))
    full = runner.predicted_speedup(torch.tensor([[[0, 32]] * 3]))
    # conv FLOPs dominate: the boxes grow 4 -> 6 -> 8, ratios 32^3 / 6^3 = 152 and 32^3 / 8^3 = 64
    assert 64 < small < 152 and 0.9 < full < 1.01


def test_bad_arguments_name_the_argument():
    model = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    x = torch.zeros(1, 1, 8, 8)
    plan = IncrementalPlan.from_module(model, x)
    runner = IncrementalRunner(plan, x)
    with pytest.raises(ValueError, match="boxes must have shape"):
        runner.run(x, torch.zeros(1, 3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="inputs must have shape"):
        runner.run(torch.zeros(1, 1, 8, 9), [[[0, 1], [0, 1]]])
    with pytest.raises(ValueError, match="reference_input must have shape"):
        IncrementalRunner(plan, torch.zeros(1, 1, 9, 8))
    with pytest.raises(ValueError, match="threshold must be"):
        IncrementalRunner(plan, x, threshold=0.0)
    with pytest.raises(ValueError, match="example_input must be"):
        IncrementalPlan.from_module(model, torch.zeros(8, 8))


def test_patch_inputs_equal_dense_for_runs_and_chains():
    torch.manual_seed(0)
    model = randomise_norms(layers(3)["residual"]).double().eval()
    x = torch.randn(1, 3, 9, 10, 11, dtype=torch.float64)
    runner = IncrementalRunner(IncrementalPlan.from_module(model, x), x, min_parallel_flops=0)
    starts = torch.tensor([[0, 0, 0], [6, 7, 8], [3, 4, 2]])
    patch = torch.randn(3, 3, 3, 3, 3, dtype=torch.float64)
    full = x.repeat(3, 1, 1, 1, 1)
    for r, (a, b, c) in enumerate(starts.tolist()):
        full[r, :, a:a + 3, b:b + 3, c:c + 3] = patch[r]
    threads = torch.get_num_threads()
    with torch.no_grad():
        assert (runner.run_patch(patch, starts) - model(full)).abs().max() <= 1e-10
        assert torch.get_num_threads() == threads
        states = runner.start_chains(3)
        runner.step_patch(states, patch, starts)
        # second step: each chain changes another box of its own previous input
        starts2 = torch.tensor([[1, 1, 1], [0, 6, 0], [3, 5, 3]])
        patch2 = torch.randn(3, 3, 2, 4, 2, dtype=torch.float64)
        for r, (a, b, c) in enumerate(starts2.tolist()):
            full[r, :, a:a + 2, b:b + 4, c:c + 2] = patch2[r]
        assert (runner.step_patch(states, patch2, starts2) - model(full)).abs().max() <= 1e-10
        # a full-input step after patch steps sees the same chain inputs
        full[0, :, 8, 9, 10] = 5.0
        assert (runner.step(states, full, [[[8, 9], [9, 10], [10, 11]]] * 3) - model(full)).abs().max() <= 1e-10
    with pytest.raises(ValueError, match="starts must place the patch inside the map"):
        runner.run_patch(patch, torch.tensor([[7, 0, 0]] * 3))
    with pytest.raises(ValueError, match="patch must have shape"):
        runner.run_patch(patch[:, :2], starts)
    with pytest.raises(ValueError, match="starts must have shape"):
        runner.run_patch(patch, starts[:2])


def test_several_boxes_per_row_split_or_merged_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 4, 3, padding=1),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(1, 2, 32, 32, 32, dtype=torch.float64)
    runner = IncrementalRunner(IncrementalPlan.from_module(model, x), x)
    far = [[[0, 2]] * 3, [[29, 31]] * 3]  # opposite corners: two small boxes beat their bounding box
    near = [[[5, 7]] * 3, [[8, 10]] * 3]  # halos meet: recomputed as one box
    empty = [[[3, 5], [3, 5], [3, 5]], [[9, 9], [0, 0], [0, 0]]]  # an empty part is ignored
    boxes = torch.tensor([far, near, empty])
    inputs = perturbed(x, [[[0, 32]] * 3] * 3)
    for r, row in enumerate(boxes.tolist()):  # rows equal x outside their boxes
        keep = torch.ones(32, 32, 32, dtype=torch.bool)
        for box in row:
            keep[tuple(slice(a, b) for a, b in box)] = False
        inputs[r][:, keep] = x[0][:, keep]
    with torch.no_grad():
        dense = model(inputs)
    assert (runner.run(inputs, boxes) - dense).abs().max() <= 1e-10
    assert runner.last_virtual_rows == 4  # far split in two, near merged by the check, empty part dropped
    assert (runner.run(inputs[:1], boxes[:1]) - dense[:1]).abs().max() <= 1e-10
    assert runner.last_virtual_rows == 2
    states = runner.start_chains(3)  # chains: separate boxes read the updated states, always exact
    assert (runner.step(states, inputs, boxes) - dense).abs().max() <= 1e-10
    assert runner.last_virtual_rows in (4, 5)  # near: merged or split by cost
