"""A whole cohort: every case explained once, sharded over the ranks of a ``torchrun`` job,
resumable after a kill at any moment.

Output folder::

    <out>/manifest.json        settings, model-weights hash, finished cases (rank 0 writes it)
    <out>/failures.json        cases that could not be loaded in the last run, and why
    <out>/<case_id>/           one folder per finished case (appears complete, in one rename)
    <out>/.work/               hidden: staging folders and partial Shapley sums (checkpoints)

Two ways to share the work (``shard``): ``"cases"`` gives each rank its own cases (claimed
one at a time, largest first, so a slow rank or a large case does not hold the others up);
``"permutations"`` has all ranks work on one case at a time, each on its share of the Shapley
permutations (or of the windows, features or coalitions of the other
:data:`~mmxai_fast.cohort.case_job.WITHIN_CASE_METHODS`), reduced with ``all_reduce``.
``"auto"`` shards within cases when fewer cases are left than ranks. Both give the same results
(float tolerance) for any world size, as every seed is derived from the run's seed, the case id
and the permutation index only.

When the work of one rank raises, the ranks agree on it before the next data collective
(:meth:`~mmxai_fast.cohort.distributed.Dist.agree`): every rank raises
:class:`~mmxai_fast.cohort.distributed.RankFailed` naming the failed rank and its error,
instead of waiting for it forever.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..pipeline.outputs import render_figures
from .case_job import (WITHIN_CASE_METHODS, WORK_DIR, CohortSettings, explain_case, figure_share, load_spec,
                       publish_case, render_case)
from .discovery import CaseSpec
from .distributed import Dist, RankFailed
from .index import index_rows, write_index
from .manifest import ManifestError, atomic_write_bytes, model_weights_hash, open_manifest, settings_hash, \
    write_manifest
from .._validation import int_at_least
from .sharding import case_seed, shard as shard_items

__all__ = ["CohortReport", "run_cohort", "SHARD_MODES", "FAILURES_NAME"]

SHARD_MODES = ("auto", "cases", "permutations")
FAILURES_NAME = "failures.json"
# one entry of failures.json: ``case`` and ``error`` strings, ``files`` a list of paths
Failure = Dict[str, Union[str, List[str]]]


@dataclass
class CohortReport:
    """What one call of :func:`run_cohort` did on this rank (``failed`` and ``done`` cover all ranks).

    ``model_s`` / ``model_inputs`` are this rank's; ``comm_s`` its seconds in collectives.
    """

    done: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Failure] = field(default_factory=list)
    computed: List[str] = field(default_factory=list)
    shard: str = "cases"
    wall_s: float = 0.0
    model_s: float = 0.0
    model_inputs: int = 0
    comm_s: float = 0.0
    resumed_permutations: int = 0

    @property
    def cases_per_hour(self) -> float:
        return 3600.0 * len(self.computed) / self.wall_s if self.wall_s > 0 else 0.0


def _finished(out: Path, specs: Sequence[CaseSpec]) -> List[str]:
    return [s.case_id for s in specs if (out / s.case_id).is_dir()]


def _prepare(out: Path, specs, settings_dict, model_hash, dist: Dist):
    """Rank 0 checks the manifest and clears stale staging folders and claims; every rank gets
    the verdict."""
    verdict: Optional[Tuple[str, Any]] = None  # ("ok", finished case ids), ("manifest" | "error", message)
    if dist.rank == 0:
        try:
            open_manifest(out, settings_dict, model_hash)
            for stale in ("staging", "claims"):
                shutil.rmtree(out / WORK_DIR / stale, ignore_errors=True)
            done = _finished(out, specs)
            write_manifest(out, settings_dict, model_hash, done)
            verdict = ("ok", done)
        except ManifestError as exc:
            verdict = ("manifest", str(exc))
        except Exception as exc:
            if not dist.active:
                raise
            verdict = ("error", f"rank 0 failed: {type(exc).__name__}: {exc}")
    verdict = dist.broadcast(verdict)
    if verdict[0] != "ok":
        raise (ManifestError if verdict[0] == "manifest" else RankFailed)(verdict[1])
    return set(verdict[1])


def _claim(out: Path, case_id: str) -> bool:
    """Claim ``case_id`` for this rank (an exclusive create on the shared output folder)."""
    folder = out / WORK_DIR / "claims"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / case_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _case_cost(spec: CaseSpec) -> int:
    """Bytes of the case's files: a free proxy of its voxels (0 when missing: it fails fast)."""
    try:
        return sum(os.path.getsize(path) for _, path in spec.modalities)
    except OSError:
        return 0


def _choose_mode(shard_mode: str, method: str, todo: int, world: int) -> str:
    if shard_mode not in SHARD_MODES:
        raise ValueError(f"shard must be one of {SHARD_MODES}, got {shard_mode!r}")
    if shard_mode == "permutations" and method not in WITHIN_CASE_METHODS:
        raise ValueError(f"shard='permutations' needs one of the methods {WITHIN_CASE_METHODS}, got {method}")
    if shard_mode == "auto":
        return "permutations" if method in WITHIN_CASE_METHODS and 0 < todo < world else "cases"
    return shard_mode


class _Run:
    def __init__(self, out, specs, model, settings, dist, checkpoint_every, chunk, show_progress, key, model_hash):
        self.out, self.specs, self.model, self.settings, self.dist = out, specs, model, settings, dist
        self.checkpoint_every, self.chunk, self.show_progress = checkpoint_every, chunk, show_progress
        self.key, self.model_hash = key, model_hash
        self.report = CohortReport()
        self.failures: List[Failure] = []
        self.overall = None

    def record_failure(self, spec: CaseSpec, exc: Exception) -> None:
        self.failures.append({"case": spec.case_id, "error": f"{type(exc).__name__}: {exc}",
                              "files": [p for _, p in spec.modalities] + ([spec.roi] if spec.roi else [])})

    def finish_case(self, spec: CaseSpec, files, outcome, staging: str) -> None:
        publish_case(self.out, spec.case_id, files, staging)
        shutil.rmtree(self.out / WORK_DIR / "checkpoints" / spec.case_id, ignore_errors=True)
        self.report.computed.append(spec.case_id)
        self.account(outcome)

    def account(self, outcome) -> None:
        self.report.model_s += outcome.explanation.stats.model_s
        self.report.model_inputs += outcome.explanation.stats.model_inputs
        self.report.resumed_permutations += outcome.resumed_permutations

    def update_progress(self) -> None:
        if self.dist.rank == 0:
            done = _finished(self.out, self.specs)
            write_manifest(self.out, self.settings.to_dict(), self.model_hash, done)
            if self.overall is not None:
                self.overall.n = len(done)
                self.overall.refresh()

    def explain(self, spec, case, dist: Optional[Dist], rank_tag: str):
        checkpoint = self.out / WORK_DIR / "checkpoints" / spec.case_id / f"{rank_tag}.pt"
        return explain_case(self.model, case, self.settings, case_seed(self.settings.seed, spec.case_id),
                            self.dist.device, dist=dist, checkpoint=checkpoint,
                            checkpoint_every=self.checkpoint_every, chunk=self.chunk,
                            show_progress=self.show_progress, desc=f"rank {self.dist.rank} {spec.case_id}")

    def by_cases(self, todo: Sequence[CaseSpec]) -> None:
        """Each rank claims the next unclaimed case, largest first, until none is left; the
        ranks then agree (a rank whose case raised fails them all, after their own cases)."""
        error: Optional[BaseException] = None
        try:
            order = sorted(todo, key=_case_cost, reverse=True) if self.dist.active else todo
            for spec in order:
                if self.dist.active and not _claim(self.out, spec.case_id):
                    continue
                try:
                    case = load_spec(spec, self.settings)
                except Exception as exc:  # an unreadable case must not stop the cohort
                    self.record_failure(spec, exc)
                    continue
                outcome = self.explain(spec, case, None, "r0of1")
                self.finish_case(spec, render_case(case, outcome, self.settings), outcome,
                                 f"{spec.case_id}.r{self.dist.rank}")
                self.update_progress()
        except Exception as exc:
            if not self.dist.active:
                raise
            error = exc
        self.dist.agree(error)

    def by_permutations(self, todo: Sequence[CaseSpec]) -> None:
        dist = self.dist
        for spec in todo:
            case, error = None, None
            try:
                case = load_spec(spec, self.settings)
            except Exception as exc:
                error = exc
            if not dist.all_true(error is None):  # every rank skips the case together
                if dist.rank == 0:
                    self.record_failure(spec, error or RuntimeError("the case failed to load on another rank"))
                continue
            outcome = None
            try:
                outcome = self.explain(spec, case, dist, f"r{dist.rank}of{dist.world_size}")
            except RankFailed:
                raise
            except Exception as exc:  # raised outside the method's collectives: tell the others below
                error = exc
            self.publish_together(spec, case, outcome, error)

    def publish_together(self, spec: CaseSpec, case, outcome, error: Optional[BaseException]) -> None:
        """Every rank holds the case's result: the other ranks render the slow figures
        (:func:`figure_share`) while rank 0 renders every other file, then rank 0 writes."""
        dist, mine, files = self.dist, {}, {}
        try:
            if error is not None:
                raise error
            mine = render_figures(case, outcome.explanation, figure_share(dist.rank, dist.world_size),
                                  smooth_sigma=self.settings.smooth) if dist.rank else {}
            if dist.rank == 0:  # placeholders for the figures of the other ranks
                others = [name for r in range(1, dist.world_size) for name in figure_share(r, dist.world_size)]
                files = render_case(case, outcome, self.settings, dict.fromkeys(others, b""))
        except Exception as exc:
            error = exc
        figures = {name: png for part in dist.agree(error, mine) for name, png in part.items()}
        error = None
        if dist.rank == 0:
            try:
                self.finish_case(spec, {**files, **figures}, outcome, f"{spec.case_id}.r0")
                self.update_progress()
            except Exception as exc:
                error = exc
        else:
            self.report.computed.append(spec.case_id)
            self.account(outcome)
        dist.agree(error)


def _agreed(dist: Dist, work: Callable[[], Any]) -> List[Any]:
    """Every rank's ``work()`` result, once all ranks succeeded (:meth:`Dist.agree`)."""
    error, result = None, None
    try:
        result = work()
    except Exception as exc:
        if not dist.active:
            raise
        error = exc
    return dist.agree(error, result)


def _write_summary_files(out: Path, failures, finished, rows, settings_dict, model_hash) -> None:
    """Rank 0, at the end: failures.json, index.html, the manifest; and .work goes (every case
    was attempted: what is left there is staging debris, checkpoints went with their cases)."""
    import json

    atomic_write_bytes(out / FAILURES_NAME, (json.dumps(failures, indent=2) + "\n").encode())
    write_index(out, finished, rows=rows)
    write_manifest(out, settings_dict, model_hash, finished)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def run_cohort(specs: Sequence[CaseSpec], model: torch.nn.Module, out_dir: Union[str, Path],
               settings: CohortSettings, *, dist: Optional[Dist] = None, shard: str = "auto",
               checkpoint_every: int = 8, chunk: int = 32, show_progress: bool = True) -> CohortReport:
    """Explain every case of ``specs`` not finished yet in ``out_dir``.

    Every rank of the job calls this with the same arguments (``dist`` from
    :func:`~mmxai_fast.cohort.distributed.init_distributed`; None: one process).

    Raises:
        ManifestError: ``out_dir`` holds a corrupted or foreign manifest, or results of other
            settings or other model weights (on every rank, before any work).
        ValueError: bad ``shard``, ``checkpoint_every`` or ``chunk``; duplicate case ids.
    """
    start = time.perf_counter()
    dist = dist or Dist()
    ids = [s.case_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"specs: case ids must be unique, got duplicates {sorted({i for i in ids if ids.count(i) > 1})}")
    for name, value in (("checkpoint_every", checkpoint_every), ("chunk", chunk)):
        int_at_least(value, name, 1)
    out = Path(out_dir)
    model = model.to(dist.device).eval()
    model_hash = model_weights_hash(model)
    settings_dict = settings.to_dict()
    done = _prepare(out, specs, settings_dict, model_hash, dist)
    todo = [s for s in specs if s.case_id not in done]
    mode = _choose_mode(shard, settings.method, len(todo), dist.world_size)
    run = _Run(out, specs, model, settings, dist, checkpoint_every, chunk, show_progress,
               settings_hash(settings_dict) + model_hash, model_hash)
    run.report.shard, run.report.skipped = mode, sorted(done)
    if dist.rank == 0 and show_progress:
        from tqdm.auto import tqdm

        run.overall = tqdm(total=len(specs), initial=len(done), desc="cohort", unit="case",
                           position=dist.world_size, dynamic_ncols=True)
    comm_before = dist.comm_s
    try:
        run.by_cases(todo) if mode == "cases" else run.by_permutations(todo)
        # the index rows (thumbnails) of the finished cases are read by all ranks, a share each
        finished = _finished(out, specs)
        parts = _agreed(dist, lambda: (run.failures, index_rows(out, shard_items(finished, dist.rank,
                                                                                 dist.world_size))))
        failures = sorted((f for part, _ in parts for f in part), key=lambda f: f["case"])
        _agreed(dist, lambda: _write_summary_files(out, failures, finished, [r for _, rows in parts for r in rows],
                                                   settings_dict, model_hash) if dist.rank == 0 else None)
    finally:
        if run.overall is not None:
            run.overall.close()
    report = run.report
    report.failed = failures
    report.done = _finished(out, specs)
    report.comm_s = dist.comm_s - comm_before
    report.wall_s = time.perf_counter() - start
    return report
