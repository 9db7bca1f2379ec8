"""Peers run side by side with onnxprune in the benchmark scripts (not part of the package).

``torch_pruning_onnx``: Torch-Pruning (PyPI ``torch-pruning``) on the same torchvision/timm model
onnxprune gets as ONNX: isomorphic, global ranking, L2 group magnitude (its recommended recipe for
the Isomorphic Pruning paper), stepped until its MACs reach the target, then exported to ONNX with
the legacy exporter and a dynamic batch, like tools/export_models.py's dense files.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

STEPS = 100  # pruning_ratio 0.9 in 100 steps: each step removes ~1% of the channels, so the MACs land close


def torch_pruning_onnx(name: str, flops: float, out: Path, *, round_to: int | None = None,
                       steps: int = STEPS) -> tuple[float, float]:
    """Prune ``name`` with Torch-Pruning to at most ``flops`` of its MACs, export to ``out``; returns
    the MACs ratio reached (Torch-Pruning's own count) and the seconds taken, building the dense
    torch model not counted."""
    import torch
    import torch_pruning as tp
    from export_models import build_model, input_shape

    model = build_model(name).eval()
    x = torch.randn(input_shape(name))
    ignored, num_heads, unwrapped = [], {}, []
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            num_heads[module] = module.num_heads
    for head in ("fc", "heads", "classifier", "head"):  # the classifier keeps its classes
        if hasattr(model, head):
            ignored.append(getattr(model, head))
    if hasattr(model, "class_token"):  # torchvision ViT
        unwrapped = [(model.class_token, 2), (model.encoder.pos_embedding, 2)]
    start = time.perf_counter()
    dense_macs, _ = tp.utils.count_ops_and_params(model, x)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.9,
        iterative_steps=steps, isomorphic=True, global_pruning=True, ignored_layers=ignored,
        num_heads=num_heads, prune_num_heads=bool(num_heads), prune_head_dims=False,
        unwrapped_parameters=unwrapped, round_to=round_to)
    macs = dense_macs
    for _ in range(steps):  # the Torch-Pruning recipe for a MACs target: step until reached
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, x)
        if macs <= flops * dense_macs:
            break
    with warnings.catch_warnings():  # not under no_grad: MultiheadAttention's fast path does not export
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(out), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return macs / dense_macs, time.perf_counter() - start
