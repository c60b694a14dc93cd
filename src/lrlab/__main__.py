"""``python -m lrlab`` and the ``lrlab`` console script.

Besides dispatching to :mod:`lrlab.bench.cli`, this entry point handles two things every command
shares: a closed output pipe (``lrlab list | head -1``) ends the process quietly, and a missing
optional dependency ends it with the ``pip install 'lrlab[EXTRA]'`` line that brings it, instead
of a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# exit status of a process ended by SIGPIPE (128 + 13), what shells report for `cmd | head`
BROKEN_PIPE_EXIT = 141

# top-level modules of each optional extra (pyproject.toml), for the "missing extra" message
EXTRA_MODULES = {
    "bench": ("numpy", "sklearn", "scipy", "matplotlib", "pandas", "mlxtend", "mnist1d"),
    "ray": ("ray",),
}


def missing_extra_message(module: str | None) -> str | None:
    """The message for a missing optional dependency ``module`` (a top-level or dotted module
    name), or None when ``module`` belongs to no extra."""
    top = (module or "").partition(".")[0]
    for extra, modules in EXTRA_MODULES.items():
        if top in modules:
            return (
                f"lrlab: error: this command needs the {extra!r} extra ({top} is not installed): "
                f"pip install 'lrlab[{extra}]'"
            )
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured): nothing to flush
        pass
    finally:
        os.close(devnull)


def _terminate_like_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a scheduler's time limit) stops a command as Ctrl-C does: a sweep
    records the runs it stored and their measured time, shuts its workers down and exits 130;
    without this a terminated study lost the timing of its last invocation."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the lrlab command line; returns the process exit code."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _terminate_like_interrupt)
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        # answered without importing torch (the parser's own --version says the same, slower)
        from lrlab import __version__

        print(f"lrlab {__version__}")
        return 0
    try:
        from lrlab.bench.cli import main as cli_main

        code = cli_main(argv)
        # flush here, inside the handler: a pipe closed by the reader surfaces now
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_EXIT
    except ModuleNotFoundError as error:
        message = missing_extra_message(error.name)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
