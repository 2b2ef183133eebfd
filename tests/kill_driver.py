"""Kill scenarios for the output sets (run as a script by test_kill_atomic.py, one process per
scenario, so forking happens before torch starts any thread pool).

``python kill_driver.py SCENARIO FOLDER [SEED]`` prints one JSON object: for every kill (at the
k-th file-system boundary of ``publish_output_set``, and at random moments) the state the output
folder was found in right after the kill and after the next run's clean-up, plus strays.
"""
import json
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

torch.set_num_threads(1)

from mmxai_fast.pipeline import outputs  # noqa: E402


_VOLATILE = ("wall_s", "model_s", "model_share")


def snapshot(out):
    """``{name: bytes}`` of the folder (None if missing); run times dropped from summary.json and
    viewer.html."""
    if not os.path.isdir(out):
        return None
    snap = {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}
    if "summary.json" in snap:
        summary = json.loads(snap["summary.json"])
        snap["summary.json"] = json.dumps({k: v for k, v in summary.items() if k not in _VOLATILE}).encode()
    if "viewer.html" in snap:  # embeds the same run times; which set it belongs to shows in the other files
        snap["viewer.html"] = b"viewer"
    return snap


def state(out, old, new):
    snap = snapshot(out)
    return "missing" if snap is None else "old" if snap == old else "new" if snap == new else "mixed"


def strays(parent, name):
    return sorted(e for e in os.listdir(parent) if e != name)


def in_child(action, kill_at=None, exchange=True):
    """Run ``action`` in a forked child, SIGKILLed at its ``kill_at``-th checkpoint; exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            calls = [0]

            def checkpoint(stage):
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            outputs._checkpoint = checkpoint
            if not exchange:
                outputs._exchange = lambda a, b: False
            action()
            os._exit(0)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
    return pid


def wait(pid):
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def scenario(make_old, make_new, out, seed, random_kills, modes=(True, False), publish=None):
    """Old set in place; kill ``make_new`` (or ``publish``, the pre-rendered files) at every
    boundary, then ``make_new`` at random moments. ``modes``: with/without RENAME_EXCHANGE."""
    parent, name = os.path.dirname(out), os.path.basename(out)
    report = {"boundary": [], "random": []}
    assert wait(in_child(make_old)) == 0
    old_files, old = read_files(out), snapshot(out)
    start = time.perf_counter()
    assert wait(in_child(make_new)) == 0
    duration = time.perf_counter() - start
    new = snapshot(out)
    assert old and new and old != new

    def restore_old():
        outputs.publish_output_set(out, old_files)
        assert snapshot(out) == old

    for exchange in modes:
        k = 1
        while True:
            restore_old()
            rc = wait(in_child(publish or make_new, kill_at=k, exchange=exchange))
            seen = state(out, old, new)
            outputs._clean_leftovers(outputs._out_path(out))  # what the next run does first
            report["boundary"].append({"k": k, "exchange": exchange, "rc": rc, "after_kill": seen,
                                       "after_cleanup": state(out, old, new), "strays": strays(parent, name)})
            if rc == 0:
                break
            k += 1
        rng = random.Random(seed)
        for _ in range(random_kills):
            restore_old()
            pid = in_child(make_new, exchange=exchange)
            time.sleep(rng.uniform(0, duration))
            os.kill(pid, signal.SIGKILL)
            rc = wait(pid)
            seen = state(out, old, new)
            outputs._clean_leftovers(outputs._out_path(out))
            report["random"].append({"exchange": exchange, "rc": rc, "after_kill": seen,
                                     "after_cleanup": state(out, old, new), "strays": strays(parent, name)})
    restore_old()
    assert wait(in_child(make_new)) == 0  # a full run after all the kills
    report["final"] = {"state": state(out, old, new), "strays": strays(parent, name)}
    return report


def read_files(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}


def write_explanation_scenario(folder, seed):
    from test_pipeline_outputs import _case_and_explanation

    case, exp = _case_and_explanation()
    other_case, other = _case_and_explanation(names=("t1", "t2", "flair"))
    other.method = "Saliency"
    out = os.path.join(folder, "parent", "out")
    files = outputs.render_explanation(case, exp)
    return scenario(lambda: outputs.write_explanation(other_case, other, out),
                    lambda: outputs.write_explanation(case, exp, out), out, seed, random_kills=2,
                    publish=lambda: outputs.publish_output_set(out, files))


def cli_scenario(folder, seed):
    from mmxai_fast.cli import main
    from pipeline_data import small_model, write_case

    paths, roi = write_case(__import__("pathlib").Path(folder), shape=(12, 10, 8))
    model_path = os.path.join(folder, "ts.pt")
    torch.jit.save(torch.jit.script(small_model()), model_path)
    out = os.path.join(folder, "parent", "out")
    base = ["explain", "--modality", *(f"{k}={v}" for k, v in paths.items()), "--roi", roi, "--model", model_path,
            "--out", out, "--no-progress"]
    return scenario(lambda: main(base + ["--method", "Saliency"]),
                    lambda: main(base + ["--method", "InputXGradient", "--smooth", "1"]), out, seed, random_kills=2,
                    modes=(True,))


if __name__ == "__main__":
    which, folder = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    fn = {"write_explanation": write_explanation_scenario, "cli": cli_scenario}[which]
    sys.stdout.flush()
    print("REPORT " + json.dumps(fn(folder, seed)))
