"""The up-front check of folder and COCO datasets: every bad file, at construction, at once."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dense_lightning.data import (
    COCODetectionDataModule,
    COCOKeypointsDataModule,
    DatasetError,
    MissingDataError,
    SegmentationFolderDataModule,
)
from dense_lightning.data.verify import check_image, check_mask, is_local_leader, mask_labels

COCO_FILES = {"train_ann": "annotations/train.json", "val_ann": "annotations/val.json",
              "train_images": "images", "val_images": "images"}  # fmt: skip


def voc_dm(root: Path, **kwargs) -> SegmentationFolderDataModule:
    return SegmentationFolderDataModule(
        str(root), **{"image_size": 32, "num_classes": 3, "batch_size": 2, **kwargs}
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def error_of(build) -> str:
    with pytest.raises(DatasetError) as info:
        build()
    return str(info.value)


# Folder: one bad thing per test, named -----------------------------------------------------


def break_missing_mask(root: Path) -> None:
    (root / "SegmentationClass" / "b.png").unlink()


def break_missing_image(root: Path) -> None:
    (root / "JPEGImages" / "b.jpg").unlink()


def break_orphan_mask(root: Path) -> None:
    save_mask(root / "SegmentationClass" / "zz.png", np.zeros((4, 4)))


def break_mask_size(root: Path) -> None:
    save_mask(root / "SegmentationClass" / "b.png", np.zeros((10, 12)))


def break_label(root: Path) -> None:
    mask = np.zeros((48, 36))  # b is 36x48 (WxH)
    mask[3, 4] = 7
    mask[5, 5] = 255  # ignore_index: fine
    save_mask(root / "SegmentationClass" / "b.png", mask)


def break_truncated_jpeg(root: Path) -> None:
    truncate(root / "JPEGImages" / "b.jpg")


def break_not_an_image(root: Path) -> None:
    (root / "JPEGImages" / "b.jpg").write_text("this is not a picture\n")


def break_colour_mask(root: Path) -> None:
    Image.new("RGB", (36, 48)).save(root / "SegmentationClass" / "b.png")


def break_truncated_mask(root: Path) -> None:
    truncate(root / "SegmentationClass" / "b.png")


def break_empty_split(root: Path) -> None:
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")


FOLDER_PROBLEMS = {
    "missing mask": (break_missing_mask, r"listed mask missing \(1\): SegmentationClass/b\.png"),
    "missing image": (break_missing_image, r"listed image missing \(1\): JPEGImages/b\.jpg"),
    "orphan mask": (
        break_orphan_mask,
        r"mask without an image \(1\): SegmentationClass/zz\.png \(no JPEGImages/zz\.jpg\)",
    ),
    "mask size": (
        break_mask_size,
        r"mask size differs from its image \(HxW\) \(1\): SegmentationClass/b\.png "
        r"\(10x12, image 48x36\)",
    ),
    "label range": (
        break_label,
        r"label outside \[0, num_classes=3\) and not ignore_index=255 \(1\): "
        r"SegmentationClass/b\.png \(label 7\)",
    ),
    "truncated jpeg": (
        break_truncated_jpeg,
        r"unreadable image \(1\): JPEGImages/b\.jpg \(.*trunc",
    ),
    "not an image": (break_not_an_image, r"unreadable image \(1\): JPEGImages/b\.jpg \(cannot"),
    "colour mask": (break_colour_mask, r"unreadable mask \(1\): SegmentationClass/b\.png .*'RGB'"),
    "truncated mask": (break_truncated_mask, r"unreadable mask \(1\): SegmentationClass/b\.png"),
    "empty split": (
        break_empty_split,
        r"split file lists no images \(1\): ImageSets/Segmentation/val\.txt",
    ),
}


@pytest.mark.parametrize("problem", list(FOLDER_PROBLEMS))
def test_each_folder_problem_is_found_at_construction(voc_root, problem):
    breaks, expected = FOLDER_PROBLEMS[problem]
    breaks(voc_root)
    message = error_of(lambda: voc_dm(voc_root))
    assert re.search(expected, message), message
    assert message.startswith(f"VOC-style folder {voc_root}: 1 bad file(s)")
    assert "--data.init_args.verify false" in message
    assert len(message.splitlines()) == 2


def test_all_bad_files_are_reported_at_once(voc_root):
    break_mask_size(voc_root)
    (voc_root / "JPEGImages" / "c.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    save_mask(voc_root / "SegmentationClass" / "a.png", np.full((30, 40), 9))
    message = error_of(lambda: voc_dm(voc_root))
    assert "3 bad file(s) found checking 3 listed image(s)" in message
    assert "mask size differs" in message and "b.png" in message
    assert "unreadable image (1): JPEGImages/c.jpg" in message
    assert "SegmentationClass/a.png (label 9)" in message
    assert len(message.splitlines()) == 4  # one head line, one line per kind


def test_many_bad_files_of_one_kind_stay_on_one_line(tmp_path):
    root = tmp_path / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    ids = [f"im{i}" for i in range(8)]
    for name in ids:
        Image.new("RGB", (8, 6)).save(root / "JPEGImages" / f"{name}.jpg")
        save_mask(root / "SegmentationClass" / f"{name}.png", np.full((6, 8), 5))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids))
    (root / "ImageSets/Segmentation/val.txt").write_text("im0\n")
    message = error_of(lambda: voc_dm(root))
    assert len(message.splitlines()) == 2
    assert "(8): SegmentationClass/im0.png (label 5), SegmentationClass/im1.png" in message
    assert message.endswith("... 5 more")


def test_clean_folder_passes_and_leaves_nothing_behind(voc_root):
    before = snapshot(voc_root)
    dm = voc_dm(voc_root)  # labels 0, 1, 2 and the ignored 255: clean
    assert snapshot(voc_root) == before
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2


def test_verify_false_skips_the_check(voc_root):
    break_label(voc_root)
    break_orphan_mask(voc_root)
    dm = voc_dm(voc_root, verify=False)
    dm.setup("validate")  # the bad mask of b is only met when its sample is loaded
    with pytest.raises(DatasetError, match="mask without an image"):
        dm.check_files()


def test_only_the_first_process_of_a_machine_checks(voc_root, monkeypatch):
    break_label(voc_root)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_local_leader()
    voc_dm(voc_root)  # another process of this machine has checked the same files
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert is_local_leader()
    with pytest.raises(DatasetError, match="label 7"):
        voc_dm(voc_root)


def test_missing_root_fails_at_construction_naming_the_path(tmp_path):
    root = tmp_path / "no" / "VOC2012"
    with pytest.raises(ValueError, match="dataset root not found") as info:
        voc_dm(root)
    message = str(info.value)
    assert str(root) in message and "--data.init_args.root" in message
    assert "JPEGImages/" in message and "ImageSets/Segmentation/train.txt" in message
    assert isinstance(info.value, FileNotFoundError)  # callers catching that still work
    assert len(message.splitlines()) == 1


def test_all_missing_layout_parts_are_named_together(voc_root):
    (voc_root / "SegmentationClass").rename(voc_root / "masks")
    with pytest.raises(MissingDataError) as info:
        voc_dm(voc_root, train_split="trainaug", verify=False)
    message = str(info.value)
    assert "SegmentationClass/ (mask_dir)" in message
    assert "ImageSets/Segmentation/trainaug.txt (train split file)" in message


# COCO -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [COCODetectionDataModule, COCOKeypointsDataModule])
def test_coco_image_files_are_checked_at_once(make_coco_root, coco_det_json, coco_kp_json, module):
    data = coco_det_json if module is COCODetectionDataModule else coco_kp_json
    root = make_coco_root(data)
    (root / "images" / "a.png").unlink()
    truncate(root / "images" / "b.png")
    Image.new("RGB", (10, 10)).save(root / "images" / "c.png")
    message = error_of(lambda: module(str(root), **COCO_FILES, image_size=32))
    assert message.startswith(f"COCO-style folder {root}: 3 bad file(s) found checking 3 listed")
    assert "image file missing (1): images/a.png (image 10)" in message
    assert "unreadable image (1): images/b.png (image 11: " in message
    assert "(HxW) (1): images/c.png (image 12 is 10x10, listed 32x32)" in message
    assert len(message.splitlines()) == 4
    module(str(root), **COCO_FILES, image_size=32, verify=False)  # skipped


def test_clean_coco_passes_and_leaves_nothing_behind(coco_det_root):
    before = snapshot(coco_det_root)
    dm = COCODetectionDataModule(str(coco_det_root), **COCO_FILES, image_size=32)
    assert snapshot(coco_det_root) == before
    assert dm.num_classes == 3


def test_coco_missing_root_and_files_fail_at_construction(coco_det_root, tmp_path):
    missing = tmp_path / "coco2017"
    with pytest.raises(ValueError, match=f"dataset root not found: {re.escape(str(missing))}"):
        COCODetectionDataModule(str(missing), image_size=32)
    with pytest.raises(MissingDataError) as info:
        COCODetectionDataModule(
            str(coco_det_root), **{**COCO_FILES, "val_ann": "x.json", "val_images": "val2017"}
        )
    assert "x.json (val annotation file); val2017/ (val image folder)" in str(info.value)


# The checks themselves ------------------------------------------------------------------------


def test_image_check_decodes_cheaply_but_sees_the_whole_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path)
    assert check_image(path) == (64, 80)
    truncate(path)
    assert "truncated" in check_image(path)


def test_mask_check_reports_size_and_labels(tmp_path):
    path = tmp_path / "m.png"
    save_mask(path, np.array([[0, 3], [255, 3], [0, 0]]))
    size, labels = check_mask(path)
    assert size == (3, 2) and labels.tolist() == [0, 3, 255]
    wide = np.array([[-2, 0], [70000, 5]], dtype=np.int32)
    assert mask_labels(wide).tolist() == [-2, 0, 5, 70000]
    assert mask_labels(np.array([[1, 600]], dtype=np.uint16)).tolist() == [1, 600]
