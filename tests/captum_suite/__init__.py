"""Captum's own unit tests for the perturbation attribution classes, ported to run against
``mmxai_fast.attr`` (issue 3: Captum's tests are the bar for the drop-in classes' semantics;
issue 11: the newest released versions).

Upstream: https://github.com/pytorch/captum, ``tests/attr/test_{feature_ablation,
feature_permutation,kernel_shap,lime,occlusion,shapley}.py`` at commit faac0877 (2025-10-02, whose
library code matches Captum 0.9.0), with the test helpers shipped in the Captum 0.9.0 wheel
(``captum.testing.helpers``: ``BaseTest``, ``basic_models``, the assertions).
Copyright (c) 2019, PyTorch team. All rights reserved. BSD 3-Clause License (the full text is in
Captum's LICENSE file, installed with the package as ``captum-0.9.0.dist-info/licenses/LICENSE``).

Porting rules: every upstream test and assertion is kept with its expected values; only the
import of the class under test (``mmxai_fast.attr``) and, in test_shapley.py, the source of
``parameterized.expand`` (``helpers.py``) change. Each file's docstring lists its adaptations and
dropped tests; each adaptation is marked in place with ``# mmxai_fast adaptation: why``.
``test_noise_tunnel_compat.py`` is ours (not upstream).
"""
