"""Robustness and safety of the served app (issues #7 and #11), against a real server on 127.0.0.1.

Every bad input to infer, save-label and image upload gets a 4xx whose message names the problem (never a server
path), leaves nothing behind and the server keeps answering; image ids and label tags never reach outside the
studies folder; 8 clients inferring while labels are saved and a training runs lose nothing; a training killed
mid-stage leaves the published model and the labels intact and resumes from its checkpoint; every result reaches a
client on the server's machine; stopping the server stops its training and scoring; the serve command binds this
machine only unless told otherwise, and says so.

Status codes (the contract, listed in README.md "Reliability"): 400 bad id or tag, 404 unknown image or model,
409 no trained model, 413 image over the pixel limit, 415 file type that is not an image, 422 unusable content.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import SimpleITK as sitk
import torch
from server import ServerProcess, copy_studies, slicer_client

from sscase_monai import io
from sscase_monai.model_files import load_model

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
STARTER = REPO_ROOT / "apps" / "sscase" / "starter" / "sscase_starter.pt"
QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # no background scoring competing for the 2 cores
SHORT_SCHEDULE = {"epochs": "1,1,1", "samples_per_image": 2, "batch_size": 4}
TIMEOUT = 120  # seconds for one request: the server answers requests one at a time

PNG_IMAGE = "case_006"  # unlabelled PNG, 416 x 320
LABELLED_PNG = "case_015"  # PNG with a final label
HUGE_SIDE = 10_000
MEMORY_BOUND_MB = 150  # refusing a 10000 x 10000 image (100 MB of pixels decoded) must not come near it


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def write_array(array: np.ndarray, path: Path, vector: bool = False) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))


def write_header_only_png(path: Path, width: int, height: int) -> None:
    """A valid 8-bit gray PNG of zeros, compressed row by row: a huge image in a small file and little memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def sample_png() -> np.ndarray:
    return io.read_image(SAMPLE_DATA / f"{PNG_IMAGE}.png")[0]


def _rgba_transparent(path: Path) -> None:
    gray = sample_png()
    alpha = np.linspace(0, 255, gray.size).reshape(gray.shape).astype(np.uint8)
    write_array(np.dstack([gray, gray, gray, alpha]), path, vector=True)


NOT_FINITE = "the image has NaN or infinite values (20 of 133120 pixels)"


def _float_slice(path: Path, bad: float) -> None:
    """The sample PNG as a float32 W x H x 1 volume (how Slicer saves a scan), with 20 pixels ``bad`` (and
    ``-bad``): ITK's NIfTI reader returns NaN and infinities as 0, so they must be caught from the file."""
    pixels = sample_png().astype(np.float32)
    pixels[10, :10] = bad
    pixels[11, :10] = -bad
    write_array(pixels[None], path)


@dataclass(frozen=True)
class BadFile:
    """A file nobody should send; ``status``/``message`` is the answer every endpoint gives unless overridden."""

    key: str
    what: str
    name: str
    make: Callable[[Path], None]
    status: int
    message: str


BAD_FILES = [
    BadFile("empty", "empty file", "empty.png", lambda p: p.write_bytes(b""), 422, "the file is empty"),
    BadFile(
        "truncated",
        "truncated PNG (first half of the file)",
        "truncated.png",
        lambda p: p.write_bytes((SAMPLE_DATA / f"{PNG_IMAGE}.png").read_bytes()[:26_000]),
        422,
        "not a readable image",
    ),
    BadFile(
        "random",
        "random bytes named .nii.gz",
        "random.nii.gz",
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        422,
        "not a readable image",
    ),
    BadFile(
        "volume",
        "3-D volume (64 x 64 x 3 slices)",
        "volume.nii.gz",
        lambda p: write_array(np.zeros((3, 64, 64), np.uint8), p),
        422,
        "a 3-D volume of size (64, 64, 3) (3 slices)",
    ),
    BadFile("rgba", "RGBA PNG with transparent pixels", "rgba.png", _rgba_transparent, 422, "transparen"),
    BadFile(
        "tiny",
        "1 x 1 image",
        "tiny.png",
        lambda p: write_array(np.zeros((1, 1), np.uint8), p),
        422,
        "image of 1x1 pixels is too small to segment",
    ),
    BadFile(
        "huge",
        f"{HUGE_SIDE} x {HUGE_SIDE} image",
        "huge.png",
        lambda p: write_header_only_png(p, HUGE_SIDE, HUGE_SIDE),
        413,
        f"image of {HUGE_SIDE}x{HUGE_SIDE} pixels exceeds the limit of {io.DEFAULT_MAX_PIXELS} pixels",
    ),
    BadFile("nan", "float NIfTI with NaN pixels", "nan.nii.gz", lambda p: _float_slice(p, np.nan), 422, NOT_FINITE),
    BadFile(
        "inf", "float NRRD with +inf and -inf pixels", "inf.nrrd", lambda p: _float_slice(p, np.inf), 422, NOT_FINITE
    ),
    BadFile("text", "text file (notes.txt)", "notes.txt", lambda p: p.write_text("not an image"), 422, "not readable"),
]
"""``text`` is answered per endpoint (see :data:`ANSWER_OVERRIDES`)."""

ANSWER_OVERRIDES = {
    ("infer_upload", "text"): (415, "uploaded file type '.txt' is not an image"),
    ("upload", "text"): (415, "image type '.txt' is not served"),
    ("label", "text"): (422, "not a readable image"),
}


def expected_answer(endpoint: str, bad: BadFile) -> tuple[int, str]:
    return ANSWER_OVERRIDES.get((endpoint, bad.key), (bad.status, bad.message))


BLANK_FILES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "blank_png": ("blank.png", lambda p: write_array(np.zeros((320, 416), np.uint8), p)),
    "constant_nifti": ("constant.nii.gz", lambda p: write_array(np.full((1, 320, 416), 7.5, np.float32), p)),
}
"""Images whose pixels all have one value: the network sees nothing (a constant image is all zeros to it)."""
BLANK = "the image is blank (every pixel has the same value): nothing to segment"


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path (the index and lock file left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("datastore_v2.json", ".lock")
    }


def stray_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


# ---------------------------------------------------------------------------------------------------------------
# The shared server: bad files already in its studies folder (as a user may copy them there), a published model
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-files")
    files = {}
    for bad in BAD_FILES:
        files[bad.key] = folder / bad.name
        bad.make(files[bad.key])
    return files


@pytest.fixture(scope="module")
def blank_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("blank-files")
    files = {}
    for key, (name, make) in BLANK_FILES.items():
        files[key] = folder / name
        make(files[key])
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory, bad_files, blank_files) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("robustness")
    studies = copy_studies(SAMPLE_DATA, root / "studies")
    for key, path in {**bad_files, **blank_files}.items():
        if io.is_image_file(path):
            shutil.copy(path, studies / f"bad_{key}{io.image_extension(path)}")
    # no starter model: the tests publish one (a trained model as Train leaves it) or take it away
    with ServerProcess(studies, root / "server", conf=[("starter_model", "false")], env=QUIET) as running:
        publish_model(running)
        yield running


def publish_model(server: ServerProcess) -> Path:
    server.model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(STARTER.with_suffix(".json"), server.model_dir / "sscase.json")
    shutil.copy(STARTER, server.model_dir / "sscase.pt")
    return server.model_dir / "sscase.pt"


def send(method: str, server: ServerProcess, path_and_query: str, **kwargs) -> requests.Response:
    """A request with the query string exactly as written (percent-escapes are not re-encoded)."""
    return requests.request(method, f"{server.url}{path_and_query}", timeout=TIMEOUT, **kwargs)


def detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except (ValueError, AttributeError):
        return response.text


def assert_refused(
    response: requests.Response, status: int, message: str, server: ServerProcess, sent: str = ""
) -> None:
    """The expected 4xx, a message naming the problem and no server path (other than one ``sent`` by the client),
    and the server still answers."""
    text = detail(response)
    assert response.status_code == status, f"{response.status_code} {text}\n{server.log_tail(20)}"
    assert message in text, text
    own = text.replace(sent, "") if sent else text
    assert "/tmp/tmp" not in own and str(server.studies) not in own, f"the message shows a server path: {text}"
    assert requests.get(f"{server.url}/info/", timeout=TIMEOUT).ok


def upload(server: ServerProcess, file: Path, image_id: str, name: str | None = None) -> requests.Response:
    with open(file, "rb") as f:
        return send("PUT", server, f"/datastore/image?image={image_id}", files={"file": (name or file.name, f)})


def save_label(server: ServerProcess, image_id: str, file: Path, tag: str = "final") -> requests.Response:
    with open(file, "rb") as f:
        return send("PUT", server, f"/datastore/label?image={image_id}&tag={tag}", files={"label": (file.name, f)})


def infer_upload(server: ServerProcess, file: Path) -> requests.Response:
    with open(file, "rb") as f:
        return send("POST", server, "/infer/sscase?output=json", files={"file": (file.name, f)})


# ---------------------------------------------------------------------------------------------------------------
# Bad files: infer (upload and datastore id), image upload, save label
# ---------------------------------------------------------------------------------------------------------------

BAD_IDS = [bad.key for bad in BAD_FILES]


@pytest.mark.parametrize("bad", BAD_FILES, ids=BAD_IDS)
def test_infer_on_a_bad_upload_is_refused(server, bad_files, bad):
    status, message = expected_answer("infer_upload", bad)
    assert_refused(infer_upload(server, bad_files[bad.key]), status, message, server)


@pytest.mark.parametrize("bad", [b for b in BAD_FILES if b.key != "text"], ids=BAD_IDS[:-1])
def test_infer_on_a_bad_datastore_image_is_refused(server, bad):
    status, message = expected_answer("infer_id", bad)
    response = send("POST", server, f"/infer/sscase?image=bad_{bad.key}&output=json")
    assert_refused(response, status, message, server)
    assert f"bad_{bad.key}" in detail(response)  # names the file


@pytest.mark.parametrize("bad", BAD_FILES, ids=BAD_IDS)
def test_a_bad_image_upload_is_refused_and_leaves_nothing(server, bad_files, bad):
    before = checksums(server.studies)
    status, message = expected_answer("upload", bad)
    assert_refused(upload(server, bad_files[bad.key], f"up_{bad.key}"), status, message, server)
    assert checksums(server.studies) == before
    assert not stray_temp_files(server.studies)
    assert f"up_{bad.key}" not in requests.get(f"{server.url}/datastore/?output=all", timeout=TIMEOUT).json()["objects"]


@pytest.mark.parametrize("image_id", [LABELLED_PNG, PNG_IMAGE], ids=["over-a-final-label", "unlabelled-image"])
@pytest.mark.parametrize("bad", BAD_FILES, ids=BAD_IDS)
def test_a_bad_label_is_refused_and_the_previous_label_stays(server, bad_files, bad, image_id):
    before = checksums(server.studies)
    status, message = expected_answer("label", bad)
    assert_refused(save_label(server, image_id, bad_files[bad.key]), status, message, server)
    assert checksums(server.studies) == before
    assert not stray_temp_files(server.studies)


def _label_of_wrong_size(path: Path) -> None:
    write_array(np.ones((100, 80), np.uint8), path)


def _label_with_value_7(path: Path) -> None:
    label = np.zeros(sample_png().shape, np.uint8)
    label[100:140, 150:200] = 7
    write_array(label, path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_label_of_wrong_size, "the uploaded label has (H, W) = (100, 80) but its image case_015.png has (H, W)"),
        (_label_with_value_7, "label values [7] (1 distinct) are outside the 2 configured classes"),
    ],
    ids=["size-differs-from-image", "values-outside-classes"],
)
def test_a_label_that_does_not_fit_its_image_is_refused(server, tmp_path, make, message):
    label = tmp_path / "label.png"
    make(label)
    before = checksums(server.studies)
    assert_refused(save_label(server, LABELLED_PNG, label), 422, message, server)
    assert checksums(server.studies) == before


def test_a_label_for_an_unknown_image_is_refused(server):
    label = SAMPLE_DATA / "labels" / "final" / f"{LABELLED_PNG}.png"
    assert_refused(save_label(server, "case_999", label), 404, "image 'case_999' is not in the datastore", server)


def test_huge_images_are_refused_from_the_header_and_memory_stays_bounded(server, bad_files):
    """10000 x 10000 is refused before decoding (100 MB of pixels, over 1 GB as float RGB): the peak RSS of the
    server stays within MEMORY_BOUND_MB of what it was."""
    process = psutil.Process(server.process.pid)
    assert infer_upload(server, SAMPLE_DATA / f"{PNG_IMAGE}.png").ok  # model loaded before measuring
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    try:
        answers = [
            infer_upload(server, bad_files["huge"]),
            send("POST", server, "/infer/sscase?image=bad_huge&output=json"),
            upload(server, bad_files["huge"], "up_huge"),
            save_label(server, LABELLED_PNG, bad_files["huge"]),
        ]
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - start
    assert [a.status_code for a in answers] == [413] * 4, [detail(a) for a in answers]
    growth_mb = (peak - baseline) / 2**20
    print(f"4 huge requests in {elapsed:.2f} s; server peak RSS +{growth_mb:.1f} MB over {baseline / 2**20:.0f} MB")
    assert growth_mb < MEMORY_BOUND_MB
    assert elapsed < 30


# ---------------------------------------------------------------------------------------------------------------
# Legitimate 16-bit and colour images are converted, not refused
# ---------------------------------------------------------------------------------------------------------------


def _png_16bit(path: Path) -> None:
    write_array(sample_png().astype(np.uint16) * 257, path)


def _png_rgb(path: Path) -> None:
    gray = sample_png()
    write_array(np.dstack([gray, gray // 2, gray]), path, vector=True)


def _png_rgba_opaque(path: Path) -> None:
    gray = sample_png()
    write_array(np.dstack([gray, gray, gray, np.full(gray.shape, 255, np.uint8)]), path, vector=True)


@pytest.mark.parametrize(
    "make", [_png_16bit, _png_rgb, _png_rgba_opaque], ids=["16-bit-png", "rgb-png", "rgba-png-opaque"]
)
def test_16bit_and_colour_images_are_converted(server, tmp_path, make):
    image = tmp_path / f"{make.__name__.strip('_')}.png"
    make(image)
    client = slicer_client(server)
    shape = sample_png().shape
    result, params = client.infer("sscase", "", {"result_extension": ".nrrd"}, file=str(image))
    mask, geometry = io.read_image(result)
    assert geometry.shape_hw == shape and set(np.unique(mask)) <= {0, 1} and params["pixels"]["cerebellum"] > 0

    image_id = f"ok_{make.__name__.strip('_')}"
    response = upload(server, image, image_id)
    assert response.status_code == 200, detail(response)
    assert (server.studies / f"{image_id}.png").read_bytes() == image.read_bytes()
    result, _ = client.infer("sscase", image_id, {"result_extension": ".nrrd"})
    assert io.read_image(result)[1].shape_hw == shape


# ---------------------------------------------------------------------------------------------------------------
# Blank images: Run and Upload refuse them; a label on one must be empty
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BLANK_FILES, ids=list(BLANK_FILES))
def test_a_blank_image_is_refused_by_run_and_upload(server, blank_files, key):
    before = checksums(server.studies)
    assert_refused(infer_upload(server, blank_files[key]), 422, BLANK, server)
    response = send("POST", server, f"/infer/sscase?image=bad_{key}&output=json")
    assert_refused(response, 422, BLANK, server)
    assert f"bad_{key}" in detail(response)
    assert_refused(upload(server, blank_files[key], f"up_{key}"), 422, BLANK, server)
    assert checksums(server.studies) == before


def _label_like(image: Path, path: Path, foreground: bool) -> Path:
    reference = sitk.ReadImage(str(image))
    array = np.zeros(sitk.GetArrayFromImage(reference).shape[:3], np.uint8)
    if foreground:
        array[..., 100:140, 150:200] = 1
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(reference)
    sitk.WriteImage(label, str(path))
    return path


def test_a_label_on_a_blank_image_must_be_empty(server, tmp_path):
    """Foreground on a blank image would teach the model to find the cerebellum in nothing; an empty label marks
    the blank frame as done, so Next Sample stops offering it."""
    image = server.studies / "bad_constant_nifti.nii.gz"
    before = checksums(server.studies)
    painted = _label_like(image, tmp_path / "painted.nii.gz", foreground=True)
    response = save_label(server, "bad_constant_nifti", painted)
    assert_refused(
        response, 422, "the image is blank (every pixel has the same value) but the label marks 2000", server
    )
    assert checksums(server.studies) == before

    empty = _label_like(image, tmp_path / "empty.nii.gz", foreground=False)
    response = save_label(server, "bad_constant_nifti", empty)
    assert response.status_code == 200, detail(response)
    assert (server.studies / "labels" / "final" / "bad_constant_nifti.nii.gz").read_bytes() == empty.read_bytes()


def test_an_empty_label_on_a_normal_image_is_kept(server, tmp_path):
    """What Slicer saves when the sonographer finds no cerebellum: all background, accepted as any label."""
    empty = _label_like(SAMPLE_DATA / "case_008.nii.gz", tmp_path / "empty.nii.gz", foreground=False)
    response = save_label(server, "case_008", empty)
    assert response.status_code == 200, detail(response)
    assert (server.studies / "labels" / "final" / "case_008.nii.gz").read_bytes() == empty.read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Results reach a client on the same machine
# ---------------------------------------------------------------------------------------------------------------

RESULT_ROUNDS = 50


def test_every_result_reaches_a_client_on_this_machine_using_the_default_temp_folder(server):
    """MONAI Label deletes the result file after sending it and its client saves its copy under the same file name
    in its own temp folder, by default ``/tmp``. With the server's result in ``/tmp`` too, that deletion removed the
    client's copy now and then (issue #11). Results now wait in the server's own folder, and are still deleted."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server.url)  # no tmpdir: what a Python user on the server's machine gets
    images = sorted(p for p in SAMPLE_DATA.iterdir() if io.is_image_file(p))
    received: list[Path] = []
    lost: list[str] = []
    for index in range(RESULT_ROUNDS):
        image = images[index % len(images)]
        result, _ = client.infer("sscase", io.image_stem(image), {"result_extension": ".nrrd"})
        received.append(Path(result))
        try:
            mask, geometry = io.read_image(result)
            assert geometry.shape_hw == io.read_image(image)[1].shape_hw and set(np.unique(mask)) <= {0, 1}
            time.sleep(0.05)  # the user opens it a moment later
            if not Path(result).is_file():
                raise io.ImageReadError(f"{result}: deleted after it arrived")
        except io.ImageReadError as e:
            lost.append(f"{image.name}: {e}")
        Path(result).unlink(missing_ok=True)
    assert not lost, f"{len(lost)} of {RESULT_ROUNDS} results lost: {lost[:5]}"

    own_folder = server.workdir / "home" / "results"  # $SSCASE_MONAI_HOME/results
    deadline = time.monotonic() + 10  # the server deletes its copy in a background task after sending
    while (left := [p.name for p in received if (own_folder / p.name).exists()]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"the server kept {len(left)} result file(s): {left[:5]}"
    assert all(p.name.startswith("sscase-result-") for p in received)  # never a name the server's temp files use


# ---------------------------------------------------------------------------------------------------------------
# Requests that cannot be served: unknown model, no trained model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "available"),
    [
        ("POST", "/infer/nope?image=case_004", "['sscase', 'sscase_measurements']"),
        ("POST", "/train/nope", "['sscase']"),
        ("POST", "/batch/infer/nope", "['sscase']"),
    ],
    ids=["infer", "train", "batch-infer"],
)
def test_an_unknown_model_is_a_404(server, method, path, available):
    response = send(method, server, path, json={})
    assert_refused(response, 404, f"unknown model 'nope'; available: {available}", server)
    assert requests.get(f"{server.url}/train/", timeout=TIMEOUT).status_code == 404  # no task was started


def test_batch_infer_with_the_measurement_model_is_a_400(server):
    response = send("POST", server, "/batch/infer/sscase_measurements", json={})
    assert_refused(response, 400, "'sscase_measurements' returns markups, not masks: batch infer one of", server)
    assert requests.get(f"{server.url}/batch/infer/", timeout=TIMEOUT).status_code == 404  # no task was started


def test_infer_with_neither_an_image_nor_a_file_is_a_400(server):
    for request in [{}, {"data": {"params": "{}"}}]:  # MONAI Label answered both with a 500
        response = send("POST", server, "/infer/sscase", **request)
        assert_refused(response, 400, "nothing to segment: send a datastore image id (?image=ID) or an image", server)
    response = send("POST", server, "/infer/sscase?session_id=nope")
    assert_refused(response, 404, "unknown or expired session id", server)


def scoring_tasks(server: ServerProcess) -> list:
    response = send("GET", server, "/scoring/?all=true")
    return response.json() if response.ok else []


def test_an_unknown_scoring_method_is_a_404_and_starts_nothing(server):
    before = scoring_tasks(server)
    response = send("POST", server, "/scoring/nope", json={})
    assert_refused(
        response, 404, "unknown scoring method 'nope'; available: ['diversity', 'epistemic', 'hybrid', 'tta']", server
    )
    assert scoring_tasks(server) == before  # MONAI Label had accepted it and started a task that failed
    response = send("POST", server, "/scoring/tta?run_sync=true", json={})  # a known one is served as before
    assert response.status_code == 200 and response.json()["scored"] >= 1, detail(response)


def test_batch_infer_leaves_out_the_images_it_refuses(server):
    """One unusable image in the datastore ended MONAI Label's whole batch infer; now it is left out, with why."""
    images = ["case_000", "bad_empty", "bad_nan", "bad_blank_png", "case_006"]
    response = send("POST", server, "/batch/infer/sscase?run_sync=true", json={"images": images, "label_tag": "batch"})
    assert response.status_code == 200, detail(response)
    result = response.json()
    assert "the file is empty" in result["bad_empty"]["refused"]
    assert "NaN or infinite values" in result["bad_nan"]["refused"]
    assert "the image is blank" in result["bad_blank_png"]["refused"]
    assert "/tmp/" not in json.dumps(result) and str(server.studies) not in json.dumps(result)
    assert {io.image_stem(p) for p in (server.studies / "labels" / "batch").iterdir()} == {"case_000", "case_006"}


def test_infer_without_a_trained_model_is_a_409(server):
    published = server.model_dir / "sscase.pt"
    aside = server.model_dir / "aside.bin"
    published.rename(aside)
    try:
        response = send("POST", server, "/infer/sscase?image=case_004&output=json")
        assert_refused(response, 409, "no trained model yet", server)
    finally:
        aside.rename(published)
    assert send("POST", server, "/infer/sscase?image=case_004&output=json").ok


# ---------------------------------------------------------------------------------------------------------------
# Paths: ids and tags never leave the studies folder
# ---------------------------------------------------------------------------------------------------------------

PATH_LIKE = {
    "dotdot": "../../etc/passwd",
    "absolute": "/etc/hostname",
    "encoded": "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "double-encoded": "%252e%252e%252fetc",
    "nul": "case_004%00",
    "parent": "..",
    "inner-dotdot": "case_004/../case_004",
    "tmp-file": "/tmp/tmpnothere.png",
}


def files_around_the_studies(server: ServerProcess) -> dict[str, str]:
    """Checksums of everything in the studies folder and beside it, but the server's own folder (its log grows)."""
    own = server.workdir.relative_to(server.studies.parent).parts[0]
    return {k: v for k, v in checksums(server.studies.parent).items() if Path(k).parts[0] != own}


@pytest.mark.parametrize("value", PATH_LIKE.values(), ids=PATH_LIKE.keys())
def test_path_like_ids_and_tags_are_refused(server, value):
    before = files_around_the_studies(server)
    sent = value if "%" not in value else ""
    response = send("POST", server, f"/infer/sscase?image={value}")
    assert_refused(response, 400, "invalid image id", server, sent)
    png = SAMPLE_DATA / f"{PNG_IMAGE}.png"
    assert_refused(upload(server, png, value), 400, "invalid image id", server, sent)
    label = SAMPLE_DATA / "labels" / "final" / f"{LABELLED_PNG}.png"
    assert_refused(save_label(server, value, label), 400, "invalid image id", server, sent)
    assert_refused(save_label(server, LABELLED_PNG, label, tag=value), 400, "invalid label tag", server, sent)
    assert files_around_the_studies(server) == before  # nothing written in or beside the studies folder


@pytest.mark.parametrize("value", PATH_LIKE.values(), ids=PATH_LIKE.keys())
@pytest.mark.parametrize(
    "query",
    [
        "/datastore/image?image={v}",
        "/datastore/label?label={v}&tag=final",
        f"/datastore/label?label={LABELLED_PNG}&tag={{v}}",
    ],
    ids=["image", "label", "label-tag"],
)
def test_downloads_never_serve_files_outside_the_studies(server, value, query):
    response = send("GET", server, query.format(v=value))
    assert response.status_code == 404, response.text
    assert b"root:" not in response.content and len(response.content) < 200


def test_infer_never_reads_a_server_file_given_as_image(server):
    for image in ("/etc/hostname", "/etc/passwd", str(server.studies / f"{PNG_IMAGE}.png")):
        response = send("POST", server, f"/infer/sscase?image={image}&output=json")
        assert_refused(response, 400, "invalid image id", server, sent=image)


def test_an_upload_named_with_a_path_lands_in_the_studies_folder(server):
    response = upload(server, SAMPLE_DATA / f"{PNG_IMAGE}.png", "", name="../../escaped.png")
    assert response.status_code == 200 and response.json()["image"] == "escaped"
    assert (server.studies / "escaped.png").is_file()
    assert not (server.studies.parent.parent / "escaped.png").exists()
    assert not (server.studies.parent / "escaped.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# Concurrency: 8 clients infer while labels are saved and a training runs
# ---------------------------------------------------------------------------------------------------------------


def wait_for_training(server: ServerProcess, timeout: float = 600.0) -> dict:
    start = time.monotonic()
    while True:
        status = requests.get(f"{server.url}/train/", timeout=TIMEOUT).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status
        assert time.monotonic() - start < timeout, f"training still {status.get('status')}\n{server.log_tail()}"
        time.sleep(1)


def nifti_label(image: Path, seed: int, path: Path) -> Path:
    """A random-blob binary label on ``image``'s grid, as Slicer saves it (W x H x 1 .nii.gz)."""
    reference = sitk.ReadImage(str(image))
    rng = np.random.default_rng(seed)
    array = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
    _, h, w = array.shape
    y, x = rng.integers(20, h - 60), rng.integers(20, w - 60)
    array[0, y : y + rng.integers(10, 50), x : x + rng.integers(10, 50)] = 1
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(reference)
    sitk.WriteImage(label, str(path))
    return path


@pytest.mark.slow
def test_eight_clients_infer_while_labels_are_saved_and_training_runs(tmp_path):
    """Clients and the label saver keep going until the training (and its stage-3 pseudo-labels, which the training
    process writes into the same datastore index) is over."""
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    targets = ["case_000", "case_001", "case_002", "case_003"]  # unlabelled: each gets a final label, many times
    with ServerProcess(studies, tmp_path / "server", env=QUIET) as server:
        finals_before = checksums(studies / "labels" / "final")
        response = requests.post(f"{server.url}/train/sscase", json=dict(SHORT_SCHEDULE), timeout=TIMEOUT)
        assert response.ok, response.text
        training_over = threading.Event()
        errors: list[str] = []
        last_sent: dict[str, str] = {}
        counts = {"infers": 0, "saves": 0}
        lock = threading.Lock()

        def watch_training() -> None:
            try:
                wait_for_training(server)
            finally:
                training_over.set()

        def infer_client(index: int) -> None:
            client = slicer_client(server)
            done = 0
            while (done < 10 or not training_over.is_set()) and done < 100:
                image_id = f"case_{(index + done) % 16:03d}"
                done += 1
                try:
                    result, _ = client.infer("sscase", image_id, {"result_extension": ".nrrd"})
                    assert io.read_image(result)[0].max() <= 1
                    Path(result).unlink()
                    with lock:
                        counts["infers"] += 1
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    errors.append(f"infer {image_id}: {type(e).__name__}: {e}")
                time.sleep(1.0)

        def label_saver() -> None:
            folder = tmp_path / "labels-sent"
            folder.mkdir()
            round_ = 0
            while (round_ < 5 or not training_over.is_set()) and round_ < 200:
                for image_id in targets:
                    label = nifti_label(
                        studies / f"{image_id}.nii.gz", round_ * 100 + int(image_id[-3:]), folder / "l.nii.gz"
                    )
                    digest = hashlib.sha256(label.read_bytes()).hexdigest()
                    try:
                        response = save_label(server, image_id, label)
                    except requests.RequestException as e:
                        errors.append(f"save {image_id}: {e}")
                        continue
                    if response.status_code != 200:
                        errors.append(f"save {image_id}: {response.status_code} {detail(response)}")
                        continue
                    last_sent[image_id] = digest
                    counts["saves"] += 1
                round_ += 1

        threads = [threading.Thread(target=infer_client, args=(i,)) for i in range(8)]
        threads += [threading.Thread(target=label_saver), threading.Thread(target=watch_training)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
        elapsed = time.monotonic() - start
        status = requests.get(f"{server.url}/train/", timeout=TIMEOUT).json()
        print(f"{counts['infers']} infers and {counts['saves']} label saves in {elapsed:.0f} s during training")

        assert not errors, "\n".join(errors[:20])
        assert counts["infers"] >= 80 and set(last_sent) == set(targets)
        assert status["status"] == "DONE", "\n".join(status.get("details", [])) + server.log_tail()
        finals_after = checksums(studies / "labels" / "final")
        for image_id in targets:
            assert finals_after.pop(f"{image_id}.nii.gz") == last_sent[image_id], image_id
        assert finals_after == finals_before  # no other label changed
        assert not stray_temp_files(studies)

        index = json.loads((studies / "datastore_v2.json").read_text())  # valid JSON
        for tag_folder in (studies / "labels").iterdir():  # every label file is in the index, and vice versa
            on_disk = {io.image_stem(p) for p in tag_folder.iterdir() if p.is_file()}
            listed = {k for k, v in index["objects"].items() if tag_folder.name in v["labels"]}
            assert on_disk == listed, tag_folder.name
        assert any("pseudo" in v["labels"] for v in index["objects"].values())  # the training process wrote too
        served = requests.get(f"{server.url}/datastore/?output=stats", timeout=TIMEOUT).json()
        assert served["completed"] == len(finals_before) + len(targets)


# ---------------------------------------------------------------------------------------------------------------
# Interruption: SIGKILL the training process mid-stage, then train again
# ---------------------------------------------------------------------------------------------------------------


def training_process(server: ServerProcess) -> psutil.Process | None:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "monailabel.interfaces.utils.app" in command and "train" in command:
            return child
    return None


def history_rows(train_dir: Path) -> list[dict[str, str]]:
    with open(train_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_killed_training_leaves_everything_intact_and_resumes(tmp_path):
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    schedule = {"epochs": "1,4,1", "samples_per_image": 2, "batch_size": 4}
    with ServerProcess(studies, tmp_path / "server", env=QUIET) as server:
        published = publish_model(server)  # the model in use before this training
        published_digest = hashlib.sha256(published.read_bytes()).hexdigest()
        finals = checksums(studies / "labels" / "final")
        train_dir = server.model_dir / "sscase" / "train"
        checkpoint = train_dir / "checkpoints" / "last.pt"

        assert requests.post(f"{server.url}/train/sscase", json=dict(schedule), timeout=TIMEOUT).ok
        deadline = time.monotonic() + 600
        while True:  # until stage 2 is under way: a checkpoint exists and the stage has 2+ epochs left
            stats = requests.get(f"{server.url}/info/", timeout=TIMEOUT).json()["train_stats"].get("sscase", {})
            if checkpoint.is_file() and stats.get("stage") == 2 and stats["stage_epoch"] <= stats["stage_epochs"] - 2:
                break
            assert requests.get(f"{server.url}/train/", timeout=TIMEOUT).json()["status"] in ("SUBMITTED", "RUNNING")
            assert time.monotonic() < deadline, f"training never reached stage 2\n{server.log_tail()}"
            time.sleep(0.5)
        process = training_process(server)
        assert process is not None
        process.send_signal(signal.SIGKILL)  # the laptop lid closes
        process.wait(timeout=30)
        status = wait_for_training(server, timeout=60)
        assert status["status"] == "ERROR"  # the server saw the crash and keeps serving

        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        done_before = [dict(r) for r in saved["history"]]
        assert saved["stage"] == 2 and 1 <= saved["epoch"] < 4, (saved["stage"], saved["epoch"])
        assert hashlib.sha256(published.read_bytes()).hexdigest() == published_digest  # never half-replaced
        load_model(published)
        visible = {p.name for p in server.model_dir.iterdir() if not p.name.startswith(".")}
        assert visible == {"sscase.pt", "sscase.json", "sscase"}  # no temporary file looks like a model
        assert checksums(studies / "labels" / "final") == finals
        assert send("POST", server, "/infer/sscase?image=case_004&output=json").ok

        log_offset = server.log_path.stat().st_size
        assert requests.post(f"{server.url}/train/sscase", json=dict(schedule), timeout=TIMEOUT).ok
        status = wait_for_training(server)
        assert status["status"] == "DONE", "\n".join(status.get("details", [])) + server.log_tail()
        restarted_log = server.log_path.read_bytes()[log_offset:].decode(errors="replace")
        assert f"resuming from {checkpoint}: stage 2, {saved['epoch']} epoch(s) done" in restarted_log

        rows = history_rows(train_dir)
        assert [int(r["global_epoch"]) for r in rows] == list(range(1, 7))  # 1 + 4 + 1 epochs, none twice
        for before, after in zip(done_before, rows, strict=False):  # the epochs before the kill were not redone
            assert float(after["train_loss"]) == pytest.approx(float(before["train_loss"]), rel=1e-5)
        assert hashlib.sha256(published.read_bytes()).hexdigest() != published_digest  # the new model is published
        load_model(published)
        assert not checkpoint.exists()  # a finished run: the next Train starts afresh
        assert checksums(studies / "labels" / "final") == finals


# ---------------------------------------------------------------------------------------------------------------
# Shutdown: the server's training and scoring processes stop with it
# ---------------------------------------------------------------------------------------------------------------


def background_processes(server: ServerProcess) -> list[psutil.Process]:
    """The server's training, scoring and batch-infer processes and everything they started."""
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "monailabel.interfaces.utils.app" in child.cmdline():
                found += [child, *child.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def still_running(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_server_stops_its_training_and_scoring(tmp_path, sig):
    """The signal goes to the server process alone (not its process group, as a service manager or ``kill PID``
    sends it). Before #11, on SIGTERM the server exited and left the training running; on SIGINT it waited for it."""
    studies = copy_studies(SAMPLE_DATA, tmp_path / "studies")
    with ServerProcess(studies, tmp_path / "server", env=QUIET) as server:
        schedule = {"epochs": "1,50,1", "samples_per_image": 2, "batch_size": 4}  # runs far longer than this test
        assert requests.post(f"{server.url}/train/sscase", json=schedule, timeout=TIMEOUT).ok
        assert requests.post(f"{server.url}/scoring/epistemic", json={}, timeout=TIMEOUT).ok
        deadline = time.monotonic() + 120
        while training_process(server) is None:
            assert time.monotonic() < deadline, f"no training process\n{server.log_tail()}"
            time.sleep(0.5)
        children = background_processes(server)
        try:
            server.process.send_signal(sig)
            server.process.wait(timeout=60)  # a server waiting for its training would hang here
            assert not still_running(children), f"left running after {sig.name}: {still_running(children)}"
            assert "stopping train task" in server.log_path.read_text()
        finally:
            for process in children:  # whatever the outcome, nothing outlives the test
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


# ---------------------------------------------------------------------------------------------------------------
# Exposure: the serve command binds this machine only unless told otherwise, and says so
# ---------------------------------------------------------------------------------------------------------------


def serve_dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sscase_monai", "serve", "--dry-run", "--workspace", str(tmp_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_serve_binds_this_machine_only_by_default(tmp_path):
    result = serve_dry_run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--host 127.0.0.1" in result.stdout
    assert "binding 127.0.0.1:8000 (this machine only)" in result.stderr
    assert "WARNING" not in result.stderr


def test_serve_on_all_interfaces_warns_that_it_is_exposed(tmp_path):
    result = serve_dry_run(tmp_path, "--host", "0.0.0.0", "--port", "8123")  # --dry-run: nothing is bound
    assert result.returncode == 0, result.stderr
    assert "--host 0.0.0.0" in result.stdout
    assert "binding 0.0.0.0:8123 (reachable from the network)" in result.stderr
    assert "WARNING" in result.stderr and "the server is exposed to the network on 0.0.0.0:8123" in result.stderr
    assert "MONAI_LABEL_AUTH_ENABLE" in result.stderr and "Exposing the server" in result.stderr


def test_server_listens_on_loopback_only(server):
    listening = {
        c.laddr for c in psutil.Process(server.process.pid).net_connections(kind="inet") if c.status == "LISTEN"
    }
    assert listening == {("127.0.0.1", server.port)}, listening
