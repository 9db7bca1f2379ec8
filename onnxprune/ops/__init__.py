"""One home per op type: what onnxprune knows about each ONNX op, in one module per op family.

``spec("Conv")`` is the one lookup; ``register("Conv").ties`` (and ``.fix``, ``.flops``,
``.torch``, ``.sparse24``, ``.probe``...) the one way to teach onnxprune an op. An op without a
spec gets ``UNKNOWN``, which freezes every channel it touches, so it can never break a run.

Families: ``elementwise`` (activations, broadcasting arithmetic, casts), ``conv`` (Conv,
ConvTranspose), ``gemm`` (Gemm, MatMul, Einsum), ``norm`` (BatchNorm, InstanceNorm, LayerNorm,
GroupNorm), ``pooling`` (pools, reductions, ArgMax), ``shape`` (Reshape, Transpose, Flatten, Squeeze,
Expand, Shape...), ``slicing`` (Concat, Split, Slice, Gather, Pad...), ``resize`` (Resize,
DepthToSpace...), ``quantize`` (QuantizeLinear, DequantizeLinear) and ``control`` (If, Loop, Scan).
"""

from . import control, conv, elementwise, gemm, norm, pooling, quantize, resize, shape, slicing
from .registry import UNKNOWN, KernelContext, OpSpec, Registration, known, register, spec, unregister

__all__ = ["UNKNOWN", "KernelContext", "OpSpec", "Registration", "control", "conv", "elementwise", "gemm",
           "known", "norm", "pooling", "quantize", "register", "resize", "shape", "slicing", "spec", "unregister"]
