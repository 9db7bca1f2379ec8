"""Tasks on this machine: a pool of forked processes.

Analysed pipelines sit in ``PIPELINES`` before the pool forks, so every worker inherits them and
none is pickled per task. A task that raises is retried once; a worker that dies takes the pool
down with it (concurrent.futures cannot tell which task killed it), so the tasks that were running
are each retried alone in a fresh pool: the one that kills its worker again is reported, the
others finish.

Workers die with their parent: a parent killed by SIGKILL (or by SIGTERM's default action) cannot
stop them itself, so each worker asks the kernel for SIGKILL when its parent dies (Linux
``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread polls ``os.getppid()``), and closes its copies of
the parent's output-lock descriptors at once, so a rerun is never refused by an orphan. A parent
that stops on an exception (Ctrl-C, a handled SIGTERM) kills its workers before it returns.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ..pipeline import Pipeline
from . import tasks

PIPELINES: dict[str, Pipeline] = {}  # unit key -> analysed pipeline (the workers' copy is inherited)
TRIES = 2  # a failed or killed task runs once more
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_S = 0.5  # where prctl is missing: how often a worker checks that its parent lives


class Failure:
    """A task that failed on its last try: its one-line error."""

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"


def describe(exc: BaseException) -> str:
    """One line for the table: the message of an onnxprune error, else the type and first line."""
    from ..errors import OnnxPruneError, first_line

    if isinstance(exc, BrokenProcessPool):
        return "the worker process died (killed or crashed) twice"
    return first_line(exc) if isinstance(exc, OnnxPruneError) else f"{type(exc).__name__}: {first_line(exc)}"


def default_jobs() -> int:
    """One process per CPU core this process may use (1 in a daemonic process, which may not fork workers)."""
    if multiprocessing.current_process().daemon:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_pool(calls: list[tuple[Callable, tuple]], jobs: int, done: Callable[[int, object], None] | None = None
             ) -> list[object]:
    """Run ``calls`` (function, args) in up to ``jobs`` forked processes; each result, or a Failure,
    in order. ``done(i, result)`` is called as each one finishes."""
    results: list[object] = [None] * len(calls)
    tries = [0] * len(calls)
    todo, alone = deque(range(len(calls))), deque()  # alone: survivors of a dead pool, one at a time
    context = multiprocessing.get_context("fork")
    while todo or alone:
        pool = ProcessPoolExecutor(max_workers=max(1, min(jobs, len(calls))), mp_context=context,
                                   initializer=_worker_start, initargs=(os.getpid(),))
        try:
            running: dict = {}
            broken = False
            while (todo or alone or running) and not broken:
                while not broken and (alone and not running or not alone and todo and len(running) < jobs):
                    queue = alone or todo
                    try:
                        future = pool.submit(calls[queue[0]][0], *calls[queue[0]][1])
                    except BrokenProcessPool:  # a worker died since the last wait
                        broken = True
                        break
                    i = queue.popleft()
                    tries[i] += 1
                    running[future] = i
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = running.pop(future)
                    try:
                        results[i] = future.result()
                    except BrokenProcessPool:
                        broken = True
                        if tries[i] < TRIES:
                            alone.append(i)
                            continue
                        results[i] = Failure(describe(BrokenProcessPool()))
                    except Exception as exc:  # noqa: BLE001 - reported in the table, never lost
                        if tries[i] < TRIES:
                            todo.append(i)
                            continue
                        results[i] = Failure(describe(exc))
                    if done:
                        done(i, results[i])
            for future, i in running.items():  # killed with the pool: each gets its retry alone
                if future.done() and not future.cancelled() and future.exception() is None:
                    results[i] = future.result()  # it finished just before the pool broke
                elif tries[i] < TRIES:
                    alone.append(i)
                    continue
                else:
                    results[i] = Failure(describe(BrokenProcessPool()))
                if done:
                    done(i, results[i])
        except BaseException:  # Ctrl-C, a SIGTERM turned into KeyboardInterrupt, a bug: the workers go now
            _kill(pool)
            raise
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers at once (a shutdown would wait for the running tasks to finish).
    ``_processes`` is private, but it is the only handle on the workers the executor gives."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except (OSError, ValueError):  # already gone, or already closed
            pass
    pool.shutdown(wait=True, cancel_futures=True)


def _worker_start(parent: int) -> None:
    """First thing in each pool worker: close its copies of the parent's output locks, keep torch (if
    the parent imported it) to one thread, die with
    the parent, leave Ctrl-C to the parent (which stops the pool), and let SIGTERM terminate it
    (the parent's handler, if it has one, is inherited by the fork)."""
    from ..outputs import close_inherited_locks

    close_inherited_locks()
    torch = sys.modules.get("torch")
    if torch is not None:
        # one process per core already; and a forked child entering the OpenMP pool the parent
        # started hangs for ever (GNU OpenMP is not fork-safe): one thread never enters it
        torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _kill_on_parent_death(parent):
        threading.Thread(target=_watch_parent, args=(parent,), name="onnxprune-parent-watch", daemon=True).start()


def _kill_on_parent_death(parent: int) -> bool:
    """Linux: ask the kernel for SIGKILL when the parent dies; whether that is armed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        armed = prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbol: the watch thread does it
        return False
    if armed and os.getppid() != parent:  # the parent died before the request: no signal will come
        os._exit(1)
    return armed


def _watch_parent(parent: int) -> None:
    """Where prctl is missing: exit once the parent is gone (the worker is re-parented)."""
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os._exit(1)


def _point(key: str, metric: str, target: float, multiples: list[int], keep: bool):
    point, model = tasks.sweep_point(PIPELINES[key], metric, target, multiples)
    return point, model if keep else None


def run_units(units: list[tasks.Unit], jobs: int, progress: Callable[[str], None]):
    """Analyse the units that need it, then prune every target of every unit, ``jobs`` at a time;
    time each unit with ``bench`` here, after its points. Returns, per unit, (header or Failure,
    [point result or Failure per target], [latency ms, dense first] or Failure or None)."""
    need = [u for u in units if u.pipe is None]
    if need:
        progress(f"analysing {len(need)} model(s) in {min(jobs, len(need))} process(es)")
        calls = [(tasks.analyse, (u,)) for u in need]
        shared = (run_pool if jobs > 1 else _in_process)(calls, jobs,
                                                         lambda i, _: progress(f"analysed {need[i].model}"))
        for unit, result in zip(need, shared, strict=True):
            unit.pipe = result.pipe if isinstance(result, tasks.Shared) else None
            if isinstance(result, Failure):
                unit.failure = result
    headers = {u.key: tasks.header(u.pipe) if u.pipe is not None else u.failure for u in units}
    ready = [u for u in units if u.pipe is not None]
    PIPELINES.clear()
    PIPELINES.update({u.key: u.pipe for u in ready})
    calls, owners = [], []
    for unit in ready:
        for target in unit.targets:
            calls.append((_point, (unit.key, unit.metric, target, headers[unit.key].multiples,
                                   unit.keep_models or unit.bench)))
            owners.append((unit, target))
    total = len(calls)
    count = [0]

    def point_done(i: int, result: object) -> None:
        count[0] += 1
        unit, target = owners[i]
        state = f"failed: {result.error}" if isinstance(result, Failure) else "done"
        progress(f"{unit.metric} {target:g} of {unit.model} {state} ({count[0]}/{total})")

    try:
        results = (run_pool if jobs > 1 else _in_process)(calls, jobs, point_done)
    finally:
        PIPELINES.clear()
    out = []
    for unit in units:
        points = [r for (u, _), r in zip(owners, results, strict=True) if u is unit]
        latency = None
        models = [r[1] for r in points if not isinstance(r, Failure)]
        if unit.bench and unit.pipe is not None and models:
            progress(f"timing the dense and the pruned models on {unit.options['bench'].backend}, alternating")
            try:
                latency = tasks.bench_unit(unit.pipe, models, unit.bench_runs)
            except Exception as exc:  # noqa: BLE001
                latency = Failure(describe(exc))
        out.append((headers[unit.key], points, latency))
    return out


def _in_process(calls: list[tuple[Callable, tuple]], _jobs: int, done: Callable[[int, object], None]) -> list[object]:
    """``jobs=1``: the same calls, one after another in this process (a failure is retried once)."""
    results = []
    for i, (fn, args) in enumerate(calls):
        for attempt in range(TRIES):
            try:
                results.append(fn(*args))
                break
            except Exception as exc:  # noqa: BLE001
                if attempt == TRIES - 1:
                    results.append(Failure(describe(exc)))
        done(i, results[-1])
    return results


__all__ = ["Failure", "PIPELINES", "default_jobs", "describe", "run_pool", "run_units"]
