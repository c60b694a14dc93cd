r"""Refined schedules in the lab: from a stored run's gradient norms, and two-pass methods.

Method page: ``docs/methods/schedules.md`` (Defazio, Cutkosky, Mehta, Mishchenko, "When,
Why and How Much? Adaptive Learning Rate Scheduling by Refinement", arXiv:2310.07831).

Every run of the lab logs, per step, the L2 and L1 norms of the mini-batch gradient
(``grad_l2``, ``grad_l1``; see :mod:`lrlab.bench.runner`), so a refined schedule can be computed
from any stored run: :func:`refined_schedule_from_record` (``lrlab refine --store S --run-id ID``
on the command line).

Two-pass methods. A study may list ``refined-sgd`` or ``refined-adam`` as a method
(:data:`TWO_PASS_METHODS`). It runs in two passes, both stored, the data flowing one way:

1. pass 1: the base optimizer (``sgd`` / ``adam``, with the entry's kwargs) under
   ``linear-decay``, tagged ``{"pass": 1, "two_pass": "refined-sgd", "refined_label": ...}``
   and labelled ``sgd+linear-decay``, so it is also the linear-decay baseline;
2. pass 2: built by the sweep driver from the *stored* pass-1 record at the same problem,
   initial (peak) LR and seed, with ``schedule = "refined-schedule"`` whose ``schedule_kwargs``
   hold the refined multipliers themselves (L2 norms and :math:`1/\|g\|_2^2` weights for SGD, L1
   norms and :math:`1/\|g\|_1` weights for Adam). The pass-2 config is self-contained: its
   ``run_id`` hashes the schedule, and it is tagged ``{"pass": 2, "refined_from": <pass-1
   run_id>, "two_pass": ..., "label": "refined-sgd"}``.

Pass 2 is rebuilt from the store at every sweep (refinement is deterministic), so a sweep killed
after pass 1 resumes with pass 2 only. A pass-1 run that diverged or failed has no pass 2 (its
norms do not describe a whole run); :func:`second_pass_configs` says which.

Example:
    >>> with Store("results/refine.sqlite", readonly=True) as store:
    ...     (record,) = store.load_records(run_id=run_id)
    >>> multipliers = refined_schedule_from_record(record, kind="adam")
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lrlab.bench.spec import (
    JSONScalar,
    KwargValue,
    RunConfig,
    RunRecord,
    RunStatus,
    variant_label,
)
from lrlab.schedules import refine

if TYPE_CHECKING:
    import numpy as np

    from lrlab.bench.store import Store

__all__ = [
    "DEFAULT_SMOOTHING",
    "NORM_OF_KIND",
    "PASS_ONE_SCHEDULE",
    "PASS_TWO_SCHEDULE",
    "TWO_PASS_METHODS",
    "SecondPass",
    "TwoPassMethod",
    "default_kind",
    "format_schedule",
    "grad_norms",
    "is_pass_one",
    "pass_two_config",
    "refine_stored_run",
    "refined_schedule_from_record",
    "second_pass_configs",
    "smoothed_norms",
    "two_pass_method",
]

RefineKind = Literal["sgd", "adam"]

#: :math:`\tau`, the median filter's width as a fraction of the run (the paper's plots use 0.1)
DEFAULT_SMOOTHING = 0.1

#: which logged norm each kind of refinement reads (spec 8.2)
NORM_OF_KIND: dict[str, str] = {"sgd": "grad_l2", "adam": "grad_l1"}

#: the schedule pass 1 runs under, and the one pass 2 plays (names of ``runner.schedule_names``)
PASS_ONE_SCHEDULE = "linear-decay"
PASS_TWO_SCHEDULE = "refined-schedule"


# -- from a record -------------------------------------------------------------------------------


def grad_norms(record: RunRecord, norm: str) -> list[float]:
    """The per-step values of ``norm`` (``grad_l2`` or ``grad_l1``) logged in ``record``, in step
    order (non-finite values kept: :func:`lrlab.schedules.refine` drops them).

    Raises:
        ValueError: the record has no steps, or a step row lacks ``norm``.
    """
    if not record.steps:
        raise ValueError(f"run {record.run_id[:12]} has no step rows to refine from")
    missing = [row.get("step") for row in record.steps if norm not in row]
    if missing:
        raise ValueError(
            f"run {record.run_id[:12]} has no {norm!r} at step {missing[0]} (records written "
            "before the runner logged gradient norms cannot be refined)"
        )
    return [float(row[norm]) for row in record.steps]


def refined_schedule_from_record(
    record: RunRecord,
    kind: RefineKind = "sgd",
    length: int | None = None,
    *,
    smoothing: float = DEFAULT_SMOOTHING,
    norm: str | None = None,
    allow_unfinished: bool = False,
) -> np.ndarray:
    r"""The refined schedule (multipliers of the peak LR) from the gradient norms ``record``
    logged: :func:`lrlab.schedules.refine` of its per-step ``grad_l2`` (``kind="sgd"``,
    weights :math:`1/\|g_t\|_2^2`) or ``grad_l1`` (``kind="adam"``, weights
    :math:`1/\|g_t\|_1`).

    Args:
        record: a stored run (any method; refine from a run of the same optimizer family).
        kind: ``"sgd"`` or ``"adam"``.
        length: steps of the new run, an integer >= 2. Default: the record's ``config.steps``.
        smoothing: :math:`\tau` of the median filter, in [0, 1). Default 0.1.
        norm: the step-row key to read instead of the kind's default (``grad_l2``/``grad_l1``).
        allow_unfinished: also refine from a diverged or failed run (from the steps it logged);
            by default such a record is an error, since its norms do not cover a whole run.

    Returns:
        float64 multipliers, maximum 1 before resampling, last entry 0 (``length`` entries).

    Raises:
        ValueError: an unfinished record (see ``allow_unfinished``), a bad ``kind``, missing
            norms, or what :func:`~lrlab.schedules.refine` rejects.
    """
    if kind not in NORM_OF_KIND:
        raise ValueError(f"kind must be one of {', '.join(map(repr, NORM_OF_KIND))}, got {kind!r}")
    if record.status is not RunStatus.FINISHED and not allow_unfinished:
        raise ValueError(
            f"run {record.run_id[:12]} is {record.status.value}, not finished: its gradient norms "
            "do not cover a whole run (pass allow_unfinished=True to refine from them anyway)"
        )
    values = grad_norms(record, norm or NORM_OF_KIND[kind])
    target = record.config.steps if length is None else length
    return refine(values, kind=kind, smoothing=smoothing, length=target)  # type: ignore[return-value]


def smoothed_norms(norms: Sequence[float], smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """The finite ``norms`` after :func:`~lrlab.schedules.refine`'s median filter (spec 8.2
    step 2: odd width :math:`2\\lfloor\\lfloor\\tau N\\rfloor/2\\rfloor+1`, right end padded by
    reflection, "nearest" boundaries): what the refined schedule's weights are computed from.
    For plots; ``refine(smoothed_norms(g, tau), smoothing=0) == refine(g, smoothing=tau)``."""
    import numpy as np
    from scipy.ndimage import median_filter

    values = np.asarray(norms, dtype=np.float64)
    values = values[np.isfinite(values)]
    width = 2 * (math.floor(smoothing * values.size) // 2) + 1
    if width <= 1:
        return values.copy()
    pad = 2 * width
    padded = np.pad(values, (0, pad), mode="reflect")
    return median_filter(padded, size=width, mode="nearest")[:-pad]


def format_schedule(
    record: RunRecord, multipliers: Sequence[float], kind: str, *, rows: int = 21
) -> str:
    """A text summary of a refined schedule: where it peaks, how it starts and ends, and about
    ``rows`` sampled steps with the peak LR times the multiplier."""
    count = len(multipliers)
    peak_lr = record.config.lr
    peak = max(range(count), key=lambda i: multipliers[i])
    lines = [
        f"refined schedule ({kind}: {NORM_OF_KIND[kind]} norms) from run {record.run_id[:12]} "
        f"({record.config.problem} / {record.config.method} / lr={peak_lr} / "
        f"seed={record.config.seed}, {len(record.steps)} steps): {count} steps",
        f"peak at step {peak} ({peak / max(1, count - 1):.0%} of the run); "
        f"first multiplier {multipliers[0]:.4g}; last {multipliers[-1]:.4g}",
        f"{'step':>8} {'multiplier':>12}" + (f" {'lr':>12}" if peak_lr is not None else ""),
    ]
    picks = sorted({round(k * (count - 1) / max(1, rows - 1)) for k in range(rows)} | {peak})
    for index in picks:
        line = f"{index:>8} {multipliers[index]:>12.6g}"
        if peak_lr is not None:
            line += f" {peak_lr * multipliers[index]:>12.6g}"
        lines.append(line)
    return "\n".join(lines)


def default_kind(config: RunConfig) -> RefineKind:
    """The refinement kind of a run: its two-pass method's, else ``"adam"`` for a method whose
    name contains ``adam`` (the Adam family reads L1 norms), else ``"sgd"``."""
    method = TWO_PASS_METHODS.get(str((config.tags or {}).get("two_pass")))
    if method is not None:
        return method.kind
    return "adam" if "adam" in config.method else "sgd"


def refine_stored_run(
    store: Store,
    run_id: str,
    *,
    kind: RefineKind | None = None,
    length: int | None = None,
    smoothing: float = DEFAULT_SMOOTHING,
    out: str | Path | None = None,
) -> str:
    """``lrlab refine``: the refined schedule of the stored run ``run_id`` (or a unique prefix of
    it, such as the 12 characters of a report), as text; with ``out`` also written to a ``.json``
    file (``{"multipliers": [...], ...}``: usable as ``schedule_kwargs`` of
    ``schedule = "refined-schedule"``) or a ``.csv`` file (step, multiplier, lr, and the norm
    where the lengths agree).

    Raises:
        ValueError: no or several runs match, or the run cannot be refined.
    """
    matches = sorted(i for i in store.run_ids() if i.startswith(run_id.lower()))
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise ValueError(f"{found} in {str(store.path)!r} with an id starting {run_id!r}")
    (record,) = store.load_records(run_id=matches[0])
    kind = kind or default_kind(record.config)
    multipliers = [
        float(m) for m in refined_schedule_from_record(record, kind, length, smoothing=smoothing)
    ]
    text = format_schedule(record, multipliers, kind)
    if out is not None:
        path = Path(out)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".csv"):
            raise ValueError(f"cannot write {str(path)!r}: use a .json or .csv file")
        path.parent.mkdir(parents=True, exist_ok=True)
        peak = record.config.lr
        if suffix == ".json":
            data = {
                "run_id": record.run_id,
                "kind": kind,
                "norm": NORM_OF_KIND[kind],
                "smoothing": smoothing,
                "peak_lr": peak,
                "multipliers": multipliers,
            }
            path.write_text(json.dumps(data, indent=1) + "\n")
        else:
            norms = grad_norms(record, NORM_OF_KIND[kind])
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                same = len(norms) == len(multipliers)
                writer.writerow(
                    ["step", "multiplier", "lr"] + ([NORM_OF_KIND[kind]] if same else [])
                )
                for index, factor in enumerate(multipliers):
                    row = [index + 1, repr(factor), "" if peak is None else repr(peak * factor)]
                    writer.writerow(row + ([repr(norms[index])] if same else []))
        text += f"\nwrote {path}"
    return text


# -- two-pass methods ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TwoPassMethod:
    """A lab method that runs ``base`` twice: under linear decay, then under the schedule
    refined from the first run's gradient norms."""

    name: str
    base: str
    """The lrlab optimizer of both passes."""
    kind: RefineKind
    """The refinement's weights (and norm, :data:`NORM_OF_KIND`)."""
    summary: str

    def pass_one(
        self,
        kwargs: Mapping[str, KwargValue],
        label: str | None,
        tags: Mapping[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        """The label and tags of the pass-1 runs of a study entry (``label``: the entry's own
        label with its variant suffix, or None)."""
        second = label or variant_label(self.name, kwargs)
        first = f"{label} (pass 1)" if label else f"{variant_label(self.base, kwargs)}+linear-decay"
        return first, {**tags, "pass": 1, "two_pass": self.name, "refined_label": second}


TWO_PASS_METHODS: dict[str, TwoPassMethod] = {
    method.name: method
    for method in (
        TwoPassMethod(
            "refined-sgd",
            "sgd",
            "sgd",
            "SGD under linear decay, then under the schedule refined from its L2 gradient norms",
        ),
        TwoPassMethod(
            "refined-adam",
            "adam",
            "adam",
            "Adam under linear decay, then under the schedule refined from its L1 gradient norms",
        ),
    )
}


def two_pass_method(name: str) -> TwoPassMethod | None:
    """The two-pass method called ``name``, or None for an ordinary (registered) method."""
    return TWO_PASS_METHODS.get(name)


def is_pass_one(config: RunConfig) -> bool:
    """Whether ``config`` is the first pass of a two-pass method."""
    tags = config.tags or {}
    return tags.get("pass") == 1 and tags.get("two_pass") in TWO_PASS_METHODS


def pass_two_config(record: RunRecord, *, smoothing: float = DEFAULT_SMOOTHING) -> RunConfig:
    """The pass-2 config of a stored, finished pass-1 ``record``: the same run with the schedule
    refined from its norms written into ``schedule_kwargs``.

    Raises:
        ValueError: ``record`` is not a pass-1 run, or is not finished.
    """
    config = record.config
    if not is_pass_one(config):
        raise ValueError(f"run {record.run_id[:12]} is not the first pass of a two-pass method")
    method = TWO_PASS_METHODS[str(config.tags["two_pass"])]
    multipliers = refined_schedule_from_record(record, method.kind, smoothing=smoothing)
    tags: dict[str, JSONScalar] = {
        k: v for k, v in config.tags.items() if k not in ("pass", "refined_label", "label")
    }
    tags.update(
        {
            "label": config.tags.get("refined_label") or method.name,
            "pass": 2,
            "refined_from": record.run_id,
        }
    )
    return dataclasses.replace(
        config,
        schedule=PASS_TWO_SCHEDULE,
        schedule_kwargs={"multipliers": [float(m) for m in multipliers]},
        tags=tags,
    )


@dataclass
class SecondPass:
    """What :func:`second_pass_configs` found."""

    configs: list[RunConfig]
    """The pass-2 configs, one per finished, stored pass-1 run."""
    not_built: list[str]
    """One line per pass-1 run without a pass 2 (diverged, failed, or not stored)."""


def second_pass_configs(
    configs: Iterable[RunConfig], store: Store, *, chunk: int = 500
) -> SecondPass:
    """The pass-2 configs of the pass-1 runs among ``configs``, built from their stored records
    (the sweep driver runs them after pass 1; already stored ones are skipped there)."""
    firsts = [c for c in configs if is_pass_one(c)]
    ids = list(dict.fromkeys(c.run_id for c in firsts))
    records: dict[str, RunRecord] = {}
    for start in range(0, len(ids), chunk):
        for loaded in store.load_records(run_id=ids[start : start + chunk]):
            records[loaded.run_id] = loaded
    built: list[RunConfig] = []
    not_built: list[str] = []
    for run_id in ids:
        record = records.get(run_id)
        if record is None:
            not_built.append(f"{run_id[:12]}: pass 1 is not stored")
            continue
        where = (
            f"{record.config.problem} {record.config.tags['two_pass']} "
            f"lr={record.config.lr} seed={record.config.seed}"
        )
        if record.status is not RunStatus.FINISHED:
            not_built.append(f"{where}: pass 1 {record.status.value}, no pass 2")
            continue
        try:
            built.append(pass_two_config(record))
        except ValueError as error:  # e.g. zero norms the filter does not smooth away
            not_built.append(f"{where}: {error}")
    return SecondPass(built, not_built)
