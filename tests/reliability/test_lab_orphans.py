"""A killed sweep driver leaves no process behind: workers, multiprocessing's helper, Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lrlab.bench._reaper import descendants
from tests.reliability._lab import child_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _kill_all(pids) -> None:
    for pid in pids:  # clean up after a failing test: only the processes this test started
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _run_and_kill(
    driver_code: str, ready, timeout: float = 120.0, grace: float = 10.0
) -> tuple[dict, list[str]]:
    """Start ``driver_code`` in a child Python, wait until ``ready(its descendants)``, SIGKILL
    it; returns ({pid: command line} of the descendants it had, the command lines of those
    still alive ``grace`` seconds later)."""
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(driver_code)],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[int, str] = {}
    try:
        assert _wait_for(lambda: ready(descendants(driver.pid)), timeout), "driver never got ready"
        seen = descendants(driver.pid)
        commands = {pid: _cmdline(pid) for pid in seen}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        _wait_for(lambda: not any(_alive(p) for p in seen), grace)
        return commands, [commands[p] for p in seen if _alive(p)]
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_all(seen)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("use_deathsig", [True, False])
def test_a_worker_dies_with_its_parent(use_deathsig):
    """The worker-side protection alone: prctl(PR_SET_PDEATHSIG), or the parent-pid watch."""
    code = f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c",
            "import time; from lrlab.bench.executors import _die_with_parent; "
            "_die_with_parent({{}}, {use_deathsig}); time.sleep(60)".format(os.getpid())])
        time.sleep(60)
    """
    seen, alive = _run_and_kill(code, lambda kids: len(kids) == 1 and _protected(*kids))
    assert len(seen) == 1 and alive == []


def _protected(pid: int) -> bool:
    """The child has run ``_die_with_parent``: its parent-watch thread exists."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) >= 2
    except OSError:
        return False


def test_the_reaper_kills_what_ignores_its_parent():
    """Processes that outlive their parent by design (Ray's daemons, a worker still starting)
    are killed by the reaper once the driver is gone."""
    code = """
        import subprocess, time
        from lrlab.bench.executors import start_reaper
        start_reaper()
        # a daemon in its own session, deaf to its parent's death (like Ray's raylet)
        subprocess.Popen(["sleep", "60"], start_new_session=True)
        time.sleep(60)
    """
    first_ready: list[float] = []

    def ready(kids) -> bool:
        if not (
            any(_cmdline(p).startswith("sleep 60") for p in kids)
            and any("_reaper.py" in _cmdline(p) for p in kids)
        ):
            return False
        first_ready.append(time.monotonic())  # let the reaper take a look (every 0.5 s)
        return time.monotonic() - first_ready[0] > 1.5

    seen, alive = _run_and_kill(code, ready)
    assert any(command.startswith("sleep 60") for command in seen.values())
    assert alive == []


@pytest.mark.slow
def test_killing_a_sweep_driver_leaves_no_worker():
    code = """
        import sys, tempfile
        from lrlab.bench.cli import main
        if __name__ == "__main__":
            sys.exit(main(["sweep", "--problems", "synthetic_sphere", "--methods", "sgd",
                "--lrs", "1e-3:1:10", "--steps", "100000", "--workers", "2", "--quiet",
                "--store", tempfile.mkdtemp() + "/s.sqlite"]))
    """

    def workers_running(kids) -> bool:
        workers = [p for p in kids if "spawn_main" in _cmdline(p)]
        # started (the initializer ran: its parent-watch thread exists)
        return len(workers) == 2 and all(_protected(p) for p in workers)

    seen, alive = _run_and_kill(code, workers_running)
    assert sum("spawn_main" in command for command in seen.values()) == 2
    assert alive == [], alive


@pytest.mark.slow
def test_killing_a_ray_sweep_driver_leaves_no_ray_process():
    import ray  # noqa: F401  (a dev dependency: missing, the test fails)

    code = """
        import sys, tempfile
        from lrlab.bench.cli import main
        if __name__ == "__main__":
            sys.exit(main(["sweep", "--problems", "synthetic_sphere", "--methods", "sgd",
                "--lrs", "1e-3:1:10", "--steps", "100000", "--workers", "2", "--quiet",
                "--backend", "ray", "--store", tempfile.mkdtemp() + "/s.sqlite"]))
    """

    def tasks_running(kids) -> bool:
        return sum("default_worker.py" in _cmdline(p) for p in kids) >= 2 and any(
            "raylet" in _cmdline(p) for p in kids
        )

    # Ray's processes take longer to go on a loaded machine (a raylet killed mid-spawn)
    seen, alive = _run_and_kill(code, tasks_running, timeout=240.0, grace=30.0)
    assert any("raylet" in command for command in seen.values())
    assert alive == [], alive


def test_sigterm_stops_a_study_like_ctrl_c_and_keeps_its_measured_time(tmp_path):
    """``kill PID`` (a scheduler's time limit) stops ``lrlab study`` as Ctrl-C does: exit 130,
    the runs stored so far kept with their measured time (marked interrupted), no worker left
    (resuming a killed sweep is tested in test_lab_fuzz)."""
    import json

    from lrlab.bench.store import Store

    study = tmp_path / "term.toml"
    study.write_text(
        textwrap.dedent(
            """
            name = "term"
            title = "terminated"
            lrs = "1e-3:1e-1:3"
            seeds = 10
            eval_every = 0
            methods = ["sgd", "adam"]
            problems = [{ name = "digits_mlp", steps = 150 }]
            """
        )
    )
    store = tmp_path / "term.sqlite"
    command = [
        sys.executable, "-m", "lrlab", "study", str(study), "--store", str(store),
        "--docs", str(tmp_path / "docs"), "--report-dir", str(tmp_path / "report"),
        "--workers", "2", "--quiet",
    ]  # fmt: skip
    driver = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    children: dict[int, str] = {}
    try:

        def some_runs_stored() -> bool:
            children.update(descendants(driver.pid))
            if not store.exists():
                return False
            with Store(store, readonly=True) as db:
                return len(db) >= 2

        assert _wait_for(some_runs_stored, 120), "no run was stored"
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=60)
        assert driver.returncode == 130, stderr.decode(errors="replace")[-2000:]
        assert b"interrupted" in stderr
        assert _wait_for(lambda: not any(_alive(p) for p in children), 15), children
        (entry,) = json.loads(store.with_name("term.sqlite.timing.json").read_text())["sweeps"]
        with Store(store, readonly=True) as db:
            stored = db.run_ids()
        assert entry["interrupted"] is True and entry["wall_time_s"] > 0
        assert entry["runs"] == len(stored) < 60
    finally:
        if driver.poll() is None:
            driver.kill()
        _kill_all(children)
