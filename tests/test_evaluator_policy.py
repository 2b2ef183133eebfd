"""The Evaluator's speed policies for ``perturbations_per_eval="auto"`` without any patch: the
throughput ramp on the attribution's own rows, the batch-dependence check, layout and inference mode."""
import captum.attr
import pytest
import torch

from mmxai_fast.attr import FeatureAblation, Lime, Occlusion, _evaluator_policy
from mmxai_fast.attr._evaluator_policy import ChunkPlanner, ModelCaller
from mmxai_fast.attr._model_policy import ModelPolicy


class Counting(torch.nn.Module):
    """A small 3D conv net that records the batch size of every call."""

    def __init__(self, train_bn=False, cross_sample=False):
        super().__init__()
        torch.manual_seed(0)
        layers = [torch.nn.Conv3d(2, 4, 3, padding=1)] + ([torch.nn.BatchNorm3d(4)] if train_bn else [])
        self.net = torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(2), torch.nn.Flatten(),
                                       torch.nn.Linear(32, 3))
        self.cross_sample = cross_sample
        self.batches = []
        self.inference = []
        self.channels_last = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] > 1)
        out = self.net(x)
        return out - out.mean(0, keepdim=True) + out if self.cross_sample else out


def _case():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 8, 8, 8)
    mask = (torch.arange(512).reshape(1, 1, 8, 8, 8) // 32).expand(1, 2, 8, 8, 8).contiguous()  # 16 features
    return x, mask


def test_fast_models_go_straight_to_the_cap_with_the_check_row(monkeypatch):
    monkeypatch.setattr(_evaluator_policy, "FAST_CALL_S", 60.0)  # "fast" whatever the machine's load
    model, (x, mask) = Counting().eval(), _case()
    FeatureAblation(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval="auto")
    assert model.batches == [1, 17]  # the reference alone, then all 16 rows and the check row


def test_auto_grows_the_chunk_on_real_rows_and_keeps_results(monkeypatch):
    monkeypatch.setattr(_evaluator_policy, "FAST_CALL_S", 0.0)  # ramp even for this tiny model
    monkeypatch.setattr(_evaluator_policy, "EXPLORE_MIN_ROWS", 0)  # and on its 16 rows
    model, (x, mask) = Counting().eval(), _case()
    expected = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    model.batches.clear()
    model.channels_last.clear()
    got = FeatureAblation(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval="auto")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the reference alone (plain layout), two more rows alone (the ramp's layout, channels_last_3d on
    # the CPU: its first call pays one-time costs), then one with the check row
    assert model.batches[:4] == [1, 1, 1, 2] and model.channels_last[:3] == [False, True, True]
    assert sum(model.batches) <= 1 + 16 + len(model.batches) - 1  # at most one check row per call, no probes
    assert all(model.inference[-len(model.batches):])


@pytest.mark.parametrize("model, why", [(Counting(train_bn=True).train(), "train mode"),
                                        (Counting(cross_sample=True).eval(), "two different rows")])
def test_auto_keeps_batch_one_for_batch_dependent_models(model, why):
    x, mask = _case()
    expected = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    model.batches.clear()
    with pytest.warns(RuntimeWarning, match=why):
        got = FeatureAblation(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval="auto")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert max(model.batches[2:], default=1) == 1  # after the (failed) check: row by row


def test_int_perturbations_per_eval_without_a_patch_calls_the_model_as_captum():
    model, (x, mask) = Counting().eval(), _case()
    FeatureAblation(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval=4)
    assert model.batches == [1, 4, 4, 4, 4] and not any(model.inference)


def test_lime_auto_gives_the_coefficients_of_batch_one():
    model, (x, mask) = Counting().eval(), _case()
    torch.manual_seed(3)
    expected = Lime(model).attribute(x, target=0, feature_mask=mask, n_samples=40)
    torch.manual_seed(3)
    got = Lime(model).attribute(x, target=0, feature_mask=mask, n_samples=40, perturbations_per_eval="auto")
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


def test_occlusion_auto_matches_captum():
    model, (x, _) = Counting().eval(), _case()
    expected = captum.attr.Occlusion(model).attribute(x, (2, 4, 4, 4), strides=(2, 2, 2, 2), target=2)
    got = Occlusion(model).attribute(x, (2, 4, 4, 4), strides=(2, 2, 2, 2), target=2, perturbations_per_eval="auto")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _planner(cap=32, layout=True):
    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    return ChunkPlanner(cap, True, layout, caller), caller


def test_ramp_keeps_the_size_of_best_throughput_then_tries_the_layout():
    planner, caller = _planner()
    planner.record(1, 1.0, first=True)  # 1 row/s alone
    rates = {1: 1.0, 2: 3.0, 4: 5.0, 8: 5.2, 16: 5.1}  # plateau from 4 rows on
    sizes = []
    while planner.ramp:
        count, check = planner.next_chunk(1000)
        size = count + check
        sizes.append(size)
        planner.record(size, size / rates[size])
    assert sizes == [1, 2, 4, 8, 16] and planner.size == 4
    assert planner.next_chunk(1000) == (4, False) and not caller.channels_last  # a steady plain call at 4
    planner.record(4, 4 / 5.0)
    for _ in range(2):  # the layout trial: its first call pays one-time costs and is not judged
        count, check = planner.next_chunk(1000)
        assert (count, check, caller.channels_last) == (4, False, True)
        planner.record(4, 4 / 6.0)  # 20% faster in channels_last_3d: kept
    assert caller.channels_last and "perturbations_per_eval=4" in planner.final_summary()
    assert "channels_last_3d on" in planner.final_summary()


def test_layout_trial_that_is_not_faster_goes_back_to_the_plain_layout():
    planner, caller = _planner(cap=2)
    planner.record(1, 1.0, first=True)
    assert planner.next_chunk(100) == (1, False)  # one more row alone: a steady batch-1 rate
    planner.record(1, 1.0)
    assert planner.next_chunk(100) == (1, True)  # one new row and the check row
    planner.record(2, 2 / 3.0)  # the ramp ends at the cap
    assert planner.next_chunk(100) == (2, False) and not caller.channels_last  # the first call at 2 is not steady
    planner.record(2, 2 / 3.0)
    for _ in range(2):
        assert planner.next_chunk(100) == (2, False)
        assert caller.channels_last
        planner.record(2, 2 / 3.0)
    assert not caller.channels_last


def test_layout_trial_is_not_judged_against_the_first_call_at_a_size():
    """A first call that paid one-time costs must not make channels_last_3d look faster."""
    planner, caller = _planner(cap=1)
    planner.record(1, 5.0, first=True)  # warm-up: 0.2 rows/s
    assert planner.next_chunk(100) == (1, False) and not caller.channels_last
    planner.record(1, 1.0)  # steady plain: 1 row/s
    for seconds in (3.0, 1.0):  # channels_last: a slow first call, then as fast as plain
        assert planner.next_chunk(100) == (1, False) and caller.channels_last
        planner.record(1, seconds)
    assert not caller.channels_last


def test_inference_mode_falls_back_for_a_model_that_needs_autograd():
    weight = torch.ones(3, requires_grad=True)

    def needs_grad(x):
        with torch.enable_grad():
            y = (x.flatten(1)[:, :3] * weight).sum()
            (g,) = torch.autograd.grad(y, weight)
        return x.flatten(1).sum(1, keepdim=True) + g.sum()

    x = torch.randn(1, 6)
    notes = []
    caller = ModelCaller(needs_grad, ModelPolicy(), None, notes.append)
    out = caller(x)
    torch.testing.assert_close(out, x.sum(1, keepdim=True) + x[:, :3].sum())
    assert not caller.inference_mode and "inference_mode not used" in notes[0]


def test_without_inference_mode_the_callers_grad_mode_is_kept():
    from mmxai_fast.attr._evaluator_policy import ModelCaller
    from mmxai_fast.attr._model_policy import ModelPolicy

    seen = []

    def forward(x):
        seen.append(torch.is_grad_enabled())
        return x.sum(-1, keepdim=True)

    caller = ModelCaller(forward, ModelPolicy(inference_mode=False), None, lambda *a: None)
    with torch.no_grad():
        caller(torch.ones(2, 3))
    caller(torch.ones(2, 3))
    assert seen == [False, True]


def test_ramp_keeps_batch_one_when_a_steady_single_row_is_fastest():
    """A first call that paid one-time costs must not make batching look faster than batch 1."""
    planner, _ = _planner(layout=False)
    planner.record(1, 4.0, first=True)  # cold: 0.25 rows/s
    rates = {1: 2.0, 2: 1.8, 4: 1.9}    # steady batch 1 is the fastest per row
    sizes = []
    while planner.ramp:
        count, check = planner.next_chunk(1000)
        sizes.append(count + check)
        planner.record(sizes[-1], sizes[-1] / rates[sizes[-1]])
    assert sizes == [1, 2, 4] and planner.size == 1


def _signature(x):
    return _evaluator_policy.plan_key((x,), ModelPolicy())


def test_a_settled_ramp_is_remembered_and_a_recalled_plan_skips_ramp_and_trial():
    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    remembered = []
    planner = ChunkPlanner(32, True, True, caller, remember=remembered.append)
    planner.record(1, 1.0, first=True)
    rates = {1: 1.0, 2: 3.0, 4: 5.0, 8: 5.2, 16: 5.1}
    while planner.ramp:
        count, check = planner.next_chunk(1000)
        planner.record(count + check, (count + check) / rates[count + check])
    assert remembered == []  # not settled before the layout trial
    planner.next_chunk(1000)
    planner.record(4, 4 / 5.0)
    for _ in range(2):
        planner.next_chunk(1000)
        planner.record(4, 4 / 6.0)
    assert [(plan["settled"], plan["size"], plan["channels_last"]) for plan in remembered] == [(True, 4, True)]

    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    again = ChunkPlanner(32, True, True, caller, recalled=remembered[0])
    again.record(1, 1.0, first=True)
    assert not again.ramp and not again.layout_trial and caller.channels_last
    assert again.next_chunk(1000) == (3, True)  # the remembered size, its first chunk with the check row
    assert again.next_chunk(1000) == (4, False)
    assert "earlier in this process" in again.final_summary()
    capped = ChunkPlanner(2, True, True, ModelCaller(lambda x: x, ModelPolicy(), None, lambda t: None),
                          recalled=dict(remembered[0], channels_last=False))
    assert capped.next_chunk(1000) == (1, True)  # never above today's cap


def test_a_remembered_plan_sets_the_chunk_and_layout(monkeypatch):
    monkeypatch.setattr(_evaluator_policy, "FAST_CALL_S", 0.0)
    model, (x, mask) = Counting().eval(), _case()
    _evaluator_policy.remember_plan(model, _signature(x), dict(settled=True, size=4, channels_last=True))
    expected = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    model.batches.clear()
    model.channels_last.clear()
    got = FeatureAblation(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval="auto")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert model.batches == [1, 4, 4, 4, 4, 1]  # 3 new rows + the check row, then 4 + 4 + 4 + 1
    assert model.channels_last == [False] + [True] * 5


def test_plans_are_per_input_signature_and_go_with_the_model():
    import gc

    model, (x, _) = Counting().eval(), _case()
    plan = dict(settled=True, size=8, channels_last=False)
    _evaluator_policy.remember_plan(model, _signature(x), plan)
    assert _evaluator_policy.recall_plan(model, _signature(x)) == plan
    assert _evaluator_policy.recall_plan(model, _signature(x[:, :, :4])) is None  # another shape
    assert _evaluator_policy.recall_plan(model, _signature(x.double())) is None  # another dtype
    gc.collect()
    before = len(_evaluator_policy._PLANS)
    del model
    gc.collect()
    assert len(_evaluator_policy._PLANS) == before - 1

    class Slotted:  # no __weakref__: cannot be remembered, and that is no error
        __slots__ = ()

        def __call__(self, inputs):
            return inputs.sum()

    _evaluator_policy.remember_plan(Slotted(), _signature(x), plan)
    assert _evaluator_policy.recall_plan(Slotted(), _signature(x)) is None


def test_on_the_cpu_the_ramp_runs_in_channels_last_and_the_trial_in_the_plain_layout():
    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    planner = ChunkPlanner(1, True, True, caller, base_channels_last=True)
    assert caller.channels_last  # from the first planned call on
    planner.record(1, 1.0, first=True)  # the reference ran in the plain layout: not a channels-last rate
    assert planner.next_chunk(100) == (1, False) and caller.channels_last
    planner.record(1, 1.0)  # the first channels-last call at 1: not steady
    assert planner.next_chunk(100) == (1, False) and caller.channels_last
    planner.record(1, 1.0)  # steady: 1 row/s
    for _ in range(2):  # the trial, in the plain layout: 25% faster, taken
        assert planner.next_chunk(100) == (1, False) and not caller.channels_last
        planner.record(1, 0.8)
    assert not caller.channels_last and "channels_last_3d off" in planner.final_summary()

    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    planner = ChunkPlanner(1, True, True, caller, base_channels_last=True)
    planner.record(1, 1.0, first=True)
    for seconds in (1.0, 1.0, 1.0, 1.0):  # the plain layout no faster: channels_last_3d stays
        planner.next_chunk(100)
        planner.record(1, seconds)
    assert caller.channels_last and "channels_last_3d on" in planner.final_summary()


def test_a_fast_model_keeps_the_callers_layout_when_the_trial_is_skipped():
    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    planner = ChunkPlanner(32, True, True, caller, base_channels_last=True)
    planner.record(1, 1e-4, first=True)  # under FAST_CALL_S: no ramp, no trial
    assert not caller.channels_last and planner.next_chunk(100) == (31, True)


def test_a_model_that_failed_on_channels_last_is_not_given_it_again():
    def plain_only(x):
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            raise RuntimeError("this model needs contiguous inputs")
        return x.flatten(1).sum(1, keepdim=True)

    notes = []
    caller = ModelCaller(plain_only, ModelPolicy(), None, notes.append)
    caller.channels_last = True
    x = torch.randn(1, 2, 3, 3, 3)
    torch.testing.assert_close(caller(x), x.flatten(1).sum(1, keepdim=True))
    assert "channels_last_3d not used" in notes[-1]
    caller.channels_last = True  # a later layout decision cannot bring the failing layout back
    assert not caller.channels_last


def test_only_the_first_batched_chunk_carries_the_check_row():
    planner, _ = _planner(layout=False)
    planner.record(1, 1.0, first=True)
    rates = {1: 1.0, 2: 3.0, 4: 5.0, 8: 5.2, 16: 5.1}
    checks = []
    while planner.ramp:
        count, check = planner.next_chunk(1000)
        checks.append((count + check, check))
        planner.record(count + check, (count + check) / rates[count + check])
    assert checks == [(1, False), (2, True), (4, False), (8, False), (16, False)]


def test_a_ramp_that_ran_out_of_rows_goes_on_in_the_next_call():
    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    saved = []
    planner = ChunkPlanner(32, True, True, caller, remember=saved.append, base_channels_last=True)
    planner.record(1, 1.0, first=True)
    rates = {1: 1.0, 2: 3.0, 4: 5.0, 8: 5.2, 16: 5.1}
    sizes = []
    for _ in range(3):  # the rows run out after three calls: batch 1 (twice) and 2
        count, check = planner.next_chunk(1000)
        sizes.append(count + check)
        planner.record(sizes[-1], sizes[-1] / rates[sizes[-1]])
    planner.save()
    assert sizes == [1, 1, 2] and not saved[-1]["settled"]

    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    planner = ChunkPlanner(32, True, True, caller, recalled=saved[-1], remember=saved.append,
                           base_channels_last=True)
    planner.record(1, 9.0, first=True)  # this call's reference (plain layout, cold): changes nothing
    assert planner.rates[1] == 1.0 and planner.ramp and caller.channels_last
    while planner.ramp:  # the ramp goes on at 4; this call's first batched chunk has the check row
        count, check = planner.next_chunk(1000)
        sizes.append(count + check)
        assert check == (sizes[-1] == 4)
        planner.record(sizes[-1], sizes[-1] / rates[sizes[-1]])
    assert sizes == [1, 1, 2, 4, 8, 16] and planner.size == 4


def test_plans_are_kept_for_the_callers_model_behind_the_incremental_wrapper(monkeypatch):
    from mmxai_fast.models import VGG3D

    monkeypatch.setattr(_evaluator_policy, "FAST_CALL_S", 0.0)
    torch.manual_seed(0)
    model, x = VGG3D(in_channels=2, widths=(4, 8), hidden=8).eval(), torch.randn(1, 2, 8, 8, 8)
    stripes = (torch.arange(8) % 2).expand(1, 1, 8, 8, 8).contiguous()  # boxes span the volume: dense rows
    explainer = FeatureAblation(model)
    explainer.attribute(x, target=0, feature_mask=stripes, perturbations_per_eval="auto", incremental="auto")
    assert explainer.last_incremental_report is not None and not explainer.last_incremental_report["used"]
    assert _evaluator_policy.recall_plan(model, _signature(x)) is not None


def test_a_short_cpu_call_does_not_explore_and_leaves_it_to_a_longer_one():
    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    saved = []
    planner = ChunkPlanner(32, True, True, caller, remember=saved.append, base_channels_last=True,
                           explore_min_rows=24)
    planner.record(1, 1.0, first=True)
    rates = {1: 1.0, 2: 3.0, 4: 5.0, 8: 5.2, 16: 5.1}
    for left in range(16, 0, -1):  # 16 rows: batch 1 throughout, in the ramp's layout, no trial
        assert planner.next_chunk(left) == (1, False) and caller.channels_last
        planner.record(1, 1.0 / rates[1])
    planner.save()
    assert not saved[-1]["settled"] and saved[-1]["steady"] == {1: 1.0}
    assert "left for a call of at least 24 rows" in planner.final_summary()

    caller = ModelCaller(lambda x: x, ModelPolicy(), None, lambda text: None)
    planner = ChunkPlanner(32, True, True, caller, recalled=saved[-1], remember=saved.append,
                           base_channels_last=True, explore_min_rows=24)
    planner.record(1, 9.0, first=True)
    sizes = []
    while planner.ramp:  # 100 rows: the ramp goes on from the batch-1 rate measured before
        count, check = planner.next_chunk(100)
        sizes.append(count + check)
        planner.record(sizes[-1], sizes[-1] / rates[sizes[-1]])
    assert sizes == [2, 4, 8, 16] and planner.size == 4
    planner.record(4, 4 / 5.0)  # the first steady call at 4, then the layout trial
    assert planner.next_chunk(100) == (4, False) and not caller.channels_last


def test_featureablation_of_16_features_stays_at_batch_one_on_the_cpu(monkeypatch):
    monkeypatch.setattr(_evaluator_policy, "FAST_CALL_S", 0.0)
    model, (x, mask) = Counting().eval(), _case()
    expected = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    model.batches.clear()
    explainer = FeatureAblation(model)
    got = explainer.attribute(x, target=1, feature_mask=mask, perturbations_per_eval="auto")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert model.batches == [1] * 17  # no check row, no ramp step, no trial call


def test_without_onednn_conv_a_short_cpu_call_still_explores(monkeypatch):
    """PyTorch's batch-1 slow_conv3d makes larger chunks worth trying at once."""
    from mmxai_fast.attr import patch_captum, unpatch_captum

    monkeypatch.setattr(_evaluator_policy, "FAST_CALL_S", 0.0)
    model, (x, mask) = Counting().eval(), _case()
    patch_captum(batch="auto", onednn_conv=False)
    try:
        FeatureAblation(model).attribute(x, target=1, feature_mask=mask)
    finally:
        unpatch_captum()
    assert model.batches[:4] == [1, 1, 1, 2]  # the ramp's first batched chunk, with the check row
