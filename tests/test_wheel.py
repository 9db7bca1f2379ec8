"""`pip install onnxprune` works, and where it runs.

The wheel: built from a copy of the package (so the checkout gets no build/ folder), installed
without its dependencies into a fresh --target folder, and run from there, ahead of the editable
install on the path. Its `onnxprune` prunes with --calib on a folder of photos, which needs the
preprocessing presets inside the package.

Platforms: outputs are locked with flock, which Windows lacks. A Python without fcntl (simulated
by ``sys.modules["fcntl"] = None``) still imports onnxprune, analyses and prunes; a command that
writes stops with one line, and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
from helpers import assert_one_line_error, snapshot, sweep_model
from PIL import Image

import onnxprune

SOURCE = Path(onnxprune.__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # scikit-image's sample photos


def _photos(folder: Path) -> Path:
    """Four real photos, made small (64 px) so that decoding them costs nothing."""
    from skimage import data

    folder.mkdir()
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((64, 64))
        image.save(folder / f"{name}.png")
    return folder


def _pip(*args: str | Path, cwd: Path) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1", "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A --target folder holding onnxprune installed from its wheel (no dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, src / name)
    shutil.copytree(SOURCE / "onnxprune", src / "onnxprune", ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", src, "-w", root / "dist", cwd=root)
    wheels = list((root / "dist").glob("onnxprune-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        assert {"onnxprune/presets/imagenet.json", "onnxprune/presets/none.json"} <= set(wheel.namelist())
    _pip("install", "--no-deps", "-q", "--target", root / "target", wheels[0], cwd=root)
    return root / "target"


def test_wheel_prunes_with_calibration_images(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")]),
           "NO_COLOR": "1", "COLUMNS": "200"}
    where = subprocess.run([sys.executable, "-c", "import onnxprune; print(onnxprune.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed), "the editable install was imported"
    photos = _photos(tmp_path / "photos")
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    command = installed / "bin" / "onnxprune"  # the console script the wheel installs
    proc = subprocess.run([command, "m.onnx", "--flops", "0.8", "--calib", "photos/", "-o", "out.onnx"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 images from photos" in proc.stdout and "imagenet preprocessing" in proc.stdout, proc.stdout
    assert "fidelity on 1 held-out samples" in proc.stdout, proc.stdout
    assert onnx.load(tmp_path / "out.onnx").graph.node
    assert sorted(p.name for p in photos.iterdir()) == sorted(f"{n}.png" for n in PHOTOS)


NO_FCNTL = """
import sys
sys.modules["fcntl"] = None  # what a Python without fcntl (Windows) has: import fcntl raises ImportError
import onnxprune
from onnxprune import cli
analysis = onnxprune.analyze("m.onnx")
result = onnxprune.prune("m.onnx", flops=0.5)
print(len(analysis.groups), round(result.flops_ratio, 2))
sys.stdout.flush()
sys.exit(cli.main(sys.argv[1:]))
"""


def test_without_fcntl_imports_and_prunes_but_refuses_to_write_in_one_line(tmp_path):
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-c", NO_FCNTL, "m.onnx", "--flops", "0.5", "-o", "out.onnx"],
                          cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"}, capture_output=True, text=True,
                          timeout=120)
    groups, ratio = proc.stdout.split()
    assert int(groups) == 3 and float(ratio) <= 0.5, proc.stdout
    proc.stdout = ""  # what the API printed; the command itself printed nothing
    line = assert_one_line_error(proc, 2)
    assert "needs a POSIX system" in line and "fcntl" in line, line
    assert snapshot(tmp_path) == before, "no output, staging folder or lock file left behind"


def test_fcntl_is_not_imported_by_the_package():
    """Only the lock imports fcntl, where it is taken: a platform module at the top of any module
    would make ``import onnxprune`` POSIX-only again."""
    found = [str(p.relative_to(SOURCE)) for p in (SOURCE / "onnxprune").rglob("*.py")
             if any(line.strip() in ("import fcntl", "from fcntl import flock") and not line.startswith(" ")
                    for line in p.read_text().splitlines())]
    assert found == []
