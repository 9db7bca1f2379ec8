"""The package's shape: no import cycles, no module reaching into another's private names, one
definition of every option shared by the CLI and the API, and criteria as a registry."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import Net, analysis_of, feed_of, frozen_slots, grouped_slots, ort_run, shape_lookup

import onnxprune
from onnxprune import cli, ops, options
from onnxprune.calib.torchgraph import TorchGraph, unsupported
from onnxprune.ops.tying import same_shape_ties
from onnxprune.ranking import criteria
from onnxprune.ranking.cost import flops_terms
from onnxprune.structure.slots import Slot
from onnxprune.sweep import OPTION_CLASSES as SWEEP_CLASSES
from onnxprune.sweep import SOLVER as SWEEP_SOLVER

PACKAGE = Path(onnxprune.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> dict[str, set[tuple[str, str | None]]]:
    """module -> {(imported module, imported name or None)} for every import of the package's own
    modules, wherever it sits (top level, inside functions, under TYPE_CHECKING)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, set[tuple[str, str | None]]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = _resolve(module, node, is_package)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found[module].add((sub, None) if sub in modules else (target, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("onnxprune"):
                        found[module].add((alias.name, None))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """Modules import each other in one direction only (the package __init__, which loads public
    names lazily, and __main__ are the entry points and not counted)."""
    entry = {"onnxprune", "onnxprune.__main__"}
    edges = {m: {t for t, _ in deps if t != m and t not in entry and t.startswith("onnxprune")}
             for m, deps in _imports().items() if m not in entry}
    assert _cycles(edges) == []


# Subpackages in dependency order: each may import those before it (and the base modules), never after.
LAYERS = ["ops", "graph", "structure", "calib", "deploy", "ranking", "report"]
BASE = {"onnxprune.errors", "onnxprune.progress", "onnxprune.outputs", "onnxprune.options", "onnxprune.results",
        "onnxprune"}  # leaf modules every layer may use (the package itself: __version__)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_subpackages_depend_downwards():
    """ops <- graph <- structure <- calib <- deploy <- ranking <- report <- api/pipeline/cli: a subpackage
    imports only earlier ones and the base modules (errors, progress, outputs, options, results), so
    the map in the README is the architecture."""
    wrong = []
    for module, deps in _imports().items():
        layer = _layer(module)
        if layer is None:
            continue
        for target, _ in deps:
            other = _layer(target)
            if other is None and target not in BASE and not target.startswith(f"onnxprune.{layer}"):
                wrong.append((module, target))
            elif other is not None and LAYERS.index(other) > LAYERS.index(layer):
                wrong.append((module, target))
    assert wrong == []


def test_ops_depends_on_nothing_but_errors():
    """What an op is comes first: ``onnxprune.ops`` imports nothing else of the package but ``errors``,
    so every stage may ask it."""
    wrong = [(m, t) for m, deps in _imports().items() if m.startswith("onnxprune.ops")
             for t, _ in deps if not t.startswith("onnxprune.ops") and t != "onnxprune.errors"]
    assert wrong == []


def _op_name_literals() -> dict[str, int]:
    """String constants that are ONNX op names, per module, outside docstrings."""
    import onnx.defs

    names = {schema.name for schema in onnx.defs.get_all_schemas_with_history()}
    counts: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        count = sum(1 for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value in names and id(node) not in docstrings)
        if count:
            counts[_module_name(path)] = count
    return counts


def test_op_knowledge_lives_in_ops():
    """At most 15% of the op-name string literals in the package stand outside ``onnxprune.ops``
    (issue 19's bar): a new op is taught in one place."""
    counts = _op_name_literals()
    outside = {m: n for m, n in counts.items() if not m.startswith("onnxprune.ops")}
    assert sum(counts.values()) > 200  # the count reads real rules
    assert sum(outside.values()) <= 0.15 * sum(counts.values()), outside


def test_no_private_names_across_modules():
    """``from .x import _name`` and ``x._name`` from another module: each module's private names are its own."""
    used = [(m, t, n) for m, deps in _imports().items() for t, n in deps
            if n is not None and n.startswith("_") and not n.startswith("__")]
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        imported = {a.asname or a.name for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.level for a in node.names}
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                used.append((module, node.value.id, node.attr))
    assert used == []


def test_tests_share_builders_through_helpers_only():
    """No test file imports another test file: shared builders live in tests/helpers.py."""
    tests = Path(__file__).parent
    own = {p.stem for p in tests.glob("test_*.py")}
    wrong = []
    for path in tests.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            wrong += [(path.name, n) for n in names if n.split(".")[-1] in own]
    assert wrong == []


def _fields(classes, only=None):
    return [f for cls in classes for f in dataclasses.fields(cls)
            if only is None or cls is not options.SolverOptions or f.name in only]


def _actions(parser) -> dict[str, object]:
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize("command", ["prune", "sweep"])
def test_cli_and_api_share_every_option(command):
    """Each option field is a keyword of the API function, with the same default, and (unless it
    is API-only) a CLI flag whose dest, default and choices are the field's."""
    if command == "prune":
        fn, classes, only, parser = onnxprune.prune, options.OPTION_CLASSES, None, cli._prune_parser()
    else:
        fn, classes, only, parser = onnxprune.sweep, SWEEP_CLASSES, SWEEP_SOLVER, cli._sweep_parser()
    params = inspect.signature(fn).parameters
    actions = _actions(parser)
    fields = _fields(classes, only)
    assert fields
    for f in fields:
        assert f.name in params and params[f.name].default == f.default, f.name
        if not f.metadata["cli"]:
            continue
        action = actions.get(f.name)
        assert action is not None, f"{f.metadata['flag']} missing from the {command} parser"
        assert f.metadata["flag"] in action.option_strings
        assert action.default == f.default, f.name
        if f.metadata["choices"] is not None:
            assert list(action.choices) == list(f.metadata["choices"]()), f.name
    # and nothing else: every API keyword is an option, a target list or a documented extra
    extra = {"model", "progress"} | ({"flops", "params", "bench", "bench_runs", "keep_models"}
                                     if command == "sweep" else set())
    assert set(params) - extra == {f.name for f in fields}


def test_cli_defaults_are_the_api_defaults():
    """Parsing nothing but a model gives exactly the API's defaults for every option."""
    args = cli._prune_parser().parse_args(["m.onnx"])
    parsed = options.values(args, *options.OPTION_CLASSES)
    expected = {f.name: f.default for f in _fields(options.OPTION_CLASSES) if f.metadata["cli"]}
    assert parsed == expected


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'flop'"):
        onnxprune.prune("unused.onnx", flop=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'pattern'"):
        onnxprune.sweep("unused.onnx", flops=[0.5], pattern="2:4")


@pytest.fixture
def toy_criterion(monkeypatch):
    """A criterion registered by a test: ranks channels by their index (the last ones are kept)."""
    calls = []

    def by_index(analysis, samples):
        calls.append(samples)
        return [np.arange(g.size, dtype=float) for g in analysis.groups]

    monkeypatch.setitem(criteria.CRITERIA, "toy", criteria.Criterion("toy", by_index, needs_data=False))
    return calls


def test_a_new_criterion_is_one_registration(toy_criterion, export, tmp_path):
    """Registering a criterion makes it valid in the API and on the command line; it decides which
    channels go: with scores rising with the index, the first channels of every group are removed."""
    path = export("resnet18", "legacy")
    result = onnxprune.prune(path, flops=0.6, criterion="toy", round_to=1)
    assert toy_criterion == [None]
    outs = [axes[0] for axes in result.plan.values() if 0 in axes]
    assert outs and all(kept == list(range(kept[0], kept[0] + len(kept))) for kept in outs)  # suffixes
    assert any(kept[0] > 0 for kept in outs)
    out = tmp_path / "toy.onnx"
    assert cli.main([str(path), "--flops", "0.6", "--criterion", "toy", "-o", str(out), "-q"]) == 0
    assert out.exists() and len(toy_criterion) == 2


TOY_OP = "Atan"  # an op onnxruntime runs and onnxprune has no spec for


def _toy_network() -> onnx.ModelProto:
    """Conv -> Atan -> Conv -> Relu -> head: the 16 channels between the convolutions pass Atan."""
    net = Net(channels=4)
    h = net.node(TOY_OP, [net.conv("x", 4, 16, 3, name="c1")], out="atan")
    h = net.relu(net.conv(h, 16, 8, 1, name="c2"))
    net.head(h, 8)
    return net.model()


@pytest.fixture
def toy_op():
    """Teaches onnxprune the toy op in one registration when called; forgets it after the test."""
    assert ops.spec(TOY_OP) is ops.UNKNOWN, f"onnxprune knows {TOY_OP} now: pick another toy op"

    def register() -> None:
        ops.register(
            TOY_OP, one_to_one=True, ties=same_shape_ties,
            flops=lambda node, shape: (float(np.prod(shape(node.outputs[0]))), [(node.outputs[0].name, 1)]),
            torch=lambda xs, attrs, ctx: [xs[0].atan()])

    yield register
    ops.unregister(TOY_OP)


def test_a_new_op_is_one_registration(toy_op):
    """Registering an op the package does not know gives it channel ties, FLOPs and a PyTorch kernel
    at once: the channels it froze become prunable, its FLOPs count, and the interpreter runs it."""
    model = _toy_network()
    through = Slot("c1", 1)
    before = analysis_of(model)
    assert through in frozen_slots(before) and before.no_rule_ops == {TOY_OP: 1}
    assert unsupported(model) == [TOY_OP]

    toy_op()
    after = analysis_of(model)
    assert through in grouped_slots(after) and after.no_rule_ops == {}
    atan = next(n for n in after.graph.nodes if n.op == TOY_OP)
    terms = {t.name: t for t in flops_terms(after.graph, shape_lookup(after))}
    assert terms[atan.name].dense == 16 * 8 * 8 and terms[atan.name].slots == [Slot("atan", 1)]
    assert unsupported(model) == []

    result = onnxprune.prune(model, flops=0.6, round_to=1)  # verified in onnxruntime
    torch = pytest.importorskip("torch", reason="the interpreter runs in PyTorch (pip install torch)")
    assert 0 < len(result.plan["c1.w"][0]) < 16
    feed = feed_of(result.model)
    graph = TorchGraph(result.model)
    got = graph({k: torch.from_numpy(v) for k, v in feed.items()})[0].detach().numpy()
    np.testing.assert_allclose(got, ort_run(result.model, feed)[0], rtol=1e-4, atol=1e-5)
