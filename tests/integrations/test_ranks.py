"""Under data parallelism the callbacks feed every rank the same loss (the mean over ranks) and
the global batch's example indices: the helpers on two gloo ranks."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrlab.integrations._common import gather_over_ranks, mean_over_ranks

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=30),
    )
    try:
        loss = mean_over_ranks(torch.tensor(1.0 + 2.0 * rank))  # 1 and 3
        indices = gather_over_ranks(torch.tensor([10 * rank, 10 * rank + 1]))
        uneven = ""
        try:
            gather_over_ranks(torch.arange(rank + 1))
        except ValueError as error:
            uneven = str(error)
        torch.save({"loss": loss, "indices": indices, "uneven": uneven}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_loss_is_averaged_and_indices_gathered_over_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["loss"].item() == 2.0
        assert result["indices"].tolist() == [0, 1, 10, 11]
        assert "different sizes ([1, 2])" in result["uneven"]


def test_one_process_is_left_alone() -> None:
    loss = torch.tensor(0.5, dtype=torch.float32)
    assert mean_over_ranks(loss) is loss
    indices = torch.tensor([3, 1])
    assert gather_over_ranks(indices) is indices
