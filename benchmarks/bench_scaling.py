"""Scaling of cohort runs with the number of ranks (torchrun, gloo on the CPU).

Two workloads, each run as 1 rank x 1 thread, 2 ranks x 1 thread and 1 rank x 2 threads:

- ``cohort``: N small synthetic cases (Shapley value sampling), cases sharded across ranks;
- ``large``: one larger case (4x32^3, the seed authors' setting: 25 permutations over ~200
  superpixels, about 5,000 evaluations), its Shapley permutations sharded across ranks (all_reduce).

For each: wall time of the run (process start-up excluded: measured inside ``run_cohort``),
cases per hour, model evaluations per second, the model's share of the ranks' wall time, the
time in collectives (communication, including waiting for the slower rank), per-rank times, and
the achievable bound (``bound_speedup``: the 1x1 run's time divided over the ranks; within one
case only its model time, the rest kept serial: loading, SLIC, figures). Ratios to 1 rank x 1
thread are measured in the same run, under the same load; the load average is recorded before
and after.

    PYTHONPATH=$PWD python benchmarks/bench_scaling.py            # ~5 min on a quiet 2-core CPU
    PYTHONPATH=$PWD python benchmarks/bench_scaling.py --quick    # ~1 min
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = ((1, 1), (2, 1), (1, 2))  # (ranks, threads per rank)
# A model that, like a real one, dominates the evaluation cost (the tests' VGG3D is 10x smaller).
MODEL_KWARGS = '{"in_channels": 4, "widths": [8, 16, 32], "hidden": 16}'


def worker(args) -> None:
    """One rank, under torchrun: run the cohort and write this rank's report."""
    import torch

    from cohort_data import FACTORY, MODALITIES
    from mmxai_fast.cohort import CohortSettings, discover_cases, init_distributed, run_cohort
    from mmxai_fast.pipeline.models_io import load_state_dict_model

    torch.set_num_threads(args.threads)
    model = load_state_dict_model(args.model, FACTORY, json.loads(MODEL_KWARGS))
    dist = init_distributed("cpu")
    settings = CohortSettings(n_samples=args.n_samples, n_segments=args.n_segments, modalities=MODALITIES)
    report = run_cohort(discover_cases(args.cases), model, args.out, settings, dist=dist, shard=args.shard,
                        chunk=args.chunk, show_progress=False)
    Path(args.report).mkdir(parents=True, exist_ok=True)
    (Path(args.report) / f"rank{dist.rank}.json").write_text(json.dumps({
        "wall_s": report.wall_s, "model_s": report.model_s, "model_inputs": report.model_inputs,
        "comm_s": report.comm_s, "computed": len(report.computed), "shard": report.shard,
        "done": len(report.done)}))
    dist.close()


def run_config(workdir: Path, name: str, ranks: int, threads: int, cases: Path, model: Path, shard: str,
               n_samples: int, n_segments: int, chunk: int) -> dict:
    out, reports = workdir / f"{name}_{ranks}x{threads}_out", workdir / f"{name}_{ranks}x{threads}_reports"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           str(Path(__file__).resolve()), "--worker", "--threads", str(threads), "--cases", str(cases), "--model",
           str(model), "--out", str(out), "--report", str(reports), "--shard", shard, "--n-samples", str(n_samples),
           "--n-segments", str(n_segments), "--chunk", str(chunk)]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    launch_s = time.perf_counter() - start
    per_rank = [json.loads(p.read_text()) for p in sorted(reports.glob("rank*.json"))]
    wall = max(r["wall_s"] for r in per_rank)
    n_cases = per_rank[0]["done"]
    return {"ranks": ranks, "threads": threads, "shard": per_rank[0]["shard"], "wall_s": wall,
            "launch_wall_s": launch_s, "cases": n_cases, "cases_per_hour": 3600 * n_cases / wall,
            "evaluations_per_s": sum(r["model_inputs"] for r in per_rank) / wall,
            "model_share": sum(r["model_s"] for r in per_rank) / (ranks * wall),
            "comm_s": max(r["comm_s"] for r in per_rank),
            "per_rank": [{k: r[k] for k in ("wall_s", "model_s", "comm_s", "computed")} for r in per_rank]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller cohort and case (about a minute)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling_cpu.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--threads", "--n-samples", "--n-segments", "--chunk"):
        p.add_argument(flag, type=int, help=argparse.SUPPRESS)
    for flag in ("--cases", "--model", "--report", "--shard"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from cohort_data import make_cohort, save_model

    from _harness import cpu_facts, environment, row as results_row, write_results  # `row` names a loop variable
    import torch

    # The large case uses the seed authors' Shapley setting: 25 permutations over ~200 superpixels
    # (50 per modality), about 5,000 model evaluations of one case.
    n_cases, small, large, perms_small, perms_large = (4, 16, 24, 6, 12) if args.quick else (16, 24, 32, 12, 25)
    segments_large = 16 if args.quick else 50
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_cohort(tmp / "cohort", n_cases, shape=(small,) * 3)
        make_cohort(tmp / "large", 1, shape=(large,) * 3, seed=100)
        model = save_model(tmp / "model.pt", factory_kwargs=MODEL_KWARGS)
        for workload, cases, shard, perms, segments in (
                ("cohort", tmp / "cohort", "cases", perms_small, 16),
                ("large", tmp / "large", "permutations", perms_large, segments_large)):
            for ranks, threads in CONFIGS:
                row = run_config(tmp, workload, ranks, threads, cases, model, shard, perms, segments, 32)
                row["workload"] = workload
                rows.append(row)
                print(f"{workload:7s} {ranks} rank(s) x {threads} thread(s): {row['wall_s']:7.2f} s, "
                      f"{row['cases_per_hour']:8.1f} cases/h, {row['evaluations_per_s']:7.1f} evals/s, "
                      f"model {100 * row['model_share']:4.1f}%, comm {row['comm_s']:.3f} s", flush=True)
    for row in rows:
        base = next(r for r in rows if r["workload"] == row["workload"] and r["ranks"] == 1 and r["threads"] == 1)
        row["speedup_vs_1x1"] = row["cases_per_hour"] / base["cases_per_hour"]
        # Achievable bound: the 1x1 run's model time divided over the ranks, the rest of its wall
        # time (engine, loading, SLIC, figures) too in cases mode, but not within one case.
        serial = 0.0 if row["shard"] == "cases" else base["wall_s"] * (1 - base["model_share"])
        row["bound_wall_s"] = serial + (base["wall_s"] - serial) / row["ranks"]
        row["bound_speedup"] = base["wall_s"] / row["bound_wall_s"]
    meta = {"benchmark": "bench_scaling", "quick": args.quick, "environment": environment(torch.device("cpu")),
            "cpu": cpu_facts(load_before), "cohort": {"cases": n_cases, "shape": [4, small, small, small],
                                                      "n_samples": perms_small},
            "large_case": {"shape": [4, large, large, large], "n_samples": perms_large, "n_segments": segments_large}}
    # one run per configuration (iqr_s null); ratio: cases per hour against 1 rank x 1 thread
    write_results(args.out, [results_row("run_cohort", f"{r['ranks']} rank(s) x {r['threads']} thread(s)",
                                         r["workload"], device="cpu", dtype="float32", median_s=r["wall_s"],
                                         ratio=r["speedup_vs_1x1"], **r) for r in rows], meta)
    for row in rows:
        print(f"{row['workload']:7s} {row['ranks']}x{row['threads']}: {row['speedup_vs_1x1']:.2f}x cases/hour of 1x1 "
              f"(bound {row['bound_speedup']:.2f}x: 1x1 model time over the ranks"
              f"{', the rest serial' if row['shard'] != 'cases' else ' and the rest too'})")
    print(f"load average before {load_before}, after {meta['cpu']['loadavg_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
