r"""A small decoder-only transformer language model on the Python standard library's own source.

Problem ``stdlib_transformer`` (kind ``language``): next-byte prediction on the ``.py`` files of
the running interpreter's standard library (``sysconfig.get_paths()["stdlib"]``), which is on
every machine that runs lrlab, so nothing is downloaded.

**Corpus.** Every ``*.py`` file under the stdlib directory, ``site-packages`` and
``__pycache__`` excluded, by its path relative to that directory (``/``-separated). A file goes
to the test part when the first byte of the SHA-256 of its relative path is below
``256 * test_fraction`` (default 0.1), else to training: the split is by file (no test file is
ever seen in training, so the test loss measures generalisation to unseen modules) and does
not depend on the seed, the file order or the machine's directory listing. Each part is the
concatenation of its files' bytes in the order of their path hashes, a newline between files,
cut at ``max_train_bytes`` (default 1 MiB) and ``max_test_bytes`` (default 128 KiB) so that a
large standard library does not make the problem slower. The standard library differs between
Python versions: a run's record names the Python version (``versions``), and results are
comparable within one version.

**Examples.** Each part is cut into consecutive, non-overlapping windows of ``context + 1``
bytes; a window is one example (inputs: its first ``context`` bytes, targets: the next byte at
every position). Training batches are epoch-wise shuffles of the window indices (methods with
per-example state get those indices).

**Model** (pre-LN, as in GPT-2): byte embedding (256 symbols) plus a learned position
embedding, ``layers`` blocks :math:`h \leftarrow h + \mathrm{Attn}(\mathrm{LN}(h))`,
:math:`h \leftarrow h + \mathrm{MLP}(\mathrm{LN}(h))` with causal multi-head self-attention
(``heads`` heads, scores :math:`QK^\top/\sqrt{d_{head}}`, future positions masked) and a GELU
MLP of width ``4 d``, a final LayerNorm and a linear read-out to 256 logits. No dropout. At the
defaults (``d = 64``, 4 layers, 4 heads, context 64) it has 237,184 parameters. Weights are
:math:`\mathcal N(0, 0.02^2)`, the output projections of attention and MLP
:math:`\mathcal N(0, 0.02^2 / (2 L))`, biases 0, LayerNorm scales 1: GPT-2's scheme, drawn from
the seeded generator (never the global RNG). ``width`` scales ``d`` (rounded to a multiple of
``heads``).

**Metrics.** Mean cross-entropy per byte in nats on the first ``eval_limit`` windows of each
part (``train_loss``, ``test_loss``) and the test loss in bits per byte,
``test_bits_per_byte = test_loss / ln 2`` (the headline, lower is better). A model that knows
nothing scores 8 bits per byte; the byte frequencies alone give about 4.5 on Python source.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from lrlab.bench.problems._common import (
    Recipe,
    check_int,
    check_real,
    epoch_batches,
    generator,
    parse_dtype,
    register_problem,
)
from lrlab.bench.spec import Batch, Goal, KwargValue, ProblemInfo

__all__ = ["ByteCorpus", "LanguageModelInstance", "TransformerLM", "stdlib_corpus"]

VOCABULARY = 256
"""Bytes."""


# -- the corpus ----------------------------------------------------------------------------------


class ByteCorpus:
    """The training and test bytes of the corpus, and which files each came from."""

    def __init__(self, train: bytes, test: bytes, train_files: int, test_files: int) -> None:
        self.train = train
        self.test = test
        self.train_files = train_files
        self.test_files = test_files


def _path_hash(relative: str) -> bytes:
    return hashlib.sha256(relative.encode()).digest()


_SKIPPED = frozenset({"site-packages", "dist-packages", "__pycache__"})


def _source_files(root: Path) -> list[tuple[bytes, str, Path]]:
    """``(hash of the relative path, relative path, path)`` of every stdlib ``.py`` file."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in _SKIPPED]  # never descend there
        for name in names:
            if name.endswith(".py"):
                path = Path(folder) / name
                relative = path.relative_to(root).as_posix()
                found.append((_path_hash(relative), relative, path))
    return sorted(found)


def _concatenate(files: list[Path], limit: int) -> tuple[bytes, int]:
    chunks: list[bytes] = []
    size = used = 0
    for path in files:
        if size >= limit:
            break
        try:
            data = path.read_bytes()
        except OSError:  # an unreadable file is skipped, like one that does not exist
            continue
        chunks.append(data + b"\n")
        size += len(data) + 1
        used += 1
    return b"".join(chunks)[:limit], used


@functools.lru_cache(maxsize=4)
def stdlib_corpus(
    test_fraction: float = 0.1,
    max_train_bytes: int = 1 << 20,
    max_test_bytes: int = 1 << 17,
    root: str | None = None,
) -> ByteCorpus:
    """The standard library's source split by file (see the module docstring); cached.

    Args:
        test_fraction: share of files (by path hash) in the test part, in (0, 1).
        max_train_bytes: cap of the training part.
        max_test_bytes: cap of the test part.
        root: the directory to read (default: this interpreter's stdlib).

    Raises:
        ValueError: a part would be shorter than 2 bytes (the directory holds too little).
    """
    directory = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    threshold = 256 * test_fraction
    files = _source_files(directory)
    train_paths = [path for digest, _, path in files if digest[0] >= threshold]
    test_paths = [path for digest, _, path in files if digest[0] < threshold]
    train, train_files = _concatenate(train_paths, max_train_bytes)
    test, test_files = _concatenate(test_paths, max_test_bytes)
    if len(train) < 2 or len(test) < 2:
        raise ValueError(
            f"the Python sources under {str(directory)!r} give {len(train)} training and "
            f"{len(test)} test bytes; the language-model problem needs at least 2 of each"
        )
    return ByteCorpus(train, test, train_files, test_files)


def _windows(data: bytes, context: int) -> Tensor:
    """Consecutive non-overlapping windows of ``context + 1`` bytes, as int64 ``(n, context+1)``;
    at least one (the part is padded with newlines when shorter than a window)."""
    size = context + 1
    if len(data) < size:
        data = data + b"\n" * (size - len(data))
    count = len(data) // size
    raw = torch.frombuffer(bytearray(data[: count * size]), dtype=torch.uint8)
    return raw.view(count, size).to(torch.int64)


# -- the model -----------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``i`` attends to positions ``<= i``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        head = width // self.heads
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, -math.inf)
        attended = scores.softmax(dim=-1) @ v
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-LN transformer block: ``h + attn(ln(h))`` then ``h + mlp(ln(h))``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """A decoder-only byte-level transformer (see the module docstring)."""

    def __init__(self, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the model width {width} must be a multiple of heads={heads}")
        self.context = context
        self.embedding = nn.Embedding(VOCABULARY, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.readout = nn.Linear(width, VOCABULARY)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(batch, length, 256)`` of the next byte at every position."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.embedding(tokens) + self.position(positions)
        for block in self.blocks:
            h = block(h)
        return self.readout(self.ln(h))

    def initialise(self, generator: torch.Generator) -> None:
        """GPT-2's initialisation, drawn from ``generator`` in module order."""
        residual_std = 0.02 / math.sqrt(2 * len(self.blocks))
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    projection = name.endswith("attention.out") or name.endswith("mlp.2")
                    std = residual_std if projection else 0.02
                    nn.init.normal_(module.weight, 0.0, std, generator=generator)
                    bias = getattr(module, "bias", None)
                    if bias is not None:
                        bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()


# -- the instance --------------------------------------------------------------------------------


class LanguageModelInstance:
    """A :class:`~lrlab.bench.spec.ProblemInstance`: the model and the windows of the corpus."""

    def __init__(
        self, model: TransformerLM, train: Tensor, test: Tensor, eval_limit: int | None
    ) -> None:
        self.model: nn.Module = model
        self._train = train
        self._test = test
        self._eval_limit = eval_limit

    @property
    def num_train_examples(self) -> int:
        return len(self._train)

    @property
    def windows(self) -> tuple[Tensor, Tensor]:
        """The training and test windows ``(n, context + 1)`` (int64 bytes); do not modify."""
        return self._train, self._test

    def batches(self, generator: torch.Generator, batch_size: int | None) -> Iterator[Batch]:
        return self._batches(epoch_batches(len(self._train), batch_size, generator))

    def _batches(self, index_stream: Iterator[Tensor]) -> Iterator[Batch]:
        for indices in index_stream:
            window = self._train[indices]
            yield Batch(inputs=window[:, :-1], targets=window[:, 1:], indices=indices)

    def loss(self, batch: Batch) -> Tensor:
        assert batch.targets is not None
        logits = self.model(batch.inputs)
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())

    def _mean_loss(self, windows: Tensor) -> float:
        count = len(windows) if self._eval_limit is None else min(len(windows), self._eval_limit)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, count, 256):
            chunk = windows[start : min(start + 256, count)]
            logits = self.model(chunk[:, :-1])
            total += nn.functional.cross_entropy(
                logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
            ).double()
        return float(total) / (count * (windows.shape[1] - 1))

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            train_loss = self._mean_loss(self._train)
            test_loss = self._mean_loss(self._test)
        return {
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_bits_per_byte": test_loss / math.log(2),
        }

    def distance_to_optimum(self) -> float | None:
        return None


def _build(
    seed: int,
    *,
    width: float = 1.0,
    layers: int = 4,
    heads: int = 4,
    context: int = 64,
    max_train_bytes: int = 1 << 20,
    max_test_bytes: int = 1 << 17,
    test_fraction: float = 0.1,
    eval_limit: int | None = 256,
    dtype: str = "float32",
) -> LanguageModelInstance:
    torch_dtype = parse_dtype(dtype)
    check_real("width", width, 0.0, low_open=True)
    check_int("layers", layers, 1, 48)
    check_int("heads", heads, 1, 64)
    check_int("context", context, 1, 4096)
    check_int("max_train_bytes", max_train_bytes, 2)
    check_int("max_test_bytes", max_test_bytes, 2)
    check_real("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    if eval_limit is not None:
        check_int("eval_limit", eval_limit, 1)
    size = max(heads, round(64 * width / heads) * heads)
    corpus = stdlib_corpus(float(test_fraction), max_train_bytes, max_test_bytes)
    with torch.device("meta"):  # no global-RNG draws; initialised from the seed below
        model = TransformerLM(size, layers, heads, context)
    model = model.to_empty(device="cpu").to(torch_dtype)
    model.initialise(generator(seed, "init"))
    return LanguageModelInstance(
        model, _windows(corpus.train, context), _windows(corpus.test, context), eval_limit
    )


_DEFAULTS: dict[str, KwargValue] = {
    "width": 1.0,
    "layers": 4,
    "heads": 4,
    "context": 64,
    "max_train_bytes": 1 << 20,
    "max_test_bytes": 1 << 17,
    "test_fraction": 0.1,
    "eval_limit": 256,
    "dtype": "float32",
}

register_problem(
    Recipe(
        info=ProblemInfo(
            name="stdlib_transformer",
            kind="language",
            summary="byte-level decoder-only transformer (pre-LN, 237k parameters) on the "
            "Python standard library's source, split by file",
            metric="test_bits_per_byte",
            goal=Goal.MINIMIZE,
            default_steps=200,
            default_batch_size=16,
            source="lrlab leaderboard workload (GPT-2-style pre-LN block)",
            metric_goals={"test_bits_per_byte": Goal.MINIMIZE},
        ),
        factory=_build,
        defaults=_DEFAULTS,
    )
)
