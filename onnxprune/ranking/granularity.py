"""Backend-aware channel granularity: the channel-count multiple a backend runs fastest.

FLOPs are not latency: a pruned layer whose channel count falls off the kernels' blocking runs a
slower path, and a model pruned to half its FLOPs can end up slower than the dense one
(MobileNetV2 at ``--round-to 1`` on onnxruntime CPU: 0.95x; at 16: 1.88x). ``--round-to auto``,
the default, keeps channel counts multiples of the backend's block:

- ort-cpu: onnxruntime's MLAS runs Conv in NCHWc blocks. Its platform setup (MLAS
  ``platform.cpp``) sets ``NchwcBlockSize`` to 8 on every x86-64 CPU and to 16 when the CPU has
  AVX-512F; its Arm64 NEON NCHWc kernels use blocks of 16 (``MLAS_NEON_NCHWC_BLOCK_SIZE``). The
  ISA is read from numpy's CPU feature table, which numpy fills from CPUID / the OS at import.
  Trusted because it is the rule MLAS itself applies, and measured here: on an AVX-512 CPU,
  resnet50 at ``--flops 0.5`` runs 1.44x / 1.82x / 1.93x faster than dense at multiples of
  1 / 8 / 16 (README, bench_latency.py).
- GPUs (ort-cuda, ort-trt, tensorrt): tensor cores want multiples of 8 for FP16 and 32 for INT8,
  4 for TF32 (FP32 math), per NVIDIA's Deep Learning Performance Guide ("Tensor Core
  Requirements") and TensorRT's best-practices guide.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass

from ..errors import UsageError

AUTO = "auto"


@dataclass(frozen=True)
class ChannelMultiple:
    """The channel-count multiple chosen for a backend, and why."""

    multiple: int
    reason: str


def backend_multiple(backend: str = "ort-cpu", *, precision: str = "fp32") -> ChannelMultiple:
    """The channel multiple ``backend`` runs fastest (``precision``: fp32, fp16 or int8)."""
    if backend == "ort-cpu":
        return _mlas_block()
    if backend in ("ort-cuda", "ort-trt", "tensorrt"):
        multiple = {"fp32": 4, "fp16": 8, "int8": 32}.get(precision)
        if multiple is None:
            raise UsageError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
        math_kind = {"fp32": "TF32", "fp16": "FP16", "int8": "INT8"}[precision]
        return ChannelMultiple(multiple, f"{backend}: {math_kind} tensor cores want channel counts in multiples of "
                                         f"{multiple} (NVIDIA's performance guide)")
    raise UsageError(f"unknown backend {backend!r}")


def _cpu_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


def _mlas_block() -> ChannelMultiple:
    machine = platform.machine().lower()
    features = _cpu_features()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        if features.get("AVX512F"):
            return ChannelMultiple(16, "ort-cpu: this CPU has AVX-512F, and onnxruntime's MLAS runs convolutions "
                                       "in NCHWc blocks of 16 channels")
        return ChannelMultiple(8, "ort-cpu: onnxruntime's MLAS runs convolutions in NCHWc blocks of 8 channels on "
                                  "x86-64 without AVX-512F")
    if machine in ("arm64", "aarch64"):
        return ChannelMultiple(16, "ort-cpu: onnxruntime's MLAS NEON NCHWc convolutions on Arm64 work in blocks of "
                                   "16 channels")
    return ChannelMultiple(8, f"ort-cpu on {machine or 'an unknown CPU'}: no known MLAS block size, 8 assumed")


def parse_round_to(value: int | str | None) -> int | str:
    """``auto`` (also None), or a positive integer; anything else is a usage error."""
    if value is None or value == AUTO:
        return AUTO
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise UsageError(f"--round-to must be a positive integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--round-to must be a positive integer or 'auto', got {value!r}")
    return value


def candidate_multiples(round_to: int | str, backend: str, pattern_m: int | None = None
                        ) -> tuple[list[int], str]:
    """The channel multiples to try, coarsest first, and why the first one.

    A given integer is the only candidate. ``auto`` starts at the backend's multiple (with an N:M
    pattern, the least common multiple with M, so layers stay N:M-eligible) and falls back to its
    divisors (multiples of M) when the target cannot be met with it: small groups below the
    multiple keep all their channels, which a small model may not afford.
    """
    if round_to != AUTO:
        return [int(round_to)], f"--round-to {round_to}"
    chosen = backend_multiple(backend)
    step = pattern_m or 1
    multiple = math.lcm(chosen.multiple, step)
    reason = chosen.reason + (f"; with N:M patterns of M={step}, multiples of {multiple}" if step > 1 else "")
    divisors = [d for d in range(multiple, 0, -1) if multiple % d == 0 and d % step == 0]
    return divisors, reason


__all__ = ["AUTO", "ChannelMultiple", "backend_multiple", "candidate_multiples", "parse_round_to"]
