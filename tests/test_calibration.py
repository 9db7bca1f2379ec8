"""Calibration data: image folders, .npy/.npz files, presets, layouts, splits and every error."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxprune.calib.data import CalibrationSet, load_calibration, load_preset, preset_names
from onnxprune.errors import UsageError
from onnxprune.graph.shapes import InputSpec, graph_inputs, input_specs, resolve_input_shapes

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# tiny real models


def _model(inputs: list[tuple[str, int, list]], with_initializer: bool = False) -> onnx.ModelProto:
    """One Identity per input (plus an unused initializer also listed as a graph input)."""
    graph_inputs = [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs]
    outputs = [helper.make_tensor_value_info(f"{name}_out", dtype, shape) for name, dtype, shape in inputs]
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
    initializers = []
    if with_initializer:
        initializers.append(helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0]))
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]))
    graph = helper.make_graph(nodes, "g", graph_inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _specs(*inputs: tuple[str, int, list]) -> list[InputSpec]:
    return input_specs(_model(list(inputs)))


@pytest.fixture
def nchw() -> list[InputSpec]:
    return _specs(("image", TensorProto.FLOAT, ["batch", 3, 32, 32]))


@pytest.fixture
def nhwc() -> list[InputSpec]:
    return _specs(("pixels", TensorProto.FLOAT, [None, 16, 16, 3]))


@pytest.fixture
def two_inputs() -> list[InputSpec]:
    return _specs(("image", TensorProto.FLOAT, ["N", 3, 8, 8]), ("meta", TensorProto.FLOAT, ["N", 4]))


# ---------------------------------------------------------------------------------------------
# real files


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]


def _save(path, colour, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    """Five images with distinct colours: PNG, JPG, nested folder, grayscale, RGBA."""
    root = tmp_path / "photos"
    _save(root / "a.png", COLOURS[0])
    _save(root / "b.PNG", COLOURS[1])
    _save(root / "nested" / "deeper" / "c.png", COLOURS[2], size=(30, 50))
    _save(root / "nested" / "gray.png", 128, mode="L")
    _save(root / "rgba.png", (200, 100, 50, 7), mode="RGBA")
    _save(root / "photo.jpg", (10, 20, 30))
    (root / "notes.txt").write_text("not an image")
    _save(root / ".hidden.png", (1, 2, 3))  # hidden files are skipped
    return root


def _imagenet(rgb) -> np.ndarray:
    return (np.array(rgb, dtype=np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD


# ---------------------------------------------------------------------------------------------
# input specs


def test_input_specs_skip_initializers_and_keep_symbolic_dims():
    model = _model([("x", TensorProto.FLOAT, ["batch", 3, None, 224]), ("ids", TensorProto.INT64, [2, 5])],
                   with_initializer=True)
    specs = input_specs(model)
    assert [s.name for s in specs] == ["x", "ids"]
    assert specs[0].shape == ("batch", 3, None, 224)
    assert specs[0].dtype == np.float32
    assert specs[1].shape == (2, 5)
    assert specs[1].dtype == np.int64


def test_the_sizes_and_calibration_read_the_inputs_from_one_description():
    # graph.shapes.input_specs is the one reading of graph.input: --input-shape's checks and sizes
    # see the same inputs and dims as calibration, including one whose rank the model leaves unknown
    model = _model([("x", TensorProto.FLOAT, ["batch", 3, None, 224]), ("u", TensorProto.INT64, [1, 7])],
                   with_initializer=True)
    model.graph.input[1].type.tensor_type.ClearField("shape")  # onnxruntime runs it; onnx.checker wants a shape
    x, u = input_specs(model)
    assert (x.dims, x.ranked, u.dims, u.ranked, u.dtype) == (("batch", 3, None, 224), True, None, False, np.int64)
    assert graph_inputs(model) == {"x": ("batch", 3, None, 224), "u": None}
    assert resolve_input_shapes(model, {"x": (1, 3, 64, 224), "u": (1, 7)}) == {"x": (1, 3, 64, 224), "u": (1, 7)}
    calib = load_calibration("random", [replace(x, size=(1, 3, 64, 224))], count=2)
    assert calib.samples["x"].shape == (2, 3, 64, 224)


# ---------------------------------------------------------------------------------------------
# images


def test_image_folder_shapes_dtype_and_description(photos, nchw):
    calib = load_calibration(photos, nchw, count=100)
    assert isinstance(calib, CalibrationSet)
    x = calib.samples["image"]
    assert x.shape == (6, 3, 32, 32)
    assert x.dtype == np.float32
    assert len(calib) == 6
    assert "6 images from" in calib.description
    assert "imagenet preprocessing" in calib.description
    assert "NCHW 32x32" in calib.description


def test_imagenet_normalisation_on_constant_images(photos, nchw):
    x = load_calibration(photos, nchw, count=100).samples["image"]
    means = {tuple(np.round(x[i].mean(axis=(1, 2)), 3)) for i in range(len(x))}
    for i in range(len(x)):  # every image is one flat colour, so every pixel of a channel is equal
        assert np.allclose(x[i], x[i][:, :1, :1], atol=1e-4)
    red = np.array([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225], dtype=np.float32)
    assert np.allclose(_imagenet((255, 0, 0)), red)
    expected = [_imagenet(c) for c in COLOURS[:3]] + [_imagenet((200, 100, 50))]  # RGBA drops alpha
    expected.append(_imagenet((128, 128, 128)))  # grayscale becomes RGB
    for want in expected:
        assert any(np.allclose(want, np.array(m), atol=2e-3) for m in means), want
    jpg = _imagenet((10, 20, 30))  # JPEG is lossy: close, not exact
    assert any(np.allclose(jpg, np.array(m), atol=0.05) for m in means)


def test_same_seed_same_samples_and_count_capping(photos, nchw):
    a = load_calibration(photos, nchw, count=3, seed=7).samples["image"]
    b = load_calibration(photos, nchw, count=3, seed=7).samples["image"]
    assert a.shape == (3, 3, 32, 32)
    assert np.array_equal(a, b)
    picks = {tuple(np.round(load_calibration(photos, nchw, count=3, seed=s).samples["image"][:, :, 0, 0].ravel(), 3))
             for s in range(6)}
    assert len(picks) > 1  # the seed changes which images are taken


def test_nhwc_layout_inferred(photos, nhwc):
    calib = load_calibration(photos, nhwc, count=2, seed=1)
    x = calib.samples["pixels"]
    assert x.shape == (2, 16, 16, 3)
    assert "NHWC 16x16" in calib.description
    nchw = load_calibration(photos, _specs(("p", TensorProto.FLOAT, [1, 3, 16, 16])), count=2, seed=1).samples["p"]
    assert np.allclose(x, nchw.transpose(0, 2, 3, 1))


def test_dynamic_size_takes_preset_crop(photos):
    specs = _specs(("x", TensorProto.FLOAT, ["N", 3, "H", "W"]))
    calib = load_calibration(photos, specs, count=1)
    assert calib.samples["x"].shape == (1, 3, 224, 224)
    assert "224x224" in calib.description


def test_centre_crop_keeps_the_middle(tmp_path, nchw):
    stripes = np.zeros((100, 300, 3), dtype=np.uint8)
    stripes[:, :100] = (255, 0, 0)
    stripes[:, 100:200] = (0, 255, 0)
    stripes[:, 200:] = (0, 0, 255)
    (tmp_path / "s").mkdir()
    Image.fromarray(stripes).save(tmp_path / "s" / "stripes.png")
    x = load_calibration(tmp_path / "s", nchw).samples["image"][0]
    assert np.allclose(x, _imagenet((0, 255, 0))[:, None, None], atol=1e-3)
    # none: the whole image squashed to 32x32, so all three stripes are there
    y = load_calibration(tmp_path / "s", nchw, preprocess="none").samples["image"][0]
    assert y[0, 16, 1] == 255 and y[1, 16, 16] == 255 and y[2, 16, 30] == 255


def test_user_preset_bgr_and_grayscale_model(photos, tmp_path):
    preset = tmp_path / "caffe.json"
    preset.write_text(json.dumps({"resize": 40, "crop": 32, "mean": [100, 50, 0], "std": 2, "scale": 1,
                                  "channel_order": "BGR", "layout": "NCHW"}))
    red = tmp_path / "red"
    _save(red / "r.png", (255, 0, 0))
    specs = _specs(("x", TensorProto.FLOAT, [1, 3, 32, 32]))
    calib = load_calibration(red, specs, preprocess=str(preset))
    assert np.allclose(calib.samples["x"][0, :, 0, 0], [(0 - 0) / 2, (0 - 50) / 2, (255 - 100) / 2])  # B, G, R
    assert "caffe.json preprocessing" in calib.description and "BGR" in calib.description
    gray = load_calibration(red, _specs(("g", TensorProto.FLOAT, [1, 1, 8, 8])), preprocess="imagenet")
    g = gray.samples["g"]
    assert g.shape == (1, 1, 8, 8)
    luma = round(255 * 299 / 1000)  # Pillow's L = R * 299/1000 + ...
    assert np.allclose(g, (luma / 255 - IMAGENET_MEAN.mean()) / IMAGENET_STD.mean(), atol=1e-4)


def test_integer_input_gets_raw_pixels(photos):
    specs = _specs(("u8", TensorProto.UINT8, [1, 8, 8, 3]))
    x = load_calibration(photos / "nested", specs, preprocess="none").samples["u8"]
    assert x.dtype == np.uint8 and x.shape == (2, 8, 8, 3)
    assert {tuple(x[i, 0, 0]) for i in range(2)} == {(0, 0, 255), (128, 128, 128)}


def test_presets_listed():
    assert {"imagenet", "none"} <= set(preset_names())
    assert load_preset("imagenet").crop == (224, 224)


# ---------------------------------------------------------------------------------------------
# arrays


def _rows(n: int, shape=(3, 32, 32), dtype=np.float64) -> np.ndarray:
    """n samples; sample i is filled with the value i (so each one is recognisable)."""
    return np.broadcast_to(np.arange(n, dtype=dtype).reshape(n, *([1] * len(shape))), (n, *shape)).copy()


def test_npy_file_capping_dtype_and_determinism(tmp_path, nchw):
    np.save(tmp_path / "x.npy", _rows(10))
    a = load_calibration(tmp_path / "x.npy", nchw, count=4, seed=3)
    b = load_calibration(tmp_path / "x.npy", nchw, count=4, seed=3)
    x = a.samples["image"]
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert np.array_equal(x, b.samples["image"])
    ids = x[:, 0, 0, 0]
    assert len(set(ids)) == 4 and set(ids) <= set(range(10))
    assert "4 samples from" in a.description
    full = load_calibration(tmp_path / "x.npy", nchw, count=100).samples["image"]
    assert sorted(full[:, 0, 0, 0]) == list(range(10))


def test_npy_single_sample_gains_batch_axis(tmp_path, nchw):
    np.save(tmp_path / "one.npy", np.ones((3, 32, 32), dtype=np.float32))
    assert load_calibration(tmp_path / "one.npy", nchw).samples["image"].shape == (1, 3, 32, 32)


def test_folder_of_npy_concatenated(tmp_path, nchw):
    folder = tmp_path / "arrays"
    (folder / "sub").mkdir(parents=True)
    np.save(folder / "a.npy", _rows(3))
    np.save(folder / "sub" / "b.npy", np.full((3, 32, 32), 7.0, dtype=np.float32))  # one sample
    np.save(folder / "c.npy", _rows(2) + 10)
    calib = load_calibration(folder, nchw)
    ids = sorted(calib.samples["image"][:, 0, 0, 0])
    assert ids == [0, 1, 2, 7, 10, 11]
    assert "3 .npy files" in calib.description


def test_npz_single_input_any_key(tmp_path, nchw):
    np.savez(tmp_path / "d.npz", whatever=_rows(5, dtype=np.float32))
    assert load_calibration(tmp_path / "d.npz", nchw, count=3).samples["image"].shape == (3, 3, 32, 32)


def test_npz_two_inputs_keep_samples_aligned(tmp_path, two_inputs):
    image = _rows(6, (3, 8, 8))
    meta = np.arange(6, dtype=np.float64)[:, None].repeat(4, axis=1)
    np.savez(tmp_path / "d.npz", image=image, meta=meta, extra=np.zeros(2))
    calib = load_calibration(tmp_path / "d.npz", two_inputs, count=4, seed=5)
    x, m = calib.samples["image"], calib.samples["meta"]
    assert x.shape == (4, 3, 8, 8) and m.shape == (4, 4)
    assert x.dtype == m.dtype == np.float32
    assert np.array_equal(x[:, 0, 0, 0], m[:, 0])  # the same sample picked for both inputs


def test_random_warns_and_says_so(caplog, two_inputs):
    with caplog.at_level(logging.WARNING, logger="onnxprune.calib.data"):
        calib = load_calibration("random", two_inputs, count=5)
    assert any(r.levelno == logging.WARNING and r.name == "onnxprune.calib.data" for r in caplog.records)
    assert "RANDOM" in calib.description and "MEANINGLESS" in calib.description
    assert calib.samples["image"].shape == (5, 3, 8, 8) and calib.samples["meta"].shape == (5, 4)
    assert calib.samples["image"].dtype == np.float32
    again = load_calibration("random", two_inputs, count=5)
    assert np.array_equal(calib.samples["image"], again.samples["image"])


# ---------------------------------------------------------------------------------------------
# batches and split


def test_batches_and_split(tmp_path, nchw):
    np.save(tmp_path / "x.npy", _rows(10))
    calib = load_calibration(tmp_path / "x.npy", nchw)
    sizes = [len(b["image"]) for b in calib.batches(4)]
    assert sizes == [4, 4, 2]
    train, hold = calib.split(0.2)
    train2, hold2 = calib.split(0.2)
    assert (len(train), len(hold)) == (8, 2)
    assert np.array_equal(train.samples["image"], train2.samples["image"])
    assert np.array_equal(hold.samples["image"], hold2.samples["image"])
    assert not set(train.samples["image"][:, 0, 0, 0]) & set(hold.samples["image"][:, 0, 0, 0])
    assert np.array_equal(np.concatenate([train.samples["image"], hold.samples["image"]]), calib.samples["image"])
    assert "held out" in hold.description
    with pytest.raises(UsageError, match="holdout fraction"):
        calib.split(1.0)
    with pytest.raises(UsageError, match="batch size"):
        calib.batches(0)


# ---------------------------------------------------------------------------------------------
# errors


def test_error_source_missing(tmp_path, nchw):
    with pytest.raises(UsageError, match="not found.*nope"):
        load_calibration(tmp_path / "nope", nchw)


def test_error_folder_without_data(tmp_path, nchw):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UsageError, match="no images"):
        load_calibration(tmp_path / "empty", nchw)


def test_error_corrupt_image_named(tmp_path, nchw):
    folder = tmp_path / "bad"
    _save(folder / "ok.png", (1, 2, 3))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(UsageError, match="broken.jpg"):
        load_calibration(folder, nchw)


def test_error_npy_shape_mismatch(tmp_path, nchw):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), dtype=np.float32))
    with pytest.raises(UsageError, match=r"\[4,3,16,16\].*expected \[n,3,32,32\]"):
        load_calibration(tmp_path / "x.npy", nchw)


def test_error_npz_missing_inputs_listed(tmp_path, two_inputs):
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(UsageError, match="lacks arrays for model input.*meta"):
        load_calibration(tmp_path / "d.npz", two_inputs)


@pytest.mark.parametrize("count", [0, -3])
def test_error_count_not_positive(photos, nchw, count):
    with pytest.raises(UsageError, match="count must be a positive integer"):
        load_calibration(photos, nchw, count=count)


def test_error_unknown_preset_lists_known(photos, nchw):
    with pytest.raises(UsageError, match="unknown preprocessing preset 'imagenett'.*imagenet, none"):
        load_calibration(photos, nchw, preprocess="imagenett")


def test_error_bad_preset_file(tmp_path, photos, nchw):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resize": 256, "croop": 224}))
    with pytest.raises(UsageError, match="unknown field.*croop"):
        load_calibration(photos, nchw, preprocess=bad)
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read preprocessing file"):
        load_calibration(photos, nchw, preprocess=bad)


def test_error_multi_input_with_images_or_npy(tmp_path, photos, two_inputs):
    with pytest.raises(UsageError, match="2 inputs.*image, meta.*npz"):
        load_calibration(photos, two_inputs)
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(UsageError, match="2 inputs.*npz"):
        load_calibration(tmp_path / "x.npy", two_inputs)


def test_error_layout_unknown(photos):
    specs = _specs(("x", TensorProto.FLOAT, [1, 16, 16, 16]))
    with pytest.raises(UsageError, match="cannot tell the layout"):
        load_calibration(photos, specs)


def test_error_unsupported_source(tmp_path, nchw):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(UsageError, match="unsupported calibration source"):
        load_calibration(tmp_path / "x.csv", nchw)


def test_error_corrupt_arrays(tmp_path, nchw):
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="bad.npy: not a .npy file"):
        load_calibration(tmp_path / "bad.npy", nchw)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="bad.npz: not an .npz archive"):
        load_calibration(tmp_path / "bad.npz", nchw)


# ---------------------------------------------------------------------------------------------
# bad samples: NaN/Inf, unreadable images, raw pixels fed as arrays


def _with_bad_sample(n: int, bad: int, value: float) -> np.ndarray:
    rows = _rows(n, dtype=np.float32) / n
    rows[bad, 1, 2, 3] = value
    return rows


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_sample_in_npy_refused_naming_the_sample(tmp_path, nchw, value):
    np.save(tmp_path / "calib.npy", _with_bad_sample(20, 17, value))
    with pytest.raises(UsageError, match=r"calib\.npy: sample 17 holds NaN/Inf values; calibration data must be "
                                         r"finite$"):
        load_calibration(tmp_path / "calib.npy", nchw)


def test_nan_sample_in_npz_refused_naming_the_sample(tmp_path, two_inputs):
    meta = np.zeros((6, 4), dtype=np.float32)
    meta[4, 2] = np.nan
    np.savez(tmp_path / "d.npz", image=_rows(6, (3, 8, 8)), meta=meta)
    with pytest.raises(UsageError, match=r"d\.npz array 'meta': sample 4 holds NaN/Inf"):
        load_calibration(tmp_path / "d.npz", two_inputs)


def test_nan_sample_in_folder_of_npy_refused_naming_the_file(tmp_path, nchw):
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a.npy", _rows(3))
    np.save(folder / "b.npy", _with_bad_sample(4, 2, np.nan))
    with pytest.raises(UsageError, match=r"arrays/b\.npy: sample 2 holds NaN/Inf"):
        load_calibration(folder, nchw)


def test_float64_sample_overflowing_float32_refused(tmp_path, nchw):
    rows = _rows(3)
    rows[1, 0, 0, 0] = 1e300  # finite in the file, infinite in the model's float32
    np.save(tmp_path / "big.npy", rows)
    with pytest.raises(UsageError, match="sample 1 holds NaN/Inf"):
        load_calibration(tmp_path / "big.npy", nchw)


def test_unreadable_images_skipped_with_a_warning_naming_them(photos, nchw, caplog):
    (photos / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    whole = (photos / "whole.jpg")
    Image.new("RGB", (64, 48), (9, 99, 199)).save(whole)
    (photos / "truncated.jpg").write_bytes(whole.read_bytes()[:200])
    whole.unlink()
    with caplog.at_level(logging.WARNING, logger="onnxprune.calib.data"):
        calib = load_calibration(photos, nchw)
    assert len(calib) == 6  # every readable image
    assert np.isfinite(calib.samples["image"]).all()
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "garbage.jpg" in warned and "truncated.jpg" in warned
    assert "2 unreadable skipped" in calib.description


def test_unreadable_images_replaced_by_others_when_capped(photos, nchw):
    (photos / "garbage.jpg").write_bytes(b"not an image at all")
    counts = {len(load_calibration(photos, nchw, count=6, seed=seed)) for seed in range(6)}
    assert counts == {6}  # a skipped image is replaced by one that was not picked


def test_too_few_readable_images_says_how_many_were_unreadable(tmp_path, nchw):
    folder = tmp_path / "bad"
    _save(folder / "ok.png", (1, 2, 3))
    for name in ("x.jpg", "y.png", "z.webp"):
        (folder / name).write_bytes(b"garbage")
    with pytest.raises(UsageError, match=r"3 of 4 images are unreadable.*1 left.*at least 2"):
        load_calibration(folder, nchw)


def _raw_pixels_warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "raw pixels" in r.getMessage()]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int64])
def test_raw_pixel_arrays_warn_they_are_fed_without_preprocessing(tmp_path, nchw, caplog, dtype):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32)).astype(dtype)
    np.save(tmp_path / "pixels.npy", pixels)
    with caplog.at_level(logging.WARNING, logger="onnxprune.calib.data"):
        calib = load_calibration(tmp_path / "pixels.npy", nchw)
    assert calib.samples["image"].dtype == np.float32 and calib.samples["image"].max() == 255
    (line,) = _raw_pixels_warned(caplog)
    assert "pixels.npy" in line and "0..255" in line and "imagenet" in line and "as is" in line


def test_raw_pixel_npz_warns_too(tmp_path, nchw, caplog):
    np.savez(tmp_path / "d.npz", x=np.full((2, 3, 32, 32), 200, dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="onnxprune.calib.data"):
        load_calibration(tmp_path / "d.npz", nchw)
    assert _raw_pixels_warned(caplog)


def test_no_raw_pixel_warning_for_normalised_data_raw_presets_or_integer_inputs(tmp_path, nchw, caplog):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "norm.npy", rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    np.save(tmp_path / "pixels.npy", rng.integers(0, 256, (4, 3, 32, 32)).astype(np.uint8))
    u8 = _specs(("u8", TensorProto.UINT8, [None, 3, 32, 32]))
    with caplog.at_level(logging.WARNING, logger="onnxprune.calib.data"):
        load_calibration(tmp_path / "norm.npy", nchw)
        load_calibration(tmp_path / "pixels.npy", nchw, preprocess="none")  # the model takes raw pixels
        x = load_calibration(tmp_path / "pixels.npy", u8).samples["u8"]  # an integer input: raw pixels are right
    assert x.dtype == np.uint8 and x.max() > 200
    assert not _raw_pixels_warned(caplog)
