"""The engine reuses one perturbed-input buffer per input across model calls; results must not
change, even for models whose output is a view of their input."""
import captum.attr as captum_attr
import pytest
import torch

import mmxai_fast.attr as ours


def _view_model(x):
    return x[:, 0, :3]  # a view of the (reused) input buffer: [batch, 3]


def _problem():
    # Large enough for the perturb kernel's buffer path (tiny batches use torch.where instead).
    width = ours._perturbers.SMALL_BATCH_NUMEL // 4 + 4
    x = torch.randn(2, 2, width)
    mask = torch.arange(2 * width).reshape(1, 2, width) % 5
    return x, mask


@pytest.mark.parametrize("ppe", [1, 3, 16])
def test_feature_ablation_with_output_viewing_the_input(ppe):
    x, mask = _problem()
    expected = captum_attr.FeatureAblation(_view_model).attribute(x, target=1, feature_mask=mask)
    got = ours.FeatureAblation(_view_model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval=ppe)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("ppe", [1, 4])
def test_shapley_sampling_with_output_viewing_the_input(ppe):
    x, mask = _problem()
    torch.manual_seed(3)
    expected = captum_attr.ShapleyValueSampling(_view_model).attribute(x, target=2, feature_mask=mask, n_samples=3)
    torch.manual_seed(3)
    got = ours.ShapleyValueSampling(_view_model).attribute(x, target=2, feature_mask=mask, n_samples=3,
                                                           perturbations_per_eval=ppe)
    torch.testing.assert_close(got, expected)


def test_occlusion_with_output_viewing_the_input():
    x, _ = _problem()
    window = (1, x.shape[2] // 4)
    expected = captum_attr.Occlusion(_view_model).attribute(x, window, strides=window, target=0)
    got = ours.Occlusion(_view_model).attribute(x, window, strides=window, target=0, perturbations_per_eval=5)
    torch.testing.assert_close(got, expected)


def test_buffer_is_reused_across_chunks_and_released():
    x, mask = _problem()
    seen = []

    def model(batch):
        seen.append(batch.untyped_storage().data_ptr())
        return batch.sum((1, 2)).unsqueeze(1)

    engine = ours.PerturbationEngine(model, (x,), (0.0,), (mask,), target=0, perturbations_per_eval=2,
                                     compact_ids=True)
    engine.initialize()
    keep = torch.rand(7, engine.num_features) > 0.5
    out = engine.evaluate(keep)
    assert len(set(seen[1:])) == 1  # every chunk (2, 2, 2, 1 rows) in the same buffer
    assert not engine._buffers  # freed when the evaluation ends
    manual = torch.stack([model(*engine.perturbed_inputs(keep[r:r + 1])).reshape(engine.row_shape) for r in range(7)])
    torch.testing.assert_close(out, manual)
