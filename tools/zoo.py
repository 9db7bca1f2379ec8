"""Model zoo: export every torchvision classifier (and a timm list) with both exporters, prune
each at several FLOPs targets, and tabulate what happened.

Usage::

    python tools/zoo.py --models torchvision --jsonl /tmp/zoo/tv.jsonl --resume --markdown docs/zoo.md
    python tools/zoo.py --models timm --jsonl /tmp/zoo/timm.jsonl --resume
    python tools/zoo.py --models resnet18 timm/levit_128 --exporters legacy
    python tools/zoo.py --table /tmp/zoo/tv.jsonl /tmp/zoo/timm.jsonl --markdown docs/zoo.md

Each (model, exporter) runs in its own subprocess (``--one NAME --exporter X``) with a timeout
and a memory cap, so a crash, hang or OOM costs one row, not the table. The child exports the
model (random weights, dynamic batch; ``tools/export_models.py``), analyses it once and, per
target, selects, rewrites and verifies as ``onnxprune.prune`` does, then checks the result from
outside: onnxruntime runs it at batch 1 and 2, the outputs keep their shapes, and where it
applies the pruned model equals the dense model with the removed channels zeroed at their
consumers (``tests/masking.py``). One JSON record per target is appended to the JSONL file, so
``--resume`` skips what is done.

A case passes when the model pruned, reached FLOPs within 2% below the target (never above),
kept its outputs' shapes, ran in onnxruntime, and (where it applies) matched the masked dense
model. A target the frozen share of FLOPs makes unreachable is counted separately, with the ops
that froze it. Giants (over 150M parameters or 30 GFLOPs) run only with ``--include-giants``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import export_models  # noqa: E402

log = logging.getLogger("zoo")

TIMM_MODELS = (
    "resnet50", "efficientnet_b0", "convnext_atto", "deit_small_patch16_224", "vit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "efficientvit_b0", "efficientvit_m0", "mobilevit_xs", "mobilevitv2_050",
    "regnety_002", "levit_128", "poolformer_s12", "repvgg_a0", "ghostnet_100",
)
TARGETS = (0.5, 0.8)
FLOPS_TOLERANCE = 0.02  # reached FLOPs ratio within 2% (relative) below the target
MASK_TOLERANCE = 2e-4  # max |pruned - masked dense| / max |masked dense|
GIANT_PARAMS = 150e6
GIANT_GFLOPS = 30.0

#: Ops that mix or normalise across an axis: where that axis lost channels, the masked dense
#: model (removed channels zeroed only at weighted consumers) no longer equals the pruned one.
MIXING_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization", "LRN",
              "Softmax", "LogSoftmax", "Hardmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
              "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "MeanVarianceNormalization", "MatMul",
              "Gemm", "Einsum", "TopK", "ArgMax", "ArgMin", "CumSum")


@dataclass
class Record:
    """One (model, exporter, target) case of the zoo run."""

    model: str
    exporter: str
    target: float
    size: int = 0
    status: str = "fail"  # pass | unreachable | fail | export-failed
    exported: bool = False
    static_batch: bool = False
    pruned: bool = False
    flops_ratio: float | None = None
    params_ratio: float | None = None
    shapes_kept: bool | None = None
    ort_runs: bool | None = None
    mask_delta: float | None = None  # max |pruned - masked dense| / max |masked dense|
    mask_blockers: list[str] = field(default_factory=list)  # why mask equivalence does not apply
    seconds: float | None = None  # analysis (shared by the targets) + select, rewrite, verify
    export_seconds: float | None = None
    frozen_groups: int = 0
    frozen_channels: int = 0
    frozen_ops: dict[str, int] = field(default_factory=dict)  # op -> frozen channels it touches
    error: str = ""


# --- which models ----------------------------------------------------------------------------------

def torchvision_models() -> list[str]:
    """Every classifier in torchvision.models (quantized models live in a submodule: not listed)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_cost(name: str) -> tuple[float, float]:
    """(parameters, GFLOPs at the default input) from torchvision's weight metadata; nothing is downloaded."""
    from torchvision.models import get_model_weights

    meta = get_model_weights(name).DEFAULT.meta
    return float(meta["num_params"]), float(meta["_ops"])


def is_giant(name: str) -> bool:
    """Over 150M parameters or 30 GFLOPs (torchvision metadata; timm models are never giants here)."""
    if name.startswith(export_models.TIMM_PREFIX) or name not in torchvision_models():
        return False
    params, gflops = torchvision_cost(name)
    return params > GIANT_PARAMS or gflops > GIANT_GFLOPS


def expand_models(names: list[str], include_giants: bool) -> tuple[list[str], list[str]]:
    """(models to run, giants left out). ``torchvision``/``timm`` stand for their lists; torchvision
    models run smallest first, so a partial run covers the most models."""
    out: list[str] = []
    for name in names:
        if name == "torchvision":
            out += sorted(torchvision_models(), key=lambda n: torchvision_cost(n)[1])
        elif name == "timm":
            out += [export_models.TIMM_PREFIX + n for n in TIMM_MODELS]
        else:
            out.append(name)
    giants = [n for n in out if is_giant(n)]
    return ([n for n in out if include_giants or n not in giants], [] if include_giants else giants)


# --- one model, in the child process ---------------------------------------------------------------

def mask_blockers(analysis, kept: dict) -> list[str]:
    """Ops that mix an axis which lost channels (so mask equivalence does not apply): norms,
    softmax and reductions over it, and products of two computed tensors along it."""
    import onnx_graphsurgeon as gs

    pruned_axes = {(s.tensor, s.axis) for s in kept}
    blockers: set[str] = set()
    for node in analysis.graph.nodes:
        if node.op not in MIXING_OPS:
            continue
        for tensor, axis in _mixed_axes(node, analysis.capture.shapes):
            if not isinstance(tensor, gs.Constant) and (tensor.name, axis) in pruned_axes:
                blockers.add(node.op)
    return sorted(blockers)


def _mixed_axes(node, shapes: dict) -> list:
    """(tensor, axis) pairs a mixing op combines across."""
    x = node.inputs[0]
    rank = len(shapes.get(x.name, ())) if x.name in shapes else len(getattr(x, "shape", None) or ())
    if rank == 0:
        return []
    if node.op in ("MatMul", "Gemm", "Einsum"):
        return _product_axes(node, shapes)
    if node.op in ("GroupNormalization", "LRN"):
        return [(x, 1)]
    if node.op == "LayerNormalization":
        return [(x, a) for a in range(node.attrs.get("axis", -1) % rank, rank)]
    if node.op == "InstanceNormalization":  # GroupNorm exports as Reshape to (N, groups, -1) + this
        return [(x, a) for a in range(2, rank)]
    if node.op == "MeanVarianceNormalization":
        return [(x, int(a) % rank) for a in node.attrs.get("axes", [0, 2, 3])]
    if node.op.startswith("Reduce"):
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and node.inputs[1].name:
            values = getattr(node.inputs[1], "values", None)
            axes = None if values is None else list(values.ravel())
        return [(x, int(a) % rank) for a in (axes if axes is not None and len(axes) else range(rank))]
    return [(x, node.attrs.get("axis", -1) % rank)]


def _product_axes(node, shapes: dict) -> list:
    """The contracted axes of a MatMul/Gemm whose weight is computed (both sides are activations)."""
    import onnx_graphsurgeon as gs

    a, b = node.inputs[0], node.inputs[1]
    if isinstance(a, gs.Constant) or isinstance(b, gs.Constant):
        return []
    if node.op == "Einsum":
        return [(t, axis) for t in node.inputs for axis in range(len(shapes.get(t.name, ())))]
    ra, rb = len(shapes.get(a.name, ())), len(shapes.get(b.name, ()))
    if node.op == "Gemm":
        return [(a, 0 if node.attrs.get("transA", 0) else 1), (b, 1 if node.attrs.get("transB", 0) else 0)]
    return [(a, ra - 1), (b, max(rb - 2, 0))]


def _summarise_frozen(analysis) -> tuple[int, int, dict[str, int]]:
    ops: Counter = Counter()
    for group in analysis.frozen:
        for reason in group.reasons:
            ops[reason] += group.channels
    return len(analysis.frozen), sum(g.channels for g in analysis.frozen), dict(ops.most_common())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _outside_checks(record: Record, proto, pruned, analysis, kept: dict) -> None:
    """Run the pruned model in a fresh onnxruntime session at batch 1 and 2, compare output
    shapes with the dense model's, and compare with the masked dense model where that applies
    (``proto``: the dense model without its weights)."""
    import numpy as np
    import onnx_graphsurgeon as gs
    from masking import masked_graph

    from onnxprune.graph.capture import input_feed
    from onnxprune.graph.verify import run

    feed = input_feed(gs.import_onnx(proto), seed=3)
    outputs = [t.name for t in analysis.graph.outputs]
    try:
        got = run(pruned, feed)
        got2 = None if record.static_batch else run(pruned, {k: np.concatenate([v, v]) for k, v in feed.items()})
    except Exception as exc:  # noqa: BLE001 - the record says what went wrong
        record.ort_runs, record.error = False, f"onnxruntime: {_first_line(exc)}"
        return
    record.ort_runs = True
    want = {name: analysis.capture.shapes.get(name) for name in outputs}
    record.shapes_kept = all(got[name].shape == want[name] for name in outputs) and (
        got2 is None or all(got2[name].shape == (2 * want[name][0], *want[name][1:]) for name in outputs))
    record.mask_blockers = mask_blockers(analysis, kept)
    if record.mask_blockers:
        return
    from onnxprune.graph.sessions import graph_session

    graph = masked_graph(analysis, kept)  # the removed channels zeroed; the other weights are the analysis's own
    names = [t.name for t in graph.outputs]
    masked = dict(zip(names, graph_session(graph).run(names, feed), strict=True))
    delta = 0.0
    for name in outputs:
        scale = float(np.abs(masked[name]).max()) + 1e-6
        delta = max(delta, float(np.abs(got[name] - masked[name]).max()) / scale)
    record.mask_delta = delta


def _judge(record: Record) -> str:
    if not record.pruned:
        return "unreachable" if "unreachable" in record.error else "fail"
    reached = record.flops_ratio is not None and (
        record.target * (1 - FLOPS_TOLERANCE) <= record.flops_ratio <= record.target + 1e-9)
    mask_ok = record.mask_delta is None or record.mask_delta <= MASK_TOLERANCE
    if not reached and not record.error:
        record.error = f"FLOPs {record.flops_ratio:.4f} not within 2% below {record.target:g}"
    if not mask_ok and not record.error:
        record.error = f"differs from the masked dense model by {record.mask_delta:.2e}"
    return "pass" if reached and record.shapes_kept and record.ort_runs and mask_ok else "fail"


def evaluate(name: str, exporter: str, targets: list[float], cache: Path, size: int | None = None,
             seed: int = 0) -> list[Record]:
    """Export ``name`` with ``exporter`` (cached in ``cache``), prune it at each FLOPs target and
    check each result; one Record per target."""
    return list(evaluate_each(name, exporter, targets, cache, size, seed))


def evaluate_each(name: str, exporter: str, targets: list[float], cache: Path, size: int | None = None,
                  seed: int = 0) -> Iterator[Record]:
    """As :func:`evaluate`, yielding each target's Record as soon as it is known."""
    from onnxprune import api
    from onnxprune.errors import ModelError
    from onnxprune.graph.sessions import return_freed_memory
    from onnxprune.graph.shapes import resolve_input_shapes
    from onnxprune.graph.verify import verify
    from onnxprune.pipeline import analyze_model, costs_of, load_split

    size = size or export_models.default_input_size(name)
    records = [Record(name, exporter, float(t), size) for t in targets]
    start = time.perf_counter()
    _stage("exporting")
    folder = export_dir(name, exporter, cache, size)
    path = export_models.output_path(name, exporter, folder, size)
    # The export runs in a process of its own: what torch keeps after an export (gigabytes for a
    # giant) is then gone before onnxprune starts, as when a user exports first and prunes later.
    # The parent's memory watch counts that process too (it is a child of this one).
    proc = subprocess.run([sys.executable, export_models.__file__, name, "--exporter", exporter, "--out",
                           str(folder), "--seed", str(seed), "--size", str(size)], capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        for r in records:
            r.status, r.error = "export-failed", error
        yield from records
        return
    export_seconds = time.perf_counter() - start
    static = not export_models.has_dynamic_batch(path)
    for r in records:
        r.exported, r.static_batch, r.export_seconds = True, static, export_seconds
    start = time.perf_counter()
    _stage("analysing (load, fold, capture, groups)")
    try:
        proto, weights, _ = load_split(path)  # as onnxprune reads it: the weights once, in the graph
        analysis = analyze_model(proto, None, resolve_input_shapes(proto, None), None, weights)
        del weights
        dense = api.model_costs(analysis)
    except Exception as exc:  # noqa: BLE001 - ModelError or a bug: the record says which
        for r in records:
            r.error = f"analysis: {_first_line(exc)}"
            r.status = _judge(r)
        yield from records
        return
    analysis_seconds = time.perf_counter() - start
    frozen = _summarise_frozen(analysis)
    outputs = [t.name for t in analysis.graph.outputs]
    for r in records:
        r.frozen_groups, r.frozen_channels, r.frozen_ops = frozen
        start = time.perf_counter()
        _stage(f"pruning to --flops {r.target:g}")
        try:
            plan = api.make_plan(analysis, flops=r.target)
            pruned, kept = api.apply(analysis, plan, proto)
            return_freed_memory()  # the rewritten graph (its weights are in ``pruned`` now), as onnxprune.prune does
            graph, cap = verify(pruned, analysis.capture, outputs)
            costs = costs_of(graph, cap)  # as onnxprune.sweep measures a verified model
            del graph
            return_freed_memory()
        except ModelError as exc:
            r.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in onnxprune: recorded, not raised
            r.error = f"crash: {_first_line(exc)}"
        else:
            r.pruned = True
            r.seconds = analysis_seconds + time.perf_counter() - start
            r.flops_ratio = costs.flops / dense.flops if dense.flops else 1.0
            r.params_ratio = costs.params / dense.params if dense.params else 1.0
            _outside_checks(r, proto, pruned, analysis, kept)
        pruned = None
        return_freed_memory()  # this target's copies go before the next target's
        r.status = _judge(r)
        yield r




STAGE = "zoo stage: "


def _stage(what: str) -> None:
    """Say on stdout (the child's log) what the child does now, so a kill can say where it struck."""
    print(STAGE + what, flush=True)


def _last_stage(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.startswith(STAGE)]
    return lines[-1][len(STAGE):] if lines else "starting"


def _append(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for r in records:
            fh.write(json.dumps(asdict(r)) + "\n")


def export_dir(name: str, exporter: str, cache: Path, size: int) -> Path:
    """A folder per export: over 2 GB the legacy exporter writes one external file per tensor."""
    return Path(cache) / export_models.output_path(name, exporter, Path(), size).stem


def _remove_export(name: str, exporter: str, cache: Path, size: int) -> None:
    shutil.rmtree(export_dir(name, exporter, cache, size), ignore_errors=True)


def run_one(args: argparse.Namespace) -> int:
    """The child: evaluate one (model, exporter), appending each target's record to the JSONL file."""
    for record in evaluate_each(args.one, args.exporter, args.flops, args.cache, args.size):
        _append(args.jsonl, [record])  # at once: a later kill loses only the targets not yet done
    if not args.keep_exports:
        _remove_export(args.one, args.exporter, args.cache, record.size)
    return 0


# --- the parent: one subprocess per (model, exporter) ----------------------------------------------

def read_records(paths: list[Path]) -> list[Record]:
    """Records of JSONL files; a later record of the same case replaces an earlier one."""
    cases: dict[tuple, Record] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if line.strip():
                r = Record(**json.loads(line))
                cases[(r.model, r.exporter, r.target)] = r
    return list(cases.values())


def _rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (the child's export process included)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _rss_bytes(int(child))
    except OSError:
        pass
    return total


def _run_child(cmd: list[str], log_path: Path, timeout: float, mem_limit: float) -> str:
    """Run the child; '' when it exited 0, else why it did not."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        start = time.monotonic()
        why, peak = "", 0
        while proc.poll() is None:
            rss = _rss_bytes(proc.pid)
            peak = max(peak, rss)
            if time.monotonic() - start > timeout:
                why = f"timeout after {timeout:.0f} s"
            elif rss > mem_limit:
                why = f"killed at {mem_limit / 2**30:.0f} GiB resident memory"
            if why:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return why
            time.sleep(0.5)
    log.warning("peak resident memory %.1f GiB", peak / 2**30)
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode} (SIGKILL: the kernel's out-of-memory killer)" if (
            proc.returncode == -signal.SIGKILL) else f"killed by signal {-proc.returncode}"
    if proc.returncode:
        tail = [line for line in log_path.read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith(STAGE)]
        return f"crashed (exit {proc.returncode}): {tail[-1][:200] if tail else 'no output'}"
    return ""


def run_all(args: argparse.Namespace) -> list[Record]:
    """The parent: one child per (model, exporter) not yet done; a record for every target a child left out."""
    models, giants = expand_models(args.models, args.include_giants)
    if giants:
        log.warning("giants left out (use --include-giants): %s", ", ".join(giants))
    done = {(r.model, r.exporter, r.target) for r in read_records([args.jsonl])} if args.resume else set()
    for name in models:
        for exporter in args.exporters:
            todo = [t for t in args.flops if (name, exporter, float(t)) not in done]
            if not todo:
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--exporter", exporter,
                   "--jsonl", str(args.jsonl), "--cache", str(args.cache), "--flops", *map(str, todo)]
            if args.keep_exports:
                cmd.append("--keep-exports")
            if args.size:
                cmd += ["--size", str(args.size)]
            log.warning("%s (%s) ...", name, exporter)
            started = time.monotonic()
            log_path = args.logs / f"{name.replace('/', '-')}_{exporter}.log"
            why = _run_child(cmd, log_path, args.timeout, args.mem_limit_gb * 2**30)
            written = {(r.model, r.exporter, r.target) for r in read_records([args.jsonl])}
            missing = [t for t in todo if (name, exporter, float(t)) not in written]
            if missing:
                size = args.size or export_models.default_input_size(name)
                folder = export_dir(name, exporter, args.cache, size)
                exported = export_models.output_path(name, exporter, folder, size).exists()
                error = f"{why or 'no record written'}, while {_last_stage(log_path)}"
                _append(args.jsonl, [Record(name, exporter, float(t), size, exported=exported, error=error)
                                     for t in missing])
                if not args.keep_exports:
                    _remove_export(name, exporter, args.cache, size)
            log.warning("%s (%s): %.0f s %s", name, exporter, time.monotonic() - started, why)
    return read_records([args.jsonl])


# --- the table ---------------------------------------------------------------------------------------

def _yes(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


BOUNDARY = {"graph input": "in", "graph output": "out"}


def _frozen_text(r: Record) -> str:
    """'groups / channels: op channels, ...'; the graph's input and output channels show as in/out."""
    if not r.frozen_channels:
        return ""
    ops = ", ".join(f"{BOUNDARY.get(op, op)} {n}" for op, n in list(r.frozen_ops.items())[:5])
    return f"{r.frozen_groups} / {r.frozen_channels}: {ops}"


def _mask_text(r: Record) -> str:
    if r.mask_delta is not None:
        return f"{r.mask_delta:.1e}"
    return f"n/a ({', '.join(r.mask_blockers[:2])})" if r.mask_blockers else ""


def table_rows(records: list[Record]) -> list[list[str]]:
    """One row per case, in the order the cases ran."""
    rows = []
    for r in records:
        rows.append([r.model, r.exporter + (" (static batch)" if r.static_batch else ""), f"{r.target:g}",
                     f"{r.size}", r.status.upper() if r.status != "pass" else "pass", _yes(r.exported),
                     _yes(r.pruned), "" if r.flops_ratio is None else f"{r.flops_ratio:.3f}", _yes(r.shapes_kept),
                     _yes(r.ort_runs), _mask_text(r), "" if r.seconds is None else f"{r.seconds:.1f}",
                     _frozen_text(r), r.error.replace("|", "/")[:160]])
    return rows


COLUMN_NAMES = ["model", "exporter", "target", "input", "status", "exported", "pruned", "FLOPs reached",
                "shapes kept", "ort runs", "mask Δ", "seconds", "frozen groups / channels: ops", "error"]


def summary(records: list[Record]) -> dict[str, int]:
    """Counts over cases (model x exporter x target)."""
    count = Counter(r.status for r in records)
    exported = sum(r.exported for r in records)
    return {"cases": len(records), "exported": exported, "pass": count["pass"],
            "unreachable": count["unreachable"], "fail": count["fail"], "export-failed": count["export-failed"],
            "models": len({r.model for r in records}),
            "models all pass": len({r.model for r in records} - {r.model for r in records
                                                                   if r.status not in ("pass", "unreachable")})}


def summary_line(records: list[Record]) -> str:
    """The counts in one sentence: passes over exported cases with a reachable target."""
    s = summary(records)
    reachable = s["exported"] - s["unreachable"]
    return (f"{s['pass']}/{reachable} exported cases with a reachable target pass "
            f"({s['cases']} cases = {s['models']} models x exporters x targets; {s['exported']} exported, "
            f"{s['export-failed']} export failures, {s['unreachable']} unreachable targets, {s['fail']} failures; "
            f"{s['models all pass']}/{s['models']} models pass or are unreachable in every case)")


def _source(name: str) -> str:
    if name.startswith(export_models.TIMM_PREFIX):
        return "timm"
    return "torchvision giants (--include-giants)" if is_giant(name) else "torchvision"


def source_lines(records: list[Record]) -> list[str]:
    """One summary line per source (torchvision, its giants, timm), where there is more than one."""
    by_source: dict[str, list[Record]] = {}
    for r in records:
        by_source.setdefault(_source(r.model), []).append(r)
    if len(by_source) < 2:
        return []
    order = ["torchvision", "torchvision giants (--include-giants)", "timm"]
    return [f"{source}: {summary_line(by_source[source])}" for source in order if source in by_source]


def print_table(records: list[Record], title: str) -> None:
    """The table with rich (220 columns wide when not on a terminal), then the summary lines."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name in COLUMN_NAMES:
        table.add_column(name, overflow="fold")
    for row in table_rows(records):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=220)
    console.print(table)
    for line in [summary_line(records), *source_lines(records)]:
        console.print(line)


LEGEND = """Made by `python tools/zoo.py` (see its docstring). Random weights, input at the model's own size
(torchvision: the crop size of its default weights, ViTs 224; timm: its pretrained config), dynamic batch.
One row per model, exporter and FLOPs target. **pass**: pruned, FLOPs reached within 2% below the target,
outputs' shapes kept at batch 1 and 2, a fresh onnxruntime session runs it, and the pruned model equals the
dense model with the removed channels zeroed at their consumers (*mask Δ*: max abs difference relative to the largest
output, tolerance 2e-4). Mask equivalence does not apply (*n/a*, with the ops) where a pruned axis is
normalised, reduced or contracted between two activations (LayerNorm, GroupNorm exported as
InstanceNormalization, Softmax, ReduceMean, MatMul of two activations). *seconds*: one analysis (load, fold,
capture, groups) plus select, rewrite and verify for the target; exports not counted. *frozen*: groups and
channels that cannot be removed, by the op that froze them (*in*/*out*: the graph's input and output).
**UNREACHABLE**: the frozen share leaves the target out of reach; the error names the ops."""


def write_markdown(records: list[Record], path: Path, title: str, giants: list[str]) -> None:
    """Summary lines, legend, giants left out and the table as markdown, written atomically."""
    lines = [f"# {title}", "", f"All: {summary_line(records)}.", ""]
    lines += [f"- {line}." for line in source_lines(records)] + ["", LEGEND, ""]
    if giants:
        lines += [f"Left out (giants, `--include-giants`): {', '.join(giants)}.", ""]
    lines += ["| " + " | ".join(COLUMN_NAMES) + " |", "|" + "---|" * len(COLUMN_NAMES)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the zoo (or one child with --one), or only render --table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["torchvision"],
                        help="model names, timm/NAME, or the lists 'torchvision' and 'timm'")
    parser.add_argument("--exporters", nargs="+", choices=export_models.EXPORTERS,
                        default=list(export_models.EXPORTERS))
    parser.add_argument("--flops", nargs="+", type=float, default=list(TARGETS))
    parser.add_argument("--size", type=int, default=None, help="square input size (default: the model's own)")
    parser.add_argument("--jsonl", type=Path, default=Path("/tmp/zoo/zoo.jsonl"))
    parser.add_argument("--resume", action="store_true", help="skip cases already in --jsonl")
    parser.add_argument("--include-giants", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model and exporter")
    parser.add_argument("--mem-limit-gb", type=float, default=19.0,
                        help="kill a child above this resident memory (efficientnet_b6 at 528 px peaks at 18 GiB)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "zoo", help="where exports go")
    parser.add_argument("--keep-exports", action="store_true", help="keep exported models (default: delete)")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/zoo/logs"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown")
    parser.add_argument("--table", nargs="+", type=Path, default=None, metavar="JSONL",
                        help="only print (and --markdown) the table of these JSONL files")
    parser.add_argument("--title", default="onnxprune model zoo")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--exporter", choices=export_models.EXPORTERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.one:
        return run_one(args)
    giants: list[str] = []
    if args.table:
        records = read_records(args.table)
        giants = [n for n in torchvision_models() if is_giant(n) and n not in {r.model for r in records}]
    else:
        records = run_all(args)
        giants = expand_models(args.models, args.include_giants)[1]
    print_table(records, args.title)
    if args.markdown:
        write_markdown(records, args.markdown, args.title, giants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
