"""Many points at once (onnxprune/jobs/): a sweep and a batch in a local process pool and on a
local Ray cluster give what a sequential run gives; a killed task is retried; a broken model is
reported while the rest finish; a rerun skips what is done. Real models, real onnxruntime, real
Ray (its tests skip without it)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

import onnxprune
from onnxprune import cli
from onnxprune.errors import UsageError
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
    """Where a test asks a point's first attempt to kill its worker (tasks._test_kill_once)."""
    folder = tmp_path / "kill"
    folder.mkdir()
    monkeypatch.setenv("ONNXPRUNE_TEST_KILL_DIR", str(folder))
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


# --- Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray for the module (2 CPUs, a "bench" resource); its workers see the kill folder."""
    ray = pytest.importorskip("ray", reason="needs ray: pip install 'onnxprune[ray]'")
    folder = tmp_path_factory.mktemp("kill")
    old = os.environ.get("ONNXPRUNE_TEST_KILL_DIR")
    os.environ["ONNXPRUNE_TEST_KILL_DIR"] = str(folder)  # before ray.init: the workers inherit it
    ray.init(num_cpus=2, resources={"bench": 1}, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield folder
    ray.shutdown()
    if old is None:
        os.environ.pop("ONNXPRUNE_TEST_KILL_DIR", None)
    else:
        os.environ["ONNXPRUNE_TEST_KILL_DIR"] = old


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


def test_ray_bench_on_a_labelled_node(ray_cluster, resnet18):
    result = onnxprune.sweep(resnet18, flops=[0.5], round_to=8, ray=True, bench=True, bench_runs=3, bench_on="bench")
    assert result.dense_latency_ms > 0 and result.points[0].latency_ratio > 0  # timed on the "bench" node
    outcome = sweep_outcome(resnet18, flops=[0.5], round_to=8, ray=True, bench=True, bench_runs=3, bench_on="gpu-box")
    assert outcome.errors == {None: "timing: no node of the Ray cluster offers the resource 'gpu-box' to time on"}
    assert outcome.result.points[0].latency_ms is None
