"""``onnxprune sweep``: several targets from one analysis, CSV/JSON/PNG out, the CLI's exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from helpers import cli, sweep_model

import onnxprune
from onnxprune import pipeline
from onnxprune.errors import UsageError
from onnxprune.sweep import save_models

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "net.onnx"
    onnx.save(sweep_model(), str(path))
    return path


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1024


def test_sweep_three_points_one_analysis(model_path, tmp_path, monkeypatch):
    calls = []
    real = pipeline.analyze_model

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "analyze_model", counted)
    targets = [0.9, 0.7, 0.5]
    result = onnxprune.sweep(str(model_path), flops=targets, calib="random", calib_count=8, keep_models=True)
    assert len(calls) == 1
    ratios = [p.flops_ratio for p in result.points]
    assert [p.target for p in result.points] == targets
    assert all(r <= t + 1e-9 for r, t in zip(ratios, targets, strict=True))
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False))
    assert ratios[-1] < ratios[0] < 1.0
    assert all(p.kl is not None and 0 <= p.top1_agreement <= 1 for p in result.points)
    assert all(p.latency_ms is None for p in result.points)

    # the reused analysis gives what a fresh prune gives at the same target
    monkeypatch.setattr(pipeline, "analyze_model", real)
    single = onnxprune.prune(str(model_path), flops=0.7, calib="random", calib_count=8)
    assert single.flops_ratio == pytest.approx(result.points[1].flops_ratio)
    assert single.params_ratio == pytest.approx(result.points[1].params_ratio)

    result.to_csv(tmp_path / "sweep.csv")
    result.to_json(tmp_path / "sweep.json")
    onnxprune.plot_sweep(result, tmp_path / "sweep.png")
    with (tmp_path / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert [float(r["flops_ratio"]) for r in rows] == pytest.approx(ratios)
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert len(data["points"]) == 3 and data["metric"] == "flops"
    check_png(tmp_path / "sweep.png")
    paths = save_models(result, tmp_path)
    assert [p.name for p in paths] == ["flops0.9.onnx", "flops0.7.onnx", "flops0.5.onnx"]
    onnx.checker.check_model(onnx.load(str(paths[-1])))


def test_sweep_bench_and_params(model_path):
    result = onnxprune.sweep(model_path, params=[0.8, 0.5], bench=True, bench_runs=3)
    assert result.metric == "params" and result.dense_latency_ms > 0
    assert all(p.params_ratio <= p.target and p.latency_ms > 0 and p.latency_ratio > 0 for p in result.points)


@pytest.mark.parametrize("kwargs", [dict(flops=[1.5]), dict(flops=[]), dict(flops=[0.5], params=[0.5]), dict(),
                                    dict(flops=[0.5], reconstruct=True)])
def test_sweep_usage_errors(model_path, kwargs):
    with pytest.raises(UsageError):
        onnxprune.sweep(model_path, **kwargs)


def test_cli_sweep(model_path, tmp_path):
    out = tmp_path / "out"
    proc = cli("sweep", model_path, "--flops", "0.9", "0.7", "--out", out, "--save-models", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"sweep.csv", "sweep.json", "sweep.png", "flops0.9.onnx",
                                               "flops0.7.onnx"}
    with (out / "sweep.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    check_png(out / "sweep.png")
    assert "sweep.png" in proc.stdout

    # the folder is not empty now: refused without --force (usage error), accepted with it
    again = cli("sweep", model_path, "--flops", "0.8", "--out", out, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith("onnxprune: error:")
    forced = cli("sweep", model_path, "--flops", "0.8", "--out", out, "--force", "-q", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert len(json.loads((out / "sweep.json").read_text())["points"]) == 1


def test_cli_sweep_default_folder(model_path, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(model_path.read_bytes())
    proc = cli("sweep", src, "--flops", "0.6", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.sweep" / "sweep.csv").exists()


@pytest.mark.parametrize("args", [("--flops", "1.5"), ("--flops", "0.5", "--params", "0.5"), (),
                                  ("--flops", "0.5", "--reconstruct")])
def test_cli_sweep_bad_request_exits_2(model_path, tmp_path, args):
    out = tmp_path / "bad"
    proc = cli("sweep", model_path, *args, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_sweep_after_torch_ran_threads_in_this_process_does_not_hang(model_path, tmp_path):
    """The sweep's forked workers re-fit with torch's Cholesky; a fork of a process whose OpenMP pool
    is running used to hang there for ever (the pool worker keeps torch to one thread)."""
    pytest.importorskip("torch", reason="the hang needs torch's OpenMP pool started in the parent")
    script = tmp_path / "s.py"
    script.write_text(
        "import sys, torch\n"
        "a = torch.randn(256, 256)\n"
        "torch.linalg.cholesky(a @ a.T + 256 * torch.eye(256))  # starts the OpenMP pool\n"
        "import onnxprune\n"
        "r = onnxprune.sweep(sys.argv[1], flops=[0.9, 0.7], calib='random', calib_count=8, jobs=2)\n"
        "print(len(r.points))\n")
    proc = subprocess.run([sys.executable, str(script), str(model_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "2"
