"""A multi-class model served to 3D Slicer: ``--conf labels`` with two structures, Run through the real server, the
result loaded into segments exactly as Slicer's MONAI Label module does.

The served model is a 3-class SS_CASE_UNet whose output layer is standardised so every class covers part of the
image (``three_class_model``): the test needs both structures in the mask, not anatomy. What must hold is that the
server returns the library's mask, that ``label_names`` names every class with its mask value, and that Slicer
turns that into one segment per structure holding exactly that structure's pixels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClientException
from server import ServerProcess, slicer_client
from slicer_io import import_segments, load_markups, load_reference_volume, load_volume
from three_class_model import PSFHS_LABELS, three_class_model

from sscase_monai import biometry, io
from sscase_monai.inference import Predictor

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
IMAGES = ("case_004.nii.gz", "case_015.png")
SLICER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8"}
QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    studies = root / "studies"
    studies.mkdir()
    for name in IMAGES:
        shutil.copy(SAMPLE_DATA / name, studies / name)
    process = ServerProcess(studies, root / "server", conf=[("labels", json.dumps(PSFHS_LABELS))], env=QUIET)
    three_class_model(process.model_dir / "sscase.pt", studies / IMAGES[0])  # the published model the app serves
    with process as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return slicer_client(server)


def test_info_lists_every_structure(client):
    info = client.info()
    assert info["models"]["sscase"]["labels"] == PSFHS_LABELS
    assert info["labels"] == list(PSFHS_LABELS)


@pytest.mark.parametrize("image", IMAGES, ids=["nifti", "png"])
def test_run_gives_slicer_one_segment_per_structure(server, client, image, tmp_path):
    result, params = client.infer("sscase", io.image_stem(image), dict(SLICER_PARAMS))
    assert params["label_names"] == PSFHS_LABELS

    label = load_volume(result, labelmap=True)
    volume = load_reference_volume(server.studies / image, tmp_path)
    assert label.dimensions == volume.dimensions
    np.testing.assert_allclose(label.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
    expected = Predictor.from_file(server.model_dir / "sscase.pt", device="cpu").predict(server.studies / image).mask
    np.testing.assert_array_equal(label.array[0], expected)  # the server returns the library's 3-class mask
    assert set(np.unique(label.array)) == {0, *PSFHS_LABELS.values()}

    segments = import_segments(result, params["label_names"])
    assert sorted(segments) == sorted(PSFHS_LABELS)  # every structure is a segment, named as configured
    for name, value in PSFHS_LABELS.items():
        np.testing.assert_array_equal(segments[name], (label.array == value).astype(np.uint8), err_msg=name)
    assert params["pixels"] == {name: int((label.array == v).sum()) for name, v in PSFHS_LABELS.items()}

    # the head label's HC (default --conf head_label: head,fetal_head), drawn as a closed curve Slicer loads
    hc = params["biometry"]["hc"]
    unit = params["biometry"]["unit"]
    assert hc["label"] == "fetal_head" and unit == ("px" if image.endswith(".png") else "mm")
    spacing = io.read_image(server.studies / image)[1].pixel_spacing_hw if unit == "mm" else 1.0
    assert hc[f"circumference_{unit}"] == pytest.approx(
        biometry.ellipse_circumference_mm(expected, spacing, 2), abs=1e-3
    )
    document = tmp_path / "biometry.mrk.json"
    document.write_text(json.dumps(params["markups"]))
    (curve,) = load_markups(document)  # no cerebellum label: no TCD line
    assert curve.class_name == "vtkMRMLMarkupsClosedCurveNode"
    assert curve.name.startswith(f"HC {hc[f'circumference_{unit}']:.1f} {unit}")
    np.testing.assert_allclose(curve.points_ras, hc["curve_ras"], atol=1e-3)
    assert curve.length == pytest.approx(hc[f"circumference_{unit}"], rel=0.01)  # Slicer's spline through the points


def test_submit_label_takes_every_class_and_refuses_others(server, client, tmp_path):
    """What Slicer saves after a correction: a W x H x 1 labelmap with values 0..2."""
    mask = np.zeros((1, 320, 416), np.uint8)
    mask[0, 100:150, 100:200] = 1
    mask[0, 200:260, 150:300] = 2
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(sitk.ReadImage(str(server.studies / IMAGES[0])))
    good = tmp_path / "label.nii.gz"
    sitk.WriteImage(image, str(good))
    client.save_label(
        "case_004", str(good), params={"label_info": [{"name": n, "idx": v} for n, v in PSFHS_LABELS.items()]}
    )
    stored = server.studies / "labels" / "final" / "case_004.nii.gz"
    np.testing.assert_array_equal(io.read_image(stored)[0], mask[0])

    mask[0, :10, :10] = 3  # a value no structure has
    bad = tmp_path / "bad.nii.gz"
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(sitk.ReadImage(str(server.studies / IMAGES[0])))
    sitk.WriteImage(image, str(bad))
    with pytest.raises(MONAILabelClientException) as refused:
        client.save_label("case_004", str(bad))
    assert "outside the 3 configured classes" in str(refused.value.msg)
    np.testing.assert_array_equal(io.read_image(stored)[0], mask[0] * (mask[0] < 3))  # the saved label is kept


def test_results_name_the_served_models_labels_not_the_configured_ones(tmp_path):
    # MONAI Label overwrites the writer's label_names with the configured labels; Slicer names the mask values by
    # label_names, so a model whose labels differ from --conf labels must still be described by its own
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(SAMPLE_DATA / IMAGES[0], studies / IMAGES[0])
    configured = {"structure_a": 1, "structure_b": 2}
    process = ServerProcess(studies, tmp_path / "server", conf=[("labels", json.dumps(configured))], env=QUIET)
    three_class_model(process.model_dir / "sscase.pt", studies / IMAGES[0])
    with process as running:
        client = slicer_client(running)
        assert client.info()["models"]["sscase"]["labels"] == configured
        result, params = client.infer("sscase", io.image_stem(IMAGES[0]), dict(SLICER_PARAMS))
    assert params["label_names"] == PSFHS_LABELS
    assert "_model_label_names" not in params
    assert set(np.unique(load_volume(result, labelmap=True).array)) == {0, *PSFHS_LABELS.values()}
