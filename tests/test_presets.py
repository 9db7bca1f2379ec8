"""Preprocessing presets for the families people deploy (onnxprune/presets/*.json): yolo
(letterbox), ppocr-det (BGR, PaddleOCR's mean/std, multiples of 32) and ppocr-rec (height 48,
right padding after normalising), on real image files, and the new preset fields' validation.

A pure red image shows the channel order: red lands in channel 0 for RGB, channel 2 for BGR.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxprune.calib.data import CalibrationSet, load_calibration, load_preset, preset_names
from onnxprune.errors import UsageError
from onnxprune.graph.sessions import make_session
from onnxprune.graph.shapes import InputSpec, input_specs
from onnxprune.options import CalibOptions, help_of

RED = (255, 0, 0)
PAD_YOLO = np.float32(114 / 255)
# PaddleOCR applies ImageNet's mean/std list to its BGR array: 0.485/0.229 to blue, 0.406/0.225 to red
DET_BLUE = (0.0 - 0.485) / 0.229
DET_RED = (1.0 - 0.406) / 0.225


def _spec(shape: list, size: tuple[int, ...] | None = None) -> InputSpec:
    """The input of a one-Identity model with ``shape`` (None: a free dim), sized like --input-shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return replace(input_specs(model)[0], size=size)


def _photo(folder: Path, name: str, width: int, height: int, colour=RED) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    Image.new("RGB", (width, height), colour).save(path)
    return path


def _one(folder: Path, spec: InputSpec, preprocess: str) -> np.ndarray:
    calib = load_calibration(folder, [spec], preprocess=preprocess)
    assert calib.images and len(calib) == 1
    return calib.samples["x"][0]


def test_the_presets_are_package_data_and_listed_in_the_help():
    assert {"imagenet", "none", "yolo", "ppocr-det", "ppocr-rec"} <= set(preset_names())
    for name in ("yolo", "ppocr-det", "ppocr-rec"):
        assert load_preset(name).name == name
    preprocess = next(f for f in CalibOptions.__dataclass_fields__.values() if f.name == "preprocess")
    assert "imagenet, none, ppocr-det, ppocr-rec, yolo" in help_of(preprocess)


# ---------------------------------------------------------------------------------------------
# yolo: letterbox, RGB, 0-1, grey 114 padding


def test_yolo_letterboxes_a_wide_image_with_grey_bars_above_and_below(tmp_path):
    _photo(tmp_path / "p", "wide.png", 40, 20)  # ratio 0.8 -> 32x16, 8 rows of padding on each side
    x = _one(tmp_path / "p", _spec([None, 3, 32, 32]), "yolo")
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 8:24, :], np.broadcast_to(np.array([1, 0, 0], np.float32)[:, None, None],
                                                              (3, 16, 32)), atol=1e-6)
    np.testing.assert_allclose(x[:, :8], PAD_YOLO, atol=1e-6)
    np.testing.assert_allclose(x[:, 24:], PAD_YOLO, atol=1e-6)


def test_yolo_letterboxes_a_tall_image_centred_with_bars_left_and_right(tmp_path):
    _photo(tmp_path / "p", "tall.png", 10, 40, colour=(0, 0, 255))  # ratio 0.8 -> 8x32, 12 columns each side
    x = _one(tmp_path / "p", _spec([1, 3, 32, 32]), "yolo")
    np.testing.assert_allclose(x[2, :, 12:20], 1.0, atol=1e-6)  # blue, RGB: channel 2
    np.testing.assert_allclose(x[:2, :, 12:20], 0.0, atol=1e-6)
    np.testing.assert_allclose(x[:, :, :12], PAD_YOLO, atol=1e-6)
    np.testing.assert_allclose(x[:, :, 20:], PAD_YOLO, atol=1e-6)


def test_yolo_enlarges_a_small_image_and_takes_640_for_free_dims(tmp_path):
    _photo(tmp_path / "p", "small.png", 8, 8)
    x = _one(tmp_path / "p", _spec(["N", 3, "H", "W"]), "yolo")
    assert x.shape == (3, 640, 640)
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)  # no padding: a square image fills the square
    nhwc = _one(tmp_path / "p", _spec([1, 16, 24, 3]), "yolo")
    assert nhwc.shape == (16, 24, 3)
    np.testing.assert_allclose(nhwc[:, 4:20, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(nhwc[:, :4], PAD_YOLO, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ppocr-det: the whole image at the input size (multiples of 32), BGR, PaddleOCR's mean/std


def test_ppocr_det_is_bgr_with_paddleocrs_mean_and_std_at_the_given_size(tmp_path):
    _photo(tmp_path / "p", "text.png", 50, 30)
    x = _one(tmp_path / "p", _spec(["N", 3, "H", "W"], size=(1, 3, 64, 96)), "ppocr-det")
    assert x.shape == (3, 64, 96) and x.dtype == np.float32  # stretched to the whole input, no padding
    np.testing.assert_allclose(x[0], DET_BLUE, atol=1e-5)
    np.testing.assert_allclose(x[2], DET_RED, atol=1e-5)
    assert _one(tmp_path / "p", _spec(["N", 3, "H", "W"]), "ppocr-det").shape == (3, 736, 736)


def test_ppocr_det_refuses_a_size_that_is_not_a_multiple_of_32(tmp_path):
    _photo(tmp_path / "p", "text.png", 50, 30)
    with pytest.raises(UsageError, match="multiples of 32.*50x96") as err:
        load_calibration(tmp_path / "p", [_spec(["N", 3, "H", "W"], size=(1, 3, 50, 96))], preprocess="ppocr-det")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# ppocr-rec: height 48, width by the ratio, right padding with 0 after (x/255 - 0.5)/0.5, BGR


def test_ppocr_rec_keeps_the_ratio_and_pads_the_right_with_zero(tmp_path):
    _photo(tmp_path / "p", "word.png", 100, 50)  # ratio 2 -> 96 columns of text, 224 of padding
    x = _one(tmp_path / "p", _spec(["N", 3, "?", "W"]), "ppocr-rec")
    assert x.shape == (3, 48, 320) and x.dtype == np.float32
    np.testing.assert_allclose(x[2, :, :96], 1.0, atol=1e-6)  # red is channel 2 in BGR: (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[:2, :, :96], -1.0, atol=1e-6)
    assert np.all(x[:, :, 96:] == 0.0)  # padded after normalising: 0, not the value of a black pixel (-1)


def test_ppocr_rec_takes_the_width_of_the_input_shape_and_clips_long_lines(tmp_path):
    _photo(tmp_path / "p", "line.png", 1000, 50)  # would be 960 wide: clipped to the input width
    x = _one(tmp_path / "p", _spec(["N", 3, 48, "W"], size=(1, 3, 48, 160)), "ppocr-rec")
    assert x.shape == (3, 48, 160)
    np.testing.assert_allclose(x[2], 1.0, atol=1e-6)  # no padding left


PPOCR = "rapidocr_onnxruntime"


@pytest.mark.skipif(importlib.util.find_spec(PPOCR) is None, reason="tools/setup.sh installs rapidocr_onnxruntime")
def test_the_ppocr_presets_feed_the_real_pp_ocrv4_models(tmp_path):
    """The presets' samples fit the real models' inputs (free dims sized as the presets say) and
    run to finite outputs."""
    _photo(tmp_path / "p", "a.png", 120, 40, colour=(20, 20, 20))
    _photo(tmp_path / "p", "b.png", 60, 60, colour=(240, 240, 240))
    models = Path(importlib.util.find_spec(PPOCR).submodule_search_locations[0]) / "models"  # no import: needs cv2
    for name, preset, size in (("ch_PP-OCRv4_rec_infer.onnx", "ppocr-rec", None),
                               ("ch_PP-OCRv4_det_infer.onnx", "ppocr-det", (1, 3, 64, 96))):
        model = onnx.load(str(models / name))
        spec = replace(input_specs(model)[0], size=size)
        calib = load_calibration(tmp_path / "p", [spec], preprocess=preset)
        assert len(calib) == 2
        out = make_session(model).run(None, calib.samples)[0]
        assert len(out) == 2 and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# the preset fields: one line for each mistake


@pytest.mark.parametrize(("fields", "message"), [
    ({"fit": "cover"}, "'fit' must be one of crop, letterbox, pad_right"),
    ({"fit": "letterbox", "crop": 224}, "'resize' and 'crop' apply to \"fit\": \"crop\""),
    ({"fit": "pad_right", "resize": 48}, "'resize' and 'crop' apply"),
    ({"pad_value": 114}, "'pad_value' and 'pad_space' apply to \"fit\": \"letterbox\""),
    ({"fit": "letterbox", "pad_space": "raw"}, "'pad_space' must be one of pixel, normalised"),
    ({"fit": "letterbox", "pad_value": [1, 2]}, "'pad_value' must be a number or a list of 1 or 3"),
    ({"size": [48, 0]}, "'size' must be a positive integer"),
    ({"size": [1, 2, 3]}, "'size' must be an integer, \\[height, width\\]"),
    ({"size_multiple": 0}, "'size_multiple' must be a positive integer"),
])
def test_a_bad_preset_field_is_one_line(tmp_path, fields, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(fields))
    with pytest.raises(UsageError, match=message) as err:
        load_preset(path)
    assert "\n" not in str(err.value) and "mine.json" in str(err.value)


def test_a_user_letterbox_preset_pads_in_normalised_space_per_channel(tmp_path):
    """pad_value per channel (RGB order) after normalising, with BGR output: the pad is reversed too."""
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"fit": "letterbox", "size": 16, "pad_value": [1, 2, 3], "pad_space": "normalised",
                                "channel_order": "BGR"}))
    _photo(tmp_path / "p", "wide.png", 32, 16)
    x = _one(tmp_path / "p", _spec([1, 3, "H", "W"]), str(path))
    assert x.shape == (3, 16, 16)
    np.testing.assert_allclose(x[:, 0, 0], [3, 2, 1])  # BGR order of the pad
    np.testing.assert_allclose(x[:, 8, 8], [0, 0, 255])  # red, raw pixels (no scale), BGR


def test_subsets_and_presets_keep_images_as_their_own_sources(tmp_path):
    for i in range(4):
        _photo(tmp_path / "p", f"{i}.png", 20, 20, colour=(i * 40, 0, 0))
    calib = load_calibration(tmp_path / "p", [_spec([1, 3, 16, 16])], preprocess="yolo")
    assert isinstance(calib, CalibrationSet) and sorted(calib.source_ids.tolist()) == [0, 1, 2, 3]
    red = np.rint(calib.samples["x"][:, 0, 0, 0] * 255 / 40).astype(int)
    assert red.tolist() == calib.source_ids.tolist()  # the id is the file's index in path order
