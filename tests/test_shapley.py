import itertools
import math

import pytest
import torch

from mmxai_fast.ops.shapley import (
    random_permutations,
    shapley_accumulate,
    shapley_accumulate_reference,
    shapley_coalitions,
    shapley_coalitions_reference,
    shapley_prefix_rows,
    shapley_stats,
)
from helpers import CPU_BACKENDS, FLOAT_DTYPES, assert_close_to_reference, non_contiguous

ALL_BACKENDS = ["reference"] + CPU_BACKENDS
T_SHAPES = [(), (3,), (2, 5)]


def _perms(num_perms, num_features, seed=0):
    return random_permutations(num_perms, num_features, generator=torch.Generator().manual_seed(seed))


def _expected_sums(outputs, perms, sums=None, sumsq=None):
    """float64 oracle, starting from the (rounded) values already in the accumulators."""
    shape = (perms.shape[1],) + tuple(outputs.shape[2:])
    s = torch.zeros(shape, dtype=torch.float64) if sums is None else sums.double()
    q = torch.zeros(shape, dtype=torch.float64) if sumsq is None else sumsq.double()
    shapley_accumulate_reference(outputs.double(), perms, s, q)
    return s, q


def _game_outputs(perms, value_of_keep, backend=None):
    """outputs[p, j] = value of the coalition of the first j features of perms[p] (a walk)."""
    num_perms, num_features = perms.shape
    rows = shapley_prefix_rows(num_perms, num_features, include_empty=True)
    keep = shapley_coalitions(perms, *rows, backend=backend)
    values = value_of_keep(keep)
    return values.reshape((num_perms, num_features + 1) + tuple(values.shape[1:]))


# ----------------------------------------------------------------------------- permutations


@pytest.mark.parametrize("num_perms,num_features", [(1, 1), (1, 2), (5, 37), (64, 9), (0, 4)])
def test_random_permutations_are_permutations(num_perms, num_features):
    perms = _perms(num_perms, num_features)
    assert perms.shape == (num_perms, num_features) and perms.dtype == torch.int64
    expected = torch.arange(num_features).expand(num_perms, num_features)
    assert torch.equal(perms.sort(dim=1).values, expected)
    assert torch.equal(perms, _perms(num_perms, num_features))  # the generator makes it reproducible


def test_random_permutations_are_uniform_enough():
    perms = _perms(6000, 3)
    codes = perms[:, 0] * 9 + perms[:, 1] * 3 + perms[:, 2]
    orders, counts = torch.unique(codes, return_counts=True)
    assert orders.numel() == 6  # all 3! orders appear
    assert (counts - 1000).abs().max() < 150  # ~5 sigma for a binomial(6000, 1/6)


def test_antithetic_rows_are_reversed_pairs():
    perms = random_permutations(8, 37, generator=torch.Generator().manual_seed(3), antithetic=True)
    assert torch.equal(perms[1::2], perms[0::2].flip(1))
    assert torch.equal(perms.sort(dim=1).values, torch.arange(37).expand(8, 37))
    with pytest.raises(ValueError, match="even"):
        random_permutations(3, 5, antithetic=True)


def test_random_permutations_bad_arguments():
    with pytest.raises(ValueError, match="num_features"):
        random_permutations(2, 0)
    with pytest.raises(ValueError, match="num_permutations"):
        random_permutations(-1, 3)
    with pytest.raises(ValueError, match="num_permutations"):
        random_permutations(2.0, 3)


@pytest.mark.parametrize("include_empty", [False, True])
@pytest.mark.parametrize("include_full", [False, True])
def test_prefix_rows_follow_captum_walk(include_empty, include_full):
    num_perms, num_features = 3, 5
    perm_index, prefix_size = shapley_prefix_rows(num_perms, num_features, include_empty, include_full)
    first, last = (0 if include_empty else 1), (num_features if include_full else num_features - 1)
    expected = [(p, k) for p in range(num_perms) for k in range(first, last + 1)]
    assert list(zip(perm_index.tolist(), prefix_size.tolist())) == expected
    assert perm_index.dtype == prefix_size.dtype == torch.int64


# ----------------------------------------------------------------------------- coalitions


def _check_coalition_semantics(keep, perms, perm_index, prefix_size):
    """Independent of the reference: row r holds exactly the first prefix_size[r] features."""
    for r, (p, k) in enumerate(zip(perm_index.tolist(), prefix_size.tolist())):
        expected = torch.zeros(perms.shape[1], dtype=torch.bool)
        expected[perms[p, :k]] = True
        assert torch.equal(keep[r], expected), f"row {r}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("num_perms,num_features", [(1, 1), (1, 2), (2, 2), (3, 37), (16, 5)])
def test_coalitions_walk(backend, num_perms, num_features):
    perms = _perms(num_perms, num_features)
    rows = shapley_prefix_rows(num_perms, num_features, include_empty=True)
    keep = shapley_coalitions(perms, *rows, backend=backend)
    assert keep.shape == (rows[0].numel(), num_features) and keep.dtype == torch.bool
    assert torch.equal(keep, shapley_coalitions_reference(perms, *rows))
    _check_coalition_semantics(keep, perms, *rows)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_coalitions_arbitrary_rows_int32_and_non_contiguous(backend):
    num_perms, num_features = 7, 1500  # more than one 1024 block per row
    perms = _perms(num_perms, num_features).to(torch.int32).t().contiguous().t()  # non-contiguous [P, F]
    assert not perms.is_contiguous()
    perm_index = torch.randint(0, num_perms, (41,), dtype=torch.int32)
    prefix_size = non_contiguous(torch.randint(0, num_features + 1, (41,)))
    keep = shapley_coalitions(perms, perm_index, prefix_size, backend=backend)
    assert torch.equal(keep, shapley_coalitions_reference(perms.long(), perm_index.long(), prefix_size))
    assert torch.equal(keep.sum(1), prefix_size)
    _check_coalition_semantics(keep[:5], perms.long(), perm_index[:5], prefix_size[:5])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_coalitions_empty_rows(backend):
    perms = _perms(3, 4)
    empty = torch.zeros(0, dtype=torch.int64)
    assert shapley_coalitions(perms, empty, empty, backend=backend).shape == (0, 4)


def test_coalitions_large_cpu():
    perms = _perms(4, 2000)
    rows = shapley_prefix_rows(4, 2000)
    assert torch.equal(shapley_coalitions(perms, *rows, backend="cpu"), shapley_coalitions_reference(perms, *rows))


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("t_shape", T_SHAPES)
@pytest.mark.parametrize("num_perms,num_features", [(1, 1), (1, 2), (4, 2), (9, 37), (1, 37)])
def test_accumulate_matches_reference(backend, t_shape, num_perms, num_features):
    perms = _perms(num_perms, num_features)
    outputs = torch.randn((num_perms, num_features + 1) + t_shape)
    sums = torch.zeros((num_features,) + t_shape)
    sumsq = torch.zeros_like(sums)
    shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    expected_sums, expected_sumsq = _expected_sums(outputs, perms)
    assert_close_to_reference(sums, expected_sums)
    assert_close_to_reference(sumsq, expected_sumsq)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("num_features,t_shape", [(600, ()), (37, (130,)), (5, (3, 70))])
def test_accumulate_multi_block_tiles(backend, num_features, t_shape):
    # Several feature blocks (Tn = 1) or several output blocks per feature (Tn > 128 / Tn > 64).
    perms = _perms(3, num_features)
    outputs = torch.randn((3, num_features + 1) + t_shape)
    sums = torch.zeros((num_features,) + t_shape)
    sumsq = torch.zeros_like(sums)
    shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    expected_sums, expected_sumsq = _expected_sums(outputs, perms)
    assert_close_to_reference(sums, expected_sums)
    assert_close_to_reference(sumsq, expected_sumsq)


def test_accumulate_many_permutations_cpu():
    perms = _perms(300, 23)
    outputs = torch.randn(300, 24, 4, dtype=torch.float64)
    sums = torch.zeros(23, 4, dtype=torch.float64)
    sumsq = torch.zeros_like(sums)
    shapley_accumulate(outputs, perms, sums, sumsq, backend="cpu")
    expected_sums, expected_sumsq = _expected_sums(outputs, perms)
    assert_close_to_reference(sums, expected_sums)
    assert_close_to_reference(sumsq, expected_sumsq)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("outputs_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("sums_dtype", FLOAT_DTYPES)
def test_accumulate_dtypes(backend, outputs_dtype, sums_dtype):
    perms = _perms(6, 11)
    outputs = torch.randn(6, 12, 3).to(outputs_dtype)
    sums = torch.zeros(11, 3, dtype=sums_dtype)
    sumsq = torch.zeros_like(sums)
    shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    assert sums.dtype == sumsq.dtype == sums_dtype
    expected_sums, expected_sumsq = _expected_sums(outputs, perms)
    assert_close_to_reference(sums, expected_sums)
    assert_close_to_reference(sumsq, expected_sumsq)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_float64_sums_from_float32_outputs_keep_small_marginals(backend):
    # Outputs near 1e4 with marginals near 1e-3: forming the marginals in float64 keeps them exact.
    perms = _perms(5, 6)
    outputs = (1e4 + torch.randn(5, 7, dtype=torch.float64) * 1e-3).float()
    sums = torch.zeros(6, dtype=torch.float64)
    shapley_accumulate(outputs, perms, sums, backend=backend)
    expected, _ = _expected_sums(outputs, perms)
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_accumulate_non_contiguous(backend):
    perms = _perms(4, 9).t().contiguous().t()
    outputs = non_contiguous(torch.randn(4, 10, 6)).transpose(1, 2).contiguous().transpose(1, 2)
    outputs = non_contiguous(outputs)
    assert not perms.is_contiguous() and not outputs.is_contiguous()
    sums = torch.zeros(6, 9, dtype=torch.float64).t()  # [9, 6] transposed view
    sumsq = non_contiguous(torch.zeros(9, 6, dtype=torch.float64))
    sums_storage = sums.data_ptr()
    shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    assert sums.data_ptr() == sums_storage  # updated in place, not rebound
    expected_sums, expected_sumsq = _expected_sums(outputs, perms)
    assert_close_to_reference(sums, expected_sums)
    assert_close_to_reference(sumsq, expected_sumsq)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulate_twice_is_a_running_sum(backend, dtype):
    perms_a, perms_b = _perms(3, 8, seed=1), _perms(5, 8, seed=2)
    out_a, out_b = torch.randn(3, 9, 2, dtype=dtype), torch.randn(5, 9, 2, dtype=dtype)
    sums, sumsq = torch.zeros(8, 2, dtype=dtype), torch.zeros(8, 2, dtype=dtype)
    shapley_accumulate(out_a, perms_a, sums, sumsq, backend=backend)
    shapley_accumulate(out_b, perms_b, sums, sumsq, backend=backend)
    expected_sums, expected_sumsq = _expected_sums(torch.cat([out_a, out_b]), torch.cat([perms_a, perms_b]))
    assert_close_to_reference(sums, expected_sums)
    assert_close_to_reference(sumsq, expected_sumsq)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_accumulate_without_sumsq_and_empty(backend):
    perms = _perms(3, 5)
    outputs = torch.randn(3, 6, 2)
    sums = torch.ones(5, 2)
    shapley_accumulate(outputs, perms, sums, backend=backend)
    expected, _ = _expected_sums(outputs, perms, sums=torch.ones(5, 2))
    assert_close_to_reference(sums, expected)
    # Nothing to add: no permutations, or an empty output shape T.
    unchanged = sums.clone()
    shapley_accumulate(torch.zeros(0, 6, 2), torch.zeros(0, 5, dtype=torch.int64), sums, backend=backend)
    assert torch.equal(sums, unchanged)
    empty_t = torch.zeros(5, 0)
    shapley_accumulate(torch.zeros(3, 6, 0), perms, empty_t, torch.zeros(5, 0), backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_accumulate_is_deterministic(backend):
    perms = _perms(40, 37)
    outputs = torch.randn(40, 38, 3)
    results = []
    for _ in range(2):
        sums = torch.zeros(37, 3)
        shapley_accumulate(outputs, perms, sums, backend=backend)
        results.append(sums)
    assert torch.equal(results[0], results[1])


# ----------------------------------------------------------------------------- known games


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("t_shape", [(), (2, 5)])
def test_additive_game_is_exact(backend, t_shape):
    # f(S) = c + sum_{i in S} w_i: every marginal of feature i is w_i, so the Shapley value is w_i
    # and its standard error is 0 whatever the permutations.
    num_perms, num_features = 6, 13
    weights = torch.randn((num_features,) + t_shape, dtype=torch.float64)
    offset = 0.75
    perms = _perms(num_perms, num_features)
    outputs = _game_outputs(perms, lambda keep: offset + torch.tensordot(keep.double(), weights, dims=1),
                            backend=backend)
    sums, sumsq = torch.zeros_like(weights), torch.zeros_like(weights)
    shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    mean, stderr = shapley_stats(sums, sumsq, num_perms)
    torch.testing.assert_close(mean, weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stderr, torch.zeros_like(stderr), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_quadratic_game_over_all_permutations_is_exact(backend):
    # f(S) = (sum_{i in S} w_i)^2 has Shapley values phi_i = w_i * sum_j w_j (each cross term
    # w_i w_j is shared equally); averaging over all F! permutations is exact.
    num_features = 4
    weights = torch.tensor([0.5, -1.25, 2.0, 0.3], dtype=torch.float64)
    perms = torch.tensor(list(itertools.permutations(range(num_features))))
    outputs = _game_outputs(perms, lambda keep: (keep.double() @ weights) ** 2, backend=backend)
    sums, sumsq = torch.zeros(num_features, dtype=torch.float64), torch.zeros(num_features, dtype=torch.float64)
    shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    mean, _ = shapley_stats(sums, sumsq, perms.shape[0])
    torch.testing.assert_close(mean, weights * weights.sum(), rtol=1e-12, atol=1e-12)
    assert torch.isclose(mean.sum(), weights.sum() ** 2)  # efficiency: values add up to f(N) - f({})


def test_matches_captum_shapley_values():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    inputs = torch.randn(2, 8, dtype=torch.float64)
    baselines = torch.randn(1, 8, dtype=torch.float64).expand(2, 8)
    model = model.double()
    feature_mask = torch.tensor([[0, 0, 1, 2, 2, 2, 3, 1]])
    num_features = 4
    expected = captum_attr.ShapleyValues(lambda x: model(x).squeeze(-1)).attribute(
        inputs, baselines=baselines, feature_mask=feature_mask)

    perms = torch.tensor(list(itertools.permutations(range(num_features))))  # the exact walk Captum takes
    keep = shapley_coalitions(perms, *shapley_prefix_rows(perms.shape[0], num_features, include_empty=True))
    pixel_keep = keep[:, feature_mask[0]]  # [R, 8]
    batch = torch.where(pixel_keep[:, None, :], inputs, baselines)  # [R, N, 8]
    with torch.no_grad():
        outputs = model(batch).squeeze(-1).reshape(perms.shape[0], num_features + 1, 2)
    sums = torch.zeros(num_features, 2, dtype=torch.float64)
    shapley_accumulate(outputs, perms, sums)
    mean = sums / perms.shape[0]  # [F, N]
    # Captum accumulates in float32.
    assert_close_to_reference(expected, mean.t()[:, feature_mask[0]])


# ----------------------------------------------------------------------------- statistics


def test_stats_match_sample_statistics():
    marginals = torch.randn(7, 4, 3, dtype=torch.float64)  # [count, F, T]
    mean, stderr = shapley_stats(marginals.sum(0), (marginals ** 2).sum(0), 7)
    torch.testing.assert_close(mean, marginals.mean(0))
    torch.testing.assert_close(stderr, marginals.std(0, unbiased=True) / math.sqrt(7))


def test_stats_edge_cases():
    sums = torch.tensor([2.0, -1.0])
    mean, stderr = shapley_stats(sums, sums ** 2, 1)
    assert torch.equal(mean, sums) and torch.isinf(stderr).all()
    # Rounding can make the one-pass variance slightly negative: clamped to zero.
    mean, stderr = shapley_stats(torch.tensor([3.0]), torch.tensor([3.0 - 1e-7]), 3)
    assert stderr.item() == 0.0
    with pytest.raises(ValueError, match="count"):
        shapley_stats(sums, sums, 0)
    with pytest.raises(ValueError, match="shape"):
        shapley_stats(sums, torch.zeros(3), 2)
    with pytest.raises(TypeError, match="sumsq"):
        shapley_stats(sums, torch.zeros(2, dtype=torch.int64), 2)


# ----------------------------------------------------------------------------- arguments, compile


def test_bad_arguments_are_named():
    perms = _perms(3, 5)
    rows = shapley_prefix_rows(3, 5)
    outputs, sums = torch.randn(3, 6, 2), torch.zeros(5, 2)
    with pytest.raises(TypeError, match="perms"):
        shapley_coalitions(perms.float(), *rows)
    with pytest.raises(TypeError, match="perm_index"):
        shapley_coalitions(perms, rows[0].tolist(), rows[1])
    with pytest.raises(ValueError, match=r"perms must have shape \[P, F\]"):
        shapley_coalitions(perms[0], *rows)
    with pytest.raises(ValueError, match="same length"):
        shapley_coalitions(perms, rows[0][:-1], rows[1])
    with pytest.raises(ValueError, match=r"perms values must be in \[0, 5\), got min 0 and max 5"):
        shapley_coalitions(perms + (perms == 4).long(), *rows)
    with pytest.raises(ValueError, match=r"prefix_size values must be in \[0, 5\], got min 2 and max 6"):
        shapley_coalitions(perms, rows[0], rows[1] + 1)
    with pytest.raises(ValueError, match=r"perm_index values must be in \[0, 3\)"):
        shapley_coalitions(perms, rows[0] + 1, rows[1])
    repeated = perms.clone()
    repeated[1, 0] = repeated[1, 1]
    with pytest.raises(ValueError, match="row 1 repeats a value"):
        shapley_coalitions(repeated, *rows, check_permutations=True)
    with pytest.raises(ValueError, match="row 1 repeats"):
        shapley_accumulate(outputs, repeated, sums, check_permutations=True)
    with pytest.raises(ValueError, match=r"outputs must have shape \[P, F \+ 1, \*T\]"):
        shapley_accumulate(outputs[:, :5], perms, sums)
    with pytest.raises(ValueError, match=r"sums must have shape \[F, \*T\] = \[5, 2\], got \(5, 3\)"):
        shapley_accumulate(outputs, perms, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="sumsq must have shape"):
        shapley_accumulate(outputs, perms, sums, torch.zeros(5))
    with pytest.raises(TypeError, match="outputs"):
        shapley_accumulate(outputs.long(), perms, sums)
    with pytest.raises(TypeError, match="sums"):
        shapley_accumulate(outputs, perms, sums.long())
    with pytest.raises(TypeError, match="sumsq must have the dtype of sums"):
        shapley_accumulate(outputs, perms, sums, sums.double())
    with pytest.raises(ValueError, match="sums must not overlap the memory of sumsq"):
        shapley_accumulate(outputs, perms, sums, sums)
    both = torch.zeros(6, 2)
    with pytest.raises(ValueError, match="must not overlap"):  # partly overlapping views
        shapley_accumulate(outputs, perms, both[:5], both[1:])
    with pytest.raises(ValueError, match=r"perms values must be in \[0, 5\)"):
        shapley_accumulate(outputs, perms - 1, sums)
    with pytest.raises(ValueError, match="backend must be one of"):
        shapley_accumulate(outputs, perms, sums, backend="gpu")
    assert torch.equal(sums, torch.zeros(5, 2))  # nothing was written by the failed calls


def test_torch_compile_fullgraph():
    perms = _perms(4, 6)
    rows = shapley_prefix_rows(4, 6, include_empty=True)
    weights = torch.randn(6)

    def walk(perms, perm_index, prefix_size, weights):
        keep = shapley_coalitions(perms, perm_index, prefix_size)
        outputs = (keep.float() @ weights).reshape(perms.shape[0], perms.shape[1] + 1)
        sums = torch.zeros(perms.shape[1], dtype=torch.float64)
        sumsq = torch.zeros_like(sums)
        shapley_accumulate(outputs, perms, sums)
        shapley_accumulate(outputs, perms, sums, sumsq)
        return keep, sums, sumsq

    compiled = torch.compile(walk, backend="eager", fullgraph=True)
    keep, sums, sumsq = compiled(perms, *rows, weights)
    expected_keep, expected_sums, expected_sumsq = walk(perms, *rows, weights)
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(sums, expected_sums)
    torch.testing.assert_close(sumsq, expected_sumsq)
    # Additive game: two passes of 4 permutations, each marginal of feature i is weights[i].
    torch.testing.assert_close(sums, 8 * weights.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sumsq, 4 * weights.double() ** 2, rtol=1e-6, atol=1e-6)
