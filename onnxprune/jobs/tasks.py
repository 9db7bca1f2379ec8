"""What a job runs, wherever it runs: the job options, a Pipeline that travels between processes,
and the three task functions (analyse a model, prune one target, time a unit's models).

A *unit* is one model with one set of options: analysed once (one ``Pipeline``), then pruned at
each of its targets, one task per target. The task functions are plain module-level functions so
a process pool and Ray run the same code; ``sweep_point`` is also what a sequential sweep runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from ..errors import UsageError
from ..options import option, positive
from ..pipeline import Pipeline, measured_at
from ..progress import no_progress
from ..results import SweepPoint

GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")
EMPTY_RAY_ADDRESS = ("--ray: the address is empty; give auto, HOST:PORT or ray://HOST:10001, or --ray alone for a "
                     "local Ray")


@dataclass
class JobOptions:
    """Where the points of a sweep or batch run: a local process pool (default) or Ray."""

    jobs: int | None = option(None, "run points in N local processes (default: one per CPU core; 1: in this "
                                    "process, one after another)", flag="--jobs", metavar="N", type=positive)
    ray: bool | str | None = option(None, "run points as Ray tasks: start a local Ray, or connect to ADDRESS "
                                          "(auto, ray://host:10001); needs pip install onnxprune[ray]",
                                    flag="--ray", metavar="ADDRESS", nargs="?", const=True)
    bench_on: str | None = option(None, "with --ray and --bench: time on nodes that have this Ray resource "
                                        "(ray start --resources '{\"LABEL\": 1}')", flag="--bench-on",
                                  metavar="LABEL")

    def validate(self) -> None:
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise UsageError(f"--jobs must be a positive integer, got {self.jobs!r}")
        if self.ray is not None and not isinstance(self.ray, (bool, str)):
            raise UsageError(f"ray must be True or a Ray address such as 'auto', got {self.ray!r}")
        if isinstance(self.ray, str) and not self.ray.strip():  # not "no Ray": a forgotten address
            raise UsageError(EMPTY_RAY_ADDRESS)
        if self.bench_on and not self.ray:
            raise UsageError("--bench-on needs --ray")


@dataclass
class Unit:
    """One model and one set of options, pruned at ``targets`` of ``metric``. ``pipe`` is the
    analysed model when the caller analysed it (sweep), else a task analyses ``model`` (batch)."""

    key: str
    model: str | os.PathLike | onnx.ModelProto
    options: dict[str, Any]  # keyword -> option instance: {"calib": CalibOptions, "solver": ..., ...}
    metric: str
    targets: list[float]
    bench: bool = False
    bench_runs: int = 20
    keep_models: bool = False
    pipe: Pipeline | None = field(default=None, repr=False)
    failure: Any = None  # why the analysis failed (a local.Failure)


@dataclass
class Header:
    """What a unit's SweepResult needs from its Pipeline, small enough to send anywhere."""

    dense: Any
    calibration: str | None
    external: bool
    input_shapes: dict
    multiples: list[int]
    held_out: str | None = None  # what fidelity is measured on


class Shared:
    """A Pipeline that pickles: onnx-graphsurgeon's graph does not, so it travels as ONNX and is
    imported again on the other side (names, order and values are kept; the analysis refers to
    tensors by name)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def __reduce__(self):
        pipe = self.pipe
        state = dict(vars(pipe), step=no_progress, analysis=replace(pipe.analysis, graph=None))
        return _unpack, (state, gs.export_onnx(pipe.analysis.graph, do_type_check=False).SerializeToString())


def _unpack(state: dict, graph: bytes) -> Shared:
    pipe = Pipeline.__new__(Pipeline)
    vars(pipe).update(state)
    pipe.analysis.graph = gs.import_onnx(onnx.load_from_string(graph))
    return Shared(pipe)


def header(pipe: Pipeline) -> Header:
    return Header(pipe.dense, pipe.calib.description if pipe.calib else None, pipe.external,
                  measured_at(pipe.analysis), pipe.multiples()[0],
                  pipe.held_out.description if pipe.held_out else None)


def analyse(unit: Unit) -> Shared:
    """Task: load and analyse the unit's model, load its calibration data, score its channels."""
    o = unit.options
    pipe = Pipeline(unit.model, calib=o["calib"], solver=o["solver"], bench=o["bench"], shapes=o["shapes"])
    pipe.scores()
    return Shared(pipe)


def sweep_point(pipe: Pipeline, metric: str, target: float, multiples: list[int] | None = None
                ) -> tuple[SweepPoint, onnx.ModelProto]:
    """Prune at one target (``Pipeline.run``: plan .. verify .. fidelity) and tabulate it: the costs
    measured on the pruned model and, with calibration data, its fidelity; with the solver's
    --quantize, the INT8 model's fidelity, and the float model's score beside it."""
    run = pipe.run(**{metric: target}, multiples=multiples, quantize=pipe.solver.quantize)
    costs, plan, quality = run.costs, run.plan, run.fidelity
    point = SweepPoint(target=float(target),
                       flops_ratio=costs.flops / pipe.dense.flops if pipe.dense.flops else 1.0,
                       params_ratio=costs.params / pipe.dense.params if pipe.dense.params else 1.0,
                       groups_pruned=int(sum(len(r) > 0 for r in plan.removed)), ratio=float(plan.ratio),
                       round_to=plan.round_to)
    if quality is not None:
        point.top1_agreement, point.cosine, point.kl = quality.top1_agreement, quality.cosine, quality.kl
        point.task, point.score, point.metrics = quality.task, quality.score, dict(quality.metrics)
    if run.quantization is not None:
        point.precision = "int8"
        if run.float_fidelity is not None:
            point.float_score, point.float_metrics = run.float_fidelity.score, dict(run.float_fidelity.metrics)
    return point, run.model


def bench_unit(pipe: Pipeline, models: list[onnx.ModelProto], runs: int) -> list[float]:
    """Task: median latency (ms) of the dense model and ``models``, alternating in this process."""
    return [lat.median_ms for lat in pipe.measure([pipe.model, *models], runs=runs)]


__all__ = ["GPU_BACKENDS", "Header", "JobOptions", "Shared", "Unit", "analyse", "bench_unit", "header",
           "sweep_point"]
