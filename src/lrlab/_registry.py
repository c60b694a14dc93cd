"""A small name -> record registry shared by ``lrlab.optim`` and ``lrlab.bench.problems``.

Names are kebab-case (``clara-adam``) for methods and snake-case ``dataset_model`` for problems; the
registry itself only enforces uniqueness and a caller-supplied name pattern. Looking up an unknown
name raises :class:`UnknownNameError`, whose message lists the closest valid names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownNameError"]

RecordT = TypeVar("RecordT")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message names the closest valid ones."""

    def __str__(self) -> str:
        # KeyError.__str__ would print the repr of the message (with quotes).
        return str(self.args[0]) if self.args else ""


class Registry(Generic[RecordT]):
    """An ordered mapping from names (and aliases) to records.

    Args:
        kind: what the registry holds, used in error messages ("method", "problem").
        pattern: regular expression every canonical name must match in full.
    """

    def __init__(self, kind: str, pattern: str) -> None:
        self._kind = kind
        self._pattern = re.compile(pattern)
        self._records: dict[str, RecordT] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, record: RecordT, aliases: tuple[str, ...] = ()) -> None:
        """Register ``record`` under ``name`` and ``aliases``; a name may be taken only once."""
        if not self._pattern.fullmatch(name):
            raise ValueError(
                f"{self._kind} name {name!r} does not match the naming rule "
                f"{self._pattern.pattern!r}"
            )
        for key in (name, *aliases):
            if key in self._records or key in self._aliases:
                raise ValueError(f"{self._kind} name {key!r} is already registered")
        self._records[name] = record
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The canonical name for ``name`` or one of its aliases."""
        if name in self._records:
            return name
        if name in self._aliases:
            return self._aliases[name]
        candidates = [*self._records, *self._aliases]
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UnknownNameError(
            f"unknown {self._kind} {name!r}{hint}. Valid {self._kind}s: {', '.join(self._records)}"
        )

    def get(self, name: str) -> RecordT:
        """The record registered under ``name`` (or an alias)."""
        return self._records[self.canonical(name)]

    def names(self) -> list[str]:
        """Canonical names in registration order."""
        return list(self._records)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._records or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)
