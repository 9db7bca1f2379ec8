"""calibration/text_images.py: synthetic text images are deterministic by seed and of the asked size."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "calibration"))

import text_images  # noqa: E402

SIZE = (96, 64)  # width, height: small, so the test is fast


def test_same_seed_same_files_other_seed_other_files_and_size(tmp_path):
    first = text_images.write_text_images(tmp_path / "a", 3, size=SIZE, seed=0)
    again = text_images.write_text_images(tmp_path / "b", 3, size=SIZE, seed=0)
    other = text_images.write_text_images(tmp_path / "c", 3, size=SIZE, seed=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    for mine, theirs in zip(first, other, strict=True):
        assert not np.array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(theirs)))
    for path in first + other:
        with Image.open(path) as img:
            assert img.size == SIZE and img.mode == "RGB"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in first]  # no temporary files left


def test_the_command_line_writes_count_images(tmp_path):
    assert text_images.main([str(tmp_path), "--count", "2", "--size", "80x48", "--seed", "3"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [text_images.text_image_name(3, 0), text_images.text_image_name(3, 1)]
    assert Image.open(tmp_path / names[0]).size == (80, 48)
    with pytest.raises(SystemExit):
        text_images.main([str(tmp_path), "--size", "80by48"])
