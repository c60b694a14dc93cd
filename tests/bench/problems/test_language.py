"""The transformer language model on the standard library's source: corpus, model, contract."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from torch import nn

from lrlab.bench.problems import build, get_problem, problem_names
from lrlab.bench.problems.language import (
    LanguageModelInstance,
    TransformerLM,
    _windows,
    stdlib_corpus,
)
from lrlab.bench.spec import Goal

from ._fd import check_gradient, first_batch, parameters

# small enough for fast tests, large enough to have several windows in each part
SMALL = {"max_train_bytes": 4096, "max_test_bytes": 1024, "context": 8}


def make(seed: int = 0, **kwargs) -> LanguageModelInstance:
    instance = build("stdlib_transformer", seed, **{**SMALL, **kwargs})
    assert isinstance(instance, LanguageModelInstance)
    return instance


def test_registered_with_its_metric_and_budget() -> None:
    assert "stdlib_transformer" in problem_names("language")
    info = get_problem("stdlib_transformer").info
    assert (info.metric, info.goal) == ("test_bits_per_byte", Goal.MINIMIZE)
    assert info.default_batch_size == 16 and info.default_steps == 200


def test_gradient_matches_finite_differences() -> None:
    instance = make(width=0.125, layers=2, dtype="float64")
    check_gradient(instance, first_batch(instance, 3))


def test_architecture_at_the_defaults() -> None:
    model = build("stdlib_transformer", 0, max_train_bytes=4096, max_test_bytes=1024).model
    assert isinstance(model, TransformerLM)
    width, layers = 64, 4
    per_block = 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width)
    per_block += (4 * width * width + 4 * width) + (4 * width * width + width)
    expected = 256 * width + 64 * width + layers * per_block + 2 * width + width * 256 + 256
    assert sum(p.numel() for p in model.parameters()) == expected == 237_184
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * layers + 1  # pre-LN: two per block and a final one
    assert all(torch.equal(m.weight, torch.ones(width)) for m in norms)
    # GPT-2's scheme: N(0, 0.02^2), residual projections N(0, 0.02^2 / (2L)), biases 0
    with torch.no_grad():
        assert float(model.embedding.weight.std()) == pytest.approx(0.02, rel=0.05)
        out = model.blocks[0].attention.out
        assert float(out.weight.std()) == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
        assert float(model.blocks[0].mlp[0].bias.abs().max()) == 0.0


def test_attention_is_causal() -> None:
    instance = make()
    tokens = instance.windows[0][:2, :-1].clone()
    with torch.no_grad():
        before = instance.model(tokens)
        changed = tokens.clone()
        changed[:, 5:] = (changed[:, 5:] + 1) % 256  # change the future only
        after = instance.model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=0)
    assert not torch.equal(before[:, 5:], after[:, 5:])


def test_batches_are_windows_and_shifted_targets() -> None:
    instance = make()
    batch = first_batch(instance, 5)
    train, _ = instance.windows
    assert batch.inputs.shape == (5, 8) and batch.targets.shape == (5, 8)
    assert torch.equal(batch.inputs, train[batch.indices, :-1])
    assert torch.equal(batch.targets, train[batch.indices, 1:])
    assert instance.num_train_examples == len(train) == 4096 // 9


def test_determinism_and_no_global_rng() -> None:
    state = torch.get_rng_state()
    a, b = make(), make()
    assert torch.equal(state, torch.get_rng_state())
    for p, q in zip(parameters(a), parameters(b), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(parameters(make(seed=1))[0], parameters(a)[0])


def test_evaluation_is_loss_per_byte_and_bits() -> None:
    instance = make(eval_limit=7, dtype="float64")
    metrics = instance.evaluate()
    assert set(metrics) == {"train_loss", "test_loss", "test_bits_per_byte"}
    _, test = instance.windows
    with torch.no_grad():
        logits = instance.model(test[:7, :-1])
    expected = nn.functional.cross_entropy(logits.flatten(0, 1), test[:7, 1:].flatten())
    assert metrics["test_loss"] == pytest.approx(float(expected), rel=1e-12)
    assert metrics["test_bits_per_byte"] == pytest.approx(metrics["test_loss"] / math.log(2))
    # untrained: close to uniform over 256 bytes, 8 bits per byte
    assert 7.5 < metrics["test_bits_per_byte"] < 8.5


def _write(root, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_the_split_is_by_file_from_the_path_hash(tmp_path) -> None:
    files = {f"pkg{i % 3}/mod{i}.py": f"# module {i}\n".encode() * 3 for i in range(40)}
    files["site-packages/big.py"] = b"x" * 1000  # never read
    files["__pycache__/c.py"] = b"y" * 1000
    files["notes.txt"] = b"z" * 1000
    _write(tmp_path, files)
    corpus = stdlib_corpus(0.25, 10**6, 10**6, str(tmp_path))
    sources = [name for name in files if name.startswith("pkg")]
    test_names = {name for name in sources if hashlib.sha256(name.encode()).digest()[0] < 64}
    assert 0 < corpus.test_files == len(test_names) < 40
    assert corpus.train_files == 40 - len(test_names)
    text_test, text_train = corpus.test.decode(), corpus.train.decode()
    for name in sources:
        number = int(name.split("mod")[1][:-3])
        marker = f"# module {number}\n"
        assert (marker in text_test) == (name in test_names)
        assert (marker in text_train) == (name not in test_names)
    everything = corpus.train + corpus.test
    assert b"xxxx" not in everything and b"yyyy" not in everything and b"zzzz" not in everything


def test_the_corpus_is_capped_and_errors_are_clear(tmp_path) -> None:
    _write(tmp_path, {f"m{i}.py": bytes([65 + i % 26]) * 100 for i in range(60)})
    corpus = stdlib_corpus(0.5, 250, 130, str(tmp_path))
    assert len(corpus.train) == 250 and len(corpus.test) == 130
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"needs at least 2 of each"):
        stdlib_corpus(0.5, 100, 100, str(empty))


def test_windows_cut_consecutive_bytes() -> None:
    windows = _windows(b"abcdefghij", 2)
    assert windows.tolist() == [list(b"abc"), list(b"def"), list(b"ghi")]
    assert _windows(b"ab", 4).tolist() == [list(b"ab\n\n\n")]


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"context must be in \[1, 4096\], got 0"):
        build("stdlib_transformer", 0, context=0)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        build("stdlib_transformer", 0, test_fraction=1.0)
    with pytest.raises(ValueError, match=r"has no argument 'root'"):
        build("stdlib_transformer", 0, root="/tmp")
