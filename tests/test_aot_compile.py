"""Compile gate: every Triton kernel compiled ahead of time for sm_80 and sm_90 through its
launcher at real sizes (``benchmarks/gpu_suite.py --dry-run``), no GPU needed.

One subprocess compiles everything once (``TRITON_INTERPRET=0``: this suite's conftest makes
Triton interpret, and Triton decides that when a kernel module is imported); the tests read its
JSON. Fails on a compile error, on code for another architecture, and on spills in the
memory-bound kernels (perturb, hu_window, occlusion_batch).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.aot

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)
MEMORY_BOUND = ("perturb", "hu_window", "occlusion_batch")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--archs",
                             ",".join(map(str, ARCHS)), "--out", str(out)],
                            env=env, check=False, capture_output=True, text=True, timeout=1200)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result


def test_every_kernel_compiles(report):
    data, _ = report
    failed = [(r["arch"], r["case"], r["error"]) for r in data["rows"] if r["error"]]
    assert not failed, failed


def test_every_case_and_arch_was_compiled(report):
    from mmxai_fast._aot_cases import AOT_CASES

    seen = {(r["arch"], r["case"]) for r in data_rows(report)}
    assert seen == {(a, c) for a in ARCHS for c in AOT_CASES}


def data_rows(report):
    return [r for r in report[0]["rows"] if not r["error"]]


def test_code_targets_the_requested_architecture(report):
    # Triton caches per device: a fake driver reporting one device for both archs would hand the
    # sm_80 binary back for sm_90. sm_90 kernels are built for sm_90a (wgmma).
    wrong = [(r["arch"], r["kernel"], r["target"]) for r in data_rows(report)
             if r["target"] not in (f"sm_{r['arch']}", f"sm_{r['arch']}a")]
    assert not wrong, wrong
    assert {r["target"] for r in data_rows(report)} == {"sm_80", "sm_90a"}


def test_no_spills_in_memory_bound_kernels(report):
    rows = [r for r in data_rows(report) if r["case"].startswith(MEMORY_BOUND)]
    assert {r["case"].split("[")[0] for r in rows} == set(MEMORY_BOUND)
    spilled = [(r["arch"], r["case"], r["spill_stores"], r["spill_loads"]) for r in rows
               if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, spilled


def test_vq_nearest_uses_tensor_cores(report):
    # mma.sync on sm_80, wgmma (or mma) on sm_90: tl.dot did not fall back to scalar FMAs.
    rows = [r for r in data_rows(report) if r["case"].startswith("vq_nearest[") and r["kernel"] == "_vq_nearest_kernel"]
    assert len(rows) == 4 * len(ARCHS)
    for r in rows:
        if "float64" not in r["case"]:
            assert r["tensor_core"], (r["arch"], r["case"])
    assert all(r["spill_stores"] == 0 for r in rows), rows


def test_dry_run_exit_status(report):
    data, result = report
    assert data["meta"]["problems"] == 0 and result.returncode == 0, result.stdout[-3000:]


def test_no_python_float_reaches_a_float64_kernel(report):
    # A Python float argument is an fp32 scalar in compiled code: float64 ops must read their
    # scalars from float64 tensors (slic's spacing and weight, the histogram threshold).
    rows = [r for r in data_rows(report) if "float64" in r["case"]]
    assert {r["case"].split("[")[0] for r in rows} >= {"perturb", "hu_window", "slic", "vq_nearest", "shapley"}
    offending = [(r["case"], r["kernel"], r["python_float_args"]) for r in rows if r["python_float_args"]]
    assert not offending, offending
