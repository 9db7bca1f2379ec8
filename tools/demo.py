"""Export torchvision resnet50 (random weights) to ONNX and prune it to half its FLOPs with the
onnxprune command (channel counts multiples of 8, which onnxruntime's CPU kernels run fastest),
timing dense and pruned on onnxruntime CPU, printing the summary and writing the JSON and HTML
reports. The README's first command runs this."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from export_models import export_model  # noqa: E402


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    path = export_model(name, "legacy", ROOT / ".cache" / "models")
    out = path.with_name(path.stem + ".pruned.onnx")
    cmd = ["onnxprune", str(path), "--flops", "0.5", "--round-to", "8", "--bench", "-o", str(out),
           "--report", str(out.with_suffix(".json")), "--html", str(out.with_suffix(".html")), "--force"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call([str(Path(sys.executable).with_name("onnxprune")), *cmd[1:]])


if __name__ == "__main__":
    sys.exit(main())
