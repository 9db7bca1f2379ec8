"""Backend-aware channel granularity (onnxprune/granularity.py): ``--round-to auto``, the default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import cli, small_model
from onnx import numpy_helper

import onnxprune
import onnxprune.ranking.granularity as granularity
from onnxprune.errors import UsageError
from onnxprune.ranking.granularity import backend_multiple, candidate_multiples, parse_round_to


@pytest.mark.parametrize(("machine", "features", "multiple"), [
    ("x86_64", {"AVX512F": True, "AVX2": True}, 16),
    ("x86_64", {"AVX512F": False, "AVX2": True}, 8),
    ("AMD64", {"AVX2": False}, 8),
    ("aarch64", {"ASIMD": True}, 16),
    ("riscv64", {}, 8),
])
def test_ort_cpu_multiple_follows_mlas_block_size(machine, features, multiple, monkeypatch):
    monkeypatch.setattr(granularity.platform, "machine", lambda: machine)
    monkeypatch.setattr(granularity, "_cpu_features", lambda: features)
    chosen = backend_multiple("ort-cpu")
    assert chosen.multiple == multiple
    assert "ort-cpu" in chosen.reason


def test_this_machine_reads_its_own_isa():
    features = granularity._cpu_features()
    expected = 16 if features.get("AVX512F") or granularity.platform.machine().lower() in ("arm64", "aarch64") else 8
    assert backend_multiple("ort-cpu").multiple == expected


@pytest.mark.parametrize(("precision", "multiple"), [("fp32", 4), ("fp16", 8), ("int8", 32)])
@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt", "tensorrt"])
def test_gpu_multiples_follow_tensor_core_rules(backend, precision, multiple):
    chosen = backend_multiple(backend, precision=precision)
    assert chosen.multiple == multiple and backend in chosen.reason


def test_round_to_values():
    assert parse_round_to(None) == parse_round_to("auto") == "auto"
    assert parse_round_to("8") == parse_round_to(8) == 8
    for bad in ("x", "0", 0, -4, True, 2.5):
        with pytest.raises(UsageError, match="round-to"):
            parse_round_to(bad)


def test_candidates_coarsest_first_and_multiples_of_m_with_a_pattern(monkeypatch):
    monkeypatch.setattr(granularity, "backend_multiple",
                        lambda backend, precision="fp32": granularity.ChannelMultiple(16, "sixteen"))
    assert candidate_multiples("auto", "ort-cpu")[0] == [16, 8, 4, 2, 1]
    assert candidate_multiples("auto", "ort-cpu", pattern_m=4)[0] == [16, 8, 4]
    assert candidate_multiples(3, "ort-cpu")[0] == [3]


def _conv_out_channels(path_or_model) -> dict[str, int]:
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: weights[n.input[1]].shape[0] for n in model.graph.node
            if n.op_type == "Conv" and n.input[1] in weights}


def test_default_prune_rounds_to_the_backend_multiple_and_meets_the_target(export):
    path = export("resnet18", "legacy")
    multiple = backend_multiple("ort-cpu").multiple
    result = onnxprune.prune(path, flops=0.5)
    assert result.channel_multiple == multiple and "ort-cpu" in result.channel_multiple_why
    assert 0.49 <= result.flops_ratio <= 0.5
    dense = _conv_out_channels(path)
    pruned = _conv_out_channels(result.model)
    changed = [n for n in pruned if pruned[n] != dense[n]]
    assert changed, "something was pruned"
    assert all(pruned[n] % multiple == 0 for n in changed), {n: pruned[n] for n in changed}
    off = onnxprune.prune(path, flops=0.5, round_to=1)
    assert off.channel_multiple == 1
    assert any(c % multiple for c in _conv_out_channels(off.model).values())


def test_a_small_model_falls_back_to_a_finer_multiple_and_says_so():
    """Groups of 6 and 8 channels cannot lose channels in blocks of 16: auto takes the largest divisor
    that meets the target instead of refusing the default command."""
    result = onnxprune.prune(small_model(), flops=0.5)
    assert result.channel_multiple < backend_multiple("ort-cpu").multiple
    assert "target needed multiples of" in result.channel_multiple_why
    assert 0.49 * 0.98 <= result.flops_ratio <= 0.5
    with pytest.raises(onnxprune.ModelError, match="round-to 16"):
        onnxprune.prune(small_model(), flops=0.5, round_to=16)


def test_cli_states_the_multiple_and_takes_auto_or_a_number(tmp_path: Path):
    onnx.save(small_model(), str(tmp_path / "m.onnx"))
    proc = cli("m.onnx", "--flops", "0.5", "--round-to", "auto", "--report", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "channel counts: multiples of" in proc.stdout
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["channel_multiple"]["multiple"] >= 1 and report["channel_multiple"]["why"]
    bad = cli("m.onnx", "--flops", "0.5", "--round-to", "zero", "-o", "x.onnx", cwd=tmp_path)
    assert bad.returncode == 2 and "round-to" in bad.stderr


def test_sweep_rounds_by_default(export):
    path = export("resnet18", "legacy")
    result = onnxprune.sweep(path, flops=[0.7, 0.5])
    multiple = backend_multiple("ort-cpu").multiple
    assert [p.round_to for p in result.points] == [multiple, multiple]
    assert all(0.98 * p.target <= p.flops_ratio <= p.target for p in result.points)
    assert np.isfinite([p.params_ratio for p in result.points]).all()
