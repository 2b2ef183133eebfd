"""Assertions and the test base class of Captum's test suite.

Vendored from Captum 0.9.0 ``captum/testing/helpers/basic.py`` (pytorch/captum, BSD 3-Clause,
Copyright (c) 2019, PyTorch team; see ``tests/captum_suite/__init__.py``). Changes: ``BaseTest``
is a plain pytest class (so ``pytest.mark.parametrize`` replaces the ``parameterized`` package,
which is not a dependency) exposing the ``unittest.TestCase`` assertion methods the tests use.
"""
import random
import unittest

import numpy as np
import pytest
import torch


def assertTensorAlmostEqual(test, actual, expected, delta: float = 0.0001, mode: str = "sum") -> None:
    assert isinstance(actual, torch.Tensor), "Actual parameter given for comparison must be a tensor."
    if not isinstance(expected, torch.Tensor):
        expected = torch.tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (
        f"Expected tensor with shape: {expected.shape}. Actual shape {actual.shape}.")
    actual = actual.cpu()
    expected = expected.cpu()
    if mode == "sum":
        test.assertAlmostEqual(torch.sum(torch.abs(actual - expected)).item(), 0.0, delta=delta)
    elif mode == "max":
        # if both tensors are empty, they are equal but there is no max
        if actual.numel() == expected.numel() == 0:
            return
        if actual.size() == torch.Size([]):
            test.assertAlmostEqual(torch.max(torch.abs(actual - expected)).item(), 0.0, delta=delta)
        else:
            for index, (input, ref) in enumerate(zip(actual, expected)):
                almost_equal = abs(input - ref) <= delta
                if hasattr(almost_equal, "__iter__"):
                    almost_equal = almost_equal.all()
                assert almost_equal, "Values at index {}, {} and {}, differ more than by {}".format(
                    index, input, ref, delta)
    else:
        raise ValueError("Mode for assertion comparison must be one of `max` or `sum`.")


def assertTensorTuplesAlmostEqual(test, actual, expected, delta: float = 0.0001, mode: str = "sum") -> None:
    if isinstance(expected, tuple):
        assert len(actual) == len(expected), f"the length of actual {len(actual)} != expected {len(expected)}"
        for i in range(len(expected)):
            assertTensorAlmostEqual(test, actual[i], expected[i], delta, mode)
    else:
        assertTensorAlmostEqual(test, actual, expected, delta, mode)


def set_all_random_seeds(seed: int = 1234) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True


class BaseTest:
    """Captum's ``BaseTest``: every test starts from ``set_all_random_seeds(1234)``."""

    _case = unittest.TestCase()

    @pytest.fixture(autouse=True)
    def _captum_seed(self, _seed):  # after tests/conftest.py's own seeding
        set_all_random_seeds(1234)
        yield

    def __getattr__(self, name):
        if name.startswith("assert"):
            return getattr(self._case, name)
        raise AttributeError(name)
