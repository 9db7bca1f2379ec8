"""--allocate: per-layer sparsity that meets a model-wide --sparsity at the least summed layer error.

* The solver (calib/allocate.py) on curves made by hand: the target met exactly, cheap layers
  take more, convex hulls, a target beyond every curve.
* End to end on a real MobileNetV2 (the ``export`` fixture, legacy exporter) in onnxruntime with
  random calibration data: the model sparsity counted on the pruned initializers, layers given
  different sparsities, the summed layer error (on Hessians built here, independently) lower than
  uniform's at the same model sparsity; the report and the JSON state the allocation.
* The option in the API and on the command line, its default, and the refusals.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import assert_one_line_error, cli

import onnxprune
from onnxprune.calib import allocate
from onnxprune.calib.activations import batched
from onnxprune.calib.data import CalibrationSet
from onnxprune.calib.hessian import layer_hessians
from onnxprune.calib.obs import Pattern, obs_prune
from onnxprune.calib.sparsify import sparsify_graph
from onnxprune.errors import UsageError
from onnxprune.graph.layers import find_layers

# --- the solver -----------------------------------------------------------------------------


def curve(name: str, weights: int, scale: float, power: float = 2.0) -> allocate.Curve:
    s = np.asarray(allocate.GRID)
    return allocate.Curve(name, weights, s, scale * s**power)


def test_solver_meets_the_target_and_spends_where_it_is_cheap():
    curves = [curve("cheap", 1000, 0.1), curve("dear", 1000, 10.0), curve("mid", 4000, 1.0)]
    for target in (0.1, 0.3, 0.5, 0.62, 0.8):
        out = allocate.solve(curves, target)
        assert allocate.model_sparsity(out, [c.weights for c in curves]) == pytest.approx(target, abs=1e-9)
        assert out[0] >= out[2] >= out[1]  # the cheap layer takes most, the dear one least
    out = allocate.solve(curves, 0.5)
    assert out[0] == pytest.approx(0.95) and out[1] < 0.2


def test_solver_minimises_the_summed_error_on_convex_curves():
    """Against a brute force over the grid: no grid allocation at (or above) the target costs less."""
    curves = [curve("a", 300, 0.5, 3.0), curve("b", 700, 2.0, 2.0), curve("c", 500, 1.0, 4.0)]
    target = 0.5
    out = allocate.solve(curves, target)

    def cost(sparsities):
        return sum(np.interp(s, c.sparsities, c.errors) for s, c in zip(sparsities, curves, strict=True))

    grid = np.asarray(allocate.GRID)
    best = min(cost((a, b, c)) for a in grid for b in grid for c in grid
               if allocate.model_sparsity([a, b, c], [300, 700, 500]) >= target)
    assert cost(out) <= best + 1e-12


def test_solver_takes_the_lower_hull_and_caps_at_the_grid():
    s = np.asarray(allocate.GRID)
    bumpy = allocate.Curve("bumpy", 100, s, np.where(s < 0.5, s, s + 0.5))  # a jump: the hull skips it
    flat = allocate.Curve("flat", 100, s, 0.3 * s)
    out = allocate.solve([bumpy, flat], 0.5)
    assert allocate.model_sparsity(out, [100, 100]) == pytest.approx(0.5)
    assert allocate.solve([bumpy, flat], 0.99) == [pytest.approx(0.95)] * 2  # beyond the grid: the most measured


# --- end to end on a real model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet(export):
    return export("mobilenet_v2", "legacy")


@pytest.fixture(scope="module")
def calib() -> CalibrationSet:
    rng = np.random.default_rng(0)
    return CalibrationSet({"input": rng.standard_normal((12, 3, 224, 224)).astype(np.float32)}, "12 random samples")


def zeroed(model: onnx.ModelProto, names: list[str]) -> float:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    arrays = [inits[n] for n in dict.fromkeys(names)]
    return float(sum((a == 0).sum() for a in arrays) / sum(a.size for a in arrays))


def test_measured_meets_the_model_sparsity_with_different_layers(mobilenet, calib):
    result = onnxprune.prune(mobilenet, sparsity=0.5, calib=calib, holdout=0.25)  # default with data: measured
    sp = result.sparsity
    assert sp.allocate == "measured"
    weights = [layer.weight for layer in sp.layers]
    assert zeroed(result.model, weights) == pytest.approx(0.5, abs=0.005)  # counted on the pruned model
    assert sp.model_sparsity == pytest.approx(0.5, abs=0.005)
    spread = np.array([layer.sparsity for layer in sp.layers])
    assert spread.max() - spread.min() > 0.3 and spread.std() > 0.05
    summary = result.to_dict()["sparsity"]
    assert summary["allocate"] == "measured" and summary["model_sparsity"] == pytest.approx(0.5, abs=0.005)
    assert "measured" in summary["pattern"]


def test_obs_curve_is_obs_prune_at_each_sparsity(mobilenet, calib):
    """The one-sweep curve (stacked copies, one per sparsity, also split by the memory budget) equals
    obs_prune run at each sparsity on its own, on real layers with two blocks of columns."""
    graph = gs.import_onnx(onnx.load(str(mobilenet)))
    layers = [layer for layer in find_layers(graph) if 128 < layer.columns <= 192][:2]
    assert layers
    hessians = layer_hessians(graph, layers, batched(calib.samples, 4))
    for layer in layers:
        w, h = layer.matrix().astype(np.float64), hessians[layer.key]
        reference = allocate.measure_curve(layer.name, w, h, lambda w, h, s: np.prod(obs_prune(w, h, Pattern(s)), 0))
        for budget in (2.5e8, 8.0 * w.size * 3):  # all copies at once; three at a time
            got = allocate.obs_curve(layer.name, w, h, budget=budget)
            np.testing.assert_allclose(got.errors, reference.errors, rtol=1e-9, atol=1e-15)
        assert np.all(np.diff(reference.errors) > 0) and reference.errors[0] == 0


def _summed_error(model_path, calib: CalibrationSet, how: str) -> tuple[float, float]:
    """(summed normalised layer error, model sparsity) of sparsify_graph with ``how``, the errors
    measured on Hessians of the dense graph built here."""
    graph = gs.import_onnx(onnx.load(str(model_path)))
    dense = {layer.key: layer.matrix().astype(np.float64) for layer in find_layers(graph)}
    hessians = layer_hessians(graph, find_layers(graph), batched(calib.samples, 4))
    report = sparsify_graph(graph, Pattern(sparsity=0.6), samples=calib.samples, allocate=how)
    after = {layer.key: layer.matrix().astype(np.float64) for layer in find_layers(graph)}
    error = sum(allocate.layer_error(dense[n], after[n], hessians[n], allocate.NORMALISATION) for n in dense)
    return error, report.model_sparsity


def test_measured_has_less_summed_error_than_uniform(mobilenet, calib):
    measured, s_measured = _summed_error(mobilenet, calib, "measured")
    uniform, s_uniform = _summed_error(mobilenet, calib, "uniform")
    assert s_measured == pytest.approx(s_uniform, abs=0.005)
    assert measured < 0.8 * uniform, (measured, uniform)


# --- the option ------------------------------------------------------------------------------


def test_cli_allocate_writes_it_to_the_report(mobilenet, tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    proc = cli(mobilenet, "--sparsity", "0.5", "--calib", "random", "--calib-count", "8", "--allocate", "uniform",
               "-o", out, "--report", report, "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sp = json.loads(report.read_text())["sparsity"]
    assert sp["allocate"] == "uniform"
    assert {round(layer["sparsity"], 2) for layer in sp["layers"]} == {0.5}


def test_without_data_the_default_is_uniform(mobilenet):
    result = onnxprune.prune(mobilenet, sparsity=0.3)
    assert result.sparsity.allocate == "uniform"
    assert result.to_dict()["sparsity"]["model_sparsity"] == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("args, needle", [
    (("--sparsity", "0.5", "--allocate", "measured"), "--allocate measured needs calibration data"),
    (("--pattern", "2:4", "--calib", "random", "--allocate", "measured"), "--allocate measured applies to --sparsity"),
    (("--flops", "0.5", "--allocate", "uniform"), "--allocate applies to weight sparsity"),
])
def test_cli_refusals(mobilenet, tmp_path, args, needle):
    line = assert_one_line_error(cli(mobilenet, *args, "-o", tmp_path / "m.onnx", cwd=tmp_path), 2)
    assert needle in line
    assert not (tmp_path / "m.onnx").exists()


def test_api_refusals(mobilenet):
    with pytest.raises(UsageError, match="needs calibration data"):
        onnxprune.prune(mobilenet, sparsity=0.5, allocate="measured")
    with pytest.raises(UsageError, match="unknown allocate 'greedy'"):
        onnxprune.prune(mobilenet, sparsity=0.5, allocate="greedy")
    with pytest.raises(UsageError, match="applies to --sparsity"):
        sparsify_graph(gs.import_onnx(onnx.load(str(mobilenet))), Pattern(n=2, m=4), samples={}, allocate="measured")


def test_pattern_keeps_every_eligible_layer(mobilenet):
    """With --pattern the default allocation is uniform: N:M in every eligible layer."""
    rng = np.random.default_rng(1)
    data = CalibrationSet({"input": rng.standard_normal((6, 3, 224, 224)).astype(np.float32)}, "6 random samples")
    result = onnxprune.prune(mobilenet, pattern="2:4", calib=data, method="magnitude")
    assert result.sparsity.allocate == "uniform"
    assert {round(layer.sparsity, 3) for layer in result.sparsity.layers} == {0.5}
