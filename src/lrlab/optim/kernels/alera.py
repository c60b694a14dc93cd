r"""The ALeRA family's fast path: the schemas, passes and compiled kernels of ALeRA, SALeRA,
Ag-Adam and SPALeRA (the method modules: :mod:`lrlab.optim.alera`, :mod:`lrlab.optim.spalera`;
the native kernels: ``native/alera.cpp``; the convention: :mod:`lrlab.optim.kernels`).

Every method's step is two passes (NOTE [the 2017 scheme fused] in :mod:`lrlab.optim.alera`):
(1) the partial sums before anything moves (:data:`PATH_SUMS` / :data:`DECAYED_PATH_SUMS` for
ALeRA, SALeRA and Ag-Adam: ``||p||^2``, ``<p, g>``, ``||g||^2``; :data:`GRAD_SQ` /
:data:`DECAYED_GRAD_SQ` for SPALeRA: ``||g||^2``), then (2) the path, the method's state and the
parameter (:data:`ALERA_MOVE`, :data:`SALERA_MOVE`, :data:`AGADAM_MOVE`, :data:`SPALERA_MOVE`).
The tensors that no kernel takes run the same two passes on the reference loop
(:func:`tensor_statistics`, :func:`decay`, :func:`sgd_reference_move`,
:func:`adam_reference_move`; the path's update stays in the method modules). Between the passes,
the host-side arithmetic of a block's rate (:func:`inverse_norm`, :func:`capped_exp`) is written
once for Python numbers and a capturable step's 0-d tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim._executor import Pass, Schema
from lrlab.optim._fused import kernel
from lrlab.optim._scalars import Scalar

__all__ = [
    "AGADAM_MOVE",
    "ALERA_MOVE",
    "DECAYED_GRAD_SQ",
    "DECAYED_PATH_SUMS",
    "GRAD_SQ",
    "PATH_SUMS",
    "SALERA_MOVE",
    "SPALERA_MOVE",
    "adam_reference_move",
    "capped_exp",
    "decay",
    "inverse_norm",
    "sgd_reference_move",
    "tensor_statistics",
]

# A compiled kernel takes flat tensors and computes in the dtype of its scalars (float32 for
# low-precision tensors); a native kernel is the same pass, one call for all CPU tensors of one
# dtype. Both add the weight decay themselves: the decayed gradient ``g = grad + wd x`` is formed
# inside, never stored. Pass (1) has a plain and a decayed kernel so that without decay it does
# not read the parameter (one full read less).

_PATH_SUM_NAMES = ("path_sq", "dot", "grad_sq")  # ||p||^2, <p, g>, ||g||^2 before the update
_PATH_SUMS_SCHEMA = Schema("AleraPathSums", scalars=(), sums=_PATH_SUM_NAMES)
_DECAYED_PATH_SUMS_SCHEMA = Schema("AleraDecayedPathSums", ("weight_decay",), sums=_PATH_SUM_NAMES)
_GRAD_SQ_SCHEMA = Schema("SpaleraGradSq", scalars=(), sums=("grad_sq",))
_DECAYED_GRAD_SQ_SCHEMA = Schema("SpaleraDecayedGradSq", ("weight_decay",), sums=("grad_sq",))
# per tensor: its block's 1/||g_l|| (0 at or below alera.GRADIENT_FLOOR) and rate
_BLOCK = ("inverse_norm", "eta")
_ALERA_MOVE_SCHEMA = Schema("AleraMove", ("weight_decay", "alpha"), tensor_scalars=_BLOCK)
# one: a runtime 1.0 for the compiled kernel's copy x_prev <- x (see _save_previous)
_SALERA_MOVE_SCHEMA = Schema("SaleraMove", ("weight_decay", "alpha", "one"), tensor_scalars=_BLOCK)
# weight1, weight2: 1 - beta1, 1 - beta2; size: eta sqrt(1 - beta2^t) / (1 - beta1^t)
_AGADAM_MOVE_SCHEMA = Schema(
    "AgAdamMove",
    ("weight_decay", "alpha", "weight1", "beta2", "weight2", "eps"),
    tensor_scalars=("inverse_norm", "size"),
)
# gain: C D / alpha; offset: -C mu_t / alpha
_SPALERA_MOVE_SCHEMA = Schema(
    "SpaleraMove", ("weight_decay", "inverse_norm", "alpha", "gain", "offset", "eta", "one")
)


def _sums_of(g: Tensor, path: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(||path||^2, <path, g>, ||g||^2), inlined into the two path-sums kernels."""
    q = path.to(g.dtype)
    return (q * q).sum(), (q * g).sum(), (g * g).sum()


@kernel
def _path_statistics(grad: Tensor, path: Tensor, scalars: Tensor) -> tuple[Tensor, ...]:
    """Pass (1) of ALeRA, SALeRA, Ag-Adam without decay."""
    return _sums_of(grad.to(scalars.dtype), path)


@kernel
def _decayed_path_statistics(
    grad: Tensor, p: Tensor, path: Tensor, scalars: Tensor
) -> tuple[Tensor, ...]:
    """Pass (1) of ALeRA, SALeRA, Ag-Adam with decay."""
    c, dtype = _DECAYED_PATH_SUMS_SCHEMA.read(scalars), scalars.dtype
    return _sums_of(grad.to(dtype) + c["weight_decay"] * p.to(dtype), path)


@kernel
def _grad_sq(grad: Tensor, scalars: Tensor) -> Tensor:
    """Pass (1) of SPALeRA without decay: ``||g||^2``."""
    g = grad.to(scalars.dtype)
    return (g * g).sum()


@kernel
def _decayed_grad_sq(grad: Tensor, p: Tensor, scalars: Tensor) -> Tensor:
    """Pass (1) of SPALeRA with decay: ``||g||^2``."""
    c, dtype = _DECAYED_GRAD_SQ_SCHEMA.read(scalars), scalars.dtype
    g = grad.to(dtype) + c["weight_decay"] * p.to(dtype)
    return (g * g).sum()


def _save_previous(prev: Tensor, x: Tensor, one: Tensor) -> None:
    """``prev <- x`` (the parameter before its update), inlined into SALeRA's and SPALeRA's
    kernels. Written as ``x * one`` with ``one`` a runtime 1.0 from the scalars tensor (exact):
    inductor folds a plain ``prev.copy_(p)`` into an alias of ``p`` and then stores ``p``'s
    *updated* value into ``prev`` (torch 2.13, pytorch/pytorch#198131); a product it cannot fold
    is computed from the ``p`` read before the update."""
    prev.copy_(x * one)


def _alera_move_body(grad: Tensor, p: Tensor, path: Tensor, c: dict[str, Tensor]) -> None:
    """``p <- lerp(p, g / ||g_l||, alpha)``, ``x <- x - eta g``, inlined into ALeRA's and
    SALeRA's kernels."""
    dtype = c["alpha"].dtype
    x = p.to(dtype)
    g = grad.to(dtype) + c["weight_decay"] * x
    path.copy_(torch.lerp(path.to(dtype), g * c["inverse_norm"], c["alpha"]))
    p.copy_(x - c["eta"] * g)


@kernel
def _alera_move(grad: Tensor, p: Tensor, path: Tensor, scalars: Tensor) -> None:
    """Pass (2) of ALeRA (see :func:`_alera_move_body`)."""
    _alera_move_body(grad, p, path, _ALERA_MOVE_SCHEMA.read(scalars))


@kernel
def _salera_move(grad: Tensor, p: Tensor, path: Tensor, prev: Tensor, scalars: Tensor) -> None:
    """Pass (2) of SALeRA: save ``x_prev <- x``, then ALeRA's move."""
    c = _SALERA_MOVE_SCHEMA.read(scalars)
    _save_previous(prev, p.to(scalars.dtype), c["one"])
    _alera_move_body(grad, p, path, c)


@kernel
def _agadam_move(
    grad: Tensor, p: Tensor, path: Tensor, m: Tensor, v: Tensor, scalars: Tensor
) -> None:
    """Pass (2) of Ag-Adam: the path as ALeRA, Adam's moments, and
    ``x <- x - size m / (sqrt(v) + eps)``."""
    c, dtype = _AGADAM_MOVE_SCHEMA.read(scalars), scalars.dtype
    x = p.to(dtype)
    g = grad.to(dtype) + c["weight_decay"] * x
    path.copy_(torch.lerp(path.to(dtype), g * c["inverse_norm"], c["alpha"]))
    m_new = torch.lerp(m.to(dtype), g, c["weight1"])
    v_new = v.to(dtype) * c["beta2"] + c["weight2"] * g * g
    m.copy_(m_new)
    v.copy_(v_new)
    p.copy_(x - c["size"] * (m_new / (v_new.sqrt() + c["eps"])))


@kernel
def _spalera_move(
    grad: Tensor, p: Tensor, path: Tensor, multiplier: Tensor, prev: Tensor, scalars: Tensor
) -> None:
    """Pass (2) of SPALeRA: ``x_prev <- x``, ``p <- lerp(p, g / ||g||, alpha)``,
    ``a <- a exp(gain p^2 + offset)``, ``x <- x - eta a g``."""
    c, dtype = _SPALERA_MOVE_SCHEMA.read(scalars), scalars.dtype
    x = p.to(dtype)
    g = grad.to(dtype) + c["weight_decay"] * x
    new_path = torch.lerp(path.to(dtype), g * c["inverse_norm"], c["alpha"])
    new_multiplier = multiplier.to(dtype) * (new_path * new_path * c["gain"] + c["offset"]).exp()
    _save_previous(prev, x, c["one"])
    path.copy_(new_path)
    multiplier.copy_(new_multiplier)
    p.copy_(x - c["eta"] * (new_multiplier * g))


# -- the passes, in the order of the generated block of native/alera.cpp ------------------------

PATH_SUMS = Pass("alera", ("grad", "path"), _PATH_SUMS_SCHEMA, "alera_statistics", _path_statistics)
DECAYED_PATH_SUMS = Pass(
    "alera",
    ("grad", "p", "path"),
    _DECAYED_PATH_SUMS_SCHEMA,
    "alera_decayed_statistics",
    _decayed_path_statistics,
)
ALERA_MOVE = Pass("alera", ("grad", "p", "path"), _ALERA_MOVE_SCHEMA, "alera_move", _alera_move)
SALERA_MOVE = Pass(
    "alera", ("grad", "p", "path", "prev"), _SALERA_MOVE_SCHEMA, "salera_move", _salera_move
)
AGADAM_MOVE = Pass(
    "alera", ("grad", "p", "path", "m", "v"), _AGADAM_MOVE_SCHEMA, "agadam_move", _agadam_move
)
GRAD_SQ = Pass("alera", ("grad",), _GRAD_SQ_SCHEMA, "spalera_grad_sq", _grad_sq)
DECAYED_GRAD_SQ = Pass(
    "alera", ("grad", "p"), _DECAYED_GRAD_SQ_SCHEMA, "spalera_decayed_grad_sq", _decayed_grad_sq
)
SPALERA_MOVE = Pass(
    "alera",
    ("grad", "p", "path", "multiplier", "prev"),
    _SPALERA_MOVE_SCHEMA,
    "spalera_move",
    _spalera_move,
)


def _to_float64(values: list[Tensor], device: torch.device) -> Tensor:
    return torch.stack([v.to(device=device, dtype=torch.float64) for v in values])


def tensor_statistics(
    paths: list[Tensor], grads: list[Tensor], foreach: bool, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Per tensor, before the update: ``||p||^2``, ``<p, g>``, ``||g||^2`` (float64 vectors):
    pass (1) of ALeRA, SALeRA and Ag-Adam on the reference loop."""
    path_norms = _to_float64(_foreach.norms(paths, foreach=foreach), device)
    grad_norms = _to_float64(_foreach.norms(grads, foreach=foreach), device)
    dots = []
    for path, g in zip(paths, grads, strict=True):
        acc = _foreach.accumulation_dtype(path.dtype)
        dots.append(torch.dot(path.reshape(-1).to(acc), g.reshape(-1).to(acc)))
    return path_norms.square(), _to_float64(dots, device), grad_norms.square()


def decay(
    grads: list[Tensor], params: list[Tensor], rows: list[int], weight_decay: float, foreach: bool
) -> None:
    """Replace ``grads[i]`` by ``g + wd x`` for every ``i`` of ``rows`` (the reference loop's
    tensors; the kernels add the decay themselves): the coupled L2, added once (the Lua
    alera.lua adds it twice) and never in place."""
    ref_grads, ref_params = [grads[i] for i in rows], [params[i] for i in rows]
    if foreach:
        decayed = list(torch._foreach_add(ref_grads, ref_params, alpha=weight_decay))
    else:
        decayed = [g.add(p, alpha=weight_decay) for g, p in zip(ref_grads, ref_params, strict=True)]
    for i, g in zip(rows, decayed, strict=True):
        grads[i] = g


def sgd_reference_move(
    params: list[Tensor], grads: list[Tensor], etas: Sequence[Scalar], foreach: bool
) -> None:
    """ALeRA's and SALeRA's move on the reference loop (after the path): ``x <- x - eta g``,
    each tensor with its block's rate (0-d tensors in a capturable step)."""
    if foreach:
        torch._foreach_add_(params, torch._foreach_mul(grads, [-eta for eta in etas]))  # type: ignore[misc, arg-type]
    else:
        for p, g, eta in zip(params, grads, etas, strict=True):
            scalar.add_scaled_(p, g, -eta)


def adam_reference_move(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    sizes: Sequence[Scalar],
    group: Mapping[str, Any],
    foreach: bool,
) -> None:
    """Ag-Adam's move on the reference loop (after the path): ``m <- beta1 m + (1 - beta1) g``,
    ``v <- beta2 v + (1 - beta2) g^2``, ``x <- x - size m / (sqrt(v) + eps)``, each tensor
    with its own step size (0-d tensors in a capturable step, divided in: ``value=`` would
    read them back to the host)."""
    (beta1, beta2), eps = group["betas"], group["eps"]
    if foreach:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, eps)
        negative = [-size for size in sizes]
        if scalar.is_device(*sizes):
            torch._foreach_div_(denominators, negative)  # type: ignore[arg-type]
            torch._foreach_addcdiv_(params, exp_avgs, denominators)
        else:
            torch._foreach_addcdiv_(params, exp_avgs, denominators, negative)  # type: ignore[arg-type]
        return
    for p, g, m, v, size in zip(params, grads, exp_avgs, exp_avg_sqs, sizes, strict=True):
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        if isinstance(size, Tensor):
            p.addcdiv_(m, v.sqrt().add_(eps).div_(-size))
        else:
            p.addcdiv_(m, v.sqrt().add_(eps), value=-size)


# -- the scalar arithmetic of a block's rate (Python numbers, or a capturable step's 0-d tensors)


def inverse_norm(norm: Scalar, floor: float) -> Scalar:
    """``1 / norm`` above ``floor``, else 0 (a block whose gradient is that small adds nothing
    to its path); the same bits as the plain expression on a Python number, a select on a
    tensor (whose other side divides by at least ``floor``)."""
    return scalar.where(norm > floor, 1.0 / scalar.maximum(norm, floor), 0.0)


def capped_exp(exponent: Scalar, cap: float) -> Scalar:
    """``exp(min(exponent, cap))``: ``math.exp`` on a Python number (which overflows above
    ~709.78), ``torch.exp`` of a clamp on a tensor."""
    if isinstance(exponent, Tensor):
        return torch.exp(torch.clamp(exponent, max=cap))
    return math.exp(min(exponent, cap))
