"""Many points at once (onnxprune/jobs/): a sweep and a batch in a local process pool and on a
local Ray cluster give what a sequential run gives; a killed task is retried; a broken model is
reported while the rest finish; a rerun skips what is done. Real models, real onnxruntime, real
Ray (its tests skip without it)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
import yaml
from helpers import sweep_model
from kill_points import TESTS, command, ray_setup_hook, wrapped

import onnxprune
from onnxprune import cli
from onnxprune.errors import UsageError
from onnxprune.jobs.ray import check_address
from onnxprune.sweep import sweep_outcome

TARGETS = [0.9, 0.7, 0.5]


@pytest.fixture(scope="module")
def resnet18(export) -> Path:
    return export("resnet18", "legacy")


@pytest.fixture(scope="module")
def sequential(resnet18) -> list[float]:
    """FLOPs ratios of the 3-point sweep run one after another in this process."""
    return [p.flops_ratio for p in onnxprune.sweep(resnet18, flops=TARGETS, round_to=8, jobs=1).points]


@pytest.fixture
def kill_dir(tmp_path, monkeypatch) -> Path:
    """Where a test asks a point to kill its pool worker (kill_points): the forked workers inherit
    this process's ``tasks.sweep_point``, wrapped to look there first."""
    from onnxprune.jobs import tasks

    folder = tmp_path / "kill"
    folder.mkdir()
    monkeypatch.setattr(tasks, "sweep_point", wrapped(folder, spare=os.getpid()))
    return folder


def manifest(tmp_path: Path, models: list[str], **extra) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"models": models, "flops": [0.7, 0.5], "options": {"round_to": 8}, **extra}))
    return path


def two_models(tmp_path: Path, export) -> list[str]:
    for name in ("resnet18", "mobilenet_v2"):
        (tmp_path / f"{name}.onnx").symlink_to(export(name, "legacy"))
    return ["resnet18.onnx", "mobilenet_v2.onnx"]


# --- local process pool ----------------------------------------------------------------------------


def test_pool_equals_sequential_and_survives_a_killed_worker(resnet18, sequential, kill_dir):
    (kill_dir / "flops0.7.kill").touch()
    result = onnxprune.sweep(resnet18, flops=TARGETS, round_to=8, jobs=2, keep_models=True)
    assert not (kill_dir / "flops0.7.kill").exists()  # the first attempt died, the retry ran
    assert [p.target for p in result.points] == TARGETS
    assert [p.flops_ratio for p in result.points] == sequential
    assert all(p.model is not None for p in result.points)


def test_pool_reports_a_point_killed_twice_and_keeps_the_others(resnet18, sequential, kill_dir):
    (kill_dir / "flops0.7.kill").write_text("2")
    outcome = sweep_outcome(resnet18, flops=TARGETS, round_to=8, jobs=2)
    assert outcome.errors == {0.7: "the worker process died (killed or crashed) twice"}
    assert [(p.target, p.flops_ratio) for p in outcome.result.points] == [(0.9, sequential[0]), (0.5, sequential[2])]
    assert outcome.result.failed == {0.7: "the worker process died (killed or crashed) twice"}


def test_the_sweep_tables_show_a_failed_point_with_its_error(resnet18, sequential, kill_dir, tmp_path, capsys):
    (kill_dir / "flops0.7.kill").write_text("2")
    out = tmp_path / "s"
    code = cli.main(["sweep", str(resnet18), "--flops", "0.9", "0.7", "0.5", "--round-to", "8", "--jobs", "2",
                     "--out", str(out), "--html", str(tmp_path / "s.html")])
    assert code == 1  # a point failed; the others were written
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(float(r["target"]), r["error"]) for r in rows] == [
        (0.9, ""), (0.5, ""), (0.7, "the worker process died (killed or crashed) twice")]
    assert float(rows[1]["flops_ratio"]) == sequential[2] and rows[2]["flops_ratio"] == ""
    assert json.loads((out / "sweep.json").read_text())["failed"] == {"0.7": rows[2]["error"]}
    assert "the worker process died (killed or crashed) twice" in (tmp_path / "s.html").read_text()
    table = capsys.readouterr().out
    assert "error" in table and "died (killed or crashed) twice" in table


def test_pool_reports_a_point_that_fails_twice(resnet18, monkeypatch):
    from onnxprune.jobs import tasks

    real = tasks.sweep_point

    def fails_at_half(pipe, metric, target, multiples=None):
        if target == 0.5:
            raise RuntimeError("boom")
        return real(pipe, metric, target, multiples)

    monkeypatch.setattr(tasks, "sweep_point", fails_at_half)  # the forked workers inherit it
    outcome = sweep_outcome(resnet18, flops=TARGETS, round_to=8, jobs=2)
    assert [p.target for p in outcome.result.points] == [0.9, 0.7]
    assert outcome.errors == {0.5: "RuntimeError: boom"}


def test_batch_pool_broken_model_and_rerun(tmp_path, export):
    models = two_models(tmp_path, export)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    path = manifest(tmp_path, [models[0], "broken.onnx", models[1]])
    out = tmp_path / "out"
    assert cli.main(["batch", str(path), "--out", str(out), "--jobs", "2", "-q"]) == 1  # broken: exit 1
    rows = json.loads((out / "batch.json").read_text())["rows"]
    assert [(r["model"], r["target"]) for r in rows] == [(m, t) for m in (models[0], "broken.onnx", models[1])
                                                         for t in (0.7, 0.5)]
    broken = [r for r in rows if r["model"] == "broken.onnx"]
    assert all("not a readable ONNX model" in r["error"] for r in broken)
    good = [r for r in rows if r["model"] != "broken.onnx"]
    assert all(r["error"] is None and r["flops_ratio"] <= r["target"] + 1e-9 for r in good)
    assert len(json.loads((out / "done.json").read_text())) == 4

    # a rerun reuses the four done points and runs the failed ones again
    result = onnxprune.batch(path, jobs=2, done=out / "done.json")
    assert [r.reused for r in result.rows] == [True, True, False, False, True, True]
    assert [bool(r.error) for r in result.rows] == [False, False, True, True, False, False]
    # rows are keyed by the model's content: a copy of resnet18 under another name is done already
    (tmp_path / "broken.onnx").unlink()
    (tmp_path / "broken.onnx").symlink_to(export("resnet18", "legacy"))
    result = onnxprune.batch(path, jobs=2, done=out / "done.json")
    assert all(r.reused for r in result.rows) and not result.failed
    assert cli.main(["batch", str(path), "--out", str(out), "-q"]) == 0  # a batch folder resumes without --force


def test_bad_manifest_and_flags_are_usage_errors(tmp_path, resnet18, monkeypatch):
    with pytest.raises(UsageError, match="unknown option 'flop'"):
        onnxprune.batch({"models": [str(resnet18)], "flops": [0.5], "options": {"flop": 1}})
    with pytest.raises(UsageError, match="unknown key 'model'"):
        onnxprune.batch({"model": [str(resnet18)], "flops": [0.5]})
    with pytest.raises(UsageError, match="--bench-on needs --ray"):
        onnxprune.sweep(resnet18, flops=[0.5], bench_on="gpu")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UsageError, match=r"pip install 'onnxprune\[ray\]'"):
        onnxprune.sweep(resnet18, flops=[0.5], ray=True)
    assert cli.main(["sweep", str(resnet18), "--flops", "0.5", "--out", str(tmp_path / "s"), "--ray"]) == 2


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running: not gone and not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_sweep_takes_its_pool_workers_and_lock_with_it(tmp_path, kill_dir, sig):
    """The real command, its pool busy (a point sleeps in its worker), is killed: within seconds no
    worker is left (they were orphans holding the output lock for minutes) and a rerun into the
    same folder is not refused."""
    model = tmp_path / "m.onnx"
    onnx.save(sweep_model(), model)
    (kill_dir / "flops0.7.hang").touch()
    out = tmp_path / "m.sweep"
    proc = subprocess.Popen(command(kill_dir, "sweep", str(model), "--flops", "0.9", "0.7", "0.5", "--jobs", "2",
                                    "--out", str(out), "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while (kill_dir / "flops0.7.hang").exists():  # the worker removes it when the point starts
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep never reached its point"
            time.sleep(0.05)
        workers += _children(proc.pid)
        assert workers
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers)), "pool workers outlived their killed parent"
    finally:  # whatever happened, nothing of this test lives on
        proc.kill()
        proc.wait()
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
    assert cli.main(["sweep", str(model), "--flops", "0.9", "--jobs", "1", "--out", str(out), "--force", "-q"]) == 0


def test_a_worker_closes_the_parents_lock_descriptors(tmp_path):
    """A forked pool worker holds no descriptor of its parent's output lock (a flock is shared by
    fork, so a worker that outlived its parent would keep the output locked)."""
    from onnxprune.jobs import local
    from onnxprune.outputs import LOCK_SUFFIX, OutputSet

    lock = tmp_path / f".a.json{LOCK_SUFFIX}"
    with OutputSet() as outputs:
        outputs.claim(tmp_path / "a.json", "report")
        assert not _lock_free_after(str(lock))  # the parent holds it
        assert local.run_pool([(_lock_free_after, (str(lock),))] * 2, 2) == [True, True]


def _lock_free_after(lock: str) -> bool:
    """In a worker: none of the descriptors it holds refers to the parent's lock file."""
    real = os.path.realpath(lock)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == real:
                return False
        except OSError:
            continue
    return True


# --- Ray -------------------------------------------------------------------------------------------


def _refused_quickly(address: str, match: str) -> None:
    """check_address refuses ``address`` with one line matching ``match``, well before Ray's own
    retries would give up (minutes), and the command says the same with exit 2."""
    start = time.monotonic()
    with pytest.raises(UsageError, match=match) as info:
        check_address(address)
    assert time.monotonic() - start < 4  # a refused or closed port answers at once
    assert "\n" not in str(info.value)


def test_ray_addresses_are_checked_before_ray_starts(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray", reason="needs ray: pip install 'onnxprune[ray]'")
    # nothing listens on port 1; Ray itself would retry it for minutes
    _refused_quickly("127.0.0.1:1", r"cannot reach Ray at .*:1 \(Connection refused\); start one with 'ray start")
    _refused_quickly("ray://127.0.0.1:1", r"cannot reach Ray at 127.0.0.1:1|needs Ray's client")
    _refused_quickly("head", "not a Ray address")
    _refused_quickly("127.0.0.1:99999", "not a Ray address")
    with pytest.raises(UsageError, match="the address is empty"):
        onnxprune.sweep(tmp_path / "m.onnx", flops=[0.5], ray="")
    # a port that answers, but not as a gRPC server (Ray's GCS and Ray Client are)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    answer = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    answer.start()
    if importlib.util.find_spec("grpc") is not None:
        _refused_quickly(f"ray://127.0.0.1:{port}", "takes connections but does not answer as Ray")
    server.close()
    # ray:// without Ray's client (grpc)
    monkeypatch.setitem(sys.modules, "grpc", None)
    _refused_quickly("ray://head:10001", r"needs Ray's client: pip install 'onnxprune\[ray\]'")
    # auto with no cluster on this machine (where one runs, auto rightly finds it)
    from ray._private.services import find_gcs_addresses

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if not find_gcs_addresses() and not Path("/tmp/ray/ray_current_cluster").exists():
        _refused_quickly("auto", "no running Ray cluster found on this machine; start one with 'ray start --head'")
    # the command: one line, exit 2, before any work
    model = tmp_path / "m.onnx"
    onnx.save(sweep_model(), model)
    capsys.readouterr()
    assert cli.main(["sweep", str(model), "--flops", "0.5", "0.7", "--ray", "127.0.0.1:1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach Ray" in err
    assert not (tmp_path / "m.sweep").exists()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray for the module (2 CPUs, a "bench" resource) whose workers' points die as the
    kill folder says (kill_points, put in place by each worker as it starts)."""
    ray = pytest.importorskip("ray", reason="needs ray: pip install 'onnxprune[ray]'")
    folder = tmp_path_factory.mktemp("kill")
    path = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])  # they import kill_points
    ray.init(num_cpus=2, resources={"bench": 1}, include_dashboard=False, configure_logging=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path},
                                               "worker_process_setup_hook": ray_setup_hook(folder)})
    yield folder
    ray.shutdown()


def test_ray_sweep_equals_local_and_retries_a_killed_task(ray_cluster, resnet18, sequential):
    (ray_cluster / "flops0.5.kill").touch()
    result = onnxprune.sweep(resnet18, flops=TARGETS, round_to=8, ray=True)
    assert not (ray_cluster / "flops0.5.kill").exists()  # the first attempt's worker died
    assert [p.target for p in result.points] == TARGETS
    assert [p.flops_ratio for p in result.points] == sequential
    (ray_cluster / "flops0.9.kill").write_text("2")  # killed on its retry too: reported, the other done
    outcome = sweep_outcome(resnet18, flops=TARGETS[:2], round_to=8, ray=True)
    assert outcome.errors == {0.9: "the worker process died (killed or crashed) twice"}
    assert [(p.target, p.flops_ratio) for p in outcome.result.points] == [(0.7, sequential[1])]


def test_ray_batch_equals_local_broken_model_and_rerun(ray_cluster, tmp_path, export):
    models = two_models(tmp_path, export)
    local = onnxprune.batch(manifest(tmp_path, models), jobs=1)
    (tmp_path / "broken.onnx").write_bytes(b"")
    path = manifest(tmp_path, [*models, "broken.onnx"])
    result = onnxprune.batch(path, ray=True)
    assert [r.point["flops_ratio"] for r in result.rows[:4]] == [r.point["flops_ratio"] for r in local.rows]
    assert [r.error is not None for r in result.rows] == [False] * 4 + [True] * 2
    assert "empty file" in result.rows[4].error
    again = onnxprune.batch(path, ray=True, done=result.done())
    assert [r.reused for r in again.rows] == [True] * 4 + [False] * 2


def test_ray_address_check_accepts_a_real_cluster(ray_cluster):
    """The address check (a gRPC answer within seconds) lets a real GCS through."""
    import ray

    check_address(ray.get_runtime_context().gcs_address)


def test_ray_bench_on_a_labelled_node(ray_cluster, resnet18):
    result = onnxprune.sweep(resnet18, flops=[0.5], round_to=8, ray=True, bench=True, bench_runs=3, bench_on="bench")
    assert result.dense_latency_ms > 0 and result.points[0].latency_ratio > 0  # timed on the "bench" node
    outcome = sweep_outcome(resnet18, flops=[0.5], round_to=8, ray=True, bench=True, bench_runs=3, bench_on="gpu-box")
    assert outcome.errors == {None: "timing: no node of the Ray cluster offers the resource 'gpu-box' to time on"}
    assert outcome.result.points[0].latency_ms is None
