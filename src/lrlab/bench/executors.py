"""Where runs execute: local processes (default) or a Ray cluster, behind one interface.

Both executors are :class:`concurrent.futures.Executor`\\ s: ``submit(fn, *args)`` returns a
:class:`concurrent.futures.Future`, so the sweep driver collects results with
:func:`concurrent.futures.as_completed` whatever the backend. Workers only compute: they return
:class:`~lrlab.bench.spec.RunRecord`\\ s and never touch the store (the driver writes it).

* ``local``: a process pool (``spawn`` start method, so workers share no state with the driver)
  of ``workers`` processes, each with one torch thread. A worker builds every run from its
  config, so the records equal those of an in-process :func:`lrlab.bench.runner.run`.
* ``ray`` (``pip install 'lrlab[ray]'``): one Ray task per run with ``num_cpus=1``, on a running
  cluster (``address``: ``"auto"``, ``"host:port"`` or ``"ray://host:10001"``) or on a local
  instance started here with ``workers`` CPUs. Every node needs the same lrlab installed.

Nothing outlives the driver: a killed driver (``kill -9`` included) leaves no process behind.
On Linux each local worker asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``) and also watches its parent's pid once a second (the fallback
where ``prctl`` is missing, and on other platforms). A local Ray instance's processes (raylet,
agents, workers) are killed by a small watchdog process (``_reaper.py``) started beside it,
which records the driver's descendants and kills them once the driver is gone.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import importlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrlab.bench.spec import RunConfig, RunRecord

__all__ = [
    "BACKENDS",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "check_backend",
    "default_workers",
    "execute",
    "make_executor",
]

BACKENDS = ("local", "ray")


class ExecutorError(RuntimeError):
    """An executor that cannot start (missing package, bad argument)."""


def default_workers() -> int:
    """The CPUs this process may use (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _one_thread() -> None:
    """Worker start-up: one torch thread, so workers do not oversubscribe the CPUs and every
    record is computed with the same thread count (reductions can depend on it)."""
    import torch

    torch.set_num_threads(1)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PARENT_POLL_S = 1.0
"""How often a worker checks that its parent (the driver) is alive."""


def _die_with_parent(parent_pid: int, use_deathsig: bool) -> None:
    """Make this process exit when ``parent_pid`` (the driver) dies, however it dies.

    ``use_deathsig``: ask the kernel for SIGKILL at the parent's death (Linux). The kernel ties
    that to the parent *thread* that started this process, so the driver only asks for it when
    that thread is its main thread. A daemon thread checking the parent pid every
    :data:`PARENT_POLL_S` seconds is the fallback everywhere.
    """
    if use_deathsig and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog thread below still works
    if os.getppid() != parent_pid:  # the driver died before the request took effect
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="lrlab-parent-watch", daemon=True
    ).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # orphaned: the driver is gone, nobody will collect this result


def _worker_start(parent_pid: int, use_deathsig: bool) -> None:
    """Local pool worker start-up: follow the driver, one torch thread."""
    _die_with_parent(parent_pid, use_deathsig)
    _one_thread()


def start_reaper() -> subprocess.Popen[bytes] | None:
    """Start the watchdog that kills this process's descendants once it is gone (Linux; None
    elsewhere). Stop it with :func:`stop_reaper` when they have been shut down normally."""
    if not sys.platform.startswith("linux"):
        return None
    script = Path(__file__).with_name("_reaper.py")
    return subprocess.Popen(
        [sys.executable, "-I", str(script), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the driver's terminal does not stop it
    )


def stop_reaper(reaper: subprocess.Popen[bytes] | None) -> None:
    if reaper is not None and reaper.poll() is None:
        reaper.kill()
        reaper.wait()


def execute(config: RunConfig, imports: tuple[str, ...] = ()) -> RunRecord:
    """The task a worker runs: one run, with one torch thread.

    ``imports`` are modules imported first, so that problems or methods they register exist in
    the worker too (``lrlab sweep --import my_problems``).
    """
    from lrlab.bench.runner import run

    _one_thread()
    for module in imports:
        importlib.import_module(module)
    return run(config)


class RayExecutor(concurrent.futures.Executor):
    """Runs each submitted call as a Ray task (``num_cpus=1``); futures are Ray's own
    :class:`concurrent.futures.Future` views of the task results.

    Args:
        address: a running cluster to connect to; None starts a local instance.
        num_cpus: CPUs of a local instance (ignored with ``address``).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as error:
            raise ExecutorError("the ray backend needs Ray: pip install 'lrlab[ray]'") from error
        self._ray = ray
        self._owns_runtime = False
        self._reaper: subprocess.Popen[bytes] | None = None
        if not ray.is_initialized():
            options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if address is not None:
                _check_reachable(address)
                try:
                    ray.init(address=address, **options)
                except (ConnectionError, RuntimeError, ValueError) as error:
                    raise ExecutorError(f"cannot connect to Ray at {address!r}: {error}") from None
            else:
                # the local instance's processes are the driver's descendants: the reaper kills
                # them if the driver is killed (Ray's own clean-up runs only at a normal exit)
                self._reaper = start_reaper()
                ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
            self._owns_runtime = True
        self._task = ray.remote(num_cpus=1)(_ray_call)
        # unfinished tasks only: a finished task's result lives in its Future, and dropping the
        # reference lets Ray free it from the object store
        self._pending: set[Any] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        ref = self._task.remote(fn, *args, **kwargs)
        self._pending.add(ref)
        future = ref.future()
        future.add_done_callback(lambda _, ref=ref: self._pending.discard(ref))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pending = list(self._pending)
        if cancel_futures:
            for ref in pending:
                self._ray.cancel(ref, force=True)
        elif wait and pending:
            self._ray.wait(pending, num_returns=len(pending))
        self._pending.clear()
        if self._owns_runtime:
            self._ray.shutdown()
            self._owns_runtime = False
        stop_reaper(self._reaper)
        self._reaper = None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(f"bad Ray address {address!r}: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ExecutorError(f"no Ray cluster answers at {address!r}: {error}") from None


def _ray_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    _one_thread()
    return fn(*args, **kwargs)


def check_backend(backend: str, address: str | None = None) -> None:
    """Fail early, before any work, on a backend that cannot start (see :func:`make_executor`)."""
    if backend not in BACKENDS:
        raise ExecutorError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "local":
        if address is not None:
            raise ExecutorError("an address is only meaningful with the ray backend")
        return
    try:
        import ray  # noqa: F401
    except ImportError as error:
        raise ExecutorError("the ray backend needs Ray: pip install 'lrlab[ray]'") from error
    if address is not None:
        _check_reachable(address)


def make_executor(
    backend: str = "local", *, workers: int | None = None, address: str | None = None
) -> concurrent.futures.Executor:
    """A fresh executor for ``backend`` (``local`` or ``ray``), see the module docstring."""
    if backend not in BACKENDS:
        raise ExecutorError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ExecutorError(f"workers must be at least 1, got {workers}")
    if backend == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    if address is not None:
        raise ExecutorError("an address is only meaningful with the ray backend")
    return LocalExecutor(workers or default_workers())


class LocalExecutor(concurrent.futures.ProcessPoolExecutor):
    """A ``spawn`` process pool whose workers die with the driver (see the module docstring):
    each worker follows its parent, and a reaper process catches what is left (a worker killed
    while starting up, multiprocessing's resource tracker)."""

    def __init__(self, workers: int) -> None:
        super().__init__(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            # workers are started by the thread that submits (this one, in run_sweep)
            initargs=(os.getpid(), threading.current_thread() is threading.main_thread()),
        )
        self._reaper = start_reaper()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        # the worker processes (the pool forgets them on shutdown)
        workers = list((getattr(self, "_processes", None) or {}).values())
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        reaper, self._reaper = self._reaper, None
        if wait or reaper is None:
            stop_reaper(reaper)
        else:  # the workers finish their current run first: keep the reaper until they exit
            threading.Thread(target=_stop_reaper_after, args=(workers, reaper), daemon=True).start()


def _stop_reaper_after(workers: list[Any], reaper: subprocess.Popen[bytes]) -> None:
    for worker in workers:
        worker.join()
    stop_reaper(reaper)
