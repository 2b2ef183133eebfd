"""Sharding within one attribution over real gloo ranks (one launch of 3 processes, sub-groups
for 2 ranks): every engine method sharded over 2 and 3 ranks equals the normal single-process
class, and an exception on one rank makes every rank fail with its message instead of waiting."""
from __future__ import annotations

import json
import multiprocessing
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

from cohort_data import FACTORY, FACTORY_KWARGS, MODALITIES, assert_same_outputs, make_cohort, save_model

WORLD = 3
# float64 model: only the batch composition differs (1e-16); Lime/KernelShap fit in float32
RTOL, ATOL = 1e-5, 1e-7


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool3d(1),
                                torch.nn.Flatten(), torch.nn.Linear(3, 2)).double().eval()
    x = torch.randn(1, 2, 6, 6, 6, dtype=torch.float64)
    mask = (torch.arange(216).reshape(6, 6, 6) * 4 // 216).expand(2, 6, 6, 6).clone()
    mask[1] += 4
    return model, x, mask[None]


class _RaisesOnRank(torch.nn.Module):
    def __init__(self, model, rank, fail_rank=1):
        super().__init__()
        self.model, self.fails = model, rank == fail_rank

    def forward(self, x):
        if self.fails and x.shape[0] > 1:  # after the first (single-input) evaluation
            raise ValueError("boom on this rank")
        return self.model(x)


def _methods(model, x, mask):
    from mmxai_fast import attr

    def seeded(fn):
        torch.manual_seed(11)
        return fn()

    return {
        "Occlusion": lambda: attr.Occlusion(model).attribute(x, sliding_window_shapes=(1, 3, 3, 3), strides=(1, 2, 2, 2),
                                                             target=1, perturbations_per_eval=4),
        "FeatureAblation": lambda: attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask,
                                                                         perturbations_per_eval=3),
        "Lime": lambda: seeded(lambda: attr.Lime(model).attribute(x, target=1, feature_mask=mask, n_samples=40,
                                                                  perturbations_per_eval=6)),
        "KernelShap": lambda: seeded(lambda: attr.KernelShap(model).attribute(x, target=1, feature_mask=mask,
                                                                              n_samples=40, perturbations_per_eval=6)),
        "ShapleyValueSampling": lambda: seeded(lambda: attr.ShapleyValueSampling(model).attribute(
            x, target=1, feature_mask=mask, n_samples=5, perturbations_per_eval=7)),
    }


def _expect_rank_failed(fn, dist):
    from mmxai_fast.cohort import RankFailed

    try:
        fn()
    except RankFailed as exc:
        assert "rank 1 failed: ValueError: boom on this rank" in str(exc), str(exc)
        assert (exc.__cause__ is not None) == (dist.rank == 1)
        return
    raise AssertionError("no RankFailed raised")


def _checks(rank: int, root: Path) -> dict:
    from mmxai_fast.attr._evaluator import row_runner
    from mmxai_fast.cohort import CohortSettings, Dist, discover_cases, run_cohort, sharded_rows, \
        sharded_shapley_sampling
    from mmxai_fast.cohort.distributed import subgroup
    from mmxai_fast.pipeline.models_io import load_state_dict_model

    world = Dist(rank=rank, world_size=WORLD, backend="gloo")
    pair = subgroup([0, 1])
    model, x, mask = _problem()
    report: dict = {"rows": {}}
    for name, compute in _methods(model, x, mask).items():
        counted = []
        with row_runner(lambda ev, n, make: (counted.append(n), ev.run_local(n, make))[1]):
            reference = compute()
        for group in (world, pair):
            if group is None:
                continue
            with sharded_rows(group) as runner:
                sharded = compute()
            torch.testing.assert_close(sharded, reference, rtol=RTOL, atol=ATOL, msg=f"{name} W={group.world_size}")
            # the ranks evaluated disjoint shares of the rows
            assert sum(group.gather(runner.rows)) == sum(counted), name
            report["rows"][f"{name}/{group.world_size}"] = runner.rows
    single = sharded_shapley_sampling(model, x, mask, 0.0, 1, 7, seed=3, chunk=5)
    for group in (world, pair):
        if group is not None:
            split = sharded_shapley_sampling(model, x, mask, 0.0, 1, 7, seed=3, chunk=5, dist=group)
            torch.testing.assert_close(split.attributions, single.attributions, rtol=1e-6, atol=1e-9)
    # a cohort, cases claimed by 2 ranks (a broken case listed) / by one process (rank 2)
    plain = load_state_dict_model(root / "model.pt", FACTORY, json.loads(FACTORY_KWARGS))
    settings = CohortSettings(n_samples=3, n_segments=2, modalities=MODALITIES)
    specs = discover_cases(root / "cases")
    # and one case explained by KernelShap, its coalitions shared by 2 ranks / in one process
    kernel = CohortSettings(method="KernelShap", n_samples=24, n_segments=2, modalities=MODALITIES)
    if pair is not None:
        report["computed"] = run_cohort(specs, plain, root / "sharded", settings, dist=pair, shard="cases",
                                        show_progress=False).computed
        report["kernel_shard"] = run_cohort(specs[:1], plain, root / "kernel_sharded", kernel, dist=pair,
                                            shard="permutations", show_progress=False).shard
    else:
        run_cohort(specs, plain, root / "single", settings, show_progress=False)
        run_cohort(specs[:1], plain, root / "kernel_single", kernel, show_progress=False)
    if pair is not None:  # a model that raises on rank 1 fails both ranks, with rank 1's message
        raising = _RaisesOnRank(model, rank)
        from mmxai_fast import attr

        def ablate():
            with sharded_rows(pair):
                attr.FeatureAblation(raising).attribute(x, target=1, feature_mask=mask, perturbations_per_eval=3)

        _expect_rank_failed(ablate, pair)
        _expect_rank_failed(lambda: sharded_shapley_sampling(raising, x, mask, 0.0, 1, 4, seed=0, dist=pair), pair)
        _expect_rank_failed(lambda: run_cohort(specs, _RaisesOnRank(plain, rank), root / "out", settings, dist=pair,
                                               shard="cases", show_progress=False), pair)
    world.barrier()
    return report


def _worker(rank: int, root: str) -> None:
    torch.set_num_threads(1)
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=WORLD,
                             timeout=timedelta(seconds=240))
    try:
        result = {"ok": True, **_checks(rank, Path(root))}
    except BaseException:
        result = {"ok": False, "error": traceback.format_exc()}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(result))
    tdist.destroy_process_group()


def test_engine_methods_sharded_over_2_and_3_ranks_and_a_failing_rank_fails_all(tmp_path):
    make_cohort(tmp_path / "cases", 3, shape=(8, 8, 8))
    (tmp_path / "cases" / "Case_002" / "Case_002_flair.nii.gz").unlink()  # fails to load: listed, skipped
    save_model(tmp_path / "model.pt")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 400
    for p in procs:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} still running after 400 s (waiting in a collective?)"
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for r, result in enumerate(results):
        assert result["ok"], f"rank {r}:\n{result.get('error')}"
    assert all(p.exitcode == 0 for p in procs)
    # every rank did a share of every method's rows
    assert all(results[r]["rows"]["Occlusion/3"] > 0 for r in range(WORLD))
    # cases claimed by 2 ranks == one process; the broken case listed by both
    assert sorted(results[0]["computed"] + results[1]["computed"]) == ["Case_000", "Case_001"]
    assert_same_outputs(tmp_path / "single", tmp_path / "sharded", ["Case_000", "Case_001"])
    assert results[0]["kernel_shard"] == "permutations"
    assert_same_outputs(tmp_path / "kernel_single", tmp_path / "kernel_sharded", ["Case_000"])
    for out in ("single", "sharded"):
        assert [f["case"] for f in json.loads((tmp_path / out / "failures.json").read_text())] == ["Case_002"]
    # the failing cohort: rank 0's case is published, rank 1's is not (a rerun retries it); nothing hung
    assert len([p for p in (tmp_path / "out").iterdir() if p.name.startswith("Case_")]) == 1
