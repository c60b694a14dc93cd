"""lrlab.optim: learning-rate-adapting optimizers, each a drop-in ``torch.optim.Optimizer``.

The import list below is the table of contents: every method module registers its classes on
import. Use the registry to discover and build them::

    import lrlab.optim as lo
    lo.names()                        # ['sgd', 'adam', ..., 'clara-adam', ...]
    lo.spec("clara-adam").needs_loss  # declared capabilities
    optimizer = lo.create("clara-adam", model.parameters(), lr=1e-3)

The contract every optimizer follows (closures, ``effective_lr``, ``statistics()``, the
non-finite policy, checkpoints) is documented once, in :mod:`lrlab.optim._base`.
"""

from lrlab.optim._base import (
    AdaptiveOptimizer,
    StepContext,
    evaluate_without_backward,
    make_closure,
)
from lrlab.optim._registry import (
    InvalidKwargs,
    MethodSpec,
    UnknownNameError,
    create,
    names,
    register,
    spec,
)

# method modules (each registers its classes on import)
from lrlab.optim.baselines import SGD, Adam, AdamW
from lrlab.optim.clara import ClaraAdam, ClaraSGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "AdaptiveOptimizer",
    "ClaraAdam",
    "ClaraSGD",
    "InvalidKwargs",
    "MethodSpec",
    "StepContext",
    "UnknownNameError",
    "create",
    "evaluate_without_backward",
    "make_closure",
    "names",
    "register",
    "spec",
]
