"""Batch manifests and the done-file (onnxprune/jobs/batch.py): every key and value of a manifest
is checked before any work (one line, exit 2), YAML aliases cannot expand without bound, rows are
keyed on the content of every file a model names and on its calibration data, and a point whose
timing failed is a failed row, never done. Tiny hand-built models, run in this process (jobs=1)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import sweep_model

import onnxprune
from onnxprune import cli
from onnxprune.errors import UsageError
from onnxprune.jobs.batch import MAX_NODES, OPTION_TYPES, batch
from onnxprune.options import SolverOptions, names
from onnxprune.sweep import OPTION_CLASSES, SOLVER


@pytest.fixture
def folder(tmp_path) -> Path:
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "m.yaml"
    path.write_text(text)
    return path


HEAD = "models: [m.onnx]\n"
BAD = {
    "bench as a string": ("flops: [0.5]\nbench: 'false'\n",
                          r"manifest: bench must be true or false \(a YAML boolean, unquoted\), got 'false'"),
    "bench_runs as a word": ("flops: [0.5]\nbench_runs: ten\n", "bench_runs must be a positive integer, got 'ten'"),
    "negative bench_runs": ("flops: [0.5]\nbench: true\nbench_runs: -5\n",
                            "bench_runs must be a positive integer, got -5"),
    "unknown keys": ("flops: [0.5]\nmodel: x\nextra: 1\n", "unknown keys 'extra', 'model'; use bench, "),
    "a target as a string": ("flops: ['0.5']\n", r"flops target must be a fraction in \(0, 1\], got '0.5'"),
    "a target twice": ("flops: [0.5, 0.5]\n", "flops target 0.5 is given twice"),
    "a scalar out of range": ("flops: 1.5\n", r"flops target must be a fraction in \(0, 1\], got 1.5"),
    "targets as a mapping": ("flops: {a: 1}\n", "flops targets must be a list of fractions"),
    "two kinds of target": ("flops: [0.5]\nparams: [0.5]\n", "give one kind of target"),
    "a model entry's unknown key": ("flops: [0.5]\nmodels: [{path: m.onnx, flops: 1}]\n",
                                    r"models\[0\]: unknown key 'flops'"),
    "a boolean option as a string": ("flops: [0.5]\noptions: {reconstruct: 'false'}\n",
                                     r"options\[0\].reconstruct must be true or false"),
    "a bad round_to": ("flops: [0.5]\noptions: {round_to: eight}\n", r"options\[0\]: --round-to must be"),
    "a fractional count": ("flops: [0.5]\noptions: {calib_count: 1.5}\n",
                           r"options\[0\].calib_count must be a positive integer, got 1.5"),
    "an empty option": ("flops: [0.5]\noptions: {calib: null}\n", r"options\[0\].calib is empty"),
    "missing calibration data": ("flops: [0.5]\noptions: {calib: nowhere/}\n", r"options\[0\].calib: .*nowhere"),
    "an unknown preset": ("flops: [0.5]\noptions: {preprocess: nope}\n", "unknown preprocessing preset 'nope'"),
    "a command-line option": ("flops: [0.5]\noptions: {jobs: 2}\n", "jobs is given on the command line"),
    "an unknown option": ("flops: [0.5]\noptions: {flop: 1}\n", r"options\[0\]: unknown option 'flop'"),
    "a dim as a string": ("flops: [0.5]\noptions: {input_shapes: {x: [1, 3, '16', 16]}}\n",
                          r"options\[0\].input_shapes must be a mapping"),
    "an option set that is no mapping": ("flops: [0.5]\noptions: [{round_to: 8}, 3]\n",
                                         r"options\[1\] is not a mapping"),
    "an absurd input size": ("flops: [0.5]\noptions: {input_shapes: {x: [1, 3, 16, 160000000000]}}\n",
                             r"options\[0\].input_shapes: --input-shape x: one input of that size is"),
}


@pytest.mark.parametrize("text, message", BAD.values(), ids=BAD.keys())
def test_every_manifest_key_is_checked_before_any_work(folder, text, message):
    with pytest.raises(UsageError, match=message):
        batch(write(folder, text if text.startswith("models") or "models:" in text else HEAD + text), jobs=1)


def test_a_bad_manifest_is_one_line_and_exit_2(folder, capsys):
    path = write(folder, HEAD + "flops: [0.5]\nbench: 'false'\n")
    assert cli.main(["batch", str(path), "--jobs", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "bench must be true or false" in captured.err
    assert not (folder / "m.batch").exists()


def test_every_sweep_option_has_a_manifest_type():
    """A new sweep option must say what it holds in a manifest (else it would go unchecked)."""
    options = {n for cls in OPTION_CLASSES for n in names(cls, SOLVER if cls is SolverOptions else None)}
    assert set(OPTION_TYPES) == options - {"jobs", "ray", "bench_on"}


def test_yaml_aliases_that_expand_too_far_are_refused_at_once(folder):
    levels = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")  # 9**9 strings once expanded
    start = time.monotonic()
    with pytest.raises(UsageError, match=f"aliases expand to more than {MAX_NODES:,} values"):
        batch(write(folder, "\n".join(levels) + "\n" + HEAD + "flops: [0.5]\n"), jobs=1)
    assert time.monotonic() - start < 2
    with pytest.raises(UsageError, match="refers to a value that contains it"):
        batch(write(folder, "models: &m [m.onnx, *m]\nflops: [0.5]\n"), jobs=1)


def test_a_scalar_target_and_a_merge_key_are_fine(folder):
    """flops: 0.5 is [0.5]; an anchor with a merge key (a small, legitimate alias) works."""
    result = batch(write(folder, HEAD + "flops: 0.5\noptions: [&o {round_to: 8}, {<<: *o, criterion: l1}]\n"),
                   jobs=1)
    assert [(r.target, r.options, r.error) for r in result.rows] == [
        (0.5, {"round_to": 8}, None), (0.5, {"round_to": 8, "criterion": "l1"}, None)]
    assert all(r.point["flops_ratio"] <= 0.5 for r in result.rows)


def test_the_done_file_keys_on_every_file_the_model_names(tmp_path):
    """weights.bin is the model's external data (not <name>.data): other weights there are another
    model, whose row is run again, not served from the done-file."""
    onnx.save_model(sweep_model(), str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    path = write(tmp_path, HEAD + "flops: [0.7]\n")
    first = batch(path, jobs=1)
    assert not first.failed and len(first.done()) == 1
    assert [r.reused for r in batch(path, jobs=1, done=first.done()).rows] == [True]
    weights = np.fromfile(tmp_path / "weights.bin", dtype=np.float32)
    (weights[::-1] * 0.5).tofile(tmp_path / "weights.bin")  # same name and size, other weights
    again = batch(path, jobs=1, done=first.done())
    assert [r.reused for r in again.rows] == [False] and not again.failed
    assert again.rows[0].key != first.rows[0].key


def test_the_done_file_keys_on_the_calibration_data(folder, tmp_path_factory, monkeypatch):
    """A calibration file counts by content, a folder by its files' names, sizes and times; paths
    are relative to the manifest, wherever the command runs."""
    rng = np.random.default_rng(0)
    np.save(folder / "calib.npy", rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    (folder / "cal").mkdir()
    np.save(folder / "cal" / "a.npy", rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    path = write(folder, HEAD + "flops: [0.7]\noptions: [{calib: calib.npy}, {calib: cal}]\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    first = batch(path, jobs=1)
    assert not first.failed and all(r.point["top1_agreement"] is not None for r in first.rows)
    np.save(folder / "calib.npy", rng.standard_normal((8, 3, 16, 16)).astype(np.float32))  # same size
    assert [r.reused for r in batch(path, jobs=1, done=first.done()).rows] == [False, True]
    np.save(folder / "cal" / "b.npy", rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    assert [r.reused for r in batch(path, jobs=1, done=first.done()).rows] == [False, False]


def test_a_damaged_done_file_row_is_run_again(folder):
    """done.json is a cache: a row edited by hand or damaged is a miss, never printed as figures."""
    path = write(folder, HEAD + "flops: [0.7]\n")
    [(key, row)] = batch(path, jobs=1).done().items()
    assert [r.reused for r in batch(path, jobs=1, done={key: row}).rows] == [True]
    for bad in ({**row, "flops_ratio": "hack"}, {**row, "kl": [1], "params_ratio": float("nan")}, "row"):
        assert [r.reused for r in batch(path, jobs=1, done={key: bad}).rows] == [False]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_a_point_whose_timing_failed_is_a_failed_row_never_done(folder):
    result = batch(write(folder, HEAD + "flops: [0.7]\nbench: true\nbench_runs: 2\noptions: {backend: ort-cuda}\n"),
                   jobs=1)
    [row] = result.rows
    assert row.error.startswith("timing: ") and "CUDAExecutionProvider" in row.error
    assert row.point["flops_ratio"] <= 0.7  # the pruning figures are kept in the failed row
    assert result.failed == [row] and result.done() == {}


def test_sweep_checks_its_targets_and_timing_arguments(folder):
    model = folder / "m.onnx"
    for kwargs, message in (({"bench_runs": -5}, "bench_runs must be a positive integer, got -5"),
                            ({"bench_runs": "ten"}, "bench_runs must be a positive integer"),
                            ({"bench": "false"}, "bench must be True or False, got 'false'"),
                            ({"flops": "0.5"}, "flops targets must be a list")):
        with pytest.raises(UsageError, match=message):
            onnxprune.sweep(model, **{"flops": [0.5], **kwargs})
    assert [p.target for p in onnxprune.sweep(model, flops=np.float32(0.5), jobs=1).points] == [0.5]
