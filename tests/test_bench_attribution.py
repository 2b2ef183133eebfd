"""Smoke test of benchmarks/bench_attribution.py (tiny sizes), so the benchmark cannot rot."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_attribution  # noqa: E402


def test_quick_run_writes_consistent_json(tmp_path):
    out = tmp_path / "attribution.json"
    payload = bench_attribution.main(["--quick", "--scenarios", "a,b,c,accuracy", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    rows = payload["rows"]
    assert {r["scenario"] for r in rows} == {"a", "b", "c"}
    methods = {r["method"] for r in rows if r["scenario"] == "b"}
    assert {"FeatureAblation", "Occlusion", "ShapleyValueSampling", "ShapleyValueSampling(antithetic)"} <= methods
    for row in rows:
        ours = row["ours"]
        assert ours["model_calls"] >= 2 and ours["model_evaluations"] >= ours["model_calls"]
        assert ours["repeats"] <= 2  # medians of one or two values: overhead = wall - model exactly
        assert ours["overhead_s"] == pytest.approx(ours["wall_s"] - ours["model_s"], abs=1e-9)
        if row.get("equal_at_same_seed_expected"):
            # ours and Captum agree to float32 rounding on the same model, input, mask and seed
            assert row["max_abs_diff"] <= 1e-4 * max(1.0, row["max_abs_attr"]), row
        if row["method"] == "ShapleyValueSampling" and "captum" in row:
            assert row["captum"]["model_evaluations"] >= ours["model_evaluations"]
    accuracy = payload["meta"]["accuracy"]
    assert accuracy["budgets"] and all(b["captum_plain_rmse_mean"] > 0 for b in accuracy["budgets"])


def test_exact_shapley_matches_shapley_values():
    model = bench_attribution.SmallNonlinear(features=5)
    x = torch.randn(1, 5, dtype=torch.float64)
    from captum.attr import ShapleyValues
    expected = ShapleyValues(model).attribute(x).squeeze(0)  # Captum returns float32
    torch.testing.assert_close(bench_attribution.exact_shapley(model, x), expected.double(), rtol=1e-5, atol=1e-6)


def test_supervoxel_mask_is_per_modality():
    volume, foreground = bench_attribution.brain_like_volume(16)
    mask = bench_attribution.supervoxel_mask(volume, foreground, per_modality=5)
    assert mask.shape == (1, 4, 16, 16, 16) and mask.dtype == torch.int64
    assert bool((mask[0][:, ~foreground] == 0).all())  # background: the shared feature 0
    ids = [set(torch.unique(mask[0, m][foreground]).tolist()) for m in range(4)]
    assert all(ids[a].isdisjoint(ids[b]) for a in range(4) for b in range(a + 1, 4))  # own labels per modality
    assert torch.equal(torch.unique(mask), torch.arange(int(mask.max()) + 1))  # no gaps


def test_bad_scenario_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        bench_attribution.main(["--scenarios", "z", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_update_replaces_only_the_rerun_rows(tmp_path):
    out = tmp_path / "attribution.json"
    first = bench_attribution.main(["--quick", "--scenarios", "b", "--methods", "FeatureAblation,Occlusion",
                                    "--out", str(out)])
    assert {r["method"] for r in first["rows"]} == {"FeatureAblation", "Occlusion"}
    second = bench_attribution.main(["--quick", "--scenarios", "b", "--methods", "Occlusion", "--update",
                                     "--out", str(out)])
    rows = {r["method"]: r for r in second["rows"]}
    assert set(rows) == {"FeatureAblation", "Occlusion"}
    assert rows["FeatureAblation"] == json.loads(json.dumps(first["rows"][0]))  # kept as measured
    assert second["meta"]["kept_from_previous_run"]["scenarios"] == ["b"]
