"""Output paths that stay where they belong, and names that are safe to put in them.

Every file the lab writes is named from data it does not control: problem and method labels read
from a store (which anyone can craft), study names from a TOML file or the command line. These
helpers are the one place that turns such a name into a path:

* :func:`check_study_name` accepts a study name only if it matches :data:`STUDY_NAME_PATTERN`
  (it becomes ``results/NAME.sqlite`` and ``docs/studies/NAME.md``), and says so otherwise;
* :func:`safe_file_stem` maps any label to a file-name stem of safe characters (unchanged when it
  already is one; otherwise the cleaned text plus a short hash of the original, so two labels
  never collide);
* :func:`confined` joins a root and a relative name and refuses any result that leaves the root
  (``..``, an absolute part, a symbolic link pointing out);
* :func:`check_output_file` / :func:`check_output_dir` tell, before any work is done, why a path
  cannot be written (a directory where a file is needed, a file where a directory is needed, a
  read-only location), so a long computation never ends in an unwritable path.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "STUDY_NAME_PATTERN",
    "OutputPathError",
    "check_output_dir",
    "check_output_file",
    "check_study_name",
    "confined",
    "safe_file_stem",
]

STUDY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
"""A study name: a letter or digit, then up to 99 letters, digits, ``_``, ``.`` or ``-``."""

_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=,()\[\]-]{0,149}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_.+=,()\[\]-]")


class OutputPathError(ValueError):
    """A name or output path that cannot be used; the message names it and says why."""


def check_study_name(name: object) -> str:
    """``name`` if it is a valid study name (see :data:`STUDY_NAME_PATTERN`), else an error."""
    if not isinstance(name, str) or not re.fullmatch(STUDY_NAME_PATTERN, name):
        raise OutputPathError(
            f"bad study name {name!r}: a study name starts with a letter or digit and has up to "
            "100 letters, digits, '_', '.' or '-' (it names results/NAME.sqlite and the docs page)"
        )
    return name


def safe_file_stem(label: str) -> str:
    """A file-name stem for ``label``: the label itself if it is made of safe characters
    (letters, digits and ``_ . + = , ( ) [ ] -``, not starting with a dot or a dash), otherwise
    the label with every other character replaced by ``_`` and 10 hex digits of its SHA-256
    appended, so that distinct labels keep distinct file names."""
    if _SAFE_STEM.fullmatch(label) and ".." not in label:
        return label
    cleaned = _UNSAFE_CHAR.sub("_", label).replace("..", "__")
    cleaned = re.sub(r"^[^A-Za-z0-9_]+", "", cleaned)[:120] or "_"
    digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned}-{digest}"


def confined(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, checked to stay inside ``root`` (after resolving ``..`` and
    symbolic links); raises :class:`OutputPathError` otherwise."""
    root_path = Path(root)
    for part in parts:
        if "\x00" in part or not part or Path(part).is_absolute():
            raise OutputPathError(f"refusing file name {part!r} under {str(root_path)!r}")
    path = root_path.joinpath(*parts)
    base = root_path.resolve()
    if not path.resolve().is_relative_to(base) or path.resolve() == base:
        raise OutputPathError(
            f"refusing to write {str(path)!r}: the name {'/'.join(parts)!r} leaves the output "
            f"directory {str(root_path)!r}"
        )
    return path


def _first_existing(path: Path) -> Path:
    """The nearest ancestor of ``path`` (itself included) that exists."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable directory."""
    ancestor = _first_existing(path.parent if path.parent != path else path)
    if not ancestor.is_dir():
        raise OutputPathError(f"{what} {str(path)!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{what} {str(path)!r}: cannot create it, {str(ancestor)!r} is not writable"
        )


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file can be written there (it is a writable
    file, or it can be created with its missing parent directories); else
    :class:`OutputPathError` naming ``what``, the path and the reason."""
    path = Path(path)
    if "\x00" in str(path):
        raise OutputPathError(f"{what} {str(path)!r}: a path cannot contain a NUL character")
    if path.is_dir():
        raise OutputPathError(f"{what} {str(path)!r} is a directory, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{what} {str(path)!r} is not writable")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            # SQLite's journal files go beside the database
            raise OutputPathError(
                f"{what} {str(path)!r}: its directory {str(path.parent)!r} is not writable"
            )
        return path
    _check_creatable(path, what)
    return path


def check_output_dir(path: str | Path, what: str = "output directory") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a writable directory or can be created;
    else :class:`OutputPathError` naming ``what``, the path and the reason."""
    path = Path(path)
    if "\x00" in str(path):
        raise OutputPathError(f"{what} {str(path)!r}: a path cannot contain a NUL character")
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{what} {str(path)!r} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {str(path)!r} is not writable")
        return path
    _check_creatable(path, what)
    return path
