"""viewer.html: size and write time for a demo-size case (4 x 48^3) and a BraTS-size case
(4 x 240 x 240 x 155), with one and three methods; time until headless Chromium has decoded and
drawn the page; one screenshot (benchmarks/results/viewer_screenshot.png).

The BraTS-size case is the synthetic phantom (head with scalp filling ~90% of the box: pessimistic)
and the same phantom skull-stripped (zero outside the brain, as BraTS ships). Attributions are
synthetic in three textures: superpixel-like (piecewise constant), smooth (occlusion-like) and
voxel noise (gradient-like), all zero outside the head. The viewer's render time is compared with
rendering the NIfTI heatmaps that ``write_explanation`` writes anyway, in the same run.

    PYTHONPATH=$PWD python benchmarks/bench_viewer.py [--repeats 3] [--no-browser]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _harness import cpu_facts, environment, measure, row, write_results  # noqa: E402

from mmxai_fast.demo import phantom_case  # noqa: E402
from mmxai_fast.phantom import make_brain_phantom  # noqa: E402
from mmxai_fast.pipeline import Case, Explanation, RunStats, modality_importance  # noqa: E402
from mmxai_fast.pipeline.outputs import _nifti_bytes  # noqa: E402
from mmxai_fast.pipeline.viewer import render_viewer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_attributions(shape, head: np.ndarray, seed: int):
    """{method: [4, *shape]} in three textures, zero outside ``head``."""
    rng = np.random.default_rng(seed)
    m = 4

    def blocks(edge):
        coarse = rng.standard_normal((m, *[-(-n // edge) for n in shape])).astype(np.float32)
        full = coarse.repeat(edge, 1).repeat(edge, 2).repeat(edge, 3)
        return full[:, :shape[0], :shape[1], :shape[2]]

    from scipy.ndimage import zoom

    smooth = zoom(rng.standard_normal((m, *[max(2, n // 16) for n in shape])).astype(np.float32),
                  [1] + [n / max(2, n // 16) for n in shape], order=1)[:, :shape[0], :shape[1], :shape[2]]
    noise = rng.standard_normal((m, *shape)).astype(np.float32) ** 3
    maps = {"ShapleyValueSampling": blocks(max(4, shape[0] // 10)), "Occlusion": smooth, "Saliency": noise}
    return {k: torch.from_numpy(np.where(head, v, 0).astype(np.float32)) for k, v in maps.items()}


def explanations(case: Case, head, seed=0):
    out = {}
    for method, attr in synthetic_attributions(case.spatial_shape, head, seed).items():
        out[method] = Explanation(attr, method, 1, None, modality_importance(attr, case.modalities),
                                  RunStats(method, 1000, 60.0, 55.0, 1000), case.modalities, {"synthetic": True})
    return out


def bench_case(label: str, case: Case, head, repeats: int, workdir: Path):
    exps = explanations(case, head)
    rows = []
    for methods in (["ShapleyValueSampling"], list(exps)):
        chosen = {k: exps[k] for k in methods}
        page = render_viewer(case, chosen)
        timing = measure(lambda chosen=chosen: render_viewer(case, chosen), torch.device("cpu"),
                         repeats=repeats, warmup=0)
        nifti = measure(lambda chosen=chosen: [_nifti_bytes(a.numpy(), case.affine) for e in chosen.values()
                                               for a in e.attributions], torch.device("cpu"), repeats=repeats, warmup=0)
        path = workdir / f"{label}_{len(methods)}.html"
        path.write_bytes(page)
        rows.append({"case": label, "shape": list(case.image.shape), "methods": methods, "bytes": len(page),
                     "MB": round(len(page) / 1e6, 2), "render": timing, "nifti_heatmaps": nifti,
                     "viewer_over_nifti": timing["median_s"] / nifti["median_s"], "path": str(path)})
        print(f"{label:>22} {len(methods)} method(s): {len(page) / 1e6:7.2f} MB, render {timing['median_s']:.2f} s "
              f"(NIfTI heatmaps {nifti['median_s']:.2f} s, ratio {rows[-1]['viewer_over_nifti']:.2f})", flush=True)
    return rows


def schema_rows(record: dict) -> list:
    """One measured page as two results rows: the viewer's render and, as the comparison, writing
    the same heatmaps as NIfTI (``ratio`` = NIfTI time / render time)."""
    rest = {k: v for k, v in record.items() if k not in ("case", "render", "nifti_heatmaps")}
    case = f"{record['case']} {len(record['methods'])} method(s)"
    render, nifti = record["render"], record["nifti_heatmaps"]

    def spread(timing: dict) -> dict:
        return {k: timing[k] for k in ("min_s", "max_s", "repeats")}
    return [row("render_viewer", "mmxai_fast render_viewer", case, device="cpu", dtype="float32",
                median_s=render["median_s"], iqr_s=render["iqr_s"], **spread(render), **rest),
            row("render_viewer", "NIfTI heatmaps (nibabel)", case, device="cpu", dtype="float32",
                median_s=nifti["median_s"], iqr_s=nifti["iqr_s"], ratio=nifti["median_s"] / render["median_s"],
                **spread(nifti))]


def browser_ready_s(path: Path, screenshot: Optional[Path] = None) -> float:
    from viewer_browser import load, open_chromium

    driver = open_chromium(1500, 1000)
    try:
        start = time.perf_counter()
        assert load(driver, path, timeout=300) == "1"
        ready = time.perf_counter() - start
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return ready
    finally:
        driver.quit()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "viewer_cpu_2core.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench_viewer_"))
    rows = []
    demo = make_brain_phantom((48, 48, 48), seed=1)
    rows += bench_case("demo 48^3", phantom_case(demo), demo.head.numpy(), args.repeats, workdir)
    brats = make_brain_phantom((240, 240, 155), seed=0)
    case = phantom_case(brats, voxel_mm=1.0)
    rows += bench_case("BraTS-size phantom", case, brats.head.numpy(), args.repeats, workdir)
    brain = brats.brain.numpy()
    stripped = Case(case.image * torch.from_numpy(brain), case.modalities, case.affine, roi=case.roi,
                    foreground=torch.from_numpy(brain), sources=case.sources)
    rows += bench_case("BraTS-size skull-strip", stripped, brain, args.repeats, workdir)
    if not args.no_browser:
        for row in rows:
            if len(row["methods"]) == 3:
                shot = RESULTS / "viewer_screenshot.png" if row["case"] == "demo 48^3" else None
                row["browser_ready_s"] = browser_ready_s(Path(row["path"]), shot)
                print(f"{row['case']:>22} 3 methods: Chromium ready after {row['browser_ready_s']:.2f} s", flush=True)
    meta = {"benchmark": "viewer", "command": "PYTHONPATH=$PWD python benchmarks/bench_viewer.py",
            "environment": environment(torch.device("cpu")), "cpu": cpu_facts(load_before)}
    for r in rows:
        r.pop("path")
    write_results(Path(args.out), [r for record in rows for r in schema_rows(record)], meta)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
