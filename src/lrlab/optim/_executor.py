"""One executor for the fast paths of the adaptive methods.

A method writes its step as *passes* over its tensors (a statistics pass returning named sums,
a move pass, ...) and keeps its math and a readable reference loop; this module does the
plumbing that every method used to repeat by hand:

* **routing**: each parameter of a group goes to the native CPU kernels (one call per pass for
  all tensors of a dtype, :mod:`lrlab.optim._native`), to a compiled kernel (one call per
  tensor, :mod:`lrlab.optim._fused`: with ``fused=True``, and by default for CUDA/XPU
  tensors) or back to the method's reference loop; by the group's ``fused`` setting, the
  tensors' eligibility (dtype, device, layout, size) and whether the kernels could be built;
* **scalars by name**: a pass declares its scalars, per-tensor scalars and sums by name in a
  :class:`Schema`. The method passes a mapping; the executor orders it. The C++ kernel reads a
  struct with the same field names, generated from the schema into the kernel source (between
  the ``lrlab schema`` markers) by :func:`render_schemas`; :func:`check_schemas` (run when a
  family's kernels are first used, and by the tests) refuses to run a source whose struct
  differs from the Python declaration. A compiled kernel reads the same names through
  :meth:`Schema.read`. No scalar is passed by position anywhere.

NOTE [one executor]
The shape is torch.optim's (``_single_tensor_adam`` / ``_multi_tensor_adam`` / ``_fused_adam``
behind one dispatch): the kernels live apart from the method module, the method's update reads
like the algorithm box, and a new fused method is its math (the reference loop), its passes'
schemas, and its kernels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lrlab.optim._foreach import accumulation_dtype
from lrlab.optim._fused import (
    FusedKernel,
    compiled_requested,
    flat,
    flat_eligible,
    native_requested,
    scalars,
)
from lrlab.optim._native import ArrayLengths, NativeKernel, native_eligible

__all__ = [
    "Pass",
    "PassResult",
    "Plan",
    "Schema",
    "check_schemas",
    "render_schemas",
    "route",
    "write_schemas",
]

_SOURCES = Path(__file__).with_name("native")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Schema:
    """The named scalars of a kernel, shared by Python and C++.

    ``scalars``: one value per call; ``tensor_scalars``: one row per tensor; ``sums``: the
    per-tensor sums the kernel returns. ``struct`` is the C++ name of the generated structs
    (``<struct>Scalars``, ``<struct>TensorScalars`` and the ``<struct>Sums`` indices).
    """

    struct: str
    scalars: tuple[str, ...]
    tensor_scalars: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (*self.scalars, *self.tensor_scalars, *self.sums):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"schema {self.struct}: {name!r} is not a snake_case name")
        for kind in (self.scalars, self.tensor_scalars, self.sums):
            if len(set(kind)) != len(kind):
                raise ValueError(f"schema {self.struct}: duplicate names in {kind}")

    def values(self, named: Mapping[str, float | Tensor]) -> tuple[float | Tensor, ...]:
        """The scalars of ``named`` in the schema's order (every name, no other); a 0-d tensor
        (a capturable step's device scalar, NOTE [device scalars]) is kept as it is."""
        missing = [name for name in self.scalars if name not in named]
        extra = [name for name in named if name not in self.scalars]
        if missing or extra:
            raise ValueError(
                f"schema {self.struct}: scalars missing {missing}, unknown {extra}; "
                f"expected {list(self.scalars)}"
            )
        return tuple(_scalar(named[name]) for name in self.scalars)

    def row(self, named: Mapping[str, float | Tensor]) -> tuple[float | Tensor, ...]:
        """One tensor's per-tensor scalars in the schema's order; a 0-d tensor is kept, as in
        :meth:`values`."""
        if set(named) != set(self.tensor_scalars):
            raise ValueError(
                f"schema {self.struct}: tensor scalars {sorted(named)}, expected "
                f"{list(self.tensor_scalars)}"
            )
        return tuple(_scalar(named[name]) for name in self.tensor_scalars)

    def read(self, c: Tensor) -> dict[str, Tensor]:
        """The scalars tensor of a compiled kernel call by name (``c["beta1"]``), as 0-d
        tensors: the scalars, then the tensor's own tensor scalars; traced by torch.compile
        as plain indexing."""
        names = (*self.scalars, *self.tensor_scalars)
        return {name: c[index] for index, name in enumerate(names)}

    def render(self) -> str:
        """The C++ declarations of this schema (see :func:`render_schemas`)."""
        lines = [f"struct {self.struct}Scalars {{"]
        lines += [f"  double {name};" for name in self.scalars]
        lines += [f"  static constexpr int kCount = {len(self.scalars)};", "};"]
        if self.tensor_scalars:
            lines.append(f"struct {self.struct}TensorScalars {{")
            lines += [f"  double {name};" for name in self.tensor_scalars]
            lines += [f"  static constexpr int kCount = {len(self.tensor_scalars)};", "};"]
        if self.sums:
            lines.append(f"struct {self.struct}Sums {{")
            lines.append("  enum : int { " + ", ".join([*self.sums, "kCount"]) + " };")
            lines.append("};")
        return "\n".join(lines)


def _scalar(value: float | Tensor) -> float | Tensor:
    return value if isinstance(value, Tensor) else float(value)


_SCHEMAS: dict[str, list[Schema]] = {}
_NATIVE_KERNELS: dict[tuple[str, str], NativeKernel] = {}
_CHECKED: set[str] = set()


@dataclass(frozen=True)
class Pass:
    """One pass of a method's step over its tensors.

    ``arrays``: the names of the per-tensor arrays the kernels read and write, in the native
    kernel's order (a compiled kernel takes them flat in the same order, then the scalars
    tensor). ``native``: the C++ function's name in ``native/<family>.cpp`` (None: no native
    kernel); ``compiled``: the compiled kernel (None: none), which returns the sums named
    ``compiled_sums`` (default: the schema's).
    """

    family: str
    arrays: tuple[str, ...]
    schema: Schema
    native: str | None = None
    compiled: FusedKernel | None = None
    compiled_sums: tuple[str, ...] | None = None
    #: element count of each array when the first has ``n`` (see ``NativeKernel``); None: all
    #: arrays have the first one's count. The native call checks every buffer against it.
    array_lengths: ArrayLengths | None = None
    #: the compiled kernel of an earlier pass does this pass's work too (one compiled call holds
    #: a whole tensor, so e.g. a per-tensor norm needs no second sweep): no compiled kernel of
    #: its own, and :meth:`Plan.run` skips the compiled rows
    compiled_folded: bool = False
    #: the compiled kernel's arrays where they differ from ``arrays`` (one that folds a later
    #: pass in reads that pass's arrays too); None: ``arrays``
    compiled_arrays: tuple[str, ...] | None = None
    _kernel: NativeKernel | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.native is not None:
            # passes that share a native function share its kernel (and its fused_status line)
            key = (self.family, self.native)
            kernel = _NATIVE_KERNELS.get(key)
            if kernel is None:
                kernel = _NATIVE_KERNELS[key] = NativeKernel(
                    self.family,
                    self.native,
                    arrays=len(self.arrays),
                    sums=len(self.schema.sums),
                    constants=len(self.schema.scalars),
                    tensor_constants=len(self.schema.tensor_scalars),
                    array_lengths=self.array_lengths,
                )
            elif kernel.arrays != len(self.arrays) or kernel.constants != len(self.schema.scalars):
                raise ValueError(
                    f"{kernel.qualified_name}: passes disagree on its arrays or scalars"
                )
            object.__setattr__(self, "_kernel", kernel)
        schemas = _SCHEMAS.setdefault(self.family, [])
        if all(s.struct != self.schema.struct for s in schemas):
            schemas.append(self.schema)
        elif self.schema not in schemas:
            raise ValueError(f"two different schemas named {self.schema.struct}")

    def native_available(self) -> bool:
        """Whether the native kernel can run (builds the family on the first call)."""
        if self._kernel is None or not self._kernel.available():
            return False
        if self.family not in _CHECKED:
            check_schemas(self.family)
            _CHECKED.add(self.family)
        return True


# -- generated C++ declarations ---------------------------------------------------------------

_BEGIN = "// BEGIN lrlab schema"
_END = "// END lrlab schema"


def render_schemas(family: str) -> str:
    """The block of generated structs for ``family``'s source, markers included."""
    body = "\n".join(schema.render() for schema in _SCHEMAS.get(family, []))
    return (
        f"{_BEGIN}: generated from the Python schemas by lrlab.optim._executor (do not edit)\n"
        f"{body}\n{_END}"
    )


def _source_block(family: str) -> str:
    text = (_SOURCES / f"{family}.cpp").read_text()
    start, end = text.find(_BEGIN), text.find(_END)
    if start < 0 or end < 0:
        return ""
    return text[start : end + len(_END)]


def check_schemas(family: str) -> None:
    """Raise if ``native/<family>.cpp`` does not hold the structs of the Python schemas."""
    if _source_block(family) != render_schemas(family):
        raise RuntimeError(
            f"native/{family}.cpp: the generated schema block differs from the Python "
            f"declarations; regenerate it with lrlab.optim._executor.write_schemas({family!r})"
        )


def write_schemas(family: str) -> None:
    """Write (or replace) the generated block in ``native/<family>.cpp`` (a developer tool)."""
    path = _SOURCES / f"{family}.cpp"
    text = path.read_text()
    old = _source_block(family)
    block = render_schemas(family)
    if old:
        text = text.replace(old, block)
    else:
        marker = '#include "driver.h"\n'
        text = text.replace(marker, f"{marker}\n{block}\n", 1)
    path.write_text(text)


# -- routing ----------------------------------------------------------------------------------

Row = Mapping[str, Tensor]


@dataclass
class Plan:
    """Where the rows (one mapping of named arrays per parameter) of one group go.

    ``native``: row indices by dtype (every pass of these rows runs native); ``compiled``: row
    indices the compiled kernels take; ``reference``: the others, for the method's reference
    loop. Made by :func:`route`.
    """

    rows: Sequence[Row]
    native: dict[torch.dtype, list[int]]
    compiled: list[int]
    reference: list[int]

    def run(
        self,
        step: Pass,
        named: Mapping[str, float | Tensor],
        *,
        tensor_scalars: Sequence[Mapping[str, float | Tensor]] | None = None,
        compiled: bool = True,
        only: Sequence[int] | None = None,
    ) -> PassResult:
        """Run ``step`` on the native and compiled rows of the plan.

        ``named``: the pass's scalars; ``tensor_scalars``: one mapping per row (all rows);
        ``compiled=False`` sends this pass's compiled rows to the reference loop instead;
        ``only``: restrict to these row indices (e.g. the rows whose group takes part).
        """
        schema = step.schema
        values = schema.values(named)
        keep = None if only is None else set(only)
        result = PassResult(schema)
        for dtype, indices in self.native.items():
            chosen = [i for i in indices if keep is None or i in keep]
            if not chosen:
                continue
            rows = [tuple(self.rows[i][name] for name in step.arrays) for i in chosen]
            per_tensor = None
            if schema.tensor_scalars:
                assert tensor_scalars is not None, f"{schema.struct} needs tensor scalars"
                # (a device scalar of a capturable step on the CPU: reading it costs no sync)
                per_tensor = [tuple(map(float, schema.row(tensor_scalars[i]))) for i in chosen]
            assert step._kernel is not None
            # a device scalar of a capturable step on the CPU: reading it costs no device sync
            host = [float(value) for value in values]
            sums = step._kernel(rows, host, per_tensor)
            assert sums is not None  # plan() checked that the kernel is available
            result.native[dtype] = sums
            result.native_rows[dtype] = chosen
        for i in self.compiled:
            if (keep is not None and i not in keep) or step.compiled_folded:
                continue
            if not compiled or step.compiled is None:
                result.reference.append(i)
                continue
            row = self.rows[i]
            names = step.arrays if step.compiled_arrays is None else step.compiled_arrays
            like = row[names[0]]
            # a compiled call takes its tensor scalars after the pass's (one tensor per call)
            own = schema.row(tensor_scalars[i]) if tensor_scalars is not None else ()
            if any(isinstance(value, Tensor) for value in own):
                # a device scalar of its own (a capturable step): stacked on the device per call
                constants = scalars((*values, *own), like)
            else:
                key = (like.device, like.dtype, own)
                if key not in result._constants:
                    result._constants[key] = scalars((*values, *own), like)
                constants = result._constants[key]
            out = step.compiled(*(flat(row[name]) for name in names), constants)
            names = schema.sums if step.compiled_sums is None else step.compiled_sums
            if names:
                parts = out if isinstance(out, tuple) else (out,)
                result.compiled.append(dict(zip(names, parts, strict=True)))
                result.compiled_rows.append(i)
        return result


@dataclass
class PassResult:
    """The sums of one pass: per native dtype a float64 ``(rows, sums)`` tensor, per compiled
    row a mapping of 0-d sums; ``reference`` lists the compiled rows this pass left to the
    reference loop (``compiled=False``)."""

    schema: Schema
    native: dict[torch.dtype, Tensor] = field(default_factory=dict)
    compiled: list[dict[str, Tensor]] = field(default_factory=list)
    reference: list[int] = field(default_factory=list)
    #: the row indices behind ``native`` (per dtype, in its rows' order) and ``compiled``
    native_rows: dict[torch.dtype, list[int]] = field(default_factory=dict)
    compiled_rows: list[int] = field(default_factory=list)
    _constants: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)

    def by_row(self) -> dict[int, Tensor]:
        """Each kernel row's sums as one vector in the schema's order, by row index: a native
        row's in float64 (on the CPU), a compiled row's in its kernel's dtype. For a method whose
        per-tensor sums are per-block statistics (a block is one tensor, or the rows are summed
        in parameter order)."""
        rows: dict[int, Tensor] = {}
        for dtype, table in self.native.items():
            rows.update(zip(self.native_rows[dtype], table.unbind(0), strict=True))
        for index, sums in zip(self.compiled_rows, self.compiled, strict=True):
            rows[index] = torch.stack([sums[name] for name in self.schema.sums])
        return rows

    def native_totals(self, combine: Callable[[Callable[[str], Tensor]], Tensor]) -> list[Tensor]:
        """One total per native dtype of a per-tensor combination of the sums, e.g.
        ``lambda sum: sum("new") - sum("old")``, in the accumulation dtype."""
        totals = []
        for dtype, sums in self.native.items():

            def column(name: str, sums: Tensor = sums) -> Tensor:
                return sums[:, self.schema.sums.index(name)]

            totals.append(combine(column).sum().to(accumulation_dtype(dtype)))
        return totals

    def native_by_row(self, name: str) -> dict[int, float]:
        """The sum ``name`` of every native row, by row index, as Python floats (one transfer
        per dtype): e.g. a per-tensor norm that the next pass takes as a tensor scalar."""
        index = self.schema.sums.index(name)
        return {
            row: value
            for dtype, sums in self.native.items()
            for row, value in zip(self.native_rows[dtype], sums[:, index].tolist(), strict=True)
        }

    def parts(self, name: str, dtype: torch.dtype | None = None) -> list[Tensor]:
        """The sum ``name`` as 0-d parts: each compiled row's (its dtype), then one total per
        native dtype, in that dtype's accumulation dtype (as the reference path sums it);
        ``dtype``: every part in this dtype instead (float64: a statistic the native kernels
        sum in double keeps its precision)."""
        index = self.schema.sums.index(name)
        parts = [sums[name] if dtype is None else sums[name].to(dtype) for sums in self.compiled]
        for native, sums in self.native.items():
            parts.append(sums[:, index].sum().to(dtype or accumulation_dtype(native)))
        return parts


def route(group: Mapping[str, Any], rows: Sequence[Row], passes: Sequence[Pass]) -> Plan:
    """Route the rows of one group between the native kernels (every array of every pass
    eligible, the group allows it, the kernels built), the compiled kernels (``fused=True``
    and every array flat-eligible) and the reference loop."""
    native: dict[torch.dtype, list[int]] = {}
    compiled: list[int] = []
    reference: list[int] = []
    use_native = native_requested(group) and all(
        step.native_available() for step in passes if step.native is not None
    )
    has_native = any(step.native is not None for step in passes)
    # a tensor the compiled kernels take must find one for every pass
    has_compiled = all(step.compiled is not None or step.compiled_folded for step in passes)
    use_compiled = compiled_requested(group) and has_compiled
    # by default a GPU tensor's elementwise work goes to the compiled kernels (the native ones
    # are CPU only); on the CPU, compiling must be asked for (fused=True)
    gpu_default = has_compiled and group.get("fused", False) is None
    for index, row in enumerate(rows):
        tensors = list(row.values())
        if use_native and has_native and native_eligible(*tensors):
            native.setdefault(tensors[0].dtype, []).append(index)
        elif (
            use_compiled or (gpu_default and tensors[0].device.type in ("cuda", "xpu"))
        ) and flat_eligible(*tensors):
            compiled.append(index)
        else:
            reference.append(index)
    return Plan(list(rows), native, compiled, reference)
