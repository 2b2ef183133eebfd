"""Timing and reporting shared by the benchmarks (kornia's contract: warm up, median and spread,
pinned seeds, JSON with commit, versions and device)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> Dict[str, float]:
    """Median, min, max and inter-quartile range of ``repeats`` timed calls, in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "iqr_s": q[2] - q[0], "repeats": repeats}


def environment(device: torch.device) -> Dict[str, object]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    info = {
        "commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    for name in ("triton", "monai", "captum", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = None
    return info


def write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(payload, tmp, indent=2)
    os.replace(tmp.name, path)


def print_rows(rows: List[dict]) -> None:
    header = f"{'case':44s} {'impl':34s} {'median ms':>10s} {'iqr ms':>8s} {'ratio':>8s} {'target':>7s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
        target = f">={r['target']}x" if r.get("target") else ""
        status = "" if not r.get("target") else ("  ok" if r["speedup"] >= r["target"] else "  MISSED")
        print(f"{r['case']:44s} {r['impl']:34s} {r['median_s'] * 1e3:10.2f} {r['iqr_s'] * 1e3:8.2f} {ratio:>8s} {target:>7s}{status}")


def run_benches(benches: Dict[str, Callable[[torch.device, bool], List[dict]]], only, device: torch.device,
                quick: bool) -> List[dict]:
    """Run the named bench functions (all, or those in ``only``) and print their rows."""
    rows: List[dict] = []
    for name, bench in benches.items():
        if not only or name in only:
            rows.extend(bench(device, quick))
    print_rows(rows)
    return rows
