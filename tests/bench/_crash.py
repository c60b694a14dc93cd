"""Imported only by sweep workers (``run_sweep(..., imports=...)``): registers ``crash_tiny``,
whose build kills the worker process for seed 1, as a segfault or the OOM killer would.

The test process never imports this module, so its registry stays clean.
"""

from __future__ import annotations

import os

from lrlab.bench.problems import Recipe, register_problem
from lrlab.bench.spec import Goal, ProblemInfo
from tests.bench._tiny import TinyInstance


def _build(seed: int) -> TinyInstance:
    if seed == 1:
        os._exit(1)
    return TinyInstance(seed)


register_problem(
    Recipe(
        info=ProblemInfo(
            name="crash_tiny",
            kind="synthetic",
            summary="tiny least squares whose seed 1 kills the worker (tests only)",
            metric="distance_to_optimum",
            goal=Goal.MINIMIZE,
            default_steps=5,
            default_batch_size=8,
        ),
        factory=_build,
    )
)
