"""Sweeps: problems x methods (x method-kwargs grid) x initial LRs x seeds, resumable.

A :class:`Study` says what to run; :meth:`Study.configs` expands it into
:class:`~lrlab.bench.spec.RunConfig`\\ s; :func:`run_sweep` runs those whose ``run_id`` is not in
the store yet, on an executor (:mod:`lrlab.bench.executors`), and writes each record as it
arrives (one transaction per run). Killing a sweep at any point and starting it again finishes
it, with no run lost or duplicated.

The study-file format (:class:`Study`, :func:`load_study`, :func:`make_config`) is in
:mod:`lrlab.bench.studyfile`; its names are re-exported here for compatibility.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from lrlab.bench.executors import execute, make_executor
from lrlab.bench.refinement import second_pass_configs
from lrlab.bench.spec import RunConfig, RunRecord, RunStatus, variant_label
from lrlab.bench.store import Store
from lrlab.bench.studyfile import (
    FIGURE_KINDS,
    REPORT_KEYS,
    MethodEntry,
    ProblemEntry,
    Study,
    StudyError,
    load_study,
    make_config,
    parse_lrs,
    parse_seeds,
    tomllib,
)

__all__ = [
    "FIGURE_KINDS",
    "REPORT_KEYS",
    "MethodEntry",
    "ProblemEntry",
    "Progress",
    "Study",
    "StudyError",
    "SweepSummary",
    "load_study",
    "make_config",
    "parse_lrs",
    "parse_seeds",
    "run_sweep",
    "tomllib",
    "variant_label",
]


# -- progress -----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """A one-line progress bar with ETA and live counts, on ``stream`` (stderr by default).

    On a terminal the line is redrawn in place (at most 5 times a second); otherwise a line is
    printed every ``interval`` seconds and at the end.

    The ETA is the remaining runs at the rate measured since the first ``workers`` runs finished:
    that leaves out the start-up (worker processes importing torch, loading data, the first
    run of each worker), which is paid once, not per run, and counts the runs in flight in
    parallel. Until a second round of runs has finished it is unknown (``ETA ?``); off a
    terminal the first line is printed after ``interval`` seconds, when it usually is known.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        workers: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.total = total
        self.counts = {status.value: 0 for status in RunStatus}
        self.lost = 0
        self.workers = max(1, workers)
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else interval
        self._start = clock()
        self._last = -math.inf if self._tty else self._start
        self._round_done: float | None = None  # when the first `workers` runs had finished

    @property
    def done(self) -> int:
        return sum(self.counts.values()) + self.lost

    def eta(self) -> float:
        """Seconds until the last run finishes (inf while it cannot be estimated yet)."""
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        first_round = min(self.workers, self.total)
        if self._round_done is None or self.done < 2 * first_round:
            return math.inf
        elapsed = self._clock() - self._round_done
        if elapsed <= 0:
            return math.inf
        return remaining * elapsed / (self.done - first_round)

    def line(self) -> str:
        elapsed = self._clock() - self._start
        done = self.done
        fraction = done / self.total if self.total else 1.0
        eta = self.eta()
        width = 24
        filled = int(width * fraction)
        counts = (
            f"finished {self.counts['finished']}, diverged {self.counts['diverged']}, "
            f"failed {self.counts['failed']}"
        )
        if self.lost:
            counts += f", lost {self.lost}"
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
            f"({100 * fraction:.0f}%) {counts} | {_duration(elapsed)} elapsed, "
            f"ETA {_duration(eta) if done < self.total else '0m00s'}"
        )

    def update(self, status: RunStatus | None) -> None:
        """Count one run (None: lost, i.e. its worker died)."""
        if status is None:
            self.lost += 1
        else:
            self.counts[status.value] += 1
        now = self._clock()
        if self._round_done is None and self.done >= min(self.workers, self.total):
            self._round_done = now
        if now - self._last >= self._interval or self.done == self.total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self._tty:
            self._stream.write("\r" + self.line() + "\x1b[K")
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


# -- running ------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What :func:`run_sweep` did."""

    total: int
    """Distinct runs in the sweep."""
    skipped: int
    """Runs already in the store, not run again."""
    counts: dict[str, int]
    """Runs executed now, by status."""
    lost: list[RunConfig]
    """Runs whose worker process died (not stored; a new sweep retries them)."""
    errors: list[str]
    """First line of each failed run's error."""
    wall_time_s: float
    not_refined: list[str] = field(default_factory=list)
    """Pass-1 runs of two-pass methods that got no pass 2 (they diverged or failed)."""


def run_sweep(
    configs: Iterable[RunConfig],
    store: Store,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    progress: TextIO | None = None,
    show_progress: bool = True,
    imports: Sequence[str] = (),
) -> SweepSummary:
    """Run every config whose ``run_id`` is not in ``store`` and store each record on arrival.

    Args:
        configs: the runs (duplicates are run once).
        store: where records go; only this process writes it.
        backend: ``local`` (process pool) or ``ray``.
        workers: local processes (default: the CPU count) or CPUs of a local Ray instance.
        address: Ray cluster address (``ray`` backend only).
        retry_failed: also run again the configs stored as ``failed``.
        progress: stream of the progress bar (default stderr).
        show_progress: False to print nothing.
        imports: modules every worker imports before running (they register extra problems or
            methods).

    A worker process that dies (a crash, the OOM killer) breaks a local pool: every run it had
    not finished comes back as an error. Those runs go to a fresh executor, in reverse order
    so that the runs queued behind the culprit get their turn first, as long as a round stores
    at least one run; what is left is reported as ``lost`` (not stored, so a new sweep retries
    it). The runner itself never raises: an exception inside a run is a ``failed`` record.

    Two-pass methods: after the given runs, the pass-2 configs of every pass-1 run among them
    are built from the *stored* pass-1 records (:func:`lrlab.bench.refinement
    .second_pass_configs`) and run the same way, so a sweep killed after pass 1 resumes with
    pass 2 only; the summary counts both passes.
    """
    start = time.perf_counter()
    unique = list({c.run_id: c for c in configs}.values())
    stored = store.run_ids()
    if retry_failed:
        stored -= store.run_ids(status=RunStatus.FAILED)
    todo = [c for c in unique if c.run_id not in stored]
    stream = progress if progress is not None else sys.stderr
    parallel = workers or os.cpu_count() or 1
    bar = Progress(len(todo), stream=stream, workers=parallel) if show_progress else None
    if show_progress:
        stream.write(
            f"{len(unique)} runs: {len(unique) - len(todo)} already in {store.path}, "
            f"{len(todo)} to run\n"
        )
        stream.flush()
    counts = {status.value: 0 for status in RunStatus}
    errors: list[str] = []
    pending = todo
    while pending:
        done_before = sum(counts.values())
        broken: set[str] = set()
        executor = make_executor(backend, workers=workers, address=address)
        try:
            futures = {
                executor.submit(execute, config, tuple(imports)): config for config in pending
            }
            for future in concurrent.futures.as_completed(futures):
                config = futures.pop(future)  # drop the reference: records can be large
                try:
                    record: RunRecord = future.result()
                except Exception:  # the worker died (the runner itself never raises)
                    broken.add(config.run_id)
                    continue
                store.write(record)
                counts[record.status.value] += 1
                if record.error:
                    errors.append(
                        f"{record.config.problem} {record.config.method} "
                        f"lr={record.config.lr if record.config.lr is not None else 'default'} "
                        f"seed={record.config.seed}: "
                        f"{record.error.splitlines()[0]}"
                    )
                if bar is not None:
                    bar.update(record.status)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        pending = [c for c in reversed(pending) if c.run_id in broken]
        if sum(counts.values()) == done_before:
            break  # nothing finished in this round: give up on what is left
    if bar is not None:
        for _ in pending:
            bar.update(None)
        bar.close()
    summary = SweepSummary(
        total=len(unique),
        skipped=len(unique) - len(todo),
        counts=counts,
        lost=pending,
        errors=errors,
        wall_time_s=time.perf_counter() - start,
    )
    # two-pass methods (lrlab.bench.refinement): pass 2 is built from the stored pass-1 records
    second = second_pass_configs(unique, store)
    summary.not_refined = second.not_built
    if second.configs:
        if show_progress:
            stream.write(f"pass 2 of the two-pass methods ({len(second.configs)} runs):\n")
        more = run_sweep(
            second.configs,
            store,
            backend=backend,
            workers=workers,
            address=address,
            retry_failed=retry_failed,
            progress=progress,
            show_progress=show_progress,
            imports=imports,
        )
        summary.total += more.total
        summary.skipped += more.skipped
        summary.counts = {k: n + more.counts.get(k, 0) for k, n in summary.counts.items()}
        summary.lost += more.lost
        summary.errors += more.errors
        summary.wall_time_s = time.perf_counter() - start
    return summary
