"""Hostile input: a corpus of broken, malicious or unprunable model files, made by the tests
themselves, run through the real command. Each must give one ``onnxprune: error:`` line on
stderr (no traceback), exit 1 for a model problem and 2 for a usage problem, leave the input
(and its .data file) byte for byte unchanged, and leave no output or temp file behind.

A property test then injects a crash into every pipeline stage of our own code and checks
that no partial output is ever left behind.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import Net, assert_one_line_error, cli, frozen_model, save_external, small_model, snapshot, wide_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxprune.cli
from onnxprune.errors import ModelError, OnnxPruneError
from onnxprune.graph.load import save_model

USAGE, MODEL = 2, 1


@dataclass
class Case:
    """Files to create in an empty folder, the command line to run there, and what must happen."""

    setup: Callable[[Path], None]
    args: list[str]
    code: int
    needle: str  # part of the error line


def _save(name: str, build: Callable[[], onnx.ModelProto]) -> Callable[[Path], None]:
    return lambda d: onnx.save(build(), str(d / name))


def _bytes(name: str, data: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data())


def _half_model() -> bytes:
    data = small_model().SerializeToString()
    return data[: len(data) // 2]


def _dangling() -> onnx.ModelProto:
    model = small_model()
    model.graph.node[0].input[0] = "undefined"  # a node input that nothing produces
    return model


def _cycle() -> onnx.ModelProto:
    """a = Relu(b), b = Relu(a): each node consumes the other's output."""
    nodes = [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Add", ["a", "x"], ["b"]),
             helper.make_node("Identity", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "cycle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return _finish(graph)


def _two_writers() -> onnx.ModelProto:
    """Two nodes write the same tensor (not single assignment)."""
    model = small_model()
    first = model.graph.node[0]
    model.graph.node.insert(1, helper.make_node("Identity", ["x"], list(first.output), name="second_writer"))
    return model


def _finish(graph: onnx.GraphProto, opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def _unknown_op() -> onnx.ModelProto:
    net = Net(channels=4)
    net.node("Frobnicate", [net.conv("x", 4, 8, 3, name="c1")], out="y", domain="example.custom")
    return net.model({"y": [1, 8, 8, 8]})  # passes onnx.checker, not onnxruntime


def _future_opset() -> onnx.ModelProto:
    model = small_model()
    model.opset_import[0].version = 99
    return model


def _future_ir() -> onnx.ModelProto:
    model = small_model()
    model.ir_version = 99
    return model


def _external_without_data(d: Path) -> None:
    save_external(small_model(), d / "ext.onnx")
    (d / "ext.onnx.data").unlink()


def _external_truncated(d: Path) -> None:
    save_external(wide_model(), d / "ext.onnx")
    data = (d / "ext.onnx.data").read_bytes()
    (d / "ext.onnx.data").write_bytes(data[: len(data) // 2])


def _external_outside_folder(d: Path) -> None:
    """A weight whose external-data location climbs out of the model's folder."""
    (d / "m").mkdir()
    save_external(small_model(), d / "m" / "ext.onnx")
    os.replace(d / "m" / "ext.onnx.data", d / "secret.bin")
    model = onnx.load(str(d / "m" / "ext.onnx"), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(model, str(d / "m" / "ext.onnx"))


def _zero_sized_input() -> onnx.ModelProto:
    model = small_model()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 0, 8]))
    return model


def _zero_sized_weight() -> onnx.ModelProto:
    """A conv layer with 0 output channels feeding a Concat: valid ONNX that computes nothing. onnxprune
    refuses it itself, naming the weight, whether or not the installed onnxruntime would run it."""
    net = Net(channels=4)
    a = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    empty = net.conv("x", 4, 0, 1, name="empty")
    h = net.relu(net.conv(net.node("Concat", [a, empty], axis=1), 8, 6, 1, name="c2"))
    net.head(h, 6)
    return net.model()


def _bad_weights(value: float) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        model = small_model()
        for init in model.graph.initializer:
            if init.name == "c2.w":
                values = numpy_helper.to_array(init).copy()
                values[3, 1] = value
                init.CopyFrom(numpy_helper.from_array(values, init.name))
        return model
    return build


def _channel_mismatch() -> onnx.ModelProto:
    """c2 expects 5 input channels, c1 gives 8: onnx.checker passes, onnxruntime cannot run it."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    h = net.relu(net.conv(h, 5, 6, 1, name="c2"))
    net.head(h, 6)
    return net.model()


def _fixed_size_behind_dynamic_input() -> onnx.ModelProto:
    """H and W are free, but a Reshape needs them to be 8: the size the tool guesses fails (--input-shape x:1x4x8x8
    would run)."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 8, 3, name="c1"))
    flat = net.reshape(h, [1, 512], name="flat")
    net.node("Gemm", [flat, net.weight("fc.w", (10, 512), 512)], out="y", transB=1)
    model = net.model()
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "H", "W"]))
    return model


def _string_input() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "strings",
                              [helper.make_tensor_value_info("x", TensorProto.STRING, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [1, 4])])
    return _finish(graph)


def _no_nodes() -> onnx.ModelProto:
    """The output is the input itself: nothing to prune."""
    graph = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])])
    return _finish(graph)


def _write_small(d: Path) -> None:
    onnx.save(small_model(), str(d / "small.onnx"))


def _write_external(d: Path) -> None:
    save_external(wide_model(), d / "ext.onnx")


def _sub_and_small(d: Path) -> None:
    (d / "sub").mkdir()
    _write_small(d)


PRUNE = ["--flops", "0.5", "-o", "out.onnx"]

# Broken files: the same refusal from prune and from analyze.
# (A missing path or a folder is a usage problem: test_missing_or_folder_model_is_a_usage_error_everywhere.)
BROKEN_FILES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "empty file": (_bytes("empty.onnx", lambda: b""), "empty.onnx", "empty"),
    "random bytes": (_bytes("random.onnx", lambda: np.random.default_rng(0).bytes(4096)), "random.onnx",
                     "random.onnx"),
    "truncated protobuf": (_bytes("half.onnx", _half_model), "half.onnx", "half.onnx"),
    "text file": (_bytes("text.onnx", lambda: b'{"not": "a model"}\n' * 40), "text.onnx", "text.onnx"),
    "model without a graph": (_save("nograph.onnx", lambda: onnx.ModelProto(ir_version=8, producer_name="x")),
                              "nograph.onnx", "nograph.onnx"),
    "dangling tensor": (_save("dangling.onnx", _dangling), "dangling.onnx", "invalid ONNX model"),
    "cycle": (_save("cycle.onnx", _cycle), "cycle.onnx", "invalid ONNX model"),
    "two nodes write one tensor": (_save("ssa.onnx", _two_writers), "ssa.onnx", "invalid ONNX model"),
    "opset from the future": (_save("future.onnx", _future_opset), "future.onnx", "newer than onnx"),
    "IR version from the future": (_save("future_ir.onnx", _future_ir), "future_ir.onnx", "invalid ONNX model"),
    "unknown domain op": (_save("custom.onnx", _unknown_op), "custom.onnx", "onnxruntime"),
    "external data file missing": (_external_without_data, "ext.onnx", "external"),
    "external data file truncated": (_external_truncated, "ext.onnx", "external"),
    "external data outside the model folder": (_external_outside_folder, "m/ext.onnx", "outside"),
    "channel counts that do not match": (_save("mismatch.onnx", _channel_mismatch), "mismatch.onnx", "onnxruntime"),
}

CORPUS: dict[str, Case] = {}
for _name, (_setup, _file, _needle) in BROKEN_FILES.items():
    CORPUS[_name] = Case(_setup, [_file, *PRUNE], MODEL, _needle)
    CORPUS[f"analyze: {_name}"] = Case(_setup, ["analyze", _file], MODEL, _needle)
CORPUS.update({  # the size guessed for free dims (224) fails: a usage problem, the message says how to set it
    "dynamic input, the guessed size fails": Case(_save("fixed.onnx", _fixed_size_behind_dynamic_input),
                                                 ["fixed.onnx", *PRUNE], USAGE, "--input-shape x:1x4xHxW"),
    "analyze: dynamic input, the guessed size fails": Case(_save("fixed.onnx", _fixed_size_behind_dynamic_input),
                                                          ["analyze", "fixed.onnx"], USAGE, "--input-shape x:1x4xHxW"),
})
CORPUS.update({
    "zero-sized input dimension": Case(_save("zero.onnx", _zero_sized_input), ["zero.onnx", *PRUNE], MODEL,
                                       "0-sized"),
    "zero-sized weight": Case(_save("zero.onnx", _zero_sized_weight), ["zero.onnx", *PRUNE], MODEL, "empty.w"),
    "NaN weight": Case(_save("nan.onnx", _bad_weights(np.nan)), ["nan.onnx", *PRUNE], MODEL, "c2.w"),
    "Inf weight": Case(_save("inf.onnx", _bad_weights(np.inf)), ["inf.onnx", *PRUNE], MODEL, "c2.w"),
    "NaN weight, sparsity": Case(_save("nan.onnx", _bad_weights(np.nan)), ["nan.onnx", "--sparsity", "0.5"], MODEL,
                                 "c2.w"),
    "Inf weight, 2:4": Case(_save("inf.onnx", _bad_weights(np.inf)), ["inf.onnx", "--pattern", "2:4"], MODEL, "c2.w"),
    "no prunable layer": Case(_save("frozen.onnx", frozen_model), ["frozen.onnx", *PRUNE], MODEL, "unreachable"),
    "no prunable layer, params": Case(_save("frozen.onnx", frozen_model), ["frozen.onnx", "--params", "0.5"], MODEL,
                                      "unreachable"),
    "graph without nodes": Case(_save("nonodes.onnx", _no_nodes), ["nonodes.onnx", *PRUNE], MODEL,
                                "nothing to prune"),
    "string input, no layer": Case(_save("strings.onnx", _string_input), ["strings.onnx", *PRUNE], MODEL,
                                   "nothing to prune"),
    "output is the input": Case(_write_small, ["small.onnx", "--flops", "0.5", "-o", "small.onnx"], USAGE, "input"),
    "output is the input, other spelling": Case(_sub_and_small, ["small.onnx", "--flops", "0.5", "-o",
                                                                 "./sub/../small.onnx", "--force"], USAGE, "input"),
    "output is the input's data file": Case(_write_external, ["ext.onnx", "--flops", "0.5", "-o", "ext.onnx.data",
                                                              "--force"], USAGE, "weights file"),
    "output folder not writable, even by root": Case(_write_small, ["small.onnx", "--flops", "0.5", "-o",
                                                                    "/sys/out.onnx"], USAGE, "not writable"),
    "output folder is a file": Case(_write_small, ["small.onnx", "--flops", "0.5", "-o", "small.onnx/out.onnx"],
                                    USAGE, "small.onnx"),
})


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_input_is_refused_in_one_line_and_leaves_no_trace(name: str, tmp_path: Path):
    if "/sys/out.onnx" in CORPUS[name].args and not Path("/sys").is_dir():
        pytest.skip("needs Linux's /sys, a folder no one may create files in")
    case = CORPUS[name]
    case.setup(tmp_path)
    before = snapshot(tmp_path)  # the input, its .data file, and proof that nothing else exists
    proc = cli(*case.args, cwd=tmp_path)
    line = assert_one_line_error(proc, case.code)
    assert case.needle in line, line
    assert snapshot(tmp_path) == before, "the input must not change and nothing may be written"


def test_unwritable_output_folder(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("running as root: root writes into a 0o500 folder anyway")
    _write_small(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        before = snapshot(tmp_path)
        proc = cli("small.onnx", "--flops", "0.5", "-o", "locked/out.onnx", cwd=tmp_path)
        line = assert_one_line_error(proc, USAGE)
        assert "not writable" in line
        assert snapshot(tmp_path) == before
    finally:
        locked.chmod(0o700)


def test_nan_weight_is_refused_by_the_api_naming_the_initializer():
    with pytest.raises(ModelError, match=r"c2\.w.*(NaN|Inf)"):
        onnxprune.prune(_bad_weights(np.nan)(), flops=0.5)


# --- fault injection: a crash in any stage leaves nothing behind ------------------------------------

# Functions of our own pipeline, where the command looks them up, in the order it calls them.
STAGES = [
    ("onnxprune.pipeline", "read_model"),   # load
    ("onnxprune.pipeline", "to_graph"),     # constant folding
    ("onnxprune.graph.capture", "capture"),       # shapes from onnxruntime
    ("onnxprune.pipeline", "analyze_graph"),  # coupled groups
    ("onnxprune.ranking.criteria", "magnitude_scores"),  # score
    ("onnxprune.pipeline", "select_granular"),  # select
    ("onnxprune.pipeline", "apply_plan"),   # rewrite
    ("onnxprune.pipeline", "to_model"),
    ("onnxprune.pipeline", "verify"),       # verify
    ("onnxprune.graph.load", "write_model"),      # the model, staged
    ("onnxprune.deploy.runners", "measure"),        # latency, after the model is staged
    ("onnxprune.report.text", "write_json"),     # the report, after the model is staged
    ("onnxprune.outputs", "_replace"),      # publishing, halfway: the data file is already in place
]
FAULTS = [RuntimeError("injected fault"), MemoryError(), OSError(28, "No space left on device"),
          ModelError("injected model error"), KeyboardInterrupt()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from(STAGES), fault=st.sampled_from(FAULTS), after=st.integers(0, 1),
       external=st.booleans(), existing=st.booleans())
@example(stage=("onnxprune.outputs", "_replace"), fault=FAULTS[2], after=1, external=True, existing=False)
@example(stage=("onnxprune.report.text", "write_json"), fault=FAULTS[0], after=0, external=True, existing=True)
@example(stage=("onnxprune.deploy.runners", "measure"), fault=FAULTS[4], after=0, external=False, existing=False)
def test_a_crash_in_any_stage_leaves_no_partial_output(stage: tuple[str, str], fault: BaseException, after: int,
                                                        external: bool, existing: bool,
                                                        monkeypatch: pytest.MonkeyPatch, capsys):
    """Run the command in-process with ``stage`` raising ``fault`` after ``after`` calls went through
    (the second _replace is the .onnx, once the .data file is in place). It must fail, in one line,
    and leave the folder as it was; an older output it was told to overwrite (--force) is either
    untouched or gone, never replaced by a new or partial file."""
    module_name, attr = stage
    module = importlib.import_module(module_name)
    real = getattr(module, attr)
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise fault
        return real(*args, **kwargs)

    with tempfile.TemporaryDirectory() as folder, monkeypatch.context() as patch:
        d = Path(folder)
        if external:
            save_external(wide_model(), d / "in.onnx")
        else:
            onnx.save(wide_model(), str(d / "in.onnx"))
        if existing:
            (d / "out.onnx").write_bytes(b"an older output")
        before = snapshot(d)
        patch.setattr(module, attr, crash)
        args = [str(d / "in.onnx"), "--flops", "0.5", "-o", str(d / "out.onnx"), "-q",
                "--report", str(d / "report.json")]
        args += ["--force"] if existing else []
        args += [] if stage == ("onnxprune.deploy.runners", "measure") else ["--no-latency"]
        capsys.readouterr()
        code = onnxprune.cli.main(args)
        err = capsys.readouterr().err
        left = snapshot(d)
    if len(calls) <= after:
        assert code == 0, err  # the fault was never raised on this path
        return
    assert code != 0, f"{attr} raised {fault!r} but the command succeeded"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if existing and "out.onnx" not in left:
        del before["out.onnx"]
    assert left == before, "a failed run must leave the folder as it was"


def test_save_interrupted_between_data_and_model_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """save_model renames the .data file into place first; if the .onnx then fails to arrive, the
    data file is taken away again (API users get the same promise as the command)."""
    import onnxprune.outputs as outputs

    real, calls = outputs._replace, []

    def publish(src: Path, dst: Path) -> None:
        calls.append(dst.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(outputs, "_replace", publish)
    with pytest.raises(OnnxPruneError, match="No space left on device"):
        save_model(wide_model(), tmp_path / "out.onnx", external=True)
    assert calls == ["out.onnx.data", "out.onnx"]
    assert list(tmp_path.iterdir()) == []


# --- a wrong model path: exit 2 from every command ----------------------------------------------------

WRONG_PATHS = {"missing file": (lambda d: None, "missing.onnx", ("no such file", "does not exist")),
               "directory": (lambda d: (d / "folder.onnx").mkdir(), "folder.onnx", ("directory", "not a file"))}
COMMANDS = {"prune": lambda f: [f, *PRUNE], "analyze": lambda f: ["analyze", f],
            "sweep": lambda f: ["sweep", f, "--flops", "0.8", "0.5"], "bench": lambda f: ["bench", f]}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("wrong", list(WRONG_PATHS))
def test_missing_or_folder_model_is_a_usage_error_everywhere(command: str, wrong: str, tmp_path: Path):
    """A model path that does not exist, or names a folder, is a usage problem (exit 2) in every command;
    a file that is there but is no model stays a model problem (exit 1, the corpus above)."""
    setup, name, needles = WRONG_PATHS[wrong]
    setup(tmp_path)
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli(*COMMANDS[command](name), cwd=tmp_path), USAGE)
    assert name in line and any(needle in line for needle in needles), line
    assert snapshot(tmp_path) == before


# --- NaN in a bias: the dense model is broken, whatever channel pruning would cut ---------------------


def _bad_bias(name: str, value: float) -> onnx.ModelProto:
    model = small_model()
    for init in model.graph.initializer:
        if init.name == name:
            values = numpy_helper.to_array(init).copy()
            values[5 % len(values)] = value
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    return model


@pytest.mark.parametrize("name, value", [("c1.b", np.nan), ("c1.b", np.inf), ("fc.b", np.nan)])
def test_nan_or_inf_bias_is_refused_naming_the_initializer(name: str, value: float, tmp_path: Path):
    """A NaN in channel 5 of c1's bias: the dense model outputs NaN; --flops 0.5 may prune that very
    channel and write a finite model, exit 0. It must be refused like a NaN weight."""
    onnx.save(_bad_bias(name, value), str(tmp_path / "nan.onnx"))
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli("nan.onnx", "--flops", "0.5", cwd=tmp_path), MODEL)
    assert name in line and ("NaN" if np.isnan(value) else "infinite") in line, line
    assert snapshot(tmp_path) == before, "no output may be written"
    with pytest.raises(ModelError, match=name.replace(".", r"\.")):
        onnxprune.analyze(_bad_bias(name, value))


def test_infinite_attention_mask_is_not_a_bad_weight(tmp_path: Path):
    """-inf in a constant added before a Softmax (an attention mask) is legitimate: the model is finite."""
    net = Net(channels=4)
    h = net.conv("x", 4, 8, 3, name="c1")
    mask = np.zeros((1, 1, 1, 8), dtype=np.float32)
    mask[..., 0] = -np.inf
    h = net.node("Softmax", [net.node("Add", [h, net.const("mask", mask)])], axis=-1)
    h = net.relu(net.conv(h, 8, 6, 1, name="c2"))
    net.head(h, 6)
    onnx.save(net.model(), str(tmp_path / "masked.onnx"))
    proc = cli("masked.onnx", "--flops", "0.7", "-o", "out.onnx", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.onnx").exists()


# --- an unreachable target names its real cause ----------------------------------------------------


def _all_tied() -> onnx.ModelProto:
    """c1's 24 channels feed a group=3 and a group=8 Conv: the groups of 8 and of 3 overlap, so
    every channel is tied to every other (one removable unit), however grouped Convs tie them."""
    net = Net(channels=4)
    h = net.relu(net.conv("x", 4, 24, 3, name="c1"))
    h = net.node("Add", [net.conv(h, 24, 24, 3, group=3, name="g3"), net.conv(h, 24, 24, 3, group=8, name="g8")])
    net.head(net.relu(h), 24)
    return net.model()


def test_unreachable_because_of_round_to_says_so(tmp_path: Path):
    _write_small(tmp_path)
    before = snapshot(tmp_path)
    line = assert_one_line_error(cli("small.onnx", "--flops", "0.5", "--round-to", "100000", cwd=tmp_path), MODEL)
    assert "unreachable" in line and "frozen by" not in line, line
    assert ("--round-to 100000 leaves no group able to lose channels: the widest prunable group has 8 channels"
            in line), line
    assert snapshot(tmp_path) == before


def test_unreachable_because_every_channel_is_one_tied_unit_says_so(tmp_path: Path):
    onnx.save(_all_tied(), str(tmp_path / "tied.onnx"))
    line = assert_one_line_error(cli("tied.onnx", "--flops", "0.5", cwd=tmp_path), MODEL)
    assert "unreachable" in line and "frozen by" not in line, line
    assert "tied unit" in line or "tied into one unit" in line, line
    assert "Conv(group=3)" in line and "Conv(group=8)" in line, line
    assert "removing" in line and "would remove" in line, line


def test_unreachable_because_of_frozen_channels_still_names_them(tmp_path: Path):
    _write_small(tmp_path)
    line = assert_one_line_error(cli("small.onnx", "--flops", "0.05", cwd=tmp_path), MODEL)
    assert "frozen by: graph input, graph output" in line, line
