"""Timing and reporting shared by the benchmarks (kornia's contract: warm up, median and spread,
pinned seeds, JSON with commit, versions and device).

Every results file (``benchmarks/results/*.json``) is written by :func:`write_results` as
``{"schema": SCHEMA, "meta": {...}, "rows": [...]}``; each row is one flat dict built by
:func:`row`, whose first keys are always, in this order:

=========== ==============================================================================
op          the op or public entry point measured (the op's file stem, e.g. ``perturb``,
            ``vq_nearest``, or ``explain``, ``FeatureAblation`` for whole methods)
impl        who ran it (``mmxai_fast.perturb``, ``captum``, ``torch.cdist + argmin``...)
case        the workload (shapes, sizes, settings), the same string for the rows compared
device      ``torch.device`` type the row ran on: ``cpu`` or ``cuda`` (the model in ``meta``)
dtype       the input dtype (``float32``, ``int16``...)
median_s    median wall seconds of one call (null: the row times nothing, e.g. a dry run)
iqr_s       inter-quartile range of the timed calls, seconds; **null** where the script timed
            one run only (no spread measured: 0 would claim there is none)
ratio       this row's median / mmxai_fast's median in the same run and case: how many
            times faster mmxai_fast is than this impl (1.0 or null on mmxai_fast's own row;
            null where the row is compared with nothing)
commit      git commit of the measured tree
versions    ``{"torch": ..., "python": ..., "captum": ...}``
=========== ==============================================================================

Extra keys (throughput, model calls, accuracy...) may follow. ``meta`` holds the command,
:func:`environment` and :func:`cpu_facts` (CPU model, ISA flags, threads, load average before
and after: ratios are only comparable within one run).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

#: Version tag of the results-file layout (module docstring).
SCHEMA = "mmxai_fast.bench/1"
#: The keys every row starts with, in order.
ROW_FIELDS = ("op", "impl", "case", "device", "dtype", "median_s", "iqr_s", "ratio", "commit", "versions")


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


def best_of_rounds(ways: Dict[str, Callable[[], object]], rounds: int, repeats: int,
                   device: torch.device = torch.device("cpu")) -> Dict[str, Dict[str, float]]:
    """:func:`measure` of each way, the ways alternating over ``rounds`` (slow drifts of the
    machine fall on all alike); per way, the round of the lowest median."""
    best: Dict[str, Dict[str, float]] = {}
    for _ in range(rounds):
        for name, fn in ways.items():
            m = measure(fn, device, repeats=repeats, warmup=2)
            if name not in best or m["median_s"] < best[name]["median_s"]:
                best[name] = m
    return best


@lru_cache(maxsize=None)
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=None)
def _versions() -> tuple:
    info = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "monai", "captum", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = None
    return tuple(info.items())


def current_versions() -> Dict[str, Optional[str]]:
    return dict(_versions())


def environment(device: torch.device) -> Dict[str, object]:
    return {
        "commit": git_commit(),
        **current_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_facts(loadavg_before: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """CPU model, ISA flags, threads and load average (``loadavg_before``: what
    ``os.getloadavg()`` gave when the measurements started; ``loadavg_after``: now)."""
    flags: List[str] = []
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pass
    return {"cpu_model": cpu_model(),
            "isa": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")},
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "loadavg_before": list(loadavg_before) if loadavg_before is not None else None,
            "loadavg_after": list(os.getloadavg())}


def row(op: str, impl: str, case: str, *, device: str, dtype: str, median_s: Optional[float],
        iqr_s: Optional[float] = None, ratio: Optional[float] = None, commit: Optional[str] = None,
        versions: Optional[Dict[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    """One results row in the shared schema (module docstring); ``extra`` keys follow.
    ``commit`` / ``versions``: those of this run unless given (a row kept from an earlier run)."""
    out = {"op": op, "impl": impl, "case": case, "device": device, "dtype": dtype, "median_s": median_s,
           "iqr_s": iqr_s, "ratio": ratio, "commit": commit or git_commit(), "versions": versions or current_versions()}
    out.update(extra)
    check_row(out)
    return out


def as_row(old: Dict[str, Any], op: str, *, device: str, dtype: str, ratio_key: str = "speedup",
           median_key: str = "median_s") -> Dict[str, Any]:
    """A row of the older ``dict(case=..., impl=..., **measure(...), speedup=...)`` shape in the
    schema: ``median_key`` becomes ``median_s``, ``ratio_key`` ``ratio`` (an old ``op`` is
    replaced by ``op``), the rest stays as extra keys. One run (``repeats == 1`` or no
    ``iqr_s``): ``iqr_s`` null."""
    extra = {k: v for k, v in old.items() if k not in ROW_FIELDS or k in ("case", "impl", "median_s", "iqr_s")}
    case, impl = extra.pop("case"), extra.pop("impl")
    median, iqr = extra.pop(median_key, None), extra.pop("iqr_s", None)
    if extra.get("repeats") == 1:
        iqr = None
    return row(op, impl, case, device=device, dtype=dtype, median_s=median, iqr_s=iqr,
               ratio=extra.pop(ratio_key, None), commit=old.get("commit"), versions=old.get("versions"), **extra)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_row(r: Any, where: str = "row") -> None:
    """``r`` must follow the schema: the ten fields first, in order, with their types."""
    if not isinstance(r, dict):
        raise ValueError(f"{where} must be a dict, got {type(r).__name__}")
    keys = list(r)[:len(ROW_FIELDS)]
    if tuple(keys) != ROW_FIELDS:
        missing = [f for f in ROW_FIELDS if f not in r]
        raise ValueError(f"{where} must start with the fields {list(ROW_FIELDS)}, got {keys}"
                         + (f" (missing {missing})" if missing else ""))
    for name in ("op", "impl", "case", "device", "dtype", "commit"):
        if not isinstance(r[name], str) or not r[name]:
            raise ValueError(f"{where}[{name!r}] must be a non-empty str, got {r[name]!r}")
    for name in ("median_s", "iqr_s", "ratio"):
        if r[name] is not None and (not _is_number(r[name]) or r[name] < 0):
            raise ValueError(f"{where}[{name!r}] must be a number >= 0 or null, got {r[name]!r}")
    if not isinstance(r["versions"], dict) or "torch" not in r["versions"]:
        raise ValueError(f"{where}['versions'] must be a dict with 'torch', got {r['versions']!r}")


def check_results(payload: Any, where: str = "results") -> None:
    """A whole results file: ``{"schema": SCHEMA, "meta": {...}, "rows": [row, ...]}``."""
    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        got = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{where} must have schema {SCHEMA!r}, got {got!r}")
    if not isinstance(payload.get("meta"), dict) or not isinstance(payload.get("rows"), list):
        raise ValueError(f"{where} must hold a 'meta' dict and a 'rows' list, got keys {sorted(payload)}")
    for k, r in enumerate(payload["rows"]):
        check_row(r, f"{where} rows[{k}]")


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces a run of ``benchmarks/<script>``."""
    return " ".join(["python", f"benchmarks/{script}"] + list(sys.argv[1:] if argv is None else argv))


def write_run(path, rows: List[Dict[str, Any]], *, script: str, argv: Optional[Sequence[str]], device: torch.device,
              loadavg_before: Sequence[float], **meta: Any) -> Dict[str, Any]:
    """:func:`write_results` with the usual ``meta``: the command, :func:`environment` and
    :func:`cpu_facts` (``meta`` entries are added, or replace those)."""
    payload = write_results(path, rows, {"command": command_line(script, argv), "environment": environment(device),
                                         "cpu": cpu_facts(loadavg_before), **meta})
    print(f"wrote {path}")
    return payload


def write_results(path, rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Check every row, then write ``{"schema", "meta", "rows"}`` atomically (nothing is
    written when a row is malformed). Returns the payload."""
    payload = {"schema": SCHEMA, "meta": meta, "rows": rows}
    check_results(payload, str(path))
    write_json_atomically(Path(path), payload)
    return payload


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
        value = r.get("ratio", r.get("speedup"))
        ratio = f"{value:.2f}x" if value else ""
        target = f">={r['target']}x" if r.get("target") else ""
        status = "" if not r.get("target") else ("  ok" if (value or 0) >= r["target"] else "  MISSED")
        median = f"{r['median_s'] * 1e3:10.2f}" if r.get("median_s") is not None else f"{'-':>10s}"
        iqr = f"{r['iqr_s'] * 1e3:8.2f}" if r.get("iqr_s") is not None else f"{'-':>8s}"
        print(f"{r['case']:44s} {r['impl']:34s} {median} {iqr} {ratio:>8s} {target:>7s}{status}")


def run_benches(benches: Dict[str, Callable[[torch.device, bool], List[dict]]], only, device: torch.device,
                quick: bool) -> List[dict]:
    """Run the named bench functions (all, or those in ``only``) and print their rows."""
    rows: List[dict] = []
    for name, bench in benches.items():
        if not only or name in only:
            rows.extend(bench(device, quick))
    print_rows(rows)
    return rows
