"""mmxai_fast.cohort in one process: sharded Shapley sampling (exactness, world-size invariance,
checkpoint resume), discovery, manifest refusal, failures file, skipping finished cases."""
from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from cohort_data import FACTORY, FACTORY_KWARGS, MODALITIES, make_cohort, save_model
from mmxai_fast.cli import main
from mmxai_fast.cohort import (CohortSettings, ManifestError, discover_cases, model_weights_hash, run_cohort,
                               sharded_shapley_sampling)
from mmxai_fast.cohort.manifest import MANIFEST_NAME, read_manifest
from mmxai_fast.ops import perturb

SETTINGS = CohortSettings(n_samples=4, n_segments=4, modalities=MODALITIES)


def _problem(num_features=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool3d(1),
                                torch.nn.Flatten(), torch.nn.Linear(3, 2)).double().eval()
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    half = num_features // 2
    mask = (torch.arange(216).reshape(6, 6, 6) * half // 216).expand(2, 6, 6, 6).clone()
    mask[1] += half
    return model, x, mask[None]


def _exact_shapley(model, x, mask, target):
    num_features = int(mask.max()) + 1
    keep = torch.tensor(list(itertools.product([False, True], repeat=num_features)))
    with torch.no_grad():
        values = model(perturb(x[0], mask[0], keep, 0.0))[:, target]
    index = {tuple(row.tolist()): i for i, row in enumerate(keep)}
    phi = torch.zeros(num_features, dtype=torch.float64)
    for i, row in enumerate(keep.tolist()):
        size = sum(row)
        for f in (f for f in range(num_features) if not row[f]):
            with_f = list(row)
            with_f[f] = True
            weight = math.factorial(size) * math.factorial(num_features - size - 1) / math.factorial(num_features)
            phi[f] += weight * (values[index[tuple(with_f)]] - values[i])
    return phi


def _per_feature(values, mask):
    return torch.zeros(int(mask.max()) + 1, dtype=torch.float64).index_put_((mask.reshape(-1),),
                                                                           values.reshape(-1).double())


def test_sharded_shapley_estimates_exact_shapley_values_within_standard_errors():
    model, x, mask = _problem()
    result = sharded_shapley_sampling(model, x, mask, 0.0, 1, 120, seed=3, chunk=128)
    phi = _exact_shapley(model, x, mask, 1)
    estimate, stderr = _per_feature(result.attributions, mask), _per_feature(result.stderr, mask)
    assert (stderr > 0).all()
    assert ((estimate - phi).abs() / stderr).max() < 4.5  # 8 features: a 4.5-sigma miss has p < 1e-4
    # efficiency holds for every permutation, hence exactly for the estimate
    with torch.no_grad():
        gap = model(x)[0, 1] - model(torch.zeros_like(x))[0, 1]
    assert float(estimate.sum()) == pytest.approx(float(gap), rel=1e-5)


@pytest.mark.parametrize("world_size", [2, 3])
def test_permutation_shards_add_up_to_the_single_process_result(world_size):
    model, x, mask = _problem()
    whole = sharded_shapley_sampling(model, x, mask, 0.0, 1, 9, seed=5, chunk=5)
    parts = [sharded_shapley_sampling(model, x, mask, 0.0, 1, 9, seed=5, chunk=7, rank=r, world_size=world_size)
             for r in range(world_size)]
    torch.testing.assert_close(sum(p.attributions.double() for p in parts), whole.attributions.double(),
                               rtol=1e-6, atol=1e-7)
    assert sum(p.model_inputs for p in parts) - 2 * world_size == whole.model_inputs - 2


class _Dies(torch.nn.Module):
    """Raises on call number ``die_at``: an interruption in the middle of a case."""

    def __init__(self, model, die_at):
        super().__init__()
        self.model, self.die_at, self.calls = model, die_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt("killed")
        return self.model(x)


def test_checkpoint_resume_is_bit_identical_and_loses_at_most_the_interval(tmp_path):
    model, x, mask = _problem()
    full = sharded_shapley_sampling(model, x, mask, 0.0, 1, 20, seed=1, chunk=7)
    ckpt = tmp_path / "ck.pt"
    dying = _Dies(model, die_at=12)  # 2 initial calls, then one permutation (7 rows) per call
    with pytest.raises(KeyboardInterrupt):
        sharded_shapley_sampling(dying, x, mask, 0.0, 1, 20, seed=1, chunk=7, checkpoint=ckpt, checkpoint_every=3)
    done_before_kill = dying.calls - 1 - 2
    resumed = sharded_shapley_sampling(model, x, mask, 0.0, 1, 20, seed=1, chunk=7, checkpoint=ckpt,
                                       checkpoint_every=3)
    assert 0 < resumed.resumed_permutations <= done_before_kill
    assert done_before_kill - resumed.resumed_permutations <= 3
    assert torch.equal(resumed.attributions, full.attributions)
    assert torch.equal(resumed.stderr, full.stderr)
    other_seed = sharded_shapley_sampling(model, x, mask, 0.0, 1, 20, seed=2, chunk=7, checkpoint=ckpt)
    assert other_seed.resumed_permutations == 0  # a checkpoint of other settings is ignored


def test_sharded_shapley_rejects_bad_arguments():
    model, x, mask = _problem()
    with pytest.raises(ValueError, match="n_permutations must be an int >= 2, got 1"):
        sharded_shapley_sampling(model, x, mask, 0.0, 1, 1, seed=0)
    with pytest.raises(ValueError, match="rank must be an int in \\[0, 2\\), got 2"):
        sharded_shapley_sampling(model, x, mask, 0.0, 1, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="feature_mask must be integer of shape"):
        sharded_shapley_sampling(model, x, mask[..., :3], 0.0, 1, 4, seed=0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root / "cases", 2)
    return root / "cases", save_model(root / "model.pt")


def _model(path):
    from mmxai_fast.pipeline.models_io import load_state_dict_model

    return load_state_dict_model(path, FACTORY, json.loads(FACTORY_KWARGS))


def test_discovery_of_brats_folder_and_csv(tmp_path, cohort):
    cases, _ = cohort
    specs = discover_cases(cases)
    assert [s.case_id for s in specs] == ["Case_000", "Case_001"]
    assert [n for n, _ in specs[0].modalities] == list(MODALITIES) and specs[0].roi.endswith("_seg.nii.gz")
    assert all(s.problem is None for s in specs)
    csv = tmp_path / "cases.csv"
    csv.write_text("case,t1,flair,roi\nA," + str(cases / "Case_000/Case_000_t1.nii.gz") + ",missing.nii.gz,\n")
    (spec,) = discover_cases(csv)
    assert [n for n, _ in spec.modalities] == ["t1", "flair"] and spec.roi is None
    assert "flair: file" in spec.problem and "does not exist" in spec.problem
    csv.write_text("id,t1\nA,x.nii.gz\n")
    with pytest.raises(ValueError, match="must have a 'case' column"):
        discover_cases(csv)


def _cli(cases, model, out, *extra):
    return main(["cohort", "--cases", str(cases), "--state-dict", str(model), "--factory", FACTORY,
                 "--factory-kwargs", FACTORY_KWARGS, "--n-samples", "4", "--n-segments", "4", "--out", str(out),
                 "--no-progress", *extra])


def test_cohort_cli_writes_cases_skips_them_on_rerun_and_lists_failures(tmp_path, cohort, capsys):
    _, model = cohort
    broken = tmp_path / "cases"
    make_cohort(broken, 3)
    (broken / "Case_001" / "Case_001_t2.nii.gz").write_bytes(b"not a nifti")  # fails to load
    (broken / "Case_002" / "Case_002_flair.nii.gz").unlink()  # missing modality
    out = tmp_path / "out"
    assert _cli(broken, model, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Case_000", "failures.json", "index.html", "manifest.json"]
    index = (out / "index.html").read_text()
    assert "Case_000/viewer.html" in index and "iVBORw0KGgo" in index  # the link and a PNG thumbnail
    failures = json.loads((out / "failures.json").read_text())
    assert [f["case"] for f in failures] == ["Case_001", "Case_002"]
    assert "Case_001_t2.nii.gz" in failures[0]["error"] and "expected one *_flair.nii.gz" in failures[1]["error"]
    files = sorted(p.name for p in (out / "Case_000").iterdir())
    assert files == sorted([f"{m}_{kind}.nii.gz" for m in MODALITIES for kind in ("heatmap", "stderr")]
                           + ["heatmaps.png", "importance.json", "importance.png", "summary.json", "viewer.html"])
    summary = json.loads((out / "Case_000" / "summary.json").read_text())
    assert summary["settings"]["stderr"]["max"] > 0
    manifest = read_manifest(out)
    assert manifest["done"] == ["Case_000"] and manifest["model_hash"] == model_weights_hash(_model(model))
    before = (out / "Case_000" / "t1_heatmap.nii.gz").stat().st_mtime_ns
    assert _cli(broken, model, out) == 0  # rerun: Case_000 is skipped, the failures stay listed
    assert (out / "Case_000" / "t1_heatmap.nii.gz").stat().st_mtime_ns == before
    assert "1/3 cases done (1 were done before, 2 failed" in capsys.readouterr().out


def test_cohort_refuses_other_settings_other_weights_and_bad_manifests(tmp_path, cohort, capsys):
    cases, model = cohort
    specs = discover_cases(cases)[:1]
    out = tmp_path / "out"
    run_cohort(specs, _model(model), out, SETTINGS, show_progress=False)
    with pytest.raises(ManifestError, match="other settings .*n_samples: 4 -> 5"):
        run_cohort(specs, _model(model), out, CohortSettings(n_samples=5, n_segments=4, modalities=MODALITIES))
    other = _model(save_model(tmp_path / "other.pt", seed=1))
    with pytest.raises(ManifestError, match="other model weights"):
        run_cohort(specs, other, out, SETTINGS)
    assert _cli(cases, model, out, "--seed", "7") == 2
    err = capsys.readouterr().err
    assert "error: --out:" in err and "other settings" in err and "seed: 0 -> 7" in err
    manifest = out / MANIFEST_NAME
    good = manifest.read_text()
    manifest.write_text(good.replace('"Case_000"', '"Case_009"'))
    with pytest.raises(ManifestError, match="corrupted \\(checksum mismatch"):
        run_cohort(specs, _model(model), out, SETTINGS)
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(ManifestError, match="corrupted \\(not valid JSON"):
        run_cohort(specs, _model(model), out, SETTINGS)
    manifest.write_text(json.dumps({"format": "someone-else/2", "done": []}))
    with pytest.raises(ManifestError, match="not an mmxai-fast cohort manifest"):
        run_cohort(specs, _model(model), out, SETTINGS)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match="not empty and has no manifest.json"):
        run_cohort(specs, _model(model), stranger, SETTINGS)


def test_cohort_results_do_not_depend_on_case_order_or_subset(tmp_path, cohort):
    cases, model = cohort
    specs = discover_cases(cases)
    run_cohort(specs, _model(model), tmp_path / "a", SETTINGS, show_progress=False)
    run_cohort(specs[::-1][:1], _model(model), tmp_path / "b", SETTINGS, show_progress=False)
    a = nib.load(str(tmp_path / "a" / "Case_001" / "t1ce_heatmap.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "b" / "Case_001" / "t1ce_heatmap.nii.gz")).get_fdata()
    assert np.abs(a).max() > 0 and np.array_equal(a, b)
    assert not (tmp_path / "a" / ".work").exists()


def test_within_case_sharding_needs_an_engine_method_and_cli_checks_timeout(tmp_path, cohort, capsys):
    cases, model = cohort
    # one process in the within-case mode renders every file itself (no figure left to other ranks)
    run_cohort(discover_cases(cases)[:1], _model(model), tmp_path / "one", SETTINGS, shard="permutations",
               show_progress=False)
    for png in ("heatmaps.png", "importance.png"):
        assert (tmp_path / "one" / "Case_000" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saliency = CohortSettings(method="Saliency", n_samples=None, n_segments=4, modalities=MODALITIES)
    with pytest.raises(ValueError, match="shard='permutations' needs one of the methods .*got Saliency"):
        run_cohort(discover_cases(cases)[:1], _model(model), tmp_path / "out", saliency, shard="permutations")
    with pytest.raises(SystemExit) as exit_info:
        _cli(cases, model, tmp_path / "out2", "--dist-timeout", "0")
    assert exit_info.value.code == 2
    assert "--dist-timeout: must be > 0, got 0.0" in capsys.readouterr().err
