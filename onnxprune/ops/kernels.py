"""Helpers the PyTorch kernels share. ``torch`` and ``F`` resolve when a kernel first runs, so
importing onnxprune never imports PyTorch (it is an optional extra)."""

from __future__ import annotations

import importlib
import math
from typing import Any


class LazyModule:
    """A module imported on first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")


def ints(t: Any) -> list[int]:
    """An attribute's int list (empty when absent)."""
    return [int(v) for v in (t.tolist() if hasattr(t, "tolist") else t)] if t is not None else []


def ints_of(t: Any) -> list[int]:
    """A tensor input's values as ints."""
    values = t.reshape(-1).tolist() if hasattr(t, "reshape") else list(t)
    return [int(v) for v in values]


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def optional(xs: list, port: int) -> Any:
    """Input ``port``, or None when the node has no such input."""
    return xs[port] if len(xs) > port and xs[port] is not None else None


def same_device(*xs: Any) -> list:
    """Inputs of a binary op on one device (a 0-d tensor may stay where it is)."""
    devices = {x.device for x in xs if x is not None and x.dim() > 0}
    if len(devices) > 1:
        device = next(d for d in devices if d.type != "cpu")
        return [x.to(device) if x is not None else None for x in xs]
    return list(xs)


def onnx_pads(a: dict, spatial: int, in_sizes: Any, kernel: list[int], strides: list[int],
              dilations: list[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...], for ``auto_pad`` too."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "") or auto is None:
        return ints(a.get("pads")) or [0] * (2 * spatial)
    if auto == "VALID":
        return [0] * (2 * spatial)
    begins, ends = [], []
    for i in range(spatial):
        out = math.ceil(in_sizes[i] / strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i], 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, ..., bn, e1, ..., en] to F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def symmetric(pads: list[int]) -> list[int] | None:
    n = len(pads) // 2
    return pads[:n] if pads[:n] == pads[n:] else None


def geometry(a: dict, spatial: int) -> tuple[list[int], list[int]]:
    """(strides, dilations) of a Conv or pool, 1 where absent."""
    return ints(a.get("strides")) or [1] * spatial, ints(a.get("dilations")) or [1] * spatial


# ONNX tensor types the interpreter holds, by the torch dtype it holds them in: half precision is
# computed in float32.
TORCH_DTYPES = {
    1: "float32", 11: "float64", 10: "float32", 16: "float32",  # FLOAT, DOUBLE, FLOAT16, BFLOAT16
    7: "int64", 6: "int32", 5: "int16", 3: "int8", 2: "uint8", 9: "bool",
}


def torch_dtype(onnx_type: int) -> Any:
    """The torch dtype holding an ONNX tensor type; NotImplementedError for one it cannot hold."""
    name = TORCH_DTYPES.get(onnx_type)
    if name is None:
        import onnx

        raise NotImplementedError(f"tensor type {onnx.TensorProto.DataType.Name(onnx_type)}")
    return getattr(torch, name)


def to_torch(array: Any, device: Any = None) -> Any:
    """A torch tensor of ``array``; half precision becomes float32, unsigned ints above 8 bits int64."""
    import numpy as np

    array = np.asarray(array)
    if array.dtype in (np.float16,) or array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    elif array.dtype in (np.uint16, np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array, order="C", copy=True)).to(device)  # 0-d stays 0-d
