"""The default run tells the truth about accuracy.

Without --calib nothing compares the pruned model with the dense one, and on real models a prune
without data usually needs recovery. So the terminal summary, the JSON report and the HTML report
(of prune and of sweep, from the CLI and from the API) say that fidelity was not measured, and show
the command that measures and recovers it: the user's own run with --calib photos/ and, where
channels are removed, --reconstruct. With --calib the fidelity figures are always there, and that
command runs as printed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import onnx
import pytest
from helpers import sweep_model
from PIL import Image

from onnxprune import prune, sweep, to_html
from onnxprune.cli import main

NOT_MEASURED = "fidelity not measured: no calibration data was given (--calib)"
RECOVERY = "usually needs recovery"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*args) -> stdout of the command, run in this process in ``tmp_path`` (no interpreter
    start-up per run); it must succeed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out
    return run


def _photos(folder: Path) -> None:
    """Four real photos from scikit-image, made small (64 px)."""
    from skimage import data

    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((64, 64))
        image.save(folder / f"{name}.png")


def _last_lines(stdout: str) -> list[str]:
    """The summary's lines before the "wrote ..." lines."""
    return [line for line in stdout.splitlines() if not line.startswith("wrote ")]


def _assert_note_then_command(stdout: str, command: str) -> None:
    """The note (wrapped to the terminal's width), last, and then the command, whole on one line."""
    lines = _last_lines(stdout)
    assert lines[-1].strip() == command, stdout
    text = " ".join(" ".join(lines[:-1]).split())
    assert NOT_MEASURED in text and RECOVERY in text, stdout
    assert text.endswith("(photos/ stands for it)."), stdout  # nothing printed between the note and the command


def test_prune_without_calib_says_so_and_the_command_it_prints_measures_fidelity(tmp_path, cli):
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    out = cli("m.onnx", "--flops", "0.5", "-o", "out.onnx", "--report", "r.json", "--html", "r.html")
    command = "onnxprune m.onnx --flops 0.5 --calib photos/ --reconstruct"
    _assert_note_then_command(out, command)  # last in the summary, where it is seen
    assert out.index("groups: ") < out.index("fidelity not measured")
    fidelity = json.loads((tmp_path / "r.json").read_text())["fidelity"]
    assert fidelity["measured"] is False and fidelity["command"] == command
    assert fidelity["note"].startswith("not measured") and RECOVERY in fidelity["note"]
    page = (tmp_path / "r.html").read_text()
    assert 'id="fidelity-not-measured"' in page and RECOVERY in page
    assert f'<pre id="recover-command">{command}</pre>' in page
    assert "not measured (no calibration data" in page.split('id="summary-section"')[1].split("</section>")[0]

    # the printed command works once photos/ holds images: fidelity in the summary, the JSON and the HTML
    _photos(tmp_path / "photos")
    out = cli(*shlex.split(command)[1:], "-o", "recovered.onnx", "--report", "r2.json", "--html", "r2.html")
    assert "fidelity on 1 held-out samples: top-1 agreement" in out, out
    assert "reconstruct: " in out and "not measured" not in out
    fidelity = json.loads((tmp_path / "r2.json").read_text())["fidelity"]
    assert fidelity["measured"] is True and fidelity["samples"] == 1 and 0 <= fidelity["top1_agreement"] <= 1
    page = (tmp_path / "r2.html").read_text()
    assert 'id="fidelity-table"' in page and "fidelity-not-measured" not in page and RECOVERY not in page


def test_sweep_without_calib_adds_the_note_to_table_json_and_html(tmp_path, cli):
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    out = cli("sweep", "m.onnx", "--flops", "0.9", "0.5", "--jobs", "1", "--html", "s.html")
    command = "onnxprune sweep m.onnx --flops 0.9 0.5 --jobs 1 --calib photos/ --reconstruct"
    assert "top-1 agreement" not in out  # no fidelity columns without data ...
    _assert_note_then_command(out, command)  # ... but the note
    fidelity = json.loads((tmp_path / "m.sweep" / "sweep.json").read_text())["fidelity"]
    assert fidelity["measured"] is False and fidelity["command"] == command
    page = (tmp_path / "s.html").read_text()
    assert 'id="fidelity-not-measured"' in page and f'<pre id="recover-command">{command}</pre>' in page


def test_api_result_says_whether_fidelity_was_measured(tmp_path):
    path = tmp_path / "my model.onnx"  # a path the command must quote
    onnx.save(sweep_model(), path)
    result = prune(str(path), params=0.7, round_to=1)
    assert not result.fidelity_measured
    words = shlex.split(result.recover_command)
    assert words == ["onnxprune", str(path), "--params", "0.7", "--round-to", "1", "--calib", "photos/",
                     "--reconstruct"]
    assert result.to_dict()["fidelity"]["measured"] is False
    to_html(result, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert 'id="fidelity-not-measured"' in page and "--round-to 1 --calib photos/ --reconstruct" in page

    from_proto = prune(onnx.load(path), pattern="2:4")  # no path to name; no channels removed: OBS recovers
    assert from_proto.recover_command == "onnxprune model.onnx --pattern 2:4 --calib photos/"

    measured = prune(str(path), flops=0.5, calib="random", calib_count=4)
    assert measured.fidelity_measured and measured.recover_command is None
    assert measured.to_dict()["fidelity"]["measured"] is True and measured.to_dict()["fidelity"]["samples"] == 1

    swept = sweep(str(path), flops=[0.5], jobs=1)
    assert not swept.fidelity_measured
    assert shlex.split(swept.recover_command)[:5] == ["onnxprune", "sweep", str(path), "--flops", "0.5"]
    assert swept.to_dict()["fidelity"]["measured"] is False
