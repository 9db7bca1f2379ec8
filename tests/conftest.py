"""Shared fixtures: real torchvision/timm models exported once per test run (both exporters).

Exports are cached under ONNXPRUNE_MODEL_CACHE (default: .cache/models in the repo, ignored by
git); a clean CI clone exports everything fresh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

CACHE = Path(os.environ.get("ONNXPRUNE_MODEL_CACHE", ROOT / ".cache" / "models"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


@pytest.fixture(scope="session")
def export(model_cache):
    """export(name, exporter) -> path of the exported .onnx (cached across tests and runs)."""
    export_models = pytest.importorskip("export_models", reason="needs torch/torchvision/timm to export")

    def _export(name: str, exporter: str) -> Path:
        return export_models.export_model(name, exporter, model_cache)
    return _export


@pytest.fixture(scope="session", autouse=True)
def _onnxprune_cache(tmp_path_factory):
    """Latency tables (onnxprune/latency_model.py) go to a temporary folder, not the user's cache."""
    old = os.environ.get("ONNXPRUNE_CACHE")
    os.environ["ONNXPRUNE_CACHE"] = str(tmp_path_factory.mktemp("onnxprune-cache"))
    yield
    if old is None:
        os.environ.pop("ONNXPRUNE_CACHE", None)
    else:
        os.environ["ONNXPRUNE_CACHE"] = old
