"""The README's "## Python API" example runs as written, on small real models built here in
place of the model files it names (resnet50.onnx, vit.onnx)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from helpers import Net

import onnxprune

README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no ```python block under ## Python API"
    return blocks[0]


def cnn() -> onnx.ModelProto:
    net = Net(channels=3, hw=16)
    h = net.relu(net.bn(net.conv("x", 3, 16, 3, name="c1"), 16, name="bn1"))
    h = net.relu(net.conv(h, 16, 32, 3, name="c2"))
    net.head(h, 32)
    return net.model()


def transformer_like() -> onnx.ModelProto:
    """Patch embedding conv, tokens, an MLP block of MatMuls with a residual, a mean-pooled head."""
    net = Net(channels=3, hw=16)
    h = net.conv("x", 3, 16, 3, name="patch")                                   # [1, 16, 16, 16]
    tokens = net.node("Transpose", [net.reshape(h, [1, 16, 256])], perm=[0, 2, 1])  # [1, 256, 16]
    up = net.node("MatMul", [tokens, net.weight("fc1.w", (16, 64), 16)])
    up = net.node("Relu", [net.node("Add", [up, net.const("fc1.b", net.rng.standard_normal(64) * 0.1)])])
    down = net.node("MatMul", [up, net.weight("fc2.w", (64, 16), 64)])
    h = net.node("Add", [tokens, down])
    pooled = net.node("ReduceMean", [h], axes=[1], keepdims=0)  # [1, 16]
    net.node("Gemm", [pooled, net.weight("head.w", (10, 16), 16), net.const("head.b", net.rng.standard_normal(10))],
             out="y", transB=1)
    return net.model()


def test_readme_python_api_example(tmp_path, monkeypatch, capsys):
    code = api_example()
    assert '"resnet50.onnx"' in code and '"vit.onnx"' in code
    onnx.save(cnn(), str(tmp_path / "small_cnn.onnx"))
    onnx.save(transformer_like(), str(tmp_path / "small_vit.onnx"))
    code = code.replace('"resnet50.onnx"', '"small_cnn.onnx"').replace('"vit.onnx"', '"small_vit.onnx"')
    monkeypatch.chdir(tmp_path)  # the example saves to a relative path
    scope: dict = {}
    exec(compile(code, "README.md:Python API", "exec"), scope)

    result, analysis = scope["result"], scope["analysis"]
    assert result.flops_ratio <= 0.5 and result.params_ratio < 1
    saved = tmp_path / "resnet50.pruned.onnx"
    assert saved.exists()
    onnx.checker.check_model(onnx.load(str(saved)))
    assert result.plan and isinstance(analysis, onnxprune.Analysis) and analysis.groups
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 + len(result.plan)
