"""mmxai-fast cohort under torchrun with 2 CPU ranks (gloo): sharded results equal single-process
results, and a job with one rank killed mid-case resumes to the same outputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohort_data import FACTORY, FACTORY_KWARGS, make_cohort, save_model
from mmxai_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Different batch compositions of the model (world sizes, chunking) change float32 rounding only.
RTOL, ATOL = 1e-4, 1e-6


def _args(cases, model, out, n_samples, *extra):
    return ["cohort", "--cases", str(cases), "--state-dict", str(model), "--factory", FACTORY, "--factory-kwargs",
            FACTORY_KWARGS, "--n-samples", str(n_samples), "--n-segments", "4", "--out", str(out), "--no-progress",
            *extra]


def _torchrun(args):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "mmxai_fast", *args], env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _assert_same_outputs(a: Path, b: Path, case_ids):
    for case_id in case_ids:
        names = sorted(p.name for p in (a / case_id).iterdir())
        assert names == sorted(p.name for p in (b / case_id).iterdir())
        for name in (n for n in names if n.endswith(".nii.gz")):
            x = nib.load(str(a / case_id / name)).get_fdata()
            y = nib.load(str(b / case_id / name)).get_fdata()
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=f"{case_id}/{name}")
        ia = json.loads((a / case_id / "importance.json").read_text())
        ib = json.loads((b / case_id / "importance.json").read_text())
        assert ia.keys() == ib.keys() and all(abs(ia[k] - ib[k]) < 1e-4 for k in ia)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["done"] == mb["done"] == sorted(case_ids) and ma["settings_hash"] == mb["settings_hash"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    ids = make_cohort(root / "cases", 2)
    make_cohort(root / "one", 1, shape=(14, 14, 14), seed=10)
    return root, ids, save_model(root / "model.pt")


def test_two_ranks_equal_one_process_sharding_cases_and_permutations(data):
    root, ids, model = data
    assert main(_args(root / "cases", model, root / "ref_cases", 4)) == 0
    assert main(_args(root / "one", model, root / "ref_one", 6)) == 0
    # cases across ranks (2 cases, 2 ranks), then the permutations of one case across ranks
    code, log = _finish(_torchrun(_args(root / "cases", model, root / "tr_cases", 4, "--shard", "cases")))
    assert code == 0, log
    _assert_same_outputs(root / "ref_cases", root / "tr_cases", ids)
    code, log = _finish(_torchrun(_args(root / "one", model, root / "tr_one", 6, "--shard", "permutations")))
    assert code == 0, log
    _assert_same_outputs(root / "ref_one", root / "tr_one", ["Case_000"])
    assert "shard permutations, 2 rank(s)" in log


def _worker_pids(pid):
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "mmxai_fast" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]


def test_killed_rank_then_restart_gives_the_uninterrupted_outputs(data):
    root, _, model = data
    args = _args(root / "one", model, root / "killed", 24, "--shard", "permutations", "--checkpoint-every", "2",
                 "--chunk", "8")
    assert main(_args(root / "one", model, root / "uninterrupted", 24, "--chunk", "8")) == 0
    proc = _torchrun(args)
    checkpoints = root / "killed" / ".work" / "checkpoints"
    deadline = time.monotonic() + 180
    while not (checkpoints.is_dir() and any(checkpoints.rglob("*.pt"))):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    code, log = _finish(proc)
    assert code != 0, log
    assert not (root / "killed" / "Case_000").exists()  # nothing half-written: the case is absent
    assert [p.name for p in (root / "killed").iterdir() if not p.name.startswith(".")] == ["manifest.json"]
    code, log = _finish(_torchrun(args))
    assert code == 0, log
    _assert_same_outputs(root / "uninterrupted", root / "killed", ["Case_000"])
    assert not (root / "killed" / ".work").exists()
