"""sscase_monai.io: non-finite pixels are refused from what the file holds, blank images are recognised."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sscase_monai import io


def _float_image(bad: float) -> np.ndarray:
    pixels = np.linspace(0, 100, 12 * 16, dtype=np.float32).reshape(1, 12, 16)  # W x H x 1, as Slicer saves
    pixels[0, 3, 4:7] = bad
    return pixels


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd"])
def test_nan_and_infinite_pixels_are_refused(tmp_path, bad, ext):
    path = tmp_path / f"scan{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(_float_image(bad)), str(path))
    with pytest.raises(io.ImageReadError, match=r"scan.*: the image has NaN or infinite values \(3 of 192 pixels\)"):
        io.read_image(path)


def test_itk_alone_would_read_nifti_nan_as_zero(tmp_path):
    """Why NIfTI is checked from the file: ITK hands NaN and infinities back as 0."""
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_float_image(np.nan)), str(path))
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0, 3, 4:7] == 0).all()


def test_finite_float_images_are_read(tmp_path):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_float_image(5.0)), str(path))
    pixels, geometry = io.read_image(path)
    assert pixels.shape == (12, 16) and geometry.shape_hw == (12, 16) and pixels[3, 4] == 5.0


def test_blank_images():
    assert io.is_blank(np.zeros((4, 5), np.uint8))
    assert io.is_blank(np.full((4, 5), 7.5, np.float32))
    assert io.is_blank(np.broadcast_to(np.array([10, 20, 30, 255], np.uint8), (4, 5, 4)))  # one colour, opaque
    one_pixel = np.zeros((4, 5), np.uint8)
    one_pixel[2, 3] = 1
    assert not io.is_blank(one_pixel)
    two_colours = np.zeros((4, 5, 3), np.uint8)
    two_colours[:2] = (255, 0, 0)
    assert not io.is_blank(two_colours)
    with pytest.raises(io.ImageReadError, match="blank.png: the image is blank"):
        io.check_not_blank(np.zeros((4, 5), np.uint8), "blank.png")
