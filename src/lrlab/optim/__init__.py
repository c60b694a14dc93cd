"""lrlab.optim: learning-rate-adapting optimizers, each a drop-in ``torch.optim.Optimizer``.

The import list below is the table of contents: every method module registers its classes on
import. Use the registry to discover and build them::

    import lrlab.optim as lo
    lo.names()                        # ['sgd', 'adam', ..., 'clara-adam', ...]
    lo.spec("clara-adam").needs_loss  # declared capabilities
    optimizer = lo.create("clara-adam", model.parameters(), lr=1e-3)

The contract every optimizer follows (closures, ``effective_lr``, ``statistics()``, the
non-finite policy, checkpoints) is documented once, in :mod:`lrlab.optim._base`. Inside a
framework that calls ``optimizer.step()`` itself (accelerate, HF Trainer, Lightning), hand the
optimizer its loss and example indices with :func:`feed` (it finds the lrlab optimizer inside
wrappers) and read :func:`statistics` through them too; :mod:`lrlab.integrations` has callbacks
that do this for Lightning and transformers.
"""

from lrlab.optim._base import (
    AdaptiveOptimizer,
    StepContext,
    evaluate_without_backward,
    make_closure,
)
from lrlab.optim._feed import discard_fed, feed, statistics
from lrlab.optim._fused import fused_status
from lrlab.optim._registry import (
    EvalModeOptimizer,
    InvalidKwargs,
    MethodSpec,
    UnknownNameError,
    create,
    names,
    register,
    spec,
)

# method modules (each registers its classes on import)
from lrlab.optim.alera import AgAdam, ALeRA, SALeRA, layer_param_groups

# isort: split
# SPALeRA builds on alera and registers right after it, as before it had a module of its own:
# the registration order (lo.names()) sets the bench figures' colours and markers
from lrlab.optim.spalera import SPALeRA

# isort: split
from lrlab.optim.baselines import SGD, Adam, AdamW
from lrlab.optim.clara import ClaraAdam, ClaraSGD
from lrlab.optim.clara_auto import ClaraAuto
from lrlab.optim.dadaptation import DAdaptAdaGrad, DAdaptAdam, DAdaptSGD
from lrlab.optim.dog import DoG, DoWG, LDoG
from lrlab.optim.gradagrad import GradaGrad
from lrlab.optim.l4 import L4Adam, L4Mom
from lrlab.optim.lossgrad import Lossgrad, make_consistent_closure
from lrlab.optim.mda import MDA
from lrlab.optim.mechanic import Mechanic
from lrlab.optim.momo import Momo, MomoAdam
from lrlab.optim.polyak import MOTAPS, SPS, TAPS
from lrlab.optim.prodigy import Prodigy
from lrlab.optim.schedule_free import AdamWScheduleFree, SGDScheduleFree, recalibrate_batchnorm
from lrlab.optim.wngrad import WNAdam, WNGrad

__all__ = [
    "MDA",
    "MOTAPS",
    "SGD",
    "SPS",
    "TAPS",
    "ALeRA",
    "Adam",
    "AdamW",
    "AdamWScheduleFree",
    "AdaptiveOptimizer",
    "AgAdam",
    "ClaraAdam",
    "ClaraAuto",
    "ClaraSGD",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "DoG",
    "DoWG",
    "EvalModeOptimizer",
    "GradaGrad",
    "InvalidKwargs",
    "L4Adam",
    "L4Mom",
    "LDoG",
    "Lossgrad",
    "Mechanic",
    "MethodSpec",
    "Momo",
    "MomoAdam",
    "Prodigy",
    "SALeRA",
    "SGDScheduleFree",
    "SPALeRA",
    "StepContext",
    "UnknownNameError",
    "WNAdam",
    "WNGrad",
    "create",
    "discard_fed",
    "evaluate_without_backward",
    "feed",
    "fused_status",
    "layer_param_groups",
    "make_closure",
    "make_consistent_closure",
    "names",
    "recalibrate_batchnorm",
    "register",
    "spec",
    "statistics",
]
