"""Test side only: sweep points whose worker dies or hangs, as a worker the OS kills or a busy
machine would, to test what jobs/ does then (retry, report, take its workers down with it).

``wrapped(folder)`` is ``onnxprune.jobs.tasks.sweep_point`` (what a pool or Ray worker runs for
each point) preceded by a look in ``folder``: a point whose ``<metric><target>.kill`` file
(``flops0.5.kill``) is there dies at once (``os._exit``) and takes one off the count the file holds
(empty: 1; the file goes at 0), so its retry runs or dies again; one whose ``.hang`` file is there
removes it (so the test knows the point runs) and sleeps for ten minutes. The product holds none of
this: a test puts the wrapper in place of ``tasks.sweep_point`` in its own process (forked pool
workers inherit it, ``monkeypatch``), in each Ray worker (``ray_setup_hook``), or in the
real command (``command``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HANG_S = 600


def wrapped(folder: str | os.PathLike, *, spare: int | None = None) -> Callable:
    """``tasks.sweep_point``, dying or hanging first where ``folder`` says so. ``spare``: a process
    that must never die (the test's own: a point that runs there by mistake fails the test instead)."""
    from onnxprune.jobs import tasks

    real = tasks.sweep_point
    folder = Path(folder)

    def sweep_point(pipe, metric, target, multiples=None):
        _die_or_hang(folder, f"{metric}{target:g}", spare)
        return real(pipe, metric, target, multiples)

    return sweep_point


def _die_or_hang(folder: Path, name: str, spare: int | None) -> None:
    hang, kill = folder / f"{name}.hang", folder / f"{name}.kill"
    if not (hang.is_file() or kill.is_file()):
        return
    if os.getpid() == spare:
        raise AssertionError(f"point {name} was asked to die, but it runs in the test's own process")
    if hang.is_file():
        hang.unlink()
        time.sleep(HANG_S)
    left = int(kill.read_text() or 1) - 1
    if left > 0:
        kill.write_text(str(left))
    else:
        kill.unlink()
    os._exit(9)


def ray_setup_hook(folder: str | os.PathLike) -> Callable[[], None]:
    """Ray's ``worker_process_setup_hook``: each Ray worker, as it starts, puts ``wrapped(folder)``
    in place (the workers must import this module: ``TESTS`` on their PYTHONPATH)."""
    folder = str(folder)

    def arm_kill_points() -> None:  # Ray needs a function with a name, and pickles it by value
        from onnxprune.jobs import tasks

        tasks.sweep_point = wrapped(folder)

    return arm_kill_points


def command(folder: str | os.PathLike, *args: str) -> list[str]:
    """The real command (``python -m onnxprune ARGS``) with its points dying or hanging as ``folder``
    says (in its pool's workers: the command's own process is spared)."""
    code = (f"import os, runpy, sys; sys.path.insert(0, {str(TESTS)!r}); import kill_points; "
            "from onnxprune.jobs import tasks; "
            "tasks.sweep_point = kill_points.wrapped(sys.argv.pop(1), spare=os.getpid()); "
            "runpy.run_module('onnxprune', run_name='__main__')")
    return [sys.executable, "-c", code, str(folder), *args]
