"""The real command on bad options: one ``onnxprune: error:`` line on stderr, the documented exit
code (2 usage problem, 1 model problem), no traceback, the input untouched and nothing left in
the output folder. Plus one successful prune, ``analyze`` and ``--debug``. Broken and hostile
model files are the corpus of tests/test_hostile.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import (
    USAGE,
    assert_one_line_error,
    cli,
    feed_of,
    save_external,
    small_model,
    snapshot,
    wide_model,
)

from onnxprune.graph.verify import run


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.onnx"
    onnx.save(small_model(), str(path))
    return path


# Each case: files to create in an empty folder, then the arguments; run in that folder.
def _write_small(d: Path) -> None:
    onnx.save(small_model(), str(d / "small.onnx"))


def _existing_output(d: Path) -> None:
    _write_small(d)
    (d / "out.onnx").write_bytes(b"precious")


CASES = {
    "flops 0": (_write_small, ["small.onnx", "--flops", "0"], USAGE, "--flops"),
    "flops 1.5": (_write_small, ["small.onnx", "--flops", "1.5"], USAGE, "--flops"),
    "flops abc": (_write_small, ["small.onnx", "--flops", "abc"], USAGE, "abc"),
    "flops nan": (_write_small, ["small.onnx", "--flops", "nan"], USAGE, "--flops"),
    "params -0.5": (_write_small, ["small.onnx", "--params=-0.5"], USAGE, "--params"),
    "flops and params": (_write_small, ["small.onnx", "--flops", "0.5", "--params", "0.5"], USAGE, "not both"),
    "no target": (_write_small, ["small.onnx"], USAGE, "give a target"),
    "no model": (lambda d: None, ["--flops", "0.5"], USAGE, "model"),
    "unknown option": (_write_small, ["small.onnx", "--flops", "0.5", "--bogus"], USAGE, "--bogus"),
    "existing output": (_existing_output, ["small.onnx", "--flops", "0.5", "-o", "out.onnx"], USAGE, "--force"),
    "output folder missing": (_write_small, ["small.onnx", "--flops", "0.5", "-o", "nowhere/out.onnx"], USAGE,
                              "nowhere"),
    "round-to 0": (_write_small, ["small.onnx", "--flops", "0.5", "--round-to", "0"], USAGE, "round-to"),
    "analyze no model": (lambda d: None, ["analyze"], USAGE, "model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_no_trace(case: str, tmp_path: Path):
    setup, args, code, needle = CASES[case]
    setup(tmp_path)
    before = snapshot(tmp_path)
    proc = cli(*args, cwd=tmp_path)
    line = assert_one_line_error(proc, code)
    assert needle in line, line
    assert snapshot(tmp_path) == before, "the input must not change and nothing may be written"


def test_success_writes_a_model_that_runs_and_a_report(small: Path, tmp_path: Path):
    digest = hashlib.sha256(small.read_bytes()).hexdigest()
    out, report = tmp_path / "out" / "pruned.onnx", tmp_path / "r.json"
    out.parent.mkdir()
    proc = cli(small, "--flops", "0.5", "-o", out, "--report", report, "--no-latency", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert hashlib.sha256(small.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx"], "no temp file left behind"

    dense, pruned = onnx.load(str(small)), onnx.load(str(out))
    onnx.checker.check_model(pruned)
    feed = feed_of(dense)
    got, want = run(pruned, feed), run(dense, feed)
    assert got["y"].shape == want["y"].shape == (1, 10)

    data = json.loads(report.read_text())
    assert data["flops"]["ratio"] <= 0.5 + 1e-9
    plan = data["plan"]
    assert plan and isinstance(plan, dict)
    inits = {t.name: t for t in pruned.graph.initializer}
    dense_inits = {t.name: t for t in dense.graph.initializer}
    for name, axes in plan.items():
        assert name in dense_inits and name in inits
        for axis, kept in axes.items():
            axis = int(axis)
            assert all(isinstance(i, int) for i in kept)
            assert kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < dense_inits[name].dims[axis]
            assert inits[name].dims[axis] == len(kept)
    assert set(plan["c1.w"]) == {"0"} and plan["c2.w"]["1"] == plan["c1.w"]["0"]


def test_default_output_name_and_force(small: Path, tmp_path: Path):
    proc = cli(small.name, "--flops", "0.6", "-q", "--no-latency", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "", "--quiet prints nothing"
    out = tmp_path / "small.pruned.onnx"
    first = out.read_bytes()
    onnx.checker.check_model(onnx.load(str(out)))
    again = cli(small.name, "--flops", "0.4", "-q", "--no-latency", cwd=tmp_path)
    assert_one_line_error(again, USAGE)
    assert out.read_bytes() == first
    forced = cli(small.name, "--flops", "0.4", "-q", "--no-latency", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx", "small.pruned.onnx"]


def test_analyze_prints_the_groups(small: Path, tmp_path: Path):
    before = snapshot(tmp_path)
    proc = cli("analyze", small, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "2 prunable groups" in proc.stdout
    assert "c1.w[0]" in proc.stdout or "c1[1]" in proc.stdout or "c1.b[0]" in proc.stdout
    assert "frozen" in proc.stdout
    assert snapshot(tmp_path) == before, "analyze writes nothing without --json"
    js = tmp_path / "a.json"
    proc = cli("analyze", small, "--json", js, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(js.read_text())
    assert [g["channels"] for g in data["groups"]] == [8, 6]
    assert any("c1.w[0]" in g["members"] for g in data["groups"])


def test_debug_shows_the_traceback(tmp_path: Path):
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    proc = cli("random.onnx", "--flops", "0.5", "--debug", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ModelError" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.onnx"]


def test_external_data_model_keeps_external_data(tmp_path: Path):
    save_external(wide_model(), tmp_path / "wide.onnx")
    before = snapshot(tmp_path)
    proc = cli("wide.onnx", "--flops", "0.5", "-q", "--no-latency", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before, "the input and its data file must not change"
    assert sorted(set(after) - set(before)) == ["wide.pruned.onnx", "wide.pruned.onnx.data"]
    pruned = onnx.load(str(tmp_path / "wide.pruned.onnx"))  # loads the weights from wide.pruned.onnx.data
    onnx.checker.check_model(pruned)
    assert run(pruned, feed_of(wide_model()))["y"].shape == (1, 10)
    assert (tmp_path / "wide.pruned.onnx.data").stat().st_size < (tmp_path / "wide.onnx.data").stat().st_size


# --- regressions: bugs found while writing these tests ------------------------------------------


def test_report_path_equal_to_input_is_refused(small: Path, tmp_path: Path):
    before = small.read_bytes()
    proc = cli(small, "--flops", "0.5", "-o", tmp_path / "out.onnx", "--report", small, "-q", "--no-latency",
               cwd=tmp_path)
    assert small.read_bytes() == before
    assert_one_line_error(proc, USAGE)


def test_analyze_json_path_equal_to_input_is_refused(small: Path, tmp_path: Path):
    before = small.read_bytes()
    proc = cli("analyze", small, "--json", small, cwd=tmp_path)
    assert small.read_bytes() == before
    assert_one_line_error(proc, USAGE)


def test_report_folder_missing_is_a_usage_error_and_writes_nothing(small: Path, tmp_path: Path):
    before = snapshot(tmp_path)
    proc = cli(small, "--flops", "0.5", "-o", "out.onnx", "--report", "nowhere/r.json", "--no-latency",
               cwd=tmp_path)
    assert snapshot(tmp_path) == before
    assert_one_line_error(proc, USAGE)


def test_output_is_a_directory(small: Path, tmp_path: Path):
    (tmp_path / "outdir").mkdir()
    before = snapshot(tmp_path)
    proc = cli(small, "--flops", "0.5", "-o", "outdir", "--force", "--no-latency", cwd=tmp_path)
    assert snapshot(tmp_path) == before
    assert_one_line_error(proc, USAGE)


def test_force_over_an_external_data_output(tmp_path: Path):
    save_external(wide_model(), tmp_path / "wide.onnx")
    first = cli("wide.onnx", "--flops", "0.5", "-q", "--no-latency", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli("wide.onnx", "--flops", "0.4", "-q", "--no-latency", "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    pruned = onnx.load(str(tmp_path / "wide.pruned.onnx"))
    assert run(pruned, feed_of(wide_model()))["y"].shape == (1, 10)


def test_external_data_model_whose_pruned_weights_are_small(tmp_path: Path):
    save_external(small_model(), tmp_path / "ext.onnx")
    proc = cli("ext.onnx", "--flops", "0.5", "-o", "out.onnx", "-q", "--no-latency", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pruned = onnx.load(str(tmp_path / "out.onnx"))
    assert run(pruned, feed_of(small_model()))["y"].shape == (1, 10)
