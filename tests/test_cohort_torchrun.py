"""mmxai-fast cohort under torchrun with 2 CPU ranks (gloo): a job with one rank killed mid-case
resumes to the outputs of a single-process run (cases sharded over gloo ranks, failures and the
within-case sharding of every method: tests/test_cohort_dist.py, one launch of 3 processes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cohort_data import FACTORY, FACTORY_KWARGS, SLOW_FACTORY, assert_same_outputs, make_cohort, save_model
from mmxai_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _args(cases, model, out, n_samples, *extra, factory=FACTORY):
    return ["cohort", "--cases", str(cases), "--state-dict", str(model), "--factory", factory, "--factory-kwargs",
            FACTORY_KWARGS, "--n-samples", str(n_samples), "--n-segments", "4", "--out", str(out), "--no-progress",
            *extra]


def _torchrun(args):
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "mmxai_fast", *args], env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _worker_pids(pid):
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "mmxai_fast" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]


def test_killed_rank_then_restart_equals_the_single_process_run(tmp_path):
    """Two torchrun launches: the permutations of one case sharded over 2 ranks, one rank killed
    mid-case (after a checkpoint), then the same command again: it resumes from the checkpoints
    and its outputs equal an uninterrupted single-process run's (the sharded == single check)."""
    make_cohort(tmp_path / "one", 1, seed=10)
    model = save_model(tmp_path / "model.pt")
    args = _args(tmp_path / "one", model, tmp_path / "killed", 16, "--shard", "permutations", "--checkpoint-every", "2",
                 "--chunk", "8", factory=SLOW_FACTORY)  # 50 ms per model call: time to kill mid-case
    assert main(_args(tmp_path / "one", model, tmp_path / "uninterrupted", 16, "--chunk", "8")) == 0
    proc = _torchrun(args)
    checkpoints = tmp_path / "killed" / ".work" / "checkpoints"
    deadline = time.monotonic() + 180
    while not (checkpoints.is_dir() and len(list(checkpoints.rglob("*.pt"))) == 2):  # one per rank
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    code, log = _finish(proc)
    assert code != 0, log
    assert not (tmp_path / "killed" / "Case_000").exists()  # nothing half-written: the case is absent
    assert [p.name for p in (tmp_path / "killed").iterdir() if not p.name.startswith(".")] == ["manifest.json"]
    code, log = _finish(_torchrun(args))
    assert code == 0, log
    assert "shard permutations, 2 rank(s)" in log and "permutations resumed from checkpoints on rank 0" in log
    resumed = int(log.split(" permutations resumed")[0].rsplit(" ", 1)[1])
    assert resumed >= 2, log  # rank 0 resumed its checkpointed permutations
    assert_same_outputs(tmp_path / "uninterrupted", tmp_path / "killed", ["Case_000"])
    assert not (tmp_path / "killed" / ".work").exists()
