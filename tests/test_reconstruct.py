"""The reconstruct stage (calib/reconstruct.py) and the forward walk it runs on (calib/walk.py).

- The walk hands activations from segment to segment: every layer input it returns equals what a
  session of the whole model computes, each node runs once, and a weight changed between two calls
  is used by the nodes that run after.
- The candidates: stats matches each output channel's mean and variance; ridge goes from plain
  least squares (lam -> 0) to the unchanged weights (lam -> inf).
- Held-out folds are whole source files.
- ``--reconstruct auto`` is the default with --calib, and reports what it chose; ``none`` re-fits
  nothing; a bad value is one usage line.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import assert_one_line_error, cli, ort_run, wide_model

import onnxprune
from onnxprune.calib.data import CalibrationSet
from onnxprune.calib.reconstruct import (
    RIDGE_DEFAULT,
    RIDGE_GRID,
    Sums,
    _match_statistics,
    _solve,
    folds_of,
    summarise,
)
from onnxprune.calib.walk import ForwardWalk
from onnxprune.graph.layers import find_layers


def _tap_all(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    del tapped.graph.output[:]
    tapped.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    per_sample = [ort_run(tapped, {"x": x[i:i + 1]}) for i in range(len(x))]  # the model's batch is 1
    return {name: np.concatenate([out[k] for out in per_sample]) for k, name in enumerate(names)}


def test_the_walk_returns_what_the_whole_model_computes_and_runs_each_node_once() -> None:
    model = wide_model()
    graph = gs.import_onnx(model)
    x = np.random.default_rng(0).standard_normal((6, 4, 8, 8)).astype(np.float32)
    walk = ForwardWalk(graph, [{"x": x[i:i + 1]} for i in range(len(x))])
    layers = find_layers(graph)
    got = {}
    for layer in layers:
        got[layer.x.name] = np.concatenate(walk.values(layer.x.name))
        walk.release(layer.x.name)
    want = _tap_all(model, list(got), x)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert len(walk.ran) == len(set(walk.ran)) and len(walk.ran) < len(walk.nodes)  # the head after the last layer
    assert not any(walk.readers[n] < 0 for n in walk.readers)


def test_past_its_budget_the_walk_keeps_activations_on_disk_and_close_removes_them() -> None:
    model = wide_model()
    graph = gs.import_onnx(model)
    x = np.random.default_rng(0).standard_normal((6, 4, 8, 8)).astype(np.float32)
    feeds = [{"x": x[i:i + 2]} for i in range(0, len(x), 2)]
    names = [layer.x.name for layer in find_layers(graph)]
    with ForwardWalk(graph, feeds, budget=None) as memory, ForwardWalk(graph, feeds, budget=0) as disk:
        for name in names:
            np.testing.assert_array_equal(np.concatenate(disk.values(name)), np.concatenate(memory.values(name)))
            disk.release(name)
            memory.release(name)
        folder = disk.folder
        assert folder is not None and folder.is_dir() and memory.folder is None
        # released tensors no node still reads are deleted as the walk goes
        assert len(list(folder.iterdir())) < disk.written
    assert not folder.exists()


def test_a_walk_that_cannot_write_to_disk_keeps_its_activations_in_memory(monkeypatch, caplog) -> None:
    model = wide_model()
    graph = gs.import_onnx(model)
    x = np.random.default_rng(0).standard_normal((4, 4, 8, 8)).astype(np.float32)
    feeds = [{"x": x[i:i + 2]} for i in range(0, len(x), 2)]
    name = find_layers(graph)[1].x.name
    monkeypatch.setattr(tempfile, "tempdir", os.devnull + "/no-folder")  # like a full or missing disk
    caplog.set_level(logging.WARNING, logger="onnxprune.calib.walk")  # whatever level an earlier CLI run left
    with ForwardWalk(graph, feeds, budget=0) as walk:
        got = np.concatenate(walk.values(name))
        assert walk.folder is None and walk.budget is None
    want = _tap_all(model, [name], x)[name]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "keeping them in memory" in caplog.text


def test_a_weight_changed_during_the_walk_is_used_by_the_nodes_after() -> None:
    graph = gs.import_onnx(wide_model())
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    first, second = find_layers(graph)[:2]
    walk = ForwardWalk(graph, [{"x": x}])
    walk.values(first.x.name)
    first.weight.values = np.zeros_like(first.weight.values)  # after the walk reached it, before it ran
    after = walk.values(second.x.name)[0]
    changed = gs.export_onnx(graph)
    np.testing.assert_allclose(after, _tap_all(changed, [second.x.name], x)[second.x.name], atol=1e-6)


def _sums(rng: np.random.Generator, rows: int = 400, kept: int = 6, outputs: int = 5):
    xp = rng.standard_normal((rows, kept)).astype(np.float32) * rng.uniform(0.5, 2.0, kept).astype(np.float32)
    y = (xp @ rng.standard_normal((kept, outputs)) + 0.3 * rng.standard_normal((rows, outputs)) + 1.5
         ).astype(np.float32)
    s = Sums.zeros(kept, outputs)
    s.add(xp, y)
    return s, xp.astype(np.float64), y.astype(np.float64)


def test_stats_matches_each_output_channels_mean_and_variance() -> None:
    s, xp, y = _sums(np.random.default_rng(2))
    start = np.random.default_rng(3).standard_normal((5, 7))  # [outputs, kept + bias]
    v = _match_statistics(s, start, with_bias=True)
    out = xp @ v[:, :-1].T + v[:, -1]
    np.testing.assert_allclose(out.mean(0), y.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.var(0), y.var(0), rtol=1e-5)


def test_ridge_runs_from_least_squares_to_the_unchanged_weights() -> None:
    s, xp, y = _sums(np.random.default_rng(4))
    start = np.random.default_rng(5).standard_normal((5, 7))
    keep = np.arange(7)
    exact = np.linalg.lstsq(np.hstack([xp, np.ones((len(xp), 1))]), y, rcond=None)[0].T
    np.testing.assert_allclose(_solve(s, start, keep, 1e-9, 0.0), exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_solve(s, start, keep, 1e9, 0.0), start, atol=1e-6)
    errors = [s.residual(_solve(s, start, keep, lam, 0.0))[0] for lam in RIDGE_GRID]
    assert errors == sorted(errors), "on the data it was fitted to, a stronger pull fits worse"


def test_held_out_folds_are_whole_files() -> None:
    sources = np.array([7, 7, 3, 3, 3, 9, 1, 1, 9, 7])
    folds = folds_of(sources, len(sources))
    for source in set(sources.tolist()):
        assert len(set(folds[sources == source].tolist())) == 1
    assert set(folds.tolist()) == {0, 1}
    assert set(folds_of(None, 5).tolist()) == {0, 1}


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, CalibrationSet]:
    folder = tmp_path_factory.mktemp("wide")
    path = folder / "wide.onnx"
    onnx.save(wide_model(), str(path))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((24, 4, 8, 8)).astype(np.float32)
    return path, CalibrationSet({"x": x}, "24 samples of 12 files", sources=np.repeat(np.arange(12), 2))


def test_auto_is_the_default_with_data_and_says_what_it_chose(wide) -> None:
    path, calib = wide
    default = onnxprune.prune(path, flops=0.5, calib=calib, round_to=1)
    none = onnxprune.prune(path, flops=0.5, calib=calib, round_to=1, reconstruct="none")
    lstsq = onnxprune.prune(path, flops=0.5, calib=calib, round_to=1, reconstruct="lstsq")
    assert default.refits and not none.refits and lstsq.refits
    assert all(r.held_out_after is not None for r in default.refits)
    assert {r.chosen for r in default.refits} <= {f"ridge(lam={lam:g})" for lam in RIDGE_GRID}
    assert {r.chosen for r in lstsq.refits} == {"lstsq"}
    assert summarise(default.refits)
    # the held-out files are fitted better than by the kept dense weights, on the whole
    assert np.mean([r.held_out_after for r in default.refits]) < np.mean([r.error_before for r in default.refits])


def test_the_cli_takes_how_and_refuses_a_bad_one(wide, tmp_path: Path) -> None:
    path, calib = wide
    np.save(tmp_path / "calib.npy", calib.samples["x"])
    proc = cli(path, "--flops", "0.5", "--calib", tmp_path / "calib.npy", "--reconstruct", "ridge", "--report",
               tmp_path / "r.json", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reconstruct: " in proc.stdout and "ridge" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert {r["chosen"] for r in report["reconstruct"]} == {f"ridge(lam={RIDGE_DEFAULT:g})"}
    bad = cli(path, "--flops", "0.5", "--calib", tmp_path / "calib.npy", "--reconstruct", "bogus", cwd=tmp_path)
    assert "reconstruct" in assert_one_line_error(bad, 2)


def test_large_images_go_through_calibration_a_few_at_a_time() -> None:
    from onnxprune.calib.activations import PIXELS_PER_BATCH, batch_size_for, fitting_batch

    graph = gs.import_onnx(wide_model())
    graph.inputs[0].shape = ["N", *graph.inputs[0].shape[1:]]  # a free batch dim
    small = {"x": np.zeros((64, 3, 224, 224), np.float32)}
    large = {"x": np.zeros((50, 3, 736, 992), np.float32)}
    assert batch_size_for(graph, 16, small) == 16
    assert batch_size_for(graph, 16, large) == 1  # 16 of them held several GiB of activations
    assert fitting_batch(large, 32, 2 * PIXELS_PER_BATCH) == 2
    assert fitting_batch({"x": np.zeros((4, 10), np.float32)}, 32) == 32  # no spatial dims
