"""The method families' fast-path declarations (private: not a public API).

A method module reads like its paper: the math, the algorithm box, the reference loop (the
``foreach`` and per-tensor code) and the dispatch, ``route(...)`` then ``plan.run(pass, ...)``
(see :mod:`lrlab.optim._executor`). What the fast path needs besides lives here, one module per
family, ``kernels/<family>.py``:

* the :class:`~lrlab.optim._executor.Schema` s, the named scalars, per-tensor scalars and sums a
  pass's kernels read and return (the C++ structs between the "lrlab schema" markers of
  ``native/<family>.cpp`` are generated from them, see
  :func:`~lrlab.optim._executor.write_schemas`);
* the :class:`~lrlab.optim._executor.Pass` es, each naming its arrays, its schema, its native
  function and its compiled kernel;
* the compiled kernels (functions declared with :func:`lrlab.optim._fused.kernel`, run through
  ``torch.compile``), which keep their names: :func:`lrlab.optim.fused_status` lists them.

The C++ native kernels stay in ``src/lrlab/optim/native/<family>.cpp``. A kernels module imports
only the core (``_executor``, ``_fused``, torch), never its method module, so importing either
one first is fine; the method module imports it and reads its passes by name.

This is the shape of ``torch.optim``: one dispatch in the method module over reference,
multi-tensor and fused implementations, with the kernels outside it.
"""
