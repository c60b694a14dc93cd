"""Named studies shipped with lrlab: data in ``lrlab/bench/presets/<name>.toml``, not code.

Each file is a study in the format of :mod:`lrlab.bench.studyfile`. ``smoke`` covers one problem of
each kind (synthetic, logistic, vision) and finishes in under a minute on 2 cores; it is what
``make demo`` runs.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import TYPE_CHECKING

from lrlab.bench.studyfile import Study, StudyError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_preset", "preset_names"]


def _directory() -> Traversable:
    return resources.files("lrlab.bench") / "presets"


def preset_names() -> list[str]:
    """The shipped presets, sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _directory().iterdir()
        if entry.is_file() and entry.name.endswith(".toml")
    )


def load_preset(name: str) -> Study:
    """The study of preset ``name``.

    Raises:
        StudyError: no such preset (the message lists the presets there are).
    """
    names = preset_names()
    if name not in names:
        raise StudyError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    text = (_directory() / f"{name}.toml").read_text()
    return Study.from_mapping(tomllib.loads(text), source=f"preset {name!r}")
