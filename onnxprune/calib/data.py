"""Calibration data for correlation-aware pruning: images, arrays or (loudly) random noise.

``load_calibration(source, input_specs(model))`` (``graph.shapes.input_specs``: the model's real
inputs) gives a :class:`CalibrationSet`: one array per graph input, all sharing a leading sample
axis (the model's batch axis), in the input's dtype.

Sources:

- a folder of images (jpg, jpeg, png, bmp, webp; searched recursively, hidden files skipped),
  decoded one at a time with Pillow and preprocessed by a preset (``onnxprune/presets/*.json``,
  package data read with importlib.resources, so a wheel has them too; or a user JSON file with
  the same fields; see ``onnxprune/presets/README.md``);
- a ``.npy`` file (one sample, or a batch along the leading axis), or a folder of them
  (concatenated in sorted path order);
- a ``.npz`` file with one array per input name (any single key for a single-input model);
- from Python, a numpy array of samples, as a ``.npy`` file would hold them (single-input models);
- the literal string ``"random"``: standard-normal samples, only good for testing the pipeline.

When more samples are available than ``count``, a seeded shuffle picks which; samples are kept
in that shuffled order, so :meth:`CalibrationSet.split` holds out an unbiased tail.
Every problem with the data or the options is a :class:`~onnxprune.errors.UsageError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UsageError, first_line
from ..graph.shapes import InputSpec

if TYPE_CHECKING:
    from importlib.abc import Traversable

log = logging.getLogger(__name__)

PRESETS = "presets"  # the built-in presets: package data of onnxprune (onnxprune/presets/*.json)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_NAMED = 5  # unreadable images named one by one in the log; more are counted
RANDOM = "random"
LAYOUTS = ("NCHW", "NHWC", "auto")
CHANNEL_ORDERS = ("RGB", "BGR")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
FITS = ("crop", "letterbox", "pad_right")  # how an image is brought to the target height x width
PAD_SPACES = ("pixel", "normalised")  # where pad_value is written: a 0-255 pixel, or the model's value
PRESET_FIELDS = ("description", "fit", "resize", "crop", "size", "size_multiple", "pad_value", "pad_space", "mean",
                 "std", "scale", "layout", "channel_order", "interpolation")


# ---------------------------------------------------------------------------------------------
# the result


@dataclass(eq=False)
class CalibrationSet:
    """Calibration samples, ``{input name: array[n, ...]}`` with one shared leading sample axis,
    and a one-line description of where they came from.

    ``sources``: one int id per sample, the file (image, photo) it came from; two crops of one
    photo share an id. None: every sample is its own source. :meth:`split` holds out whole
    sources, so held-out data never shares a file with the data a fit saw. ``origin``: where the
    samples came from, as the user wrote it (``photos/``), for the held-out description."""

    samples: dict[str, np.ndarray]
    description: str
    images: bool = False  # decoded images (--distill augments them with random resized crops)
    sources: np.ndarray | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        lengths = {name: len(a) for name, a in self.samples.items()}
        if len(set(lengths.values())) > 1:
            raise UsageError(f"calibration arrays differ in sample count: {lengths}")
        if self.sources is not None:
            sources = np.asarray(self.sources)
            if sources.ndim != 1 or len(sources) != len(self) or not (
                    np.issubdtype(sources.dtype, np.integer) or sources.size == 0):
                raise UsageError(f"calibration sources must be one integer id per sample ({len(self)}), got "
                                 f"{sources.dtype} {list(sources.shape)}")
            self.sources = sources.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(next(iter(self.samples.values()))) if self.samples else 0

    @property
    def count(self) -> int:
        """The number of samples."""
        return len(self)

    @property
    def source_ids(self) -> np.ndarray:
        """One source id per sample (``arange(n)`` when every sample is its own source)."""
        return np.arange(len(self), dtype=np.int64) if self.sources is None else self.sources

    @property
    def source_count(self) -> int:
        """How many distinct sources (files) the samples come from."""
        return len(np.unique(self.source_ids))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of at most ``batch_size`` samples (views, in order); the last may be smaller."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size <= 0:
            raise UsageError(f"calibration batch size must be a positive integer, got {batch_size!r}")
        size = int(batch_size)
        samples = dict(self.samples)
        return ({name: a[start:start + size] for name, a in samples.items()} for start in range(0, len(self), size))

    def subset(self, indices: np.ndarray | slice, description: str | None = None) -> CalibrationSet:
        """The samples at ``indices`` (in that order), with their sources."""
        sources = None if self.sources is None else self.sources[indices]
        return CalibrationSet({k: a[indices] for k, a in self.samples.items()},
                              self.description if description is None else description, self.images, sources,
                              self.origin)

    def split(self, holdout_fraction: float) -> tuple[CalibrationSet, CalibrationSet]:
        """``(calibration, holdout)``: the last ``round(m * holdout_fraction)`` of the ``m`` sources
        (at least one, leaving at least one), with all their samples, are held out; a file's samples
        are never split between the two. Sources are ordered by their first sample, and the samples
        are already in seeded shuffled order, so the held-out files are not chosen by name.
        Deterministic; both parts keep the samples' order."""
        if isinstance(holdout_fraction, bool) or not (
                isinstance(holdout_fraction, float | int | np.floating | np.integer) and 0 < holdout_fraction < 1):
            raise UsageError(f"holdout fraction must be between 0 and 1 (exclusive), got {holdout_fraction!r}")
        n = len(self)
        if n < 2:
            raise UsageError(f"cannot split {n} calibration sample(s): need at least 2")
        ids = self.source_ids
        unique, first = np.unique(ids, return_index=True)
        order = unique[np.argsort(first)]  # sources in the order of their first sample
        m = len(order)
        if m < 2:
            raise UsageError(f"cannot hold out whole files: all {n} calibration samples come from one file; give "
                             "more files, or a separate held-out set (--holdout PATH)")
        held_sources = min(max(round(m * float(holdout_fraction)), 1), m - 1)
        held_mask = np.isin(ids, order[m - held_sources:])
        held_idx, kept_idx = np.flatnonzero(held_mask), np.flatnonzero(~held_mask)
        noun = "images" if self.images else ("samples" if m == n else "files")
        whole = " (whole files)" if self.images or m < n else ""
        samples = f", {len(held_idx)} samples" if m < n else ""
        origin = f" of {self.origin}" if self.origin else ""
        kept = self.subset(kept_idx, f"{self.description}; {m - held_sources} of {m} {noun} kept for calibration")
        held = self.subset(held_idx, f"{held_sources} of {m} {noun}{origin} held out{whole}{samples}")
        return kept, held


# ---------------------------------------------------------------------------------------------
# preprocessing presets


@dataclass
class Preprocess:
    """Image preprocessing: ``value = (pixel * scale - mean) / std`` after the image is fitted to
    the target height x width (``fit``).

    ``fit``: ``crop`` (shorter side to ``resize``, then a centre crop; ``resize`` None resizes the
    whole image straight to the target), ``letterbox`` (the whole image inside the target, aspect
    ratio kept, centred, the rest ``pad_value``: YOLO) or ``pad_right`` (the target height, the
    width by the aspect ratio up to the target width, then padded on the right: PaddleOCR rec).
    ``resize``: shorter side before the crop (scaled by target/crop when the model's size differs
    from ``crop``). ``crop``: (height, width) of the centre crop. ``size``: (height, width) of any
    dynamic model dim (default ``crop``); None takes the model's static height/width.
    ``size_multiple``: the target height and width must be multiples of it. ``pad_value`` (per
    channel, RGB order) in ``pad_space``: a 0-255 pixel before normalising, or the normalised value.
    ``mean``/``std``: per channel, after ``scale``.
    """

    name: str
    fit: str = "crop"
    resize: int | None = None
    crop: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    size_multiple: int = 1
    pad_value: tuple[float, ...] = (0.0,)
    pad_space: str = "pixel"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0
    layout: str = "auto"
    channel_order: str = "RGB"
    interpolation: str = "bilinear"


def _preset_dir() -> Traversable:
    """The folder of the built-in presets, wherever onnxprune is installed (a source checkout, a
    wheel, a zip): read through importlib.resources, never through a path of the repository."""
    return resources.files("onnxprune").joinpath(PRESETS)


def preset_names() -> list[str]:
    """The names of the built-in presets (``onnxprune/presets/*.json``)."""
    folder = _preset_dir()
    if not folder.is_dir():
        return []
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".json") and entry.is_file())


def load_preset(preprocess: str | os.PathLike) -> Preprocess:
    """A built-in preset by name (``"imagenet"``, ``"none"``) or a JSON file with the same fields."""
    text = os.fspath(preprocess)
    looks_like_path = text.lower().endswith(".json") or os.sep in text or "/" in text or os.path.isfile(text)
    if looks_like_path:
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"preprocessing file not found: {text}")
        name = path.name
    else:
        path = _preset_dir().joinpath(f"{text}.json")
        if not path.is_file():
            known = ", ".join(preset_names()) or "none found in " + str(_preset_dir())
            raise UsageError(f"unknown preprocessing preset {text!r} (known: {known}; or give a JSON file path)")
        name = text
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read preprocessing file {path}: {exc}") from None
    return _parse_preset(name, data, path)


def _parse_preset(name: str, data: Any, path: Path | Traversable) -> Preprocess:
    def bad(msg: str) -> UsageError:
        return UsageError(f"preprocessing file {path}: {msg}")

    if not isinstance(data, dict):
        raise bad("expected a JSON object")
    unknown = sorted(set(data) - set(PRESET_FIELDS))
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(PRESET_FIELDS)})")

    def positive_int(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad(f"{key!r} must be a positive integer or null, got {value!r}")
        return value

    def numbers(key: str, value: Any, positive: bool = False) -> tuple[float, ...]:
        values = value if isinstance(value, list) else [value]
        if not values or len(values) not in (1, 3) or any(
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in values):
            raise bad(f"{key!r} must be a number or a list of 1 or 3 numbers, got {value!r}")
        if positive and any(v <= 0 for v in values):
            raise bad(f"{key!r} must be positive, got {value!r}")
        return tuple(float(v) for v in values)

    def height_width(key: str, value: Any) -> tuple[int, int]:
        if isinstance(value, list):
            if len(value) != 2:
                raise bad(f"{key!r} must be an integer, [height, width] or null, got {value!r}")
            return positive_int(key, value[0]), positive_int(key, value[1])
        side = positive_int(key, value)
        return side, side

    prep = Preprocess(name=name)
    if "fit" in data:
        if data["fit"] not in FITS:
            raise bad(f"'fit' must be one of {', '.join(FITS)}, got {data['fit']!r}")
        prep.fit = data["fit"]
    if data.get("resize") is not None:
        prep.resize = positive_int("resize", data["resize"])
    if data.get("crop") is not None:
        prep.crop = height_width("crop", data["crop"])
    if data.get("size") is not None:
        prep.size = height_width("size", data["size"])
    if prep.fit != "crop" and (prep.resize is not None or prep.crop is not None):
        raise bad(f"'resize' and 'crop' apply to \"fit\": \"crop\"; with {prep.fit!r} the image fits the target "
                  f"size (the model's height/width, or 'size' for dynamic dims)")
    if data.get("size_multiple") is not None:
        prep.size_multiple = positive_int("size_multiple", data["size_multiple"])
    if "pad_value" in data:
        prep.pad_value = numbers("pad_value", data["pad_value"])
    if "pad_space" in data:
        if data["pad_space"] not in PAD_SPACES:
            raise bad(f"'pad_space' must be one of {', '.join(PAD_SPACES)}, got {data['pad_space']!r}")
        prep.pad_space = data["pad_space"]
    if prep.fit == "crop" and ("pad_value" in data or "pad_space" in data):
        raise bad("'pad_value' and 'pad_space' apply to \"fit\": \"letterbox\" or \"pad_right\" (a crop pads "
                  "nothing)")
    if "mean" in data:
        prep.mean = numbers("mean", data["mean"])
    if "std" in data:
        prep.std = numbers("std", data["std"], positive=True)
    if "scale" in data:
        scale = data["scale"]
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
            raise bad(f"'scale' must be a positive number, got {scale!r}")
        prep.scale = float(scale)
    for key, allowed in (("layout", LAYOUTS), ("channel_order", CHANNEL_ORDERS), ("interpolation", INTERPOLATIONS)):
        if key in data:
            value = data[key]
            if value not in allowed:
                raise bad(f"{key!r} must be one of {', '.join(allowed)}, got {value!r}")
            setattr(prep, key, value)
    if "description" in data and not isinstance(data["description"], str):
        raise bad("'description' must be a string")
    return prep


# ---------------------------------------------------------------------------------------------
# entry point


def load_calibration(source: str | os.PathLike, inputs: list[InputSpec], *, count: int = 128,
                     preprocess: str | os.PathLike = "imagenet", seed: int = 0) -> CalibrationSet:
    """Load up to ``count`` calibration samples for the model inputs ``inputs`` from ``source``.

    ``source``: a folder of images, a ``.npy`` file, a folder of ``.npy`` files, a ``.npz`` file,
    a numpy array of samples (as a ``.npy`` file holds them; single-input models), or ``"random"``
    (standard-normal noise; logs a warning). ``preprocess``: a preset name or a JSON file, used for
    images. ``seed`` picks which samples when more than ``count`` are available.
    Raises :class:`UsageError` on any problem with the source, the options or the data.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count <= 0:
        raise UsageError(f"calibration count must be a positive integer, got {count!r}")
    count = int(count)
    if not inputs:
        raise UsageError("the model has no graph inputs to calibrate")
    prep = load_preset(preprocess)
    rng = np.random.default_rng(seed)

    if isinstance(source, str) and source == RANDOM:
        return _random(inputs, count, rng)
    if isinstance(source, np.ndarray):  # the API's samples in memory, as a .npy file would hold them
        spec = _single_input(inputs, "an array of samples")
        return _arrays([_conform(source, spec, "the calib array")], ["the calib array"], "the calib array", spec,
                       count, rng, prep)

    path = Path(source)
    shown = os.fspath(source)
    if not path.exists():
        raise UsageError(f"calibration source not found: {shown}")
    if not path.is_dir() and not path.is_file():
        raise UsageError(f"calibration source {shown} is a FIFO, device or socket, not a file or folder: reading "
                         "it could block forever")
    if path.is_dir():
        images, arrays = _scan(path)
        shown_dir = shown.rstrip("/\\") + "/"
        if images and arrays:
            raise UsageError(f"calibration folder {shown_dir} holds both images ({len(images)}) and .npy files "
                             f"({len(arrays)}): keep one kind")
        if not images and not arrays:
            raise UsageError(f"calibration folder {shown_dir} has no images "
                             f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) or .npy files")
        spec = _single_input(inputs, "a folder of images" if images else "a folder of .npy files")
        if images:
            return _images(images, shown_dir, spec, count, prep, rng)
        return _npy_files(arrays, shown_dir, spec, count, rng, prep)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        spec = _single_input(inputs, "a .npy file")
        return _npy_files([path], shown, spec, count, rng, prep)
    if suffix == ".npz":
        return _npz(path, shown, inputs, count, rng, prep)
    raise UsageError(f"unsupported calibration source {shown}: expected a folder of images or .npy files, "
                     f"a .npy or .npz file, or 'random'")


# ---------------------------------------------------------------------------------------------
# a separate held-out set (--holdout PATH)


HOLDOUT_KINDS = "a fraction between 0 and 1 (exclusive), or a folder or file of held-out samples loaded like --calib"


def check_holdout(holdout: Any, calib: Any) -> None:
    """Refuse a ``holdout`` option that cannot work, before anything is loaded: it is a fraction in
    (0, 1), or a separate set (a path that exists as a file or folder, a numpy array, a
    CalibrationSet) that needs ``calib`` and must not be the ``calib`` path or overlap it."""
    if isinstance(holdout, CalibrationSet | np.ndarray | str | os.PathLike):
        if isinstance(holdout, str | os.PathLike):
            _check_holdout_path(os.fspath(holdout), calib)
        if calib is None:
            raise UsageError("--holdout with a separate held-out set needs --calib (the samples to fit on)")
        return
    if isinstance(holdout, bool) or not isinstance(holdout, int | float | np.integer | np.floating) or not (
            0 < holdout < 1):
        raise UsageError(f"--holdout must be {HOLDOUT_KINDS}, got {holdout!r}")


def _check_holdout_path(text: str, calib: Any) -> None:
    path = Path(text)
    if not path.exists():
        raise UsageError(f"--holdout {text}: no such file or folder (give {HOLDOUT_KINDS})")
    if not path.is_dir() and not path.is_file():
        raise UsageError(f"--holdout {text} is a FIFO, device or socket, not a file or folder: reading it could "
                         "block forever")
    if not isinstance(calib, str | os.PathLike) or os.fspath(calib) == RANDOM:
        return
    calib_path, held_path = Path(calib).resolve(), path.resolve()
    if calib_path == held_path:
        raise UsageError(f"--holdout {text} is the --calib data itself: fidelity measured on the samples the "
                         "recovery fitted measures nothing; give other files, or a fraction of --calib "
                         "(--holdout 0.25)")
    if calib_path in held_path.parents or held_path in calib_path.parents:
        raise UsageError(f"--holdout {text} and --calib {os.fspath(calib)} overlap (one folder holds the other): "
                         "held-out files must be files the recovery never sees")


def separate_holdout(calibration: CalibrationSet, held: CalibrationSet) -> CalibrationSet:
    """``held`` as the held-out set of ``calibration`` (which is then all used to fit), described as
    a separate set. Refused when every held-out sample is also a calibration sample (fidelity on it
    would measure nothing); a warning when some are."""
    if set(held.samples) != set(calibration.samples):
        raise UsageError(f"the held-out set feeds inputs {', '.join(sorted(held.samples))}, the calibration set "
                         f"{', '.join(sorted(calibration.samples))}")
    seen = set(_fingerprints(calibration))
    shared = sum(f in seen for f in _fingerprints(held))
    if shared == len(held):
        raise UsageError(f"every held-out sample ({held.description}) is also a calibration sample: fidelity "
                         "measured on them measures nothing; give other files, or a fraction (--holdout 0.25)")
    if shared:
        log.warning("%d of %d held-out samples are also calibration samples: fidelity on them is optimistic",
                    shared, len(held))
    return CalibrationSet(held.samples, f"separate held-out set: {held.description}", held.images, held.sources,
                          held.origin)


def _fingerprints(data: CalibrationSet) -> list[bytes]:
    """A digest per sample over all its inputs, to find the samples two sets share."""
    digests = [hashlib.blake2b(digest_size=16) for _ in range(len(data))]
    for name in sorted(data.samples):
        array = data.samples[name]
        for digest, row in zip(digests, array, strict=True):
            digest.update(np.ascontiguousarray(row).tobytes())
    return [d.digest() for d in digests]


def _single_input(inputs: list[InputSpec], what: str) -> InputSpec:
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs)
        raise UsageError(f"the model has {len(inputs)} inputs ({names}); {what} can only feed a single-input "
                         f"model: give an .npz file with one array per input name")
    return inputs[0]


def _pick(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Which of ``total`` samples to take, in seeded shuffled order."""
    return rng.permutation(total)[:count]


# ---------------------------------------------------------------------------------------------
# random


def _random(inputs: list[InputSpec], count: int, rng: np.random.Generator) -> CalibrationSet:
    samples = {}
    for spec in inputs:
        if not spec.shape:
            raise UsageError(f"input {spec.name!r} is a scalar: calibration samples need a batch axis")
        dims = [spec.sized(a) or 224 for a in range(1, len(spec.shape))]
        shape = (count, *dims)
        if np.issubdtype(spec.dtype, np.floating):
            samples[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)
        elif spec.dtype == np.bool_:
            samples[spec.name] = np.ones(shape, dtype=spec.dtype)
        else:
            samples[spec.name] = np.zeros(shape, dtype=spec.dtype)
    log.warning("calibrating on RANDOM data: pruning decisions will not reflect real inputs "
                "(use a folder of images or .npy/.npz samples for meaningful results)")
    description = (f"RANDOM standard-normal data ({count} samples): MEANINGLESS FOR ACCURACY, "
                   f"only for testing the pipeline")
    return CalibrationSet(samples, description)


# ---------------------------------------------------------------------------------------------
# arrays


def _conform(array: np.ndarray, spec: InputSpec, origin: str) -> np.ndarray:
    """``array`` as ``[n, ...]`` for ``spec``: one sample gains a leading axis; checks dims and dtype."""
    rank = len(spec.shape)
    if rank == 0:
        raise UsageError(f"input {spec.name!r} is a scalar: calibration samples need a batch axis")
    if array.ndim == rank - 1:
        array = array[None]
    expected = "[n," + ",".join("?" if spec.static(a) is None else str(spec.static(a)) for a in range(1, rank)) + "]"
    if array.ndim != rank or any(spec.static(a) is not None and array.shape[a] != spec.static(a)
                                 for a in range(1, rank)):
        got = "[" + ",".join(str(d) for d in array.shape) + "]"
        raise UsageError(f"{origin}: shape {got} does not match model input {spec.name!r} {spec.show()}: "
                         f"expected {expected} (samples along the first axis) or one sample without it")
    src, dst = array.dtype, spec.dtype
    ok = ((np.issubdtype(dst, np.floating) and (np.issubdtype(src, np.number) or src == np.bool_))
          or (np.issubdtype(dst, np.integer) and (np.issubdtype(src, np.integer) or src == np.bool_))
          or (dst == np.bool_ and src == np.bool_))
    if not ok:
        raise UsageError(f"{origin}: dtype {src} cannot feed model input {spec.name!r} of dtype {dst}")
    return array


def _check_int_range(array: np.ndarray, spec: InputSpec, origin: str) -> None:
    if np.issubdtype(spec.dtype, np.integer) and np.issubdtype(array.dtype, np.integer) and array.size:
        info = np.iinfo(spec.dtype)
        lo, hi = array.min(), array.max()
        if lo < info.min or hi > info.max:
            raise UsageError(f"{origin}: values {lo}..{hi} do not fit model input {spec.name!r} of dtype {spec.dtype}")


def _check_finite(rows: np.ndarray, origin: str, indices: np.ndarray) -> None:
    """Refuse NaN/Inf samples, naming the first bad one by its index in the source (``indices[row]``)."""
    if not np.issubdtype(rows.dtype, np.floating) or not rows.size:
        return
    bad = ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
    if bad.any():
        index = int(indices[int(np.argmax(bad))])
        raise UsageError(f"{origin}: sample {index} holds NaN/Inf values; calibration data must be finite")


RAW_PIXEL_FLOOR = 32.0  # a float input whose samples reach above this (and stay within 0..255) looks like raw pixels


def _normalising(prep: Preprocess) -> bool:
    """Whether ``prep`` maps raw pixels 0..255 into a small (normalised) range, as ImageNet presets do."""
    pixels = np.array([[0.0], [255.0]])  # black and white, against each channel's mean and std (1 or 3 values)
    ends = (pixels * prep.scale - np.resize(prep.mean, 3)) / np.resize(prep.std, 3)
    return float(np.abs(ends).max()) <= RAW_PIXEL_FLOOR / 2


def _warn_raw_pixels(samples: np.ndarray, spec: InputSpec, origin: str, prep: Preprocess) -> None:
    """Arrays are fed as they are; warn when they look like raw pixels while the preset normalises images."""
    if not np.issubdtype(spec.dtype, np.floating) or samples.size == 0 or not _normalising(prep):
        return
    lo, hi = float(samples.min()), float(samples.max())
    if lo >= 0 and RAW_PIXEL_FLOOR < hi <= 255:
        log.warning("%s: the samples look like raw pixels (values %g..%g, 0..255 range); .npy/.npz data is fed "
                    "to input %r as is, without the %r preprocessing: normalise it first if the model expects "
                    "normalised input", origin, lo, hi, spec.name, prep.name)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_npy(path: Path) -> np.ndarray:
    if not _starts_with(path, b"\x93NUMPY"):
        raise UsageError(f"cannot read {path}: not a .npy file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(array, np.ndarray):
        if hasattr(array, "close"):
            array.close()
        raise UsageError(f"cannot read {path}: not a .npy array (an .npz archive?)")
    return array


def _npy_files(paths: list[Path], shown: str, spec: InputSpec, count: int, rng: np.random.Generator,
               prep: Preprocess) -> CalibrationSet:
    arrays = [_conform(_load_npy(p), spec, str(p)) for p in paths]  # memory-mapped, nothing read yet
    return _arrays(arrays, [str(p) for p in paths], shown, spec, count, rng, prep)


def _arrays(arrays: list[np.ndarray], origins: list[str], shown: str, spec: InputSpec, count: int,
            rng: np.random.Generator, prep: Preprocess) -> CalibrationSet:
    """Up to ``count`` samples of ``spec`` from the conformed ``arrays`` (from ``origins``), as one set."""
    sizes = [len(a) for a in arrays]
    total = sum(sizes)
    if total == 0:
        raise UsageError(f"{shown} holds no samples")
    picked = _pick(total, count, rng)
    starts = np.cumsum([0, *sizes])
    out = np.empty((len(picked), *arrays[0].shape[1:]), dtype=spec.dtype)
    for i, index in enumerate(picked):
        which = int(np.searchsorted(starts, index, side="right") - 1)
        row = np.asarray(arrays[which][index - starts[which]])
        _check_int_range(row, spec, origins[which])
        with np.errstate(over="ignore", invalid="ignore"):  # a float64 beyond float32 becomes inf: refused below
            out[i] = row
        _check_finite(out[i:i + 1], origins[which], [index - starts[which]])  # after the cast
    _warn_raw_pixels(out, spec, shown, prep)
    files = f" ({len(arrays)} .npy files)" if len(arrays) > 1 else ""
    return CalibrationSet({spec.name: out},  # each row is its own sample and source, whichever file holds it
                          f"{len(out)} samples from {shown}{files} (input {spec.name!r} {_per_sample(out)})",
                          sources=picked, origin=shown)


def _npz(path: Path, shown: str, inputs: list[InputSpec], count: int, rng: np.random.Generator,
         prep: Preprocess) -> CalibrationSet:
    if not _starts_with(path, b"PK"):
        raise UsageError(f"cannot read {shown}: not an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read {shown}: {exc}") from None
    if not hasattr(archive, "files"):
        raise UsageError(f"cannot read {shown}: not an .npz archive")
    with archive:
        arrays, chosen = _npz_arrays(archive, shown, inputs)
    sizes = {n: len(a) for n, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise UsageError(f"{shown}: arrays differ in sample count ({', '.join(f'{k}: {v}' for k, v in sizes.items())})")
    total = next(iter(sizes.values()))
    if total == 0:
        raise UsageError(f"{shown} holds no samples")
    picked = _pick(total, count, rng)
    samples = {}
    for spec in inputs:
        part = arrays[spec.name][picked]
        origin = f"{shown} array {chosen[spec.name]!r}"
        _check_int_range(part, spec, origin)
        with np.errstate(over="ignore", invalid="ignore"):  # a float64 beyond float32 becomes inf: refused below
            samples[spec.name] = part.astype(spec.dtype, copy=False)
        _check_finite(samples[spec.name], origin, picked)  # after the cast
        _warn_raw_pixels(samples[spec.name], spec, origin, prep)
    n = len(picked)
    shapes = ", ".join(f"{name} {_per_sample(a)}" for name, a in samples.items())
    return CalibrationSet(samples, f"{n} samples from {shown} ({shapes})", sources=picked, origin=shown)


def _npz_arrays(archive: Any, shown: str, inputs: list[InputSpec]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The array of each input (conformed) and which key it came from."""
    keys = list(archive.files)
    if not keys:
        raise UsageError(f"{shown} holds no arrays")
    names = [spec.name for spec in inputs]
    if len(inputs) == 1:
        if names[0] in keys:
            chosen = {names[0]: names[0]}
        elif len(keys) == 1:
            chosen = {names[0]: keys[0]}
        else:
            raise UsageError(f"{shown} has arrays {', '.join(keys)} but none named after the model input "
                             f"{names[0]!r}: name it so, or keep a single array")
    else:
        missing = [n for n in names if n not in keys]
        if missing:
            raise UsageError(f"{shown} lacks arrays for model input(s) {', '.join(missing)} "
                             f"(has: {', '.join(keys)}; the model needs: {', '.join(names)})")
        chosen = {n: n for n in names}
    arrays = {}
    for spec in inputs:
        key = chosen[spec.name]
        try:
            data = archive[key]
        except (OSError, ValueError, EOFError) as exc:
            raise UsageError(f"cannot read array {key!r} of {shown}: {exc}") from None
        arrays[spec.name] = _conform(data, spec, f"{shown} array {key!r}")
    return arrays, chosen


def _per_sample(array: np.ndarray) -> str:
    return "x".join(str(d) for d in array.shape[1:]) + f" {array.dtype}" if array.ndim > 1 else f"{array.dtype}"


# ---------------------------------------------------------------------------------------------
# images


def _scan(folder: Path) -> tuple[list[Path], list[Path]]:
    """Images and .npy files under ``folder`` (recursive, hidden entries skipped), sorted by path."""
    images, arrays = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            entry = Path(root) / name
            if suffix in (*IMAGE_EXTENSIONS, ".npy") and entry.exists() and not entry.is_file():
                raise UsageError(f"calibration folder {folder} holds {entry}, a FIFO, device or socket, not a file: "
                                 "reading it could block forever (remove it)")
            if suffix in IMAGE_EXTENSIONS:
                images.append(entry)
            elif suffix == ".npy":
                arrays.append(entry)
    key = lambda p: p.relative_to(folder).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(arrays, key=key)


@dataclass
class _Geometry:
    layout: str  # NCHW or NHWC
    channels: int  # 1 or 3
    height: int
    width: int


def _geometry(spec: InputSpec, prep: Preprocess) -> _Geometry:
    if len(spec.shape) != 4:
        raise UsageError(f"image calibration needs a 4-D image input; model input {spec.name!r} is {spec.show()}")
    layout = prep.layout
    if layout == "auto":
        if spec.static(1) in (1, 3):
            layout = "NCHW"
        elif spec.static(3) in (1, 3):
            layout = "NHWC"
        else:
            raise UsageError(f"cannot tell the layout of model input {spec.name!r} {spec.show()} (no channel dim of "
                             f"size 1 or 3): use a preprocessing JSON file with \"layout\": \"NCHW\" or \"NHWC\"")
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = spec.static(c_axis)
    if channels is None:
        channels = 3
    if channels not in (1, 3):
        raise UsageError(f"model input {spec.name!r} {spec.show()} has {channels} channels in {layout} layout; "
                         f"images give 1 or 3")
    sizes = []
    dynamic_size = prep.size or prep.crop
    for axis, which in ((h_axis, 0), (w_axis, 1)):
        size = spec.sized(axis)
        if size is None or size == 0:
            if dynamic_size is None:
                raise UsageError(f"model input {spec.name!r} {spec.show()} has a dynamic "
                                 f"{'height' if which == 0 else 'width'} and preprocessing {prep.name!r} sets no "
                                 f"size for it: give --input-shape, or a preprocessing JSON file with \"size\"")
            size = dynamic_size[which]
        sizes.append(size)
    if prep.size_multiple > 1 and any(size % prep.size_multiple for size in sizes):
        raise UsageError(f"preprocessing {prep.name!r} needs a height and width that are multiples of "
                         f"{prep.size_multiple}, as the model does; model input {spec.name!r} is fed at "
                         f"{sizes[0]}x{sizes[1]}: give --input-shape {spec.name}:1x3xHxW with multiples of "
                         f"{prep.size_multiple}")
    for key, values in (("mean", prep.mean), ("std", prep.std)):
        if len(values) not in (1, 3):
            raise UsageError(f"preprocessing {prep.name!r}: {key!r} needs 1 or 3 values")
    return _Geometry(layout, channels, sizes[0], sizes[1])


def _per_channel(values: tuple[float, ...], channels: int, order: str) -> np.ndarray:
    """Per-channel constants in the output channel order (given in RGB order)."""
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float32)
    if channels == 1:
        return np.array([sum(values) / len(values)], dtype=np.float32)
    arr = np.array(values, dtype=np.float32)
    return arr[::-1].copy() if order == "BGR" else arr


def _resized_size(width: int, height: int, geo: _Geometry, prep: Preprocess) -> tuple[int, int]:
    """(width, height) after the shorter-side resize, covering the target size."""
    if prep.resize is None:
        return geo.width, geo.height
    resize = float(prep.resize)
    if prep.crop is not None:  # keep the preset's resize:crop ratio at the model's size (timm's crop_pct)
        resize *= min(geo.height, geo.width) / min(prep.crop)
    size = max(1, round(resize))
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if new_w < geo.width or new_h < geo.height:  # too small to crop the target: scale up to cover it
        s = max(geo.width / width, geo.height / height)
        new_w, new_h = math.ceil(width * s), math.ceil(height * s)
    return max(new_w, geo.width), max(new_h, geo.height)


def _fit_image(rgb: Any, geo: _Geometry, prep: Preprocess, resample: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``rgb`` (a Pillow RGB image) brought to the target size by ``prep.fit``: float32 pixels
    ``[height, width, channels]`` (RGB, or one grayscale channel), padding filled with the
    pixel-space pad value, and the box ``(top, left, height, width)`` the image itself covers."""
    width, height = rgb.size
    if width == 0 or height == 0:
        raise ValueError("empty image")
    if prep.fit == "crop":
        new_w, new_h = _resized_size(width, height, geo, prep)
        if (new_w, new_h) != (width, height):
            rgb = rgb.resize((new_w, new_h), resample=resample)
        left = int(round((new_w - geo.width) / 2.0))
        top = int(round((new_h - geo.height) / 2.0))
        if (left, top, geo.width, geo.height) != (0, 0, new_w, new_h):
            rgb = rgb.crop((left, top, left + geo.width, top + geo.height))
        if geo.channels == 1:
            rgb = rgb.convert("L")
        return np.asarray(rgb, dtype=np.float32).reshape(geo.height, geo.width, -1), (0, 0, geo.height, geo.width)
    if prep.fit == "letterbox":  # as YOLO's LetterBox: fit inside, centred, the padding split around it
        ratio = min(geo.height / height, geo.width / width)
        new_w = min(geo.width, max(1, int(round(width * ratio))))
        new_h = min(geo.height, max(1, int(round(height * ratio))))
        pad_w, pad_h = (geo.width - new_w) / 2, (geo.height - new_h) / 2
        top, left = int(round(pad_h - 0.1)), int(round(pad_w - 0.1))
    else:  # pad_right, as PaddleOCR's rec: the target height, width by the ratio, padding on the right
        new_h = geo.height
        new_w = min(geo.width, max(1, math.ceil(geo.height * width / height)))
        top, left = 0, 0
    if (new_w, new_h) != (width, height):
        rgb = rgb.resize((new_w, new_h), resample=resample)
    if geo.channels == 1:
        rgb = rgb.convert("L")
    canvas = np.empty((geo.height, geo.width, geo.channels), dtype=np.float32)
    canvas[:] = _per_channel(prep.pad_value, geo.channels, "RGB") if prep.pad_space == "pixel" else 0
    canvas[top:top + new_h, left:left + new_w] = np.asarray(rgb, dtype=np.float32).reshape(new_h, new_w, -1)
    return canvas, (top, left, new_h, new_w)


def _images(paths: list[Path], shown: str, spec: InputSpec, count: int, prep: Preprocess,
            rng: np.random.Generator) -> CalibrationSet:
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("image calibration needs Pillow: pip install pillow") from None
    geo = _geometry(spec, prep)
    order = _pick(len(paths), len(paths), rng)  # the first `count` unless some are unreadable
    wanted = min(count, len(paths))
    mean = _per_channel(prep.mean, geo.channels, prep.channel_order)
    std = _per_channel(prep.std, geo.channels, prep.channel_order)
    pad_normalised = _per_channel(prep.pad_value, geo.channels, prep.channel_order)
    resample = getattr(Image.Resampling, prep.interpolation.upper())
    if geo.layout == "NCHW":
        shape = (wanted, geo.channels, geo.height, geo.width)
    else:
        shape = (wanted, geo.height, geo.width, geo.channels)
    out = np.empty(shape, dtype=spec.dtype)  # preallocated; images decoded one at a time
    sources = np.empty(wanted, dtype=np.int64)  # each image is its own source: its index in path order
    integer = np.issubdtype(spec.dtype, np.integer)
    bounds = np.iinfo(spec.dtype) if integer else None
    i = 0
    unreadable: list[str] = []
    for index in order:
        if i == wanted:
            break
        path = paths[index]
        try:
            with Image.open(path) as img:
                img.load()
                rgb = img.convert("RGB")
            pixels, (top, left, new_h, new_w) = _fit_image(rgb, geo, prep, resample)
        except Exception as exc:  # any decoder failure: truncated, corrupt, unsupported mode, bomb
            reason = first_line(exc)
            unreadable.append(f"{path} ({reason})")
            if len(unreadable) <= MAX_NAMED:
                log.warning("skipping unreadable calibration image %s: %s", path, reason)
            continue
        if prep.channel_order == "BGR" and geo.channels == 3:
            pixels = pixels[:, :, ::-1]
        values = (pixels * np.float32(prep.scale) - mean) / std
        if prep.fit != "crop" and prep.pad_space == "normalised":  # padding written after normalising
            inside = np.zeros(values.shape[:2], dtype=bool)
            inside[top:top + new_h, left:left + new_w] = True
            values[~inside] = pad_normalised
        if geo.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        if integer:
            values = np.clip(np.rint(values), bounds.min, bounds.max)
        out[i] = values
        sources[i] = index
        i += 1
    out, sources = out[:i], sources[:i]
    if unreadable:
        if len(unreadable) > MAX_NAMED:
            log.warning("skipped %d unreadable calibration images in %s in all", len(unreadable), shown)
        if i < min(2, wanted):
            raise UsageError(f"calibration folder {shown}: {len(unreadable)} of {len(paths)} images are unreadable "
                             f"(first: {unreadable[0]}), {i} left; calibration needs at least 2")
    details = f"{geo.layout} {geo.height}x{geo.width}"
    if prep.fit != "crop":
        details += ", letterboxed" if prep.fit == "letterbox" else ", padded on the right"
    if geo.channels == 1:
        details += ", grayscale"
    if prep.channel_order == "BGR":
        details += ", BGR"
    if unreadable:
        details += f"; {len(unreadable)} unreadable skipped"
    return CalibrationSet({spec.name: out}, f"{len(out)} images from {shown} ({prep.name} preprocessing, {details})",
                          images=True, sources=sources, origin=shown)
