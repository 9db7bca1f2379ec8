"""The score stage (onnxprune/score.py) on a two-conv graph, against scores computed by hand from
its weights and, for the calibrated criteria, from the layer inputs onnxruntime computes.

``small_model``: x [1, 4, 8, 8] -> Conv 3x3 c1 (8) -> Relu -> Conv 1x1 c2 (6) -> Relu -> pool,
flatten, Gemm fc to 10.
Group 1 (c1's channels) is read by c2, group 2 (c2's channels) by fc.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import analysis_of, initializers, ort_run, small_model

from onnxprune.errors import ModelError, UsageError
from onnxprune.ranking.score import calibrated_scores, magnitude_scores
from onnxprune.structure.slots import Slot


@pytest.fixture(scope="module")
def model_and_analysis():
    model = small_model()
    analysis = analysis_of(model)
    g1, g2 = analysis.groups
    assert g1.weights == [Slot("c1.w", 0), Slot("c2.w", 1)] and g2.weights == [Slot("c2.w", 0), Slot("fc.w", 1)]
    return model, analysis


def test_magnitude_scores_average_the_groups_weight_norms(model_and_analysis):
    model, analysis = model_and_analysis
    w = {k: v.astype(np.float64) for k, v in initializers(model).items()}
    c1, c2, fc = w["c1.w"], w["c2.w"][:, :, 0, 0], w["fc.w"]
    s1, s2 = magnitude_scores(analysis, "l2")
    np.testing.assert_allclose(s1, ((c1**2).sum((1, 2, 3)) + (c2**2).sum(0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(s2, ((c2**2).sum(1) + (fc**2).sum(0)) / 2, rtol=1e-6)
    s1, s2 = magnitude_scores(analysis, "l1")
    np.testing.assert_allclose(s1, (np.abs(c1).sum((1, 2, 3)) + np.abs(c2).sum(0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(s2, (np.abs(c2).sum(1) + np.abs(fc).sum(0)) / 2, rtol=1e-6)


def layer_inputs_by_hand(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c2's input [n, 8, 8, 8], fc's input [n, 6]) from onnxruntime, the tensors added as outputs."""
    c2_in = next(n.input[0] for n in model.graph.node if n.output[0] == "c2")
    fc_in = next(n.input[0] for n in model.graph.node if n.op_type == "Gemm")
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    del tapped.graph.output[:]
    tapped.graph.output.extend([onnx.ValueInfoProto(name=c2_in), onnx.ValueInfoProto(name=fc_in)])
    return tuple(np.concatenate([ort_run(tapped, {"x": x[i:i + 1]})[k] for i in range(len(x))]) for k in (0, 1))


@pytest.fixture(scope="module")
def calibration(model_and_analysis):
    model, _ = model_and_analysis
    x = np.random.default_rng(0).standard_normal((5, 4, 8, 8)).astype(np.float32)
    a2, a_fc = layer_inputs_by_hand(model, x)
    rows2 = a2.transpose(0, 2, 3, 1).reshape(-1, 8).astype(np.float64)  # a 1x1 conv: one row per pixel
    return x, {"c2": rows2, "fc": a_fc.astype(np.float64)}


def test_activation_weighted_scores(model_and_analysis, calibration):
    """act: sum over the channel's weight columns of w^2 * H_jj, with H = 2 X^T X / rows."""
    model, analysis = model_and_analysis
    x, rows = calibration
    w = initializers(model)
    c2, fc = w["c2.w"][:, :, 0, 0].astype(np.float64), w["fc.w"].astype(np.float64)
    diag2 = 2 * (rows["c2"] ** 2).mean(0)
    diag_fc = 2 * (rows["fc"] ** 2).mean(0)
    s1, s2 = calibrated_scores(analysis, {"x": x}, "act", batch_size=1)
    np.testing.assert_allclose(s1, (c2**2 * diag2[None, :]).sum(0), rtol=1e-5)
    np.testing.assert_allclose(s2, (fc**2 * diag_fc[None, :]).sum(0), rtol=1e-5)


def obs_by_hand(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """sum_q w_qj^2 / [H^-1]_jj with H = 2 X^T X / rows dampened: dead columns get a unit diagonal,
    then 1% of the mean diagonal is added to all of it."""
    h = 2 * rows.T @ rows / len(rows)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += 0.01 * np.mean(np.diag(h)) * np.eye(len(h))
    return (w**2 / np.diag(np.linalg.inv(h))[None, :]).sum(0)


def test_obs_scores(model_and_analysis, calibration):
    model, analysis = model_and_analysis
    x, rows = calibration
    w = initializers(model)
    s1, s2 = calibrated_scores(analysis, {"x": x}, "obs", batch_size=2)
    np.testing.assert_allclose(s1, obs_by_hand(w["c2.w"][:, :, 0, 0].astype(np.float64), rows["c2"]), rtol=1e-5)
    np.testing.assert_allclose(s2, obs_by_hand(w["fc.w"].astype(np.float64), rows["fc"]), rtol=1e-5)


def test_unknown_criteria_are_usage_errors(model_and_analysis):
    _, analysis = model_and_analysis
    with pytest.raises(UsageError, match="unknown criterion 'l3'"):
        magnitude_scores(analysis, "l3")
    with pytest.raises(UsageError, match="unknown calibrated criterion 'l2'"):
        calibrated_scores(analysis, {"x": np.zeros((1, 4, 8, 8), np.float32)}, "l2")


def test_a_nan_weight_cannot_be_ranked():
    model = small_model()
    for init in model.graph.initializer:
        if init.name == "c2.w":
            values = onnx.numpy_helper.to_array(init).copy()
            values[0, 0, 0, 0] = np.nan
            init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    analysis = analysis_of(model)
    with pytest.raises(ModelError, match="weight c2.w has NaN or infinite values"):
        magnitude_scores(analysis, "l2")
