"""Hostile-user sweep of ``mmxai-fast explain`` and the public pipeline functions.

Runs every misuse case in a forked child (timeout: a hang; a signal: a crash) and counts:

- ``clear``: CLI exit 2 with one line naming the argument, before the explanation started;
  API: a ValueError/TypeError whose message names the argument;
- ``late``: as clear, but only after the explanation had started;
- ``unnamed``: refused, but not in one line naming the argument;
- ``raw``: a traceback (CLI exit 1) or an internal exception type (API);
- ``accepted``: the misuse ran through (exit 0 / returned);
- ``hang`` / ``crash``; ``partial``: an output folder left mixed, or strays after the next run
  (checked for every case, and for SIGKILLs at the k-th fsync/rename of a write).

    PYTHONPATH=. python tools/hostile_sweep.py [--json out.json]

Works on older checkouts too (only public names are used), for before/after numbers.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

# The misbehaving models live with the CLI misuse tests; the CLI loads them as cli_models:NAME.
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
sys.path.insert(0, TESTS)
from cli_models import TupleModel  # noqa: E402

torch.set_num_threads(1)
KW = {"in_channels": 2, "widths": [4, 8], "hidden": 8}
SHAPE = (12, 10, 8)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _save(path, data, affine=AFFINE):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def prepare(tmp):
    from mmxai_fast.models import VGG3D

    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    ball = sum((g - (s - 1) / 2) ** 2 for g, s in zip(grid, SHAPE)) <= (0.4 * min(SHAPE)) ** 2
    f = {name: _save(f"{tmp}/{name}.nii.gz", np.where(ball, 100 + 20 * rng.standard_normal(SHAPE), 0).astype(np.float32))
         for name in ("t1", "t2")}
    torch.manual_seed(0)
    model = VGG3D(**KW).eval()
    torch.save(model.state_dict(), f"{tmp}/w.pt")
    torch.jit.save(torch.jit.script(model), f"{tmp}/ts.pt")
    torch.save(TupleModel().state_dict(), f"{tmp}/conv.pt")
    f.update(w=f"{tmp}/w.pt", ts=f"{tmp}/ts.pt", conv=f"{tmp}/conv.pt")
    f["nan"] = _save(f"{tmp}/nan.nii.gz", np.full((4, 4, 4), np.nan, np.float32))
    singular = np.eye(4)
    singular[:2, :2] = 1.0
    f["singular"] = _save(f"{tmp}/singular.nii.gz", np.ones(SHAPE, np.float32), singular)
    f["empty"] = _save(f"{tmp}/empty.nii.gz", np.zeros((4, 0, 4), np.float32))
    f["text"] = f"{tmp}/text.nii.gz"
    open(f["text"], "w").write("not nifti")
    f["ct"] = _save(f"{tmp}/ct.nii.gz", np.where(ball, 40, -1000).astype(np.int16))
    f["four"] = _save(f"{tmp}/four.nii.gz", np.stack([np.asarray(__import__("nibabel").load(f[n]).dataobj)
                                                     for n in ("t1", "t2")], -1))
    return f


def cli_cases(f):
    case = ["--modality", f"t1={f['t1']}", f"t2={f['t2']}"]
    sd = ["--state-dict", f["w"], "--factory", "mmxai_fast.models:VGG3D", "--factory-kwargs", json.dumps(KW)]
    ok = case + sd + ["--method", "Saliency", "--n-segments", "4"]  # cheap, where a misuse runs through

    def factory(name):
        return ["--state-dict", f["conv"], "--factory", f"cli_models:{name}"]

    c = []  # (name, argv without --out, flag the message must name, out setup)
    for v in ("nan", "inf", "-1", "x"):
        c.append((f"smooth {v}", ok + ["--smooth", v], "--smooth", None))
    for v in ("inf", "nan", "0", "-1"):
        c.append((f"compactness {v}", ok + ["--compactness", v], "--compactness", None))
    for v in ("0", "-1", str(2**40), "5000"):
        c.append((f"n-segments {v}", ok + ["--n-segments", v], "--n-segments", None))
    for v in ("0", str(2**40)):
        c.append((f"n-samples {v}", ok + ["--n-samples", v], "--n-samples", None))
    c.append(("n-samples with saliency", ok + ["--method", "saliency", "--n-samples", "3"], "--n-samples", None))
    for v in ("-1", "2", str(2**40)):
        c.append((f"target {v}", ok + ["--target", v], "--target", None))
    for v in ("-1", "99", str(2**40)):
        c.append((f"slice {v}", ok + ["--slice", v], "--slice", None))
    for v in ("-1", str(2**70)):
        c.append((f"seed {v}", ok + ["--seed", v], "--seed", None))
    for v in ("meta", "xla", "nonsense", "cuda:99"):
        c.append((f"device {v}", ok + ["--device", v], "--device", None))
    for v in ("nan", "inf", "x"):
        c.append((f"baseline {v}", ok + ["--baseline", v], "--baseline", None))
    c.append(("method unknown", ok + ["--method", "magic"], "--method", None))
    kwargs = [("shapley", '{"n_samples": "ten"}'), ("shapley", '{"n_samples": 0}'), ("shapley", '{"n_samples": NaN}'),
              ("shapley", '{"perturbations_per_eval": 1.5}'), ("shapley", '{"antithetic": 1}'),
              ("ig", '{"return_convergence_delta": true}'), ("ig", '{"method": 3}'), ("ig", '{"n_steps": -2}'),
              ("occlusion", '{"sliding_window_shapes": [1, 2]}'), ("occlusion", '{"sliding_window_shapes": [1, 0, 2, 2]}'),
              ("smoothgrad", '{"stdevs": -1}'), ("lime", '{"similarity_func": "cosine"}'), ("shapley", "[1]"),
              ("shapley", "{bad"), ("shapley", '{"nope": 1}'), ("shapley", '{"target": 1}')]
    for method, text in kwargs:
        c.append((f"method-kwargs {method} {text}", ok + ["--method", method, "--method-kwargs", text], "--method-kwargs",
                  None))
    c.append(("modality name clash", ["--modality", f"t 1={f['t1']}", f"t_1={f['t2']}"] + sd, "--modality", None))
    c.append(("modality name too long", ["--modality", f"{'m' * 250}={f['t1']}", f"t2={f['t2']}"] + sd, "--modality", None))
    c.append(("modality syntax", ["--modality", "t1"] + sd, "--modality", None))
    c.append(("modality missing file", ["--modality", "t1=/nonexistent.nii.gz"] + sd, "--modality", None))
    c.append(("modality not nifti", ["--modality", f"t1={f['text']}", f"t2={f['t2']}"] + sd, "--modality", None))
    c.append(("names duplicated", ["--image", f["four"], "--names", "a", "a"] + sd, "--names", None))
    c.append(("names count", ["--image", f["four"], "--names", "a"] + sd, "--names", None))
    for w in (["40:nan"], ["40:0"], ["brain", "40:80"], ["lungs"]):
        c.append((f"windows {' '.join(w)}", ["--ct", f["ct"], "--windows", *w, "--model", f["ts"]],
                  "--windows", None))
    c.append(("out is a file", ok, "--out", "file"))
    c.append(("out holds a foreign file", ok, "--out", "foreign"))
    c.append(("out holds a folder named summary.json", ok, "--out", "clash"))
    c.append(("out not creatable", ok + ["--out", "/proc/mmxai_sweep_out"], "--out", "given"))
    c.append(("wrong channel count", ["--modality", f"t1={f['t1']}"] + sd, "--model", None))
    c.append(("model returns a tuple", case + factory("TupleModel"), "--model", None))
    c.append(("model returns a voxel map", case + factory("SegmentationModel"), "--model", None))
    c.append(("model returns NaN", case + factory("NaNModel"), "--model", None))
    c.append(("NaN image", ["--modality", f"t1={f['nan']}"] + sd, "--modality", None))
    c.append(("singular affine", ["--modality", f"t1={f['singular']}"] + sd, "--modality", None))
    c.append(("empty dim", ["--modality", f"t1={f['empty']}"] + sd, "--modality", None))
    c.append(("layer without gradcam", ok + ["--layer", "features.0.0"], "--layer", None))
    c.append(("layer unknown", ok + ["--method", "gradcam", "--layer", "nope"], "--layer", None))
    c.append(("factory bad spec", case + ["--state-dict", f["w"], "--factory", "x"], "--factory", None))
    c.append(("factory-kwargs bad json", case + ["--state-dict", f["w"], "--factory", "mmxai_fast.models:VGG3D",
                                                 "--factory-kwargs", "{"], "--factory-kwargs", None))
    c.append(("state-dict not a checkpoint", case + ["--state-dict", f["t1"], "--factory", "mmxai_fast.models:VGG3D"],
              "--state-dict", None))
    c.append(("model is a state dict", case + ["--model", f["w"]], "--model", None))
    c.append(("gradcam on torchscript", case + ["--model", f["ts"], "--method", "gradcam"], "--model", None))
    c.append(("out missing", ok, "--out", "absent"))
    return c


def api_cases(f):
    from mmxai_fast import pipeline as p

    def case(**kw):
        args = {"image": torch.rand(2, *SHAPE), "modalities": ("a", "b"), "affine": AFFINE, **kw}
        return p.Case(**args)

    nan_affine = AFFINE.copy()
    nan_affine[0, 0] = np.nan
    singular = np.eye(4)
    singular[:2, :2] = 1

    def explanation(attr, names=("a", "b")):
        return p.Explanation(attributions=attr, method="Saliency", target=0, feature_mask=None,
                             modality_importance={n: 0.5 for n in names}, stats=p.RunStats("Saliency", 1, 1.0, 0.5),
                             modalities=names)

    def write(out_kind, **kw):
        def run(tmp):
            out = os.path.join(tmp, "o")
            make_out(out, out_kind)
            c = case(**({"modalities": kw.pop("names")} if "names" in kw else {}))
            p.write_explanation(c, explanation(torch.randn(2, *SHAPE), c.modalities), out, **kw)
        return run

    def model():
        from mmxai_fast.models import VGG3D

        return VGG3D(**KW).eval()

    return [
        ("Case NaN image", lambda t: case(image=torch.full((2, *SHAPE), float("nan"))), "image"),
        ("Case inf image", lambda t: case(image=torch.full((2, *SHAPE), float("inf"))), "image"),
        ("Case NaN affine", lambda t: case(affine=nan_affine), "affine"),
        ("Case singular affine", lambda t: case(affine=singular), "affine"),
        ("Case empty dim", lambda t: case(image=torch.rand(2, 4, 0, 4)), "image"),
        ("Case complex image", lambda t: case(image=torch.rand(2, *SHAPE, dtype=torch.complex64)), "image"),
        ("Case names count", lambda t: case(modalities=("a",)), "modalities"),
        ("Superpixels compactness inf", lambda t: p.Superpixels(compactness=float("inf")), "compactness"),
        ("Superpixels compactness nan", lambda t: p.Superpixels(compactness=float("nan")), "compactness"),
        ("Superpixels n_segments 0", lambda t: p.Superpixels(n_segments=0), "n_segments"),
        ("Superpixels max_num_iter 0", lambda t: p.superpixel_mask(case(), p.Superpixels(max_num_iter=0)), "max_num_iter"),
        ("Superpixels spacing nan", lambda t: p.superpixel_mask(case(), p.Superpixels(spacing=(float("nan"), 1, 1))),
         "spacing"),
        ("superpixel_mask n_segments 10**9", lambda t: p.superpixel_mask(case(), p.Superpixels(n_segments=10**9)),
         "n_segments"),
        ("Baseline constant nan", lambda t: p.Baseline.constant(float("nan")), "value"),
        ("Baseline seed -1", lambda t: p.Baseline.gaussian(seed=-1).tensor(case()), "seed"),
        ("Baseline parse x", lambda t: p.Baseline.parse("x"), "baseline"),
        ("write smooth nan", write("absent", smooth_sigma=float("nan")), "smooth_sigma"),
        ("write slice 99", write("absent", slice=99), "slice"),
        ("write out is a file", write("file"), "out_dir"),
        ("write out holds a foreign file", write("foreign"), "out_dir"),
        ("write out/summary.json is a folder", write("clash"), "summary.json"),
        ("write clashing names", write("absent", names=("t 1", "t_1")), "modality names"),
        ("write too long name", write("absent", names=("m" * 250, "b")), "modality names"),
        ("load_case empty mapping", lambda t: p.load_case({}), "modalities"),
        ("load_case missing", lambda t: p.load_case({"t1": "/nonexistent.nii.gz"}), "t1"),
        ("load_case NaN file", lambda t: p.load_case({"t1": f["nan"]}), "t1"),
        ("load_case empty dim", lambda t: p.load_case({"t1": f["empty"]}), "t1"),
        ("load_case singular affine", lambda t: p.load_case({"t1": f["singular"]}), "affine"),
        ("explain target 5", lambda t: p.explain(model(), case(), "Saliency", target=5, show_progress=False), "target"),
        ("explain tuple model", lambda t: p.explain(TupleModel(), case(), "Saliency", target=0, show_progress=False),
         "model"),
    ]


def make_out(out, kind):
    if kind == "file":
        open(out, "w").write("a file")
    elif kind == "foreign":
        os.makedirs(out)
        open(os.path.join(out, "notes.txt"), "w").write("mine")
    elif kind == "clash":
        os.makedirs(os.path.join(out, "summary.json"))
    elif kind == "old":
        shutil.copytree(OLD_SET, out)


def listing(folder):
    return sorted((root, tuple(sorted(dirs)), tuple(sorted(files))) for root, dirs, files in os.walk(folder))


def in_child(fn, timeout=180):
    """Run ``fn()`` in a forked child; returns (status, stderr, result dict)."""
    fd, result_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    err_fd, err_path = tempfile.mkstemp(suffix=".err")
    pid = os.fork()
    if pid == 0:
        os.dup2(err_fd, 2)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        result = {}
        try:
            fn()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            result = {"type": type(exc).__name__, "message": " ".join(str(exc).split())[:400],
                      "is_value_error": isinstance(exc, (ValueError, TypeError))}
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        with open(result_path, "w") as out:
            json.dump(result, out, default=str)
        os._exit(code)
    start = time.time()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", "", {}
        time.sleep(0.02)
    stderr = open(err_path).read()
    result = json.load(open(result_path)) if os.path.getsize(result_path) else {}
    os.remove(result_path)
    os.remove(err_path)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}", stderr, result
    return os.WEXITSTATUS(status), stderr, result


def run_cli(argv, marker):
    from mmxai_fast.cli import main

    module = importlib.import_module("mmxai_fast.pipeline.explain")
    real = module.explain

    def flagged(*args, **kwargs):
        open(marker, "w").write("started")
        return real(*args, **kwargs)

    module.explain = flagged
    sys.exit(main(["explain", *argv, "--no-progress"]))


def sweep_cli(f, tmp):
    rows = []
    for i, (name, argv, flag, out_kind) in enumerate(cli_cases(f)):
        parent = os.path.join(tmp, f"cli{i}")
        os.makedirs(parent)
        out = os.path.join(parent, "out")
        if out_kind in ("file", "foreign", "clash"):
            make_out(out, out_kind)
        if out_kind != "given" and out_kind != "absent":
            argv = argv + ["--out", out]
        before = listing(parent)
        marker = os.path.join(tmp, f"marker{i}")
        status, stderr, _ = in_child(lambda: run_cli(argv, marker))
        lines = stderr.strip().splitlines()
        started = os.path.exists(marker)
        if status == "hang" or str(status).startswith("signal"):
            verdict = "hang" if status == "hang" else "crash"
        elif status == 0:
            verdict = "accepted"
        elif status == 2:
            one = len(lines) == 1 and lines[0].startswith("mmxai-fast explain: error: ")
            verdict = ("late" if started else "clear") if one and flag in lines[0] else "unnamed"
        else:
            verdict = "raw"
        partial = listing(parent) != before and status != 0
        rows.append({"kind": "cli", "case": name, "verdict": verdict, "partial": partial, "status": status,
                     "last_line": lines[-1][:300] if lines else ""})
    return rows


def sweep_api(f, tmp):
    rows = []
    for i, (name, fn, word) in enumerate(api_cases(f)):
        folder = os.path.join(tmp, f"api{i}")
        os.makedirs(folder)
        status, _, result = in_child(lambda: fn(folder))
        if status == "hang" or str(status).startswith("signal"):
            verdict = "hang" if status == "hang" else "crash"
        elif status == 0:
            verdict = "accepted"
        elif result.get("is_value_error"):
            verdict = "clear" if word in result["message"] else "unnamed"
        else:
            verdict = "raw"
        out = os.path.join(folder, "o")
        partial = os.path.isdir(out) and not os.path.exists(os.path.join(out, "notes.txt")) and \
            not os.path.isdir(os.path.join(out, "summary.json")) and status != 0
        rows.append({"kind": "api", "case": name, "verdict": verdict, "partial": partial, "status": status,
                     "last_line": f"{result.get('type', '')}: {result.get('message', '')}"[:300]})
    return rows


def killed_write(out, k, files_of_new):
    """Child: SIGKILL at the k-th fsync/replace/rename while writing the new set."""
    calls = [0]

    def wrap(fn):
        def inner(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return inner

    for name in ("fsync", "replace", "rename"):
        setattr(os, name, wrap(getattr(os, name)))
    files_of_new(out)


def snapshot(out):
    if not os.path.isdir(out):
        return None
    return {n: open(os.path.join(out, n), "rb").read() if os.path.isfile(os.path.join(out, n)) else b"<dir>"
            for n in sorted(os.listdir(out))}


def sweep_kills(f, tmp):
    from mmxai_fast import pipeline as p

    case = p.load_case({"t1": f["t1"], "t2": f["t2"]})
    attr = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    exp = p.Explanation(attributions=attr, method="Saliency", target=0, feature_mask=None,
                        modality_importance=p.modality_importance(attr, case.modalities),
                        stats=p.RunStats("Saliency", 1, 1.0, 0.5), modalities=case.modalities)
    new_dir = os.path.join(tmp, "newset", "out")
    assert in_child(lambda: p.write_explanation(case, exp, new_dir))[0] == 0
    old, new = snapshot(OLD_SET), snapshot(new_dir)
    rows = []
    for k in range(1, 15):
        parent = os.path.join(tmp, f"kill{k}")
        os.makedirs(parent)
        out = os.path.join(parent, "out")
        make_out(out, "old")
        status, _, _ = in_child(lambda: killed_write(out, k, lambda o: p.write_explanation(case, exp, o)))
        seen = snapshot(out)
        state = "old" if seen == old else "new" if seen == new else "missing" if seen is None else "mixed"
        next_status = in_child(lambda: p.write_explanation(case, exp, out))[0]
        strays = sorted(set(os.listdir(parent)) - {"out"}) + [n for n in os.listdir(out) if n.startswith(".")] \
            if os.path.isdir(out) else ["<no out>"]
        partial = state == "mixed" or bool(strays) or next_status != 0 or snapshot(out) != new
        rows.append({"kind": "kill", "case": f"SIGKILL at write call {k}", "verdict": "killed" if status != 0 else "ran",
                     "partial": partial, "status": status, "last_line": f"{state}; next run {next_status}; strays {strays}"})
        if status == 0:
            break
    return rows


OLD_SET = ""


def main():
    global OLD_SET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="mmxai_sweep_")
    try:
        f = prepare(tmp)
        OLD_SET = os.path.join(tmp, "oldset")
        from mmxai_fast.cli import main as cli_main

        assert in_child(lambda: sys.exit(cli_main(["explain", "--modality", f"t1={f['t1']}", f"t2={f['t2']}",
                                                   "--model", f["ts"], "--method", "InputXGradient", "--out", OLD_SET])))[0] == 0
        rows = sweep_cli(f, tmp) + sweep_api(f, tmp) + sweep_kills(f, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    counts["partial"] = sum(r["partial"] for r in rows)
    for r in rows:
        if r["verdict"] not in ("clear", "killed", "ran") or r["partial"]:
            print(f"{r['kind']:4} {r['verdict']:8} {'PARTIAL ' if r['partial'] else ''}{r['case']}: {r['last_line']}")
    print(json.dumps({"cases": len(rows), **counts, "load": os.getloadavg()}))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"counts": counts, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
