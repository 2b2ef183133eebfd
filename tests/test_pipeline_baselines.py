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
    with pytest.raises(ValueError, match="'zeros', 'gaussian' or a number"):
        Baseline.parse("noise")
    with pytest.raises(ValueError, match="finite"):
        Baseline.constant(float("nan"))
    with pytest.raises(ValueError, match="kind"):
        Baseline("uniform")
