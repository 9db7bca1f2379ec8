"""Results: what ``prune`` and ``sweep`` return, as typed data with one ``to_dict()`` each.

Presenters (report/text.py for the terminal and JSON, report/html.py, report/plots.py) read these
typed records, not dicts: a prune's ``PruneResult`` together with a ``PruneRun`` for what the run
recorded besides (file sizes, --bench latency, the command line). Nothing here imports a
presenter or the orchestration (api.py, pipeline.py, sweep.py). Each stage's own
figures (SparsifyReport, Refit, Fidelity, LatencySearch, Distillation) stay beside the stage that
makes them and are carried here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .deploy.timing import Latency
from .graph.load import save_model
from .outputs import write_atomic

if TYPE_CHECKING:  # types only: stage modules import heavier libraries
    from .calib.distill import Distillation
    from .calib.fidelity import Fidelity
    from .calib.int8 import Quantization
    from .calib.reconstruct import Refit
    from .calib.sparsify import SparsifyReport
    from .ranking.latency import LatencySearch


CALIB_EXAMPLE = "photos/"  # the folder the recovery command names: the user's own images go there
NOT_MEASURED = ("not measured: no calibration data was given (--calib), so the pruned model's outputs were never "
                "compared with the dense model's. Pruning without data usually needs recovery before the model is "
                "accurate again. The command measures fidelity and recovers the model from a folder of images like "
                f"the model's inputs ({CALIB_EXAMPLE} stands for it).")


def recover_command_for(model: str | os.PathLike | onnx.ModelProto, options: Iterable[Any], *,
                        sweep: dict[str, list[float]] | None = None) -> str:
    """The command that measures fidelity and recovers a model pruned without data: the user's run
    again (the same model and every option given, read from the option dataclasses of options.py,
    whose fields carry their flags), with ``--calib photos/`` and, where channels are removed,
    ``--reconstruct``. ``sweep``: a sweep's targets (``{"--flops": [0.9, 0.5]}``). A ModelProto
    has no path: ``model.onnx`` stands for it."""
    path = os.fspath(model) if isinstance(model, str | os.PathLike) else "model.onnx"
    if path.startswith("-"):
        path = os.path.join(".", path)  # not read as an option
    words = ["onnxprune", "sweep", path] if sweep else ["onnxprune", path]
    for flag, targets in (sweep or {}).items():
        words += [flag, *map(str, targets)]  # str: the shortest spelling that reads back the same float
    structured = bool(sweep)
    for group in options:
        structured = structured or bool(getattr(group, "structured", False))
        for f in dataclasses.fields(group):
            flag, value = f.metadata.get("flag"), getattr(group, f.name)
            if not flag or not f.metadata.get("cli") or flag == "--calib" or value is None or value == f.default:
                continue  # the defaults, and the data this command adds
            if value is True:
                words.append(flag)
            elif isinstance(value, dict):  # --input-shape, once per input
                words += [w for name, dims in value.items() for w in (flag, f"{name}:{'x'.join(map(str, dims))}")]
            else:
                words += [flag, str(value)]
    words += ["--calib", CALIB_EXAMPLE, *(["--reconstruct"] if structured else [])]
    return shlex.join(words)


def not_measured(recover_command: str | None) -> dict[str, Any]:
    """The report's ``fidelity`` entry of a run without calibration data."""
    return {"measured": False, "note": NOT_MEASURED, "command": recover_command}


@dataclass
class Costs:
    """Cost figures of one model: FLOPs (multiply-add = 2, batch 1) and float parameters."""

    flops: float
    params: float


@dataclass
class FrozenRow:
    """Channels that carry weights but cannot be removed: how many, why, and where (the first four
    tensor[axis] places)."""

    channels: int
    reasons: list[str]
    slots: list[str]


@dataclass
class ChannelRow:
    """One coupled group of a plan: its first weight, isomorphic class, atoms, atom width and how many
    atoms were removed."""

    group: str
    iso_class: int
    atoms: int
    width: int
    removed: int

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "class": self.iso_class, "atoms": self.atoms, "width": self.width,
                "removed": self.removed}


@dataclass
class PruneResult:
    """What ``prune`` returns: the pruned model, its plan and the figures before/after."""

    model: onnx.ModelProto
    dense: Costs
    pruned: Costs
    plan: dict[str, dict[int, list[int]]]  # kept indices of every pruned initializer: {name: {axis: [i, ...]}}
    groups_found: int
    groups_pruned: int
    frozen: list[FrozenRow]
    ratio: float
    external_data: bool = False
    channels: list[ChannelRow] = field(default_factory=list)
    sparsity: SparsifyReport | None = None
    refits: list[Refit] = field(default_factory=list)
    fidelity: Fidelity | None = None
    calibration: str | None = None
    held_out: str | None = None  # what fidelity was measured on (CalibrationSet.description of the held-out set)
    latency_search: LatencySearch | None = None
    distillation: Distillation | None = None  # --distill: steps, time, held-out KL/agreement before and after
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # what FLOPs were measured at (batch 1)
    channel_multiple: int = 1  # channel counts of pruned groups are multiples of this
    channel_multiple_why: str | None = None  # how --round-to chose it
    criterion: str | None = None  # what ranked the channels (when channels were removed)
    recover_command: str | None = None  # without calibration data: the command that measures fidelity and recovers
    quantization: Quantization | None = None  # --quantize: what was done; ``model`` is the INT8 one
    float_model: onnx.ModelProto | None = None  # --quantize: the model before INT8 (FLOPs and params are its)
    float_fidelity: Fidelity | None = None  # ... and its fidelity
    alternative: onnx.ModelProto | None = None  # --quantize: the dense model quantized by onnxruntime alone
    alternative_fidelity: Fidelity | None = None  # ... and its fidelity

    def stage_models(self) -> list[onnx.ModelProto]:
        """--quantize: the models of ``stages`` after the dense one (onnxruntime's INT8 of it, the
        float model, the INT8 model), in the order ``stages`` takes their latency; else the model."""
        if self.quantization is None:
            return [self.model]
        return [self.alternative, self.float_model, self.model]

    def stages(self, latency: Sequence[Latency] | None = None) -> list[StageRow]:
        """What each stage of a --quantize run cost, beside what onnxruntime's quantization alone
        makes of the dense model: the float model (channels, re-fit, sparsity, distillation as
        asked), then INT8; ``latency``: dense then ``stage_models``, timed alternating. Empty
        without --quantize."""
        if self.quantization is None:
            return []
        done = [what for what, on in (("channels", bool(self.channels) and self.groups_pruned),
                                      ("re-fit", bool(self.refits)),
                                      ("sparsity", self.sparsity is not None),
                                      ("distillation", self.distillation is not None)) if on]
        ms = [lat.median_ms for lat in latency] if latency else [None] * 4
        rows = [("dense FP32", None), ("dense INT8 by onnxruntime alone (MinMax, nearest)", self.alternative_fidelity),
                ("FP32: " + (", ".join(done) or "unchanged"), self.float_fidelity),
                ("INT8: " + self.quantization.summary(), self.fidelity)]
        return [StageRow(name, f, t, ms[0] / t if t else None) for (name, f), t in zip(rows, ms, strict=True)]

    @property
    def fidelity_measured(self) -> bool:
        """Whether fidelity to the dense model was measured (only with calibration data): without it,
        the pruned model's accuracy is unknown, and ``recover_command`` says how to measure and recover it."""
        return self.fidelity is not None

    @property
    def flops_ratio(self) -> float:
        """Pruned FLOPs over dense FLOPs, both measured (batch 1)."""
        return self.pruned.flops / self.dense.flops if self.dense.flops else 1.0

    @property
    def params_ratio(self) -> float:
        """Pruned params over dense params."""
        return self.pruned.params / self.dense.params if self.dense.params else 1.0

    def save(self, path: str | os.PathLike) -> None:
        """Write the pruned model atomically, keeping external data if the input used it."""
        save_model(self.model, path, external=self.external_data or None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (everything but the model and the kept indices, ``plan``)."""
        out: dict[str, Any] = {
            "flops": {"dense": self.dense.flops, "pruned": self.pruned.flops, "ratio": self.flops_ratio},
            "params": {"dense": self.dense.params, "pruned": self.pruned.params, "ratio": self.params_ratio},
            "groups": {"found": self.groups_found, "pruned": self.groups_pruned, "frozen": len(self.frozen)},
            "frozen": [asdict(f) for f in self.frozen],
            "shared_ratio": self.ratio,
            "channels": [c.to_dict() for c in self.channels],
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},  # FLOPs measured there (batch 1)
        }
        if self.criterion:
            out["criterion"] = self.criterion
        if self.channel_multiple_why:
            out["channel_multiple"] = {"multiple": self.channel_multiple, "why": self.channel_multiple_why}
        if self.sparsity is not None:
            sp = self.sparsity
            out["sparsity"] = {"pattern": sp.pattern, "method": sp.method, "sequential": sp.sequential,
                               "allocate": sp.allocate, "model_sparsity": sp.model_sparsity,
                               "layers": [vars(layer) for layer in sp.layers],
                               "dense_layers": [{"layer": n, "why": why} for n, why in sp.dense]}
        if self.refits:
            out["reconstruct"] = [vars(r) for r in self.refits]
        out["fidelity"] = ({"measured": True, **self.fidelity.to_dict()} if self.fidelity is not None
                           else not_measured(self.recover_command))
        if self.distillation is not None:
            out["distill"] = vars(self.distillation)
        if self.calibration:
            out["calibration"] = self.calibration
        if self.held_out:
            out["held_out"] = self.held_out
        if self.latency_search is not None:
            out["latency_target"] = self.latency_search.to_dict()
        if self.quantization is not None:
            out["quantization"] = self.quantization.to_dict()
            out["stages"] = [row.to_dict() for row in self.stages()]
        return out


@dataclass
class StageRow:
    """One stage of a --quantize run: its model's fidelity to the dense one (None: the dense model),
    median latency and speedup over the dense FP32 model (None: not timed)."""

    stage: str
    fidelity: Fidelity | None
    latency_ms: float | None = None
    speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "fidelity": self.fidelity.to_dict() if self.fidelity else None,
                "latency_ms": self.latency_ms, "speedup": self.speedup}


@dataclass
class PruneRun:
    """What a run recorded about one prune beyond its ``PruneResult``, for the reports (the CLI fills
    it; from Python every field may stay empty): file sizes, the latency ``--bench`` timed, where the
    model was written and the command line."""

    file_bytes: tuple[int, int] | None = None  # (dense, pruned): each model file with its external data
    latency: tuple[Latency, Latency] | None = None  # (dense, pruned), timed alternating in one process
    stage_latency: list[Latency] | None = None  # --quantize: dense, then PruneResult.stage_models (one run)
    backend: str = "ort-cpu"  # what ``latency`` was timed on
    output: str | None = None  # the pruned model's path
    command: Sequence[str] | str | None = None  # the command line (None: made through the Python API)


@dataclass
class LatencyPair:
    """Median latency of the dense and the pruned model, timed alternating: by ``--bench`` (with its
    runs, batch and run-to-run variation) or, without it, by the latency search for its chosen plan."""

    dense_ms: float
    pruned_ms: float
    backend: str
    runs: int | None = None  # None: the latency search's own measurement
    batch: int | None = None
    cv: list[float] | None = None  # coefficient of variation, dense then pruned

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.pruned_ms

    def to_dict(self) -> dict[str, Any]:
        """The report's ``latency_ms`` entry."""
        out = {"dense": self.dense_ms, "pruned": self.pruned_ms, "speedup": self.speedup, "runs": self.runs,
               "backend": self.backend}
        if self.runs is not None:
            out.update(batch=self.batch, cv=self.cv)
        return out


def latency_pair(result: PruneResult, run: PruneRun | None = None) -> LatencyPair | None:
    """The dense and pruned latency a report shows: ``--bench``'s, else the latency search's (None:
    neither was timed)."""
    if run is not None and run.latency:
        dense, pruned = run.latency
        return LatencyPair(dense.median_ms, pruned.median_ms, run.backend, dense.runs, dense.batch,
                           [dense.cv, pruned.cv])
    search = result.latency_search
    if search is not None and search.chosen is not None:
        return LatencyPair(search.chosen.dense_ms, search.chosen.pruned_ms, f"{search.backend}, latency search")
    return None


SWEEP_COLUMNS = ("target", "flops_ratio", "params_ratio", "latency_ms", "latency_ratio", "score", "top1_agreement",
                 "cosine", "kl", "groups_pruned", "ratio", "round_to", "precision", "float_score")


@dataclass
class SweepPoint:
    """One target of a sweep: the measured ratios (on the pruned model itself) and, where asked,
    latency and fidelity to the dense model on held-out calibration samples: ``score``, the task's
    headline (``Fidelity.score``), and all of the task's ``metrics``; a classifier's also as
    top1_agreement, cosine and kl."""

    target: float
    flops_ratio: float
    params_ratio: float
    groups_pruned: int = 0
    ratio: float = 0.0
    round_to: int = 1  # the channel multiple used (auto may use a finer one for a far target)
    latency_ms: float | None = None
    latency_ratio: float | None = None
    top1_agreement: float | None = None
    cosine: float | None = None
    kl: float | None = None
    task: str | None = None  # what fidelity measured (fidelity.TASKS)
    score: float | None = None
    metrics: dict[str, float] | None = None
    precision: str = "fp32"  # int8 (--quantize): the model, its fidelity and latency are the INT8 model's ...
    float_score: float | None = None  # ... and this is the float model's score before INT8
    float_metrics: dict[str, float] | None = None
    model: onnx.ModelProto | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The point as one CSV/JSON row (no model)."""
        return {k: getattr(self, k) for k in SWEEP_COLUMNS}


@dataclass
class SweepResult:
    """What ``sweep`` returns; ``metric`` is "flops" or "params" (what the targets bound)."""

    metric: str
    dense: Costs
    points: list[SweepPoint]
    dense_latency_ms: float | None = None
    calibration: str | None = None
    held_out: str | None = None  # what each point's fidelity was measured on
    external_data: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # FLOPs measured there (batch 1)
    batch: int = 1  # the batch latency was timed at
    failed: dict[float, str] = field(default_factory=dict)  # targets that failed (retried once) and their error
    recover_command: str | None = None  # without calibration data: the sweep that measures fidelity and recovers

    @property
    def fidelity_measured(self) -> bool:
        """Whether the points carry fidelity to the dense model (only with calibration data)."""
        return self.calibration is not None

    @property
    def task(self) -> str | None:
        """What the points' fidelity measures (one dense model: one task)."""
        return next((p.task for p in self.points if p.task is not None), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: dense costs, the input sizes they were measured at, and every point."""
        return {"metric": self.metric, "dense": dataclasses.asdict(self.dense),
                "dense_latency_ms": self.dense_latency_ms, "calibration": self.calibration,
                "held_out": self.held_out,
                "fidelity": ({"measured": True, "task": self.task,
                              "where": "each point's score (the task's headline) and metrics; a classifier's also "
                                       "top1_agreement, cosine and kl"}
                             if self.fidelity_measured else not_measured(self.recover_command)),
                "points": [{**p.to_dict(), "metrics": p.metrics} for p in self.points],
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "latency_batch": self.batch if self.dense_latency_ms is not None else None,
                "failed": {f"{t:g}": e for t, e in self.failed.items()}}

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the points as CSV, atomically."""
        write_atomic(path, self.write_csv)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON, atomically."""
        write_atomic(path, self.write_json)

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write the points as CSV to ``path`` as is (not atomically)."""
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*SWEEP_COLUMNS, "error"])
            writer.writeheader()
            for p in self.points:
                writer.writerow({k: "" if v is None else v for k, v in p.to_dict().items()})
            for target, error in self.failed.items():  # a failed point is a row too, with its error
                writer.writerow({"target": target, "error": error})

    def write_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON to ``path`` as is (not atomically)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


@dataclass
class BenchResult:
    """Latency of several models measured together on one backend (the first is the reference)."""

    names: list[str]
    latencies: list[Latency]
    backend: str
    batch: int
    threads: int
    fp16: bool = False
    engines: list[str | None] | None = None
    engine_reports: list[dict | None] | None = None  # tensorrt: flags, layers eligible for / run with 2:4
    inputs: list[dict[str, tuple[int, ...]]] | None = None  # per model, the shape each input was timed at

    def ratios(self) -> list[float]:
        """Each model's median latency over the first model's."""
        ref = self.latencies[0].median_ms
        return [lat.median_ms / ref for lat in self.latencies]

    def to_dict(self) -> dict:
        """Plain data for JSON: the settings and, per model, its statistics and ratio."""
        none = [None] * len(self.names)
        return {"backend": self.backend, "batch": self.batch, "threads": self.threads, "fp16": self.fp16,
                "models": [{"name": n, **lat.to_dict(), "ratio_to_first": r, "engine": e, "engine_build": b,
                            "inputs": {k: list(v) for k, v in i.items()} if i else None}
                           for n, lat, r, e, b, i in zip(self.names, self.latencies, self.ratios(),
                                                         self.engines or none, self.engine_reports or none,
                                                         self.inputs or none, strict=True)]}


__all__ = ["BenchResult", "ChannelRow", "Costs", "FrozenRow", "LatencyPair", "PruneResult", "PruneRun", "SweepPoint",
           "SweepResult", "latency_pair"]
