"""The GPU deploy paths (onnxprune.deploy.gpu).

On any machine: the builder settings (pure: flags, workspace, optimization profiles), the parsing
of TensorRT's sparsity log lines, the atomic engine write, and the clear refusals where
onnxruntime-gpu, TensorRT or a CUDA device is missing. With TensorRT and a CUDA device: an
onnxruntime CUDA session, an engine built, saved and timed, and 2:4 sparse math reported on a
wide layer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import conv_model
from onnx import TensorProto, helper

from onnxprune.deploy import gpu
from onnxprune.deploy.gpu import (
    EngineOptions,
    build_engine,
    builder_settings,
    ort_gpu_session,
    parse_sparse_log,
    require_cuda,
    require_tensorrt,
    tensorrt_runner,
    time_engine,
)
from onnxprune.deploy.sparse24 import carries_24
from onnxprune.errors import ModelError, UsageError
from onnxprune.graph.shapes import InputSpec, input_specs
from onnxprune.report.text import _engine_precision

F32 = np.dtype(np.float32)
STATIC = [InputSpec("x", (1, 3, 224, 224), F32)]
DYNAMIC_BATCH = [InputSpec("x", ("batch", 3, 224, 224), F32)]
DYNAMIC_HW = [InputSpec("x", ("batch", 3, "h", "w"), F32)]


# --- builder settings ----------------------------------------------------------------------------


def test_static_model_needs_no_profile() -> None:
    settings = builder_settings(EngineOptions(), STATIC, carries_24=False)
    assert settings.flags == ["FP16"]
    assert settings.profile == {}
    assert settings.input_shapes == {"x": (1, 3, 224, 224)}
    assert settings.memory_pool_limits == {"WORKSPACE": 4096 * 2**20}
    assert settings.profiling_verbosity == "DETAILED"


@pytest.mark.parametrize("batch", [1, 8])
def test_dynamic_batch_profile(batch: int) -> None:
    settings = builder_settings(EngineOptions(batch=batch, workspace_mb=512), DYNAMIC_BATCH, carries_24=False)
    assert settings.profile == {"x": ((1, 3, 224, 224), (batch, 3, 224, 224), (batch, 3, 224, 224))}
    assert settings.input_shapes == {"x": (batch, 3, 224, 224)}
    assert settings.memory_pool_limits == {"WORKSPACE": 512 * 2**20}


@pytest.mark.parametrize("fp16, sparse, carries, flags", [
    (True, None, True, ["FP16", "SPARSE_WEIGHTS"]),   # auto: on when the model carries 2:4 weights
    (True, None, False, ["FP16"]),
    (False, None, True, []),                          # auto never turns sparse on without FP16
    (True, True, False, ["FP16", "SPARSE_WEIGHTS"]),   # forced on
    (True, False, True, ["FP16"]),                    # forced off
    (False, False, False, []),
])
def test_precision_and_sparse_flags(fp16: bool, sparse: bool | None, carries: bool, flags: list[str]) -> None:
    settings = builder_settings(EngineOptions(fp16=fp16, sparse=sparse), STATIC, carries_24=carries)
    assert settings.flags == flags
    assert settings.sparse is ("SPARSE_WEIGHTS" in flags)


@pytest.mark.parametrize("fp16, sparse, carries, flags", [
    (True, None, True, ["SPARSE_WEIGHTS"]),
    (True, None, False, []),
    (True, True, False, ["SPARSE_WEIGHTS"]),
    (False, None, True, []),
])
def test_tensorrt_11_gets_fp16_from_a_float16_model(fp16: bool, sparse: bool | None, carries: bool,
                                                    flags: list[str]) -> None:
    """TensorRT 11 has no BuilderFlag.FP16 (strongly typed networks only): FP16 is a float16 model."""
    settings = builder_settings(EngineOptions(fp16=fp16, sparse=sparse), STATIC, carries_24=carries,
                                tensorrt_major=11)
    assert settings.flags == flags
    assert settings.convert_fp16 is fp16
    assert settings.precision == ("FP16 (model converted to float16)" if fp16 else "FP32")
    for major in (8, 10):
        old = builder_settings(EngineOptions(fp16=fp16, sparse=sparse), STATIC, carries_24=carries,
                               tensorrt_major=major)
        assert not old.convert_fp16 and old.precision == ("FP16" if fp16 else "FP32")
        assert old.flags == (["FP16"] if fp16 else []) + flags


@pytest.mark.parametrize("fp16", [False, True])
def test_a_qdq_model_is_explicit_int8_with_the_flag_before_tensorrt_11_and_without_it_from_11(fp16: bool) -> None:
    new = builder_settings(EngineOptions(fp16=fp16), STATIC, carries_24=False, tensorrt_major=11, quantized=True)
    assert "INT8" not in new.flags and new.int8_qdq and new.precision.startswith("INT8 (explicit QDQ) + ")
    for major in (8, 10):
        old = builder_settings(EngineOptions(fp16=fp16), STATIC, carries_24=False, tensorrt_major=major, quantized=True)
        assert old.flags == (["FP16"] if fp16 else []) + ["INT8"]
        assert old.precision == "INT8 (explicit QDQ) + " + ("FP16" if fp16 else "FP32")


def test_sparse_without_fp16_is_refused() -> None:
    with pytest.raises(UsageError, match="sparse weights need FP16"):
        builder_settings(EngineOptions(fp16=False, sparse=True), STATIC, carries_24=True)


def test_other_dynamic_dims_need_shapes() -> None:
    with pytest.raises(UsageError) as info:
        builder_settings(EngineOptions(), DYNAMIC_HW, carries_24=False)
    message = str(info.value)
    assert "'x' [batch,3,h,w]" in message and "axes 2, 3" in message and "min/opt/max" in message


def test_given_shapes_are_used() -> None:
    shapes = ((1, 3, 128, 128), (4, 3, 224, 224), (8, 3, 320, 320))
    settings = builder_settings(EngineOptions(shapes={"x": shapes}), DYNAMIC_HW, carries_24=False)
    assert settings.profile == {"x": shapes}
    assert settings.input_shapes == {"x": (4, 3, 224, 224)}


@pytest.mark.parametrize("shapes, words", [
    (((1, 3, 224), (1, 3, 224), (1, 3, 224)), "rank 4"),
    (((1, 4, 224, 224),) * 3, "does not fit axis 1"),                       # the channel axis is static 3
    (((2, 3, 224, 224), (1, 3, 224, 224), (2, 3, 224, 224)), "min <= opt <= max"),
    (((0, 3, 224, 224),) * 3, "does not fit axis 0"),
    (((1, 3, 224, 224),) * 2, "three shapes"),
])
def test_bad_shapes_are_refused(shapes, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        builder_settings(EngineOptions(shapes={"x": shapes}), DYNAMIC_HW, carries_24=False)


def test_other_refusals() -> None:
    with pytest.raises(UsageError, match="fixed batch"):
        builder_settings(EngineOptions(batch=4), STATIC, carries_24=False)
    with pytest.raises(UsageError, match="does not have as inputs"):
        builder_settings(EngineOptions(shapes={"image": ((1,), (1,), (1,))}), STATIC, carries_24=False)
    with pytest.raises(UsageError, match="workspace"):
        builder_settings(EngineOptions(workspace_mb=0), STATIC, carries_24=False)
    with pytest.raises(UsageError, match="--batch"):
        builder_settings(EngineOptions(batch=0), DYNAMIC_BATCH, carries_24=False)


def test_settings_from_a_real_model_and_its_sparsity() -> None:
    dense, sparse = conv_model(), conv_model(sparse=True)
    assert not carries_24(dense) and carries_24(sparse)
    for model, want in ((dense, ["FP16"]), (sparse, ["FP16", "SPARSE_WEIGHTS"])):
        settings = builder_settings(EngineOptions(batch=2), input_specs(model), carries_24(model))
        assert settings.flags == want
        assert settings.profile == {"x": ((1, 64, 16, 16), (2, 64, 16, 16), (2, 64, 16, 16))}


# --- the build log -------------------------------------------------------------------------------

# As trtexec prints them (NVIDIA/TensorRT issues #2169 and #4056) and as the Python logger did
# (issue #1403); an ILogger receives the message alone, the last two lines.
LOG = """\
[07/19/2022-11:58:20] [I] [TRT] Total Activation Memory: 7864832
[07/19/2022-11:58:20] [I] [TRT] (Sparsity) Layers eligible for sparse math: Conv_3 + Relu_4, Conv_8, MatMul_51, Gemm_725
[07/19/2022-11:58:20] [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: Conv_3 + Relu_4
[TensorRT] INFO: (Sparsity) Layers eligible for sparse math: Conv_0
[TensorRT] INFO: (Sparsity) TRT inference plan picked sparse implementation for layers:
(Sparsity) Layers eligible for sparse math: /layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu, Conv_8
(Sparsity) TRT inference plan picked sparse implementation for layers: Conv_8
"""


def test_parse_sparse_log() -> None:
    eligible, picked = parse_sparse_log(LOG.splitlines())
    assert eligible == ["Conv_3 + Relu_4", "Conv_8", "MatMul_51", "Gemm_725", "Conv_0",
                        "/layer1/layer1.0/conv1/Conv + /layer1/layer1.0/relu/Relu"]
    assert picked == ["Conv_3 + Relu_4", "Conv_8"]


def test_parse_sparse_log_without_sparsity_lines() -> None:
    assert parse_sparse_log(["[I] [TRT] Total Scratch Memory: 0", "(Sparsity) Layers eligible for sparse math:",
                             "(Sparsity) TRT inference plan picked sparse implementation for layers: "]) == ([], [])
    assert parse_sparse_log([]) == ([], [])


# --- files ---------------------------------------------------------------------------------------


# --- build_engine against a stand-in TensorRT ------------------------------------------------


def fake_tensorrt(version: str, parsed: list[onnx.ModelProto], flags: list[str]) -> SimpleNamespace:
    """Just enough of the tensorrt module for build_engine (names as in the real bindings, which
    tests/test_tensorrt_contract.py checks): records the model the parser reads and the builder
    flags set; TensorRT 11 has no BuilderFlag.FP16."""

    class ILogger:
        Severity = SimpleNamespace(VERBOSE=0, INFO=1, WARNING=2, ERROR=3, INTERNAL_ERROR=4)

        def __init__(self) -> None:
            pass

    class Parser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            parsed.append(onnx.load(path))
            return True

    class Config:
        profiling_verbosity = None

        def set_flag(self, flag: str) -> None:
            flags.append(flag)

        def set_memory_pool_limit(self, pool, size) -> None:
            pass

        def add_optimization_profile(self, profile) -> None:
            pass

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, creation_flags: int) -> object:
            assert creation_flags == 0, "no creation flag since TensorRT 10"
            return object()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> SimpleNamespace:
            return SimpleNamespace(set_shape=lambda *shapes: None)

        def build_serialized_network(self, network, config) -> bytes:
            return b"engine"

    def runtime(logger) -> SimpleNamespace:
        info = SimpleNamespace(get_engine_information=lambda fmt: '{"Layers": ["conv"]}')
        return SimpleNamespace(deserialize_cuda_engine=lambda engine: SimpleNamespace(
            create_engine_inspector=lambda: info))

    names = ["SPARSE_WEIGHTS"] + (["FP16"] if int(version.split(".")[0]) < 11 else [])
    return SimpleNamespace(
        __version__=version, ILogger=ILogger, Builder=Builder, OnnxParser=Parser, Runtime=runtime,
        BuilderFlag=SimpleNamespace(**{name: name for name in names}),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"), ProfilingVerbosity=SimpleNamespace(DETAILED="DETAILED"),
        LayerInformationFormat=SimpleNamespace(JSON="JSON"))


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_build_engine_gets_fp16_the_way_the_major_allows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        version: str) -> None:
    """TensorRT 10: the float32 model and BuilderFlag.FP16. TensorRT 11: a float16 copy of the model
    (float32 inputs and outputs), no FP16 flag, the copy gone after the build."""
    pytest.importorskip("onnxconverter_common", reason="needs onnxconverter-common (the test and gpu extras)")
    parsed: list[onnx.ModelProto] = []
    flags: list[str] = []
    monkeypatch.setattr(gpu, "require_tensorrt", lambda: fake_tensorrt(version, parsed, flags))
    monkeypatch.setattr(gpu, "_LOGGER", None)  # the process's logger is made for the module it was first given
    path = tmp_path / "conv.onnx"
    onnx.save(conv_model(sparse=True), str(path))
    report = build_engine(path, EngineOptions(batch=2), tmp_path / "conv.engine")
    (model,) = parsed
    weights = {init.data_type for init in model.graph.initializer}
    io = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    summary = report.summary()
    if version.startswith("11."):
        assert flags == ["SPARSE_WEIGHTS"] and weights == {TensorProto.FLOAT16}
        assert summary["precision"] == "FP16 (model converted to float16)"
        assert _engine_precision(summary) == "FP16 (model converted to float16), SPARSE_WEIGHTS"
    else:
        assert flags == ["FP16", "SPARSE_WEIGHTS"] and weights == {TensorProto.FLOAT}
        assert summary["precision"] == "FP16" and _engine_precision(summary) == "FP16, SPARSE_WEIGHTS"
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert report.layers == ["conv"] and summary["tensorrt"] == version
    assert (tmp_path / "conv.engine").read_bytes() == b"engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.engine", "conv.onnx"]


# --- refusals where the GPU stack is missing -------------------------------------------------


HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


HAS_CUDA = _cuda_available()
NO_GPU_STACK = "needs TensorRT (pip install tensorrt, from NVIDIA's index) and a CUDA device with a CUDA build of torch"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider; the refusal cannot happen here")
def test_ort_cuda_is_refused_without_the_cuda_provider() -> None:
    with pytest.raises(UsageError) as info:
        ort_gpu_session(conv_model(), "ort-cuda", 1)
    message = str(info.value)
    assert message.startswith("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu")
    assert "\n" not in message
    # the two wheels share one module: the advice is a swap, never both side by side
    assert "pip install onnxruntime-gpu" in message and "pip uninstall -y onnxruntime" in message


@pytest.mark.skipif("TensorrtExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the TensorRT provider; the refusal cannot happen here")
def test_ort_trt_is_refused_without_the_tensorrt_provider(tmp_path: Path) -> None:
    path = tmp_path / "conv.onnx"
    onnx.save(conv_model(), str(path))
    with pytest.raises(UsageError, match="^onnxruntime has no TensorrtExecutionProvider: install onnxruntime-gpu"):
        ort_gpu_session(path, "ort-trt", 1, fp16=True)


def test_unknown_gpu_backend() -> None:
    with pytest.raises(UsageError, match="choose one of ort-cuda, ort-trt"):
        ort_gpu_session(conv_model(), "ort-rocm", 1)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed; the refusal cannot happen here")
def test_tensorrt_missing_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^TensorRT is not installed \(from NVIDIA's index: pip install "):
        require_tensorrt()
    path = tmp_path / "conv.onnx"
    onnx.save(conv_model(), str(path))
    with pytest.raises(UsageError, match="TensorRT is not installed"):
        build_engine(path, EngineOptions(), tmp_path / "conv.engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx"], "nothing may be written"


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is visible to torch; the refusal cannot happen here")
def test_cuda_missing_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="CUDA"):
        require_cuda()


# --- on a GPU ------------------------------------------------------------------------------------


@pytest.fixture
def gpu_stack():
    """The tensorrt module, skipping unless TensorRT and a CUDA device are both here."""
    trt = pytest.importorskip("tensorrt", reason=NO_GPU_STACK)
    if not HAS_CUDA:
        pytest.skip(NO_GPU_STACK)
    return trt


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers() or not HAS_CUDA,
                    reason="needs onnxruntime-gpu (in place of onnxruntime) and a CUDA device")
def test_ort_cuda_session_matches_the_cpu() -> None:
    model = conv_model()
    x = np.random.default_rng(1).standard_normal((2, 64, 16, 16)).astype(np.float32)
    sess = ort_gpu_session(model, "ort-cuda", 1)
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    cpu = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], cpu.run(None, {"x": x})[0], rtol=1e-3, atol=1e-3)


def test_engine_build_save_and_time(gpu_stack, tmp_path: Path) -> None:
    model = conv_model()
    path, engine_path = tmp_path / "conv.onnx", tmp_path / "conv.engine"
    onnx.save(model, str(path))
    report = build_engine(path, EngineOptions(fp16=False, batch=2), engine_path)
    assert engine_path.read_bytes() == report.engine and report.path == engine_path
    assert report.layers and report.settings.flags == []
    assert report.settings.profile["x"][2] == (2, 64, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.engine", "conv.onnx"]
    x = np.random.default_rng(1).standard_normal((2, 64, 16, 16)).astype(np.float32)
    times = time_engine(report, {"x": x}, warmup_s=0.1, min_iters=20, min_seconds=0.2)
    assert len(times) >= 20 and all(t > 0 for t in times)

    runner = tensorrt_runner(model, {"x": x}, fp16=False)
    assert runner() > 0
    cpu = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(runner.outputs()["y"], cpu.run(None, {"x": x})[0], rtol=1e-2, atol=1e-2)


def test_unparsable_model_leaves_no_engine(gpu_stack, tmp_path: Path) -> None:
    """An op from a custom domain: onnx accepts the model, TensorRT's parser has no importer for it."""
    path = tmp_path / "custom.onnx"
    model = conv_model()
    model.graph.node[1].op_type, model.graph.node[1].domain = "Mystery", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="^TensorRT cannot parse custom.onnx: .*Mystery"):
        build_engine(path, EngineOptions(), tmp_path / "custom.engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]


def test_sparse_math_is_reported_on_a_wide_2_4_layer(gpu_stack, tmp_path: Path) -> None:
    """256 -> 256 channels, 3x3 (the width NVIDIA quotes for sparse kernels to pay), FP16, batch 8."""
    path = tmp_path / "wide.onnx"
    onnx.save(conv_model(256, 256, hw=56, sparse=True), str(path))
    report = build_engine(path, EngineOptions(batch=8))
    # FP16: the builder flag before TensorRT 11, a float16 model since
    assert report.settings.sparse and report.settings.precision.startswith("FP16")
    assert any("conv" in name for name in report.eligible_sparse), report.eligible_sparse
    assert set(report.ran_sparse) <= set(report.eligible_sparse)
