"""LOSSGRAD: a step size fitted from one extra forward pass along the step just taken.

Paper: B. Wojcik, L. Maziarka, J. Tabor, "LOSSGRAD: automatic learning rate in gradient descent",
Schedae Informaticae 27 (2018) 47-57, arXiv:1902.07656. Official code: ``bartwojcik/lossgrad``.
Method page: ``docs/methods/loss-based.md``.

After an SGD step of size ``h`` the loss is evaluated again on the *same* mini-batch (forward only).
The parabola through the old loss, its slope and the new loss has its minimiser beyond ``h``
exactly when the relative excess of the new loss over the linear prediction is below 1/2; then
``h`` grows by ``c``, otherwise it shrinks by ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, StepContext
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._validation import check_bool, check_positive, check_range

__all__ = ["Lossgrad", "make_consistent_closure"]

#: the parabola's minimiser lies beyond the current step iff the relative error is below this
_THRESHOLD = 0.5


@register(
    "lossgrad",
    family="loss-based",
    paper=(
        "Wojcik, Maziarka & Tabor, LOSSGRAD: automatic learning rate in gradient descent, "
        "Schedae Informaticae 27 (2018); arXiv:1902.07656"
    ),
    summary="SGD whose step size h grows or shrinks by c from a quadratic fit along the step",
    supports_foreach=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 1e-4, "c": 1.1},
        {"lr": 0.2, "c": 1.2},
    ),
    invalid_kwargs=(
        InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"lr": math.inf}, r"lr must be in \(0, inf\), got inf"),
        InvalidKwargs({"c": 1.0}, r"c must be in \(1, inf\), got 1\.0"),
        InvalidKwargs({"c": math.nan}, r"c must be in \(1, inf\), got nan"),
        InvalidKwargs({"sharded": 1}, r"sharded must be True or False, got 1"),
    ),
    group_kwargs={"lr": 0.01},
)
class Lossgrad(AdaptiveOptimizer):
    r"""LOSSGRAD: SGD with a step size adapted from a forward-only check on the same batch.

    .. math::
        \begin{aligned}
        &\textbf{for } t = 1, 2, \dots \text{ (mini-batch loss } f \text{, gradient } g
            \text{ at } x_t\text{):}\\
        &\quad \ell_{\mathrm{red}} = h\, \lVert g \rVert^2, \qquad
              \tilde f = f(x_t) - \ell_{\mathrm{red}}
              \quad \text{(linear prediction of the new loss)}\\
        &\quad x_{t+1} = x_t - h\, g\\
        &\quad e = \frac{f(x_{t+1}) - \tilde f}{\ell_{\mathrm{red}}}
              \quad \text{(same mini-batch, forward only)}\\
        &\quad h \leftarrow h / c \ \text{ if } e > 1/2, \qquad h \leftarrow h\, c
              \ \text{ otherwise}
        \end{aligned}

    Why 1/2: the parabola :math:`q(s) = f(x) - s \lVert g\rVert^2 + a s^2` through the observed
    :math:`f(x - h g)` has its minimiser :math:`s^* = \lVert g\rVert^2 / (2a) > h` exactly when
    :math:`e < 1/2` (and :math:`e \le 0` when the loss is not convex along the ray: grow). On a
    quadratic with Hessian :math:`H`, :math:`e = h\, g^\top H g / (2 \lVert g \rVert^2)`. The step
    is always kept (no backtracking); the new ``h`` is used from the next step on.

    With several param groups the step of group :math:`k` is :math:`h_k g_k` with
    :math:`h_k = \mathrm{lr}_k \cdot \phi` and one global factor :math:`\phi` (``lr_factor``,
    multiplied or divided by ``c``), and the predicted decrease is
    :math:`\ell_{\mathrm{red}} = \sum_k h_k \lVert g_k \rVert^2`. With one group this is the
    paper's rule with :math:`h = \mathrm{lr} \cdot \phi`.

    Symbols: :math:`h` ``lr * lr_factor`` (``effective_lr`` of the step, ``statistics()["h"]``
    for the next one), :math:`c` ``c``, :math:`e` ``statistics()["rel_err"]``.

    Args:
        params: parameters or param groups.
        lr: initial step size :math:`h_0`, in (0, inf). Default 1e-4 (both official examples);
            the method is meant to be insensitive to it (``ln(1000) / ln(c)`` = 142 steps recover
            a factor 1000 with the default ``c``).
        c: multiplicative change of ``h`` per step, in (1, inf). Default 1.05 (the paper's). Global.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        sharded: each rank owns a disjoint part of the parameters, so :math:`\lVert g\rVert^2`
            is a partial sum to be reduced over ranks (not needed for DDP; DTensor is detected).
            Every rank must also evaluate the loss in the check pass.

    Needs ``step(closure)``: the loss before the step comes from the closure, the loss after it
    from ``closure(backward=False)`` (see :func:`lrlab.optim.make_closure`); no extra backward
    pass is run when the closure accepts ``backward``. A plain torch closure also works, at the
    cost of one wasted backward pass.

    .. warning::
        **Dropout and BatchNorm.** The check pass must evaluate the *same* function as the
        first pass. With dropout in train mode a second forward draws a new mask, so the
        difference of the two losses is dominated by the mask noise and ``h`` follows noise; a
        BatchNorm layer in train mode updates its running statistics a second time. Switching
        the model to eval mode for the check pass is *not* consistent either (no dropout,
        running instead of batch statistics: a different function). Use
        :func:`make_consistent_closure`, which replays the random-number-generator state of the
        first pass (same dropout masks) and restores the module buffers (running statistics)
        after the check pass.

    .. note::
        Deviations from the official code (all following spec 3.5): (1) parameters without a
        gradient are skipped in :math:`\lVert g\rVert^2`; (2) when the predicted decrease
        :math:`\ell_{\mathrm{red}}` is 0 (every gradient zero) nothing can be learned about
        ``h``: the check pass is not run and ``h`` is kept (the official code would grow it),
        counted in ``statistics()["zero_gradient_steps"]``; (3) when the check loss is NaN or
        infinite (or :math:`e` is not finite), the step is undone (``x += h g``, exact up to
        rounding) and ``h`` shrinks, counted in ``statistics()["nonfinite_checks"]``; the
        official code has no guard, and keeping such a step would make every later step's loss
        non-finite, skipped by the non-finite policy, with ``h`` frozen forever; (4) the
        official ``1e-25`` in the denominator of :math:`e` is not needed (guard (2)); (5) per
        group ``lr`` as described above. A non-finite loss or gradient *before* the step is
        handled by the lrlab non-finite policy (the step is skipped, ``h`` is kept).

    Example:
        >>> optimizer = Lossgrad(model.parameters(), lr=1e-4)
        >>> closure = make_closure(optimizer, lambda: loss_fn(model(inputs), targets))
        >>> optimizer.step(closure)
    """

    needs_loss: ClassVar[bool] = True
    needs_closure: ClassVar[bool] = True
    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float | int]] = {
        "lr_factor": 1.0,
        "rel_err": 0.0,
        "nonfinite_checks": 0,
        "zero_gradient_steps": 0,
    }

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "c": check.in_range(1.0, math.inf, "()"),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        *,
        c: float = 1.05,
        foreach: bool | None = None,
        sharded: bool = False,
    ) -> None:
        check_positive("lr", lr)
        check_range("c", c, 1.0, math.inf, "()")
        check_bool("sharded", sharded)
        defaults = {"lr": lr, "c": c, "foreach": foreach, "sharded": sharded}
        super().__init__(params, defaults)

    def _update(self, context: StepContext) -> None:
        factor = float(self._get_global("lr_factor"))
        c = float(self.param_groups[0]["c"])
        # (h, params, grads, foreach) of every group with gradients
        moves: list[tuple[float, list[Tensor], list[Tensor], bool]] = []
        decrease_parts: list[Tensor] = []
        for group in self.param_groups:
            h = float(group["lr"]) * factor
            group["effective_lr"] = h
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            decrease_parts.append(_foreach.sum_of_squares(grads, foreach=foreach) * h)
            moves.append((h, params, grads, foreach))

        # every rank reaches the reduction, even one without gradients this step
        predicted = _sum_or_zero(decrease_parts, context.params[0].device)
        (predicted,) = self._reduce_global([predicted])
        predicted_decrease = float(predicted)  # host synchronisation 1 of 2
        if not predicted_decrease > 0.0:  # every gradient is zero: nothing to learn about h
            self._set_global("zero_gradient_steps", self._get_global("zero_gradient_steps") + 1)
            return
        assert context.loss is not None  # needs_loss: the base class guarantees it
        loss = float(context.loss.detach())

        for h, params, grads, foreach in moves:
            _add(params, grads, -h, foreach)
        new_loss = float(context.forward_only())  # host synchronisation 2 of 2

        rel_err = (new_loss - (loss - predicted_decrease)) / predicted_decrease
        if not math.isfinite(rel_err):
            # undo the move and shrink; see the class notes (deviation 3)
            for h, params, grads, foreach in moves:
                _add(params, grads, h, foreach)
            for group in self.param_groups:
                group["effective_lr"] = 0.0
            self._set_global("nonfinite_checks", self._get_global("nonfinite_checks") + 1)
            rel_err = math.inf
        self._set_global("rel_err", rel_err)
        self._set_global("lr_factor", factor / c if rel_err > _THRESHOLD else factor * c)

    def _statistics(self) -> dict[str, float]:
        factor = float(self._get_global("lr_factor"))
        return {
            "h": float(self.param_groups[0]["lr"]) * factor,
            "lr_factor": factor,
            "rel_err": float(self._get_global("rel_err")),
            "nonfinite_checks": float(self._get_global("nonfinite_checks")),
            "zero_gradient_steps": float(self._get_global("zero_gradient_steps")),
        }


def _sum_or_zero(parts: list[Tensor], device: torch.device) -> Tensor:
    if not parts:
        return torch.zeros((), dtype=torch.float64, device=device)
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    return torch.stack([part.to(dtype) for part in parts]).sum()


def _add(params: list[Tensor], grads: list[Tensor], alpha: float, foreach: bool) -> None:
    """``p += alpha * g`` for every pair (the SGD move, or its undo)."""
    if foreach:
        torch._foreach_add_(params, grads, alpha=alpha)
        return
    for p, g in zip(params, grads, strict=True):
        p.add_(g, alpha=alpha)


# -- a closure whose check pass evaluates the same function ---------------------------------


def _rng_states() -> tuple[Tensor, list[Tensor] | None]:
    cuda = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[Tensor, list[Tensor] | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def make_consistent_closure(
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[], Tensor],
    modules: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
) -> Callable[..., Tensor]:
    """An lrlab closure whose forward-only pass evaluates the same function as the first pass.

    For :class:`Lossgrad` with dropout or BatchNorm in train mode (see its warning).
    ``closure()`` records the random-number-generator state (CPU, and every CUDA device once CUDA
    is initialised), zeroes the gradients, computes the loss and runs backward.
    ``closure(backward=False)`` then:

    * replays the recorded RNG state, so every dropout layer draws the same mask as in the first
      pass (when the forward draws its random numbers in the same order, which a forward pass
      does), and afterwards puts the RNG back where the first pass left it, so the training run's
      random stream is the same as without the check pass;
    * snapshots the buffers of ``modules`` (BatchNorm running statistics and
      ``num_batches_tracked``) and restores them afterwards, so they are updated once per step.

    Batch statistics are still used in the check pass (train mode), like in the first pass: the
    two losses are values of one function of the parameters.

    Args:
        optimizer: the optimizer whose gradients the closure zeroes.
        compute_loss: computes the mini-batch loss (same batch at every call).
        modules: the model (or modules) whose buffers the check pass must not change.

    Example:
        >>> closure = make_consistent_closure(optimizer, lambda: loss_fn(model(x), y), model)
        >>> optimizer.step(closure)
    """
    if modules is None:
        module_list: list[torch.nn.Module] = []
    elif isinstance(modules, torch.nn.Module):
        module_list = [modules]
    else:
        module_list = list(modules)
    recorded: dict[str, Any] = {}

    def closure(*, backward: bool = True) -> Tensor:
        if backward:
            recorded["rng"] = _rng_states()
            optimizer.zero_grad()
            with torch.enable_grad():
                loss = compute_loss()
                loss.backward()
            return loss
        if "rng" not in recorded:
            raise ValueError(
                "make_consistent_closure: closure(backward=False) needs a closure() call first "
                "(it replays that pass's random-number-generator state)"
            )
        after_first_pass = _rng_states()
        buffers = [b for m in module_list for b in m.buffers()]
        saved = [b.detach().clone() for b in buffers]
        try:
            _set_rng_states(recorded["rng"])
            with torch.no_grad():
                loss = compute_loss()
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved, strict=True):
                    buffer.copy_(value)
            _set_rng_states(after_first_pass)
        return loss

    return closure
