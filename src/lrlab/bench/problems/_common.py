"""What the problem modules share: the registry, recipes, seeding, batching, data directories.

* :class:`Recipe` is the registered :class:`~lrlab.bench.spec.Problem`: a :class:`ProblemInfo`, a
  factory and the declared keyword arguments with their defaults. ``build`` rejects an argument the
  recipe does not declare, naming the ones it does.
* :func:`generator` gives an independent ``torch.Generator`` per (seed, purpose): the split, the
  model's initialisation and a synthetic data set never share a stream, and nothing draws from the
  global RNG.
* :class:`SupervisedInstance` is the :class:`~lrlab.bench.spec.ProblemInstance` of every data-set
  problem (logistic regression, classifiers, autoencoders): epoch-wise shuffled mini-batches that
  carry their training-set indices, the mean loss of a batch, and chunked evaluation.
* :func:`find_data_files` resolves user-provided data (``data_dir=`` or ``$LRLAB_DATA``) and fails
  with a message that says which files are expected where.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor, nn

from lrlab._registry import Registry
from lrlab.bench.spec import Batch, KwargValue, ProblemInfo, ProblemInstance

__all__ = [
    "DATA_ENV_VAR",
    "MissingDataError",
    "Recipe",
    "SupervisedInstance",
    "check_bool",
    "check_choice",
    "check_int",
    "check_real",
    "data_root",
    "epoch_batches",
    "find_data_files",
    "generator",
    "init_parameters",
    "parse_dtype",
    "register_problem",
    "split_indices",
]

DATA_ENV_VAR = "LRLAB_DATA"
"""The environment variable naming the data root when ``data_dir`` is not given."""

PROBLEMS: Registry[Recipe] = Registry("problem", r"[a-z][a-z0-9]*(_[a-z0-9]+)+")
"""Every registered problem; names are snake-case ``dataset_model``."""


# -- the recipe (a registered Problem) ----------------------------------------------------------


def _freeze(mapping: Mapping[str, KwargValue]) -> Mapping[str, KwargValue]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Recipe:
    """A registered problem: static facts, a factory and its declared keyword arguments.

    ``factory(seed, **arguments)`` receives every declared argument (defaults filled in), so a
    problem's behaviour never depends on an argument being absent rather than at its default.
    """

    info: ProblemInfo
    factory: Callable[..., ProblemInstance]
    defaults: Mapping[str, KwargValue] = field(default_factory=dict)
    """The keyword arguments ``build`` accepts, with their default values."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", _freeze(self.defaults))

    def build(self, seed: int, **kwargs: KwargValue) -> ProblemInstance:
        """A fresh instance; the same ``seed`` and ``kwargs`` give identical instances.

        Raises:
            ValueError: a negative or non-integer seed, an argument the problem does not declare,
                or an invalid argument value (the message names it and its allowed values).
        """
        check_int("seed", seed, 0)
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            declared = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items()) or "none"
            raise ValueError(
                f"problem {self.info.name!r} has no argument {', '.join(map(repr, unknown))}; "
                f"its arguments (with defaults): {declared}"
            )
        return self.factory(seed, **{**self.defaults, **kwargs})


def register_problem(recipe: Recipe, *, aliases: Sequence[str] = ()) -> Recipe:
    """Add ``recipe`` to the problem registry under ``recipe.info.name`` (and ``aliases``)."""
    PROBLEMS.add(recipe.info.name, recipe, aliases=tuple(aliases))
    return recipe


# -- argument checks (messages name the argument, the value and what is allowed) ---------------


def check_int(name: str, value: object, low: int, high: float = math.inf) -> int:
    """An integer ``low <= value <= high`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        upper = "inf" if math.isinf(high) else f"{int(high)}"
        raise ValueError(f"{name} must be in [{low}, {upper}], got {value!r}")
    return value


def check_real(
    name: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real number in ``[low, high]`` (open at an end with ``low_open``/``high_open``; an
    infinite bound is open). NaN never passes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    x = float(value)
    above = x > low if low_open else x >= low
    below = x < high if high_open else x <= high
    if math.isnan(x) or not above or not below:
        left = "(" if low_open or math.isinf(low) else "["
        right = ")" if high_open or math.isinf(high) else "]"
        raise ValueError(f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}")
    return x


def check_bool(name: str, value: object) -> bool:
    """A bool, not merely a truthy value."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_dtype(value: object) -> torch.dtype:
    """``"float32"`` or ``"float64"`` (problem kwargs are JSON, so the dtype is a string)."""
    check_choice("dtype", value, tuple(_DTYPES))
    return _DTYPES[str(value)]


# -- seeding ------------------------------------------------------------------------------------


def generator(seed: int, purpose: str) -> torch.Generator:
    """A ``torch.Generator`` for one ``purpose`` (``"split"``, ``"init"``, ``"data"``) of a seed.

    The 63-bit seed is a hash of ``(seed, purpose)``, so streams for different purposes are
    independent and adding a purpose never shifts another one.
    """
    digest = hashlib.sha256(f"lrlab.bench.problems:{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into train and test indices.

    The test part has ``ceil(test_fraction * n)`` examples (scikit-learn's rounding), at least one,
    and the training part at least one.
    """
    n_test = min(max(1, math.ceil(test_fraction * n)), n - 1)
    if n < 2:
        raise ValueError(f"a train/test split needs at least 2 examples, got {n}")
    order = torch.randperm(n, generator=generator(seed, "split"))
    return order[n_test:], order[:n_test]


def init_parameters(
    model: nn.Module,
    generator: torch.Generator,
    *,
    weight_std: float | None = None,
    bias_value: float | None = None,
) -> None:
    """Initialise every ``Linear``/``Conv*`` layer of ``model`` from ``generator``, in module order.

    Default (``weight_std`` None): PyTorch's default distributions, weight and bias both
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (what ``kaiming_uniform_(a=sqrt(5))`` gives), drawn
    from ``generator`` instead of the global RNG. With ``weight_std``: weights
    ``N(0, weight_std^2)`` and biases ``bias_value`` (0 if None), the LOSSGRAD examples' scheme.
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                continue
            weight = module.weight
            fan_in = weight[0].numel()
            if weight_std is None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(weight, -bound, bound, generator=generator)
                if module.bias is not None:
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            else:
                nn.init.normal_(weight, 0.0, weight_std, generator=generator)
                if module.bias is not None:
                    module.bias.fill_(0.0 if bias_value is None else bias_value)


# -- batches ------------------------------------------------------------------------------------


def epoch_batches(n: int, batch_size: int | None, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches: each epoch a fresh permutation of ``range(n)`` cut into batches.

    The last batch of an epoch is shorter when ``batch_size`` does not divide ``n``, so every
    example is seen exactly once per epoch. ``batch_size`` None: the full set every step, in
    order (a deterministic full-batch gradient; ``generator`` is not used).
    """
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)  # checked here, not at the first next()
    return _epochs(n, batch_size, generator)


def _epochs(n: int, batch_size: int | None, generator: torch.Generator) -> Iterator[Tensor]:
    if batch_size is None:
        everything = torch.arange(n)
        while True:
            yield everything
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


Task = Literal["classification", "reconstruction"]


class SupervisedInstance:
    """A model trained on a fixed data set: the instance behind every non-synthetic problem.

    ``prepare`` maps stored inputs (for images: raw ``uint8`` pixels, kept small in memory) to the
    model's float inputs; it runs on each batch and on each evaluation chunk.

    * ``task="classification"``: mean softmax cross-entropy; evaluation reports ``train_loss``,
      ``train_accuracy``, ``test_loss``, ``test_accuracy``.
    * ``task="reconstruction"`` (autoencoders): mean squared error between the output and the
      prepared input, over all pixels; batches have ``targets`` None; evaluation reports
      ``train_loss`` and ``test_loss``.

    Training metrics are taken on the first ``eval_limit`` training examples and test metrics on
    the first ``eval_limit`` test examples (None: all), in chunks of 1024.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        train_inputs: Tensor,
        train_targets: Tensor,
        test_inputs: Tensor,
        test_targets: Tensor,
        prepare: Callable[[Tensor], Tensor],
        task: Task = "classification",
        eval_limit: int | None = None,
    ) -> None:
        if len(train_inputs) != len(train_targets) or len(test_inputs) != len(test_targets):
            raise ValueError("inputs and targets must have the same number of examples")
        self.model = model
        self._train_inputs = train_inputs
        self._train_targets = train_targets
        self._test_inputs = test_inputs
        self._test_targets = test_targets
        self._prepare = prepare
        self._task: Task = task
        self._eval_limit = eval_limit

    @property
    def num_train_examples(self) -> int:
        return len(self._train_inputs)

    @property
    def train_data(self) -> tuple[Tensor, Tensor]:
        """The stored training inputs (before ``prepare``) and targets; do not modify them."""
        return self._train_inputs, self._train_targets

    @property
    def test_data(self) -> tuple[Tensor, Tensor]:
        """The stored test inputs (before ``prepare``) and targets; do not modify them."""
        return self._test_inputs, self._test_targets

    def prepare(self, inputs: Tensor) -> Tensor:
        """Stored inputs -> the model's inputs (what a batch carries)."""
        return self._prepare(inputs)

    def batches(self, generator: torch.Generator, batch_size: int | None) -> Iterator[Batch]:
        # epoch_batches checks batch_size now, not at the first next()
        return self._batches(epoch_batches(len(self._train_inputs), batch_size, generator))

    def _batches(self, index_stream: Iterator[Tensor]) -> Iterator[Batch]:
        for indices in index_stream:
            inputs = self._prepare(self._train_inputs[indices])
            targets = self._train_targets[indices] if self._task == "classification" else None
            yield Batch(inputs=inputs, targets=targets, indices=indices)

    def _criterion(self, outputs: Tensor, inputs: Tensor, targets: Tensor | None) -> Tensor:
        if self._task == "classification":
            assert targets is not None  # batches() gives a classification batch its targets
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs, inputs)

    def loss(self, batch: Batch) -> Tensor:
        return self._criterion(self.model(batch.inputs), batch.inputs, batch.targets)

    def _metrics(self, inputs: Tensor, targets: Tensor, prefix: str) -> dict[str, float]:
        count = len(inputs) if self._eval_limit is None else min(len(inputs), self._eval_limit)
        total_loss = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        for start in range(0, count, 1024):
            stop = min(start + 1024, count)
            x = self._prepare(inputs[start:stop])
            outputs = self.model(x)
            if self._task == "classification":
                y = targets[start:stop]
                losses = nn.functional.cross_entropy(outputs, y, reduction="sum")
                correct += (outputs.argmax(dim=1) == y).sum()
                total_loss += losses.double()
            else:
                # the mean over pixels per example, summed over examples
                total_loss += nn.functional.mse_loss(outputs, x, reduction="sum").double() / (
                    x[0].numel()
                )
        metrics = {f"{prefix}_loss": float(total_loss) / max(count, 1)}
        if self._task == "classification":
            metrics[f"{prefix}_accuracy"] = float(correct) / max(count, 1)
        return metrics

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            return {
                **self._metrics(self._train_inputs, self._train_targets, "train"),
                **self._metrics(self._test_inputs, self._test_targets, "test"),
            }

    def distance_to_optimum(self) -> float | None:
        return None


# -- user-provided data -------------------------------------------------------------------------


class MissingDataError(FileNotFoundError):
    """User-provided data is not where lrlab looks; the message says what is expected where."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def data_root(data_dir: object, dataset: str, expected: str) -> Path:
    """The data root: ``data_dir`` if given, else ``$LRLAB_DATA``; an error if neither is set."""
    if data_dir is not None and not isinstance(data_dir, str):
        raise ValueError(f"data_dir must be a path string or None, got {data_dir!r}")
    text = data_dir if data_dir is not None else os.environ.get(DATA_ENV_VAR)
    if not text:
        raise MissingDataError(
            f"{dataset} is read from files you provide (lrlab never downloads): pass "
            f"data_dir='/path/to/data' or set {DATA_ENV_VAR}=/path/to/data. Expected there: "
            f"{expected}"
        )
    root = Path(text).expanduser()
    if not root.is_dir():
        source = "data_dir" if data_dir is not None else DATA_ENV_VAR
        raise MissingDataError(
            f"{dataset}: the data directory {str(root)!r} (from {source}) does not exist. "
            f"Expected there: {expected}"
        )
    return root


def find_data_files(
    data_dir: object,
    dataset: str,
    subdirs: Sequence[str],
    files: Sequence[Sequence[str]],
) -> list[Path]:
    """Locate one file per entry of ``files`` under the data root.

    Args:
        data_dir: the ``data_dir`` problem argument (None: ``$LRLAB_DATA``).
        dataset: the data set's name, for messages.
        subdirs: folders under the root to look in, in order; the root itself is tried last.
        files: for each required file, its accepted names in order of preference
            (``["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]``).

    Returns:
        The paths, all from the first folder that holds every required file.

    Raises:
        MissingDataError: no folder holds them all; the message lists the folders searched, the
            expected files and which are missing.
    """
    layout = ", ".join(" or ".join(names) for names in files)
    where = " or ".join(f"<root>/{s}/" for s in subdirs) + " or <root>/"
    root = data_root(data_dir, dataset, f"{where} holding {layout}")
    searched = [root / s for s in subdirs] + [root]
    best: tuple[int, Path, list[str]] | None = None
    for folder in searched:
        found: list[Path] = []
        missing: list[str] = []
        for names in files:
            match = next((folder / n for n in names if (folder / n).is_file()), None)
            if match is None:
                missing.append(" or ".join(names))
            else:
                found.append(match)
        if not missing:
            return found
        if best is None or len(found) > best[0]:
            best = (len(found), folder, missing)
    assert best is not None  # searched is never empty
    _, folder, missing = best
    raise MissingDataError(
        f"{dataset}: no folder under {str(root)!r} holds all the expected files. Searched: "
        f"{', '.join(str(p) for p in searched)}. Expected in one of them: {layout}. "
        f"Missing in {str(folder)!r}: {', '.join(missing)}"
    )
