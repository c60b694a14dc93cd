"""Method x client matrix: does every registered method train in each training stack?

    PYTHONPATH=src python benchmarks/integration_matrix.py            # with lrlab's integrations
    PYTHONPATH=/path/to/old/src python benchmarks/integration_matrix.py --plain   # as before

``--plain`` uses each client the way a user would without lrlab's callbacks or ``feed``
(Lightning and HF Trainer as they are; accelerate with the README's ``step(loss=...)``). A cell
passes when the run finishes with finite parameters (``torch.compile``: equal to eager within
rtol 1e-9 after 30 float64 steps, with no recompilation). Prints a table and the pass counts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integrations._models import (
    IndexedRegression,
    TokenData,
    build,
    flat_params,
    mlp,
    tiny_gpt2,
)

import lrlab.optim as lo

PLAIN = False


def _finite(module: torch.nn.Module) -> None:
    if not torch.isfinite(flat_params(module)).all():
        raise AssertionError("non-finite parameters")


def lightning_run(name: str, fp16: bool) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.plugins import MixedPrecision

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])

        def configure_optimizers(self):
            return build(name, self.parameters())

    callbacks = []
    if not PLAIN:
        from lrlab.integrations.lightning import LrlabCallback

        callbacks.append(LrlabCallback())
    trainer = pl.Trainer(
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        plugins=[MixedPrecision("16-mixed", device="cpu")] if fp16 else None,
        accumulate_grad_batches=2 if fp16 else 1,
    )
    module = Module()
    trainer.fit(module, torch.utils.data.DataLoader(IndexedRegression(), batch_size=8))
    _finite(module)


def hf_run(name: str) -> None:
    import transformers

    model = tiny_gpt2()
    optimizer = build(name, model.parameters())
    with tempfile.TemporaryDirectory() as root:
        args = transformers.TrainingArguments(
            output_dir=root,
            max_steps=2,
            per_device_train_batch_size=4,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            save_strategy="no",
            remove_unused_columns=PLAIN,
        )
        callbacks = []
        if not PLAIN:
            from lrlab.integrations.transformers import LrlabCallback

            callbacks.append(LrlabCallback())
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=TokenData(),
            optimizers=(optimizer, None),
            callbacks=callbacks,
        )
        trainer.train()
    _finite(model)


def accelerate_run(name: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = mlp()
    model, optimizer = accelerator.prepare(model, build(name, model.parameters()))
    for batch in torch.utils.data.DataLoader(IndexedRegression(), batch_size=8):
        optimizer.zero_grad()

        def compute_loss(batch=batch):
            return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])

        loss = compute_loss()
        accelerator.backward(loss)
        if PLAIN:  # the README's call, through the wrapper
            optimizer.step(loss=loss, example_indices=batch["index"])
        else:
            lo.feed(optimizer, loss=loss, example_indices=batch["index"], forward_only=compute_loss)
            optimizer.step()
    _finite(model)


def scheduler_run(name: str, make: Callable) -> None:
    model = mlp()
    optimizer = build(name, model.parameters())
    scheduler = make(optimizer)
    data = IndexedRegression()
    for step in range(4):
        rows = slice(8 * step, 8 * step + 8)
        closure = lo.make_closure(
            optimizer,
            lambda rows=rows: torch.nn.functional.mse_loss(model(data.x[rows]), data.y[rows]),
        )
        kwargs = {"example_indices": torch.arange(rows.start, rows.stop)}
        optimizer.step(closure, **(kwargs if lo.spec(name).needs_example_index else {}))
        scheduler.step()
    _finite(model)


def compile_run(name: str) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    def run(compiled: bool) -> torch.Tensor:
        model = mlp().double()
        optimizer = build(name, model.parameters())
        step = torch.compile(optimizer.step) if compiled else optimizer.step
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, dtype=torch.float64, generator=generator)
        y = torch.randn(32, 1, dtype=torch.float64, generator=generator)
        for i in range(30):
            rows = slice(8 * (i % 4), 8 * (i % 4) + 8)
            closure = lo.make_closure(
                optimizer,
                lambda rows=rows: torch.nn.functional.mse_loss(model(x[rows]), y[rows]),
            )
            kwargs = {"example_indices": torch.arange(rows.start, rows.stop)}
            step(closure, **(kwargs if lo.spec(name).needs_example_index else {}))
        return flat_params(model)

    eager = run(False)
    torch._dynamo.reset()
    counters.clear()
    compiled = run(True)
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=0)
    graphs = counters["stats"]["unique_graphs"]
    if graphs > 1:  # a step compiled once is reused; more graphs are recompilations
        raise AssertionError(f"{graphs} graphs compiled for one step function (recompiles)")


def _has_momentum(name: str) -> bool:
    spec = lo.spec(name)
    parameters = inspect.signature(spec.cls.__init__).parameters
    return bool({"momentum", "betas", "beta"} & set(parameters)) or spec.wraps_base


CLIENTS: dict[str, Callable[[str], None]] = {
    "lightning-32": lambda name: lightning_run(name, fp16=False),
    "lightning-fp16": lambda name: lightning_run(name, fp16=True),
    "hf-trainer": hf_run,
    "accelerate": accelerate_run,
    "LambdaLR": lambda name: scheduler_run(
        name, lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.9**s)
    ),
    # cycle_momentum (torch's default) where the method has a momentum under any name
    "OneCycleLR": lambda name: scheduler_run(
        name,
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=o.param_groups[0].get("lr", 1.0),
            total_steps=10,
            cycle_momentum=_has_momentum(name),
        ),
    ),
    "torch.compile": compile_run,
}


def main() -> None:
    global PLAIN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="no lrlab callbacks or feed")
    parser.add_argument("--only", nargs="*", default=None, help="methods")
    options = parser.parse_args()
    PLAIN = options.plain
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import accelerate  # noqa: F401  (imported once, before the heap is frozen)
    import lightning.pytorch  # noqa: F401
    import transformers  # noqa: F401

    gc.collect()
    gc.freeze()  # transformers' Trainer calls gc.collect() after every run
    names = options.only or lo.names()
    passes = dict.fromkeys(CLIENTS, 0)
    print("| method | " + " | ".join(CLIENTS) + " |")
    print("| --- |" + " --- |" * len(CLIENTS))
    for name in names:
        cells = []
        for client, run in CLIENTS.items():
            try:
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    contextlib.redirect_stderr(io.StringIO()),
                ):
                    run(name)
                cells.append("ok")
                passes[client] += 1
            except Exception as error:  # a failing cell is the measurement
                line = traceback.format_exception_only(type(error), error)[-1].strip()
                cells.append(" ".join(line.split())[:60].replace("|", "/"))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    total = len(names)
    print("| **passing** | " + " | ".join(f"{passes[c]}/{total}" for c in CLIENTS) + " |")


if __name__ == "__main__":
    main()
