"""Captum's own unit tests for the perturbation attribution classes, ported to run against
``mmxai_fast.attr`` (issue 3: Captum's tests are the bar for the drop-in classes' semantics).

Upstream: https://github.com/pytorch/captum, ``tests/attr/test_*.py`` and the helpers shipped in
the Captum 0.9.0 wheel as ``captum/testing/helpers/{basic,basic_models}.py``.
Copyright (c) 2019, PyTorch team. All rights reserved. BSD 3-Clause License (the full text is in
Captum's LICENSE file, installed with the package as ``captum-0.9.0.dist-info/licenses/LICENSE``).

Porting rules: every upstream test and assertion is kept with its expected values; only the
imports, the base class (unittest -> pytest, ``parameterized.expand`` -> ``pytest.mark.parametrize``)
and the class under test (``mmxai_fast.attr``) change. Where our classes deliberately differ from
Captum (documented in their docstrings) the expectation is adapted in place with a comment
starting ``# mmxai_fast:`` saying why; nothing is deleted silently.
"""
