"""The bundled HC18 fetal-head model (issue #20): it loads offline, and a server started with ``--conf labels
'{"head": 1}'`` uses it, so a real HC18 scan opened in Slicer gets a head mask and its HC in mm out of the box."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from server import ServerProcess
from slicer_module import SlicerModule

from sscase_monai.model_files import load_model, read_sidecar

pytestmark = [pytest.mark.integration, pytest.mark.data]

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD_MODEL = REPO_ROOT / "apps" / "sscase" / "starter" / "hc18_head.pt"
SCANS = ("055_HC", "244_HC", "746_HC")  # small, middle and large heads of HC18 val (HC 79, 174, 282 mm)


def test_the_head_model_loads_offline_with_its_attribution():
    network, spec = load_model(HEAD_MODEL)
    assert spec.labels == {"head": 1} and min(spec.input_shape) >= 256
    sidecar = read_sidecar(HEAD_MODEL)
    assert sidecar["half"] is True
    assert "CC BY 4.0" in sidecar["attribution"] and "10.5281/zenodo.1327317" in sidecar["attribution"]
    assert sum(p.numel() for p in network.parameters()) > 1_000_000


@pytest.fixture(scope="module")
def head_server(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("head")
    studies = root / "studies"
    studies.mkdir()
    (studies / "placeholder.png").write_bytes((REPO_ROOT / "sample-data" / "case_006.png").read_bytes())
    conf = [("labels", json.dumps({"head": 1}))]
    with ServerProcess(studies, root / "server", conf=conf, env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as s:
        yield s


def reference(shared_data: Path) -> dict[str, tuple[float, float]]:
    with (shared_data / "hc18" / "val" / "pixel_size_and_hc.csv").open() as f:
        rows = csv.DictReader(f)
        return {
            r["filename"].removesuffix(".png"): (float(r["pixel_size_mm"]), float(r["head_circumference_mm"]))
            for r in rows
        }


@pytest.mark.parametrize("scan", SCANS)
def test_a_real_hc18_scan_opened_in_slicer_gets_its_hc(head_server, shared_data, scan, tmp_path):
    pixel_size, reference_hc = reference(shared_data)[scan]
    module = SlicerModule(head_server.url, tmp_path / "slicer")
    assert module.info["models"]["sscase"]["labels"] == {"head": 1}
    session_id = module.create_session(shared_data / "hc18" / "val" / "images" / f"{scan}.png")
    result = module.run("sscase", scan, session_id=session_id, options={"pixel_size_mm": pixel_size})
    hc = result.params["biometry"]["hc"]
    assert result.params["label_names"] == {"head": 1} and result.labelmap.array.any()
    assert hc["circumference_mm"] == pytest.approx(reference_hc, rel=0.05)

    drawn = module.run("sscase_measurements", scan, session_id=session_id, options={"pixel_size_mm": pixel_size})
    (curve,) = drawn.markups
    assert curve.name.startswith(f"HC {hc['circumference_mm']:.1f} mm")
