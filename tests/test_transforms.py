"""Tests for sscase_monai.transforms: loading every supported format, preprocessing, augmentation, restoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image
from scipy import ndimage

from sscase_monai import io
from sscase_monai import transforms as T

H, W = 40, 60


def _gray(h: int = H, w: int = W) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return ((rows * 7 + cols * 3) % 256).astype(np.uint8)


def _disc_label(h: int = H, w: int = W, value: int = 1) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return (((rows - h / 2) ** 2 + (cols - w / 2) ** 2) < (min(h, w) / 4) ** 2).astype(np.uint8) * value


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _itk(
    path: Path, array: np.ndarray, spacing=None, origin=None, single_slice: bool = False, rgb: bool = False
) -> str:
    image = sitk.GetImageFromArray(array[None] if single_slice else array, isVector=rgb)
    if spacing is not None:
        image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return str(path)


def _load(value, key: str = "image", **kwargs):
    return T.LoadUltrasoundd(keys=(key,), **kwargs)({key: value})[key]


# ---------------------------------------------------------------------------------------------------------------
# Loading images
# ---------------------------------------------------------------------------------------------------------------


def test_gray_png_is_replicated_to_three_channels_with_meta(tmp_path):
    array = _gray()
    path = _png(tmp_path / "a.png", array)
    image = _load(path)
    assert isinstance(image, MetaTensor)
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    np.testing.assert_allclose(image[0].numpy(), array / 255.0, atol=1e-6)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert image.meta["filename_or_obj"] == path
    assert image.meta["original_shape"] == (H, W)
    assert tuple(image.meta["spatial_shape"]) == (H, W)
    assert image.meta["original_channels"] == 1
    assert io.ImageGeometry.from_dict(image.meta["geometry"]) == io.ImageGeometry.identity((H, W))


def test_gray_png_with_one_channel(tmp_path):
    image = _load(_png(tmp_path / "a.png", _gray()), channels=1)
    assert image.shape == (1, H, W)


def test_rgb_png_kept_or_made_gray_by_luminance(tmp_path):
    rgb = np.stack([_gray(), np.full((H, W), 200, np.uint8), np.zeros((H, W), np.uint8)], -1)
    path = _png(tmp_path / "rgb.png", rgb)
    image = _load(path)
    assert image.shape == (3, H, W) and image.meta["original_channels"] == 3
    np.testing.assert_allclose(image[1].numpy(), 200 / 255.0, atol=1e-6)
    gray = _load(path, channels=1)
    expected = (rgb.astype(np.float32) / 255.0) @ np.asarray(T.LUMINANCE_WEIGHTS, np.float32)
    np.testing.assert_allclose(gray[0].numpy(), expected, atol=1e-5)


def test_rgba_png_opaque_alpha_dropped_transparent_refused(tmp_path):
    rgb = np.stack([_gray()] * 3, -1)
    opaque = _png(tmp_path / "opaque.png", np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], -1))
    assert _load(opaque).shape == (3, H, W)
    alpha = np.full((H, W, 1), 255, np.uint8)
    alpha[0, 0] = 10
    transparent = _png(tmp_path / "transparent.png", np.concatenate([rgb, alpha], -1))
    with pytest.raises(io.ImageReadError, match=r"transparent\.png.*transparent pixel"):
        _load(transparent)


def test_16bit_png_is_min_max_scaled(tmp_path):
    array = _gray().astype(np.uint16) * 100 + 1000
    path = _itk(tmp_path / "deep.png", array)
    image = _load(path)
    assert image.meta["original_dtype"] == "uint16"
    assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(1.0)
    expected = (array - array.min()) / (array.max() - array.min())
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)


def test_float_image_in_unit_range_is_kept_and_constant_image_is_zero():
    values = np.linspace(0.2, 0.7, H * W, dtype=np.float32).reshape(H, W)
    np.testing.assert_allclose(T.image_to_channel_first(values, 1)[0], values)
    assert not T.image_to_channel_first(np.full((H, W), 7, np.int16), 1).any()


def test_jpeg_loads(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(_gray()).save(path, quality=95)
    image = _load(str(path))
    assert image.shape == (3, H, W)
    assert float((image[0] - torch.from_numpy(_gray() / 255.0)).abs().mean()) < 0.02


def test_nifti_single_slice_keeps_spacing_and_origin(tmp_path):
    path = _itk(tmp_path / "a.nii.gz", _gray(), spacing=(0.2, 0.3, 1.0), origin=(10.0, -20.0, 5.0), single_slice=True)
    image = _load(path)
    assert image.shape == (3, H, W)
    np.testing.assert_allclose(image[0].numpy(), _gray() / 255.0, atol=1e-6)
    geometry = io.ImageGeometry.from_dict(image.meta["geometry"])
    assert geometry.size == (W, H, 1) and geometry.shape_hw == (H, W)
    np.testing.assert_allclose(geometry.spacing, (0.2, 0.3, 1.0), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin[:2], (10.0, -20.0), rtol=1e-6)


def test_nrrd_single_slice(tmp_path):
    path = _itk(tmp_path / "a.nrrd", _gray(), spacing=(0.5, 0.5, 1.0), single_slice=True)
    image = _load(path)
    assert image.shape == (3, H, W)
    assert io.ImageGeometry.from_dict(image.meta["geometry"]).spacing[:2] == (0.5, 0.5)


def test_dicom_gray_and_rgb(tmp_path):
    gray = _load(_itk(tmp_path / "g.dcm", _gray(), spacing=(0.3, 0.2)))
    assert gray.shape == (3, H, W)
    np.testing.assert_allclose(gray[0].numpy(), _gray() / 255.0, atol=1e-6)
    np.testing.assert_allclose(io.ImageGeometry.from_dict(gray.meta["geometry"]).spacing[:2], (0.3, 0.2))
    rgb = np.stack([_gray(), _gray() // 2, 255 - _gray()], -1)
    color = _load(_itk(tmp_path / "c.dcm", rgb, rgb=True))
    assert color.shape == (3, H, W)
    np.testing.assert_allclose(color[2].numpy(), (255 - _gray()) / 255.0, atol=1e-6)


def test_volume_with_five_slices_is_refused(tmp_path):
    path = _itk(tmp_path / "vol.nii.gz", np.zeros((5, H, W), np.uint8))
    with pytest.raises(io.ImageReadError, match=r"vol\.nii\.gz.*5 slices"):
        _load(path)


def test_in_memory_array_loads_with_unit_geometry():
    image = _load(_gray())
    assert image.shape == (3, H, W) and image.meta["filename_or_obj"] == "<array>"


# ---------------------------------------------------------------------------------------------------------------
# Loading labels
# ---------------------------------------------------------------------------------------------------------------


def _load_pair(image_path: str, label_path: str, num_classes: int = 2) -> dict:
    return T.LoadUltrasoundd(num_classes=num_classes)({"image": image_path, "label": label_path})


def test_binary_label_0_255_maps_to_0_1(tmp_path):
    out = _load_pair(_png(tmp_path / "a.png", _gray()), _png(tmp_path / "l.png", _disc_label(value=255)))
    label = out["label"]
    assert label.shape == (1, H, W) and label.dtype == torch.int64
    assert set(label.unique().tolist()) == {0, 1}
    assert torch.equal(label[0], torch.from_numpy(_disc_label().astype(np.int64)))
    assert label.meta["filename_or_obj"].endswith("l.png")


def test_label_values_outside_classes_name_the_file_and_values(tmp_path):
    bad = _disc_label()
    bad[0, 0] = 7
    label_path = _png(tmp_path / "bad_label.png", bad)
    with pytest.raises(ValueError, match=r"bad_label\.png.*\[7\]"):
        _load_pair(_png(tmp_path / "a.png", _gray()), label_path)
    three = _disc_label() * 2
    three[0, 0] = 1
    out = _load_pair(_png(tmp_path / "a.png", _gray()), _png(tmp_path / "three.png", three), num_classes=3)
    assert set(out["label"].unique().tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match=r"three\.png.*\[2\]"):
        _load_pair(str(tmp_path / "a.png"), str(tmp_path / "three.png"), num_classes=2)


def test_color_label_with_equal_channels_is_gray_and_different_channels_refused(tmp_path):
    mask = _disc_label()
    out = _load_pair(_png(tmp_path / "a.png", _gray()), _png(tmp_path / "rgb.png", np.stack([mask] * 3, -1)))
    assert out["label"].shape == (1, H, W)
    assert torch.equal(out["label"][0], torch.from_numpy(mask.astype(np.int64)))
    colored = np.stack([mask, mask * 0, mask], -1)
    with pytest.raises(io.ImageReadError, match=r"colored\.png.*color label"):
        _load_pair(str(tmp_path / "a.png"), _png(tmp_path / "colored.png", colored))


def test_label_size_mismatch_names_both_files_and_shapes(tmp_path):
    image_path = _png(tmp_path / "img.png", _gray())
    label_path = _png(tmp_path / "lab.png", _disc_label(H + 2, W))
    with pytest.raises(ValueError, match=r"lab\.png.*\(42, 60\).*img\.png.*\(40, 60\)"):
        _load_pair(image_path, label_path)


def test_slicer_nifti_label_for_png_image(tmp_path):
    image_path = _png(tmp_path / "scan.png", _gray())
    mask = _disc_label()
    label_path = _itk(tmp_path / "scan.nii.gz", mask, single_slice=True)
    out = _load_pair(image_path, label_path)
    assert out["label"].shape == (1, H, W)
    assert torch.equal(out["label"][0], torch.from_numpy(mask.astype(np.int64)))
    assert out["label"].meta["original_shape"] == out["image"].meta["original_shape"] == (H, W)


# ---------------------------------------------------------------------------------------------------------------
# Deterministic preprocessing
# ---------------------------------------------------------------------------------------------------------------


def test_val_and_infer_transforms_give_network_input(tmp_path):
    image_path = _png(tmp_path / "a.png", _gray(300, 200))
    label_path = _png(tmp_path / "a_label.png", _disc_label(300, 200))
    out = T.val_transforms(input_size=64)({"image": image_path, "label": label_path})
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert out["label"].shape == (1, 64, 64) and out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) == {0, 1}
    assert out["image"].meta["original_shape"] == (300, 200)
    inferred = T.infer_transforms(input_size=64)({"image": image_path})
    assert torch.equal(inferred["image"], out["image"])
    with pytest.raises(ValueError, match="multiple of 32"):
        T.build_preprocess(input_size=100)


@pytest.mark.parametrize(
    "text, expected", [("256", 256), ("256x384", (256, 384)), (" 64 X 96 ", (64, 96)), ("128x128", 128)]
)
def test_input_size_is_a_side_or_height_by_width(text, expected):
    assert T.parse_input_size(text) == expected
    assert T.input_shape(expected) == ((expected, expected) if isinstance(expected, int) else expected)


@pytest.mark.parametrize("text", ["", "256x", "x256", "256x384x3", "-64", "64.0", "100", "64x100", "0"])
def test_input_size_refuses_what_is_not_sides_of_multiples_of_32(text):
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(") if text else "input size"):
        T.parse_input_size(text)


def test_non_square_input_keeps_height_and_width_apart(tmp_path):
    """A 300 x 200 (rows x columns) scan at input 64x96: image and label land on 64 rows and 96 columns."""
    image_path = _png(tmp_path / "a.png", _gray(300, 200))
    label_path = _png(tmp_path / "a_label.png", _disc_label(300, 200))
    out = T.val_transforms(input_size=(64, 96))({"image": image_path, "label": label_path})
    assert out["image"].shape == (3, 64, 96) and out["label"].shape == (1, 64, 96)
    assert out["image"].meta["original_shape"] == (300, 200)
    augmented = Compose(T.build_train_augment(cutout_prob=1.0, input_size=(64, 96))).set_random_state(0)(out)
    assert augmented["image"].shape == (3, 64, 96) and augmented["label"].shape == (1, 64, 96)


def test_resize_label_nearest_keeps_values_and_dtype():
    label = torch.from_numpy(_disc_label(H, W, value=2)[None].astype(np.int64))
    image = torch.rand(3, H, W)
    out = T.ResizeToInputd(input_size=32)({"image": image, "label": label})
    assert out["label"].dtype == torch.int64 and set(out["label"].unique().tolist()) <= {0, 2}
    assert out["image"].shape == (3, 32, 32)


def test_median_denoise_matches_scipy_and_removes_salt():
    rng = np.random.default_rng(0)
    gray = rng.random((1, 32, 32), dtype=np.float32) * 0.1
    gray[0, 10, 10] = 1.0
    image = torch.from_numpy(np.repeat(gray, 3, axis=0))
    out = T.MedianDenoised("image")({"image": image})["image"]
    expected = ndimage.median_filter(gray[0], size=5, mode="nearest")
    for c in range(3):
        np.testing.assert_array_equal(out[c].numpy(), expected)
    assert float(out.max()) <= 0.1
    rgb = torch.from_numpy(rng.random((3, 16, 16), dtype=np.float32))
    out = T.MedianDenoised("image")({"image": rgb})["image"]
    np.testing.assert_array_equal(out.numpy(), ndimage.median_filter(rgb.numpy(), size=(1, 5, 5), mode="nearest"))


# ---------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------


def test_mask_morphology_moves_the_boundary_the_expected_way():
    mask = torch.from_numpy(_disc_label()[None].astype(np.int64))
    dilated = T.perturb_mask(mask, "dilate", 3)
    eroded = T.perturb_mask(mask, "erode", 5)
    assert dilated.dtype == torch.int64 and dilated.shape == mask.shape
    assert bool((dilated >= mask).all()) and dilated.sum() > mask.sum()
    assert bool((eroded <= mask).all()) and eroded.sum() < mask.sum()
    assert bool((T.perturb_mask(mask, "open", 3) <= mask).all())
    assert bool((T.perturb_mask(mask, "close", 3) >= mask).all())
    with pytest.raises(ValueError, match="'shrink'"):
        T.perturb_mask(mask, "shrink", 3)


def test_mask_morphology_never_invents_classes():
    mask = np.zeros((1, 30, 30), np.int64)
    mask[0, 5:14, 5:14] = 1
    mask[0, 15:25, 15:25] = 2
    for operation in T.MORPHOLOGY_OPERATIONS:
        out = T.perturb_mask(mask, operation, 5)
        assert set(np.unique(out).tolist()) <= {0, 1, 2}
    dilated = T.perturb_mask(mask, "dilate", 5)
    assert (dilated[mask == 1] == 1).all() and (dilated[mask == 2] == 2).all()  # no class takes another's pixels


def test_rand_mask_morphology_is_seeded():
    data = {"label": torch.from_numpy(_disc_label()[None].astype(np.int64))}
    first = T.RandMaskMorphologyd().set_random_state(3)
    second = T.RandMaskMorphologyd().set_random_state(3)
    a, b = first(data)["label"], second(data)["label"]
    assert torch.equal(a, b) and not torch.equal(a, data["label"])
    assert first.operation in T.MORPHOLOGY_OPERATIONS and first.kernel_size in (3, 5)


def _square_item(size: int = 64, half: int = 10) -> dict:
    image = torch.zeros(3, size, size)
    label = torch.zeros(1, size, size, dtype=torch.int64)
    c = size // 2
    image[:, c - half : c + half, c - half : c + half] = 1.0
    label[:, c - half : c + half, c - half : c + half] = 1
    return {"image": image, "label": label}


def test_centre_zoom_keeps_size_and_centre_and_scales_by_1_2():
    item = _square_item()
    out = T.RandCentreZoomd(prob=1.0)(item)
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 64, 64)
    assert out["label"].dtype == torch.int64
    rows, cols = np.nonzero(out["label"][0].numpy())
    assert abs(rows.mean() - 31.5) <= 1.0 and abs(cols.mean() - 31.5) <= 1.0
    assert abs((rows.max() - rows.min() + 1) - 24) <= 1  # 20 * 1.2
    assert torch.equal(T.RandCentreZoomd(prob=0.0)(item)["label"], item["label"])


def test_paper_augment_variants_flip_and_zoom():
    augment = T.RandPaperAugmentd()
    assert len(augment.variants) == 32
    item = _square_item()
    item["image"][:, 0, :5] = 0.5  # a top-left mark
    hflip = augment.apply_variant(item, None, None, "hflip")
    assert torch.equal(hflip["image"], item["image"].flip(-1))
    vflip = augment.apply_variant(item, None, None, "vflip")
    assert torch.equal(vflip["image"], item["image"].flip(-2))
    zoomed = augment.apply_variant(item, "erode", 3, "zoom")
    assert zoomed["label"].dtype == torch.int64 and zoomed["label"].shape == (1, 64, 64)
    original = augment.apply_variant(item, "dilate", 5, "original")
    assert original["label"].sum() > item["label"].sum()
    assert torch.equal(original["image"], item["image"])


def test_zoom_of_gray_replicated_to_rgb_equals_zooming_every_channel():
    from monai.transforms import Zoomd

    rng = np.random.default_rng(0)
    gray = torch.from_numpy(rng.random((1, 64, 64), dtype=np.float32))
    item = {"image": gray.repeat(3, 1, 1), "label": torch.from_numpy(_disc_label(64, 64)[None].astype(np.uint8))}
    zoomed = T.RandCentreZoomd(prob=1.0)(item)
    expected = Zoomd(["image", "label"], zoom=1.2, mode=["bilinear", "nearest-exact"], keep_size=True)(item)
    assert zoomed["image"].shape == (3, 64, 64) and zoomed["label"].dtype == torch.uint8
    torch.testing.assert_close(zoomed["image"].as_tensor(), expected["image"].as_tensor(), rtol=0, atol=1e-6)
    assert torch.equal(zoomed["label"].as_tensor(), expected["label"].as_tensor().to(torch.uint8))
    rgb = {"image": torch.from_numpy(rng.random((3, 64, 64), dtype=np.float32))}  # different channels: each zoomed
    zoomed_rgb = T.RandCentreZoomd("image", prob=1.0)(rgb)["image"]
    expected_rgb = Zoomd("image", zoom=1.2, mode="bilinear", keep_size=True)(rgb)["image"]
    torch.testing.assert_close(zoomed_rgb.as_tensor(), expected_rgb.as_tensor())


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5, 6])
def test_binary_morphology_is_exactly_scipys_square_min_max_filters(kernel_size):
    rng = np.random.default_rng(kernel_size)
    mask = (rng.random((23, 31)) > 0.7).astype(np.uint8)
    mask[:4, :6] = 1  # touching the border
    size = (kernel_size, kernel_size)
    grow = ndimage.maximum_filter(mask, size=size, mode="nearest")
    shrink = ndimage.minimum_filter(mask, size=size, mode="nearest")
    expected = {
        "dilate": grow,
        "erode": shrink,
        "open": ndimage.maximum_filter(shrink, size=size, mode="nearest"),
        "close": ndimage.minimum_filter(grow, size=size, mode="nearest"),
    }
    for operation, values in expected.items():
        np.testing.assert_array_equal(T.perturb_mask(mask, operation, kernel_size), values, err_msg=operation)


def test_mask_morphology_of_uint8_and_int64_labels_agree():
    mask = np.zeros((1, 30, 30), np.int64)
    mask[0, 5:14, 5:14] = 1
    mask[0, 15:25, 15:25] = 2
    for operation in T.MORPHOLOGY_OPERATIONS:
        as_uint8 = T.perturb_mask(torch.from_numpy(mask.astype(np.uint8)), operation, 3)
        assert as_uint8.dtype == torch.uint8
        np.testing.assert_array_equal(as_uint8.numpy(), T.perturb_mask(mask, operation, 3))


def test_train_transforms_seeded_draws_are_reproducible(tmp_path):
    image_path = _png(tmp_path / "a.png", _gray(100, 80))
    label_path = _png(tmp_path / "a_label.png", _disc_label(100, 80))
    item = {"image": image_path, "label": label_path}
    pipeline = T.train_transforms(input_size=64)
    draws = []
    for seed in (5, 5, 6, 7, 8):
        pipeline.set_random_state(seed)
        draws.append(pipeline(item))
    assert not isinstance(draws[0]["image"], MetaTensor)  # plain tensors collate across file kinds
    assert torch.equal(draws[0]["image"], draws[1]["image"]) and torch.equal(draws[0]["label"], draws[1]["label"])
    assert any(not torch.equal(draws[0]["label"], d["label"]) for d in draws[2:])


# ---------------------------------------------------------------------------------------------------------------
# Restoring to the original grid
# ---------------------------------------------------------------------------------------------------------------


def test_restore_probabilities_and_masks_to_original_shape():
    geometry = io.ImageGeometry(
        size=(W, H, 1),
        spacing=(0.2, 0.2, 1.0),
        origin=(0.0,) * 3,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    prob = torch.zeros(1, 32, 32)
    prob[:, 8:24, 8:24] = 0.9
    mask = T.restore_to_original(prob, geometry)
    assert mask.shape == (1, H, W) and mask.dtype == torch.int64 and set(mask.unique().tolist()) == {0, 1}
    multi = np.zeros((3, 32, 32), np.float32)
    multi[0] = 1.0
    multi[:, 8:24, 8:24] = np.asarray([0.1, 0.2, 0.7], np.float32)[:, None, None]
    restored = T.restore_to_original(multi, {"geometry": geometry.to_dict()})
    assert isinstance(restored, np.ndarray) and restored.shape == (1, H, W) and set(np.unique(restored)) == {0, 2}
    as_mask = T.restore_to_original(torch.from_numpy(restored[:, ::2, ::2].copy()), (H, W))
    assert as_mask.shape == (1, H, W)
    assert T.resize_probabilities_to(multi, (H, W)).shape == (3, H, W)


def test_restore_round_trip_of_a_label(tmp_path):
    mask = _disc_label(300, 200)
    out = T.val_transforms(input_size=64)(
        {"image": _png(tmp_path / "a.png", _gray(300, 200)), "label": _png(tmp_path / "l.png", mask)}
    )
    restored = T.restore_to_original(out["label"].float(), out["image"].meta)
    assert restored.shape == (1, 300, 200)
    dice = 2 * (restored[0].numpy() * mask).sum() / (restored.sum().item() + mask.sum())
    assert dice > 0.97


# ---------------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_hc18_images_preprocess(shared_data):
    images = sorted((shared_data / "hc18" / "train" / "images").glob("*.png"))[:3]
    pipeline = T.val_transforms()
    for image_path in images:
        label_path = shared_data / "hc18" / "train" / "labels" / image_path.name
        out = pipeline({"image": str(image_path), "label": str(label_path)})
        assert out["image"].shape == (3, 256, 256) and 0.0 <= float(out["image"].min()) <= float(out["image"].max())
        assert float(out["image"].max()) <= 1.0
        assert set(out["label"].unique().tolist()) == {0, 1}
        h, w = out["image"].meta["original_shape"]
        assert (h, w) == io.read_image(image_path)[0].shape
        restored = T.restore_to_original(out["label"].float(), out["image"].meta)
        assert restored.shape == (1, h, w)
    resized = Compose(T.build_preprocess(denoise=False, keys=("image",)))({"image": str(images[0])})["image"]
    expected = ndimage.median_filter(resized.numpy(), size=(1, 5, 5), mode="nearest")
    np.testing.assert_array_equal(T.median_denoise(resized).numpy(), expected)


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_median_denoise_is_exactly_scipys_median(kernel_size):
    rng = np.random.default_rng(kernel_size)
    image = rng.random((2, 37, 50), dtype=np.float32)
    image[1, :, :10] = 0.25  # ties
    expected = ndimage.median_filter(image, size=(1, kernel_size, kernel_size), mode="nearest")
    out = T.median_denoise(image, kernel_size)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    as_uint8 = (image * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        T.median_denoise(torch.from_numpy(as_uint8), kernel_size).numpy(),
        ndimage.median_filter(as_uint8, size=(1, kernel_size, kernel_size), mode="nearest"),
    )


def test_cutout_blanks_rectangles_of_the_image_only_and_is_off_by_default():
    item = _square_item()
    item["image"] = item["image"] * 0 + 0.7  # no zero before occlusion
    geometric_only = {"operations": ("dilate",), "kernel_sizes": (1,), "geometric_variants": ("original",)}
    plain = Compose(T.build_train_augment(**geometric_only, input_size=64))
    assert torch.equal(plain(dict(item))["image"], item["image"])  # off by default
    occluded = Compose(T.build_train_augment(**geometric_only, cutout_prob=1.0, input_size=64)).set_random_state(0)
    out = occluded(dict(item))
    blank = out["image"][0] == 0
    assert torch.equal(out["image"][1] == 0, blank)  # every channel alike
    rows, cols = blank.any(1).sum().item(), blank.any(0).sum().item()
    assert min(rows, cols) >= 64 // 8 and max(rows, cols) <= 2 * round(64 / 3)  # 1-2 rectangles of 1/8..1/3 side
    assert torch.equal(out["label"], item["label"])  # the label is kept: the network learns to complete it
    with pytest.raises(ValueError, match="cutout_prob must be within \\[0, 1\\], got 1.5"):
        T.build_train_augment(cutout_prob=1.5)
