r"""Learning-rate schedules: linear decay, cosine, step, trapezoid, and refinement from a run.

Method page: ``docs/methods/schedules.md``. Paper for linear decay and refinement:
A. Defazio, A. Cutkosky, H. Mehta, K. Mishchenko, "When, Why and How Much? Adaptive Learning Rate
Scheduling by Refinement", arXiv:2310.07831 (2023).

Every scheduler here is a :class:`torch.optim.lr_scheduler.LRScheduler`: build it on any torch
optimizer, call ``scheduler.step()`` after every ``optimizer.step()``, checkpoint it with
``state_dict()``. The learning rate of step ``t`` (``t = 0`` for the first optimizer step) is
the group's initial ``lr`` (the peak) times the schedule's multiplier :math:`m(t)`, computed in
closed form, so nothing drifts and a resumed run continues exactly.

NOTE [schedules on adaptive optimizers]
lrlab's adaptive optimizers read ``group["lr"]`` at every step and treat it as a multiplier on
what they adapt (CLARA: :math:`\eta = \text{lr} \cdot \text{lr\_factor}`; D-Adaptation, later:
:math:`d \cdot \text{lr}`). A schedule therefore scales the adapted step size, and
``group["effective_lr"]`` reports the product that was applied.

Example:
    >>> optimizer = lo.create("clara-adam", model.parameters(), lr=1e-3)
    >>> scheduler = LinearDecay(optimizer, total_steps=1000, warmup_steps=50)
    >>> for batch in batches:
    ...     optimizer.step(closure)
    ...     scheduler.step()

:func:`refine` turns the per-step gradient norms logged in one run into the schedule of the next
run, and :class:`RefinedSchedule` plays it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lrlab.optim._validation import check_choice, check_int, check_range

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CosineDecay",
    "LinearDecay",
    "RefinedSchedule",
    "StepDecay",
    "Trapezoid",
    "refine",
]

#: the fewest finite gradient norms :func:`refine` accepts (the last step's rate is 0, so a
#: schedule needs at least one more step)
MIN_REFINE_LENGTH = 2

RefineKind = Literal["sgd", "adam"]
_WEIGHT_POWER = {"sgd": 2.0, "adam": 1.0}


# -- the shared scheduler base -----------------------------------------------------------------


class _MultiplierSchedule(LRScheduler):
    """``lr_t = initial_lr * multiplier(t)``, in closed form (subclasses define ``multiplier``).

    Subclasses set their attributes *before* calling ``super().__init__``: torch's constructor
    takes the first step (``t = 0``) and so already calls :meth:`multiplier`.
    """

    def multiplier(self, step: int) -> float:
        """The factor :math:`m(t)` on the peak (initial) learning rate at step ``t >= 0``."""
        raise NotImplementedError

    def get_lr(self) -> list[float | Tensor]:
        """The learning rates of step ``last_epoch``: the initial ones times the multiplier."""
        factor = self.multiplier(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        # torch calls this for the deprecated step(epoch); the schedule is closed-form anyway
        return self.get_lr()


def _trapezoid(step: int, total_steps: int, warmup_steps: int, decay_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, plateau, linear decay to 0 at ``total_steps``."""
    if step >= total_steps:
        return 0.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    return (total_steps - step) / decay_steps


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    check_int("total_steps", total_steps, 1)
    check_int("warmup_steps", warmup_steps, 0, total_steps - 1)


# -- the schedules -------------------------------------------------------------------------------


class LinearDecay(_MultiplierSchedule):
    r"""Linear decay to zero, optionally after a linear warm-up.

    .. math::
        m(t) = \begin{cases} (t + 1) / W & t < W\\
                             1 - (t - W) / (T - W) & W \le t < T\\
                             0 & t \ge T \end{cases}

    With :math:`W = 0` this is :math:`\eta_t = \eta_{\text{peak}} (1 - t/T)`, the schedule the
    paper proves worst-case optimal for the last iterate of SGD on convex Lipschitz problems (and
    finds as good as or better than cosine in practice). The warm-up reaches the peak at its last
    step, :math:`t = W - 1`; the last step, :math:`t = T - 1`, has rate
    :math:`\eta_{\text{peak}} / (T - W)`.

    Args:
        optimizer: any torch optimizer; its groups' ``lr`` are the peaks.
        total_steps: :math:`T`, the number of optimizer steps, an integer >= 1.
        warmup_steps: :math:`W`, an integer in [0, T - 1]. Default 0.
        last_epoch: as in torch (-1 for a new run).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        *,
        warmup_steps: int = 0,
        last_epoch: int = -1,
    ) -> None:
        _check_steps(total_steps, warmup_steps)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """See the class docstring."""
        return _trapezoid(
            step, self.total_steps, self.warmup_steps, self.total_steps - self.warmup_steps
        )


class Trapezoid(_MultiplierSchedule):
    r"""LOSSGRAD's trapezoid schedule: linear warm-up, plateau, linear decay.

    .. math::
        m(t) = \begin{cases} (t + 1) / W & t < W\\
                             1 & W \le t < T - D\\
                             (T - t) / D & T - D \le t < T\\
                             0 & t \ge T \end{cases}

    The baseline the LOSSGRAD seeds compare against (Wójcik, Maziarka, Tabor, 2018).
    :class:`LinearDecay` is the trapezoid without a plateau (:math:`D = T - W`).

    Args:
        optimizer: any torch optimizer; its groups' ``lr`` are the plateau's rate.
        total_steps: :math:`T`, an integer >= 1.
        warmup_steps: :math:`W`, an integer in [0, T].
        decay_steps: :math:`D`, an integer in [0, T - W] (0: no decay).
        last_epoch: as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        *,
        warmup_steps: int,
        decay_steps: int,
        last_epoch: int = -1,
    ) -> None:
        check_int("total_steps", total_steps, 1)
        check_int("warmup_steps", warmup_steps, 0, total_steps)
        check_int("decay_steps", decay_steps, 0, total_steps - warmup_steps)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """See the class docstring."""
        if self.decay_steps == 0 and step >= self.warmup_steps:
            return 1.0  # no decay phase: the plateau lasts (also past total_steps)
        return _trapezoid(step, self.total_steps, self.warmup_steps, self.decay_steps)


class CosineDecay(_MultiplierSchedule):
    r"""Cosine decay, optionally after a linear warm-up.

    .. math::
        m(t) = \begin{cases} (t + 1) / W & t < W\\
              m_{\min} + (1 - m_{\min})\,\frac{1}{2}\big(1 + \cos(\pi\,\frac{t - W}{T - W})\big)
              & W \le t < T\\
              m_{\min} & t \ge T \end{cases}

    Without warm-up it is :class:`torch.optim.lr_scheduler.CosineAnnealingLR` with
    ``T_max = T`` and ``eta_min = m_min * lr`` for :math:`t \le T` (torch's keeps oscillating
    after :math:`T`; this one stays at :math:`m_{\min}`).

    Args:
        optimizer: any torch optimizer; its groups' ``lr`` are the peaks.
        total_steps: :math:`T`, an integer >= 1.
        warmup_steps: :math:`W`, an integer in [0, T - 1]. Default 0.
        min_factor: :math:`m_{\min}`, the final multiplier, in [0, 1]. Default 0.
        last_epoch: as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        *,
        warmup_steps: int = 0,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_steps(total_steps, warmup_steps)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_factor = check_range("min_factor", min_factor, 0.0, 1.0, "[]")
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """See the class docstring."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_factor
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )


class StepDecay(_MultiplierSchedule):
    r"""Step decay: multiply the rate by :math:`\gamma` every ``step_size`` steps or at milestones.

    .. math::
        m(t) = \gamma^{\lfloor t / s \rfloor} \quad\text{or}\quad
        m(t) = \gamma^{\lvert\{\, k : M_k \le t \,\}\rvert}

    The closed forms of :class:`torch.optim.lr_scheduler.StepLR` and ``MultiStepLR``.

    Args:
        optimizer: any torch optimizer; its groups' ``lr`` are the initial rates.
        step_size: :math:`s`, an integer >= 1. Give this or ``milestones``.
        milestones: increasing step indices :math:`M_k` >= 1 at which the rate is multiplied.
        gamma: :math:`\gamma`, in [0, 1]. Default 0.1.
        last_epoch: as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        step_size: int | None = None,
        *,
        milestones: Sequence[int] | None = None,
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if (step_size is None) == (milestones is None):
            raise ValueError(
                "StepDecay needs exactly one of step_size and milestones, got "
                f"step_size={step_size!r}, milestones={milestones!r}"
            )
        if step_size is not None:
            check_int("step_size", step_size, 1)
        if milestones is not None:
            milestones = list(milestones)
            if not milestones:
                raise ValueError("milestones must not be empty")
            for index, milestone in enumerate(milestones):
                check_int(f"milestones[{index}]", milestone, 1)
            if any(b <= a for a, b in itertools.pairwise(milestones)):
                raise ValueError(f"milestones must be strictly increasing, got {milestones!r}")
        self.step_size = step_size
        self.milestones = milestones
        self.gamma = check_range("gamma", gamma, 0.0, 1.0, "[]")
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        """See the class docstring."""
        if self.milestones is not None:
            return self.gamma ** sum(1 for milestone in self.milestones if milestone <= step)
        assert self.step_size is not None  # one of the two is set (checked in __init__)
        return self.gamma ** (step // self.step_size)


class RefinedSchedule(_MultiplierSchedule):
    r"""Play a schedule given as multipliers of the peak rate: :math:`\eta_t = \eta_{\text{peak}}\,
    m_t`.

    Built from :func:`refine`'s output (or any non-negative sequence). Past its end the last
    multiplier is held (0 for a refined schedule).

    Args:
        optimizer: any torch optimizer; its groups' ``lr`` are the peak rates.
        multipliers: the factors :math:`m_0, m_1, \dots`, finite and >= 0, at least one.
        last_epoch: as in torch.

    Example:
        >>> multipliers = refine(previous_run_grad_norms, kind="adam", length=total_steps)
        >>> scheduler = RefinedSchedule(optimizer, multipliers)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        multipliers: Sequence[float] | Tensor | np.ndarray,
        *,
        last_epoch: int = -1,
    ) -> None:
        values = torch.as_tensor(multipliers, dtype=torch.float64).detach().cpu()
        if values.ndim != 1 or values.numel() == 0:
            raise ValueError(
                f"multipliers must be a non-empty 1-d sequence, got shape {tuple(values.shape)}"
            )
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError("multipliers must be finite and >= 0")
        # plain floats: the state_dict stays loadable with torch.load(weights_only=True)
        self.multipliers: list[float] = values.tolist()
        super().__init__(optimizer, last_epoch)

    @classmethod
    def from_grad_norms(
        cls,
        optimizer: Optimizer,
        grad_norms: Sequence[float] | Tensor | np.ndarray,
        *,
        kind: RefineKind = "sgd",
        smoothing: float = 0.1,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> RefinedSchedule:
        """Refine the logged norms of a previous run (see :func:`refine`) and play the result."""
        multipliers = refine(grad_norms, kind=kind, smoothing=smoothing, length=total_steps)
        return cls(optimizer, multipliers, last_epoch=last_epoch)

    def multiplier(self, step: int) -> float:
        """:math:`m_t`, or the last multiplier past the end."""
        return self.multipliers[min(step, len(self.multipliers) - 1)]


# -- refinement ------------------------------------------------------------------------------


def refine(
    grad_norms: Sequence[float] | Tensor | np.ndarray,
    *,
    kind: RefineKind = "sgd",
    smoothing: float = 0.1,
    length: int | None = None,
) -> np.ndarray | Tensor:
    r"""The refined schedule of "When, Why and How Much?" from a previous run's gradient norms.

    .. math::
        \begin{aligned}
        &\tilde G = \operatorname{median}_w(G) \qquad
              w = 2 \lfloor \lfloor \tau N \rfloor / 2 \rfloor + 1\\
        &w_t = \tilde G_t^{-p} \qquad (p = 2 \text{ for SGD and L2 norms},\
              p = 1 \text{ for the Adam family and L1 norms})\\
        &\eta_t = w_t \textstyle\sum_{s > t} w_s \quad (t < N - 1), \qquad \eta_{N-1} = 0\\
        &m = \eta / \max_t \eta_t, \text{ resampled to } N' \text{ points by linear interpolation}
        \end{aligned}

    Steps (spec 8.2): drop non-finite norms; smooth with a median filter of odd width
    :math:`w` after padding the right end with :math:`2w` reflected samples (``numpy.pad``
    ``"reflect"``), with ``"nearest"`` boundaries, then drop the padding; weight; tail sums;
    normalise to a maximum of 1; resample to ``length`` points.

    Properties: constant norms give exactly linear decay :math:`(N - 1 - t)/(N - 1)`; large early
    norms give small early rates (a warm-up emerges); norms rising at the end anneal fast.

    Args:
        grad_norms: one norm per step of the previous run, from the *same* optimizer family:
            the L2 norm of the full mini-batch gradient for SGD, its L1 norm for Adam-family
            optimizers. Non-finite entries are dropped; negative ones are an error.
        kind: ``"sgd"`` (weights :math:`1/G^2`) or ``"adam"`` (weights :math:`1/G`).
        smoothing: :math:`\tau`, the median filter's width as a fraction of the run, in [0, 1).
            Default 0.1 (the paper's plots). Below :math:`2/N` the filter is the identity.
        length: :math:`N'`, the number of steps of the new run, an integer >= 2. Default: the
            number of finite norms.

    Returns:
        The multipliers of the peak rate (maximum 1 before resampling, last entry 0), float64:
        a :class:`torch.Tensor` when ``grad_norms`` is a tensor, else a :class:`numpy.ndarray`.

    Raises:
        ValueError: fewer than 2 finite norms, a negative norm, a zero norm that the filter
            does not smooth away, a bad ``kind``, ``smoothing`` or ``length``.

    .. note::
        The official script divides by the last tail sum instead of :math:`S_0` and we divide by
        neither: the normalisation to a maximum of 1 removes any constant factor. We also
        rescale the weights by their maximum first (:math:`w_t = (\min G / G_t)^p`), which
        avoids overflow for tiny norms and makes constant norms give exactly linear decay.
        Unlike the plot script we do not trim 2 samples at each end (an artefact of its wandb
        exports) and do not resample to 10,000 points before filtering (spec 8.2: use
        :math:`N` = the number of norms).

    Example:
        >>> multipliers = refine(logged_l2_norms, kind="sgd", length=10_000)
    """
    np, median_filter = _numpy_and_median_filter()
    check_choice("kind", kind, tuple(_WEIGHT_POWER))
    smoothing = check_range("smoothing", smoothing, 0.0, 1.0, "[)")
    if length is not None:
        check_int("length", length, MIN_REFINE_LENGTH)
    as_tensor = isinstance(grad_norms, Tensor)
    if isinstance(grad_norms, Tensor):
        values = grad_norms.detach().to("cpu", torch.float64).numpy()
    else:
        values = np.asarray(grad_norms, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"grad_norms must be one-dimensional, got shape {values.shape}")
    norms = values[np.isfinite(values)]
    if norms.size < MIN_REFINE_LENGTH:
        raise ValueError(
            f"grad_norms must have at least {MIN_REFINE_LENGTH} finite entries, got "
            f"{norms.size} (of {values.size})"
        )
    if (norms < 0).any():
        raise ValueError(f"grad_norms must be >= 0, got {float(norms.min())!r}")

    count = norms.size
    width = 2 * (math.floor(smoothing * count) // 2) + 1
    if width > 1:
        pad = 2 * width
        padded = np.pad(norms, (0, pad), mode="reflect")
        smoothed = median_filter(padded, size=width, mode="nearest")[:-pad]
    else:
        smoothed = norms.copy()
    if (smoothed <= 0).any():
        raise ValueError(
            "grad_norms must be > 0 after smoothing (a zero norm gives an infinite weight); "
            "drop the zero entries or raise smoothing"
        )

    weights = (smoothed.min() / smoothed) ** _WEIGHT_POWER[kind]
    tail_sums = np.cumsum(weights[::-1])[::-1]  # tail_sums[t] = sum_{s >= t} w_s
    schedule = np.zeros(count, dtype=np.float64)
    schedule[:-1] = weights[:-1] * tail_sums[1:]
    schedule /= schedule.max()
    if length is not None and length != count:
        schedule = np.interp(np.linspace(0.0, 1.0, length), np.linspace(0.0, 1.0, count), schedule)
    return torch.from_numpy(schedule) if as_tensor else schedule


def _numpy_and_median_filter() -> tuple[Any, Any]:
    # imported on use: lrlab.schedules' schedulers need torch only
    try:
        import numpy
        from scipy.ndimage import median_filter
    except ImportError as error:  # pragma: no cover - both come with the bench extra
        raise ImportError(
            "lrlab.schedules.refine needs numpy and scipy: pip install 'lrlab[bench]'"
        ) from error
    return numpy, median_filter
