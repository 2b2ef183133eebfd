"""SIGKILL at every file-system boundary and at random moments of write_explanation and of
``mmxai-fast explain``: the output folder always holds all old files or all new files (or, with
the rename fallback, briefly nothing, restored by the next run), and no stray is left after the
next run. The scenarios run in a child process (kill_driver.py) that forks one process per kill."""
import json
import os
import subprocess
import sys

import mmxai_fast

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = 7  # the driver's output set: 2 heatmaps, importance.json, summary.json, 2 PNGs, viewer.html


def _run(which, tmp_path, seed=0):
    root = os.path.dirname(os.path.dirname(mmxai_fast.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, HERE, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "kill_driver.py"), which, str(tmp_path), str(seed)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def _check(report, modes=(True, False)):
    boundary = report["boundary"]
    for exchange in modes:
        runs = [r for r in boundary if r["exchange"] == exchange]
        # staged, the files written, (fallback: old moved away), published, done; then a clean run
        assert len(runs) == (FILES + 4 if exchange else FILES + 5), runs
        assert [r["rc"] for r in runs] == [-9] * (len(runs) - 1) + [0]
        kinds = {r["after_kill"] for r in runs}
        assert kinds <= ({"old", "new"} if exchange else {"old", "new", "missing"}), runs
        assert {"old", "new"} <= kinds
        if not exchange:
            assert "missing" in kinds  # between the fallback's two renames
    for r in boundary + report["random"]:
        assert r["after_kill"] in ("old", "new", "missing"), r
        assert r["after_cleanup"] in ("old", "new"), r
        assert r["strays"] == [], r
    assert report["final"] == {"state": "new", "strays": []}


def test_kill_write_explanation_at_every_boundary_and_at_random(tmp_path):
    _check(_run("write_explanation", tmp_path))


def test_kill_cli_at_every_boundary_and_at_random(tmp_path):
    _check(_run("cli", tmp_path, seed=1), modes=(True,))
