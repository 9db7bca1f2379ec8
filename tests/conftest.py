"""Shared fixtures: real torchvision/timm models exported once per test run (both exporters).

Exports are cached under ONNXPRUNE_MODEL_CACHE (default: .cache/models in the repo, ignored by
git); a clean CI clone exports everything fresh.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="session")
def ppocr_det() -> Path:
    """The real PP-OCRv4 text detector (input x [N, 3, H, W], free H and W; output a probability map
    [N, 1, H, W]) that rapidocr_onnxruntime's wheel ships (tools/setup.sh installs it). The package
    is located, not imported: it imports cv2, which is not installed."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr_onnxruntime is not installed (tools/setup.sh: pip install --no-deps "
                    "rapidocr_onnxruntime==1.4.4)")
    path = Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    if not path.is_file():
        pytest.skip(f"rapidocr_onnxruntime has no {path.name}")
    return path


YOLO_CLASSES, YOLO_SIZE, YOLO_STRIDE = 3, 64, 8  # the tiny detector's classes, input size and grid stride


@pytest.fixture(scope="session")
def tiny_yolo(tmp_path_factory) -> Path:
    """A YOLO-style detector built in torch and exported (legacy exporter, free batch): three strided
    convs, then 1x1 convs for boxes and class scores on an 8x8 grid, decoded like YOLOv8's export to
    one output [N, 4+K, A] (cx, cy, w, h in pixels, K sigmoid class scores; K = 3, A = 64). Random
    weights; the class bias is set so that about one anchor in ten scores above 0.25 on random
    inputs, so the dense model does find boxes."""
    torch = pytest.importorskip("torch", reason="needs torch to build the detector")
    from torch import nn

    class TinyYolo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU(),
                                      nn.Conv2d(32, 32, 3, 2, 1), nn.SiLU())
            self.box = nn.Conv2d(32, 4, 1)
            self.cls = nn.Conv2d(32, YOLO_CLASSES, 1)
            side = YOLO_SIZE // YOLO_STRIDE
            ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            self.register_buffer("grid", torch.stack([xs, ys]).reshape(1, 2, -1).float())

        def forward(self, x):
            f = self.body(x)
            b = self.box(f).flatten(2)
            xy = (self.grid + torch.sigmoid(b[:, :2])) * YOLO_STRIDE
            wh = torch.sigmoid(b[:, 2:]) * 4 * YOLO_STRIDE + 4
            return torch.cat([xy, wh, torch.sigmoid(self.cls(f).flatten(2))], 1)

    torch.manual_seed(0)
    model = TinyYolo().eval()
    x = torch.randn(16, 3, YOLO_SIZE, YOLO_SIZE)
    with torch.no_grad():
        model.cls.bias.zero_()
        logits = model.cls(model.body(x))
        model.cls.bias.fill_(float(np.log(0.25 / 0.75) - torch.quantile(logits.flatten(), 0.9)))
    path = tmp_path_factory.mktemp("tiny_yolo") / "tiny_yolo.onnx"
    torch.onnx.export(model, (x[:1],), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
    return path


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
