"""--max-memory: a model that cannot fit is refused before any work, naming the stage; one that
fits gets smaller working sets, and the same pruned model as without a budget."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_one_line_error, cli, conv_model, initializers, save_external, snapshot, wide_model

import onnxprune
from onnxprune.errors import UsageError
from onnxprune.graph.capture import CHUNK_BYTES
from onnxprune.memory import BASE, MIN_GROUP, GiB, kept_share, plan_memory, stage_needs, weights_on_disk


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save_model(wide_model(), str(path))
    return path


def test_without_a_budget_nothing_changes(model_path: Path) -> None:
    plan = plan_memory(model_path, None)
    assert plan.budget is None and plan.capture_group == CHUNK_BYTES


def test_weights_on_disk_inline_and_external(tmp_path: Path) -> None:
    model = conv_model(cin=64, cout=96, hw=8)
    weights = sum(v.nbytes for v in initializers(model).values())
    inline = tmp_path / "in.onnx"
    onnx.save_model(model, str(inline))
    size, is_inline = weights_on_disk(inline)
    assert is_inline and weights <= size < weights + 2000
    external = tmp_path / "ex.onnx"
    save_external(model, external)
    size, is_inline = weights_on_disk(external)
    assert not is_inline and weights <= size < weights + 2000


def test_stage_needs_follow_the_table() -> None:
    w = 4 * GiB
    inline = stage_needs(w, inline=True, kept=0.5)
    assert inline["reading"] == BASE + 2 * w
    assert inline["verifying"] == BASE + w + 2 * (w // 2) + MIN_GROUP
    external = stage_needs(w, inline=False, kept=0.5, calibrated=True)  # over 1 GiB: calibration shares
    assert external["reading"] == BASE + w and external["calibrating"] == BASE + w + w // 2 + MIN_GROUP
    small = stage_needs(GiB // 4, inline=True, kept=1.0, calibrated=True)  # under: on a copy
    assert small["calibrating"] == BASE + 3 * (GiB // 4) + MIN_GROUP


def test_a_tight_budget_shrinks_the_activation_groups(model_path: Path) -> None:
    weights, _ = weights_on_disk(model_path)
    roomy = plan_memory(model_path, 64)
    tight = plan_memory(model_path, (BASE + 3 * weights + MIN_GROUP + 2**20) / GiB)
    assert roomy.capture_group == CHUNK_BYTES
    assert MIN_GROUP <= tight.capture_group < CHUNK_BYTES
    assert tight.hessians <= roomy.hessians


def test_a_budget_that_fits_prunes_the_same_model(model_path: Path) -> None:
    free = onnxprune.prune(model_path, flops=0.5)
    budget = onnxprune.prune(model_path, flops=0.5, max_memory=0.6)
    assert budget.pruned == free.pruned
    for name, values in initializers(free.model).items():
        np.testing.assert_array_equal(initializers(budget.model)[name], values)


def test_the_api_refuses_a_budget_too_small(model_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--max-memory 0.2 is too little: \w+"):
        onnxprune.prune(model_path, flops=0.5, max_memory=0.2)


def test_the_cli_refuses_up_front_naming_the_stage(model_path: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    proc = cli(model_path, "--flops", "0.5", "--max-memory", "0.2", cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "too little" in line and "needs about" in line and "give --max-memory" in line
    assert any(stage in line for stage in ("reading", "capturing shapes", "rewriting", "verifying"))
    assert snapshot(tmp_path) == before  # nothing written, the input untouched


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "lots"])
def test_the_cli_refuses_a_budget_that_is_no_size(model_path: Path, tmp_path: Path, value: str) -> None:
    proc = cli(model_path, "--flops", "0.5", f"--max-memory={value}", cwd=tmp_path)
    assert proc.returncode == 2 and "--max-memory" in proc.stderr and "Traceback" not in proc.stderr


def test_a_flops_target_sizes_the_pruned_copy_with_room_for_more_params() -> None:
    assert kept_share(params=0.6) == 0.6
    assert kept_share(flops=0.5) == pytest.approx(0.575)  # params kept may exceed FLOPs kept
    assert kept_share(flops=0.95) == 1.0 and kept_share() == 1.0


@pytest.mark.parametrize("kind", ["missing", "folder", "garbage", "fifo"])
def test_a_budget_never_changes_how_bad_input_is_reported(tmp_path: Path, kind: str) -> None:
    # the budget is checked before reading: that check must not read a FIFO or trip over a bad file
    path = tmp_path / "m.onnx"
    if kind == "folder":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"not a model at all")
    elif kind == "fifo":
        os.mkfifo(path)
    proc = cli(path, "--flops", "0.5", "--max-memory", "4", cwd=tmp_path)
    line = assert_one_line_error(proc, 2 if kind in ("missing", "folder") else 1)
    assert str(path.name) in line and "internal error" not in line
