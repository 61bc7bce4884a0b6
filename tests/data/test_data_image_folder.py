from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dense_lightning.data import (
    DatasetError,
    ImageCSVRegressionDataModule,
    ImageFolderClassificationDataModule,
    MissingDataError,
)

CLASSES = ("cat", "dog", "owl")


def write_image(path: Path, width: int = 40, height: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def make_folder(root: Path, splits=("train", "val"), classes=CLASSES, per_class=2) -> Path:
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            for i in range(per_class):
                ext = "png" if i % 2 else "jpg"
                write_image(root / split / name / f"{i}.{ext}", 40 + 8 * i, 30, seed=s * 100 + c)
    return root


def make_csv(root: Path, lines: dict[str, list[str]]) -> Path:
    for split, rows in lines.items():
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def good_csv(root: Path) -> Path:
    for i in range(4):
        write_image(root / "images" / f"{i}.jpg", 36 + 4 * i, 30, seed=i)
    return make_csv(root, {
        "train": ["file,value", "images/0.jpg,21", "images/1.jpg,35.5", "images/2.jpg,60"],
        "val": ["file,value", "images/3.jpg,42"],
    })  # fmt: skip


def folder(root, **kwargs):
    return ImageFolderClassificationDataModule(
        str(root), **{"image_size": 32, "batch_size": 2, **kwargs}
    )


def test_classes_are_the_sorted_sub_folders_and_batches_are_letterboxed(tmp_path):
    root = make_folder(tmp_path / "pets", classes=("owl", "cat", "dog"))
    data = folder(root)
    assert data.class_names == ["cat", "dog", "owl"] and data.num_classes == 3
    data.setup("fit")
    assert len(data.dataset("train")) == 6
    labels = [label for _, label in data.dataset("val").samples]
    assert labels == [0, 0, 1, 1, 2, 2]
    batch = next(iter(data.val_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["label"].dtype == torch.int64
    # Letterbox: a 40x30 image resized to 32x24, the bottom padded with the mean colour (0).
    assert torch.all(batch["image"][0, :, 24:] == 0) and batch["image"][0, :, :24].abs().sum() > 0
    train = next(iter(data.train_dataloader()))
    assert train["image"].shape == (2, 3, 32, 32)
    assert data.dataset("predict") is not None and data.splits["predict"] == "val"


def test_a_missing_split_folder_is_named(tmp_path):
    root = make_folder(tmp_path / "pets", splits=("train",))
    with pytest.raises(MissingDataError, match=r"lacks val/ \(val split folder\)"):
        folder(root)
    with pytest.raises(MissingDataError, match="dataset root not found"):
        folder(tmp_path / "nowhere")


def test_class_sets_must_agree_across_splits(tmp_path):
    root = make_folder(tmp_path / "pets")
    write_image(root / "val" / "emu" / "0.jpg")
    (root / "val" / "cat" / "0.jpg").unlink()
    (root / "val" / "cat" / "1.png").unlink()
    (root / "val" / "cat").rmdir()
    with pytest.raises(DatasetError, match="split 'val'") as info:
        folder(root)
    text = str(info.value)
    assert str(root / "val") in text and "lacks ['cat']" in text and "['emu']" in text


def test_split_without_class_folders(tmp_path):
    root = make_folder(tmp_path / "pets", splits=("train",))
    (root / "val").mkdir()
    with pytest.raises(DatasetError, match="has no class folders"):
        folder(root)


def test_bad_files_are_reported_together(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "train" / "dog" / "1.png").write_bytes(b"not a png")
    (root / "val" / "owl" / "0.jpg").unlink()
    (root / "val" / "owl" / "1.png").unlink()
    write_image(root / "train" / "stray.jpg")
    with pytest.raises(DatasetError) as info:
        folder(root)
    text = str(info.value)
    assert "unreadable image (1): train/dog/1.png" in text
    assert "class folder holds no images (1): val/owl" in text
    assert "image outside a class folder (1): train/stray.jpg" in text
    # verify=False skips the file checks (the first batch would fail instead).
    assert folder(root, verify=False).num_classes == 3


def test_one_class_is_not_classification(tmp_path):
    root = make_folder(tmp_path / "pets", classes=("cat",))
    with pytest.raises(DatasetError, match="needs two or more"):
        folder(root)


def test_csv_rows_become_float_targets(tmp_path):
    root = good_csv(tmp_path / "ages")
    data = ImageCSVRegressionDataModule(str(root), image_size=32, batch_size=3)
    assert data.target_mean == pytest.approx((21 + 35.5 + 60) / 3)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert batch["image"].shape == (1, 3, 32, 32)
    assert batch["target"].dtype == torch.float32 and batch["target"].tolist() == [42.0]
    train = next(iter(data.train_dataloader()))
    assert sorted(train["target"].tolist()) == [21.0, 35.5, 60.0]


def test_csv_columns_may_come_in_any_order_with_extra_ones(tmp_path):
    root = good_csv(tmp_path / "ages")
    make_csv(root, {"val": ["id,value,file", "a,7.5,images/3.jpg", ""]})
    data = ImageCSVRegressionDataModule(str(root), image_size=32)
    assert [r.value for r in data.dataset("val").rows] == [7.5]


def test_missing_csv_is_named(tmp_path):
    root = good_csv(tmp_path / "ages")
    (root / "val.csv").unlink()
    with pytest.raises(MissingDataError, match=r"lacks val.csv \(val CSV file\)"):
        ImageCSVRegressionDataModule(str(root))


def test_bad_csv_lines_are_named_with_file_and_line(tmp_path):
    root = good_csv(tmp_path / "ages")
    (root / "images" / "2.jpg").write_bytes(b"\xff\xd8 truncated")
    make_csv(root, {
        "train": ["file,value", "images/0.jpg,twenty", "images/1.jpg,nan", "images/9.jpg,3",
                  "images/2.jpg,5", "images/1.jpg"],
        "val": ["path,age", "images/3.jpg,42"],
    })  # fmt: skip
    with pytest.raises(DatasetError) as info:
        ImageCSVRegressionDataModule(str(root))
    text = str(info.value)
    assert "value is not a finite number (2): train.csv (line 2: 'twenty')" in text
    assert "train.csv (line 3: 'nan')" in text
    assert "listed image missing (1): images/9.jpg (train.csv line 4)" in text
    assert "line with too few fields (1): train.csv (line 6" in text
    assert "header lacks the columns file,value (1): val.csv (line 1: path,age)" in text
    assert "unreadable image (1): images/2.jpg" in text


def test_a_csv_with_only_a_header(tmp_path):
    root = good_csv(tmp_path / "ages")
    make_csv(root, {"val": ["file,value"]})
    with pytest.raises(DatasetError, match=r"CSV file lists no images \(1\): val.csv"):
        ImageCSVRegressionDataModule(str(root))
