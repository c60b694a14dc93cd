"""Hyperparameters under torch's names, with the paper's names kept as aliases.

NOTE [torch names of hyperparameters]
torch's schedulers and the frameworks built on them address hyperparameters by torch's names:
every scheduler scales ``param_group["lr"]``, and ``OneCycleLR(cycle_momentum=True)`` cycles
``param_group["momentum"]`` (or ``betas[0]``). A method whose paper calls its momentum ``beta``
stores the value under ``"momentum"`` (what a scheduler writes) and keeps ``"beta"`` in the
group as a copy that the update reads: ``AdaptiveOptimizer.step`` refreshes the copy from the
torch name before every update (a class declares the pairs in ``torch_names``). The
constructor and ``add_param_group`` take either name; giving both with different values is an
error. Writing the paper's name in a param group after construction has no effect: write the
torch name.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["resolve_alias", "sync_paper_names", "torch_name_from_alias"]


def resolve_alias(
    torch_name: str, torch_value: Any, paper_name: str, paper_value: Any, default: Any
) -> Any:
    """The value of a hyperparameter given under its torch name, its paper name, or neither.

    Raises:
        ValueError: both names given with different values.
    """
    if torch_value is not None and paper_value is not None and torch_value != paper_value:
        raise ValueError(
            f"{torch_name} and {paper_name} are the same hyperparameter ({paper_name} is the "
            f"paper's name); got {torch_name}={torch_value!r} and {paper_name}={paper_value!r}"
        )
    if torch_value is not None:
        return torch_value
    return default if paper_value is None else paper_value


def torch_name_from_alias(param_group: MutableMapping[str, Any], names: Mapping[str, str]) -> None:
    """A param group given with the paper's name gets the torch name (``add_param_group``)."""
    for torch_name, paper_name in names.items():
        if paper_name in param_group:
            value = resolve_alias(
                torch_name, param_group.get(torch_name), paper_name, param_group[paper_name], None
            )
            param_group[torch_name] = value


def sync_paper_names(param_groups: list[dict[str, Any]], names: Mapping[str, str]) -> None:
    """Copy each torch-named value to its paper name (before every update)."""
    for torch_name, paper_name in names.items():
        for group in param_groups:
            if torch_name in group:
                group[paper_name] = group[torch_name]
            elif paper_name in group:  # a checkpoint written before the torch name existed
                group[torch_name] = group[paper_name]
