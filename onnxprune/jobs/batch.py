"""``batch``: models x option sets x targets from a YAML manifest, as one job.

    models: [resnet18.onnx, {path: mobilenet_v2.onnx}]   # paths relative to the manifest
    flops: [0.9, 0.7, 0.5]                                 # or params: [...]
    options: {round_to: 8}                                 # or a list of option sets
    bench: false                                           # time every point (bench_runs: 20)

Every option is a keyword of ``sweep``; paths (models, ``calib``, a ``preprocess`` JSON file) are
relative to the manifest. Every key and value is checked before any work (``check_manifest``):
types as YAML writes them (``bench: "false"`` is a string, not false), one target as a scalar or
several as a list, unknown keys named; YAML aliases are expanded at most to ``MAX_NODES`` nodes.

Each row is keyed by content: the model's (the .onnx file and every external data file its
tensors name), the calibration data's (see ``calib_digest``), the option set, the timing settings
and the target. Rows of an earlier run (``done``) with the same key are reused, not recomputed;
failed rows (a point, the model's analysis or its timing failed) are never stored as done.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calib.data import load_preset
from ..errors import UsageError, first_line
from ..graph.shapes import check_size
from ..outputs import model_data_files
from ..progress import Progress, no_progress
from ..results import SWEEP_COLUMNS
from ..sweep import parse_options, parse_targets
from . import JobOptions, Unit
from . import run as run_jobs

TOP_KEYS = {"models", "flops", "params", "options", "bench", "bench_runs"}
# What each sweep option holds in a manifest, as YAML writes it (a bool is no int here); ranges and
# choices are then checked by the option classes' validate(), as for the API. jobs, ray and
# bench_on are command-line only.
OPTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "calib": ((str,), "a path (relative to the manifest) or random"),
    "calib_count": ((int,), "a positive integer"),
    "preprocess": ((str,), "a preset name or a JSON file path"),
    "task": ((str,), "auto, classify, detect, dense, dense:THR or generic"),
    "holdout": ((int, float), "a number in [0, 1)"),
    "scope": ((str,), "a scope name"),
    "criterion": ((str,), "a criterion name"),
    "round_to": ((int, str), "a positive integer or auto"),
    "reconstruct": ((bool, str), "true or false (a YAML boolean, unquoted), or how: auto, ridge, stats, lstsq, none"),
    "max_memory": ((int, float), "a number of GiB"),
    "quantize": ((str,), "int8"),
    "keep_fp32": ((str, list), "auto, or a list of node names"),
    "rounding": ((str,), "obs or nearest"),
    "backend": ((str,), "a backend name"),
    "batch": ((int,), "a positive integer"),
    "threads": ((int,), "a positive integer"),
    "fp16": ((bool,), "true or false (a YAML boolean, unquoted)"),
    "input_shapes": ((dict,), "a mapping of input names to lists of positive dims ({x: [1, 3, 48, 320]})"),
}
MAX_NODES = 100_000  # YAML nodes of a manifest with its aliases expanded ("billion laughs": 10**9)
COLUMNS = ("model", "options", "metric", *SWEEP_COLUMNS, "dense_flops", "dense_params", "error", "key")


@dataclass
class BatchRow:
    """One model x option set x target: the sweep point's figures, or the error that stopped it."""

    model: str
    options: dict[str, Any]
    metric: str
    target: float
    key: str
    point: dict[str, Any] = field(default_factory=dict)  # SweepPoint.to_dict()
    dense_flops: float | None = None
    dense_params: float | None = None
    error: str | None = None
    reused: bool = False  # taken from an earlier run (``done``)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "options": self.options, "metric": self.metric,
                **{c: self.point.get(c) for c in SWEEP_COLUMNS}, "target": self.target,
                "dense_flops": self.dense_flops, "dense_params": self.dense_params, "error": self.error,
                "key": self.key}


@dataclass
class BatchResult:
    """What ``batch`` returns: one row per model x option set x target, in manifest order."""

    rows: list[BatchRow]

    @property
    def failed(self) -> list[BatchRow]:
        return [r for r in self.rows if r.error]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows]}

    def done(self) -> dict[str, dict[str, Any]]:
        """The rows that succeeded, by key: what a rerun may reuse (``batch(..., done=...)``)."""
        return {r.key: r.to_dict() for r in self.rows if not r.error}

    def write_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in self.rows:
                d = row.to_dict()
                d["options"] = json.dumps(d["options"], sort_keys=True)
                writer.writerow({k: "" if d[k] is None else d[k] for k in COLUMNS})

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    def write_done(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.done(), indent=1))


@dataclass
class OptionSet:
    """One option set: as written (the rows show it and it keys them), as run (paths made relative
    to the manifest's folder), and the digest of its calibration data (``calib_digest``)."""

    written: dict[str, Any]
    run: dict[str, Any]
    calib: str | None


@dataclass
class Manifest:
    """A checked manifest (``check_manifest``): what ``batch`` runs."""

    models: list[str]  # as written: the rows' names, relative to ``base``
    base: Path
    metric: str
    targets: list[float]
    option_sets: list[OptionSet]
    bench: bool = False
    bench_runs: int = 20


def read_manifest(manifest: str | os.PathLike | dict) -> tuple[dict, Path]:
    """(the manifest as a dict, the folder its paths are relative to)."""
    if isinstance(manifest, dict):
        return manifest, Path.cwd()
    if not isinstance(manifest, (str, os.PathLike)):
        raise TypeError(f"manifest must be a path (str or os.PathLike) or a dict, got {type(manifest).__name__}")
    path = Path(manifest)
    if not path.exists():
        raise UsageError(f"{path}: no such manifest file")
    if not path.is_file():  # a folder, a FIFO, a device: never read (a FIFO would block)
        raise UsageError(f"{path}: not a regular file; a manifest is a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text (UTF-8) YAML manifest") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    data = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a manifest is a mapping with models, flops or params, and options")
    return data, path.parent


def _load_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load, but the document's size with its aliases expanded is checked on the node
    graph first, before anything is built from it."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not a readable YAML manifest ({first_line(exc)})") from None
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply for a manifest") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: Any, path: Path) -> None:
    """Refuse a YAML node graph whose aliases expand past MAX_NODES nodes, or refer to themselves.
    Each node's expanded size is counted once (memo by identity), so this takes time in the
    number of distinct nodes, not in the expansion; the walk is a loop (no recursion limit)."""
    import yaml

    def children(node) -> list:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    sizes: dict[int, int] = {}
    open_: set[int] = set()  # entered, not finished: the current node's ancestors
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children(node))
            if sizes[id(node)] > MAX_NODES:
                raise UsageError(f"{path}: its YAML aliases expand to more than {MAX_NODES:,} values; a manifest "
                                 "is small: write it out, or split it")
            continue
        if id(node) in sizes:
            continue
        open_.add(id(node))
        stack.append((node, True))
        for child in children(node):
            if id(child) in open_:
                raise UsageError(f"{path}: a YAML alias refers to a value that contains it; a manifest is a tree")
            if id(child) not in sizes:
                stack.append((child, False))


def _shown(value: Any) -> str:
    """A value for an error line: its repr (control characters escaped), cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_manifest(data: dict, base: Path) -> Manifest:
    """Every key and value of a manifest, before any work: UsageError (one line) at the first
    problem. Paths are relative to ``base``; calibration data must exist (it is hashed here)."""
    unknown = sorted(str(k) for k in data if k not in TOP_KEYS)
    if unknown:
        raise UsageError(f"manifest: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"use {', '.join(sorted(TOP_KEYS))}")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise UsageError(f"manifest: models must be a list of .onnx paths, got {_shown(models)}")
    names = [_model_name(i, entry) for i, entry in enumerate(models)]
    try:
        metric, targets = parse_targets(data.get("flops"), data.get("params"))
    except UsageError as exc:
        raise UsageError(f"manifest: {exc}") from None
    bench = data.get("bench", False)
    if not isinstance(bench, bool):
        raise UsageError(f"manifest: bench must be true or false (a YAML boolean, unquoted), got {_shown(bench)}")
    runs = data.get("bench_runs", 20)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise UsageError(f"manifest: bench_runs must be a positive integer, got {_shown(runs)}")
    return Manifest(names, base, metric, targets, _option_sets(data, base), bench, runs)


def _model_name(i: int, entry: Any) -> str:
    if isinstance(entry, dict):
        extra = sorted(str(k) for k in entry if k != "path")
        if extra:
            raise UsageError(f"manifest: models[{i}]: unknown key {extra[0]!r}; a model is a path or {{path: ...}}")
        entry = entry.get("path")
    if not isinstance(entry, str) or not entry.strip():
        raise UsageError(f"manifest: models[{i}] must be a path or {{path: ...}}, got {_shown(entry)}")
    return entry


def _option_sets(data: dict, base: Path) -> list[OptionSet]:
    sets = data.get("options") or {}
    sets = sets if isinstance(sets, list) else [sets]
    out = []
    for i, opts in enumerate(sets):
        where = f"manifest: options[{i}]"
        if not isinstance(opts, dict):
            raise UsageError(f"{where} is not a mapping of sweep options, got {_shown(opts)}")
        jobs = sorted(str(k) for k in opts if k in ("jobs", "ray", "bench_on"))
        if jobs:
            raise UsageError(f"{where}: {jobs[0]} is given on the command line (--jobs, --ray, --bench-on), "
                             "not in options")
        unknown = sorted(str(k) for k in opts if k not in OPTION_TYPES)
        if unknown:
            raise UsageError(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; use {', '.join(sorted(OPTION_TYPES))}")
        for key, value in opts.items():
            _check_type(f"{where}.{key}", key, value)
        run = dict(opts)
        for key in ("calib", "preprocess"):
            if _is_path(key, run.get(key)):
                run[key] = str(base / run[key])
        calib, solver, bench, _, _ = parse_options(run, where="batch")
        try:
            calib.validate()
            solver.validate(None, calib)
            bench.validate()
            load_preset(calib.preprocess)  # a preset name or JSON file that does not exist: now, not per model
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
        preprocess = Path(calib.preprocess) if _is_path("preprocess", calib.preprocess) else None
        out.append(OptionSet(opts, run, calib_digest(run.get("calib"), preprocess, where)))
    return out


def _check_type(where: str, key: str, value: Any) -> None:
    types, what = OPTION_TYPES[key]
    if value is None:
        raise UsageError(f"{where} is empty; give {what}, or leave the key out")
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise UsageError(f"{where} must be {what}, got {_shown(value)}")
    if key == "reconstruct" and isinstance(value, str):
        from ..calib.reconstruct import METHODS

        if value not in METHODS:
            raise UsageError(f"{where} must be {what}, got {_shown(value)}")
    if key == "input_shapes":
        for name, dims in value.items():
            if (not isinstance(name, str) or not isinstance(dims, list) or not dims
                    or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)):
                raise UsageError(f"{where} must be {what}, got {_shown({name: dims})}")
            try:
                check_size(name, dims)  # absurd sizes now, not once per model
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None


def _is_path(key: str, value: Any) -> bool:
    """Whether an option's value names a file (relative to the manifest): calib unless 'random',
    preprocess when it is a JSON file rather than a preset name (as calib.data.load_preset tells)."""
    if not isinstance(value, str):
        return False
    if key == "calib":
        return value != "random"
    return value.lower().endswith(".json") or "/" in value or os.sep in value


def calib_digest(calib: str | None, preprocess: Path | None, where: str = "calib") -> str | None:
    """What a row's calibration data is, for its key: the sha256 of a calibration file's content
    (.npy, .npz) and of a preprocessing JSON file's. A folder counts by every file's relative path,
    size and modification time, not its content: a folder of photos would be read in full on every
    run only to build keys, while the loader reads just the samples it picks (a file replaced in
    place with the same size and time goes unseen). None without calibration data."""
    if calib is None:
        return None
    digest = hashlib.sha256()
    if calib == "random":
        digest.update(b"random")
    else:
        _digest_source(digest, Path(calib), f"{where}.calib")
    if preprocess is not None:
        _digest_source(digest, preprocess, f"{where}.preprocess")
    return digest.hexdigest()


def _digest_source(digest: Any, path: Path, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(f"{what}: {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        digest.update(b"file\0")
        _digest_file(digest, path)
    elif stat.S_ISDIR(mode):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = Path(root) / name
                try:
                    st = os.stat(file)
                    entry = f"{file.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                except OSError:  # a dangling link: the loader skips or reports it
                    entry = f"{file.relative_to(path).as_posix()}\0missing\n"
                digest.update(entry.encode("utf-8", "surrogateescape"))
    else:  # never opened: a FIFO would block, a device never end
        raise UsageError(f"{what}: {path} is not a file or folder (a FIFO, device or socket)")


def _digest_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def model_hash(path: Path) -> str:
    """sha256 of the model file and of every external data file its tensors name (``location``,
    whatever the file is called; read as bytes, the weights are not parsed). A named file that is
    missing counts as missing (the model's analysis then fails, and its rows are not done)."""
    digest = hashlib.sha256()
    _digest_file(digest, path)
    for part in model_data_files(path):
        digest.update(b"\0" + os.fsencode(part.name) + b"\0")
        if part.is_file():
            _digest_file(digest, part)
        else:
            digest.update(b"missing")
    return digest.hexdigest()


def batch(manifest: str | os.PathLike | dict, *, jobs: int | None = None, ray: bool | str | None = None,
          bench_on: str | None = None, done: dict[str, dict] | str | os.PathLike | None = None,
          progress: Progress | None = None) -> BatchResult:
    """Run a manifest (a YAML file or the same dict): every model x option set x target is a point,
    run where ``jobs``/``ray`` say (as ``sweep``). ``done``: rows of an earlier run ({key: row}, or
    the path of a file ``BatchResult.write_done`` wrote); those keys are reused. A model that cannot
    be read or analysed, a point that fails twice and a model whose timing fails is reported in its
    rows' ``error``. The manifest is checked whole first (UsageError)."""
    data, base = read_manifest(manifest)
    checked = check_manifest(data, base)
    job = JobOptions(jobs=jobs, ray=ray, bench_on=bench_on)
    job.validate()
    if ray:
        from .ray import require_ray

        require_ray()
    previous = _read_done(done)
    step = progress or no_progress
    rows: list[BatchRow] = []
    units: list[tuple[Unit, list[BatchRow]]] = []
    for name in checked.models:
        path = base / name
        digest = model_hash(path) if path.is_file() else "missing"
        for i, options in enumerate(checked.option_sets):
            calib, solver, bench, shapes, _ = parse_options(options.run, where="batch")
            unit_rows = []
            for target in checked.targets:
                row = BatchRow(name, options.written, checked.metric, float(target),
                               _row_key(digest, options, checked, target))
                old = previous.get(row.key)
                if _reusable(old):
                    row.point = {c: old.get(c) for c in SWEEP_COLUMNS}
                    row.dense_flops, row.dense_params = old.get("dense_flops"), old.get("dense_params")
                    row.reused = True
                elif not path.is_file():
                    row.error = f"{path}: {'not a regular file' if path.exists() else 'no such file'}"
                else:
                    unit_rows.append(row)
                rows.append(row)
            if unit_rows:
                unit = Unit(f"{digest[:16]}-{i}", str(path), {"calib": calib, "solver": solver, "bench": bench,
                                                               "shapes": shapes},
                            checked.metric, [r.target for r in unit_rows], checked.bench, checked.bench_runs)
                units.append((unit, unit_rows))
    reused = sum(r.reused for r in rows)
    if reused:
        step(f"{reused} of {len(rows)} points done in an earlier run; skipping them")
    if units:
        outcomes = run_jobs([u for u, _ in units], job, step)
        for (_, unit_rows), outcome in zip(units, outcomes, strict=True):
            _fill(unit_rows, outcome)
    return BatchResult(rows)


def _row_key(model: str, options: OptionSet, checked: Manifest, target: float) -> str:
    """A row's key: the model's and the calibration data's content, the option set as written, the
    timing settings and the target."""
    timing = [checked.bench_runs] if checked.bench else False
    parts = [model, options.calib, options.written, timing, checked.metric, target]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fill(rows: list[BatchRow], outcome) -> None:
    """Each row's figures, or its error: its own point's, else the model's (its analysis, or its
    timing: a point whose timing failed is a failed row, its other figures kept)."""
    result = outcome.result
    points = {p.target: p for p in result.points} if result else {}
    for row in rows:
        if result is not None:
            row.dense_flops, row.dense_params = result.dense.flops, result.dense.params
        point = points.get(row.target)
        if point is not None:
            row.point = point.to_dict()
        row.error = outcome.errors.get(row.target) or outcome.errors.get(None)
        if point is None and row.error is None:
            row.error = "no result"


def _reusable(old: Any) -> bool:
    """Whether a done-file row can stand for a point: it succeeded and holds numbers where a point
    does (a done-file edited by hand or damaged is a cache miss, never a crash at print time)."""
    if not isinstance(old, dict) or old.get("error") is not None:
        return False
    values = [old.get(c) for c in (*SWEEP_COLUMNS, "dense_flops", "dense_params") if c != "precision"]
    numbers = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                  for v in values)
    precision = old.get("precision", "fp32") in ("fp32", "int8")  # the one text column
    return numbers and precision and old.get("flops_ratio") is not None and old.get("params_ratio") is not None


def _read_done(done) -> dict[str, dict]:
    if done is None:
        return {}
    if isinstance(done, dict):
        return done
    path = Path(done)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is only a cache: everything runs again
    return data if isinstance(data, dict) else {}


__all__ = ["BatchResult", "BatchRow", "Manifest", "batch", "calib_digest", "check_manifest", "model_hash",
           "read_manifest"]
