"""``batch``: models x option sets x targets from a YAML manifest, as one job.

    models: [resnet18.onnx, {path: mobilenet_v2.onnx}]   # paths relative to the manifest
    flops: [0.9, 0.7, 0.5]                                 # or params: [...]
    options: {round_to: 8}                                 # or a list of option sets
    bench: false                                           # time every point (bench_runs: 20)

Every option is a keyword of ``sweep``. Each row is keyed by the model's hash (the .onnx file and
its ``.data`` file), the option set and the target: rows of an earlier run (``done``) with the
same key are reused, not recomputed; failed rows are run again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, first_line
from ..progress import Progress, no_progress
from ..results import SWEEP_COLUMNS
from ..sweep import parse_options, parse_targets
from . import JobOptions, Unit
from . import run as run_jobs

TOP_KEYS = {"models", "flops", "params", "options", "bench", "bench_runs"}
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


def read_manifest(manifest: str | os.PathLike | dict) -> tuple[dict, Path]:
    """(the manifest as a dict, the folder its paths are relative to)."""
    if isinstance(manifest, dict):
        return manifest, Path.cwd()
    import yaml

    path = Path(manifest)
    if not path.is_file():
        raise UsageError(f"{path}: no such manifest file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not a readable YAML manifest ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a manifest is a mapping with models, flops or params, and options")
    return data, path.parent


def model_hash(path: Path) -> str:
    """sha256 of the model file and of its ``<name>.data`` weights file, if any."""
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + ".data")):
        if part.is_file():
            with open(part, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _option_sets(data: dict) -> list[dict[str, Any]]:
    sets = data.get("options") or {}
    sets = sets if isinstance(sets, list) else [sets]
    out = []
    for i, opts in enumerate(sets):
        if not isinstance(opts, dict):
            raise UsageError(f"manifest: options[{i}] is not a mapping of sweep options")
        try:
            *parsed, job = parse_options(opts, where="batch")
        except TypeError as exc:
            what = first_line(exc).replace("batch() got an unexpected keyword argument", "unknown option")
            raise UsageError(f"manifest: options[{i}]: {what}") from None
        if job != JobOptions():
            raise UsageError("manifest: jobs, ray and bench_on are given on the command line, not in options")
        calib, solver, bench, _ = parsed
        calib.validate()
        solver.validate(None, calib)
        bench.validate()
        out.append(opts)
    return out


def batch(manifest: str | os.PathLike | dict, *, jobs: int | None = None, ray: bool | str | None = None,
          bench_on: str | None = None, done: dict[str, dict] | str | os.PathLike | None = None,
          progress: Progress | None = None) -> BatchResult:
    """Run a manifest (a YAML file or the same dict): every model x option set x target is a point,
    run where ``jobs``/``ray`` say (as ``sweep``). ``done``: rows of an earlier run ({key: row}, or
    the path of a file ``BatchResult.write_done`` wrote); those keys are reused. A model that cannot
    be read or analysed, and a point that fails twice, is reported in its rows' ``error``."""
    data, base = read_manifest(manifest)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UsageError(f"manifest: unknown key {unknown[0]!r}; use {', '.join(sorted(TOP_KEYS))}")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise UsageError("manifest: models must be a list of .onnx paths")
    metric, targets = parse_targets(data.get("flops"), data.get("params"))
    option_sets = _option_sets(data)
    job = JobOptions(jobs=jobs, ray=ray, bench_on=bench_on)
    job.validate()
    if ray:
        from .ray import require_ray

        require_ray()
    previous = _read_done(done)
    step = progress or no_progress
    rows: list[BatchRow] = []
    units: list[tuple[Unit, list[BatchRow]]] = []
    for entry in models:
        name = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(name, str):
            raise UsageError(f"manifest: a model is a path or {{path: ...}}, got {entry!r}")
        path = base / name
        digest = model_hash(path) if path.is_file() else "missing"
        for i, opts in enumerate(option_sets):
            calib, solver, bench, shapes, _ = parse_options(opts, where="batch")
            unit_rows = []
            for target in targets:
                key = hashlib.sha256(json.dumps([digest, opts, data.get("bench", False), metric, target],
                                                sort_keys=True, default=str).encode()).hexdigest()[:16]
                row = BatchRow(name, opts, metric, float(target), key)
                old = previous.get(key)
                if old and not old.get("error"):
                    row.point = {c: old.get(c) for c in SWEEP_COLUMNS}
                    row.dense_flops, row.dense_params = old.get("dense_flops"), old.get("dense_params")
                    row.reused = True
                elif not path.is_file():
                    row.error = f"{path}: no such file"
                else:
                    unit_rows.append(row)
                rows.append(row)
            if unit_rows:
                unit = Unit(f"{digest[:16]}-{i}", str(path), {"calib": calib, "solver": solver, "bench": bench,
                                                               "shapes": shapes},
                            metric, [r.target for r in unit_rows], bool(data.get("bench", False)),
                            int(data.get("bench_runs", 20)))
                units.append((unit, unit_rows))
    reused = sum(r.reused for r in rows)
    if reused:
        step(f"{reused} of {len(rows)} points done in an earlier run; skipping them")
    if units:
        outcomes = run_jobs([u for u, _ in units], job, step)
        for (_, unit_rows), outcome in zip(units, outcomes, strict=True):
            _fill(unit_rows, outcome)
    return BatchResult(rows)


def _fill(rows: list[BatchRow], outcome) -> None:
    result = outcome.result
    points = {p.target: p for p in result.points} if result else {}
    for row in rows:
        if result is not None:
            row.dense_flops, row.dense_params = result.dense.flops, result.dense.params
        point = points.get(row.target)
        if point is not None:
            row.point = point.to_dict()
        row.error = outcome.errors.get(row.target) or (outcome.errors.get(None) if point is None else None)
        if point is None and row.error is None:
            row.error = "no result"


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


__all__ = ["BatchResult", "BatchRow", "batch", "model_hash", "read_manifest"]
