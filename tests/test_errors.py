"""The small shared helpers errors.first_line and progress.no_progress."""

from __future__ import annotations

from onnxprune.errors import ModelError, first_line
from onnxprune.progress import Progress, no_progress


def test_first_line_of_an_exception():
    assert first_line(ValueError("  bad shape\n  at node 3\n")) == "bad shape"
    assert first_line(ModelError("one line")) == "one line"
    assert first_line(KeyError()) == "KeyError"  # no message: the type says what happened
    assert first_line(RuntimeError("\n \n")) == "RuntimeError"


def test_first_line_of_a_text():
    assert first_line("first\nsecond") == "first"
    assert first_line("  padded  ") == "padded"
    assert first_line("") == ""


def test_no_progress_takes_a_message_and_does_nothing():
    step: Progress = no_progress
    assert step("reading the model") is None
