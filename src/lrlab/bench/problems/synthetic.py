r"""Synthetic test functions with a known optimum: the CLARA 2-D set and n-D quadratics.

The parameter is one point :math:`x \in \mathbb{R}^d` held by the model (``model.x``); the
problem knows its optimum :math:`x^\star` and value :math:`f^\star`, so every run can report
``distance_to_optimum`` :math:`\|x - x^\star\|_2` and ``suboptimality`` :math:`f(x) - f^\star`.

.. list-table:: Functions (CLARA's 2-D set, ``specs/path_and_loss_methods.md`` 1.8(a))
   :header-rows: 1

   * - problem
     - :math:`f(x)`
     - start
     - :math:`x^\star`, :math:`f^\star`
     - box
   * - ``synthetic_sphere``
     - :math:`\sum_i x_i^2`
     - :math:`(1, \dots, 1)`
     - 0, 0
     - :math:`[-5, 5]^d`
   * - ``synthetic_ellipsoid``
     - :math:`\sum_i \kappa^{i/(d-1)} x_i^2`, :math:`\kappa` = ``condition`` = 1e3
     - :math:`(1, \dots, 1)`
     - 0, 0
     - :math:`[-5, 5]^d`
   * - ``synthetic_noisy_sphere`` / ``_ellipsoid``
     - the same at :math:`x + \sigma_{in} \xi`, :math:`\sigma_{in}` = ``input_noise`` = 0.1
     - :math:`(1, \dots, 1)`
     - 0, 0
     - :math:`[-5, 5]^d`
   * - ``synthetic_rosenbrock``
     - :math:`\sum_{i<d} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`
     - :math:`(-1, 1, -1, 1, \dots)`
     - :math:`(1, \dots, 1)`, 0
     - :math:`[-2, 2]^d`
   * - ``synthetic_himmelblau``
     - :math:`(x_1^2 + x_2 - 11)^2 + (x_1 + x_2^2 - 7)^2`
     - (-4, 4)
     - (3, 2), 0 (one of four minima)
     - :math:`[-6, 6]^2`
   * - ``synthetic_beale``
     - :math:`\sum_{k=1}^3 (c_k - x_1 + x_1 x_2^k)^2`, :math:`c = (1.5, 2.25, 2.625)`
     - (1, 1)
     - (3, 0.5), 0
     - :math:`[-4.5, 4.5]^2`
   * - ``synthetic_eggholder``
     - :math:`-(x_2 + 47) \sin\sqrt{|x_1/2 + x_2 + 47|} - x_1 \sin\sqrt{|x_1 - x_2 - 47|}`
     - (500, 300)
     - (512, 404.2318...), -959.6406627...
     - :math:`[0, 600]^2`
   * - ``synthetic_camel``
     - :math:`2 x_1^2 - 1.05 x_1^4 + x_1^6 / 6 + x_1 x_2 + x_2^2` (three-hump camel)
     - (1, 1)
     - 0, 0
     - :math:`[-3, 3]^2`
   * - ``synthetic_ackley``
     - :math:`-20 e^{-0.2 \sqrt{\frac1d \sum x_i^2}} - e^{\frac1d \sum \cos 2\pi x_i} + 20 + e`
     - :math:`(2, \dots, 2)`
     - 0, 0
     - :math:`[-5, 5]^d`
   * - ``synthetic_quadratic``
     - :math:`\frac12 (x - x^\star)^\top Q \Lambda Q^\top (x - x^\star)`,
       :math:`\Lambda = \mathrm{diag}(\kappa^{i/(d-1)})`
     - :math:`(1, \dots, 1)`
     - 0, 0
     - none
   * - ``synthetic_noisy_quadratic``
     - the same, gradient noise :math:`\sigma_g` = ``grad_noise`` = 1
     - :math:`(1, \dots, 1)`
     - 0, 0
     - none

Sphere, ellipsoid, Rosenbrock and Ackley take ``dim`` (default 2, the CLARA setting); the
quadratics take ``dim`` (default 1000), ``condition`` :math:`\kappa` (default 1e3; e.g. 1e1 to 1e6)
and ``rotate`` (default False: axis-aligned, as CLARA's ellipsoid; True: :math:`Q` is a Haar-random
rotation drawn from the seed, so per-coordinate preconditioners do not see the axes). Every
problem takes ``start`` (a list of ``dim`` numbers replacing the start point; CLARA started
Adam-CLARA on the sphere at ``[-1, -1]``) and ``dtype`` (default ``"float64"``).

**Noise.** Every problem takes two noise levels, both drawn through the :class:`Batch` stream from
the run's generator (never the global RNG). A batch of size :math:`b` (``batch_size``; None means
1) carries :math:`\xi_j, u_j \sim \mathcal N(0, I_d)`, :math:`j = 1..b`, as ``inputs`` of shape
``(b, 2, d)``, and the training loss is

.. math::
    \ell(x) = \frac1b \sum_{j=1}^b f(x + \sigma_{in} \xi_j) + \sigma_g \frac1b \sum_{j=1}^b
    u_j^\top x ,

so :math:`\nabla \ell = \frac1b \sum_j \nabla f(x + \sigma_{in}\xi_j) + \sigma_g \bar u`:
``input_noise`` :math:`\sigma_{in}` is CLARA's "evaluate at a perturbed point" noise (fresh at each
call), ``grad_noise`` :math:`\sigma_g` adds unbiased isotropic noise of standard deviation
:math:`\sigma_g / \sqrt b` per coordinate to the exact gradient. Without noise the batch is empty
(shape ``(0, 2, d)``) and the loss is :math:`f(x)`. ``evaluate()`` always reports the noise-free
:math:`f`.

**Box clamping** (``clamp=True``; off by default). The official CLARA harness clamps the iterate
to the box after every step. A problem cannot hook into the optimizer's step, so here the
projection :math:`x \leftarrow \min(\max(x, \ell), u)` is applied to ``model.x`` in place at the
start of each ``loss`` call (before the gradient is taken), and ``evaluate`` and
``distance_to_optimum`` report the projected point. For a method that evaluates the loss once per
step at its iterate this is exactly the harness's clamp-after-step; a method that probes trial
points sees them projected too, and copies of the iterate a method keeps elsewhere (Schedule-Free's
:math:`z`) are not projected. Interaction with the metric: the optimum lies inside every box and
the projection onto a box is non-expansive, so clamping never increases the distance to the
optimum, and a diverging run reports a distance bounded by the box's diameter (CLARA's "Adam: 5.0"
on the ellipsoid is such a clamped value) instead of a huge one.

**Gradient clipping** (``max_grad_norm``; None by default, CLARA's harness uses 5.0). The loss
keeps its value but its gradient is scaled by :math:`\min(1, c / \|\nabla \ell\|)`, so every method
sees a clipped gradient and the true loss. It costs one extra backward pass per call.

.. note::
    Deviations and choices. (1) Himmelblau has four global minima; ``distance_to_optimum`` uses
    (3, 2) as CLARA's metric does, and ``evaluate`` also reports ``distance_to_nearest_optimum``.
    (2) Eggholder's optimum (512, 404.2319) lies on the boundary :math:`x_1 = 512` of its standard
    domain :math:`[-512, 512]^2`; it is not a stationary point (:math:`\partial f/\partial x_1
    \approx -3.39`) and the function is lower beyond it, also inside CLARA's box
    :math:`[0, 600]^2`, so its suboptimality can be negative. We refine :math:`x_2^\star` to
    404.2318051137578 (where :math:`\partial f/\partial x_2 = 0` at :math:`x_1 = 512`). (3) The
    2-D functions are written for any ``dim`` where a standard n-D form exists (sphere,
    ellipsoid, Rosenbrock, Ackley); at ``dim=2`` they are CLARA's. (4) Ackley's gradient at its
    optimum (a cone point of :math:`\|x\|`) is taken as 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lrlab.bench.problems._common import (
    Recipe,
    check_bool,
    check_int,
    check_real,
    generator,
    parse_dtype,
    register_problem,
)
from lrlab.bench.spec import Batch, Goal, KwargValue, ProblemInfo

__all__ = [
    "Landscape",
    "SyntheticInstance",
    "ackley",
    "beale",
    "eggholder",
    "himmelblau",
    "rosenbrock",
    "sphere",
    "three_hump_camel",
]

Function = Callable[[Tensor], Tensor]
"""Maps points of shape ``(..., d)`` to values of shape ``(...)``."""


# -- the functions (vectorised over leading dimensions) -----------------------------------------


def sphere(x: Tensor) -> Tensor:
    return (x * x).sum(-1)


def rosenbrock(x: Tensor, a: float = 1.0, b: float = 100.0) -> Tensor:
    head, tail = x[..., :-1], x[..., 1:]
    return (b * (tail - head * head) ** 2 + (a - head) ** 2).sum(-1)


def himmelblau(x: Tensor) -> Tensor:
    x1, x2 = x[..., 0], x[..., 1]
    return (x1 * x1 + x2 - 11) ** 2 + (x1 + x2 * x2 - 7) ** 2


def beale(x: Tensor) -> Tensor:
    x1, x2 = x[..., 0], x[..., 1]
    return (
        (1.5 - x1 + x1 * x2) ** 2 + (2.25 - x1 + x1 * x2**2) ** 2 + (2.625 - x1 + x1 * x2**3) ** 2
    )


def eggholder(x: Tensor) -> Tensor:
    x1, x2 = x[..., 0], x[..., 1]
    return -(x2 + 47) * torch.sin(torch.sqrt(torch.abs(x1 / 2 + x2 + 47))) - x1 * torch.sin(
        torch.sqrt(torch.abs(x1 - (x2 + 47)))
    )


def three_hump_camel(x: Tensor) -> Tensor:
    x1, x2 = x[..., 0], x[..., 1]
    return 2 * x1**2 - 1.05 * x1**4 + x1**6 / 6 + x1 * x2 + x2**2


def ackley(x: Tensor) -> Tensor:
    d = x.shape[-1]
    # ||x|| / sqrt(d) = sqrt(mean x^2); vector_norm's gradient at 0 is 0 (no NaN at the optimum)
    radius = torch.linalg.vector_norm(x, dim=-1) / math.sqrt(d)
    return (
        -20 * torch.exp(-0.2 * radius)
        - torch.exp(torch.cos(2 * math.pi * x).mean(-1))
        + 20
        + math.e
    )


def _weighted_squares(weights: Tensor, scale: float) -> Function:
    def function(x: Tensor) -> Tensor:
        return scale * (weights * x * x).sum(-1)

    return function


def _rotated_quadratic(weights: Tensor, rotation: Tensor) -> Function:
    def function(x: Tensor) -> Tensor:
        y = x @ rotation  # Q^T x, as a row vector
        return 0.5 * (weights * y * y).sum(-1)

    return function


def _spectrum(dim: int, condition: float, dtype: torch.dtype) -> Tensor:
    """``condition ** (i / (dim - 1))`` for ``i = 0..dim-1`` (``[1]`` when ``dim == 1``)."""
    if dim == 1:
        return torch.ones(1, dtype=dtype)
    exponents = torch.arange(dim, dtype=torch.float64) / (dim - 1)
    return (condition**exponents).to(dtype)


def _haar_rotation(dim: int, seed: int, dtype: torch.dtype) -> Tensor:
    """A Haar-random orthogonal matrix: QR of a Gaussian matrix, signs fixed by R's diagonal."""
    gaussian = torch.randn(dim, dim, generator=generator(seed, "rotation"), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


# -- the landscape of a built problem -----------------------------------------------------------

_HIMMELBLAU_MINIMA = (
    (3.0, 2.0),
    (-2.805118086952745, 3.131312518250573),
    (-3.779310253377747, -3.283185991286170),
    (3.584428340330492, -1.848126526964404),
)
_EGGHOLDER_OPTIMUM = (512.0, 404.2318051137578)
_EGGHOLDER_VALUE = -959.6406627208507


@dataclass(frozen=True, slots=True)
class Landscape:
    """A function with its start point, optimum and box."""

    function: Function
    start: Tensor
    optimum: Tensor
    optimal_value: float
    box: tuple[float, float] | None
    other_optima: tuple[Tensor, ...] = ()
    """Further global minima with the same value (Himmelblau)."""
    stationary_optimum: bool = True
    """False where the optimum is on a domain boundary and the gradient there is not 0
    (Eggholder)."""


def _landscape(
    name: str, *, dim: int, condition: float, rotate: bool, seed: int, dtype: torch.dtype
) -> Landscape:
    def point(*values: float) -> Tensor:
        return torch.tensor(values, dtype=dtype)

    zeros = torch.zeros(dim, dtype=dtype)
    ones = torch.ones(dim, dtype=dtype)
    if name in ("sphere", "noisy_sphere"):
        return Landscape(sphere, ones, zeros, 0.0, (-5.0, 5.0))
    if name in ("ellipsoid", "noisy_ellipsoid"):
        function = _weighted_squares(_spectrum(dim, condition, dtype), 1.0)
        return Landscape(function, ones, zeros, 0.0, (-5.0, 5.0))
    if name == "rosenbrock":
        start = torch.tensor([(-1.0) ** (i + 1) for i in range(dim)], dtype=dtype)
        return Landscape(rosenbrock, start, ones, 0.0, (-2.0, 2.0))
    if name == "himmelblau":
        optimum, *others = (point(*m) for m in _HIMMELBLAU_MINIMA)
        return Landscape(himmelblau, point(-4, 4), optimum, 0.0, (-6.0, 6.0), tuple(others))
    if name == "beale":
        return Landscape(beale, point(1, 1), point(3, 0.5), 0.0, (-4.5, 4.5))
    if name == "eggholder":
        return Landscape(
            eggholder,
            point(500, 300),
            point(*_EGGHOLDER_OPTIMUM),
            _EGGHOLDER_VALUE,
            (0.0, 600.0),
            stationary_optimum=False,
        )
    if name == "camel":
        return Landscape(three_hump_camel, point(1, 1), point(0, 0), 0.0, (-3.0, 3.0))
    if name == "ackley":
        return Landscape(ackley, 2 * ones, zeros, 0.0, (-5.0, 5.0))
    if name in ("quadratic", "noisy_quadratic"):
        weights = _spectrum(dim, condition, dtype)
        if rotate:
            function = _rotated_quadratic(weights, _haar_rotation(dim, seed, dtype))
        else:
            function = _weighted_squares(weights, 0.5)
        return Landscape(function, ones, zeros, 0.0, None)
    raise ValueError(f"unknown synthetic function {name!r}")  # pragma: no cover - registry bug


# -- the instance -------------------------------------------------------------------------------


class _Point(nn.Module):
    """Holds the point ``x`` being optimised."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(start.clone())

    def forward(self) -> Tensor:
        return self.x


class SyntheticInstance:
    """One built synthetic problem (see the module docstring for the loss, noise and box)."""

    def __init__(
        self,
        landscape: Landscape,
        *,
        input_noise: float = 0.0,
        grad_noise: float = 0.0,
        clamp: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        self.landscape = landscape
        self.model = _Point(landscape.start)
        self._input_noise = input_noise
        self._grad_noise = grad_noise
        self._clamp = clamp
        self._max_grad_norm = max_grad_norm

    @property
    def optimum(self) -> Tensor:
        return self.landscape.optimum

    @property
    def optimal_value(self) -> float:
        return self.landscape.optimal_value

    @property
    def num_train_examples(self) -> None:
        return None

    @property
    def noisy(self) -> bool:
        return self._input_noise > 0 or self._grad_noise > 0

    def batches(self, generator: torch.Generator, batch_size: int | None) -> Iterator[Batch]:
        samples = 1 if batch_size is None else check_int("batch_size", batch_size, 1)
        return self._batches(generator, samples)

    def _batches(self, generator: torch.Generator, samples: int) -> Iterator[Batch]:
        x = self.model.x
        if not self.noisy:
            empty = Batch(inputs=torch.zeros((0, 2, x.numel()), dtype=x.dtype))
            while True:
                yield empty
        while True:
            noise = torch.randn((samples, 2, x.numel()), generator=generator, dtype=x.dtype)
            yield Batch(inputs=noise)

    def _projected(self, x: Tensor) -> Tensor:
        if not self._clamp or self.landscape.box is None:
            return x
        low, high = self.landscape.box
        return x.clamp(low, high)

    def loss(self, batch: Batch) -> Tensor:
        x = self.model.x
        if self._clamp:
            with torch.no_grad():
                x.copy_(self._projected(x))
        noise = batch.inputs
        function = self.landscape.function
        if noise.shape[0] == 0:
            value = function(x)
        else:
            if self._input_noise > 0:
                value = function(x + self._input_noise * noise[:, 0]).mean()
            else:
                value = function(x)
            if self._grad_noise > 0:
                value = value + self._grad_noise * (noise[:, 1] @ x).mean()
        if self._max_grad_norm is not None and torch.is_grad_enabled() and value.requires_grad:
            (gradient,) = torch.autograd.grad(value, x, retain_graph=True)
            # inf when the gradient is 0 -> factor 1
            factor = (self._max_grad_norm / torch.linalg.vector_norm(gradient)).clamp(max=1.0)
            # same value, gradient scaled by `factor`
            value = value.detach() + factor * (value - value.detach())
        return value

    def distance_to_optimum(self) -> float:
        with torch.no_grad():
            x = self._projected(self.model.x)
            return float(torch.linalg.vector_norm(x - self.landscape.optimum))

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            x = self._projected(self.model.x)
            value = float(self.landscape.function(x))
            metrics = {
                "loss": value,
                "suboptimality": value - self.landscape.optimal_value,
                "distance_to_optimum": float(torch.linalg.vector_norm(x - self.optimum)),
            }
            if self.landscape.other_optima:
                metrics["distance_to_nearest_optimum"] = min(
                    float(torch.linalg.vector_norm(x - m))
                    for m in (self.optimum, *self.landscape.other_optima)
                )
        return metrics


# -- the factory and the registered problems ----------------------------------------------------


def _start_point(start: object, dim: int, dtype: torch.dtype) -> Tensor:
    if (
        not isinstance(start, Sequence)
        or isinstance(start, str)
        or len(start) != dim
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in start)
    ):
        raise ValueError(f"start must be a list of {dim} numbers, got {start!r}")
    point = torch.tensor([float(v) for v in start], dtype=dtype)
    if not torch.isfinite(point).all():
        raise ValueError(f"start must be finite, got {start!r}")
    return point


def _build(
    seed: int,
    *,
    function: str,
    fixed_dim: int | None,
    dim: int = 2,
    condition: float = 1e3,
    rotate: bool = False,
    start: KwargValue = None,
    input_noise: float = 0.0,
    grad_noise: float = 0.0,
    clamp: bool = False,
    max_grad_norm: float | None = None,
    dtype: str = "float64",
) -> SyntheticInstance:
    torch_dtype = parse_dtype(dtype)
    if fixed_dim is not None:
        dim = fixed_dim
    else:
        check_int("dim", dim, 2 if function == "rosenbrock" else 1)
    check_real("condition", condition, 1.0)
    check_bool("rotate", rotate)
    check_real("input_noise", input_noise, 0.0)
    check_real("grad_noise", grad_noise, 0.0)
    check_bool("clamp", clamp)
    if max_grad_norm is not None:
        check_real("max_grad_norm", max_grad_norm, 0.0, low_open=True)
    landscape = _landscape(
        function, dim=dim, condition=float(condition), rotate=rotate, seed=seed, dtype=torch_dtype
    )
    if clamp and landscape.box is None:
        raise ValueError(f"clamp=True needs a box, and synthetic_{function} has none")
    if start is not None:
        point = _start_point(start, dim, torch_dtype)
        landscape = Landscape(
            landscape.function,
            point,
            landscape.optimum,
            landscape.optimal_value,
            landscape.box,
            landscape.other_optima,
            landscape.stationary_optimum,
        )
    return SyntheticInstance(
        landscape,
        input_noise=float(input_noise),
        grad_noise=float(grad_noise),
        clamp=clamp,
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
    )


_CLARA = "CLARA (arXiv:2508.05408) 2-D harness; specs/path_and_loss_methods.md 1.8(a)"
_COMMON: dict[str, KwargValue] = {
    "start": None,
    "input_noise": 0.0,
    "grad_noise": 0.0,
    "clamp": False,
    "max_grad_norm": None,
    "dtype": "float64",
}


def _register(
    function: str,
    summary: str,
    *,
    dims: bool,
    steps: int = 100,
    source: str = _CLARA,
    aliases: Sequence[str] = (),
    **defaults: KwargValue,
) -> None:
    arguments: dict[str, KwargValue] = {"dim": 2} if dims else {}
    arguments.update(_COMMON)
    arguments.update(defaults)
    register_problem(
        Recipe(
            info=ProblemInfo(
                name=f"synthetic_{function}",
                kind="synthetic",
                summary=summary,
                metric="distance_to_optimum",
                goal=Goal.MINIMIZE,
                default_steps=steps,
                default_batch_size=None,
                source=source,
            ),
            factory=functools.partial(
                _build, function=function, fixed_dim=None if "dim" in arguments else 2
            ),
            defaults=arguments,
        ),
        aliases=aliases,
    )


_register("sphere", "sum x_i^2 from (1, 1); optimum 0", dims=True)
_register(
    "ellipsoid",
    "sum condition^(i/(d-1)) x_i^2, condition 1e3, from (1, 1); optimum 0",
    dims=True,
    condition=1e3,
)
_register(
    "noisy_sphere",
    "the sphere evaluated at x + N(0, 0.1^2 I), fresh noise each step",
    dims=True,
    input_noise=0.1,
)
_register(
    "noisy_ellipsoid",
    "the ellipsoid (condition 1e3) evaluated at x + N(0, 0.1^2 I)",
    dims=True,
    condition=1e3,
    input_noise=0.1,
)
_register("rosenbrock", "Rosenbrock (a=1, b=100) from (-1, 1); optimum (1, 1)", dims=True)
_register("himmelblau", "Himmelblau from (-4, 4); optimum (3, 2) (one of four)", dims=False)
_register("beale", "Beale from (1, 1); optimum (3, 0.5)", dims=False)
_register(
    "eggholder", "Eggholder from (500, 300); optimum (512, 404.23) on the domain edge", dims=False
)
_register(
    "camel",
    "three-hump camel from (1, 1); optimum 0",
    dims=False,
    aliases=("synthetic_three_hump_camel",),
)
_register("ackley", "Ackley from (2, 2); optimum 0", dims=True)
_QUADRATIC = "specs/path_and_loss_methods.md 1.8(a) generalised; issue 4 (d=1000, kappa 1e1..1e6)"
_register(
    "quadratic",
    "1/2 x^T A x, d=1000, eigenvalues log-spaced in [1, condition=1e3], from (1, ..., 1)",
    dims=True,
    steps=1000,
    source=_QUADRATIC,
    dim=1000,
    condition=1e3,
    rotate=False,
)
_register(
    "noisy_quadratic",
    "the quadratic with additive N(0, 1) gradient noise per coordinate (grad_noise=1)",
    dims=True,
    steps=1000,
    source=_QUADRATIC,
    dim=1000,
    condition=1e3,
    rotate=False,
    grad_noise=1.0,
)
