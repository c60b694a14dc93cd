"""Integration tests: one thread (the tiny models only pay for thread wake-ups otherwise) and a
frozen garbage collector heap (transformers' Trainer calls gc.collect() at the end of every run,
which walks every object the framework imports)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread_frozen_heap() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
