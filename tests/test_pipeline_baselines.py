import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import Baseline, Case
from pipeline_data import ball


def _case():
    fg = torch.from_numpy(ball((40, 40, 30)))
    g = torch.Generator().manual_seed(1)
    image = torch.stack([5 + 2 * torch.randn(fg.shape, generator=g), -3 + 0.5 * torch.randn(fg.shape, generator=g)])
    return Case(image * fg, ("t1", "flair"), np.eye(4), foreground=fg)


def test_zeros_and_constant():
    case = _case()
    assert bool((Baseline.zeros().tensor(case) == 0).all())
    const = Baseline.constant(-1.5).tensor(case)
    assert const.shape == case.image.shape and bool((const == -1.5).all())


def test_gaussian_matches_each_modality_statistics_inside_the_foreground():
    case = _case()
    noise = Baseline.gaussian(seed=3).tensor(case)
    assert noise.shape == case.image.shape and noise.dtype == torch.float32
    for m in range(2):
        inside = case.image[m][case.foreground].double()
        drawn = noise[m].double().flatten()
        # 48000 draws: standard error of the mean is std / 219, of the std about std / 310.
        assert float(drawn.mean()) == pytest.approx(float(inside.mean()), abs=5 * float(inside.std()) / 219)
        assert float(drawn.std()) == pytest.approx(float(inside.std()), rel=5 / 310)
    # the two modalities have very different statistics: each gets its own
    assert float(noise[0].mean()) > 4 and float(noise[1].mean()) < -2


def test_gaussian_is_seeded():
    case = _case()
    a, b = Baseline.gaussian(seed=3).tensor(case), Baseline.gaussian(seed=3).tensor(case)
    assert torch.equal(a, b)
    assert not torch.equal(a, Baseline.gaussian(seed=4).tensor(case))
    torch.manual_seed(0)
    c = Baseline.gaussian(seed=3).tensor(case)
    assert torch.equal(a, c), "the global RNG does not matter"


def test_gaussian_without_foreground_uses_all_voxels():
    image = torch.randn(1, 30, 30, 30) * 2 + 7
    noise = Baseline.gaussian().tensor(Case(image, ("a",), np.eye(4)))
    assert float(noise.mean()) == pytest.approx(float(image.mean()), abs=0.05)


def test_parse_and_validation():
    assert Baseline.parse("zeros") == Baseline.zeros()
    assert Baseline.parse("gaussian", seed=2) == Baseline.gaussian(2)
    assert Baseline.parse("-0.5") == Baseline.constant(-0.5)
    with pytest.raises(ValueError, match=r"'zeros', 'gaussian', 'blur\[:SIGMA\]' or a number"):
        Baseline.parse("noise")
    with pytest.raises(ValueError, match="finite"):
        Baseline.constant(float("nan"))
    with pytest.raises(ValueError, match="kind"):
        Baseline("uniform")


def test_blur_matches_scipy_without_foreground():
    from scipy.ndimage import gaussian_filter

    image = torch.randn(2, 20, 18, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    blurred = Baseline.blur(2.0).tensor(Case(image, ("a", "b"), np.eye(4)))
    assert blurred.shape == image.shape and blurred.dtype == torch.float32
    ones = gaussian_filter(np.ones(image.shape[1:]), 2.0, mode="constant", truncate=3.0)
    for m in range(2):
        # zero padding renormalised by the kernel's mass inside the volume (float64 vs float32 result)
        expected = gaussian_filter(image[m].double().numpy(), 2.0, mode="constant", truncate=3.0) / ones
        np.testing.assert_allclose(blurred[m].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert float(blurred.std()) < 0.5 * float(image.std())  # it does smooth


def test_blur_averages_inside_the_foreground_only():
    case = _case()
    # each modality constant inside the ball, zero outside: the blur keeps the constant up to the edge
    flat = Case(torch.stack([torch.full(case.foreground.shape, 5.0), torch.full(case.foreground.shape, -3.0)])
                * case.foreground, case.modalities, np.eye(4), foreground=case.foreground)
    blurred = Baseline.blur(3.0).tensor(flat)
    fg = case.foreground
    assert torch.allclose(blurred[0][fg], torch.tensor(5.0), atol=1e-5)
    assert torch.allclose(blurred[1][fg], torch.tensor(-3.0), atol=1e-5)
    assert bool((blurred[:, ~fg] == 0).all())  # the background is the input's
    noisy = Baseline.blur(3.0).tensor(case)
    for m, level in enumerate((5.0, -3.0)):
        assert float(noisy[m][fg].mean()) == pytest.approx(level, abs=0.05)
        assert float(noisy[m][fg].std()) < 0.2 * float(case.image[m][fg].std())


def test_blur_parse_and_errors():
    assert Baseline.parse("blur") == Baseline.blur(3.0)
    assert Baseline.parse("blur:1.5") == Baseline.blur(1.5)
    assert "sigma 1.5 voxels" in Baseline.blur(1.5).describe()
    with pytest.raises(ValueError, match="blur sigma must be > 0"):
        Baseline.blur(0.0)
    with pytest.raises(ValueError, match="'blur' or 'blur:SIGMA'"):
        Baseline.parse("blur:x")
    with pytest.raises(ValueError, match="'blur:SIGMA'"):
        Baseline.parse("blur:-1")
