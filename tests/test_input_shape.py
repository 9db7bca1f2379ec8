"""Models whose input size is not fixed: ``--input-shape NAME:1x3x48x320`` / ``input_shapes=``.

The model is a small CRNN-style recogniser exported from torch (both exporters): a conv stack over
[N,3,H,W] that brings a height of 48 down to 3, then a Reshape to [N, C*3, W/4] (the 3 is written
in the model, so any other height fails in onnxruntime), a transpose and a Linear per column. The
legacy export leaves batch, height and width free (guessing 224 fails); the dynamo export leaves
batch and width free (H is fixed at 48; guessing 224 for the width runs, silently at the wrong size
before). Everything runs for real: torch export, onnxprune, onnxruntime; the CLI in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.api import bench, measure_costs, measured_at
from onnxprune.cli import main
from onnxprune.errors import UsageError
from onnxprune.graph.capture import capture
from onnxprune.graph.shapes import parse_input_shape

torch = pytest.importorskip("torch")
nn = torch.nn

GIVEN = "x:1x3x48x320"


class Recogniser(nn.Module):
    """Height 48 -> 3 by four stride-2 (height) convs; width / 4; then [N, C*3, W/4] -> [N, W/4, 10]."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, (2, 1)), *block(32, 32, (2, 1)))
        self.head = nn.Linear(32 * 3, 10)

    def forward(self, x):
        f = self.body(x)
        n, c, _, w = f.shape
        return self.head(f.reshape(n, c * 3, w).permute(0, 2, 1))


def _export(exporter: str, path: Path) -> Path:
    torch.manual_seed(0)
    model = Recogniser().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (torch.randn(1, 3, 48, 320),), str(path), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch", 1: "steps"}})
        else:  # torch.export specialises size-1 dims: trace at batch 2
            dims = {0: torch.export.Dim("batch"), 3: torch.export.Dim("width", min=16, max=4096)}
            torch.onnx.export(model, (torch.randn(2, 3, 48, 320),), str(path), dynamo=True, input_names=["x"],
                              output_names=["y"], dynamic_shapes=(dims,))
    return path


@pytest.fixture(scope="session")
def recogniser(tmp_path_factory):
    """recogniser(exporter) -> path of the exported model (exported once per session)."""
    folder = tmp_path_factory.mktemp("recogniser")
    made: dict[str, Path] = {}

    def get(exporter: str) -> Path:
        if exporter not in made:
            made[exporter] = _export(exporter, folder / f"rec_{exporter}.onnx")
        return made[exporter]
    return get


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args) -> (exit code, stdout, stderr) of ``onnxprune.cli.main`` run in this process."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "240")

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _error_line(err: str) -> str:
    """The one error line (warnings may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("onnxprune:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def _outputs_at(path: Path, batch: int, width: int) -> tuple[int, ...]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 48, width)).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    assert np.isfinite(y).all()
    return y.shape


def _commands(model: Path, tmp_path: Path) -> dict[str, list]:
    return {"prune": [model, "--flops", "0.5", "-o", tmp_path / "p.onnx"],
            "analyze": ["analyze", model],
            "sweep": ["sweep", model, "--flops", "0.7", "0.5", "--out", tmp_path / "sweep"],
            "bench": ["bench", model, "--runs", "2", "--min-seconds", "0", "--warmup", "0"]}


# --- parsing ----------------------------------------------------------------------------------


def test_both_syntaxes_parse_alike():
    assert parse_input_shape("x:1x3x48x320") == ("x", (1, 3, 48, 320))
    assert parse_input_shape("x:1,3,48,320") == ("x", (1, 3, 48, 320))
    assert parse_input_shape("x:[1, 3, 48, 320]") == ("x", (1, 3, 48, 320))
    assert parse_input_shape("input_1:0:1x224x224x3") == ("input_1:0", (1, 224, 224, 3))  # tf2onnx names


@pytest.mark.parametrize("text", ["x", "x:", ":1x3x48x320", "x:1x3x0x320", "x:1,3,-48,320", "x:1x3xHx320",
                                  "x:1x3x48.5x320", "x:1x3xx320"])
def test_bad_syntax_is_a_usage_error(text: str):
    with pytest.raises(UsageError, match="--input-shape"):
        parse_input_shape(text)


@pytest.mark.parametrize("command", ["prune", "analyze", "sweep", "bench"])
@pytest.mark.parametrize("shape, says", [
    (["y:1x3x48x320"], "no input 'y'"),
    (["x:1x3x48"], "3 dims given, but input x has rank 4"),
    (["x:1x4x48x320"], "dim 1 is 4, but the model fixes it at 3"),
    (["x:1x3x0x320"], "dims must be positive"),
    (["x:1x3x48x320", "x:1x3x48x160"], "given twice"),
])
def test_bad_shapes_are_one_line_usage_errors_before_any_work(recogniser, cli, tmp_path, command, shape, says):
    model = recogniser("legacy")
    args = _commands(model, tmp_path)[command]
    for s in shape:
        args += ["--input-shape", s]
    code, out, err = cli(*args)
    assert code == 2, err
    assert out == ""
    assert err.splitlines() == [_error_line(err)]  # nothing else: no guess warning, no stage ran
    assert says in err
    assert not (tmp_path / "p.onnx").exists() and not (tmp_path / "sweep").exists()


def test_api_checks_input_shapes(recogniser):
    model = recogniser("legacy")
    with pytest.raises(UsageError, match="no input 'image'"):
        onnxprune.analyze(model, input_shapes={"image": (1, 3, 48, 320)})
    with pytest.raises(UsageError, match="dims must be integers"):
        onnxprune.prune(model, flops=0.5, input_shapes={"x": (1, 3, 48.0, 320)})
    with pytest.raises(UsageError, match="fixes it at 3"):
        bench([model], input_shapes={"x": [1, 1, 48, 320]})


# --- the guessed size fails as a usage error; the given size works everywhere -------------------


@pytest.mark.parametrize("command", ["prune", "analyze", "sweep", "bench"])
def test_guessed_size_that_the_model_rejects_is_a_usage_error(recogniser, cli, tmp_path, command):
    code, out, err = cli(*_commands(recogniser("legacy"), tmp_path)[command])
    assert code == 2, err
    assert out == ""
    line = _error_line(err)
    assert err.splitlines() == [line]  # the error says what was assumed: no warning before it
    assert line.startswith("onnxprune: error: onnxruntime cannot run the model with input x at [1,3,224,224], "
                           "the size given (--input-shape) or assumed (224) for its free dims: set the size the "
                           "model expects with --input-shape x:1x3xHxW ([ONNXRuntimeError]")
    assert "Reshape" in line
    assert not (tmp_path / "p.onnx").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_given_size_prunes_and_the_result_keeps_its_dynamic_width(recogniser, cli, tmp_path, exporter):
    model = recogniser(exporter)
    out_model, report = tmp_path / "p.onnx", tmp_path / "r.json"
    code, out, err = cli(model, "--flops", "0.5", "-o", out_model, "--report", report, "--input-shape", GIVEN,
                         "--bench")
    assert code == 0, err
    assert "assumed" not in err
    assert "measured at x[1,3,48,320] (FLOPs per sample; latency at batch 1)" in out
    data = json.loads(report.read_text())
    assert data["input_shapes"] == {"x": [1, 3, 48, 320]}
    assert 0.45 <= data["flops"]["ratio"] <= 0.5
    # the output keeps its dynamic dims: other widths and batches the dense model accepts still run
    assert _outputs_at(out_model, 1, 320) == (1, 80, 10)
    assert _outputs_at(out_model, 3, 160) == (3, 40, 10)
    assert _outputs_at(model, 3, 160) == (3, 40, 10)
    y = onnx.load(str(out_model)).graph.output[0].type.tensor_type.shape.dim
    assert not y[0].HasField("dim_value") and not y[1].HasField("dim_value")


def test_given_size_analyzes(recogniser, cli, tmp_path):
    code, out, err = cli("analyze", recogniser("legacy"), "--input-shape", GIVEN, "--json", tmp_path / "a.json")
    assert code == 0, err
    assert "measured at x[1,3,48,320] (FLOPs per sample)" in out
    assert json.loads((tmp_path / "a.json").read_text())["input_shapes"] == {"x": [1, 3, 48, 320]}


def test_given_size_sweeps(recogniser, cli, tmp_path):
    code, out, err = cli("sweep", recogniser("legacy"), "--flops", "0.7", "0.5", "--out", tmp_path / "sweep",
                         "--input-shape", "x:1,3,48,320", "--bench")
    assert code == 0, err
    assert "measured at x[1,3,48,320] (FLOPs per sample; latency at batch 1)" in out
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert data["input_shapes"] == {"x": [1, 3, 48, 320]}
    assert [round(p["flops_ratio"], 1) for p in data["points"]] == [0.7, 0.5]


def test_given_size_benches(recogniser, cli, tmp_path):
    model = recogniser("legacy")
    pruned = tmp_path / "p.onnx"
    assert cli(model, "--flops", "0.5", "-o", pruned, "--input-shape", GIVEN)[0] == 0
    code, out, err = cli("bench", model, pruned, "--runs", "3", "--min-seconds", "0", "--warmup", "0",
                         "--batch", "2", "--input-shape", "x:1x3x48x160", "--json", tmp_path / "t.json")
    assert code == 0, err
    assert "inputs timed at x[2,3,48,160]" in out
    data = json.loads((tmp_path / "t.json").read_text())
    assert [m["inputs"] for m in data["models"]] == [{"x": [2, 3, 48, 160]}] * 2


# --- what the size changes: FLOPs, capture, calibration ----------------------------------------


def test_flops_are_counted_at_the_given_size(recogniser):
    model = recogniser("legacy")
    wide = measure_costs(model, input_shapes={"x": (1, 3, 48, 320)})
    narrow = measure_costs(model, input_shapes={"x": (1, 3, 48, 160)})
    assert wide.params == narrow.params
    assert wide.flops == pytest.approx(2 * narrow.flops, rel=0.01)  # every layer's output is half as wide
    result = onnxprune.prune(model, flops=0.6, input_shapes={"x": (1, 3, 48, 160)})
    assert result.input_shapes == {"x": (1, 3, 48, 160)}
    assert result.dense.flops == pytest.approx(narrow.flops)


def test_batch_entry_is_not_used_for_flops(recogniser, caplog):
    model = recogniser("legacy")
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        four = measure_costs(model, input_shapes={"x": (4, 3, 48, 320)})
    assert four.flops == measure_costs(model, input_shapes={"x": (1, 3, 48, 320)}).flops
    assert any("batch entry 4 is not used" in r.getMessage() for r in caplog.records)


def test_capture_grows_the_width_where_the_height_cannot_grow(recogniser):
    """Growing every free dim (+32) fails (the height is pinned by the Reshape); the width alone grows,
    so the width stays dynamic in the analysis and the pruned model keeps it."""
    graph = gs.import_onnx(onnx.load(str(recogniser("legacy"))))
    cap = capture(graph, {"x": (1, 3, 48, 320)})
    assert cap.shapes["y"] == (1, 80, 10)
    assert cap.shapes2["y"] == (2, 88, 10)
    assert cap.dynamic["y"] == {0, 1}


def test_calibration_is_made_at_the_given_size(recogniser, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (60 + 10 * i, 90, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    model = recogniser("legacy")
    result = onnxprune.prune(model, flops=0.7, calib=photos, calib_count=4, reconstruct=True,
                             input_shapes={"x": (1, 3, 48, 320)})
    assert "NCHW 48x320" in result.calibration
    assert result.fidelity is not None
    result = onnxprune.prune(model, flops=0.7, calib="random", calib_count=4, reconstruct=True,
                             input_shapes={"x": (1, 3, 48, 160)})
    assert result.refits


# --- the guess is announced ----------------------------------------------------------------------


def test_guessed_free_dim_is_announced(recogniser, caplog, cli, tmp_path):
    model = recogniser("dynamo")  # height fixed at 48: a guessed width of 224 runs
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        analysis = onnxprune.analyze(model)
    warned = [r.getMessage() for r in caplog.records if r.name == "onnxprune.graph.shapes"]
    assert warned == ["input x has free dims [batch,3,48,width]; assumed 224 for width: FLOPs, calibration and "
                      "latency are measured at x[1,3,48,224]; set the size with --input-shape x:1x3x48xW"]
    assert measured_at(analysis) == {"x": (1, 3, 48, 224)}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        onnxprune.analyze(model, input_shapes={"x": (1, 3, 48, 320)})
    assert not [r for r in caplog.records if r.name == "onnxprune.graph.shapes"]
    code, out, err = cli(model, "--flops", "0.5", "-o", tmp_path / "p.onnx")  # and on the CLI, on stderr
    assert code == 0
    assert "WARNING onnxprune.graph.shapes: input x has free dims [batch,3,48,width]; assumed 224" in err
    assert "measured at x[1,3,48,224]" in out
