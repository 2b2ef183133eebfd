"""Drop-in speed of an unmodified Captum pipeline: plain Captum vs ``mmxai-fast run --batch keep``
vs ``mmxai-fast run`` (batch auto), each in its own subprocess, on benchmarks/dropin_pipeline.py
(4x64^3, per-modality SLIC, batch 1, default perturbations_per_eval), for a VGG-like and a
DenseNet-like 3D classifier; then the gain of each Evaluator policy on its own (FeatureAblation,
VGG-like).

    python benchmarks/bench_dropin.py --out benchmarks/results/dropin_cpu_2core.json [--quick]

Reports per method: wall-time ratio against Captum, the chunk size chosen, the model's share of
wall time, and the largest difference from Captum's attribution (relative to its max |value|).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import as_row, cpu_facts, environment, write_results  # noqa: E402

PIPELINE = str(Path(__file__).resolve().parent / "dropin_pipeline.py")
RUN = [sys.executable, "-m", "mmxai_fast", "run", "--report"]
CONFIGS = {
    "captum": [sys.executable, PIPELINE],
    "run --batch keep": RUN + ["--batch", "keep", PIPELINE],
    "run": RUN + [PIPELINE],
}
POLICIES = {  # FeatureAblation on the VGG-like model, one policy at a time
    "engine only": RUN + ["--batch", "keep", "--channels-last", "off", "--no-inference-mode", PIPELINE],
    "+ batching": RUN + ["--batch", "auto", "--channels-last", "off", "--no-inference-mode", PIPELINE],
    "+ channels_last_3d": RUN + ["--batch", "keep", "--channels-last", "on", "--no-inference-mode", PIPELINE],
    "+ inference_mode": RUN + ["--batch", "keep", "--channels-last", "off", PIPELINE],
}


def run_config(command: list, args: list, out: Path) -> tuple:
    result = subprocess.run(command + args + ["--out", str(out)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    rows = {json.loads(line)["method"]: json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")}
    return rows, result.stderr, torch.load(out)


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


def compare(model: str, args: list, configs: dict, methods: list, tmp: Path) -> list:
    rows, base = [], None
    for name, command in configs.items():
        timings, stderr, attrs = run_config(command, ["--model", model, "--methods", *methods] + args,
                                            tmp / f"{model}_{abs(hash(name))}.pt")
        base = base or (timings, attrs)
        for method in methods:
            ref = base[1][method].double()
            diff = float((attrs[method].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            rows.append({"op": "attribution", "impl": name, "case": f"{model} {method}", "model": model,
                         "method": method, "wall_s": timings[method]["wall_s"],
                         "ratio_vs_captum": base[0][method]["wall_s"] / timings[method]["wall_s"],
                         "max_rel_diff_vs_captum": diff, **report_notes(stderr, method)})
            print(f"{model:9s} {method:21s} {name:26s} {rows[-1]['ratio_vs_captum']:6.2f}x  "
                  f"chunk {rows[-1].get('chunk', '-')}  model share {rows[-1].get('model_share', float('nan')):.2f}  "
                  f"max rel diff {diff:.1e}", flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/dropin_cpu_2core.json")
    parser.add_argument("--quick", action="store_true", help="32^3 volumes, fewer samples")
    parser.add_argument("--models", nargs="+", default=["vgg", "densenet"])
    args = parser.parse_args(argv)
    size = ["--size", "32", "--segments", "8", "--samples", "24"] if args.quick else ["--size", "64"]
    methods = ["FeatureAblation", "ShapleyValueSampling", "Occlusion", "Lime", "KernelShap"]
    load_before = os.getloadavg()
    payload = {"command": " ".join(["python", "benchmarks/bench_dropin.py"] + (argv or sys.argv[1:])),
               "environment": environment(torch.device("cpu")), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            payload["rows"] += compare(model, size, CONFIGS, methods, Path(tmp))
        baseline = {"captum": CONFIGS["captum"], **POLICIES}
        payload["policies"] = compare("vgg", size, baseline, ["FeatureAblation"], Path(tmp))
    payload["cpu"] = cpu_facts(load_before)
    rows = [as_row(dict(r, study=study), r["method"], device="cpu", dtype="float32", ratio_key="ratio_vs_captum",
                   median_key="wall_s") for study, key in (("configs", "rows"), ("policies", "policies"))
            for r in payload.pop(key)]  # one run each: iqr_s null
    write_results(Path(args.out), rows, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
