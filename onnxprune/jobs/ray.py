"""Tasks on a Ray cluster (``pip install onnxprune[ray]``).

A unit's analysed pipeline goes into the object store once: ``ray.put`` for one the driver
analysed (sweep), or as the return value of the analysis task (batch). Point tasks receive its
reference wrapped in a list, so Ray does not fetch it per task; each worker process fetches it on
its first point and keeps it. Ray retries a task that raised or whose worker died once
(``max_retries=1``); what fails twice is reported. ``bench_on`` pins timing tasks to nodes with
that custom resource; GPU backends request a GPU for them.

The analysis task and the point tasks need the model and calibration paths on the node they run
on (a shared filesystem); a sweep's driver reads them itself and ships the analysed pipeline.

An address is checked before ``ray.init``, which retries one that does not answer for minutes:
``ray://`` needs Ray's client (``grpc``), ``auto`` needs a cluster Ray can find, and a gRPC server
(Ray's GCS or Ray Client) must answer there within ``PROBE_S`` seconds; each failure is one usage
error saying what to install or start. ``ray.init``'s own errors are usage errors too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import UsageError, first_line
from . import tasks
from .local import Failure, describe

log = logging.getLogger(__name__)
_CACHE: dict[str, object] = {}  # in a worker process: unit key -> its pipeline
_ACTIVE = False  # in the driver: a session is open
PROBE_S = 5.0  # how long a Ray address may take to connect, and then to answer as a gRPC server
CLIENT_PORT = 10001  # Ray Client's default port (ray://HOST)
# The HTTP/2 connection preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
START = "start one with 'ray start --head' (or give --ray alone for a Ray on this machine only)"


def require_ray():
    """The ray module, or a one-line usage error saying what to install."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'onnxprune[ray]' (or pip install ray)") from None
    return ray


def _pipe(key: str, ref: list):
    import ray

    if key not in _CACHE:
        while len(_CACHE) >= 2:  # a worker serves one or two units at a time; memory stays bounded
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ray.get(ref[0]).pipe
    return _CACHE[key]


def _analyse(unit: tasks.Unit):
    shared = tasks.analyse(unit)
    return shared, tasks.header(shared.pipe)


def _point(key: str, ref: list, metric: str, target: float, multiples: list[int], keep: bool):
    point, model = tasks.sweep_point(_pipe(key, ref), metric, target, multiples)
    return point, model if keep else None


def _bench(key: str, ref: list, runs: int, *models):
    return tasks.bench_unit(_pipe(key, ref), [m for _, m in models], runs)


def _error(ray, exc: BaseException) -> str:
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return describe(cause)
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return "the worker process died (killed or crashed) twice"
    return describe(exc)


@contextlib.contextmanager
def session(address: bool | str, progress: Callable[[str], None]) -> Iterator[None]:
    """Ray for the block: a local one (``address`` True) or the cluster at ``address``, unless this
    process is connected already (then that cluster is used and left running). Its workers start
    importing onnxprune at once, so that overlaps whatever the block does first (the analysis)."""
    global _ACTIVE
    if _ACTIVE:  # the sweep's session is open: its run_units uses it
        yield
        return
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        progress("starting Ray" if address is True else f"connecting to Ray at {address}")
        quiet = logging.getLogger("ray")  # Ray's notices at start (token auth...) are not the user's business
        level = quiet.level
        quiet.setLevel(logging.ERROR if not log.isEnabledFor(logging.DEBUG) else level)
        # ray.init replaces SIGTERM's handler with sys.exit (and Ray's C++ core adds a stack dump):
        # the run's own handler is put back, so a SIGTERM ends a Ray run as it ends any other
        main = threading.current_thread() is threading.main_thread()
        term = signal.getsignal(signal.SIGTERM) if main else None
        try:
            check_address(address)
            ray.init(address=None if address is True else address, configure_logging=False, log_to_driver=False)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            where = "start Ray" if address is True else f"connect to Ray at {address}"
            raise UsageError(f"cannot {where}: {first_line(exc)}") from None
        finally:
            quiet.setLevel(level)
            if term is not None:
                signal.signal(signal.SIGTERM, term)
    warm = ray.remote(_warm).options(num_cpus=1)
    for _ in range(min(int(ray.cluster_resources().get("CPU", 1)), 64)):
        warm.remote()  # fire and forget
    _ACTIVE = True
    try:
        yield
    finally:
        _ACTIVE = False
        if started:
            ray.shutdown()


def check_address(address: bool | str) -> None:
    """Refuse, quickly and in one line, a Ray address ``ray.init`` could not use (True: a local Ray,
    nothing to check)."""
    if address is True:
        return
    text = address.strip()
    if not text:
        raise UsageError(tasks.EMPTY_RAY_ADDRESS)
    if text.startswith("ray://"):
        if importlib.util.find_spec("grpc") is None:
            raise UsageError(f"--ray {text} needs Ray's client: pip install 'onnxprune[ray]' (it brings "
                             "ray[client]), or run on a node of the cluster with --ray auto")
        hostport = text[len("ray://"):].rstrip("/") or "localhost"
        if ":" not in hostport.rsplit("]", 1)[-1]:
            hostport += f":{CLIENT_PORT}"
    else:
        hostport = _gcs_address(text)
        if hostport is None:
            return
    _probe(text, hostport)


def _gcs_address(text: str) -> str | None:
    """HOST:PORT of the cluster's GCS as ``ray.init`` will use it (auto looked up in RAY_ADDRESS, the
    cluster 'ray start' recorded or a running one; localhost made this node's IP, where Ray binds).
    None when Ray's helper (private) is missing or cannot tell: ray.init then decides alone."""
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:
        return None if text == "auto" else text
    try:
        return canonicalize_bootstrap_address_or_die(text)
    except ConnectionError:
        raise UsageError(f"--ray auto: no running Ray cluster found on this machine; {START}, or give "
                         "the cluster's address") from None
    except ValueError:
        if text == "auto":  # RAY_ADDRESS holds what this helper does not parse (a ray:// address)
            return None
        raise UsageError(f"--ray {text}: not a Ray address; give auto, HOST:PORT (the head's GCS, 6379) or "
                         "ray://HOST:10001") from None


def _probe(address: str, hostport: str) -> None:
    """A gRPC server (Ray's GCS and Ray Client both are) at HOST:PORT: it accepts a TCP connection
    and answers the HTTP/2 preface with a SETTINGS frame within PROBE_S seconds, or a usage error
    names the address. A TLS cluster (RAY_USE_TLS) is only connected to."""
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray {address}: not a Ray address; give auto, HOST:PORT (the head's GCS, 6379) or "
                         "ray://HOST:10001")
    try:
        conn = socket.create_connection((host, int(port)), timeout=PROBE_S)
    except OSError as exc:
        reason = f"no answer in {PROBE_S:g} s" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise UsageError(f"--ray {address}: cannot reach Ray at {host}:{port} ({reason}); {START}, or check the "
                         "address") from None
    head = b""
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        try:
            conn.sendall(H2_PREFACE)
            while len(head) < 9:  # a frame header: length (3 bytes), type (4: SETTINGS), flags, stream
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:  # reset, or silent past PROBE_S: no gRPC server
            pass
    if len(head) < 9 or head[3] != 4:
        raise UsageError(f"--ray {address}: {host}:{port} takes connections but does not answer as Ray (gRPC) "
                         f"within {PROBE_S:g} s; check the port: the head's GCS (6379 by default), or "
                         "ray://HOST:10001 for Ray Client")


def _warm() -> None:
    time.sleep(0.2)  # long enough for the others to land on other workers; importing this module did the work


def run_units(units: list[tasks.Unit], address: bool | str, bench_on: str | None,
              progress: Callable[[str], None]):
    """As local.run_units, on Ray (in a ``session`` of ``address``)."""
    with session(address, progress):
        return _run(require_ray(), units, bench_on, progress)


def _run(ray, units, bench_on, progress):
    retry = {"max_retries": 1, "retry_exceptions": True}
    analyse = ray.remote(_analyse).options(num_returns=2, **retry)
    point = ray.remote(_point).options(**retry)
    refs, headers = {}, {}
    pending = {}  # header ref -> unit
    for unit in units:
        if unit.pipe is not None:
            refs[unit.key] = ray.put(tasks.Shared(unit.pipe))
            headers[unit.key] = tasks.header(unit.pipe)
        else:
            refs[unit.key], header = analyse.remote(unit)
            pending[header] = unit
    points: dict[tuple[str, float], object] = {}
    waiting = {}  # point ref -> (unit, target)
    total = sum(len(u.targets) for u in units)

    def submit(unit):
        for target in unit.targets:
            keep = unit.keep_models or unit.bench
            ref = point.remote(unit.key, [refs[unit.key]], unit.metric, target, headers[unit.key].multiples, keep)
            waiting[ref] = (unit, target)

    for unit in units:
        if unit.key in headers:
            submit(unit)
    while pending or waiting:
        ready, _ = ray.wait(list(pending) + list(waiting), num_returns=1)
        ref = ready[0]
        if ref in pending:
            unit = pending.pop(ref)
            try:
                headers[unit.key] = ray.get(ref)
                progress(f"analysed {unit.model}")
                submit(unit)
            except Exception as exc:  # noqa: BLE001 - the unit is reported, the others go on
                headers[unit.key] = Failure(_error(ray, exc))
            continue
        unit, target = waiting.pop(ref)
        try:
            points[unit.key, target] = ray.get(ref)
            state = "done"
        except Exception as exc:  # noqa: BLE001
            points[unit.key, target] = Failure(_error(ray, exc))
            state = f"failed: {points[unit.key, target].error}"
        progress(f"{unit.metric} {target:g} of {unit.model} {state} ({len(points)}/{total})")
    out = []
    for unit in units:
        results = [points.get((unit.key, t), headers[unit.key]) for t in unit.targets]
        models = [r for r in results if not isinstance(r, Failure)]
        latency = None
        if unit.bench and models:
            latency = _time(ray, unit, refs[unit.key], models, bench_on, progress)
        out.append((headers[unit.key], results, latency))
    return out


def _time(ray, unit, ref, results, bench_on, progress):
    backend = unit.options["bench"].backend
    gpu = backend in tasks.GPU_BACKENDS
    offered = ray.cluster_resources()  # a task asking for what no node has would wait forever
    for name, needed in ((bench_on, bool(bench_on)), ("GPU", gpu)):
        if needed and offered.get(name, 0) <= 0:
            return Failure(f"no node of the Ray cluster offers the resource {name!r} to time on")
    where = f" on a node with {bench_on}" if bench_on else ""
    progress(f"timing the dense and the pruned models on {backend}{where}, alternating")
    bench = ray.remote(_bench).options(max_retries=1, retry_exceptions=True,
                                       num_gpus=1 if gpu else 0,
                                       resources={bench_on: 0.001} if bench_on else None)
    try:
        return ray.get(bench.remote(unit.key, [ref], unit.bench_runs, *results))
    except Exception as exc:  # noqa: BLE001
        return Failure(_error(ray, exc))


__all__ = ["check_address", "require_ray", "run_units", "session"]
