"""Every TensorRT name onnxprune/gpu.py uses exists in TensorRT's real Python bindings: 8.6, 10.x
and 11.x, checked on a machine without a GPU or TensorRT's libraries.

The bindings wheels (``tensorrt-bindings`` 8.6, ``tensorrt-cu12-bindings`` 10.x,
``tensorrt-cu13-bindings`` 11.x) install from PyPI without libnvinfer, so they cannot be imported
here; but the names pybind11 registers (classes, methods, properties, enum members) are
NUL-terminated C strings in the extension module, and ``__init__.py`` adds a few in Python
(``__version__``, ``nptype``). The wheels (about 1 to 1.4 MB each) are downloaded once with
``pip download`` into ``.cache/trt-wheels`` (ignored by git; a cached wheel is used as it is) and
the test skips, saying why, when none can be had (offline).

What gpu.py uses is found by parsing it: every attribute chain on the ``trt`` module object
(``trt.BuilderFlag.SPARSE_WEIGHTS``, ``getattr(trt.MemoryPoolType, pool)``), and every attribute
of an object that comes from it (``builder = trt.Builder(...)`` makes ``builder.create_network``
a name to check). Names picked at run time or per TensorRT major (``getattr(trt.BuilderFlag,
name)`` with FP16 only before 11; EXPLICIT_BATCH only before 10) are taken from running
gpu.py's own ``_network_flags`` and ``_configure`` against a recording stand-in of the module
for each major, over every builder setting ``builder_settings`` can produce; the test checks
that this recording covers every chain the parse found in those functions.

A name can only be checked as present somewhere in the module, not as a member of the right
class; and the linker merges a string into the tail of a longer one ("INPUT" lives inside
"ATTENTION_INPUT"), so a name found only as such a tail counts as present. A missing name is
certain; a present one is likely.
"""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest

from onnxprune.deploy import gpu
from onnxprune.deploy.gpu import STRONGLY_TYPED_MAJOR, EngineOptions, builder_settings
from onnxprune.graph.shapes import InputSpec

ROOT = Path(__file__).resolve().parents[1]
WHEEL_CACHE = ROOT / ".cache" / "trt-wheels"
GPU_PY = ROOT / "onnxprune" / "deploy" / "gpu.py"

# major -> the bindings wheel that carries it (the `tensorrt` metapackage's own bindings package).
WHEELS = {8: "tensorrt-bindings==8.6.*", 10: "tensorrt-cu12-bindings==10.*", 11: "tensorrt-cu13-bindings==11.*"}
# Functions whose names depend on the TensorRT major or are picked at run time: recorded, not parsed.
RECORDED = ("_network_flags", "_configure")
# What the parse cannot see: CapturingLogger overrides ILogger.log, the callback TensorRT calls.
HAND_KEPT = {("ILogger", "log")}
IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
Chain = tuple[str, ...]  # ("BuilderFlag", "FP16"), or ("*", "set_flag") for an attribute of a TensorRT object


# --- the wheels ----------------------------------------------------------------------------------


@cache
def wheel(major: int) -> Path | str:
    """The cached or downloaded bindings wheel of ``major``, or why there is none."""
    folder = WHEEL_CACHE / str(major)
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    # Python 3.11 on Linux x86_64, the project's machines, whatever Python runs the test.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--python-version",
               "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
               "manylinux_2_17_x86_64", "--disable-pip-version-check", "-q", "-d", str(folder), WHEELS[major]]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip download {WHEELS[major]} did not finish: {exc}"
    found = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not found:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        return f"pip download {WHEELS[major]} failed (offline?): {(errors or ['no output'])[-1].strip()}"
    return found[-1]


@cache
def bindings(major: int) -> tuple[str, frozenset[str], frozenset[str], frozenset[str]]:
    """(version, C-string identifiers of tensorrt.so, identifiers __init__.py defines, the
    identifiers' tails) of the ``major`` wheel; skips the test when it cannot be had."""
    path = wheel(major)
    if isinstance(path, str):
        pytest.skip(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        so = next(n for n in names if re.fullmatch(r"tensorrt[^/]*/tensorrt[^/]*\.so", n))
        data = archive.read(so)
        init = archive.read(so.rsplit("/", 1)[0] + "/__init__.py").decode()
    strings = frozenset(s.decode() for s in data.split(b"\0") if IDENT.fullmatch(s))
    tails = frozenset(s[i:] for s in strings for i in range(1, len(s)))
    version, defined = _init_names(init)
    return version, strings, defined, tails


def _init_names(source: str) -> tuple[str, frozenset[str]]:
    """``__version__`` and the names __init__.py defines: functions, classes, assigned names and
    attributes it sets on the extension's classes (``DataType.itemsize = ...``)."""
    version, names = "", set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__version__" and isinstance(node.value, ast.Constant):
                        version = str(node.value.value)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return version, frozenset(names)


def exists(name: str, major: int) -> bool:
    """Whether ``name`` is one of the module's strings (or a tail the linker merged into a longer
    one) or defined by its __init__.py."""
    _, strings, defined, tails = bindings(major)
    return name in strings or name in defined or name in tails


# --- what gpu.py uses ----------------------------------------------------------------------------


def _key(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "self":
        return f"self.{expr.attr}"
    return None


def _chain(expr: ast.expr, tainted: set[str]) -> Chain | None:
    """The attributes from the TensorRT module (``trt``) or a TensorRT object down to ``expr``:
    ("ILogger", "Severity") for ``trt.ILogger.Severity``, ("*", "set_flag") for ``config.set_flag``;
    None when ``expr`` does not come from TensorRT."""
    attrs: list[str] = []
    while True:
        key = _key(expr)
        if key == "trt":
            return tuple(reversed(attrs))
        if key in tainted:
            return ("*", *reversed(attrs))
        if isinstance(expr, ast.Attribute):
            attrs.append(expr.attr)
            expr = expr.value
        elif isinstance(expr, (ast.Call, ast.Subscript)):
            expr = expr.func if isinstance(expr, ast.Call) else expr.value
        else:
            return None


def gpu_py_names(source: str) -> dict[str, set[Chain]]:
    """{top-level function or class: TensorRT chains it uses}; ``getattr(trt.X, name)`` with a name
    known only at run time gives ("X", "?")."""
    tree = ast.parse(source)
    tainted: set[str] = set()
    while True:  # objects that come from TensorRT: assigned from an expression rooted at trt or one of them
        before = len(tainted)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                if _chain(node.value, tainted) is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    tainted.update(k for k in map(_key, targets) if k and k != "trt")
        if len(tainted) == before:
            break
    found: dict[str, set[Chain]] = {}
    for top in tree.body:
        if not isinstance(top, (ast.FunctionDef, ast.ClassDef)):
            continue
        chains = found.setdefault(top.name, set())
        for node in ast.walk(top):
            if isinstance(node, ast.Attribute):
                chain = _chain(node, tainted)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2):
                base = _chain(node.args[0], tainted)
                name = node.args[1]
                chain = None if base is None else (*base, name.value if isinstance(name, ast.Constant) else "?")
            else:
                continue
            chain = tuple(part for part in chain or () if part == "__version__" or not part.startswith("__"))
            if "__version__" in chain:  # a str: what follows is str's (trt.__version__.split)
                chain = chain[:chain.index("__version__") + 1]
            if chain[:1] == ("*",):  # object members, one by one: which class each belongs to is unknown
                chains.update(("*", part) for part in chain[1:])
            elif chain:
                chains.add(chain)
    return {name: chains for name, chains in found.items() if chains}


class Recorder:
    """A stand-in for the tensorrt module and its objects that records every attribute read or
    set (calls return another recorder; ``int()`` of one is 0)."""

    def __init__(self, seen: set[Chain], path: Chain, version: str | None = None) -> None:
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_path", path)
        if version is not None:
            object.__setattr__(self, "__version__", version)

    def __getattr__(self, name: str) -> Recorder:
        if name.startswith("__"):
            raise AttributeError(name)
        self._seen.add((*self._path, name))
        return Recorder(self._seen, (*self._path, name))

    def __setattr__(self, name: str, value: object) -> None:
        self._seen.add((*self._path, name))

    def __call__(self, *args: object, **kwargs: object) -> Recorder:
        return Recorder(self._seen, (*self._path, "()"))

    def __int__(self) -> int:
        return 0


def _all_settings(major: int) -> list[gpu.BuilderSettings]:
    """Every kind of builder settings gpu.py can make for ``major``: each precision, sparse
    choice and 2:4 state, static and dynamic batch."""
    inputs = ([InputSpec("x", (1, 3, 8, 8), None)], [InputSpec("x", ("batch", 3, 8, 8), None)])
    out = []
    for fp16, sparse, carries, spec in itertools.product((True, False), (None, True, False), (True, False), inputs):
        if sparse and not fp16:
            continue  # refused by builder_settings
        out.append(builder_settings(EngineOptions(fp16=fp16, sparse=sparse, batch=1), spec, carries,
                                    tensorrt_major=major))
    return out


def recorded_names(major: int) -> set[Chain]:
    """The chains ``_network_flags`` and ``_configure`` touch on TensorRT ``major``."""
    seen: set[Chain] = set()
    trt = Recorder(seen, ("trt",), version=f"{major}.0.0")
    gpu._network_flags(trt)
    for settings in _all_settings(major):
        gpu._configure(trt, Recorder(seen, ("builder",)), Recorder(seen, ("config",)), settings)
    chains = set()
    for path in seen:
        parts = tuple(p for p in path[1:] if p != "()")
        chains.add(parts if path[0] == "trt" else ("*", parts[-1]))
    return chains


def _covers(pattern: Chain, chains: set[Chain]) -> bool:
    return any(len(c) == len(pattern) and all(p in ("?", q) for p, q in zip(pattern, c, strict=True)) for c in chains)


def names_for(major: int) -> set[Chain]:
    """All chains gpu.py uses on TensorRT ``major``: parsed, plus recorded for RECORDED, plus HAND_KEPT."""
    parsed = gpu_py_names(GPU_PY.read_text())
    chains = set().union(*(c for name, c in parsed.items() if name not in RECORDED))
    return chains | recorded_names(major) | HAND_KEPT


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("major", sorted(WHEELS))
def test_every_tensorrt_name_gpu_py_uses_exists(major: int) -> None:
    version, strings, _, _ = bindings(major)
    assert version.split(".")[0] == str(major), f"{wheel(major)} is TensorRT {version}"
    assert len(strings) > 5000, "the extension module's strings were not read"
    missing = sorted(".".join(chain) + f" ({part} missing)" for chain in names_for(major)
                     for part in chain if part != "*" and not exists(part, major))
    assert not missing, f"TensorRT {version} ({Path(wheel(major)).name}) lacks names gpu.py uses: {missing}"


def test_the_recording_covers_what_the_parse_found() -> None:
    """Each chain the parse found in a recorded function is touched on some TensorRT major, so a
    new name in _network_flags or _configure cannot escape the check."""
    parsed = gpu_py_names(GPU_PY.read_text())
    recorded = set().union(*(recorded_names(major) for major in WHEELS))
    for name in RECORDED:
        # __version__ is the recorder's own (and read by build_engine too, so checked from there)
        missed = [chain for chain in parsed[name] if not _covers(chain, recorded) and chain != ("__version__",)]
        assert not missed, f"{name} uses {missed}, which no recorded run touched; extend _all_settings"
    dynamic = [(name, chain) for name, chains in parsed.items() if name not in RECORDED for chain in chains
               if "?" in chain]
    assert not dynamic, f"getattr with a run-time name outside {RECORDED}: {dynamic}; record that function too"


def test_the_parse_finds_gpu_py_names() -> None:
    """The collector itself: it finds names of each kind in gpu.py, and none from other modules."""
    everything = set().union(*gpu_py_names(GPU_PY.read_text()).values())
    for chain in [("Builder",), ("OnnxParser",), ("Runtime",), ("LayerInformationFormat", "JSON"),
                  ("ILogger", "Severity", "VERBOSE"), ("TensorIOMode", "INPUT"), ("nptype",), ("__version__",),
                  ("BuilderFlag", "?"), ("MemoryPoolType", "?"), ("*", "build_serialized_network"),
                  ("*", "create_builder_config"), ("*", "create_engine_inspector"), ("*", "get_engine_information"),
                  ("*", "execute_async_v3"), ("*", "num_errors"), ("*", "profiling_verbosity"), ("*", "set_shape")]:
        assert chain in everything, chain
    assert not any(part in ("last_errors", "lines", "cuda_stream", "elapsed_time") for c in everything for part in c)


def test_recorded_names_follow_the_major() -> None:
    """FP16 is a builder flag before TensorRT 11 and a float16 model from 11 on; EXPLICIT_BATCH
    is set only before 10."""
    assert STRONGLY_TYPED_MAJOR == 11
    assert ("BuilderFlag", "FP16") in recorded_names(10) and ("BuilderFlag", "FP16") in recorded_names(8)
    assert ("BuilderFlag", "FP16") not in recorded_names(11)
    assert ("BuilderFlag", "SPARSE_WEIGHTS") in recorded_names(11)
    assert ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") in recorded_names(8)
    assert not any("NetworkDefinitionCreationFlag" in c for c in recorded_names(10) | recorded_names(11))


def test_tensorrt_11_has_no_fp16_flag() -> None:
    """What gpu.py's FP16 conversion rests on, read from the wheels: the FP16 and EXPLICIT_BATCH
    names are gone in 11 (no string, no tail), present before; SPARSE_WEIGHTS and STRONGLY_TYPED
    (deprecated, ignored) remain."""
    assert exists("FP16", 10) and exists("EXPLICIT_BATCH", 10)
    assert not exists("FP16", 11) and not exists("EXPLICIT_BATCH", 11)
    assert exists("SPARSE_WEIGHTS", 11) and exists("STRONGLY_TYPED", 11)


def test_made_up_names_are_missing() -> None:
    """The scan is not permissive: names TensorRT never had are not found."""
    for name in ("build_engine_with_magic", "SPARSE_WEIGHTS_V2", "OnnxParserX", "execute_async_v9"):
        assert not exists(name, 11), name
