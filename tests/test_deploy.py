"""Deploy stage on the CPU: trtexec-style statistics, batch handling, alternating timing, the
``bench`` API, and the ``--latency`` search (its bracketing logic on a deterministic latency
model, and end to end on real onnxruntime timings)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import Net, cli

import onnxprune
from onnxprune.api import measure_costs
from onnxprune.deploy.runners import bench_feed, make_runners
from onnxprune.deploy.timing import latency_stats, time_runners
from onnxprune.errors import ModelError, UsageError
from onnxprune.ranking import latency as latency_mod


def conv_net(dynamic_batch: bool = False) -> onnx.ModelProto:
    net = Net(channels=8, hw=32)
    h = net.relu(net.conv("x", 8, 48, 3, name="c1"))
    h = net.relu(net.conv(h, 48, 48, 3, name="c2"))
    h = net.relu(net.conv(h, 48, 48, 3, name="c3"))
    net.head(h, 48)
    model = net.model()
    if dynamic_batch:
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def test_latency_stats_match_numpy():
    samples = [10.0, 11.0, 12.0, 13.0, 50.0]
    lat = latency_stats(samples, batch=4)
    assert lat.median_ms == 12.0
    assert lat.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert lat.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert lat.mean_ms == pytest.approx(19.2)
    assert lat.cv == pytest.approx(np.std(samples) / 19.2)
    assert lat.noisy  # one 50 ms outlier in five runs is a noisy machine
    assert lat.throughput == pytest.approx(4 * 1000 / 12.0)
    assert not latency_stats([10.0, 10.1, 9.9]).noisy


def test_bench_feed_batch():
    with pytest.raises(UsageError, match="fixed batch of 1"):
        bench_feed(conv_net(), batch=4)
    feed = bench_feed(conv_net(dynamic_batch=True), batch=4)
    assert feed["x"].shape == (4, 8, 32, 32)
    with pytest.raises(UsageError, match="at least 1"):
        bench_feed(conv_net(dynamic_batch=True), batch=0)


def test_time_runners_rounds_and_minimum_time():
    calls: list[int] = []

    def runner(i):
        def run() -> float:
            calls.append(i)
            return float(i + 1)
        return run
    stats = time_runners([runner(0), runner(1)], runs=5, min_seconds=0.0, warmup_s=0.0)
    assert [s.runs for s in stats] == [5, 5]
    assert [s.median_ms for s in stats] == [1.0, 2.0]
    timed = calls[2:]  # after one warm-up call each
    assert timed[:4] == [0, 1, 1, 0]  # the order rotates every round
    stats = time_runners([runner(0)], runs=1, min_seconds=0.2, warmup_s=0.0)
    assert stats[0].runs > 1  # kept going until the minimum time


def test_backend_refusals():
    model = conv_net()
    feed = bench_feed(model)
    with pytest.raises(UsageError, match="unknown backend"):
        make_runners([model], [feed], "ort-vulkan", 1)
    with pytest.raises(UsageError, match="--fp16"):
        make_runners([model], [feed], "ort-cpu", 1, fp16=True)
    with pytest.raises(UsageError, match="--save-engine"):
        make_runners([model], [feed], "ort-cpu", 1, engine_paths=["x.engine"])


def test_bench_api_times_models_alternating(tmp_path):
    dense = conv_net(dynamic_batch=True)
    path = tmp_path / "dense.onnx"
    onnx.save(dense, path)
    pruned = onnxprune.prune(path, flops=0.3).model
    result = onnxprune.bench([path, pruned], batch=2, runs=30, min_seconds=0.5, warmup_s=0.1)
    assert result.backend == "ort-cpu" and result.batch == 2
    assert [lat.runs >= 30 for lat in result.latencies] == [True, True]
    assert result.ratios()[0] == 1.0
    assert result.ratios()[1] < 1.0  # 30% of the FLOPs of a conv-bound model runs faster
    row = result.to_dict()["models"][1]
    assert {"median_ms", "p95_ms", "p99_ms", "cv", "throughput", "ratio_to_first"} <= set(row)


@pytest.mark.parametrize("method", ["table", "measured"])
def test_latency_search_brackets_target(monkeypatch, tmp_path, method):
    """With latency = 0.2 + 0.8 * FLOPs (deterministic), the search must land within tolerance: the
    latency table's plans corrected by the measured ratio, and the regula falsi on FLOPs. The table's
    node times are made deterministic too (weight size x input area): this tiny net's real kernels
    take microseconds, so real probe timings would make the test a coin toss."""
    import functools

    from onnxprune.ranking import latency_model

    def ratios(self, models):
        return 100.0, [100.0 * (0.2 + 0.8 * measure_costs(m).flops / dense_flops) for m in models]

    def node_times(batch, opset, threads, runs):
        return [1e-6 * sum(int(np.prod(s)) for _, s, _ in p.weights) * int(np.prod(p.inputs[0][1][2:]))
                for p in batch]
    dense = conv_net()
    dense_flops = measure_costs(dense).flops
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(latency_model, "_profile_times", node_times)
    monkeypatch.setattr(latency_mod._Timer, "ratios", ratios)
    monkeypatch.setattr(latency_mod, "search_latency", functools.partial(latency_mod.search_latency, method=method))
    result = onnxprune.prune(dense, latency=0.6, round_to=1)  # 48 channels: multiples of 16 are too coarse
    search = result.latency_search
    assert search.method == method
    assert abs(search.chosen.latency_ratio - 0.6) <= search.tolerance
    assert result.flops_ratio == pytest.approx(0.5, abs=0.06)
    assert search.chosen.round_to == 1
    assert len(search.probes) <= (3 if method == "table" else 8)


def test_latency_search_refuses_unreachable(monkeypatch):
    """A backend where pruning buys nothing (latency flat): a clear error, not a silent result."""
    monkeypatch.setattr(latency_mod._Timer, "ratios", lambda self, models: (100.0, [97.0] * len(models)))
    with pytest.raises(ModelError, match="latency target 0.6 not reached"):
        onnxprune.prune(conv_net(), latency=0.6)


def test_latency_target_on_onnxruntime():
    """Real timings: the chosen probe measured at or under target + tolerance, the model verified."""
    result = onnxprune.prune(conv_net(), latency=0.7, threads=1)
    search = result.latency_search
    assert search.chosen.latency_ratio <= 0.7 + search.tolerance
    assert result.flops_ratio < 0.95
    assert search.backend == "ort-cpu" and search.probes[0].dense_ms > 0


def test_latency_with_other_structured_target_is_usage_error():
    with pytest.raises(UsageError, match="one structured target"):
        onnxprune.prune(conv_net(), latency=0.6, flops=0.5)


# --- the command line ----------------------------------------------------------------------


def test_cli_bench_two_models_json(tmp_path):
    dense = tmp_path / "dense.onnx"
    onnx.save(conv_net(dynamic_batch=True), dense)
    pruned = tmp_path / "pruned.onnx"
    assert cli(dense, "--flops", "0.4", "-o", pruned, "-q", cwd=tmp_path).returncode == 0
    run = cli("bench", dense, pruned, "--batch", "2", "--runs", "5", "--min-seconds", "0.2", "--warmup", "0.1",
              "--json", "t.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "dense.onnx" in run.stdout and "pruned.onnx" in run.stdout and "p99 ms" in run.stdout
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["backend"] == "ort-cpu" and data["batch"] == 2
    assert [m["ratio_to_first"] for m in data["models"]][0] == 1.0
    assert all(m["runs"] >= 5 for m in data["models"])


@pytest.mark.parametrize("args, message", [
    (["--batch", "4"], "fixed batch of 1"),
    (["--backend", "ort-cuda"], "CUDAExecutionProvider"),
    (["--backend", "ort-trt"], "TensorrtExecutionProvider"),
    (["--save-engine", "m.engine"], "--save-engine needs --backend tensorrt"),
    (["--fp16"], "--fp16 needs"),
    (["--runs", "0"], "at least 1"),
])
def test_cli_bench_refusals(tmp_path, args, message):
    onnx.save(conv_net(), tmp_path / "m.onnx")
    run = cli("bench", "m.onnx", *args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_bench_tensorrt_missing(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here: tests/test_gpu.py covers the real engine path")
    except ImportError:
        pass
    onnx.save(conv_net(), tmp_path / "m.onnx")
    run = cli("bench", "m.onnx", "--backend", "tensorrt", "--save-engine", "m.engine", cwd=tmp_path)
    assert run.returncode == 2 and "TensorRT is not installed" in run.stderr
    assert not (tmp_path / "m.engine").exists()


def test_cli_latency_target_report(tmp_path):
    onnx.save(conv_net(), tmp_path / "m.onnx")
    run = cli("m.onnx", "--latency", "0.7", "--report", "r.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "latency target 0.7 on ort-cpu" in run.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    chosen = report["latency_target"]["chosen"]
    assert chosen["latency_ratio"] <= 0.7 + report["latency_target"]["tolerance"]
    assert report["flops"]["ratio"] < 1.0 and report["latency_ms"]["pruned"] > 0


def test_bench_table_lists_tensorrt_sparse_layers():
    """The table's engine line, from a build report's plain data (the GPU run itself is in test_gpu.py)."""
    from rich.console import Console

    from onnxprune.report.text import print_bench
    from onnxprune.results import BenchResult

    build = {"tensorrt": "10.3", "flags": ["FP16", "SPARSE_WEIGHTS"], "build_s": 12.3,
             "eligible_sparse": ["conv1", "conv2"], "ran_sparse": ["conv2"]}
    result = BenchResult(["a/dense.onnx", "b/pruned.onnx"], [latency_stats([2.0, 2.1]), latency_stats([1.0, 1.1])],
                         "tensorrt", 1, 1, True, None, [None, build])
    console = Console(record=True, width=200, color_system=None)
    print_bench(console, result)
    text = console.export_text()
    assert "pruned.onnx: TensorRT 10.3 engine (FP16, SPARSE_WEIGHTS)" in text
    assert "2 layers eligible for sparse math, 1 ran sparse: conv2" in text
    assert "dense.onnx: TensorRT" not in text
    assert result.to_dict()["models"][1]["engine_build"]["ran_sparse"] == ["conv2"]
