"""Tests for sscase_monai.markups: node names carry the value, the unit and the reliability flag."""

from __future__ import annotations

import numpy as np

from sscase_monai import biometry, io, markups


def head_and_cerebellum(leak: bool = False) -> np.ndarray:
    rows, cols = np.mgrid[:200, :240]
    mask = np.zeros((200, 240), np.uint8)
    mask[((rows - 100) / 70) ** 2 + ((cols - 120) / 90) ** 2 <= 1] = 2
    if leak:
        mask[(rows - 30) ** 2 + (cols - 120) ** 2 <= 25**2] = 2
    mask[90:110, 100:141] = 1
    return mask


def names(document) -> list[str]:
    return [m["name"] for m in document["markups"]]


def test_names_carry_value_and_unit_and_the_flag():
    labels = {"cerebellum": 1, "head": 2}
    mask = head_and_cerebellum()
    geometry = io.ImageGeometry.identity(mask.shape)
    measured = biometry.measure_biometry(mask, geometry, labels, 0.25)
    tcd, hc = measured["tcd"]["length_mm"], measured["hc"]["circumference_mm"]
    document = markups.biometry_markups(measured)
    assert names(document) == [f"TCD {tcd:.1f} mm", f"HC {hc:.1f} mm"]
    assert [m["type"] for m in document["markups"]] == ["Line", "ClosedCurve"]
    assert document["markups"][1]["controlPoints"][0]["label"] == "HC-1"
    assert "unreliable" not in document["markups"][1]["description"]

    leaking = biometry.measure_biometry(head_and_cerebellum(leak=True), geometry, labels, 0.25)
    assert leaking["hc"]["reliable"] is False and leaking["tcd"]["reliable"] is True
    document = markups.biometry_markups(leaking)
    assert names(document)[1] == f"HC {leaking['hc']['circumference_mm']:.1f} mm (unreliable)"
    assert names(document)[0].endswith(" mm")
    description = document["markups"][1]["description"]
    assert "unreliable: " in description and leaking["hc"]["reasons"][0] in description


def test_without_spacing_the_unit_is_pixels():
    mask = head_and_cerebellum()
    measured = biometry.measure_biometry(mask, io.ImageGeometry.identity(mask.shape), {"cerebellum": 1}, None)
    (line,) = markups.biometry_markups(measured)["markups"]
    assert line["name"] == f"TCD {measured['tcd']['length_px']:.1f} px"
    assert "no pixel spacing" in line["description"]
    flagged = {"unit": "mm", "hc": {"circumference_mm": 172.34, "reliable": False}, "labels": {}}
    assert biometry.format_measurements(flagged) == {"HC": "172.3 mm (unreliable)"}
