"""Optimizer step overhead: every lrlab method against torch and the official packages.

Measures the median ``step()`` time (forward/backward excluded: gradients are preset) on

* (a) one 10M-element float32 tensor, and
* (b) 200 float32 tensors of mixed sizes (~5M elements in all),

with 2 threads and interleaved repetitions (every optimizer is timed once per round, rounds
repeated, so slow drifts of the machine hit all of them alike). Times are reported as ratios to
``torch.optim.Adam(fused=True)`` timed in the same block of candidates. Also: persistent
state bytes per parameter element, the transient allocation peak of one step (from the torch
profiler's CPU memory events), and the bytes-moved lower bound of each method at the machine's
measured copy bandwidth (read parameter + gradient, write parameter, read and write every
per-element state array).

Run:  ``.venv/bin/python benchmarks/step_overhead.py [--rounds 7] [--out docs/performance.md]``
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# the profiler (used for the transient peak) is chatty on stderr without this
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch

import lrlab
import lrlab.optim as lo

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass
class Candidate:
    label: str
    factory: Factory
    kind: str  # "lrlab", "torch", "official"
    step_kwargs: Callable[[], dict]


def _workload(name: str, generator: torch.Generator) -> list[torch.Tensor]:
    if name == "one-10M":
        sizes = [10_000_000]
    else:  # 200 tensors, mixed sizes, ~5M elements
        sizes = []
        for index in range(200):
            # a mix like a small network: a few large matrices, many small vectors
            sizes.append(120_000 if index % 5 == 0 else 1_000 + 37 * index)
        scale = 5_000_000 / sum(sizes)
        sizes = [max(1, int(s * scale)) for s in sizes]
    params = []
    for size in sizes:
        p = torch.randn(size, generator=generator).requires_grad_()
        p.grad = torch.randn(size, generator=generator) * 1e-3
        params.append(p)
    return params


def _lrlab_candidates() -> list[Candidate]:
    candidates = []
    loss = torch.tensor(1.0)
    batch_indices = torch.arange(32)
    for name in lo.names():
        spec = lo.spec(name)
        kwargs = dict(spec.sample_kwargs[0])

        def step_kwargs(spec=spec) -> dict:
            # per-example methods (TAPS, MOTAPS) get a mini-batch of 32 training-set indices
            extra = {"example_indices": batch_indices} if spec.needs_example_index else {}
            if spec.needs_closure:
                return {"closure": lambda backward=True: loss, **extra}
            if spec.needs_loss:
                return {"loss": loss, **extra}
            return extra

        candidates.append(
            Candidate(
                label=name,
                factory=lambda params, spec=spec, kwargs=kwargs: lo.create(
                    spec.name, params, **kwargs
                ),
                kind="lrlab",
                step_kwargs=step_kwargs,
            )
        )
        if spec.supports_fused:
            # the label alone is the default path (native kernels on this CPU, built on the
            # warm-up steps); fused=False is the path without them (the default before)
            candidates.append(
                Candidate(
                    label=f"{name} (fused=False)",
                    factory=lambda params, spec=spec, kwargs=kwargs: lo.create(
                        spec.name, params, **{**kwargs, "fused": False}
                    ),
                    kind="lrlab",
                    step_kwargs=step_kwargs,
                )
            )
    return candidates


def _official_candidates() -> list[Candidate]:
    """The official package of every registered method that declares an oracle."""
    candidates = []
    loss = torch.tensor(1.0)
    for name in lo.names():
        spec = lo.spec(name)
        if not spec.oracle:
            continue
        module_name, _, class_name = spec.oracle.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            print(f"skipping oracle {spec.oracle}: {error}", file=sys.stderr)
            continue
        if spec.wraps_base:
            # Mechanic's package wraps a base optimizer *class*: mechanize(SGD)(params, lr=...)
            def factory(params, cls=cls):
                return cls(torch.optim.SGD)(params, lr=1.0)
        else:

            def factory(params, cls=cls, spec=spec):
                optimizer = cls(params)
                if spec.has_eval_mode:
                    optimizer.train()  # Schedule-Free's package refuses to step in eval mode
                return optimizer

        def step_kwargs(spec=spec) -> dict:
            return {"closure": lambda: loss} if (spec.needs_loss or spec.needs_closure) else {}

        candidates.append(Candidate(f"{spec.oracle} (official)", factory, "official", step_kwargs))
    return candidates


def _torch_candidates() -> list[Candidate]:
    def none() -> dict:
        return {}

    return [
        Candidate(
            "torch Adam(fused)", lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), "torch", none
        ),
        Candidate(
            "torch Adam(foreach)",
            lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
            "torch",
            none,
        ),
        Candidate(
            "torch SGD(foreach)", lambda p: torch.optim.SGD(p, lr=1e-3, foreach=True), "torch", none
        ),
        Candidate(
            "torch SGD(momentum, foreach)",
            lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True),
            "torch",
            none,
        ),
    ]


def _state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(total bytes of per-parameter state tensors, elements of full-size state arrays)."""
    total = 0
    arrays = 0
    for p, state in optimizer.state.items():
        if not isinstance(state, dict):
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
                if isinstance(p, torch.Tensor) and value.numel() == p.numel() and p.numel() > 1:
                    arrays += value.numel()
    return total, arrays


def _transient_peak(optimizer: torch.optim.Optimizer, step_kwargs: dict) -> int:
    """Peak of the running sum of CPU allocations during one step (torch profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.step(**step_kwargs)
    # an allocation counts from its op's start; a free (negative self usage, often booked on
    # the parent op) from that op's end
    points = sorted(
        (
            e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
            e.self_cpu_memory_usage,
        )
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    running = peak = 0
    for _, usage in points:
        running += usage
        peak = max(peak, running)
    return peak


def _load() -> str:
    try:
        return " / ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _copy_bandwidth() -> float:
    src = torch.randn(25_000_000)
    dst = torch.empty_like(src)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


REFERENCE = "torch Adam(fused)"


def _measure_block(
    workload: str, candidates: list[Candidate], rounds: int, warmup: int
) -> dict[str, tuple[torch.optim.Optimizer, list[float], Candidate]]:
    built = {}
    for candidate in candidates:
        params = _workload(workload, torch.Generator().manual_seed(0))
        try:
            optimizer = candidate.factory(params)
            for _ in range(warmup):
                optimizer.step(**candidate.step_kwargs())
        except Exception as error:  # a benchmark reports a broken candidate, it does not stop
            print(f"{candidate.label}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        built[candidate.label] = (optimizer, [], candidate)
    for _ in range(rounds):
        for optimizer, times, candidate in built.values():
            kwargs = candidate.step_kwargs()
            start = time.perf_counter()
            optimizer.step(**kwargs)
            times.append(time.perf_counter() - start)
    return built


def measure(
    workload: str, candidates: list[Candidate], rounds: int, warmup: int, block: int = 6
) -> list[dict]:
    """Time the candidates in blocks of ``block``, each block interleaved with its own
    ``Adam(fused)``; a ratio is taken against the reference of the candidate's block.

    Keeping every candidate's 10M-element arrays alive at once (gigabytes) makes the kernel's
    memory reclaim page arrays out between rounds, which moved even ``Adam(fused)`` by 3x from
    run to run; a block holds a few hundred MB.
    """
    reference = next(c for c in candidates if c.label == REFERENCE)
    others = [c for c in candidates if c.label != REFERENCE]
    elements = sum(p.numel() for p in _workload(workload, torch.Generator().manual_seed(0)))
    rows = []
    reference_times: list[float] = []
    for first in range(0, len(others), block):
        chunk = [reference, *others[first : first + block]]
        built = _measure_block(workload, chunk, rounds, warmup)
        base = statistics.median(built[REFERENCE][1])
        reference_times.append(base)
        for label, (optimizer, times, candidate) in built.items():
            if label == REFERENCE:
                continue
            rows.append(_row(candidate, optimizer, times, base, elements))
        del built
    base = statistics.median(reference_times)
    rows.append(
        {
            "label": REFERENCE,
            "kind": reference.kind,
            "median_s": base,
            "ratio": 1.0,
            "state_bytes_per_element": 8.0,
            "state_arrays": 2,
            "transient_peak_bytes": 0,
            "elements": elements,
            "reference_spread": (min(reference_times), max(reference_times)),
        }
    )
    return rows


def _row(
    candidate: Candidate,
    optimizer: torch.optim.Optimizer,
    times: list[float],
    base: float,
    elements: int,
) -> dict:
    state_bytes, arrays = _state_bytes(optimizer)
    median = statistics.median(times)
    return {
        "label": candidate.label,
        "kind": candidate.kind,
        "median_s": median,
        "ratio": median / base,
        "state_bytes_per_element": state_bytes / elements,
        "state_arrays": round(arrays / elements),
        "transient_peak_bytes": _transient_peak(optimizer, candidate.step_kwargs()),
        "elements": elements,
    }


def _format(rows: list[dict], bandwidth: float, workload: str) -> str:
    reference = next(r for r in rows if r["label"] == REFERENCE)
    low, high = reference["reference_spread"]
    lines = [
        f"### Workload: {workload}",
        "",
        f"`Adam(fused)`: median over blocks {1e3 * reference['median_s']:.2f} ms (blocks: "
        f"{1e3 * low:.2f} to {1e3 * high:.2f} ms); each ratio is against the `Adam(fused)` "
        "of the candidate's own block.",
        "",
        "| optimizer | kind | median step (ms) | ratio to Adam(fused) | bytes-moved bound (ms) "
        "| state bytes / element | transient peak (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in sorted(rows, key=lambda r: r["ratio"]):
        bound = 4 * row["elements"] * (3 + 2 * row["state_arrays"]) / bandwidth
        lines.append(
            f"| {row['label']} | {row['kind']} | {1e3 * row['median_s']:.2f} "
            f"| {row['ratio']:.2f} | {1e3 * bound:.2f} "
            f"| {row['state_bytes_per_element']:.1f} | {row['transient_peak_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def _summary(results: dict[str, list[dict]]) -> str:
    """Per lrlab method: the ratio to Adam(fused) of its default path (what ``lo.create(name,
    params)`` gives) and of its fastest measured path on every workload, the ratio of its
    official package, and whether the DEFAULT path meets the target (within 2x of Adam(fused)
    on every workload and faster than its official package on every workload)."""
    ratios: dict[str, dict[str, float]] = {}
    for workload, rows in results.items():
        for row in rows:
            ratios.setdefault(row["label"], {})[workload] = row["ratio"]
    workloads = list(results)
    lines = [
        "### Target: within 2x of Adam(fused) on both workloads, faster than the official package",
        "",
        "The target is judged on each method's **default** path: what `lo.create(name, "
        "params)` gives with nothing set (on this CPU the native multi-tensor kernels of "
        "`lrlab/optim/native/` for the methods that have them). Next to it, the fastest path "
        "measured (the default or `fused=False`, the `foreach` path).",
        "",
        "| method | "
        + " | ".join(f"default ({w})" for w in workloads)
        + " | fastest path | "
        + " | ".join(f"fastest ({w})" for w in workloads)
        + " | official package | "
        + " | ".join(f"official ({w})" for w in workloads)
        + " | within 2x | faster than official | target (default path) |",
        "| --- | "
        + " | ".join("---:" for _ in workloads)
        + " | --- | "
        + " | ".join("---:" for _ in workloads)
        + " | --- | "
        + " | ".join("---:" for _ in workloads)
        + " | --- | --- | --- |",
    ]
    for name in lo.names():
        if name not in ratios:
            continue
        paths = {"default": ratios[name], "fused=False": ratios.get(f"{name} (fused=False)", {})}
        default = paths["default"]
        fastest = {w: min(path.get(w, math.inf) for path in paths.values()) for w in workloads}
        chosen = sorted(
            {
                label
                for w in workloads
                for label, path in paths.items()
                if path.get(w, math.inf) == fastest[w]
            }
        )
        oracle = lo.spec(name).oracle
        official = ratios.get(f"{oracle} (official)", {}) if oracle else {}
        within = all(default.get(w, math.inf) <= 2.0 for w in workloads)
        if oracle and official:
            faster = all(default.get(w, math.inf) < official.get(w, 0.0) for w in workloads)
            faster_text = "yes" if faster else "no"
        else:
            faster, faster_text = True, "n/a"
        lines.append(
            f"| {name} | "
            + " | ".join(f"{default.get(w, math.nan):.2f}" for w in workloads)
            + f" | {' / '.join(chosen)} | "
            + " | ".join(f"{fastest.get(w, math.nan):.2f}" for w in workloads)
            + f" | {oracle or '-'} | "
            + " | ".join(f"{official[w]:.2f}" if w in official else "-" for w in workloads)
            + f" | {'yes' if within else 'no'} | {faster_text} | "
            + ("**met**" if within and faster else "not met")
            + " |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--only", nargs="*", help="restrict to these labels (substring match)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # a method's paths and its official package next to each other, so that they mostly share
    # a block (and its reference)
    official = {c.label.removesuffix(" (official)"): c for c in _official_candidates()}
    candidates = _torch_candidates()
    for candidate in _lrlab_candidates():
        candidates.append(candidate)
        oracle = lo.spec(candidate.label).oracle if candidate.label in lo.names() else None
        if oracle in official:
            candidates.append(official.pop(oracle))
    candidates += list(official.values())
    if args.only:
        candidates = [
            c for c in candidates if c.label == REFERENCE or any(o in c.label for o in args.only)
        ]
    load = _load()
    bandwidth = _copy_bandwidth()
    started = time.perf_counter()
    sections = []
    results: dict[str, list[dict]] = {}
    for workload in ("one-10M", "200-mixed"):
        rows = measure(workload, candidates, args.rounds, args.warmup)
        results[workload] = rows
        sections.append(_format(rows, bandwidth, workload) + "\n")
        print(sections[-1], flush=True)
    sections.insert(0, _summary(results))
    print(sections[0], flush=True)
    header = [
        "# Optimizer step overhead",
        "",
        "Written by `benchmarks/step_overhead.py` (do not edit by hand). Median `step()` time "
        "with preset gradients (no forward/backward), float32, "
        f"{args.threads} threads, {args.rounds} interleaved rounds after {args.warmup} warm-up "
        "steps, candidates timed in blocks of six, each block interleaved with its own "
        "`torch.optim.Adam(fused=True)`: a ratio is against the reference of its block. The "
        "bytes-moved bound is `4 B x elements x (3 + 2 x full-size state arrays)` at the measured "
        f"copy bandwidth ({bandwidth / 1e9:.1f} GB/s).",
        "See `docs/performance_notes.md` for what limits the methods that miss the target.",
        "These are CPU numbers. The CUDA table comes from `benchmarks/cuda_check.py` run on a "
        "machine with a GPU; until such a run is recorded here, **CUDA is untested**.",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} CPUs, load average {load} (1 / 5 / 15 min) at the start and "
        f"{_load()} at the end (other processes inflate times; ratios are more stable); "
        f"torch {torch.__version__}, "
        f"lrlab {lrlab.__version__}, Python {platform.python_version()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + sections) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
