"""``--max-memory``: what each stage needs at least, the working sets that fit a budget, and a
refusal up front, naming the stage, when the model cannot fit.

The weights are held once (``graph.load.read_split``, ``graph.sessions``); what else a stage needs
is measured by ``tools/bench_memory.py`` and modelled here, with W the dense weights' bytes and P
the pruned weights' bytes (W times a params target, 1.15 times a FLOPs target, else W):

    reading            base + W (external data) or 2 W (inline: the parsed file, then the arrays)
    capturing shapes   base + W + one group of activations
    rewriting          base + W + 2 P (the pruned arrays and their proto)
    verifying          base + W + 2 P + one group of activations (the pruned proto and its import;
                       the checker reads the proto without its weights' bytes)
    calibrating        base + W + P + Hessians, + W under 1 GiB of weights (calibration sessions
                       of smaller models run, faster, on a copy; larger ones share the arrays)

(The calibrated criteria, act and obs, keep their fixed 0.5 GB of Hessians per pass.)

Stages that can trade time for memory do so within the budget: the shape capture and the
verification fetch their activations in smaller groups (more onnxruntime runs), and calibration
accumulates Hessians for fewer layers per pass over the data (more passes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import onnx

from .calib.activations import SHARE_FROM
from .calib.hessian import SPARSIFY_BUDGET
from .errors import UsageError
from .graph.capture import CHUNK_BYTES
from .graph.load import check_model_path, model_file_bytes, without_weights
from .graph.shapes import FLOAT32, machine_memory, resolve_input_shapes, spelled

GiB = 2**30
BASE = GiB // 2  # the interpreter, numpy, onnx, onnxruntime and their buffers (0.11 GiB after import)
MIN_GROUP = 64 * 2**20  # the smallest group of activations a capture run fetches
MIN_HESSIANS = 64 * 2**20  # the Hessians of at least one layer per pass
_SMALL_PROTO = 64 * 2**20  # an .onnx file under this is parsed to find its external data files
# Params kept per FLOPs kept, at most, over the zoo's giants (efficientnet_v2_l: --flops 0.8 keeps
# 0.907 of the params): a FLOPs target sizes the pruned copy by this much more.
PARAMS_PER_FLOPS = 1.15


def kept_share(flops: float | None = None, params: float | None = None) -> float:
    """The share of the weights a pruned model keeps, at most, for a structured target (1 without)."""
    if params is not None:
        return params
    return min(1.0, PARAMS_PER_FLOPS * flops) if flops is not None else 1.0


@dataclass(frozen=True)
class MemoryPlan:
    """Working-set sizes in bytes for the stages that trade time for memory (the defaults without a
    budget)."""

    budget: int | None = None
    capture_group: int = CHUNK_BYTES
    hessians: float = SPARSIFY_BUDGET


def weights_on_disk(model: str | os.PathLike | onnx.ModelProto) -> tuple[int, bool]:
    """(bytes of the model's weights, whether they are inline in the .onnx file), from file sizes
    without reading the weights: an inline file is about its weights; an external-data model's
    small .onnx is parsed for its data files."""
    if isinstance(model, onnx.ModelProto):
        return sum(t.ByteSize() for t in model.graph.initializer), True
    path = check_model_path(model)  # a missing path or a folder: the usual one-line usage error
    size = path.stat().st_size
    if size >= _SMALL_PROTO or not path.is_file():  # a FIFO or device is never read here
        return size, True
    try:
        total = model_file_bytes(path)
    except Exception:  # not a readable model: reading it says so, in one line
        return size, True
    return total, total == size


def stage_needs(weights: int, inline: bool, kept: float = 1.0, calibrated: bool = False) -> dict[str, int]:
    """Bytes each stage needs at its smallest working set (see the module's table)."""
    w, p = weights, int(weights * min(max(kept, 0.0), 1.0))
    needs = {
        "reading": BASE + (2 * w if inline else w),
        "capturing shapes": BASE + w + MIN_GROUP,
        "rewriting": BASE + w + 2 * p,
        "verifying": BASE + w + 2 * p + MIN_GROUP,
    }
    if calibrated:
        needs["calibrating"] = BASE + w + p + (w if w < SHARE_FROM else 0) + MIN_HESSIANS
    return needs


def plan_memory(model: str | os.PathLike | onnx.ModelProto, max_memory_gb: float | None, *, kept: float = 1.0,
                calibrated: bool = False) -> MemoryPlan:
    """The working sets that fit ``max_memory_gb`` (None: the defaults, no check). Raises UsageError,
    naming the stage, when even the smallest working sets do not fit."""
    if max_memory_gb is None:
        return MemoryPlan()
    budget = int(max_memory_gb * GiB)
    weights, inline = weights_on_disk(model)
    p = int(weights * min(max(kept, 0.0), 1.0))
    needs = stage_needs(weights, inline, kept, calibrated)
    stage, need = max(needs.items(), key=lambda item: item[1])
    if need > budget:
        at_least = math.ceil(need / GiB * 10) / 10
        raise UsageError(f"--max-memory {max_memory_gb:g} is too little: {stage} needs about {need / GiB:.1f} GiB "
                         f"for {weights / GiB:.2f} GiB of weights even in the smallest steps; give --max-memory "
                         f"{at_least:g} or more")
    spare = budget - (BASE + weights + 2 * p)  # what the verification's activations may use
    group = int(np.clip(spare, MIN_GROUP, CHUNK_BYTES))
    copy = weights if weights < SHARE_FROM else 0
    hessians = float(np.clip(budget - BASE - weights - p - copy, MIN_HESSIANS, SPARSIFY_BUDGET))
    return MemoryPlan(budget, group, hessians)


# --- what the input size implies ---------------------------------------------------------------

# Copies of the largest activation a capture holds at once (measured 4.1x on a Conv+Relu at 1500x1500:
# onnxruntime keeps the op's output and the next one, fetched outputs stay alive until the run ends,
# and each comes back as a numpy copy).
ACTIVATION_COPIES = 4


def largest_activation(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[str, int]:
    """(name, bytes) of the largest tensor the model computes at input sizes ``shapes`` (batch 1),
    its inputs included, from onnx's shape inference on a copy without weights (milliseconds, no
    run). Tensors whose shape inference cannot tell are not counted: a lower bound."""
    light = without_weights(model)
    weights = {t.name for t in light.graph.initializer}
    del light.graph.value_info[:]  # inferred again at this size
    for value in light.graph.input:
        if value.name in shapes:
            shape = value.type.tensor_type.shape
            shape.Clear()
            for dim in shapes[value.name]:
                shape.dim.add().dim_value = dim
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
    except Exception:  # shape inference is a best effort here: fall back to the inputs alone
        inferred = light.graph
    best = ("", 0)
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        kind = value.type.tensor_type
        if value.name in weights or not kind.HasField("shape"):
            continue
        if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in kind.shape.dim):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = FLOAT32
        size = math.prod(d.dim_value for d in kind.shape.dim) * itemsize
        if size > best[1]:
            best = (value.name, size)
    return best


def weights_of(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers from their dims (their values need not be loaded)."""
    total = 0
    for t in model.graph.initializer:
        try:
            total += math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, ValueError, TypeError):  # strings and unknown types: too small to matter here
            continue
    return total


def check_activations(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], budget: int | None = None,
                      given: bool = False) -> None:
    """Raise UsageError, before anything runs, when the model's activations at ``shapes`` cannot fit
    beside its weights: in ``budget`` bytes (``--max-memory``), else in this machine's memory.
    ``given``: the size came from ``--input-shape`` (the error says to give a smaller one)."""
    if not shapes:
        return
    name, largest = largest_activation(model, shapes)
    weights = weights_of(model)
    need = BASE + weights + ACTIVATION_COPIES * largest
    limit = budget if budget is not None else machine_memory()
    if need <= limit:
        return
    at = ", ".join(spelled(k, v) for k, v in shapes.items())
    within = f"--max-memory {limit / GiB:g}" if budget is not None else f"this machine's {limit / GiB:.1f} GiB"
    hint = ": give a smaller --input-shape" if given else ""
    raise UsageError(f"at input size {at} the model needs about {need / GiB:.1f} GiB of memory ({weights / GiB:.2f} "
                     f"GiB of weights, {ACTIVATION_COPIES} x {largest / GiB:.2f} GiB for its largest activation "
                     f"{name}), more than {within}{hint}")


def resolve_shapes(model: onnx.ModelProto, given: dict | None = None, *, batch: int = 1,
                   budget: int | None = None) -> dict[str, tuple[int, ...]]:
    """``graph.shapes.resolve_input_shapes``, then ``check_activations`` at those sizes: the sizes a
    run measures at, refused before anything runs where they cannot fit in ``budget`` (else the
    machine)."""
    shapes = resolve_input_shapes(model, given, batch=batch)
    check_activations(model, shapes, budget, given=bool(given))
    return shapes


__all__ = ["GiB", "MemoryPlan", "check_activations", "kept_share", "largest_activation", "machine_memory",
           "plan_memory", "resolve_shapes", "stage_needs", "weights_of", "weights_on_disk"]
