"""The device check of issue 14: run it once on a machine with a GPU.

Three parts, each printed as a markdown table (and written to ``--out``):

1. **Conformance on the device.** Every registered method, float64 parameters on the device:
   the default step against the reference loop (``foreach=False, fused=False``), 6 steps of a
   seeded quadratic, largest relative difference of the parameters. A capturable method is also
   run with ``capturable=False`` (host scalars) against its default (device scalars).
2. **No host synchronisation.** For every capturable method, the update after the non-finite
   guard runs under ``torch.cuda.set_sync_debug_mode("error")``: any read of a device value back
   to the host (``.item()``, ``.tolist()``, ``if tensor``, a pageable copy) raises.
3. **Step time.** The default step of every method on the two workloads of
   ``benchmarks/step_overhead.py`` (one 10M-element float32 tensor; 200 mixed tensors, ~5M
   elements), median over rounds timed with device events, as a ratio to
   ``torch.optim.Adam(fused=True)`` timed in the same round.

``--device cpu`` runs parts 1 and 3 on the CPU (a dry run of the script itself; part 2 needs a
CUDA device). Run:  ``python benchmarks/cuda_check.py [--device cuda] [--out cuda.md]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

import lrlab.optim as lo
from lrlab.optim._base import StepContext

SHAPES = ((64, 33), (129,), (7, 5, 3))


def _params(device: torch.device, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64)
        .to(device=device, dtype=dtype)
        .requires_grad_()
        for shape in SHAPES
    ]


def _loss(params: list[torch.Tensor], step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + step)
    total = torch.zeros((), dtype=torch.float64, device=params[0].device)
    for index, p in enumerate(params):
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device)
        scale = torch.linspace(1, 10, p.numel(), dtype=torch.float64, device=p.device)
        x = p.to(torch.float64).reshape(-1)
        quadratic = 0.5 * (scale * x * x).sum() / (1 + index)
        total = total + quadratic + 0.1 * (noise.reshape(-1) * x).sum()
    return total


def _step_kwargs(spec: lo.MethodSpec, step: int, loss: torch.Tensor, params) -> dict:
    """The keyword arguments of ``step()`` besides a closure: the loss and the batch's indices
    for the methods that need them."""
    kwargs: dict = {}
    if spec.needs_example_index:
        kwargs["example_indices"] = torch.arange(4, device=params[0].device) + 4 * (step % 8)
    if spec.needs_loss and not spec.needs_closure:
        kwargs["loss"] = loss.detach()
    return kwargs


def _run(name: str, device: torch.device, steps: int = 6, **extra) -> list[torch.Tensor]:
    spec = lo.spec(name)
    params = _params(device, torch.float64)
    optimizer = lo.create(name, params, **{**dict(spec.sample_kwargs[0]), **extra})
    for step in range(steps):
        optimizer.zero_grad()
        loss = _loss(params, step)
        loss.backward()
        kwargs = _step_kwargs(spec, step, loss, params)
        if spec.needs_closure:
            kwargs["closure"] = lo.make_closure(optimizer, lambda step=step: _loss(params, step))
        optimizer.step(**kwargs)
    return [p.detach().clone() for p in params]


def _difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(
        ((x - y).abs().max() / x.abs().max().clamp_min(1e-300)).item()
        for x, y in zip(a, b, strict=True)
    )


def conformance(device: torch.device) -> list[str]:
    rows = [
        "| method | default vs reference loop | device vs host scalars |",
        "| --- | ---: | ---: |",
    ]
    for name in lo.names():
        spec = lo.spec(name)
        try:
            default = _run(name, device)
            reference_kwargs = {"foreach": False} if spec.supports_foreach else {}
            if spec.supports_fused:
                reference_kwargs["fused"] = False
            reference = _run(name, device, **reference_kwargs)
            host = ""
            if spec.capturable:
                host = f"{_difference(default, _run(name, device, capturable=False)):.1e}"
            rows.append(f"| {name} | {_difference(reference, default):.1e} | {host} |")
        except Exception as error:  # report every method, then go on
            rows.append(f"| {name} | FAILED: {type(error).__name__}: {error} | |")
            traceback.print_exc()
    return rows


def no_host_sync(device: torch.device) -> list[str]:
    rows = ["| capturable method | update under sync_debug_mode('error') |", "| --- | --- |"]
    if device.type != "cuda":
        return [*rows, "| (all) | skipped: needs a CUDA device |"]
    for name in (n for n in lo.names() if lo.spec(n).capturable):
        spec = lo.spec(name)
        params = _params(device, torch.float32)
        optimizer = lo.create(name, params, **dict(spec.sample_kwargs[0]))
        outcome = "no host read"
        for step in range(3):
            optimizer.zero_grad()
            loss = _loss(params, step)
            loss.backward()
            kwargs = _step_kwargs(spec, step, loss, params)
            context = StepContext(
                loss=kwargs.get("loss"),
                closure=None,
                example_indices=kwargs.get("example_indices"),
                params=tuple(params),
            )
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.no_grad():
                    optimizer._update(context)
            except RuntimeError as error:
                outcome = f"host read at step {step}: {str(error).splitlines()[0]}"
                break
            finally:
                torch.cuda.set_sync_debug_mode("default")
        rows.append(f"| {name} | {outcome} |")
    return rows


def _workload(name: str, device: torch.device) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if name == "one-10M":
        sizes = [10_000_000]
    else:
        sizes = [120_000 if i % 5 == 0 else 1_000 + 37 * i for i in range(200)]
        scale = 5_000_000 / sum(sizes)
        sizes = [max(1, int(s * scale)) for s in sizes]
    params = []
    for size in sizes:
        p = torch.randn(size, generator=generator).to(device).requires_grad_()
        p.grad = torch.randn(size, generator=generator).to(device) * 1e-3
        params.append(p)
    return params


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(call: Callable[[], object]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        begin = time.perf_counter()
        call()
        return time.perf_counter() - begin

    return timed


def step_times(device: torch.device, rounds: int, only: list[str] | None) -> list[str]:
    timed = _timer(device)
    loss = torch.tensor(1.0, device=device)
    rows = ["| method | one-10M | mixed-200 |", "| --- | ---: | ---: |"]
    results: dict[str, dict[str, float]] = {}
    for workload in ("one-10M", "mixed-200"):
        names = [n for n in lo.names() if not only or any(o in n for o in only)]
        factories: dict[str, Callable] = {
            "torch Adam(fused)": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        }
        for name in names:
            spec = lo.spec(name)
            factories[name] = lambda ps, spec=spec: lo.create(
                spec.name, ps, **dict(spec.sample_kwargs[0])
            )
        steppers = {}
        for label, factory in factories.items():
            params = _workload(workload, device)
            optimizer = factory(params)
            spec = lo.spec(label) if label in names else None
            kwargs: dict = {}
            if spec is not None and spec.needs_example_index:
                kwargs["example_indices"] = torch.arange(32, device=device)
            if spec is not None and spec.needs_closure:
                kwargs["closure"] = lambda backward=True: loss
            elif spec is not None and spec.needs_loss:
                kwargs["loss"] = loss
            steppers[label] = (optimizer, kwargs)
            for _ in range(2):  # warm-up: state, compiled kernels
                optimizer.step(**kwargs)
        times: dict[str, list[float]] = {label: [] for label in steppers}
        for _ in range(rounds):
            for label, (optimizer, kwargs) in steppers.items():
                times[label].append(timed(lambda o=optimizer, k=kwargs: o.step(**k)))
        base = statistics.median(times["torch Adam(fused)"])
        for label, samples in times.items():
            results.setdefault(label, {})[workload] = statistics.median(samples) / base
        del steppers
    for label, ratios in results.items():
        rows.append(f"| {label} | {ratios['one-10M']:.2f} | {ratios['mixed-200']:.2f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", nargs="*", help="time only these methods (substring match)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    sections = [
        f"# lrlab device check: {name}, torch {torch.__version__}",
        "\n## Conformance (float64, 6 steps, largest relative difference)\n",
        *conformance(device),
        "\n## No host synchronisation in the capturable update\n",
        *no_host_sync(device),
        "\n## Default step time, ratio to torch.optim.Adam(fused=True)\n",
        *step_times(device, args.rounds, args.only),
    ]
    text = "\n".join(sections) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
