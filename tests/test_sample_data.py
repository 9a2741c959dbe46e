"""Tests of the synthetic sample data generator, its CLI, and the bundled ``sample-data/`` folder."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sscase_monai import biometry, cli
from sscase_monai.io import image_stem, read_image
from sscase_monai.sample_data import (
    LABELS_SUBDIR,
    METADATA_FILE,
    README_FILE,
    generate_sample,
    write_sample_dataset,
)

BUNDLED = Path(__file__).parents[1] / "sample-data"
SMALL_SIZE = (256, 192)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Four images, two labelled, two of them PNG."""
    out = tmp_path_factory.mktemp("small") / "studies"
    rows = write_sample_dataset(out, n=4, seed=3, labelled_fraction=0.5, png=2, size=SMALL_SIZE)
    return out, rows


def _metadata(folder: Path) -> list[dict]:
    with (folder / METADATA_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def _studies(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its relative path."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generate_sample_is_deterministic():
    image, mask, info = generate_sample(7, SMALL_SIZE)
    image2, mask2, info2 = generate_sample(7, SMALL_SIZE)
    other, other_mask, _ = generate_sample(8, SMALL_SIZE)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(mask, mask2)
    assert info["pixel_spacing_mm"] == info2["pixel_spacing_mm"] and info["tcd_mm"] == info2["tcd_mm"]
    assert not np.array_equal(image, other)
    assert not np.array_equal(mask, other_mask)
    assert image.shape == mask.shape == (SMALL_SIZE[1], SMALL_SIZE[0])
    assert image.dtype == mask.dtype == np.uint8


def test_same_arguments_give_byte_identical_files(tmp_path, small_set):
    folder, _ = small_set
    again = tmp_path / "studies"  # same folder name: README.md quotes it in the command
    write_sample_dataset(again, n=4, seed=3, labelled_fraction=0.5, png=2, size=SMALL_SIZE)
    first, second = _studies(folder), _studies(again)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_anatomy(seed):
    image, mask, info = generate_sample(seed, SMALL_SIZE)
    head, sector = info["head"], info["sector"]
    y, x = np.mgrid[: image.shape[0], : image.shape[1]]
    inside_sector = sector.contains(x, y)
    cerebellum = mask.astype(bool)

    assert set(np.unique(mask)) == {0, 1}
    assert np.all(image[~inside_sector] == 0), "outside the sector must be black"
    assert image[inside_sector].mean() > 20
    assert np.all(inside_sector[cerebellum]), "cerebellum outside the sector"
    assert np.all(head.inside_skull(*head.local(x, y))[cerebellum]), "cerebellum outside the skull"
    assert np.all(sector.contains(x, y, margin=2.0)[head.inside_skull(*head.local(x, y), inner=False)])
    rim = cerebellum & ~ndimage.binary_erosion(cerebellum, iterations=2)
    core = ndimage.binary_erosion(cerebellum, iterations=4)
    assert core.any() and image[rim].mean() > image[core].mean() + 5, "echogenic rim, hypoechoic interior"
    skull = head.inside_skull(*head.local(x, y), inner=False) & ~head.inside_skull(*head.local(x, y))
    assert image[skull].mean() > image[core].mean(), "skull brighter than the cerebellum"
    assert 15.0 <= info["tcd_mm"] <= 38.0
    # the one TCD definition of the library (largest width, outer pixel edges)
    assert info["tcd_mm"] == round(biometry.transverse_cerebellar_diameter_mm(mask, info["pixel_spacing_mm"]), 2)
    assert abs(info["tcd_mm"] - info["tcd_design_mm"]) < 0.1 * info["tcd_design_mm"]


def test_given_spacing_and_age_are_used():
    _, mask, info = generate_sample(0, (320, 256), spacing=0.45, gestational_age_weeks=22.0)
    assert info["pixel_spacing_mm"] == 0.45 and info["gestational_age_weeks"] == 22.0
    assert mask.any()


def test_layout_and_counts(small_set):
    folder, rows = small_set
    metadata = _metadata(folder)
    assert [row["file"] for row in metadata] == [row["file"] for row in rows]
    files = _studies(folder)
    images = sorted(name for name in files if "/" not in name and name.startswith("case_"))
    labels = sorted(name for name in files if name.startswith(LABELS_SUBDIR.as_posix() + "/"))
    assert images == sorted(row["file"] for row in metadata)
    assert set(files) == {*images, *labels, METADATA_FILE, README_FILE}

    labelled = [row for row in metadata if row["labelled"] == "yes"]
    unlabelled = [row for row in metadata if row["labelled"] == "no"]
    assert len(labelled) == len(unlabelled) == 2
    assert labels == sorted(row["label"] for row in labelled)
    assert all(row["label"] == "" for row in unlabelled)
    for row in labelled:  # same stem and format as the image
        assert row["label"] == f"{LABELS_SUBDIR.as_posix()}/{row['file']}"
    png = [row for row in metadata if row["file"].endswith(".png")]
    assert len(png) == 2
    assert {row["labelled"] for row in png} == {"yes", "no"}, "one labelled and one unlabelled PNG"


def test_labels_are_binary_and_on_the_image_grid(small_set):
    folder, _ = small_set
    for row in _metadata(folder):
        image, geometry = read_image(folder / row["file"])
        assert image.dtype == np.uint8 and image.shape == (SMALL_SIZE[1], SMALL_SIZE[0])
        if row["labelled"] == "no":
            continue
        label, label_geometry = read_image(folder / row["label"])
        assert image_stem(row["label"]) == image_stem(row["file"])
        assert label.dtype == np.uint8 and label.shape == image.shape
        assert set(np.unique(label)) == {0, 1}
        assert label_geometry == geometry


def test_nifti_spacing_is_the_metadata_spacing(small_set):
    folder, _ = small_set
    nifti = [row for row in _metadata(folder) if row["file"].endswith(".nii.gz")]
    assert nifti
    spacings = []
    for row in nifti:
        _, geometry = read_image(folder / row["file"])
        assert geometry.size == (SMALL_SIZE[0], SMALL_SIZE[1], 1)
        spacing = float(row["pixel_spacing_mm"])
        assert geometry.spacing[:2] == pytest.approx((spacing, spacing), abs=1e-6)
        assert geometry.spacing[0] != 1.0
        spacings.append(spacing)
    assert len(set(spacings)) == len(spacings), "spacing varies between images"


def test_metadata_matches_regenerated_samples(small_set):
    folder, _ = small_set
    for row in _metadata(folder):
        image, mask, info = generate_sample(int(row["sample_seed"]), SMALL_SIZE)
        np.testing.assert_array_equal(read_image(folder / row["file"])[0], image)
        assert row["pixel_spacing_mm"] == f"{info['pixel_spacing_mm']:.4f}"
        assert row["tcd_mm"] == f"{info['tcd_mm']:.2f}"
        if row["label"]:
            np.testing.assert_array_equal(read_image(folder / row["label"])[0], mask)


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "studies"
    write_sample_dataset(out, n=3, seed=0, labelled_fraction=1.0, png=0, size=(128, 96))
    (out / "datastore_v2.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        write_sample_dataset(out, n=1, png=0, size=(128, 96))
    write_sample_dataset(out, n=1, seed=0, labelled_fraction=1.0, png=1, size=(128, 96), force=True)
    assert set(_studies(out)) == {
        "case_000.png",
        "labels/final/case_000.png",
        METADATA_FILE,
        README_FILE,
        "datastore_v2.json",  # not the generator's: kept
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be"),
        ({"labelled_fraction": 1.5}, "labelled_fraction"),
        ({"png": 5}, "png must be"),
        ({"size": (32, 200)}, "size must be"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_sample_dataset(tmp_path / "out", **{"n": 4, **kwargs})


def test_spacing_too_fine_for_the_head():
    with pytest.raises(ValueError, match="does not fit"):
        generate_sample(0, (128, 96), spacing=0.1)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample-data", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--n", "--seed", "--labelled-fraction", "--png", "--size", "--force", "labels/final"):
        assert option in text


def test_cli_writes_a_tiny_set(tmp_path, capsys):
    out = tmp_path / "studies"
    argv = ["sample-data", "--out", str(out), "--n", "2", "--seed", "5", "--png", "1", "--size", "128x96"]
    assert cli.main(argv) == 0
    assert "wrote 2 images (1 labelled, 1 unlabelled, 1 PNG)" in capsys.readouterr().out
    assert len(_metadata(out)) == 2 and (out / README_FILE).is_file()
    assert cli.main(argv) == 2, "a non-empty folder without --force is an error"
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample-data", "--out", str(out), "--size", "128"])
    assert exit_info.value.code == 2


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("sscase-monai")
    if not script.is_file():
        pytest.skip(f"console script not installed beside {sys.executable}")
    help_run = subprocess.run([str(script), "sample-data", "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "--labelled-fraction" in help_run.stdout
    out = tmp_path / "studies"
    argv = [str(script), "sample-data", "--out", str(out), "--n", "1", "--png", "0", "--size", "128x96"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (out / "case_000.nii.gz").is_file() and (out / METADATA_FILE).is_file()


def test_bundled_sample_data_matches_its_generator(tmp_path):
    """``sample-data/`` is what the command in its README writes: it cannot drift from the generator."""
    if not (BUNDLED / README_FILE).is_file():
        pytest.fail(f"{BUNDLED} has no {README_FILE}; generate it with sscase-monai sample-data")
    commands = [
        line.strip()
        for line in (BUNDLED / README_FILE).read_text().splitlines()
        if line.strip().startswith("sscase-monai sample-data")
    ]
    assert len(commands) == 1, commands
    argv = shlex.split(commands[0])[1:]
    assert argv[argv.index("--out") + 1] == BUNDLED.name
    regenerated = tmp_path / BUNDLED.name
    argv[argv.index("--out") + 1] = str(regenerated)
    assert cli.main(argv) == 0

    bundled, fresh = _studies(BUNDLED), _studies(regenerated)
    assert bundled.keys() == fresh.keys()
    for name in (METADATA_FILE, README_FILE):
        assert bundled[name].read_text() == fresh[name].read_text(), name
    for name in bundled.keys() - {METADATA_FILE, README_FILE}:
        committed, geometry = read_image(bundled[name])
        expected, expected_geometry = read_image(fresh[name])
        np.testing.assert_array_equal(committed, expected, err_msg=name)
        assert geometry == expected_geometry, name
