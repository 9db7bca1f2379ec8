"""Deploy stage, GPU part: onnxruntime-gpu sessions and TensorRT engines.

* ``ort_gpu_session``: an onnxruntime session on the CUDA or TensorRT execution provider, refused
  with a clear message when the provider is missing or onnxruntime silently fell back to the CPU.
* ``builder_settings`` (pure, no TensorRT import): builder flags, workspace, optimization profile,
  and how FP16 is had: ``BuilderFlag.FP16`` on TensorRT 8-10; on TensorRT 11, which builds only
  strongly typed networks and has no FP16 flag, the model converted to float16 (``fp16.py``).
* ``build_engine``: the TensorRT Python API (ONNX parser, builder config, serialized engine), the
  engine's layer information, and which layers TensorRT found eligible for 2:4 sparse math and
  which it ran sparse, read from the builder's own log.
* ``time_engine`` / ``EngineRunner``: inferences timed with CUDA events through PyTorch's CUDA
  runtime (device buffers, stream, events), no pycuda.

TensorRT and PyTorch's CUDA are imported only here and only when used; their absence is a
UsageError that says what to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ModelError, UsageError, first_line
from ..graph.load import read_model, save_model
from ..graph.sessions import make_session
from ..graph.shapes import InputSpec, input_specs
from ..outputs import check_output_path, write_atomic
from .sparse24 import carries_24, sparse_eligibility
from .timing import time_samples

log = logging.getLogger(__name__)

ORT_PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}
Shape = tuple[int, ...]

# TensorRT's own wording at the end of an engine build (INFO severity), e.g.
#   [I] [TRT] (Sparsity) Layers eligible for sparse math: conv1, Conv_3 + Relu_4
#   [I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: Conv_3 + Relu_4
# as they appear in the build logs quoted in NVIDIA/TensorRT issues #1403 (Python logger, TRT 8.0),
# #2169 and #4056 (trtexec). Names are TensorRT layer names (fused layers: "A + B").
ELIGIBLE_MARK = "Layers eligible for sparse math:"
PICKED_MARK = "TRT inference plan picked sparse implementation for layers:"


# --- onnxruntime-gpu ---------------------------------------------------------------------------


def ort_gpu_session(model: onnx.ModelProto | str | os.PathLike, backend: str, threads: int = 1, *,
                    fp16: bool = False) -> ort.InferenceSession:
    """An onnxruntime session whose first provider really is CUDA ("ort-cuda") or TensorRT
    ("ort-trt", ``fp16`` allowed); the CPU provider stays last for ops the GPU one lacks."""
    if backend not in ORT_PROVIDERS:
        raise UsageError(f"unknown onnxruntime GPU backend {backend!r}; choose one of {', '.join(ORT_PROVIDERS)}")
    provider = ORT_PROVIDERS[backend]
    if provider not in ort.get_available_providers():
        raise UsageError(_missing_provider_message(provider))
    if fp16 and backend != "ort-trt":
        raise UsageError(f"--fp16 needs --backend ort-trt or tensorrt ({provider} runs the model's own precision)")
    proto = model if isinstance(model, onnx.ModelProto) else read_model(model)[0]
    chain: list = [(provider, {"trt_fp16_enable": True} if fp16 else {})]
    if backend == "ort-trt":
        chain.append("CUDAExecutionProvider")
    chain.append("CPUExecutionProvider")
    try:
        sess = make_session(proto, threads=threads, providers=chain)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"onnxruntime cannot create a {provider} session: {first_line(exc)}") from None
    used = sess.get_providers()
    if not used or used[0] != provider:
        raise UsageError(f"onnxruntime fell back to {', '.join(used) or 'no provider'}: {provider} could not start "
                         "(CUDA/cuDNN" + (" or TensorRT" if backend == "ort-trt" else "") + " libraries missing or "
                         f"not the versions onnxruntime {ort.__version__} was built for; its log above says which)")
    return sess


def _missing_provider_message(provider: str) -> str:
    """What to install. onnxruntime and onnxruntime-gpu install the same module, so they must not be
    installed side by side (microsoft/onnxruntime issues #6183, #26996): the GPU build replaces the
    CPU one."""
    installed = set()
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
            installed.add(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    extra = " and TensorRT's libraries" if provider == ORT_PROVIDERS["ort-trt"] else ""
    if installed == {"onnxruntime", "onnxruntime-gpu"}:
        return (f"onnxruntime has no {provider}: install onnxruntime-gpu alone{extra} (onnxruntime and "
                "onnxruntime-gpu are both installed and share one module: pip uninstall -y onnxruntime "
                "onnxruntime-gpu && pip install onnxruntime-gpu)")
    return (f"onnxruntime has no {provider}: install onnxruntime-gpu in place of onnxruntime{extra} (pip uninstall "
            "-y onnxruntime && pip install onnxruntime-gpu; the two share one module and must not be installed "
            "together)")


# --- optional libraries ------------------------------------------------------------------------


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a UsageError saying how to install it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise UsageError("TensorRT is not installed (from NVIDIA's index: pip install --extra-index-url "
                         "https://pypi.nvidia.com tensorrt); the tensorrt backend needs it, a CUDA GPU and torch "
                         f"with CUDA ({first_line(exc)})") from None


def require_cuda() -> Any:
    """The ``torch`` module with a usable CUDA device, or a UsageError saying what is missing."""
    try:
        torch = importlib.import_module("torch")
    except (ImportError, OSError) as exc:
        raise UsageError(f"timing a TensorRT engine needs PyTorch with CUDA (pip install torch): {first_line(exc)}")\
            from None
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        raise UsageError(f"PyTorch {torch.__version__} sees no CUDA device (its CUDA build: {build}); timing a "
                         "TensorRT engine needs a CUDA GPU and a CUDA build of torch")
    return torch


# --- builder settings (pure) -------------------------------------------------------------------


@dataclass
class EngineOptions:
    """What to build: precision, 2:4 sparsity (None: on when the model carries 2:4 weights and FP16
    is on), builder workspace, the batch to optimise for, and min/opt/max shapes per input name
    for inputs with dynamic dims other than the batch."""

    fp16: bool = True
    sparse: bool | None = None
    workspace_mb: int = 4096
    batch: int = 1
    shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)


@dataclass
class BuilderSettings:
    """The builder configuration, as plain data: BuilderFlag names, MemoryPoolType limits in bytes,
    the optimization profile {input: (min, opt, max)} (empty when every input is static), the
    ProfilingVerbosity name, the shape each input is run at (the profile's opt), and whether the
    model is converted to float16 before the build (FP16 on TensorRT 11 and later)."""

    flags: list[str]
    memory_pool_limits: dict[str, int]
    profile: dict[str, tuple[Shape, Shape, Shape]]
    profiling_verbosity: str
    input_shapes: dict[str, Shape]
    convert_fp16: bool = False
    int8_qdq: bool = False  # the model carries QuantizeLinear/DequantizeLinear: explicit INT8

    @property
    def sparse(self) -> bool:
        return "SPARSE_WEIGHTS" in self.flags

    @property
    def precision(self) -> str:
        """FP16 (the builder flag), FP16 (a float16 model, strongly typed) or FP32; INT8 (explicit
        QDQ) before it for a quantized model (the rest of it in that float precision)."""
        if self.convert_fp16:
            floats = "FP16 (model converted to float16)"
        else:
            floats = "FP16" if "FP16" in self.flags else "FP32"
        return f"INT8 (explicit QDQ) + {floats}" if self.int8_qdq else floats


# The first TensorRT major that builds only strongly typed networks: no BuilderFlag.FP16/INT8.
STRONGLY_TYPED_MAJOR = 11


def builder_settings(options: EngineOptions, inputs: list[InputSpec], carries_24: bool, *,
                     tensorrt_major: int = 10, quantized: bool = False) -> BuilderSettings:
    """Turn ``options`` into builder settings for a model with these inputs; ``carries_24`` says
    whether an eligible layer already has 2:4 weights (it decides sparse=None); ``tensorrt_major``
    decides how FP16 is had (the flag before 11, a float16 model from 11 on). A ``quantized`` (QDQ)
    model is explicit INT8: TensorRT 8-10 need BuilderFlag.INT8 to honour its Q/DQ nodes; 11, strongly
    typed, runs them as typed, with no flag."""
    if options.workspace_mb <= 0:
        raise UsageError(f"workspace must be positive, got {options.workspace_mb} MB")
    if options.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {options.batch}")
    unknown = set(options.shapes) - {spec.name for spec in inputs}
    if unknown:
        raise UsageError(f"shapes given for {', '.join(sorted(unknown))}, which the model does not have as inputs "
                         f"(inputs: {', '.join(spec.name for spec in inputs)})")
    if options.sparse and not options.fp16:
        raise UsageError("2:4 sparse weights need FP16: TensorRT picks sparse kernels only in FP16 or INT8 "
                         "(leave fp16 on)")
    if options.batch > 1 and not any(spec.shape and spec.static(0) is None for spec in inputs):
        raise UsageError(f"the model's inputs have a fixed batch; --batch {options.batch} is not possible "
                         "(export the model with a dynamic batch)")
    sparse = options.sparse if options.sparse is not None else carries_24 and options.fp16
    if options.sparse is None and carries_24 and not options.fp16:
        log.info("the model carries 2:4 weights but FP16 is off: building without the sparse flag")
    profile, run_at = {}, {}
    for spec in inputs:
        shapes = _profile_shapes(spec, options)
        if shapes is not None:
            profile[spec.name] = shapes
        run_at[spec.name] = shapes[1] if shapes is not None else tuple(int(d) for d in spec.shape)
    convert = options.fp16 and tensorrt_major >= STRONGLY_TYPED_MAJOR
    flags = (["FP16"] if options.fp16 and not convert else []) + (["SPARSE_WEIGHTS"] if sparse else [])
    if quantized and tensorrt_major < STRONGLY_TYPED_MAJOR:
        flags.append("INT8")
    return BuilderSettings(flags=flags, memory_pool_limits={"WORKSPACE": options.workspace_mb << 20},
                           profile=profile, profiling_verbosity="DETAILED", input_shapes=run_at,
                           convert_fp16=convert, int8_qdq=quantized)


def _profile_shapes(spec: InputSpec, options: EngineOptions) -> tuple[Shape, Shape, Shape] | None:
    """(min, opt, max) of one input, or None when it is static."""
    dynamic = [axis for axis in range(len(spec.shape)) if spec.static(axis) is None]
    if spec.name in options.shapes:
        return _checked_shapes(spec, options.shapes[spec.name])
    if dynamic and dynamic != [0]:
        others = [axis for axis in dynamic if axis != 0]
        raise UsageError(f"input {spec.name!r} {spec.show()} has dynamic dims besides the batch (axes "
                         f"{', '.join(map(str, others))}); give its min/opt/max shapes")
    if not dynamic:
        return None
    rest = tuple(int(d) for d in spec.shape[1:])
    return (1, *rest), (options.batch, *rest), (options.batch, *rest)


def _checked_shapes(spec: InputSpec, shapes: tuple[Shape, Shape, Shape]) -> tuple[Shape, Shape, Shape]:
    if len(shapes) != 3:
        raise UsageError(f"input {spec.name!r}: give three shapes (min, opt, max), got {len(shapes)}")
    lo, opt, hi = (tuple(int(d) for d in shape) for shape in shapes)
    for shape in (lo, opt, hi):
        if len(shape) != len(spec.shape):
            raise UsageError(f"input {spec.name!r} {spec.show()} has rank {len(spec.shape)}; got shape {list(shape)}")
        for axis, size in enumerate(shape):
            fixed = spec.static(axis)
            if size < 1 or (fixed is not None and size != fixed):
                raise UsageError(f"input {spec.name!r} {spec.show()}: shape {list(shape)} does not fit axis {axis}")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise UsageError(f"input {spec.name!r}: need min <= opt <= max on every axis, got {list(lo)}, {list(opt)}, "
                         f"{list(hi)}")
    return lo, opt, hi


# --- the build log -------------------------------------------------------------------------------


def parse_sparse_log(lines: list[str]) -> tuple[list[str], list[str]]:
    """(layers eligible for sparse math, layers TensorRT ran sparse) from builder log lines."""
    eligible: list[str] = []
    picked: list[str] = []
    for line in lines:
        for mark, out in ((ELIGIBLE_MARK, eligible), (PICKED_MARK, picked)):
            at = line.find(mark)
            if at < 0:
                continue
            for name in line[at + len(mark):].split(", "):
                name = name.strip()
                if name and name not in out:
                    out.append(name)
    return eligible, picked


_LOGGER: Any = None


def _capturing_logger(trt: Any) -> Any:
    """The process's TensorRT ILogger, emptied: it keeps INFO and worse messages (the sparsity lines
    are INFO) and forwards them to Python logging at DEBUG.

    One instance for the whole process: TensorRT treats the logger as a singleton and sends the
    messages of every later builder or runtime to the first logger it was given (Logger docs).
    """
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = _logger_class(trt)()
    _LOGGER.lines.clear()
    _LOGGER.errors.clear()
    return _LOGGER


def _logger_class(trt: Any) -> type:
    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: ANN001 - TensorRT's callback signature
            if severity == trt.ILogger.Severity.VERBOSE:
                return
            text = " ".join(str(msg).split())
            self.lines.append(text)
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(text)
            log.debug("TensorRT: %s", text)

        def last_errors(self, count: int = 3) -> str:
            return " | ".join((self.errors or self.lines)[-count:]) or "no message from TensorRT"

    return CapturingLogger


# --- building ------------------------------------------------------------------------------------


@dataclass
class EngineReport:
    """A built engine and what the build said: layer information (the inspector's JSON "Layers"),
    TensorRT layers eligible for 2:4 sparse math and those it ran sparse."""

    engine: bytes = field(repr=False)
    settings: BuilderSettings
    layers: list[Any]
    eligible_sparse: list[str]
    ran_sparse: list[str]
    build_s: float
    tensorrt_version: str
    path: Path | None = None

    def summary(self) -> dict[str, Any]:
        """Plain data for a JSON report (no engine bytes, no per-layer detail)."""
        return {"tensorrt": self.tensorrt_version, "flags": self.settings.flags,
                "precision": self.settings.precision, "build_s": self.build_s,
                "engine_bytes": len(self.engine), "engine_path": str(self.path) if self.path else None,
                "layers": len(self.layers), "eligible_sparse": self.eligible_sparse, "ran_sparse": self.ran_sparse}


def build_engine(onnx_path: str | os.PathLike, options: EngineOptions | None = None,
                 save_engine: str | os.PathLike | None = None) -> EngineReport:
    """Build a TensorRT engine from an ONNX file (external data beside it is read too); write it to
    ``save_engine`` atomically when given."""
    options = options or EngineOptions()
    trt = require_tensorrt()
    path = Path(onnx_path)
    if save_engine is not None:
        check_output_path(save_engine, "engine")
    proto, _ = read_model(path)
    settings = builder_settings(options, input_specs(proto),
                                carries_24(sparse_eligibility(proto)) if options.sparse is None else False,
                                tensorrt_major=tensorrt_major(trt), quantized=is_quantized(proto))
    logger = _capturing_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory(prefix="onnxprune-fp16-") as folder:
        parsed_from = path
        if settings.convert_fp16:
            from .fp16 import to_float16

            parsed_from = Path(folder) / path.name
            save_model(to_float16(proto), parsed_from)
        del proto
        if not parser.parse_from_file(str(parsed_from)):
            errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
            raise ModelError(f"TensorRT cannot parse {path.name}: {'; '.join(errors) or logger.last_errors()}")
    config = builder.create_builder_config()
    _configure(trt, builder, config, settings)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise ModelError(f"TensorRT engine build failed: {logger.last_errors()}")
    engine = bytes(serialized)
    if save_engine is not None:
        write_atomic(save_engine, lambda tmp: tmp.write_bytes(engine))
    eligible, picked = parse_sparse_log(logger.lines)
    return EngineReport(engine=engine, settings=settings, layers=_layer_information(trt, logger, engine),
                        eligible_sparse=eligible, ran_sparse=picked, build_s=build_s,
                        tensorrt_version=trt.__version__, path=Path(save_engine) if save_engine else None)


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the model carries Q/DQ nodes (a QDQ INT8 model, e.g. from ``--quantize int8``)."""
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def tensorrt_major(trt: Any) -> int:
    """The major version of the ``tensorrt`` module (``trt.__version__`` "11.4.0.106" -> 11)."""
    return int(str(trt.__version__).split(".")[0])


def _network_flags(trt: Any) -> int:
    """NetworkDefinitionCreationFlag bits. EXPLICIT_BATCH before TensorRT 10; since 10 explicit
    batch is the only mode (the flag is ignored in 10 and gone in 11). STRONGLY_TYPED is not set:
    TensorRT 8-10 build FP16 through BuilderFlag.FP16, which a strongly typed network refuses, and
    11 ignores the flag (strongly typed is its only mode)."""
    if tensorrt_major(trt) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _configure(trt: Any, builder: Any, config: Any, settings: BuilderSettings) -> None:
    for name in settings.flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            hint = " (it builds only strongly typed networks: FP16 comes from a float16 model)" * (name == "FP16")
            raise UsageError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}{hint}")
        config.set_flag(flag)
    for pool, size in settings.memory_pool_limits.items():
        config.set_memory_pool_limit(getattr(trt.MemoryPoolType, pool), size)
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, settings.profiling_verbosity)
    if settings.profile:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in settings.profile.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)


def _layer_information(trt: Any, logger: Any, engine: bytes) -> list[Any]:
    runtime = trt.Runtime(logger)
    loaded = runtime.deserialize_cuda_engine(engine)
    if loaded is None:
        raise ModelError(f"TensorRT cannot load the engine it built: {logger.last_errors()}")
    inspector = loaded.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)).get("Layers", [])


# --- running and timing --------------------------------------------------------------------------


class EngineRunner:
    """One inference of a serialized engine per call, on device buffers filled once from ``feed``;
    returns its time in milliseconds measured with CUDA events."""

    def __init__(self, engine: bytes, feed: dict[str, np.ndarray], report: EngineReport | None = None) -> None:
        trt = require_tensorrt()
        torch = require_cuda()
        self.report = report
        self._logger = _capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine)
        if self._engine is None:
            raise ModelError(f"TensorRT cannot load the engine: {self._logger.last_errors()}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        missing = [n for n in inputs if n not in feed]
        if missing:
            raise UsageError(f"no input data for {', '.join(missing)}")
        self._inputs = inputs
        self.buffers: dict[str, Any] = {}
        for name in inputs:
            array = np.ascontiguousarray(feed[name], dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            if not self._context.set_input_shape(name, array.shape):
                raise UsageError(f"input {name!r} shape {list(array.shape)} is outside the engine's optimization "
                                 "profile")
            self.buffers[name] = torch.from_numpy(array).to("cuda")
        for name in names:
            if name in inputs:
                continue
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UsageError(f"output {name!r} has a data-dependent shape {list(shape)}; cannot time it")
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
        for name, tensor in self.buffers.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        self._stream = torch.cuda.Stream()
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()  # the input copies ran on the default stream; inference uses its own

    def __call__(self) -> float:
        self._start.record(self._stream)
        ok = self._context.execute_async_v3(self._stream.cuda_stream)
        self._end.record(self._stream)
        self._end.synchronize()
        if not ok:
            raise ModelError(f"TensorRT inference failed: {self._logger.last_errors()}")
        return float(self._start.elapsed_time(self._end))

    def outputs(self) -> dict[str, np.ndarray]:
        """The last inference's outputs, copied to the host."""
        return {n: t.cpu().numpy() for n, t in self.buffers.items() if n not in self._inputs}


def time_engine(engine: bytes | EngineReport, feed: dict[str, np.ndarray], warmup_s: float = 0.5,
                min_iters: int = 50, min_seconds: float = 1.0) -> list[float]:
    """Milliseconds per inference: warm up for ``warmup_s``, then run until at least ``min_iters``
    runs and ``min_seconds`` have passed."""
    runner = EngineRunner(engine.engine if isinstance(engine, EngineReport) else engine, feed)
    return time_samples([runner], runs=min_iters, min_seconds=min_seconds, warmup_s=warmup_s)[0]


def tensorrt_runner(model: onnx.ModelProto, feed: dict[str, np.ndarray], *, fp16: bool = True,
                    sparse: bool | None = None, workspace_mb: int = 4096,
                    save_engine: str | os.PathLike | None = None) -> EngineRunner:
    """Build an engine for ``model`` at the shapes of ``feed`` and return its runner (a callable
    giving one inference's milliseconds); ``runner.report`` is the build's EngineReport."""
    options = EngineOptions(fp16=fp16, sparse=sparse, workspace_mb=workspace_mb,
                            batch=_feed_batch(model, feed), shapes=_fixed_shapes(model, feed))
    with tempfile.TemporaryDirectory(prefix="onnxprune-trt-") as folder:
        path = Path(folder) / "model.onnx"
        save_model(model, path)
        report = build_engine(path, options, save_engine)
    return EngineRunner(report.engine, feed, report)


def _feed_batch(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> int:
    """The batch the feed runs at: axis 0 of an input whose batch is dynamic (1 if none is)."""
    for spec in input_specs(model):
        if spec.shape and spec.static(0) is None and spec.name in feed:
            return int(np.shape(feed[spec.name])[0])
    return 1


def _fixed_shapes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """min = opt = max = the feed's shape, for inputs with dynamic dims besides the batch."""
    shapes = {}
    for spec in input_specs(model):
        if spec.name in feed and any(spec.static(axis) is None for axis in range(1, len(spec.shape))):
            shape = tuple(int(d) for d in np.shape(feed[spec.name]))
            shapes[spec.name] = (shape, shape, shape)
    return shapes


__all__ = ["STRONGLY_TYPED_MAJOR", "BuilderSettings", "EngineOptions", "EngineReport", "EngineRunner", "build_engine",
           "builder_settings", "ort_gpu_session", "parse_sparse_log", "require_cuda", "require_tensorrt",
           "tensorrt_major", "tensorrt_runner", "time_engine"]
