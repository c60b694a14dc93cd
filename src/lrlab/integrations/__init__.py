"""Callbacks that make every lrlab optimizer train inside the frameworks people use.

* :mod:`lrlab.integrations.lightning`: ``LrlabCallback`` for ``lightning.pytorch.Trainer``.
* :mod:`lrlab.integrations.transformers`: ``LrlabCallback`` for ``transformers.Trainer``.

Add the callback and change nothing else: methods that need the loss get it (also under fp16
mixed precision and gradient accumulation: the mean of the micro-batch losses), methods that
keep one value per training example get the batch's indices (the ``"index"`` entry of a dict
batch), LOSSGRAD gets its forward-only check without re-running the framework's hooks,
Schedule-Free methods are switched to their evaluation weights for validation and checkpoints,
and ``effective_lr`` and ``statistics()`` go to the framework's logger. With accelerate (or a
hand-written loop) call :func:`lrlab.optim.feed` yourself. ``docs/guide.md`` has the recipes.

Each submodule imports its framework when it is imported; this package and :mod:`lrlab.optim`
never do.
"""
