"""The shared fast-path executor (lrlab/optim/_executor.py): schemas, generated C++, routing.

What each method's passes compute is checked in the conformance suite (every fast path against
the for-loop path in float64) and the oracle tests.
"""

from __future__ import annotations

import pytest
import torch

from lrlab.optim import _executor, _native
from lrlab.optim._executor import Schema, check_schemas, render_schemas, route

FAMILIES = sorted(_executor._SCHEMAS)


def test_scalars_are_ordered_by_name_and_checked() -> None:
    schema = Schema("Example", scalars=("beta", "scale"), sums=("total",))
    assert schema.values({"scale": 2.0, "beta": 0.5}) == (0.5, 2.0)
    with pytest.raises(ValueError, match=r"missing \['scale'\], unknown \['sclae'\]"):
        schema.values({"beta": 0.5, "sclae": 2.0})
    c = torch.tensor([0.5, 2.0])
    read = schema.read(c)
    assert float(read["beta"]) == 0.5 and float(read["scale"]) == 2.0


def test_schema_names_are_validated() -> None:
    with pytest.raises(ValueError, match="not a snake_case name"):
        Schema("Bad", scalars=("Beta",))
    with pytest.raises(ValueError, match="duplicate names"):
        Schema("Bad", scalars=("beta", "beta"))


def test_render_declares_every_name_in_order() -> None:
    schema = Schema("Example", scalars=("beta", "scale"), tensor_scalars=("flag",), sums=("a", "b"))
    text = schema.render()
    assert text.index("double beta;") < text.index("double scale;")
    assert "struct ExampleScalars" in text and "kCount = 2;" in text
    assert "struct ExampleTensorScalars" in text and "double flag;" in text
    assert "enum : int { a, b, kCount };" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_sources_hold_the_generated_schemas(family: str) -> None:
    # the C++ reads its scalars by these names: a source out of step with the Python
    # declaration (a scalar added, renamed or moved on one side only) must not build
    check_schemas(family)
    assert render_schemas(family) in (_executor._SOURCES / f"{family}.cpp").read_text()


def test_a_source_out_of_step_with_its_schema_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # two scalars swapped on the Python side only
    family, index, schema = next(
        (family, index, schema)
        for family in FAMILIES
        for index, schema in enumerate(_executor._SCHEMAS[family])
        if len(schema.scalars) >= 2
    )
    swapped = (schema.scalars[1], schema.scalars[0], *schema.scalars[2:])
    changed = Schema(schema.struct, swapped, schema.tensor_scalars, schema.sums)
    schemas = list(_executor._SCHEMAS[family])
    schemas[index] = changed
    monkeypatch.setitem(_executor._SCHEMAS, family, schemas)
    with pytest.raises(RuntimeError, match="differs from the Python declarations"):
        check_schemas(family)


def _rows(*tensors: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"x": t, "y": t.clone()} for t in tensors]


def _prodigy_step_pass() -> _executor.Pass:
    from lrlab.optim import prodigy

    return prodigy._STEP


def test_route_by_group_setting_and_eligibility(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    step = _prodigy_step_pass()
    assert step.native_available(), _native.native_status()
    rows = _rows(torch.zeros(8), torch.zeros(4, dtype=torch.float64), torch.zeros(3, 4).t())
    rows.append({"x": torch.zeros(5, dtype=torch.bfloat16), "y": torch.zeros(5)})
    # the default (None) and True: native by dtype where eligible, the rest to the reference
    for fused in (None, True):
        plan = route({"fused": fused}, rows, (step,))
        assert plan.native == {torch.float32: [0], torch.float64: [1]}
        assert plan.compiled == [] and plan.reference == [2, 3]  # small: not compiled
    plan = route({"fused": False}, rows, (step,))
    assert plan.native == {} and plan.reference == [0, 1, 2, 3]
    plan = route({}, rows, (step,))  # saved before the fused path existed: its old path
    assert plan.native == {}
    # no native kernels: nothing is native, and nothing warns
    monkeypatch.setenv("LRLAB_DISABLE_NATIVE", "1")
    assert route({"fused": None}, rows, (step,)).reference == [0, 1, 2, 3]


def test_route_sends_large_tensors_to_the_compiled_kernels_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lrlab.optim import _fused

    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)
    monkeypatch.setenv("LRLAB_DISABLE_NATIVE", "1")
    step = _prodigy_step_pass()
    rows = _rows(torch.zeros(8))
    assert route({"fused": True}, rows, (step,)).compiled == [0]
    assert route({"fused": None}, rows, (step,)).compiled == []


def test_passes_sharing_a_native_function_share_its_kernel() -> None:
    # DAdaptAdam's two first passes (with and without the move) call one C++ function: one
    # kernel object, so fused_status() has one line for it that says whether it ran
    from lrlab.optim import dadaptation

    assert dadaptation._ADAM_MOMENTS._kernel is dadaptation._ADAM_MOMENTS_AND_STEP._kernel
    names = [kernel.qualified_name for kernel in _native._KERNELS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_a_folded_pass_skips_the_compiled_rows_and_native_sums_come_by_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # CLARA-auto's path pass: its compiled kernel is folded into the move pass's (which does the
    # whole step of a tensor), so the compiled rows must not be touched again
    from lrlab.optim import _fused, clara_auto

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)
    move, path = clara_auto._MOVE, clara_auto._PATH
    assert path.native_available(), _native.native_status()

    def row(n: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        ones = torch.ones(n, dtype=dtype)
        return {
            "grad": ones,
            "p": ones.clone(),
            "m": ones.clone(),
            "v": ones.clone(),
            "displacement": torch.zeros(n),
            "path": torch.zeros(n, dtype=dtype),
        }

    rows = [row(3, torch.float64), row(4, torch.bfloat16), row(5, torch.float32)]
    rows[0]["displacement"] = rows[0]["displacement"].double()
    plan = route({"fused": True}, rows, (move, path))
    assert plan.native == {torch.float64: [0], torch.float32: [2]} and plan.compiled == [1]
    own = [{"bias_correction2": 1.0, "norm": 2.0}] * 3
    result = plan.run(path, {"eps": 0.0, "c": 0.5}, tensor_scalars=own)
    assert result.compiled == [] and result.reference == []
    assert torch.equal(rows[1]["path"], torch.zeros(4, dtype=torch.bfloat16))
    # q = g / sqrt(v) = 1, path = 0.5 q / 2 = 0.25 per element
    assert result.native_by_row("path") == {0: 3 * 0.0625, 2: 5 * 0.0625}
    torch.testing.assert_close(rows[2]["path"], torch.full((5,), 0.25))


def test_native_totals_take_the_accumulation_dtype_unless_told() -> None:
    # a float32 tensor's per-tensor sums come back in float64; the reference path adds <a, b>
    # in float32, but per-tensor state values (MoMo's gammas) in float64
    schema = Schema("Totals", scalars=(), sums=("dot", "kept"))
    third = 1.0 / 3.0
    sums = torch.tensor([[third, third], [third, third]], dtype=torch.float64)
    result = _executor.PassResult(schema, native={torch.float32: sums})
    (dot,) = result.parts("dot")
    (kept,) = result.parts("kept", dtype=torch.float64)
    assert dot.dtype == torch.float32 and dot.item() == torch.tensor(2 * third).float().item()
    assert kept.dtype == torch.float64 and kept.item() == 2 * third


def test_pass_result_parts_in_a_requested_dtype() -> None:
    # a float32 tensor's native sums come back in double: by default totalled in float32 (as
    # the reference path sums), in float64 when asked (a statistic that keeps its precision)
    schema = Schema("Example", scalars=(), sums=("total",))
    result = _executor.PassResult(schema)
    result.native[torch.float32] = torch.tensor([[1.0], [1e-9]], dtype=torch.float64)
    result.compiled.append({"total": torch.tensor(2.0, dtype=torch.float32)})
    (compiled, native) = result.parts("total")
    assert native.dtype == torch.float32 and float(native) == 1.0
    (compiled, native) = result.parts("total", torch.float64)
    assert compiled.dtype == native.dtype == torch.float64
    assert float(native) == 1.0 + 1e-9
