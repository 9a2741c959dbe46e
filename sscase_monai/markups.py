"""3D Slicer markups files (``.mrk.json``) for biometry: the TCD as a line, the HC ellipse as a closed curve.

The files follow Slicer's markups JSON schema (``markups-schema-v1.0.3.json``, the format Slicer itself saves
markups in): one document with a list of markups, each with a ``type`` (``Line``, ``ClosedCurve``), a
``coordinateSystem`` and its ``controlPoints``. Points are written in ``LPS``, as Slicer writes its own files (and as
ITK and the image files count); Slicer converts them to RAS on loading. Drag the file onto Slicer's window (or
``File > Add Data``, or ``slicer.util.loadMarkups(path)`` in its Python console): a ``TCD`` line whose length Slicer
shows and an ``HC`` closed curve, both on the image they were measured on, each named with its value, unit and
reliability (``TCD 31.4 mm``, ``HC 172.3 mm (unreliable)``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sscase_monai.biometry import format_measurements
from sscase_monai.io import flip_lps_ras

logger = logging.getLogger(__name__)

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
"""The ``@schema`` of Slicer's markups JSON files."""

MARKUPS_EXTENSION = ".mrk.json"

TCD_COLOR = (1.0, 0.85, 0.0)
HC_COLOR = (0.2, 0.8, 1.0)


def _ras_to_lps(points_ras: Sequence[Sequence[float]]) -> list[list[float]]:
    # + 0.0: no "-0.0" in the file
    return [[round(float(v), 4) + 0.0 for v in point] for point in flip_lps_ras(points_ras)]


def markup(
    kind: str,
    name: str,
    points_ras: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    color: Sequence[float] = TCD_COLOR,
    description: str = "",
    measurement: str | None = "length",
) -> dict[str, Any]:
    """One markup of a markups document.

    Args:
        kind: Slicer's markups type: ``Line``, ``ClosedCurve``, ``Curve`` or ``Fiducial``.
        name: the node name Slicer shows.
        points_ras: control points, ``(N, 3)`` RAS in mm (written as LPS).
        labels: a label per control point (default ``<name>-<n>``).
        color: display colour (RGB, 0-1).
        description: shown in Slicer's markups module.
        measurement: the Slicer measurement shown with the markup (``length`` for a line or curve); ``None``: none.
    """
    positions = _ras_to_lps(points_ras)
    labels = list(labels) if labels is not None else [f"{name}-{i}" for i in range(1, len(positions) + 1)]
    if len(labels) != len(positions):
        raise ValueError(f"{len(labels)} labels for {len(positions)} control points")
    return {
        "type": kind,
        "name": name,
        "description": description,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": True,
        "fixedNumberOfControlPoints": True,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(positions),
        "controlPoints": [
            {
                "id": str(i),
                "label": label,
                "description": "",
                "associatedNodeID": "",
                "position": position,
                "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": True,
                "visibility": True,
                "positionStatus": "defined",
            }
            for i, (label, position) in enumerate(zip(labels, positions, strict=True), start=1)
        ],
        "measurements": [{"name": "length", "enabled": measurement == "length"}],
        "display": {
            "visibility": True,
            "color": list(color),
            "selectedColor": list(color),
            "propertiesLabelVisibility": True,
            "pointLabelsVisibility": False,
        },
    }


def markups_document(markups: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A markups document (what a ``.mrk.json`` file holds) with the given markups."""
    return {"@schema": MARKUPS_SCHEMA, "markups": [dict(m) for m in markups]}


def _description(what: str, value: float, unit: str, suffix: str, measured: Mapping[str, Any]) -> str:
    text = f"{what} {value:.2f} {unit}{suffix}"
    if measured.get("reliable") is False:
        text += "; unreliable: " + "; ".join(measured.get("reasons") or ())
    return text


def biometry_markups(biometry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The markups document of a :func:`sscase_monai.biometry.measure_biometry` result, or ``None`` if it has
    nothing to draw.

    A ``TCD`` line between the TCD's two end points and an ``HC`` closed curve along the fitted ellipse. Each node's
    name carries its value and unit and, when the measurement is flagged, ``(unreliable)``
    (:func:`sscase_monai.biometry.format_measurements`: what Slicer shows in its lists and views); the description
    adds the reasons. A length in pixels (an image without spacing) has the unit ``px``. Slicer measures a line's
    length in its own world unit, the image file's spacing: where the spacing comes from elsewhere
    (``spacing_source`` other than ``"file"``: a pixel size given with the request, or none), that length would
    disagree with the name, so Slicer's own length measurement is turned off.
    """
    unit = biometry.get("unit", "mm")
    texts = format_measurements(biometry)
    suffix = "" if unit == "mm" else " (no pixel spacing: in pixels)"
    slicer_length = biometry.get("spacing_source", "file") == "file"
    markups = []
    tcd = biometry.get("tcd")
    if tcd:
        length = tcd[f"length_{unit}"]
        markups.append(
            markup(
                "Line",
                f"TCD {texts['TCD']}",
                tcd["endpoints_ras"],
                labels=["TCD-1", "TCD-2"],
                color=TCD_COLOR,
                description=_description("transverse cerebellar diameter", length, unit, suffix, tcd),
                measurement="length" if slicer_length else None,
            )
        )
    hc = biometry.get("hc")
    if hc:
        circumference = hc[f"circumference_{unit}"]
        markups.append(
            markup(
                "ClosedCurve",
                f"HC {texts['HC']}",
                hc["curve_ras"],
                labels=[f"HC-{i}" for i in range(1, len(hc["curve_ras"]) + 1)],
                color=HC_COLOR,
                description=_description("head circumference (ellipse fit)", circumference, unit, suffix, hc),
                measurement="length" if slicer_length else None,
            )
        )
    return markups_document(markups) if markups else None


def write_markups(document: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a markups document as ``.mrk.json`` (the extension Slicer recognises is added when missing)."""
    path = Path(path)
    if not path.name.endswith(MARKUPS_EXTENSION):
        path = path.with_name(path.name + MARKUPS_EXTENSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)
    logger.debug("wrote markups %s", path)
    return path
