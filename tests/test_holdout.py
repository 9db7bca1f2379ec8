"""Held-out data by whole file, and ``--holdout PATH|FRACTION``.

* ``CalibrationSet.split`` never separates a file's samples: crops of one photo stay on one side;
* ``--holdout val/`` measures fidelity on a separate set loaded like ``--calib``, all of
  ``--calib`` fits, and the summary, the JSON and the HTML report name the held-out set;
* a bad ``--holdout`` (0, 1, a word, a missing path, a FIFO, the ``--calib`` data itself) is one
  line and the usage exit code, before any work.

The command runs in this process (``onnxprune.cli.main``: no interpreter start-up per case).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import USAGE, sweep_model
from PIL import Image

import onnxprune
import onnxprune.cli
from onnxprune.calib.data import CalibrationSet, load_calibration
from onnxprune.errors import UsageError
from onnxprune.graph.shapes import input_specs
from onnxprune.options import CalibOptions
from onnxprune.pipeline import load_calibration_split


def _crops(photos: int, per_photo: int, seed: int = 0) -> CalibrationSet:
    """``per_photo`` samples of each of ``photos`` photos, shuffled as the loader shuffles; each
    sample's first value is its photo's id, so a test can see where it came from."""
    order = np.random.default_rng(seed).permutation(photos * per_photo)
    sources = np.repeat(np.arange(photos), per_photo)[order]
    x = np.zeros((len(sources), 3, 4, 4), dtype=np.float32)
    x[:, 0, 0, 0] = sources
    return CalibrationSet({"x": x}, f"{len(x)} crops of {photos} photos", sources=sources, origin="photos/")


def test_split_holds_out_whole_files_never_part_of_one():
    data = _crops(photos=10, per_photo=3)
    kept, held = data.split(0.3)
    kept_ids, held_ids = set(kept.source_ids.tolist()), set(held.source_ids.tolist())
    assert len(held_ids) == 3 and len(kept_ids) == 7 and not kept_ids & held_ids
    assert len(held) == 9 and len(kept) == 21  # every crop of a held-out photo, none of the others
    for part in (kept, held):  # the samples travel with their sources
        assert np.array_equal(part.samples["x"][:, 0, 0, 0], part.source_ids)
    first_seen = list(dict.fromkeys(data.source_ids.tolist()))
    assert held_ids == set(first_seen[-3:])  # the last files in the seeded order
    assert held.description == "3 of 10 files of photos/ held out (whole files), 9 samples"
    assert "7 of 10 files kept for calibration" in kept.description
    again_kept, again_held = data.split(0.3)
    assert np.array_equal(again_held.samples["x"], held.samples["x"])
    sub = held.subset(np.array([0, 1]))
    assert np.array_equal(sub.sources, held.sources[:2]) and sub.origin == "photos/"


def test_split_without_sources_holds_out_samples_and_refuses_one_file():
    plain = CalibrationSet({"x": np.arange(8, dtype=np.float32).reshape(8, 1)}, "8 samples")
    assert plain.sources is None and plain.source_ids.tolist() == list(range(8))
    kept, held = plain.split(0.25)
    assert held.samples["x"].ravel().tolist() == [6, 7] and held.description == "2 of 8 samples held out"
    one_photo = CalibrationSet({"x": np.zeros((4, 1), np.float32)}, "4 crops", sources=np.zeros(4, np.int64))
    with pytest.raises(UsageError, match="all 4 calibration samples come from one file.*--holdout PATH"):
        one_photo.split(0.25)
    with pytest.raises(UsageError, match="one integer id per sample"):
        CalibrationSet({"x": np.zeros((4, 1), np.float32)}, "4", sources=np.zeros(3, np.int64))


def _images(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_an_image_folder_splits_by_image_and_says_so(tmp_path):
    model = sweep_model()
    data = load_calibration(_images(tmp_path / "photos", 8, seed=1), input_specs(model), preprocess="none")
    assert sorted(data.source_ids.tolist()) == list(range(8))
    _, held = data.split(0.25)
    assert held.description == f"2 of 8 images of {tmp_path / 'photos'}/ held out (whole files)"


def test_a_separate_holdout_is_loaded_like_calib_and_all_of_calib_fits(tmp_path):
    model = sweep_model()
    photos, val = _images(tmp_path / "photos", 6, seed=1), _images(tmp_path / "val", 3, seed=2)
    options = CalibOptions(calib=str(photos), holdout=str(val), preprocess="none", calib_count=5)
    options.validate()
    calib, held = load_calibration_split(model, options)
    assert len(calib) == 5 and len(held) == 3  # the same count limit; nothing of --calib held out
    assert "kept" not in calib.description
    assert held.description.startswith(f"separate held-out set: 3 images from {val}/ (none preprocessing")
    assert held.samples["x"].shape == (3, 3, 16, 16)
    again = CalibOptions(calib=str(photos), holdout=held, preprocess="none")  # a CalibrationSet from Python
    again.validate()
    assert len(load_calibration_split(model, again)[1]) == 3
    same = CalibOptions(calib=str(photos), holdout=load_calibration(photos, input_specs(model), preprocess="none"),
                        preprocess="none")
    with pytest.raises(UsageError, match="every held-out sample .* is also a calibration sample"):
        load_calibration_split(model, same)


def _run(args: list[str], cwd: Path, monkeypatch, capsys, quiet: bool = True) -> tuple[int, str, str]:
    """The command line in this process, in ``cwd``: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "300")  # the summary's lines unwrapped
    capsys.readouterr()
    code = onnxprune.cli.main([*map(str, args), *(["-q"] if quiet else [])])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_holdout_path_is_named_in_the_summary_the_json_and_the_html(tmp_path, monkeypatch, capsys):
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    _images(tmp_path / "photos", 6, seed=1)
    _images(tmp_path / "val", 3, seed=2)
    args = ["m.onnx", "--flops", "0.6", "--calib", "photos/", "--holdout", "val/", "--preprocess", "none",
            "--report", "r.json", "--html", "r.html"]
    code, out, err = _run(args, tmp_path, monkeypatch, capsys, quiet=False)
    assert code == 0, err
    held = "separate held-out set: 3 images from val/ (none preprocessing, NCHW 16x16)"
    assert f"held out (fidelity measured on): {held}" in out
    assert "calibration: 6 images from photos/" in out and "kept for calibration" not in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["held_out"] == held and report["fidelity"]["samples"] == 3
    assert held in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(("holdout", "message"), [
    ("0", "a fraction must be between 0 and 1 \\(exclusive\\), got 0"),
    ("1", "a fraction must be between 0 and 1 \\(exclusive\\), got 1"),
    ("nan", "a fraction must be between 0 and 1"),
    ("abc", "--holdout abc: no such file or folder"),
    ("missing/", "--holdout missing/: no such file or folder"),
    ("fifo", "--holdout fifo is a FIFO"),
    ("photos/", "--holdout photos/ is the --calib data itself: .* measures nothing"),
    ("photos/sub", "--holdout photos/sub and --calib photos/ overlap"),
])
def test_a_bad_holdout_is_one_line_and_the_usage_code(tmp_path, monkeypatch, capsys, holdout, message):
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo")
    code, out, err = _run(["m.onnx", "--flops", "0.6", "--calib", "photos/", "--holdout", holdout], tmp_path,
                          monkeypatch, capsys)
    assert (code, out) == (USAGE, ""), err
    assert len(err.splitlines()) == 1 and err.startswith("onnxprune: error: "), err
    assert re.search(message, err), err


def test_holdout_from_python_takes_fractions_paths_and_sets_only(tmp_path):
    model = sweep_model()
    with pytest.raises(TypeError, match="holdout must be a number"):
        onnxprune.prune(model, flops=0.6, calib="random", holdout=[0.5])
    with pytest.raises(UsageError, match="needs --calib"):
        onnxprune.prune(model, flops=0.6, holdout=str(tmp_path))
    with pytest.raises(UsageError, match="between 0 and 1"):
        onnxprune.prune(model, flops=0.6, calib="random", holdout=1.0)
