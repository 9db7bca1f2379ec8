"""Export the test models to ONNX with the legacy or the dynamo exporter.

Usage::

    python tools/export_models.py resnet50 deit_tiny_patch16_224 \
        --exporter both --out /tmp/onnx_models

Names: the keys of ``MODELS``, any torchvision classifier, or ``timm/NAME`` for any timm
model (built offline with ``pretrained=False``). Weights are random
(``torch.manual_seed(seed)`` before building), never downloaded. Each export
is written to ``<out>/<name>_<exporter>.onnx`` (``/`` in a name becomes
``-``); the dynamo exporter also writes its weights next to it as
``<name>_dynamo.onnx.data``. An existing ``.onnx`` file is reused as is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "EXPORTERS",
    "MODELS",
    "build_model",
    "default_input_size",
    "export_model",
    "has_dynamic_batch",
    "input_shape",
    "is_known_model",
    "output_path",
]

EXPORTERS = ("legacy", "dynamo")
LEGACY_OPSET = 17
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
INPUT_NAME = "input"
OUTPUT_NAME = "output"

log = logging.getLogger("export_models")


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


_TORCHVISION_MODELS = (
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "densenet121",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "vgg11_bn",
    "vit_b_16",
    "swin_t",
    "convnext_tiny",
)
_TIMM_MODELS = (
    "deit_tiny_patch16_224",
    "vit_small_patch16_224",
    "efficientvit_b0",
    "mobilevit_xs",
)

#: The test models: name -> builder returning a freshly initialised model.
MODELS: dict[str, Callable[[], nn.Module]] = {
    **{name: _torchvision(name) for name in _TORCHVISION_MODELS},
    **{name: _timm(name) for name in _TIMM_MODELS},
}

#: Models whose example input differs from DEFAULT_INPUT_SHAPE.
_INPUT_SHAPES: dict[str, tuple[int, int, int, int]] = {}

#: Prefix that names a timm model explicitly (``timm/resnet50``: timm's, not torchvision's).
TIMM_PREFIX = "timm/"


def _torchvision_classification_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def is_known_model(name: str) -> bool:
    """Whether ``name`` is a key of :data:`MODELS`, a torchvision classifier or ``timm/NAME``."""
    if name.startswith(TIMM_PREFIX):
        return _is_timm_model(name[len(TIMM_PREFIX):])
    return name in MODELS or name in _torchvision_classification_models()


def build_model(name: str, *, seed: int = 0) -> nn.Module:
    """Build model ``name`` with deterministic random weights, in eval mode.

    ``name`` is a key of :data:`MODELS`, any torchvision classification
    model name, or ``timm/NAME`` for a timm model.
    """
    if not is_known_model(name):
        raise ValueError(f"unknown model {name!r}: not in MODELS, not a torchvision classifier, not timm/NAME")
    if name.startswith(TIMM_PREFIX):
        builder = _timm(name[len(TIMM_PREFIX):])
    else:
        builder = MODELS.get(name) or _torchvision(name)
    torch.manual_seed(seed)
    return builder().eval()


def default_input_size(name: str) -> int:
    """The model's own input size: 224 for the :data:`MODELS` test set (as exported so far);
    timm's pretrained config for ``timm/NAME``; otherwise the crop size of the torchvision
    model's default weights (inception_v3 299, efficientnet_b4 380), except a ViT, whose
    weightless build fixes ``image_size`` 224."""
    if name in MODELS:
        return input_shape(name)[-1]
    if name.startswith(TIMM_PREFIX):
        import timm

        return int(timm.get_pretrained_cfg(name[len(TIMM_PREFIX):]).input_size[-1])
    from torchvision.models import get_model_weights

    if name.startswith("vit_"):
        return 224
    return int(get_model_weights(name).DEFAULT.transforms().crop_size[0])


def input_shape(name: str) -> tuple[int, int, int, int]:
    """Example input shape (batch 1) used to export model ``name``."""
    return _INPUT_SHAPES.get(name, DEFAULT_INPUT_SHAPE)


def output_path(name: str, exporter: str, out_dir: Path, size: int | None = None) -> Path:
    """Where :func:`export_model` writes ``name`` exported by ``exporter`` (at input ``size``, if given)."""
    stem = name.replace("/", "-") + (f"_{size}px" if size is not None else "")
    return Path(out_dir) / f"{stem}_{exporter}.onnx"


def has_dynamic_batch(path: Path) -> bool:
    """Whether the first axis of the graph input of ``path`` is symbolic."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.HasField("dim_param") or not dim.HasField("dim_value")


_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "torch._export",
    "torch.fx",
    "torch.utils._sympy",
    "onnxscript",
    "onnx_ir",
)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Silence warnings, exporter logging and prints; yield what was printed."""
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(captured),
            contextlib.redirect_stderr(captured),
        ):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_legacy(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=LEGACY_OPSET,
        do_constant_folding=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic: bool) -> None:
    dynamic_shapes = None
    if dynamic:
        # torch.export specialises dimensions of size 1 (convnext, swin, vit_b_16
        # fail with "specialized it to be a constant (1)"): trace with batch 2.
        x = x.expand(2, *x.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch")},)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=True,
        verbose=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
    )


def _cause(exc: BaseException) -> str:
    """Type and first line of the innermost cause of ``exc``."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _export(exporter: str, model: nn.Module, x: torch.Tensor, path: Path) -> str | None:
    """Export to ``path``; return why the batch axis is static, if it is."""
    if exporter == "legacy":
        _export_legacy(model, x, path)
        return None
    try:
        _export_dynamo(model, x, path, dynamic=True)
    except Exception as exc:  # noqa: BLE001 - any failure: retry with static batch
        for stale in path.parent.iterdir():
            stale.unlink()
        _export_dynamo(model, x, path, dynamic=False)
        return _cause(exc)
    if not has_dynamic_batch(path):
        return "the exporter specialised the batch axis"
    return None


def export_model(name: str, exporter: str, out_dir: Path, *, seed: int = 0, size: int | None = None) -> Path:
    """Export model ``name`` to ONNX with ``exporter`` ("legacy" or "dynamo").

    ``size`` sets the square input size (default: :func:`input_shape`; the
    file name then carries the size). Returns the path of the ``.onnx`` file;
    if it already exists it is returned without exporting again. The batch
    axis is dynamic; should the dynamo exporter fail with it, the model is
    exported with a static batch of 1 and a warning is logged
    (:func:`has_dynamic_batch` tells which).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    out_dir = Path(out_dir)
    path = output_path(name, exporter, out_dir, size)
    if path.exists():
        return path

    model = build_model(name, seed=seed)
    shape = input_shape(name) if size is None else (1, 3, size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Export into a private directory under the final name (the dynamo
    # exporter records the name of its external data file inside the model),
    # then move the files in place, the .onnx file last.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=out_dir))
    tmp_path = tmp_dir / path.name
    try:
        # Not under torch.no_grad(): with grad disabled nn.MultiheadAttention takes
        # its fused fast path (aten::_native_multi_head_attention), which the
        # legacy exporter cannot export (vit_b_16).
        with _quiet():
            static_reason = _export(exporter, model, x, tmp_path)
        if static_reason is not None:
            log.warning("%s (%s): static batch axis: %s", name, exporter, static_reason)
        for produced in sorted(tmp_dir.iterdir(), key=lambda p: p == tmp_path):
            produced.replace(out_dir / produced.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help=f"model names: {', '.join(MODELS)}, any torchvision classifier, or timm/NAME",
    )
    parser.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None, help="square input size (default: 224)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if not is_known_model(name)]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    failed = False
    for name in args.names:
        for exporter in exporters:
            try:
                path = export_model(name, exporter, args.out, seed=args.seed, size=args.size)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{name} ({exporter}) failed: {exc}", file=sys.stderr)
                failed = True
            else:
                print(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
