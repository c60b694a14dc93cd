"""Tiny models and data shared by the integration tests (no downloads, a few hundred params)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

# the HF tests never reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import lrlab.optim as lo

N_EXAMPLES = 32
FEATURES = 4


def build(name: str, params: Any, **overrides: Any) -> torch.optim.Optimizer:
    """The method with its first sample kwargs (num_examples fixed to the test data's size)."""
    spec = lo.spec(name)
    kwargs = dict(spec.sample_kwargs[0])
    if spec.needs_example_index:
        kwargs["num_examples"] = N_EXAMPLES
    kwargs.update(overrides)
    return lo.create(name, params, **kwargs)


class IndexedRegression(torch.utils.data.Dataset):
    """y = tanh(x w) + noise; items are dicts with the example's index."""

    def __init__(self, n: int = N_EXAMPLES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=generator)
        w = torch.randn(FEATURES, 1, generator=generator)
        self.y = torch.tanh(self.x @ w) + 0.1 * torch.randn(n, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "index": i}


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


class TokenData(torch.utils.data.Dataset):
    """Random token sequences for a causal LM; items carry their index."""

    def __init__(self, n: int = N_EXAMPLES, length: int = 8, vocab: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, length), generator=generator)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i], "index": i}


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """GPT-2 from a config (no download): 1 layer, 2 heads, width 8, vocabulary 32."""
    import transformers

    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=8,
        vocab_size=32,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)
