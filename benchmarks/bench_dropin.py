"""Drop-in speed of an unmodified Captum pipeline: plain Captum vs ``mmxai-fast run --batch keep``
vs ``mmxai-fast run --incremental off`` vs ``mmxai-fast run`` (batch and incremental auto), each in
its own subprocess, on benchmarks/dropin_pipeline.py
(4x64^3, per-modality SLIC, batch 1, default perturbations_per_eval), for a VGG-like and a
DenseNet-like 3D classifier; then the gain of each Evaluator policy on its own (FeatureAblation,
VGG-like, against the same plain-Captum run).

    python benchmarks/bench_dropin.py --out benchmarks/results/dropin_cpu_2core.json [--quick]

Subsampled against a real run, the same settings for all three ways: SLIC with 4 segments per
modality, ids merged in pairs (16 features; a real run uses 16 segments, 96 features), 32
Lime/KernelShap samples (twice the features, so the unregularized KernelShap fit is well posed),
Occlusion windows of 21^3 voxels x 4 modalities (64 windows), ShapleyValueSampling with one
permutation: about 130 model evaluations per way and model.

Runtime: 1107 s on the quiet 2-core CPU (3 models, 2 rounds, policy rows); ``--models vgg``,
``--repeats 1`` or ``--policies off`` shorten it.

KernelShap's samples at a given seed differ from Captum's (same distribution, see
:class:`mmxai_fast.attr.KernelShap`), so its difference from Captum is estimator variance; the
``max_rel_diff_vs_keep`` column compares each way with ``run --batch keep`` (the engine's own
samples), which shows whether batching changes results.

Reports per method: wall-time ratio against Captum, the chunk size chosen, the model's share of
wall time, and the largest difference from Captum's attribution (relative to its max |value|);
each subprocess's wall time and the load average before it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import as_row, cpu_facts, environment, write_results  # noqa: E402

PIPELINE = str(Path(__file__).resolve().parent / "dropin_pipeline.py")
RUN = [sys.executable, "-m", "mmxai_fast", "run", "--report"]
FOLD = ["--fold-batchnorm", "on"]  # the opt-in BatchNorm folding, on for every ``run`` way
CONFIGS = {
    "captum": [sys.executable, PIPELINE],
    "run --batch keep": RUN + FOLD + ["--batch", "keep", PIPELINE],
    "run --incremental off": RUN + FOLD + ["--incremental", "off", PIPELINE],
    "run": RUN + FOLD + [PIPELINE],
}
METHODS = ["FeatureAblation", "ShapleyValueSampling", "Occlusion", "Lime", "KernelShap"]
OFF = ["--channels-last", "off", "--no-inference-mode", "--onednn-conv", "off", "--malloc", "system",
       "--fold-batchnorm", "off"]


def _policy(*flags: str) -> list:
    """``mmxai-fast run`` with every policy off but ``flags`` (each later flag wins over OFF's)."""
    return RUN + ["--incremental", "off", "--batch", "keep", *OFF, *flags, PIPELINE]


POLICIES = {  # FeatureAblation on the VGG-like model, one policy at a time
    "engine only": _policy(),
    "+ batching": _policy("--batch", "auto"),
    "+ channels_last_3d": _policy("--channels-last", "on"),
    # --no-inference-mode (in OFF) has no "on" flag: this row lists its flags itself
    "+ inference_mode": RUN + ["--incremental", "off", "--batch", "keep", "--channels-last", "off", "--onednn-conv",
                               "off", "--malloc", "system", "--fold-batchnorm", "off", PIPELINE],
    "+ oneDNN conv3d": _policy("--onednn-conv", "auto"),
    "+ malloc keep": _policy("--malloc", "keep"),
    "+ fold BatchNorm": _policy("--fold-batchnorm", "on"),
}


def run_config(command: list, args: list, out: Path) -> tuple:
    start = time.perf_counter()
    result = subprocess.run(command + args + ["--out", str(out)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    rows = {json.loads(line)["method"]: json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")}
    return rows, result.stderr, torch.load(out), time.perf_counter() - start


def report_notes(stderr: str, method: str) -> dict:
    """Chunk size and model share from ``--report``'s lines for ``method``."""
    lines = stderr.splitlines()
    info = {}
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{method}:"):
            info["model_share"] = float(line.split("(")[1].split("%")[0]) / 100
            for note in lines[i + 1:]:
                if not note.startswith("    "):
                    break
                if "perturbations_per_eval=" in note:
                    info["chunk"] = int(note.split("perturbations_per_eval=")[1].split()[0].rstrip(":"))
                    info["channels_last_3d"] = "channels_last_3d on" in note
    return info


def _rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _median_iqr(values: list) -> tuple:
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered[0], None
    q = statistics.quantiles(ordered, n=4, method="inclusive")
    return statistics.median(ordered), q[2] - q[0]


def compare(model: str, args: list, configs: dict, methods: list, tmp: Path, repeats: int, base=None) -> tuple:
    """Rows for every config and method, and the first config's (median timings, attributions) (the
    plain-Captum baseline; ``base``: one measured earlier with the same settings). The configs run
    in turn, each in a fresh subprocess, ``repeats`` rounds (captum, keep, run, captum, ...), so
    order effects and slow drifts of the machine fall on every way alike; medians over rounds."""
    walls: dict = {name: {m: [] for m in methods} for name in configs}
    loads: dict = {name: [] for name in configs}
    outputs: dict = {}
    for _ in range(repeats):
        for name, command in configs.items():
            loads[name].append(os.getloadavg()[0])
            timings, stderr, attrs, _ = run_config(command, ["--model", model, "--methods", *methods] + args,
                                                   tmp / f"{model}_{abs(hash(name))}.pt")
            outputs[name] = (stderr, attrs)
            for method in methods:
                walls[name][method].append(timings[method]["wall_s"])
    first = next(iter(configs))
    base = base or ({m: {"wall_s": _median_iqr(walls[first][m])[0]} for m in methods}, outputs[first][1])
    keep = outputs.get("run --batch keep", (None, None))[1]
    rows = []
    for name in configs:
        stderr, attrs = outputs[name]
        for method in methods:
            median, iqr = _median_iqr(walls[name][method])
            diff = _rel_diff(attrs[method], base[1][method])
            diff_keep = _rel_diff(attrs[method], keep[method]) if keep is not None else float("nan")
            rows.append({"op": "attribution", "impl": name, "case": f"{model} {method}", "model": model,
                         "method": method, "wall_s": median, "iqr_s": iqr, "walls_s": walls[name][method],
                         "repeats": repeats, "ratio_vs_captum": base[0][method]["wall_s"] / median,
                         "max_rel_diff_vs_captum": diff, "max_rel_diff_vs_keep": diff_keep,
                         "loadavg_before": loads[name], **report_notes(stderr, method)})
            print(f"{model:9s} {method:21s} {name:26s} {rows[-1]['ratio_vs_captum']:6.2f}x  "
                  f"chunk {rows[-1].get('chunk', '-')}  model share {rows[-1].get('model_share', float('nan')):.2f}  "
                  f"max rel diff {diff:.1e} (vs keep {diff_keep:.1e})  walls {[round(w, 2) for w in walls[name][method]]}"
                  f"  (load {loads[name][0]:.1f})", flush=True)
    return rows, base


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/dropin_cpu_2core.json")
    parser.add_argument("--quick", action="store_true", help="32^3 volumes (same features and samples)")
    parser.add_argument("--models", nargs="+", default=["vgg", "densenet", "monai-densenet121"],
                        choices=["vgg", "densenet", "monai-densenet121"])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of all ways in turn (each way in a fresh subprocess); medians reported")
    parser.add_argument("--policies", choices=("on", "off", "only"), default="on",
                        help="the per-policy rows (FeatureAblation on the first model)")
    args = parser.parse_args(argv)
    size = (["--size", "32", "--segments", "4", "--samples", "48", "--window", "8"] if args.quick
            else ["--size", "64", "--segments", "4", "--group", "2", "--samples", "32", "--window", "21"])
    methods = args.methods
    load_before = os.getloadavg()
    payload = {"command": " ".join(["python", "benchmarks/bench_dropin.py"] + (argv or sys.argv[1:])),
               "environment": environment(torch.device("cpu")), "rows": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bases = {}
        for model in args.models if args.policies != "only" else []:
            rows, bases[model] = compare(model, size, CONFIGS, methods, Path(tmp), args.repeats)
            payload["rows"] += rows
        policy_model = args.models[0]
        if args.policies != "off":
            captum_fa = None
            if policy_model in bases and "FeatureAblation" in methods:
                captum_fa = ({"FeatureAblation": bases[policy_model][0]["FeatureAblation"]},
                             {"FeatureAblation": bases[policy_model][1]["FeatureAblation"]})
            policies = POLICIES if captum_fa else {"captum": CONFIGS["captum"], **POLICIES}
            payload["policies"] = compare(policy_model, size, policies, ["FeatureAblation"], Path(tmp), args.repeats,
                                          captum_fa)[0]
    payload["cpu"] = cpu_facts(load_before)
    payload["runtime_s"] = time.perf_counter() - start
    print(f"runtime {payload['runtime_s']:.0f} s")
    rows = [as_row(dict(r, study=study), r["method"], device="cpu", dtype="float32", ratio_key="ratio_vs_captum",
                   median_key="wall_s") for study, key in (("configs", "rows"), ("policies", "policies"))
            for r in payload.pop(key, [])]  # one run each: iqr_s null
    write_results(Path(args.out), rows, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
