"""Fidelity measured the way each task is judged (issue 20, part 3): classify, dense maps, detection
boxes and generic outputs; the task found from the dense model's outputs or given with --task;
shown by its own measure in the summary, the JSON, the HTML and a sweep, never as top-1 agreement
for a model that is no classifier.

Real models: a tiny YOLO-style detector built in torch and exported (conftest.tiny_yolo), the real
PP-OCRv4 text detector from rapidocr_onnxruntime's wheel (conftest.ppocr_det) at 96x128 on text
rendered with Pillow, and a small classifier (helpers.sweep_model).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import USAGE, assert_one_line_error, cli, ort_run, sweep_model
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console

from onnxprune import api
from onnxprune.calib.fidelity import Fidelity, Meter, Task, compare, fidelity, parse_task, task_of
from onnxprune.errors import UsageError
from onnxprune.options import CalibOptions
from onnxprune.report.html import prune_html, sweep_html
from onnxprune.report.text import print_summary
from onnxprune.sweep import sweep

OCR_SHAPE = (1, 3, 96, 128)


def summary_text(result) -> str:
    console = Console(record=True, width=200, color_system=None)
    print_summary(console, result)
    return console.export_text()


def text_images(count: int) -> np.ndarray:
    """Dark words on a paper tone, preprocessed as PP-OCR det wants (BGR, ImageNet mean and std)."""
    words = ["open", "total", "price", "12.50", "date", "2024", "sale", "exit", "cafe", "hotel"]
    out = []
    for i in range(count):
        rng = np.random.default_rng(i)
        image = Image.new("RGB", OCR_SHAPE[:1:-1], (235, 230, 220))
        draw = ImageDraw.Draw(image)
        for line in range(3):
            font = ImageFont.load_default(size=int(rng.integers(12, 20)))
            draw.text((int(rng.integers(2, 60)), 8 + 28 * line + int(rng.integers(0, 6))),
                      " ".join(rng.choice(words, 2)), fill=(20, 20, 20), font=font)
        rgb = (np.asarray(image, dtype=np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        out.append(rgb[..., ::-1].transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def classifier_calib(count: int = 8) -> np.ndarray:
    """Random samples for helpers.sweep_model (a [1, 10] classifier)."""
    dims = [d.dim_value for d in sweep_model().graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal((count, *dims[1:])).astype(np.float32)


def random_images(count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


# --- the measures on hand-made outputs -----------------------------------------------------------


def test_iou_of_identical_maps_is_one_and_of_disjoint_maps_is_zero():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 1, 16, 16))
    assert compare("dense", [maps], [maps]) == {"iou": 1.0, "mae": 0.0, "threshold": pytest.approx(0.5, abs=0.1)}
    left, right = np.zeros((2, 1, 16, 16)), np.zeros((2, 1, 16, 16))
    left[..., :8], right[..., 8:] = 0.9, 0.9
    for task in ("dense", "dense:0.3"):
        got = compare(task, [left], [right])
        assert got["iou"] == 0.0 and got["mae"] == pytest.approx(0.9), (task, got)
    assert compare("dense:0.3", [left], [right])["threshold"] == 0.3
    # half the lit pixels shared: IoU 1/3
    assert compare("dense:0.5", [left], [np.roll(left, 4, axis=-1)])["iou"] == pytest.approx(1 / 3)
    # segmentation logits: argmax over channels, IoU per class, mean over classes
    seg = rng.standard_normal((2, 4, 8, 8))
    assert compare("dense", [seg], [seg])["iou"] == 1.0
    assert compare("dense", [seg], [seg[:, [1, 2, 3, 0]]])["iou"] == 0.0  # every pixel's class changed
    # an empty probability map (all near 0) is not cut inside its noise: both empty, IoU 1
    empty = rng.random((2, 1, 8, 8)) * 1e-9
    assert compare("dense", [empty], [empty[::-1]])["iou"] == 1.0


DENSE_BOXES = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.8, 1], [50, 50, 60, 60, 0.7, 2],
                        [70, 70, 80, 80, 0.1, 0]])  # the last scores below 0.25: not a box
PRUNED_BOXES = np.array([[0, 0, 10, 10, 0.95, 0],  # the same box
                         [22, 20, 42, 40, 0.6, 1],  # shifted 2 px: IoU 360 / 440
                         [50, 50, 60, 60, 0.7, 1],  # the right place, the wrong class
                         [100, 100, 110, 110, 0.6, 0],  # nothing there in the dense model
                         [0, 0, 10, 10, 0.2, 1]])  # under the threshold


def as_head(rows: np.ndarray, classes: int = 3, anchors: int = 32) -> np.ndarray:
    """Boxes (x1, y1, x2, y2, score, class) as a YOLO-style head [1, 4 + K, A]: one anchor each,
    the others empty."""
    head = np.zeros((1, 4 + classes, anchors))
    for a, (x1, y1, x2, y2, score, cls) in enumerate(rows):
        head[0, :4, a] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        head[0, 4 + int(cls), a] = score
    return head


def test_detect_matches_hand_made_boxes_by_iou_within_a_class():
    want = {"f1": 4 / 7, "recall": 2 / 3, "precision": 2 / 4, "matched_iou": (1 + 360 / 440) / 2,
            "dense_boxes": 3, "pruned_boxes": 4}
    nms_rows = compare("detect", [DENSE_BOXES[None]], [PRUNED_BOXES[None]])
    assert nms_rows == pytest.approx(want)
    assert compare("detect", [as_head(DENSE_BOXES)], [as_head(PRUNED_BOXES)]) == pytest.approx(want)
    batch_first = [np.c_[np.zeros(len(r)), r[:, :4], r[:, 5], r[:, 4]] for r in (DENSE_BOXES, PRUNED_BOXES)]
    assert compare("detect", batch_first[:1], batch_first[1:], samples=1) == pytest.approx(want)  # [D, 7]
    # a box shifted past IoU 0.5 is no match; the same boxes are all matches
    far = DENSE_BOXES.copy()
    far[:, [0, 2]] += 6  # 4 of 10 px overlap: IoU 0.25 for the small boxes
    assert compare("detect", [DENSE_BOXES[None]], [far[None]])["recall"] == pytest.approx(1 / 3)
    assert compare("detect", [as_head(DENSE_BOXES)], [as_head(DENSE_BOXES)])["f1"] == 1.0
    # no boxes at all in either model: they agree
    assert compare("detect", [np.zeros((1, 5, 6))], [np.zeros((1, 5, 6))])["f1"] == 1.0


def test_a_raw_head_keeps_one_of_overlapping_boxes_of_a_class():
    """The head's anchors overlap: per-class NMS leaves one box where three anchors see one object."""
    rows = np.array([[0, 0, 10, 10, 0.9, 0], [1, 0, 11, 10, 0.8, 0], [0, 1, 10, 11, 0.7, 0], [0, 0, 10, 10, 0.6, 1]])
    got = compare("detect", [as_head(rows)], [as_head(rows[:1])])
    assert got["dense_boxes"] == 2 and got["recall"] == 0.5 and got["precision"] == 1.0


def test_batches_add_up_to_the_whole():
    """Meter pools over batches: two halves give what one batch gives."""
    rng = np.random.default_rng(1)
    for task, a, b in (("dense:0.5", rng.random((4, 1, 8, 8)), rng.random((4, 1, 8, 8))),
                       ("detect", np.stack([as_head(DENSE_BOXES)[0]] * 4), np.stack([as_head(PRUNED_BOXES)[0]] * 4)),
                       ("classify", rng.standard_normal((4, 10)), rng.standard_normal((4, 10))),
                       ("generic", rng.standard_normal((4, 3)), rng.standard_normal((4, 3)))):
        meter = Meter(task)
        meter.add([a[:2]], [b[:2]])
        meter.add([a[2:]], [b[2:]])
        assert meter.metrics() == pytest.approx(compare(task, [a], [b])), task
        assert meter.samples == 4


def test_each_task_has_one_score_and_one_loss():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((8, 10))
    same = Fidelity(8, "classify", compare("classify", [logits], [logits]))
    assert (same.score, same.loss, same.top1_agreement, same.kl) == (1.0, pytest.approx(0.0, abs=1e-12), 1.0,
                                                                      pytest.approx(0.0, abs=1e-12))
    assert same.headline() == "top-1 agreement 100.0%"
    boxes = Fidelity(1, "detect", compare("detect", [DENSE_BOXES[None]], [PRUNED_BOXES[None]]))
    assert boxes.score == pytest.approx(4 / 7) and boxes.loss == pytest.approx(3 / 7)
    assert boxes.top1_agreement is None and boxes.kl is None and "top-1" not in boxes.describe()
    generic = Fidelity(8, "generic", compare("generic", [logits, logits[:, :2]], [2 * logits, logits[:, :2]]))
    assert generic.score == pytest.approx(1.0) and generic.loss == pytest.approx(0.5)  # mean of 1.0 and 0.0


def test_task_of_reads_shapes_and_values():
    rng = np.random.default_rng(3)
    assert task_of(None, [[1, 10]]).name == "classify"
    assert task_of(None, [[1, 1000, 1, 1]]).name == "classify"  # a squeezenet-like [N, C, 1, 1]
    assert task_of(None, [[1, 1, 96, 128]]).name == "dense"
    assert task_of(None, [[1, 21, 64, 64]]).name == "dense"
    assert task_of(None, [[1, 84, 8400]]).name == "detect"  # YOLOv8 at 640
    assert task_of(None, [[1, 300, 6]]).name == "detect"
    assert task_of(None, [[1, 197, 768]]).name == "generic"  # a ViT's tokens
    assert task_of(None, [[1]]).name == "generic"
    # a text recogniser's per-step softmax [N, T, C] has a head's shape, but not its values
    steps = rng.dirichlet(np.ones(100), size=(1, 10))
    assert task_of(None, [[1, 10, 100]]).name == "detect" and task_of(None, outputs=[steps]).name == "generic"
    # [D, 7] rows are boxes when their values say so, else 7 class scores
    assert task_of(None, outputs=[np.c_[np.zeros(3), DENSE_BOXES[:3]]]).name == "detect"
    assert task_of(None, outputs=[rng.standard_normal((3, 7))]).name == "classify"
    assert "YOLO-style head" in task_of(None, [[1, 84, 8400]]).reason


def test_task_option_parses_and_refuses_in_one_line(tmp_path):
    assert parse_task("dense:0.3") == Task("dense", 0.3) and str(parse_task("dense:0.3")) == "dense:0.3"
    assert parse_task("auto") is None and parse_task("detect").name == "detect"
    CalibOptions(task="dense:0.3").validate()
    for bad in ("dense:1.5", "dense:0", "dense:x", "boxes", "classify:0.3"):
        with pytest.raises(UsageError) as err:
            CalibOptions(task=bad).validate()
        assert "\n" not in str(err.value) and "--task" in str(err.value), bad
    with pytest.raises(UsageError, match="threshold in"):
        api.prune(sweep_model(), flops=0.5, task="dense:2")
    onnx.save(sweep_model(), tmp_path / "m.onnx")
    line = assert_one_line_error(cli("m.onnx", "--flops", "0.5", "--task", "dense:1.5", cwd=tmp_path), USAGE)
    assert "dense:THR needs a threshold in (0, 1)" in line


# --- real models -------------------------------------------------------------------------------


def test_task_of_finds_each_real_model(tiny_yolo, ppocr_det):
    yolo = onnx.load(str(tiny_yolo))
    out = ort_run(yolo, {"images": random_images(4)})
    assert out[0].shape == (4, 7, 64)
    assert task_of(yolo).name == "generic"  # the exporter declares every dim free: shapes are needed
    assert task_of(yolo, {"output0": (1, 7, 64)}).name == "detect"  # captured ones
    assert task_of(yolo, outputs=out).name == "detect"
    assert compare("auto", out, out)["dense_boxes"] > 0  # the bias gives the dense model boxes to find
    ocr = onnx.load(str(ppocr_det))
    maps = ort_run(ocr, {"x": text_images(2)})
    found = task_of(ocr, outputs=maps)
    assert found.name == "dense" and "one-channel map" in found.reason
    assert task_of(sweep_model()).name == "classify"


def test_a_pruned_detector_is_measured_by_its_boxes(tiny_yolo, tmp_path):
    """Summary and JSON of a pruned detector: the task, its reason, box F1, recall, precision and
    matched IoU; no top-1 agreement anywhere."""
    np.save(tmp_path / "calib.npy", random_images(24))
    proc = cli(tiny_yolo, "--flops", "0.6", "--calib", "calib.npy", "--report", "r.json", "-o", "p.onnx",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "box F1" in proc.stdout and "recall" in proc.stdout and "measured as detect" in proc.stdout
    assert "top-1" not in proc.stdout + proc.stderr
    fid = json.loads((tmp_path / "r.json").read_text())["fidelity"]
    assert fid["task"] == "detect" and fid["score_name"] == "f1" and "top1_agreement" not in fid
    assert set(fid["metrics"]) == {"f1", "recall", "precision", "matched_iou", "dense_boxes", "pruned_boxes"}
    assert fid["metrics"]["dense_boxes"] > 0 and 0 <= fid["score"] <= 1
    # the dense model against itself: every box found again
    dense = onnx.load(str(tiny_yolo))
    same = fidelity(dense, dense, {"images": random_images(6, seed=5)})
    assert same.metrics["f1"] == same.metrics["recall"] == same.metrics["matched_iou"] == 1.0


def test_task_overrides_what_is_found(tiny_yolo):
    calib = random_images(16)
    result = api.prune(str(tiny_yolo), flops=0.7, calib=calib, task="generic")
    assert result.fidelity.task == "generic" and set(result.fidelity.metrics) == {"cosine", "rel_error"}
    assert result.fidelity.reason == "given with --task"
    classifier = api.prune(sweep_model(), flops=0.5, calib=classifier_calib(), task="generic")
    assert classifier.fidelity.task == "generic" and "top1_agreement" not in classifier.to_dict()["fidelity"]
    assert "top-1" not in summary_text(classifier)


def test_a_classifier_keeps_its_measures_and_keys():
    result = api.prune(sweep_model(), flops=0.5, calib=classifier_calib())
    f = result.fidelity
    assert f.task == "classify" and f.score == f.top1_agreement and f.loss == f.kl
    fid = result.to_dict()["fidelity"]
    assert {"top1_agreement", "cosine", "kl", "task", "metrics", "score"} <= set(fid)
    assert list(fid["metrics"]) == ["top1_agreement", "top5_agreement", "kl", "cosine"]
    text = summary_text(result)
    assert "held-out samples: top-1 agreement" in text and "measured as classify" in text


def test_pruned_text_detector_reports_the_map_iou(ppocr_det):
    """The real PP-OCRv4 det at 96x128 on rendered text: IoU of the thresholded probability maps and
    their mean absolute error, in the summary, the JSON and the HTML; dense:0.3 sets the threshold."""
    images = text_images(8)
    result = api.prune(str(ppocr_det), flops=0.8, calib=images, input_shapes={"x": OCR_SHAPE}, reconstruct=False)
    f = result.fidelity
    assert f.task == "dense" and 0 <= f.score <= 1 and f.loss == f.metrics["mae"]
    assert 0.1 <= f.metrics["threshold"] <= 0.9
    fid = result.to_dict()["fidelity"]
    assert fid["score_name"] == "iou" and "top1_agreement" not in fid and "kl" not in fid
    text, page = summary_text(result), prune_html(result)
    assert "IoU" in text and "mean abs error" in text and "top-1" not in text
    assert "IoU" in page and "top-1" not in page
    dense = onnx.load(str(ppocr_det))
    fixed = fidelity(dense, result.model, {"x": images[-2:]}, task="dense:0.3")
    assert fixed.metrics["threshold"] == 0.3 and fixed.task == "dense"
    assert fidelity(dense, dense, {"x": images[-2:]}).score == 1.0


def test_a_detector_sweep_shows_its_measure(tiny_yolo, tmp_path):
    result = sweep(str(tiny_yolo), flops=[0.7], calib=random_images(16))
    assert result.task == "detect" and result.points[0].score == result.points[0].metrics["f1"]
    assert result.points[0].top1_agreement is None
    data = result.to_dict()
    assert data["fidelity"]["task"] == "detect" and "f1" in data["points"][0]["metrics"]
    page = sweep_html(result)
    assert "box F1" in page and "top-1" not in page
    result.to_csv(tmp_path / "s.csv")
    assert "score" in (tmp_path / "s.csv").read_text().splitlines()[0]
