"""Malformed models and typed inputs (issue 18 §2): each class of bad input is one line naming what
is wrong, exit 1 for a model problem and 2 for a usage problem, never an internal error, never a
hang, and the input untouched.

Classes: malformed tensors (raw_data shorter or longer than its dims, dims that overflow or exceed
the data, negative dims, external data past its file or in a FIFO), absurd ``--input-shape`` sizes
and what the input size implies for memory (activations, float32 feeds), ``--calib`` FIFOs and
devices, a corrupt latency cache, control characters and markup in model names, ``-q`` with a
HOME onnxruntime cannot write, and wrong types given to the API.

Everything is real: ONNX files on disk, onnxruntime sessions, the CLI in this process (``run``) or
as a command (``helpers.cli``) where the process itself matters (stderr of a C++ library).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import (
    MODEL,
    USAGE,
    analysis_of,
    assert_one_line_error,
    cli,
    conv_model,
    save_external,
    small_model,
    snapshot,
    sweep_model,
)
from onnx import helper, numpy_helper

import onnxprune
from onnxprune import memory
from onnxprune.calib.data import load_calibration
from onnxprune.cli import main
from onnxprune.errors import ModelError, UsageError
from onnxprune.graph import shapes
from onnxprune.graph.capture import input_feed
from onnxprune.graph.load import read_model, read_split
from onnxprune.graph.shapes import input_specs, parse_input_shape
from onnxprune.ranking import latency_model as lm


@pytest.fixture
def run(monkeypatch, capsys):
    """run(*args) -> (exit code, stdout, stderr) of the command line, in this process."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")

    def command(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return command


def one_error(code: int, out: str, err: str, want: int) -> str:
    """The single error line of a failed in-process run with exit code ``want``."""
    assert code == want, err
    assert out == "" and "Traceback" not in err and "internal error" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error: "), err
    return lines[0]


# --- 1. malformed tensors ------------------------------------------------------------------------


def _first_weight(model: onnx.ModelProto) -> onnx.TensorProto:
    return model.graph.initializer[0]  # c1.w, float32 [8, 4, 3, 3] in small_model


def _short(t):
    t.raw_data = t.raw_data[:-4]


def _long(t):
    t.raw_data = t.raw_data + b"\0" * 4


def _odd(t):  # not even a whole number of float32s
    t.raw_data = t.raw_data + b"\0"


def _negative(t):
    t.dims[0] = -t.dims[0]


def _overflow(t):
    t.dims[0] = t.dims[1] = 2**40


def _exceeds(t):
    t.dims[0] = t.dims[0] * 1000


def _typed_short(t):  # values in float_data instead of raw_data
    values = numpy_helper.to_array(t).ravel()[:-1]
    t.ClearField("raw_data")
    t.float_data.extend(values.tolist())


INLINE_CASES = {"short": (_short, "1148 (shorter than its dims say)"),
                "long": (_long, "1156 (longer than its dims say)"),
                "odd": (_odd, "1153 (longer than its dims say)"),
                "negative": (_negative, "has a negative dimension [-8, 4, 3, 3]"),
                "overflow": (_overflow, "overflows int64"),
                "exceeds": (_exceeds, "need 1152000 bytes, but it holds 1152"),
                "typed_short": (_typed_short, "need 288 float_data values, but it holds 287")}


def _malformed(tmp_path: Path, case: str) -> Path:
    model = small_model()
    INLINE_CASES[case][0](_first_weight(model))
    path = tmp_path / f"{case}.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("case", list(INLINE_CASES))
def test_malformed_initializers_are_model_errors_naming_the_tensor(tmp_path: Path, case: str) -> None:
    path = _malformed(tmp_path, case)
    for read in (read_split, read_model):  # the pipeline's reader and the full-proto reader
        with pytest.raises(ModelError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: initializer c1.w"), message
        assert INLINE_CASES[case][1] in message, message
        assert "\n" not in message


def test_a_malformed_model_from_the_command_line(tmp_path: Path, run) -> None:
    """Prune, analyze and bench all read through the checks; the input is untouched, nothing written."""
    path = _malformed(tmp_path, "negative")  # before the checks: accepted, and pruned
    before = snapshot(tmp_path)
    for args in ([path, "--flops", "0.5", "-o", tmp_path / "p.onnx"], ["analyze", path],
                 ["bench", path, "--runs", "2", "--min-seconds", "0", "--warmup", "0"]):
        line = one_error(*run(*args), MODEL)
        assert "initializer c1.w has a negative dimension [-8, 4, 3, 3]" in line
    assert snapshot(tmp_path) == before


def test_a_malformed_constant_node_value_is_named(tmp_path: Path) -> None:
    model = small_model()
    value = numpy_helper.from_array(np.ones((2, 3), np.float32), "k")
    value.raw_data = value.raw_data[:-8]
    model.graph.node.append(helper.make_node("Constant", [], ["unused"], name="the_constant", value=value))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match=r"tensor k of Constant the_constant: its dims \[2, 3\] need 24 bytes, but "
                                         r"it holds 16 \(shorter"):
        read_split(path)


def _external(tmp_path: Path, **entries: str) -> Path:
    """small_model saved with external data, then the first weight's external entries changed."""
    path = tmp_path / "ext.onnx"
    save_external(small_model(), path)
    model = onnx.load(str(path), load_external_data=False)
    for entry in _first_weight(model).external_data:
        if entry.key in entries:
            entry.value = entries[entry.key]
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("entries, says", [
    ({"length": "1001152"}, "external data at offset 0, length 1001152 runs past the end of ext.onnx.data"),
    ({"offset": "1000000000"}, "external data at offset 1000000000, length 1152 runs past the end of ext.onnx.data"),
    ({"length": "1148"}, "need 1152 bytes, but its external data in ext.onnx.data holds 1148 (shorter"),
    ({"offset": "-5"}, "external data with a negative offset or length (-5, 1152)"),
    ({"offset": "abc"}, "external data offset/length are not integers ('abc', '1152')"),
    ({"location": "missing.data"}, "its external data file missing.data does not exist"),
    ({"location": "fifo.data"}, "its external data file fifo.data is not a regular file"),
    # a model may not make onnxprune read files elsewhere on the disk (onnx's loader refuses them too)
    ({"location": "../../../etc/hostname"}, "its external data location ../../../etc/hostname lies outside"),
    ({"location": "/etc/hostname"}, "its external data location /etc/hostname lies outside the model's folder"),
])
def test_malformed_external_data_is_named_without_reading_it(tmp_path: Path, entries: dict, says: str) -> None:
    os.mkfifo(tmp_path / "fifo.data")  # reading it would block forever
    path = _external(tmp_path, **entries)
    for read in (read_split, read_model):
        with pytest.raises(ModelError) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: initializer c1.w: ") and says in str(info.value), str(info.value)


def test_a_well_formed_model_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    save_external(small_model(), path)
    _, weights, external = read_split(path)
    assert external and weights["c1.w"].shape == (8, 4, 3, 3)


# --- 2. absurd input sizes, and 5. what the input size implies for memory ---------------------------


@pytest.mark.parametrize("text, says", [
    ("x:1x3x100000x1000000", "one input of that size is 1117.6 GiB as float32, more than this machine's"),
    ("x:1x3x99999999999999999999x2", "599999999999999999994 elements per input overflow int64"),
    ("x:0x3x224x224", "dims must be positive, got 0"),
    ("x:1x3x-5x2", "dims must be positive, got -5"),
    ("x:1x3xHxW", "dims must be integers"),
])
def test_absurd_input_shapes_are_refused_when_parsed(text: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_input_shape(text)
    assert says in str(info.value) and str(info.value).startswith(f"--input-shape {text}")


def test_the_unused_batch_entry_is_not_counted() -> None:
    assert parse_input_shape("x:100000000x3x224x224") == ("x", (100000000, 3, 224, 224))  # FLOPs are per sample


def _free_conv(path: Path) -> Path:
    """Conv 3->64 + Relu whose height and width are free (a 64-channel activation per pixel)."""
    model = conv_model(cin=3, cout=64, hw=16)
    for value in (model.graph.input[0], model.graph.output[0]):
        for axis in (2, 3):
            value.type.tensor_type.shape.dim[axis].dim_param = "hw"
    onnx.save_model(model, str(path))
    return path


def test_activations_that_cannot_fit_are_refused_before_anything_runs(tmp_path: Path, run, monkeypatch) -> None:
    """x[1,3,2000,2000] is 46 MiB, but the 64-channel activations are 0.95 GiB each (4 copies at once):
    more than --max-memory 3, and more than a machine of 2 GiB. Refused before the capture runs."""
    path = _free_conv(tmp_path / "free.onnx")
    before = snapshot(tmp_path)
    line = one_error(*run(path, "--flops", "0.5", "--input-shape", "x:1x3x2000x2000", "--max-memory", "3",
                          "-o", tmp_path / "p.onnx"), USAGE)
    assert "at input size x[1,3,2000,2000] the model needs about 4.3 GiB of memory" in line
    assert "0.95 GiB for its largest activation c), more than --max-memory 3: give a smaller --input-shape" in line
    for module in (memory, shapes):  # a machine of 2 GiB
        monkeypatch.setattr(module, "machine_memory", lambda: 2 * memory.GiB)
    model = onnx.load(str(path))
    with pytest.raises(UsageError, match="more than this machine's 2.0 GiB: give a smaller --input-shape"):
        memory.resolve_shapes(model, {"x": (1, 3, 2000, 2000)})
    with pytest.raises(UsageError, match="one input of that size is 2.2 GiB as float32, more than this machine's 2.0"):
        memory.resolve_shapes(model, {"x": (1, 3, 14000, 14000)})
    assert snapshot(tmp_path) == before
    memory.resolve_shapes(model, {"x": (1, 3, 64, 64)})  # a real size is fine


def test_largest_activation_is_read_at_the_given_size(tmp_path: Path) -> None:
    model = onnx.load(str(_free_conv(tmp_path / "free.onnx")))
    name, size = memory.largest_activation(model, {"x": (1, 3, 100, 50)})
    assert name in ("c", "y") and size == 64 * 100 * 50 * 4


def test_random_feeds_are_drawn_as_float32() -> None:
    """A float32 input's random feed never holds a float64 copy: at most its own bytes plus a little."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(conv_model(cin=3, cout=8, hw=1000))
    tracemalloc.start()
    try:
        feed = input_feed(graph)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert feed["x"].dtype == np.float32 and feed["x"].shape == (1, 3, 1000, 1000)
    assert peak < 1.2 * feed["x"].nbytes, (peak, feed["x"].nbytes)  # float64 and a cast: 3x


# --- 3. --calib that would block ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "device", "fifo in a folder", "device link in a folder"])
def test_calibration_fifos_and_devices_are_refused_not_read(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        source = tmp_path / "calib.npy"
        os.mkfifo(source)
    elif kind == "device":
        source = Path("/dev/zero")
    else:
        source = tmp_path / "photos"
        (source / "sub").mkdir(parents=True)
        if kind == "fifo in a folder":
            os.mkfifo(source / "sub" / "a.png")
        else:
            (source / "z.npy").symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="a FIFO, device or socket, not a (file|file or folder): reading it could "
                                         "block forever"):
        load_calibration(source, input_specs(small_model()))


def test_a_calibration_fifo_from_the_command_line(tmp_path: Path, run) -> None:
    model = tmp_path / "m.onnx"
    onnx.save_model(small_model(), str(model))
    os.mkfifo(tmp_path / "calib.npy")
    line = one_error(*run(model, "--flops", "0.5", "--calib", tmp_path / "calib.npy", "-o", tmp_path / "p.onnx"),
                     USAGE)
    assert "calibration source" in line and "is a FIFO, device or socket" in line


# --- 4. a corrupt latency cache -------------------------------------------------------------------


def _corrupt(data: dict, how: str) -> str:
    node = data["nodes"][0]
    if how == "not json":
        return "{not json"
    if how == "a list":
        return "[]"
    if how == "nan":
        node["ms"] = [float("nan")] * len(node["ms"])
    elif how == "short grid":
        node["ms"] = node["ms"][:1]
    elif how == "negative":
        node["ms"] = [-1.0] * len(node["ms"])
    elif how == "points":
        node["points"] = [[0, 3]]
    elif how == "no nodes":
        data["nodes"] = "x"
    return json.dumps(data)


@pytest.mark.parametrize("how", ["not json", "a list", "nan", "short grid", "negative", "points", "no nodes"])
def test_a_corrupt_latency_cache_is_named_ignored_and_rebuilt(tmp_path: Path, monkeypatch, caplog, how: str) -> None:
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path))
    model = sweep_model()
    analysis = analysis_of(model)
    table = lm.latency_table(analysis, model, round_to=8)
    good = Path(table.path).read_text()
    Path(table.path).write_text(_corrupt(json.loads(good), how))
    sessions = lm.SESSIONS_CREATED
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        again = lm.latency_table(analysis, model, round_to=8)
    assert not again.cached and lm.SESSIONS_CREATED > sessions  # measured again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"latency cache {table.path} is corrupt" in warnings[0], warnings
    assert "ignored, measuring the table again" in warnings[0]
    assert np.isfinite(again.dense_ms()) and again.dense_ms() > 0
    caplog.clear()
    third = lm.latency_table(analysis, model, round_to=8)  # the file was rewritten: read back, no warning
    assert third.cached and not caplog.records


# --- 6. names from the model never reach the terminal as control characters or markup -------------

EVIL = "\x1b[31mRED\x07\r\n[red]m[/]:smile:\u202e"  # ESC, BEL, CR, LF, rich markup, an emoji code, a bidi override


def _evil_model(path: Path) -> Path:
    """small_model whose input, first weight and node names carry ``EVIL``."""
    model = small_model()
    rename = {"x": "x" + EVIL, "c1.w": "c1.w" + EVIL}
    for value in model.graph.input:
        value.name = rename.get(value.name, value.name)
    for tensor in model.graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for node in model.graph.node:
        node.name += EVIL
        node.input[:] = [rename.get(i, i) for i in node.input]
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _shown_escaped(text: str) -> None:
    assert not {"\x1b", "\x07", "\r", "\u202e"} & set(text), repr(text)
    assert "\\x1b[31mRED\\x07\\r\\n[red]m[/]:smile:\\u202e" in text, text  # visible, as written, not interpreted


def test_model_names_are_printed_without_control_characters_or_markup(tmp_path: Path) -> None:
    """Summary, analysis tables, log lines and error messages, from the real command (NO_COLOR: any
    escape sequence in its output could only come from the model)."""
    path = _evil_model(tmp_path / "evil.onnx")
    analyzed = cli("analyze", path, cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr
    _shown_escaped(analyzed.stdout)
    pruned = cli(path, "--flops", "0.5", "-o", tmp_path / "p.onnx", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    _shown_escaped(pruned.stdout)
    logged = cli(path, "--flops", "0.5", "--input-shape", "x:1x4x8x8", "-o", tmp_path / "p.onnx", "--force",
                 "-q", cwd=tmp_path)  # the error names the model's inputs
    line = assert_one_line_error(logged, USAGE)
    assert "the model has no input 'x'" in line
    _shown_escaped(line)


def test_log_lines_show_control_characters_escaped(tmp_path: Path, run, capsys) -> None:
    """A warning quoting the model's names (here: the input's guessed free dims) stays one visible line."""
    model = small_model()
    model.graph.input[0].name = "x" + EVIL
    for node in model.graph.node:
        node.input[:] = ["x" + EVIL if i == "x" else i for i in node.input]
    dim = model.graph.input[0].type.tensor_type.shape.dim[2]
    dim.dim_param = "h" + EVIL
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    code, out, err = run("analyze", path)
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "free dims" in warning[0], err
    _shown_escaped(warning[0])


def test_printable_leaves_ordinary_names_alone() -> None:
    from onnxprune.errors import printable

    for name in ("conv1.weight", "/features/features.0/Conv_output_0", "onnx::Conv_654", "x:0", "é中 [1]"):
        assert printable(name) == name
    assert printable("a\tb\x9bc\x7f") == "a\\tb\\x9bc\\x7f"


# --- 7. -q is quiet when onnxruntime cannot write its telemetry id ----------------------------------


@pytest.mark.parametrize("home", ["/dev/null", "/proc/nonexistent"])
def test_quiet_is_quiet_when_home_cannot_be_written(tmp_path: Path, home: str) -> None:
    """onnxruntime's telemetry warns on stderr, while it is imported, when it cannot persist its device
    id; HOME a file or on a read-only file system makes that happen even for root."""
    path = tmp_path / "m.onnx"
    onnx.save_model(small_model(), str(path))
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    proc = subprocess.run([sys.executable, "-m", "onnxprune", path, "--flops", "0.5", "-q", "-o", tmp_path / "p.onnx"],
                          cwd=tmp_path, env={**env, "HOME": home}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert (tmp_path / "p.onnx").is_file()


# --- 8. the API refuses wrong types, naming the parameter and what it accepts ------------------------


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save_model(small_model(), str(path))
    return path


@pytest.mark.parametrize("call, says", [
    (lambda m: onnxprune.prune(m.read_bytes(), flops=0.5),
     "model must be a path (str or os.PathLike) or an onnx.ModelProto, got bytes (a serialised model: "
     "onnx.load_from_string(data) first)"),
    (lambda m: onnxprune.prune(m, flops="0.5"), "flops must be a number (int, float or a numpy number), got str '0.5'"),
    (lambda m: onnxprune.prune(m, flops=True), "flops must be a number (int, float or a numpy number), got bool True"),
    (lambda m: onnxprune.prune(m, flops=0.5, calib={"x": 1}), "calib must be a path (str or os.PathLike), 'random', "
                                                              "a numpy array of samples or a CalibrationSet, got dict"),
    (lambda m: onnxprune.prune(m, flops=0.5, calib_count=2.5), "calib_count must be an integer"),
    (lambda m: onnxprune.analyze(None), "model must be a path (str or os.PathLike) or an onnx.ModelProto, got None"),
    (lambda m: onnxprune.measure_costs(3), "model must be a path"),
    (lambda m: onnxprune.bench(str(m)), "models must be a list of models (paths or onnx.ModelProto), got str"),
    (lambda m: onnxprune.bench([m, b"x"]), "models[1] must be a path"),
    (lambda m: onnxprune.sweep(m.read_bytes(), flops=[0.5]), "model must be a path"),
    (lambda m: onnxprune.to_html(None, m.parent / "r.html"), "result must be a PruneResult or a SweepResult"),
])
def test_wrong_types_are_type_errors_naming_the_parameter(model_file: Path, call, says: str) -> None:
    before = snapshot(model_file.parent)
    with pytest.raises(TypeError) as info:
        call(model_file)
    assert says in str(info.value), str(info.value)
    assert snapshot(model_file.parent) == before


def test_numpy_numbers_and_an_array_of_samples_are_accepted(model_file: Path) -> None:
    samples = np.random.default_rng(0).standard_normal((12, 4, 8, 8)).astype(np.float32)
    result = onnxprune.prune(model_file, flops=np.float32(0.5), calib=samples, calib_count=np.int64(10),
                             reconstruct=True)
    assert result.pruned.flops <= 0.5 * result.dense.flops * 1.02
    assert result.calibration.startswith("10 samples from the calib array (input 'x' 4x8x8 float32)")
    assert result.fidelity is not None and result.fidelity.samples >= 2


def test_a_malformed_model_proto_is_a_model_error(model_file: Path) -> None:
    proto = onnx.load(str(model_file))
    _short(_first_weight(proto))
    for call in (lambda: onnxprune.prune(proto, flops=0.5), lambda: onnxprune.measure_costs(proto),
                 lambda: onnxprune.bench([proto], runs=2, min_seconds=0, warmup_s=0)):
        with pytest.raises(ModelError, match=r"^model: initializer c1\.w: its dims .* \(shorter than its dims say\)"):
            call()
