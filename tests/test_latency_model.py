"""The latency table (``latency_model.py``) and ``--latency`` through it, on real onnxruntime and
real exported models: a table entry for every prunable group, latency growing with channels, the
disk cache, the knapsack's budget, and a pruned model whose measured latency meets the target."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import onnxprune
from onnxprune.deploy.runners import bench_feed, measure
from onnxprune.graph.load import read_model
from onnxprune.pipeline import Pipeline
from onnxprune.ranking import latency_model as lm
from onnxprune.ranking.granularity import backend_multiple

# The multiple `prune(latency=...)` picks by default on this machine (16 with AVX-512, 8 with AVX2), so the
# module's table is the one the default run reads back.
ROUND_TO = backend_multiple("ort-cpu").multiple


@pytest.fixture(scope="module")
def mobilenet(export, tmp_path_factory):
    """MobileNetV2 (legacy export), its analysis, FLOPs terms, scores and a table built into a
    cache folder of its own."""
    path = export("mobilenet_v2", "legacy")
    proto, _ = read_model(path)
    pipe = Pipeline(proto)
    analysis, terms, scores = pipe.analysis, pipe.terms("flops"), pipe.scores()
    cache = tmp_path_factory.mktemp("latency-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNXPRUNE_CACHE", str(cache))
        start = time.perf_counter()
        table = lm.latency_table(analysis, proto, threads=1, round_to=ROUND_TO)
        built_s = time.perf_counter() - start
    return {"path": path, "proto": proto, "analysis": analysis, "terms": terms, "scores": scores, "table": table,
            "cache": cache, "built_s": built_s}


def test_table_has_an_entry_per_prunable_group(mobilenet):
    analysis, table = mobilenet["analysis"], mobilenet["table"]
    assert not table.cached and table.probes > len(table.nodes) > 0
    touched = {g for n in table.nodes for s in n.axes for g, _ in lm.SlotCounts(analysis).touch[s]}
    assert touched == set(range(len(analysis.groups)))  # every group changes some layer's latency
    for node in table.nodes:
        assert 1 <= len(node.axes) <= 2 and node.ms.shape == tuple(len(p) for p in node.points)
        for pts, size in zip(node.points, node.sizes, strict=True):
            assert pts[-1] == size and all(p % ROUND_TO == 0 for p in pts[:-1])  # granularity steps, then dense
        assert node.dense_ms > 0
    assert table.dense_ms() == pytest.approx(sum(n.dense_ms for n in table.nodes))


def test_table_is_monotone_ish(mobilenet):
    """More channels are never much faster: along every axis, each sample takes at least half the
    time of the one below it (minus 30 us of timer noise), and the dense point is the slowest but noise."""
    for node in mobilenet["table"].nodes:
        ms = node.ms
        for axis in range(ms.ndim):
            lower = np.take(ms, range(ms.shape[axis] - 1), axis=axis)
            upper = np.take(ms, range(1, ms.shape[axis]), axis=axis)
            assert np.all(upper >= 0.5 * lower - 0.03), (node.name, axis, ms.tolist())
        assert ms.flat[-1] >= 0.7 * ms.max() - 0.03, (node.name, ms.tolist())


def test_table_cache_written_and_reused(mobilenet, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(mobilenet["cache"]))
    table = mobilenet["table"]
    files = list((mobilenet["cache"] / "latency").glob("*.json"))
    assert [str(f) for f in files] == [table.path]
    data = json.loads(files[0].read_text())
    key = data["key"]
    assert key["threads"] == 1 and key["round_to"] == ROUND_TO and "onnxruntime" in key["machine"]
    sessions = lm.SESSIONS_CREATED
    start = time.perf_counter()
    again = lm.latency_table(mobilenet["analysis"], mobilenet["proto"], threads=1, round_to=ROUND_TO)
    assert time.perf_counter() - start < 2.0
    assert lm.SESSIONS_CREATED == sessions  # read back: no probe session created
    assert again.cached and again.path == table.path
    assert [n.ms.tolist() for n in again.nodes] == [n.ms.tolist() for n in table.nodes]
    # another thread count or granularity is another table
    assert lm.table_key(mobilenet["proto"], "ort-cpu", 2, 1, ROUND_TO, None) != again.key
    assert lm.table_key(mobilenet["proto"], "ort-cpu", 1, 1, ROUND_TO // 2, None) != again.key


def test_knapsack_respects_the_predicted_budget(mobilenet):
    analysis, table = mobilenet["analysis"], mobilenet["table"]
    knapsack = lm.Knapsack(analysis, table, mobilenet["terms"], mobilenet["scores"], ROUND_TO)
    dense = table.dense_ms()
    assert knapsack.predict(np.zeros(len(analysis.groups), dtype=np.int64)) == pytest.approx(dense)
    previous = None
    for ratio in (0.8, 0.6, 0.4):
        solution = knapsack.solve(ratio * dense)
        assert solution.predicted_ms <= ratio * dense + 1e-9
        assert solution.predicted_ms == pytest.approx(knapsack.predict(solution.counts))
        assert solution.predicted_ms >= 0.9 * ratio * dense  # it does not prune far past the budget
        for group, removed in zip(analysis.groups, solution.counts, strict=True):
            kept = group.size - removed
            assert 1 <= kept <= group.size and (kept == group.size or kept % ROUND_TO == 0 or group.width > 1)
        if previous is not None:
            assert solution.counts.sum() >= previous.sum()
        previous = solution.counts
    with pytest.raises(onnxprune.ModelError, match="out of reach"):
        knapsack.solve(0.001 * dense)


def test_prune_to_a_latency_target_on_onnxruntime(mobilenet, monkeypatch):
    """``prune(latency=0.6)``: the plan comes from the table (and differs from the FLOPs plan), the
    model measures within a loose band of the target, and the prediction error is reported."""
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(mobilenet["cache"]))
    result = onnxprune.prune(mobilenet["path"], latency=0.6, threads=1)
    search = result.latency_search
    assert search.method == "table" and search.table["cached"]  # the module's table, read back
    assert search.chosen.predicted_ratio is not None and search.prediction_error is not None
    assert 0 <= search.prediction_error < 0.35  # loose: CI machines are busy
    _summary_and_html_show_the_table(result)
    dense = mobilenet["proto"]
    lat = measure([dense, result.model], bench_feed(dense), runs=25, min_seconds=1.5, threads=1)
    assert 0.45 <= lat[1].median_ms / lat[0].median_ms <= 0.75
    by_flops = onnxprune.prune(mobilenet["path"], flops=round(result.flops_ratio, 3))
    assert [c.removed for c in result.channels] != [c.removed for c in by_flops.channels]


def _summary_and_html_show_the_table(result) -> None:
    """The printed summary, --report JSON and --html say the plan came from the latency table."""
    import io

    from rich.console import Console

    from onnxprune.report.html import prune_html
    from onnxprune.report.text import print_summary, summary_dict

    target = json.loads(json.dumps(summary_dict(result)))["latency_target"]  # plain data for --report
    assert target["method"] == "table" and target["prediction_error"] is not None
    assert target["chosen"]["predicted_ratio"] is not None
    out = io.StringIO()
    print_summary(Console(file=out, width=200), result)
    assert "latency table" in out.getvalue() and "prediction error" in out.getvalue()
    page = prune_html(result)
    assert "predicted latency" in page and "latency table" in page


def test_runner_timing_path(mobilenet):
    """The timing path of the other onnxruntime backends (one session per probe, ``deploy``'s runners,
    alternating), run here on the CPU provider: it times the same probes, largest slowest."""
    analysis = mobilenet["analysis"]
    counts = lm.SlotCounts(analysis)
    name, node, axes = max(lm.node_axes(analysis, counts), key=lambda x: analysis.slot_sizes[x[2][0]])
    sizes = [analysis.slot_sizes[s] for s in axes]
    small = tuple(ROUND_TO for _ in axes)
    probes = []
    for pid, point in enumerate((small, tuple(sizes))):
        proto, ins, ws = lm._make_probe(pid, node, analysis, counts, axes, point, 1)
        probes.append(lm._Probe(0, (pid,), proto, ins, ws))
    opset = list(mobilenet["proto"].opset_import)
    times = lm._runner_times(probes, opset, "ort-cpu", 1, 10)
    assert 0 < times[0] < times[1], (name, times)
