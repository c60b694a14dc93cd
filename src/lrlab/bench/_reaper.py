"""A watchdog process that kills a sweep driver's descendants once the driver is gone.

Run as ``python _reaper.py DRIVER_PID`` (by path, so it imports nothing but the standard
library). Every half second it records the driver's descendants (from ``/proc``: process id
and start time); once the driver has exited, however it exited (``kill -9`` included), it sends
SIGKILL to every recorded process that still runs with the same start time, so a reused process
id is never hit, and exits. The driver stops it when it shuts down normally.

It covers what the workers' own protection cannot: a local Ray instance's raylet, agents and
workers (descendants of the driver that started it, some of which do not follow it when it
dies), a local worker killed while still starting up (before it could ask to die with its
parent) and multiprocessing's resource tracker. Linux only (it needs ``/proc``); elsewhere it
exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

POLL_S = 0.5


def _stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, start time)`` of a live process, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """``{pid: start time}`` of every live descendant of ``root``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _stat(int(name))
            if found is not None:
                children.setdefault(found[0], []).append((int(name), found[1]))
    result: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), ()):
            if pid not in result:
                result[pid] = start
                todo.append(pid)
    return result


def watch(driver: int) -> None:
    """Record ``driver``'s descendants until it is gone, then kill them."""
    me = os.getpid()
    driver_start = _stat(driver)
    seen: dict[int, str] = {}
    while driver_start is not None and (_stat(driver) or (0, ""))[1] == driver_start[1]:
        seen.update(descendants(driver))
        seen.pop(me, None)
        time.sleep(POLL_S)
    # the tree as it is now, before anything is killed: a process started since the last poll
    # (a Ray worker the raylet just spawned) is found under its still-living parent here, while
    # once that parent is killed it would be re-parented out of reach
    for pid in list(seen):
        seen.update(descendants(pid))
    for _ in range(3):  # processes started while the driver died get a second look
        for pid, start in list(seen.items()):
            found = _stat(pid)
            if found is not None and found[1] == start:
                with contextlib.suppress(OSError):  # it may have just exited
                    os.kill(pid, signal.SIGKILL)
            seen.update(descendants(pid))
        time.sleep(POLL_S)


if __name__ == "__main__":
    if sys.platform.startswith("linux") and len(sys.argv) == 2:
        watch(int(sys.argv[1]))
