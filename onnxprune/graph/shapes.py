"""Input sizes of models whose inputs have free dims (``--input-shape NAME:1x3x48x320``).

The tool runs the model to read its shapes (capture), counts FLOPs from that run, makes random
or image calibration data and times the model; all of that needs one concrete size per input.
A fixed dim is the model's own; a free batch axis (axis 0) is 1 (FLOPs are per sample); any
other free dim is what ``--input-shape`` (``input_shapes=`` in Python) gives, else ``GUESS``
(224) with a warning naming what was assumed. The batch entry of a given shape is only checked
against a fixed batch: FLOPs are always per sample and ``--batch`` sets the batch that is timed.

What the model's real inputs are (name, dims with their free ones, dtype) is ``input_specs``: the
one reading of ``graph.input`` that calibration data, TensorRT profiles and the sizes here share.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import UsageError

log = logging.getLogger(__name__)

GUESS = 224  # what a free non-batch dim is measured at when no size is given
FLAG = "--input-shape"

Dims = tuple  # one input's dims: int where fixed, a str (symbolic name) or None where free
Shapes = dict[str, tuple[int, ...]]


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D0,D1,...`` or ``NAME:D0xD1x...`` -> (name, dims). The name may itself hold colons
    (tf2onnx's ``input:0``); the dims follow the last one."""
    name, sep, dims = text.strip().rpartition(":")
    dims = dims.strip().strip("[]()")
    if not sep or not name or not dims:
        raise UsageError(f"{FLAG} expects NAME:D0,D1,... or NAME:1x3x224x224, got {text!r}")
    shape = []
    for part in re.split(r"[,xX*]", dims):
        part = part.strip()
        if not re.fullmatch(r"[+-]?\d+", part):
            raise UsageError(f"{FLAG} {text}: dims must be integers separated by ',' or 'x', got {part!r}")
        if int(part) < 1:
            raise UsageError(f"{FLAG} {text}: dims must be positive, got {int(part)}")
        shape.append(int(part))
    check_size(text, shape)
    return name, tuple(shape)


FLOAT32 = 4  # bytes per element of a random input feed (and of an activation of unknown type)


def check_size(what: str, dims: Sequence[int]) -> None:
    """Refuse an input size that no machine here can hold, before anything is read: dims whose
    product overflows int64 (numpy and onnxruntime count elements in it), or a float32 sample larger
    than this machine's memory on its own (what its activations need is checked once the model is
    known, see ``memory.check_activations``). The batch entry is not counted: it is not used (FLOPs
    are per sample, ``--batch`` sets the timed batch)."""
    count = math.prod(int(d) for d in dims[1:])
    if count * FLOAT32 > 2**63 - 1:
        raise UsageError(f"{FLAG} {what}: {count} elements per input overflow int64; give a real size")
    memory = machine_memory()
    if count * FLOAT32 > memory:
        raise UsageError(f"{FLAG} {what}: one input of that size is {count * FLOAT32 / 2**30:.1f} GiB as float32, "
                         f"more than this machine's {memory / 2**30:.1f} GiB of memory; give a smaller size")


def machine_memory() -> int:
    """Bytes of memory this process can have: the physical memory, or the cgroup's limit if lower
    (what ``check_size`` and ``memory.check_activations`` measure sizes against)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@dataclass
class InputSpec:
    """A graph input: its name, its dims (int when static, str or None when symbolic/unknown) and
    its numpy dtype."""

    name: str
    shape: Dims
    dtype: np.dtype
    size: tuple[int, ...] | None = None  # the size --input-shape gives (images and random data use its free dims)
    ranked: bool = True  # False: the model does not say the input's rank (``shape`` is then empty)

    @property
    def dims(self) -> Dims | None:
        """The dims, or None when the rank is unknown."""
        return self.shape if self.ranked else None

    def static(self, axis: int) -> int | None:
        """The size of ``axis`` when it is static, else None."""
        dim = self.shape[axis]
        return dim if is_fixed(dim) else None

    def sized(self, axis: int) -> int | None:
        """The size of ``axis`` when it is static, else the size given for it (``size``), else None."""
        static = self.static(axis)
        return static if static is not None or self.size is None else self.size[axis]

    def show(self) -> str:
        """The shape written as ``[N,3,224,224]`` (symbolic dims by name, unknown as ``?``)."""
        return show(self.shape)  # the module's function


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs of ``model`` that are not initializers, in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    return [_spec(value) for value in model.graph.input if value.name not in initializers]


def _spec(value: onnx.ValueInfoProto) -> InputSpec:
    """One input as the model declares it; float32 where its element type is unset or not numpy's."""
    kind = value.type.tensor_type
    dtype = np.dtype(np.float32)
    if kind.elem_type:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type))
        except (KeyError, TypeError, ValueError):
            pass
    if not kind.HasField("shape"):
        return InputSpec(value.name, (), dtype, ranked=False)
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim)
    return InputSpec(value.name, dims, dtype)


def graph_inputs(model: onnx.ModelProto) -> dict[str, Dims | None]:
    """Each graph input that is not an initializer: its dims, or None when its rank is unknown."""
    return {spec.name: spec.dims for spec in input_specs(model)}


def is_fixed(dim) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0


def show(dims: Sequence) -> str:
    """``[batch,3,?,?]``: fixed dims as numbers, symbolic ones by name, unknown ones as ``?``."""
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def spelled(name: str, shape: Sequence[int]) -> str:
    """``x[1,3,48,320]``: an input at one size, the way summaries state it."""
    return f"{name}[{','.join(str(int(d)) for d in shape)}]"


def free_dims(dims: Dims | None) -> list[int]:
    """The free axes other than the batch axis (0)."""
    return [a for a, d in enumerate(dims or ()) if a > 0 and not is_fixed(d)]


def suggestion(name: str, dims: Dims | None) -> str:
    """``--input-shape x:1x3xHxW``: the flag to set an input's free dims, with placeholders."""
    if not dims:
        return f"{FLAG} {name}:D0xD1x..."
    letters = {}
    free = free_dims(dims)
    if len(dims) == 4 and is_fixed(dims[1]) and dims[1] <= 4:  # NCHW
        letters = {2: "H", 3: "W"}
    elif len(dims) == 4 and is_fixed(dims[3]) and dims[3] <= 4:  # NHWC
        letters = {1: "H", 2: "W"}
    parts = [str(d) if is_fixed(d) else "1" if a == 0 else letters.get(a, f"D{a}") for a, d in enumerate(dims)]
    if not free:
        parts = [str(d) if is_fixed(d) else "1" for d in dims]
    return f"{FLAG} {name}:{'x'.join(parts)}"


def check_input_shapes(model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None) -> Shapes:
    """``given`` checked against the model's inputs: known names, the right rank, positive
    integers, fixed dims respected. Returns it as {name: tuple of ints}; UsageError otherwise."""
    if not given:
        return {}
    if not isinstance(given, Mapping):
        raise UsageError(f"input_shapes must map input names to shapes, got {type(given).__name__}")
    inputs = graph_inputs(model)
    out: Shapes = {}
    for name, shape in given.items():
        if name not in inputs:
            known = ", ".join(inputs) or "none"
            raise UsageError(f"{FLAG}: the model has no input {name!r} (its inputs: {known})")
        try:
            dims = tuple(shape)
        except TypeError:
            raise UsageError(f"{FLAG} {name}: expected a sequence of dims, got {shape!r}") from None
        if any(isinstance(d, bool) or not isinstance(d, int | np.integer) for d in dims):
            raise UsageError(f"{FLAG} {name}: dims must be integers, got {list(dims)}")
        if any(d < 1 for d in dims):
            raise UsageError(f"{FLAG} {name}: dims must be positive, got {list(dims)}")
        check_size(name, dims)
        model_dims = inputs[name]
        if model_dims is not None:
            if len(dims) != len(model_dims):
                raise UsageError(f"{FLAG} {name}: {len(dims)} dims given, but input {name} has rank "
                                 f"{len(model_dims)} {show(model_dims)}")
            for axis, (want, got) in enumerate(zip(model_dims, dims, strict=True)):
                if is_fixed(want) and got != want:
                    raise UsageError(f"{FLAG} {name}: dim {axis} is {got}, but the model fixes it at {want} "
                                     f"{show(model_dims)}")
        out[name] = tuple(int(d) for d in dims)
    return out


def resolve_input_shapes(model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None = None, *,
                         batch: int = 1) -> Shapes:
    """The size every graph input is measured at (batch 1): fixed dims, else the ``given`` dims,
    else 1 for a free batch and ``GUESS`` for other free dims (``announce_guesses`` says so once
    the model ran there). ``batch`` is the batch that will be timed: a given batch entry other than
    1 and ``batch`` is not used, and a warning says so. Checks ``given`` first (``check_input_shapes``);
    whether the model's activations fit at that size is ``memory.check_activations``."""
    shapes = check_input_shapes(model, given)
    out: Shapes = {}
    for name, dims in graph_inputs(model).items():
        mine = shapes.get(name)
        if dims is None:  # rank unknown: the given shape as is, at batch 1
            if mine:
                out[name] = (1, *mine[1:])
            continue
        out[name] = _size(dims, mine)
        if mine and not is_fixed(dims[0]) and mine[0] not in (1, batch):
            log.warning("%s %s: its batch entry %d is not used: FLOPs are per sample (batch 1) and --batch sets "
                        "the batch that is timed", FLAG, name, mine[0])
    return out


def _size(dims: Dims, given: Sequence[int] | None) -> tuple[int, ...]:
    """One input's size at batch 1: fixed dims, else ``given``, else 1 (batch) or ``GUESS``."""
    return tuple(dim if is_fixed(dim) else 1 if axis == 0 else given[axis] if given else GUESS
                 for axis, dim in enumerate(dims))


def announce_guesses(model: onnx.ModelProto, given: Mapping[str, Sequence[int]] | None = None,
                     warned: set[str] | None = None) -> None:
    """One warning per input whose free dims (other than the batch) were guessed (``GUESS``) because
    ``given`` has no size for it: what was assumed and how to set it. Called once the model ran at
    that size (a run that fails says it in its error instead); ``warned`` collects the names warned
    about, so several models with one input warn once."""
    warned = set() if warned is None else warned
    for name, dims in graph_inputs(model).items():
        guessed = free_dims(dims) if name not in (given or {}) else []
        if guessed and name not in warned:
            warned.add(name)
            log.warning("input %s has free dims %s; assumed %d for %s: FLOPs, calibration and latency are "
                        "measured at %s; set the size with %s", name, show(dims), GUESS,
                        ", ".join(str(dims[a] or f"dim {a}") for a in guessed), spelled(name, _size(dims, None)),
                        suggestion(name, dims))


def size_failure(inputs: Mapping[str, Dims | None], feed_shapes: Mapping[str, Sequence[int]], reason: str
                 ) -> UsageError | None:
    """The usage error for a run that failed at the size the inputs were given or guessed at, if the
    size can be the cause (some input has a free dim other than the batch); None otherwise."""
    free = [name for name, dims in inputs.items() if free_dims(dims) or dims is None and name in feed_shapes]
    if not free:
        return None
    at = ", ".join(f"{name} at {show(feed_shapes[name])}" if name in feed_shapes else name for name in free)
    hints = ", ".join(suggestion(name, inputs[name]) for name in free)
    return UsageError(f"onnxruntime cannot run the model with input {at}, the size given (--input-shape) or "
                      f"assumed ({GUESS}) for its free dims: set the size the model expects with {hints} ({reason})")
