"""The app as 3D Slicer's MONAI Label module drives it (issue #19): Run on a scan opened in Slicer through both
module versions' paths (0.8.5: a session; main: an upload), a PNG scan and an NRRD with real spacing, the measurement
model's markups, Submit Label's answer and Train started and polled as the module polls it.

Every request is built as the module builds it (``slicer_module.SlicerModule``), every result loaded with Slicer's
own MRML readers (slicer-core)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from monailabel.client.client import MONAILabelClientException
from server import ServerProcess, copy_studies, sample_data_server
from slicer_io import load_reference_volume
from slicer_module import SlicerModule, progress_percent

from sscase_monai import biometry, io
from sscase_monai.active_learning import SCORED_STRATEGIES, model_version

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sample_data_server(tmp_path_factory.mktemp("slicer")) as running:
        yield running


@pytest.fixture()
def module(server, tmp_path) -> SlicerModule:
    return SlicerModule(server.url, tmp_path / "slicer")


def nrrd_with_spacing(tmp_path: Path, spacing: tuple[float, float] = (0.3, 0.3)) -> Path:
    """case_004 as an NRRD scan with its own spacing and an origin off zero (what a scanner export carries)."""
    image = sitk.ReadImage(str(SAMPLE_DATA / "case_004.nii.gz"))[:, :, 0]
    image.SetSpacing(spacing)
    image.SetOrigin((4.0, -7.5))
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def tcd_of_labelmap(result) -> float:
    """TCD of a Run's label as Slicer loaded it, in the unit of its own grid."""
    return biometry.max_feret_diameter(result.labelmap.array[0], 1.0, 1).length


def wait_until_scoring_is_idle(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = requests.get(f"{url}/scoring/?all=true", timeout=30).json()
        if not any(t["status"] in ("SUBMITTED", "RUNNING") for t in tasks):
            return
        time.sleep(1)
    raise TimeoutError(f"scoring still busy after {timeout} s")


def test_info_lists_segmentation_first_then_its_measurements(module):
    models = list(module.info["models"])
    assert models[:2] == ["sscase", "sscase_measurements"]  # the module's auto-run takes the first model
    assert all(module.info["models"][m]["type"] == "segmentation" for m in models)  # both in Run's model list
    options = module.info["models"]["sscase"]["config"]
    assert options["pixel_size_mm"] == 0.0 and isinstance(options["pixel_size_mm"], float)  # an Options row
    assert "pixel_size_mm" in module.info["models"]["sscase_measurements"]["config"]
    train = module.info["trainers"]["sscase"]["config"]
    # no GPU here: the short CPU schedule, and the pseudo-label filter in the Train options
    assert train["epochs"] == "3,6,3" and train["samples_per_image"] == 8
    assert {"pseudo_confidence", "pseudo_min_fraction", "pseudo_min_pixels"} <= set(train)


def test_run_on_a_png_opened_in_slicer_through_a_session(server, module, tmp_path):
    """0.8.5: a volume not from Next Sample is saved as .nii.gz, sent as a session, and Run names the volume."""
    png = SAMPLE_DATA / "case_006.png"
    session_id = module.create_session(png)
    result = module.run("sscase", "case_006", session_id=session_id)

    volume = load_reference_volume(png, tmp_path)
    assert result.labelmap.dimensions == volume.dimensions
    np.testing.assert_allclose(result.labelmap.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
    measured = result.params["biometry"]
    # Slicer stores the PNG as a "1 mm" NIfTI: no physical spacing known, so pixels, said so
    assert measured["unit"] == "px" and measured["spacing_mm"] is None and measured["spacing_source"] == "none"
    assert "pixel_size_mm" in measured["spacing_note"] and "length_mm" not in measured["tcd"]
    pixels = measured["tcd"]["length_px"]
    assert pixels == pytest.approx(tcd_of_labelmap(result), rel=1e-6)

    # the sonographer types the pixel size into the Options table
    sized = module.run("sscase", "case_006", session_id=session_id, options={"pixel_size_mm": "0.25"})
    measured = sized.params["biometry"]
    assert measured["unit"] == "mm" and measured["spacing_source"] == "pixel_size_mm"
    assert measured["tcd"]["length_mm"] == pytest.approx(0.25 * pixels, rel=1e-6)


def test_run_on_a_volume_uploaded_as_main_does(server, module, tmp_path):
    """main: the volume goes into the datastore under its name, then Run uses that id."""
    image_id = module.upload_image(SAMPLE_DATA / "case_015.png", "scan from slicer")
    result = module.run("sscase", image_id)
    assert result.params["biometry"]["unit"] == "px"
    assert set(np.unique(result.labelmap.array)) <= {0, 1} and result.labelmap.array.any()

    scan = nrrd_with_spacing(tmp_path)
    image_id = module.upload_image(scan, "nrrd scan")
    result = module.run("sscase", image_id, options={"pixel_size_mm": "0.5"})  # the file's own spacing wins
    measured = result.params["biometry"]
    assert measured["unit"] == "mm" and measured["spacing_mm"] == pytest.approx([0.3, 0.3])
    assert measured["spacing_source"] == "file"
    assert measured["tcd"]["length_mm"] == pytest.approx(0.3 * tcd_of_labelmap(result), rel=1e-5)
    np.testing.assert_allclose(np.diag(result.labelmap.ijk_to_ras)[:2], [-0.3, -0.3], atol=1e-6)


def test_an_nrrd_with_real_spacing_through_a_session(module, tmp_path):
    result = module.run("sscase", "nrrd scan", session_id=module.create_session(nrrd_with_spacing(tmp_path)))
    assert result.params["biometry"]["unit"] == "mm"
    assert result.params["biometry"]["spacing_mm"] == pytest.approx([0.3, 0.3])


def test_the_measurement_model_draws_tcd_named_with_its_value(server, module, tmp_path):
    segmentation = module.run("sscase", "case_004")
    measured = segmentation.params["biometry"]
    drawn = module.run("sscase_measurements", "case_004")
    assert drawn.file.endswith(".mrk.json")  # the module loads a .json result with slicer.util.loadMarkups
    (line,) = drawn.markups
    assert line.class_name == "vtkMRMLMarkupsLineNode"
    assert line.name == f"TCD {measured['tcd']['length_mm']:.1f} mm"
    # same scan, same model, same biometry: Slicer's own length of the line is the reported TCD
    assert line.length == pytest.approx(measured["tcd"]["length_mm"], abs=0.01)
    assert drawn.params["biometry"]["tcd"] == measured["tcd"]

    # a PNG scan opened in Slicer, with and without the pixel size
    session_id = module.create_session(SAMPLE_DATA / "case_006.png")
    (line,) = module.run("sscase_measurements", "case_006", session_id=session_id).markups
    assert line.name.startswith("TCD ") and line.name.endswith(" px")
    (line,) = module.run(
        "sscase_measurements", "case_006", session_id=session_id, options={"pixel_size_mm": 0.25}
    ).markups
    assert line.name.endswith(" mm")


def test_the_measurement_model_says_when_there_is_nothing_to_measure(module, tmp_path):
    blank_ish = np.zeros((160, 200), np.uint8)
    blank_ish[::7, ::5] = 40  # not blank (that is refused earlier), but no cerebellum
    path = tmp_path / "empty.png"
    sitk.WriteImage(sitk.GetImageFromArray(blank_ish), str(path))
    image_id = module.upload_image(path, "nothing here")
    with pytest.raises(MONAILabelClientException) as error:
        module.run("sscase_measurements", image_id)
    assert "422" in error.value.msg and "nothing to measure" in error.value.msg


def test_submit_label_answers_with_the_saved_labels_measurements(server, module, tmp_path):
    before = requests.get(f"{server.url}/datastore/?output=stats", timeout=30).json()
    run = module.run("sscase", "case_003")
    corrected = io.read_image(run.file)[0].copy()
    columns = np.flatnonzero(corrected.any(axis=0))
    corrected[:, : (columns[0] + columns[-1]) // 2] = 0  # the sonographer erases the left half of the mask
    geometry = io.read_image(SAMPLE_DATA / "case_003.nii.gz")[1]
    label = tmp_path / "corrected.nrrd"
    io.write_mask(corrected, geometry, label)

    answer = module.submit_label("case_003", label, ["cerebellum"])
    spacing = geometry.pixel_spacing_hw
    expected = biometry.max_feret_diameter(corrected, spacing, 1).length
    assert answer["measurements"]["TCD"] == f"{expected:.1f} mm"  # the corrected mask's TCD, not the Run's
    assert answer["measurements"]["TCD"] != f"{run.params['biometry']['tcd']['length_mm']:.1f} mm"
    completed = before["completed"] + 1
    assert answer["labelled"] == f"{completed} of {before['total']} images have a final label"
    assert json.dumps(answer)  # the module shows it with json.dumps

    # a PNG in the datastore: Run once with the pixel size, and the saved label is measured in mm too
    module.run("sscase", "case_006", options={"pixel_size_mm": 0.25})
    answer = module.submit_label("case_006", SAMPLE_DATA / "labels" / "final" / "case_015.png", ["cerebellum"])
    assert answer["measurements"]["TCD"].endswith(" mm") and "unit_note" not in answer


@pytest.mark.slow
def test_train_from_slicer_refuses_early_starts_at_epoch_0_and_rescores(tmp_path):
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    finals = sorted((studies / "labels" / "final").iterdir())
    for extra in finals[1:]:
        extra.unlink()
    with ServerProcess(studies, tmp_path / "server") as server:
        module = SlicerModule(server.url, tmp_path / "slicer")
        assert module.info["train_stats"]["sscase"] == {}
        with pytest.raises(MONAILabelClientException) as error:
            module.train("sscase")
        assert "409" in error.value.msg and "at least 2 images with a final label" in error.value.msg

        wait_until_scoring_is_idle(server.url)  # the start-up scoring, with the starter model
        module.submit_label("case_007", SAMPLE_DATA / "labels" / "final" / "case_007.nii.gz", ["cerebellum"])
        short = {"epochs": "1,1,1", "samples_per_image": "2", "batch_size": "4"}
        module.train("sscase", short)
        stats = module.fetch_info()["train_stats"]["sscase"]
        assert stats["epoch"] == 0 and stats["total_epochs"] == 3 and "expected_duration" in stats
        # the bar starts at the start (it showed 100 % for empty stats); from the stats read while the task ran, since
        # this short training may end before the next poll (and the bar then rightly shows 100 %)
        assert progress_percent(stats) == 1
        ticks = module.wait_for_training()
        assert ticks[-1][0] == "DONE", server.log_tail()
        assert all(p is None or p <= 100 for _, p in ticks)

        # after the training, every scoring method scores every unlabelled image again, with the new model
        version = model_version(server.model_dir / "sscase.pt")
        wanted = {f"{strategy.key}_model": version for strategy in SCORED_STRATEGIES}
        assert len(wanted) == 4  # epistemic, tta, diversity, hybrid
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            wait_until_scoring_is_idle(server.url)
            objects = module.client.datastore()["objects"]
            unlabelled = [v["image"]["info"] for v in objects.values() if "final" not in v["labels"]]
            stale = [
                (info.get("name"), key)
                for info in unlabelled
                for key in wanted
                if str(info.get(key, "")).split("|")[0] != version
            ]
            if not stale:
                break
            time.sleep(2)
        assert not stale, (stale[:5], server.log_tail())
        # ... and Next Sample chooses by the new scores (the server re-reads the index the scoring process replaced)
        highest = max(unlabelled, key=lambda info: info["tta_disagreement"])
        assert module.client.next_sample("tta", {})["id"] == io.image_stem(highest["name"])
