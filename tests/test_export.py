"""``sscase-monai export``: ONNX, TorchScript and MONAI bundle round trips, each checked against PyTorch.

The starter model (a trained SS_CASE_UNet, 256x256, binary) goes through the CLI in all three formats; the exported
graphs run in ONNX Runtime and plain ``torch.jit.load``, the bundle in ``python -m monai.bundle run`` in a
subprocess, and every result is compared with the library's own prediction. A 3-class model checks the multi-class
path (all three formats, every class name and value) on real PSFHS images.
"""

from __future__ import annotations

import contextlib
import io as text_io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from monai.bundle import ConfigParser
from three_class_model import PSFHS_LABELS, three_class_model

from sscase_monai import io
from sscase_monai.bundle import METADATA_FILE, bundle_metadata, inference_config, network_definition, write_bundle
from sscase_monai.cli import main
from sscase_monai.export import (
    CHECK_DICE,
    ONNX_OPSET,
    check_export,
    export_onnx,
    export_torchscript,
    load_exported,
)
from sscase_monai.inference import Predictor
from sscase_monai.model_files import ARCHITECTURES, ModelSpec, save_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample-data"
STARTER = REPO_ROOT / "apps" / "sscase" / "starter" / "sscase_starter.pt"
CHECK_LINE = re.compile(r"max (?P<diff>\S+), mean \S+; mask Dice (?P<dice>[\d.]+)")
# what MONAI's bundle metadata schema (meta_schema_20240725.json) requires
SCHEMA_REQUIRED = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
CHANNEL_NAMES = {str(value): name for name, value in PSFHS_LABELS.items()}


def run_cli(*args: str) -> tuple[int, str]:
    out, err = text_io.StringIO(), text_io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", *args])
    return code, out.getvalue() + err.getvalue()


def run_bundle(bundle: Path, images: Path, workdir: Path) -> Path:
    """``python -m monai.bundle run`` of the bundle's inference.json on a folder of images; the masks' folder."""
    out = workdir / "masks"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs/inference.json")]
    command += ["--meta_file", str(bundle / METADATA_FILE), "--logging_file", str(bundle / "configs/logging.conf")]
    command += ["--bundle_root", str(bundle), "--dataset_dir", str(images), "--output_dir", str(out)]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def check_images(tmp_path_factory) -> Path:
    """Three sample scans: a NIfTI slice and two PNGs."""
    folder = tmp_path_factory.mktemp("check")
    for name in ("case_004.nii.gz", "case_015.png", "case_006.png"):
        shutil.copy(SAMPLE_DATA / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory, check_images) -> dict[str, tuple[Path, int, str]]:
    """The starter model exported by the CLI in every format, with its exit status and output."""
    root = tmp_path_factory.mktemp("exports")
    targets = {"onnx": root / "starter.onnx", "torchscript": root / "starter.ts", "bundle": root / "bundle"}
    results = {}
    for format, target in targets.items():
        code, output = run_cli("--model", str(STARTER), "--format", format, "--out", str(target), "--check-images",
                               str(check_images))  # fmt: skip
        results[format] = (target, code, output)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "torchscript", "bundle"])
def test_cli_writes_each_format_and_checks_it_against_pytorch(exports, format):
    target, code, output = exports[format]
    assert code == 0, output
    assert f"wrote {format}: {target}" in output
    check = CHECK_LINE.search(output)
    assert check, output
    assert "3 image(s)" in output
    assert float(check["dice"]) >= CHECK_DICE and float(check["diff"]) < 1e-2


@pytest.mark.slow
def test_onnx_graph_has_a_dynamic_batch_and_says_what_it_is(exports, check_images):
    path = exports["onnx"][0]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == ONNX_OPSET
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 256, 256]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["labels"]) == {"cerebellum": 1}
    assert json.loads(metadata["sscase_monai"])["output"]["activation"] == "sigmoid"

    predictor = Predictor.from_file(STARTER, device="cpu")
    batch = torch.stack([predictor.load_image(p)[0] for p in sorted(check_images.iterdir())])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    together = session.run(None, {"image": batch.numpy()})[0]
    alone = session.run(None, {"image": batch[1:2].numpy()})[0]
    assert together.shape == (3, 1, 256, 256) and alone.shape == (1, 1, 256, 256)
    np.testing.assert_allclose(alone[0], together[1], atol=1e-5)  # batch size does not change a result


@pytest.mark.slow
def test_torchscript_loads_with_plain_torch(exports, check_images):
    path = exports["torchscript"][0]
    extra = {"sscase_monai.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["sscase_monai.json"])["spec"]["labels"] == {"cerebellum": 1}
    predictor = Predictor.from_file(STARTER, device="cpu")
    batch = torch.stack([predictor.load_image(p)[0] for p in sorted(check_images.iterdir())])
    with torch.no_grad():
        probabilities = module(batch)
    np.testing.assert_allclose(probabilities.numpy(), predictor.predict_batch(batch).numpy(), atol=1e-4)


@pytest.mark.slow
def test_bundle_runs_with_monai_bundle_run_and_predicts_what_the_library_predicts(exports, check_images, tmp_path):
    bundle = exports["bundle"][0]
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (bundle / name).is_file(), name
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    assert all(key in metadata for key in SCHEMA_REQUIRED)
    formats = metadata["network_data_format"]
    for tensor in (*formats["inputs"].values(), *formats["outputs"].values()):
        assert all(key in tensor for key in TENSOR_REQUIRED)
    assert formats["post_processed_outputs"]["pred"]["channel_def"] == {"0": "background", "1": "cerebellum"}
    assert "sscase-monai" in metadata["required_packages_version"]

    out = run_bundle(bundle, check_images, tmp_path)
    predictor = Predictor.from_file(STARTER, device="cpu")
    for image in sorted(check_images.iterdir()):
        mask, geometry = io.read_image(out / image.name)  # same name and format as the input
        expected = predictor.predict(image)
        assert geometry == expected.geometry
        np.testing.assert_array_equal(mask, expected.mask)
        assert mask.any()  # the starter model finds the cerebellum in the sample scans


def test_check_fails_for_a_graph_that_does_not_reproduce_pytorch():
    """The check can fail: a "graph" that inverts the starter model's probabilities is caught."""
    reference = Predictor.from_file(STARTER, device="cpu")
    inverted = check_export(STARTER, lambda batch: 1.0 - reference.predict_batch(torch.as_tensor(batch)).numpy())
    assert not inverted.passed()
    assert inverted.images == 4 and inverted.max_abs_diff > 0.5 and inverted.dice < 0.5


def test_a_non_square_model_exports_with_its_height_and_width(check_images, tmp_path):
    """A model with a 64x96 (height x width) input: the ONNX graph takes and returns 64 x 96 and reproduces PyTorch
    on real scans; the bundle's metadata and preprocessing say 64 x 96."""
    spec = ModelSpec(input_size=(64, 96))
    torch.manual_seed(0)
    model_path = save_model(tmp_path / "model.pt", spec.build_network(pretrained=False), spec)
    graph = export_onnx(model_path, tmp_path / "model.onnx")
    dims = onnx.load(str(graph)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, 96]
    result = check_export(model_path, load_exported(graph), sorted(check_images.iterdir()))
    assert result.passed() and result.images == 3
    metadata = bundle_metadata(spec, {})
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 96]
    assert "input 64x96" in metadata["description"]
    preprocess = ConfigParser(inference_config(spec)).get_parsed_content("preprocessing")
    item = preprocess({"image": str(sorted(check_images.iterdir())[1])})
    assert item["image"].shape == (3, 64, 96)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bundle_network_definition_loads_the_saved_weights_of_every_architecture(architecture):
    spec = ModelSpec.for_labels(PSFHS_LABELS, architecture=architecture, input_size=64, encoder="efficientnet-b0")
    parser = ConfigParser({"network_def": network_definition(spec)})
    network = parser.get_parsed_content("network_def")
    expected = spec.build_network().state_dict()
    assert network.load_state_dict(expected, strict=True)  # same keys and shapes
    channels = bundle_metadata(spec, {})["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels == {"0": "background", "1": "pubic_symphysis", "2": "fetal_head"}


def test_cli_refuses_an_unusable_out_or_option(tmp_path):
    code, output = run_cli("--model", str(STARTER), "--format", "onnx", "--out", str(tmp_path))
    assert code == 2 and "is a folder" in output
    code, output = run_cli("--model", str(STARTER), "--format", "onnx", "--out", str(tmp_path / "model.pt"))
    assert code == 2 and "should end in .onnx" in output
    code, output = run_cli("--model", str(STARTER), "--format", "bundle", "--out", str(tmp_path / "b"), "--opset", "17")
    assert code == 2 and "--opset applies to --format onnx only" in output
    code, output = run_cli(
        "--model", str(tmp_path / "missing.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")
    )
    assert code == 2 and "not found" in output
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.data
@pytest.mark.slow
def test_three_class_exports_reproduce_pytorch_on_real_psfhs_images(shared_data, tmp_path):
    images = sorted((shared_data / "psfhs" / "images").glob("*.png"))[:8]
    model = three_class_model(tmp_path / "model.pt", images[0])
    for exported in (export_onnx(model, tmp_path / "m.onnx"), export_torchscript(model, tmp_path / "m.ts")):
        loaded = load_exported(exported)
        assert loaded.spec.labels == PSFHS_LABELS and loaded.metadata["output"]["activation"] == "softmax"
        check = check_export(model, loaded, images, source="PSFHS")
        assert check.passed(), check.summary()
        assert check.images == 8 and check.dice >= CHECK_DICE

    bundle = write_bundle(model, tmp_path / "bundle")
    metadata = json.loads((bundle / METADATA_FILE).read_text())["network_data_format"]
    assert metadata["post_processed_outputs"]["pred"]["channel_def"] == {"0": "background", **CHANNEL_NAMES}
    assert metadata["outputs"]["pred"]["channel_def"] == {"0": "background", **CHANNEL_NAMES}
    scans = tmp_path / "scans"
    scans.mkdir()
    for image in images[:2]:
        shutil.copy(image, scans / image.name)
    out = run_bundle(bundle, scans, tmp_path)
    predictor = Predictor.from_file(model, device="cpu")
    for image in sorted(scans.iterdir()):
        mask, _ = io.read_image(out / image.name)
        np.testing.assert_array_equal(mask, predictor.predict(image).mask)
        assert set(np.unique(mask)) == {0, *PSFHS_LABELS.values()}  # every class, with its label value
