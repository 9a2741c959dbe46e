"""Tests for sscase_monai.data: folder discovery, pairing, validation, exam splits, RepeatDataset."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose
from PIL import Image
from torch.utils.data import DataLoader

from sscase_monai import data as D
from sscase_monai import transforms as T


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _mask(h: int = 32, w: int = 32, value: int = 1) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[8:24, 10:22] = value
    return mask


def _image(h: int = 32, w: int = 32) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def test_find_images_sorted_non_recursive_skips_hidden(tmp_path):
    for name in ("b.png", "a.nii.gz", "c.jpg", "._a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in D.find_images(tmp_path)] == ["a.nii.gz", "b.png", "c.jpg"]


def test_find_images_missing_or_empty_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        D.find_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no image files"):
        D.find_images(tmp_path / "empty")


def test_pair_images_with_labels_by_stem(tmp_path, caplog):
    for name in ("a", "b"):
        _png(tmp_path / "images" / f"{name}.png", _image())
    _png(tmp_path / "labels" / "a.png", _mask())
    sitk.WriteImage(sitk.GetImageFromArray(_mask()[None]), str(tmp_path / "labels" / "b.nii.gz"))
    _png(tmp_path / "labels" / "orphan.png", _mask())
    with caplog.at_level(logging.WARNING, logger="sscase_monai.data"):
        pairs = D.pair_images_with_labels(tmp_path / "images", tmp_path / "labels")
    assert [(Path(p["image"]).name, Path(p["label"]).name) for p in pairs] == [
        ("a.png", "a.png"),
        ("b.png", "b.nii.gz"),
    ]
    assert "orphan.png" in caplog.text


def test_pair_lists_images_without_label(tmp_path):
    for i in range(8):
        _png(tmp_path / "images" / f"img{i}.png", _image())
    _png(tmp_path / "labels" / "img0.png", _mask())
    with pytest.raises(ValueError, match=r"7 of 8 image\(s\).*img1\.png.*img5\.png and 2 more"):
        D.pair_images_with_labels(tmp_path / "images", tmp_path / "labels")


def test_validate_accepts_good_pairs_including_0_255(tmp_path):
    pairs = [
        {"image": str(_png(tmp_path / "a.png", _image())), "label": str(_png(tmp_path / "la.png", _mask()))},
        {"image": str(_png(tmp_path / "b.png", _image())), "label": str(_png(tmp_path / "lb.png", _mask(value=255)))},
    ]
    D.validate_labelled_pairs(pairs, num_classes=2)


def test_validate_lists_every_problem_with_file_names(tmp_path):
    good_image = str(_png(tmp_path / "good.png", _image()))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    bad_values = _mask()
    bad_values[0, 0] = 9
    pairs = [
        {"image": str(broken), "label": str(_png(tmp_path / "l1.png", _mask()))},
        {"image": good_image, "label": str(_png(tmp_path / "small.png", _mask(16, 32)))},
        {"image": good_image, "label": str(_png(tmp_path / "values.png", bad_values))},
        {"image": good_image, "label": str(_png(tmp_path / "fine.png", _mask()))},
    ]
    with pytest.raises(D.DataValidationError) as caught:
        D.validate_labelled_pairs(pairs, num_classes=2)
    error = caught.value
    assert isinstance(error, ValueError) and len(error.problems) == 3
    message = str(error)
    assert "broken.png" in message and "not a readable image" in message
    assert "small.png" in message and "(16, 32)" in message and "good.png" in message
    assert "values.png" in message and "[9]" in message
    assert "fine.png" not in message
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


def test_split_by_exam_keeps_exams_together_and_is_reproducible():
    names = [f"{i:03d}_HC.png" for i in range(20)] + [f"{i:03d}_2HC.png" for i in range(0, 20, 2)]
    items = [{"image": f"/data/{n}", "label": f"/labels/{n}"} for n in names]
    train, val = D.split_by_exam(items, val_fraction=0.25, seed=1)
    assert len(train) + len(val) == len(items) and val
    assert abs(len(val) - 0.25 * len(items)) <= 1
    train_exams = {D.exam_id(i["image"]) for i in train}
    val_exams = {D.exam_id(i["image"]) for i in val}
    assert not train_exams & val_exams
    assert D.split_by_exam(items, 0.25, seed=1) == (train, val)
    assert D.split_by_exam(items, 0.25, seed=2) != (train, val)
    assert D.exam_id("017_2HC.png") == D.exam_id("017_HC.nii.gz") == "017"
    assert D.exam_id("scan_a.png") == "scan_a"
    generic_train, generic_val = D.split_by_exam([f"s{i}.png" for i in range(10)], 0.2, seed=0)
    assert len(generic_val) == 2 and len(generic_train) == 8


def _items(n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for _ in range(n):
        label = torch.zeros(1, 32, 32, dtype=torch.int64)
        label[:, 10:22, 8:20] = 1
        items.append({"image": torch.from_numpy(rng.random((3, 32, 32), dtype=np.float32)), "label": label})
    return items


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_repeat_dataset_length_and_base_mapping():
    base = _items(3)
    dataset = D.RepeatDataset(base, transform=None, samples_per_image=32)
    assert len(dataset) == 96
    assert dataset[4] is base[1] and dataset[-1] is base[2]
    with pytest.raises(IndexError):
        dataset[96]
    with pytest.raises(ValueError, match="samples_per_image"):
        D.RepeatDataset(base, samples_per_image=0)


def test_repeat_dataset_draws_are_reproducible_per_seed_epoch_index():
    augment = Compose(T.build_train_augment())
    dataset = D.RepeatDataset(_items(2), transform=augment, samples_per_image=16, seed=7)
    first = [dataset[i] for i in range(len(dataset))]
    assert all(_same(dataset[i], first[i]) for i in (5, 0, 31))  # order of access does not matter
    same_image = [first[i] for i in range(0, 32, 2)]  # every draw of base item 0
    assert sum(not _same(same_image[0], d) for d in same_image[1:]) >= 10
    dataset.set_epoch(1)
    assert sum(not _same(dataset[i], first[i]) for i in range(len(dataset))) >= len(dataset) // 2
    dataset.set_epoch(0)
    assert _same(dataset[9], first[9])
    other_seed = D.RepeatDataset(_items(2), transform=augment, samples_per_image=16, seed=8)
    assert any(not _same(other_seed[i], first[i]) for i in range(8))


def test_repeat_dataset_same_samples_with_and_without_workers():
    dataset = D.RepeatDataset(_items(2), transform=Compose(T.build_train_augment()), samples_per_image=4, seed=3)
    serial = list(DataLoader(dataset, batch_size=2, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=2, num_workers=2))
    assert all(_same(a, b) for a, b in zip(serial, parallel, strict=True))


def test_item_seed_is_stable():
    assert D.item_seed(0, 0, 0) == D.item_seed(0, 0, 0)
    assert len({D.item_seed(0, e, i) for e in range(3) for i in range(50)}) == 150


@pytest.mark.data
def test_real_hc18_pairs_validate(shared_data):
    pairs = D.pair_images_with_labels(shared_data / "hc18" / "val" / "images", shared_data / "hc18" / "val" / "labels")
    assert pairs
    D.validate_labelled_pairs(pairs[:3], num_classes=2)
    train, val = D.split_by_exam(pairs, 0.2, seed=0)
    assert not {D.exam_id(p["image"]) for p in train} & {D.exam_id(p["image"]) for p in val}
