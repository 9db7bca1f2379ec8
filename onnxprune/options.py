"""Options: every setting of a run, written once.

Each option is a dataclass field whose metadata carries its command-line flag, help text and
choices; the CLI builds its argument groups from these classes (``cli.add_options``) and the
Python API builds them from keyword arguments (``from_kwargs``), so the two cannot drift.
Choices come from the registries that implement them (criteria, scopes, methods, backends), so
registering a criterion makes it a valid ``--criterion`` and ``criterion=`` at once.

- ``TargetOptions``: how far to prune (channels and/or weight sparsity).
- ``CalibOptions``: calibration data (for data-driven criteria, re-fitting, distillation, fidelity).
- ``SolverOptions``: how channels are ranked and removed, and what recovers the model after.
- ``BenchOptions``: where latency is measured (``--latency`` and ``--bench``).
- ``ShapeOptions``: the size of inputs with free dims.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
           type: Callable[[str], Any] | None = None, choices: Callable[[], Any] | None = None,
           cli: bool = True, **argparse_extra: Any) -> Any:
    """A dataclass field that is also a command-line option (``cli=False``: API only).

    ``choices`` is a callable returning the registry's names, read when a parser is built or a
    value is validated, so options registered later are valid too."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "type": type, "choices": choices, "cli": cli,
            "argparse": argparse_extra}
    return field(default=default, metadata=meta)


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def task_arg(text: str) -> str:
    """argparse type of --task: auto, classify, detect, dense, dense:THR (THR in (0, 1)) or generic."""
    from .calib.fidelity import parse_task

    try:
        parse_task(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def holdout_arg(text: str) -> float | str:
    """argparse type of --holdout: a fraction in (0, 1), or anything else as a path (checked by
    ``CalibOptions.validate``)."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a fraction must be between 0 and 1 (exclusive), got {text}; or give a "
                                         "folder or file of held-out samples")
    return value


def _preprocess_help() -> str:
    from .calib.data import preset_names

    return f"image preprocessing: a preset ({', '.join(preset_names())}) or a JSON file (onnxprune/presets/README.md)"


def gigabytes(text: str) -> float:
    """argparse type: a number of GiB > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB, got {text}")
    return value


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def round_to_arg(text: str) -> int | str:
    """argparse type of --round-to: a positive integer or auto."""
    from .ranking.granularity import parse_round_to

    try:
        return parse_round_to(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class InputShapesAction(argparse.Action):
    """``--input-shape NAME:1x3x48x320`` (or ``NAME:1,3,48,320``), repeatable: {name: dims}."""

    def __call__(self, parser, namespace, value, option_string=None):
        from .graph.shapes import parse_input_shape

        name, dims = parse_input_shape(value)
        shapes = dict(getattr(namespace, self.dest, None) or {})
        if name in shapes:
            raise UsageError(f"--input-shape {name} given twice")
        shapes[name] = dims
        setattr(namespace, self.dest, shapes)


def _criteria() -> list[str]:
    from .ranking.criteria import CRITERIA

    return list(CRITERIA)


def _scopes() -> tuple[str, ...]:
    from .ranking.select import SCOPES

    return SCOPES


def _methods() -> tuple[str, ...]:
    from .calib.sparsify import METHODS

    return METHODS


def _allocations() -> tuple[str, ...]:
    from .calib.allocate import ALLOCATIONS

    return ALLOCATIONS


def _reconstructions() -> tuple[str, ...]:
    from .calib.reconstruct import METHODS

    return METHODS


def _backends() -> tuple[str, ...]:
    from .deploy.runners import BACKENDS

    return BACKENDS


def _check_choice(value: Any, f: dataclasses.Field) -> None:
    choices = f.metadata.get("choices")
    if value is not None and not isinstance(value, bool) and choices is not None and value not in choices():
        what = (f.metadata.get("flag") or f.name).lstrip("-")
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices()))}")


class _Options:
    """Shared behaviour: choices checked against their registries, plain data for reports."""

    def check_choices(self) -> None:
        for f in dataclasses.fields(self):
            _check_choice(getattr(self, f.name), f)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for logs and reports)."""
        return dataclasses.asdict(self)


@dataclass
class TargetOptions(_Options):
    """How far to prune: one structured target (flops, params or latency) and/or one weight-sparsity
    target (sparsity or pattern)."""

    flops: float | None = option(None, "remove channels: keep at most this fraction of the FLOPs",
                                 flag="--flops", metavar="R", type=fraction)
    params: float | None = option(None, "remove channels: keep at most this fraction of the params",
                                  flag="--params", metavar="R", type=fraction)
    sparsity: float | None = option(None, "zero this fraction of the weights of all sparsified layers together "
                                          "(unstructured; spread by --allocate)",
                                    flag="--sparsity", metavar="S", type=float)
    pattern: str | None = option(None, "keep N of every M weights along the input channels (2:4)",
                                 flag="--pattern", metavar="N:M")
    latency: float | None = option(None, "remove channels until the measured latency on --backend is at most this "
                                         "fraction of the dense model's", flag="--latency", metavar="R", type=fraction)

    @property
    def structured(self) -> bool:
        """Whether channels are removed (a FLOPs, params or latency target)."""
        return self.flops is not None or self.params is not None or self.latency is not None

    @property
    def weight_sparsity(self) -> bool:
        return self.sparsity is not None or self.pattern is not None

    def validate(self, quantize: str | None = None) -> None:
        """``quantize``: --quantize's value (INT8 alone is a target too)."""
        if sum(x is not None for x in (self.flops, self.params, self.latency)) > 1:
            raise UsageError("give one structured target: --flops, --params or --latency, not both")
        if self.sparsity is not None and self.pattern is not None:
            raise UsageError("give one weight-sparsity target: --sparsity or --pattern, not both")
        if not self.structured and not self.weight_sparsity and not quantize:
            raise UsageError("give a target: --flops R, --params R, --latency R, --sparsity S, --pattern N:M or "
                             "--quantize int8")
        for name in ("flops", "params", "latency"):
            check_fraction(name, getattr(self, name))
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise UsageError(f"sparsity must be in [0, 1), got {self.sparsity}")


def check_fraction(name: str, value: Any) -> None:
    """A FLOPs/params/latency target: None or a number in (0, 1]."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
        raise UsageError(f"{name} target must be a fraction in (0, 1], got {value}")


@dataclass
class CalibOptions(_Options):
    """Calibration data: samples for data-driven criteria and methods, re-fitting and distillation;
    a held-out share of them measures fidelity to the dense model."""

    calib: Any = option(None, "image folder, .npy, .npz, folder of .npy, or 'random'", flag="--calib", metavar="PATH")
    calib_count: int = option(128, "samples to use (default 128)", flag="--calib-count", metavar="N", type=positive)
    preprocess: str = option("imagenet", "", flag="--preprocess", metavar="NAME")
    holdout: Any = option(0.25, "data held out to measure fidelity (and to choose the recovery): a fraction of the "
                                "--calib files, held out whole (default 0.25), or a separate folder or file of "
                                "samples, loaded like --calib (same preprocessing and count); all of --calib then "
                                "fits", flag="--holdout", metavar="PATH|FRACTION", type=holdout_arg)
    task: str = option("auto", "what fidelity measures: auto (default: found from the dense model's outputs), "
                               "classify (top-1/top-5 agreement, KL), detect (boxes matched by IoU: recall, "
                               "precision, F1), dense (IoU of thresholded maps, mean abs error; dense:THR sets the "
                               "threshold) or generic (cosine, relative error)", flag="--task", metavar="TASK",
                       type=task_arg)

    @property
    def given(self) -> bool:
        return self.calib is not None

    def validate(self) -> None:
        if isinstance(self.calib_count, bool) or not isinstance(self.calib_count, int) or self.calib_count < 1:
            raise UsageError(f"--calib-count must be a positive integer, got {self.calib_count!r}")
        from .calib.data import check_holdout

        check_holdout(self.holdout, self.calib)
        from .calib.fidelity import parse_task

        parse_task(self.task)


def _distill_help() -> str:
    from .calib.distill import DEFAULT_STEPS

    return ("after pruning, fine-tune the kept weights to the dense model's outputs (KL on softened logits) on "
            "augmented calibration samples, early-stopping on the held-out part; masks of --pattern/--sparsity stay "
            f"fixed (default {DEFAULT_STEPS} steps; needs --calib and PyTorch: pip install onnxprune[recover])")


@dataclass
class SolverOptions(_Options):
    """How channels are ranked and removed, how weights are sparsified, and what recovers the model."""

    scope: str = option("isomorphic", "rank channels within isomorphic classes (default), all together, or per group",
                        flag="--scope", choices=_scopes)
    criterion: str | None = option(None, "channel importance: weight magnitude (l1, l2: the default without "
                                         "--calib), or from --calib activation-weighted (act: the default with "
                                         "--calib) or second-order OBS saliency (obs)",
                                   flag="--criterion", choices=_criteria)
    round_to: int | str = option("auto", "keep channel counts multiples of N; auto (default): the multiple --backend "
                                         "runs fastest (ort-cpu: 16 with AVX-512, else 8; GPUs: 4 FP32, 8 FP16; a "
                                         "multiple of M with --pattern N:M), finer only where the target needs it; 1: "
                                         "no rounding", flag="--round-to", metavar="N|auto", type=round_to_arg)
    method: str | None = option(None, "weight-sparsity method (default: obs with --calib, else magnitude)",
                                flag="--method", choices=_methods)
    sequential: bool = option(False, "sparsity: calibrate each layer on the outputs of the already-pruned layers "
                                     "before it", flag="--sequential")
    allocate: str | None = option(None, "--sparsity S per layer: the same S in every layer (uniform), or per-layer "
                                        "sparsities from each layer's measured error so that the zeroed weights are "
                                        "S of all sparsified layers' weights at the least summed error (measured; "
                                        "default with --calib, uniform without; not with --pattern)",
                                  flag="--allocate", choices=_allocations)
    reconstruct: bool | str | None = option(
        None, "after removing channels, re-fit each layer that lost inputs to the dense layer's outputs, layer by "
              "layer on the pruned model's own activations: auto (the default with --calib) is ridge (least squares "
              "pulled toward the dense weights) with its strength chosen per layer by the error on held-out files; "
              "ridge a fixed strength; stats matches each output channel's mean and variance; lstsq is plain "
              "least squares (fits the calibration images, generalises worst); none keeps the weights; "
              "--reconstruct alone is auto",
        flag="--reconstruct", metavar="HOW", nargs="?", const="auto", choices=_reconstructions)
    distill: bool | int | None = option(None, "", flag="--distill", metavar="STEPS", type=positive, nargs="?",
                                        const=True)
    distill_lr: float | None = option(None, "Adam learning rate of --distill (default 1e-4)", flag="--distill-lr",
                                      metavar="LR", type=float)
    quantize: str | None = option(None, "last, quantize to INT8: a QDQ model onnxruntime and TensorRT run in "
                                        "INT8 (per-channel weights rounded by OBS, activation calibration chosen on "
                                        "held-out data; needs --calib); alone it quantizes the dense model",
                                  flag="--quantize", choices=lambda: ("int8",))
    keep_fp32: list[str] | str | None = option(
        None, "--quantize: layers that stay FP32. auto (default): the first layers and those whose INT8 output "
              "error is largest, each kept where the model gets 3%% faster on --backend (onnxruntime) without losing "
              "held-out accuracy, or its held-out loss drops 10%% or more; none: every layer INT8; or node names",
        flag="--keep-fp32", metavar="auto|none|NODE", nargs="+")
    rounding: str = option("obs", "--quantize: how weights are rounded to INT8: obs (default, kept where it lowers "
                                  "the held-out loss; fitted to the float "
                                  "layer's output on the quantized inputs, errors compensated column by column) or "
                                  "nearest (onnxruntime's)", flag="--rounding", choices=lambda: ("obs", "nearest"))
    max_memory: float | None = option(None, "stay within GB GiB of memory: the shape capture, verification and "
                                            "calibration work in smaller steps to fit, and a model that cannot fit "
                                            "is refused before any work, naming the stage", flag="--max-memory",
                                      metavar="GB", type=gigabytes)

    def resolved_method(self, calib: CalibOptions) -> str:
        """The weight-sparsity method: as given, else obs with calibration data, magnitude without."""
        return self.method or ("obs" if calib.given else "magnitude")

    def resolved_criterion(self, calib: CalibOptions) -> str:
        """The channel criterion: as given, else act with calibration data (it ranks by what the data
        makes of the weights: on real MobileNetV2 it kept 7 points more agreement after the re-fit,
        README "Recovery"), l2 without."""
        return self.criterion or ("act" if calib.given else "l2")

    def reconstruction(self, calib: CalibOptions, channels: bool = True) -> str:
        """How --reconstruct re-fits: as given (True: auto, False: none), else auto with calibration
        data when channels are removed, none otherwise."""
        if self.reconstruct is None:
            return "auto" if calib.given and channels else "none"
        if isinstance(self.reconstruct, bool):
            return "auto" if self.reconstruct else "none"
        return self.reconstruct

    def distill_steps(self) -> int | None:
        from .calib.distill import resolve_steps

        return resolve_steps(self.distill)

    def validate(self, target: TargetOptions | None = None, calib: CalibOptions | None = None) -> None:
        """Choices, and what needs calibration data (``calib``) or a weight-sparsity ``target``."""
        from .calib.distill import require_torch, resolve_lr
        from .ranking.criteria import CRITERIA

        self.check_choices()
        from .ranking.granularity import parse_round_to

        self.round_to = parse_round_to(self.round_to)
        if self.max_memory is not None:
            try:
                gigabytes(str(self.max_memory))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"max_memory: {exc}") from None
        steps = self.distill_steps()
        if self.distill_lr is not None and steps is None:
            raise UsageError("--distill-lr needs --distill")
        if target is not None and self.sequential and not target.weight_sparsity:
            raise UsageError("--sequential applies to weight sparsity (--sparsity/--pattern); --reconstruct is "
                             "always sequential")
        if self.allocate is not None and target is not None and target.sparsity is None:
            if target.pattern is not None and self.allocate == "measured":
                raise UsageError(f"--allocate measured applies to --sparsity; --pattern {target.pattern} prunes every "
                                 "eligible layer alike (use --sparsity S, or leave --allocate out)")
            if target.pattern is None:
                raise UsageError("--allocate applies to weight sparsity (--sparsity S)")
        if calib is not None and not calib.given and self.allocate == "measured":
            raise UsageError("--allocate measured needs calibration data: give --calib PATH (images, .npy, .npz), "
                             "or --allocate uniform")
        if calib is not None and not calib.given:
            method = self.resolved_method(calib)
            needs = [what for what, on in (("--method " + method, method != "magnitude"),
                                           ("--reconstruct", self.reconstruction(calib) != "none"),
                                           ("--sequential", self.sequential),
                                           ("--distill", steps is not None)) if on]
            if needs:
                raise UsageError(f"{needs[0]} needs calibration data: give --calib PATH (images, .npy, .npz), "
                                 "or --calib random for a mechanics-only run")
            if self.criterion is not None and CRITERIA[self.criterion].needs_data:
                raise UsageError(f"--criterion {self.criterion} needs calibration data: give --calib PATH")
        if not self.quantize:
            for flag, on in (("--keep-fp32", self.keep_fp32 is not None), ("--rounding", self.rounding != "obs")):
                if on:
                    raise UsageError(f"{flag} applies to --quantize int8")
        if self.quantize and calib is not None and not calib.given:
            raise UsageError("--quantize int8 needs calibration data (activation ranges and the weights' rounding): "
                             "give --calib PATH (images, .npy, .npz), or --calib random for a mechanics-only run")
        if isinstance(self.keep_fp32, str):
            self.keep_fp32 = [self.keep_fp32]
        if self.keep_fp32 is not None and len(self.keep_fp32) > 1:
            word = next((w for w in ("auto", "none") if w in self.keep_fp32), None)
            if word:
                raise UsageError(f"--keep-fp32: give {word} or node names, not both")
        if steps is not None:
            resolve_lr(self.distill_lr)
            require_torch()


@dataclass
class BenchOptions(_Options):
    """Where latency is measured: ``--latency`` targets and ``--bench`` timings."""

    backend: str = option("ort-cpu", "where to measure: onnxruntime CPU (default), CUDA or TensorRT provider, or "
                                     "TensorRT", flag="--backend", choices=_backends)
    batch: int = option(1, "batch size to time (default 1)", flag="--batch", metavar="N", type=positive)
    threads: int = option(1, "onnxruntime intra-op threads (default 1)", flag="--threads", metavar="N", type=positive)
    fp16: bool = option(False, "FP16 engines (tensorrt, ort-trt)", flag="--fp16")

    def validate(self) -> None:
        self.check_choices()
        for name in ("batch", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name} must be a positive integer, got {value!r}")
        if self.fp16 and self.backend not in ("tensorrt", "ort-trt"):
            raise UsageError("--fp16 needs --backend tensorrt or ort-trt")


@dataclass
class ShapeOptions(_Options):
    """The size of inputs with free dims (OCR, detection): FLOPs, calibration and latency are measured
    there; the pruned model keeps its free dims."""

    input_shapes: dict | None = option(
        None, "size of an input with free dims (repeatable; also NAME:1,3,H,W): FLOPs, calibration and latency are "
              "measured there (default 224 for free dims other than the batch, with a warning); the batch entry is "
              "not used (FLOPs are per sample, --batch sets the timed batch)", flag="--input-shape",
        metavar="NAME:1x3xHxW", action=InputShapesAction)

    def validate(self) -> None:
        pass


OPTION_CLASSES = (TargetOptions, CalibOptions, SolverOptions, BenchOptions, ShapeOptions)


def help_of(f: dataclasses.Field) -> str:
    """A field's help text (--distill's names its default, read from distill.py; --preprocess lists
    the presets found in the package)."""
    if f.name == "preprocess":
        return _preprocess_help()
    return _distill_help() if f.name == "distill" else f.metadata["help"]


def add_arguments(group: argparse._ActionsContainer, cls: type, only: tuple[str, ...] | None = None) -> None:
    """Add the command-line options of ``cls`` (those in ``only``, in the class's order) to an
    argparse group: flag, dest (the field name), default, type, choices and help from the field."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta["cli"] or (only is not None and f.name not in only):
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": help_of(f), **meta["argparse"]}
        if f.default is False and meta["type"] is None:
            kwargs["action"] = "store_true"
        else:
            for key in ("metavar", "type"):
                if meta[key] is not None:
                    kwargs[key] = meta[key]
            if meta["choices"] is not None:
                kwargs["choices"] = list(meta["choices"]())
        group.add_argument(meta["flag"], **kwargs)


def values(namespace: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The option fields of ``classes`` that ``namespace`` holds, as keyword arguments for the API."""
    return {n: getattr(namespace, n) for cls in classes for n in names(cls) if hasattr(namespace, n)}


def names(cls: type, only: tuple[str, ...] | None = None) -> list[str]:
    """The option names of ``cls`` (all, or those in ``only``)."""
    return [f.name for f in dataclasses.fields(cls) if only is None or f.name in only]


def from_kwargs(kwargs: dict[str, Any], *classes: type, where: str = "prune") -> list[Any]:
    """One instance of each of ``classes`` from keyword arguments; an unknown keyword is a TypeError,
    as Python raises for a function's signature."""
    known = {name for cls in classes for name in names(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    return [cls(**{k: v for k, v in kwargs.items() if k in names(cls)}) for cls in classes]


def signature_parameters(*classes: type, only: tuple[str, ...] | None = None) -> list:
    """inspect.Parameters (keyword-only, with defaults and annotations) of the options' fields, for
    the API functions' ``__signature__``: ``help(onnxprune.prune)`` lists every option."""
    import inspect

    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for cls in classes for f in dataclasses.fields(cls) if only is None or f.name in only]


__all__ = ["BenchOptions", "CalibOptions", "OPTION_CLASSES", "ShapeOptions", "SolverOptions", "TargetOptions",
           "from_kwargs", "option"]
