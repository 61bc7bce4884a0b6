import numpy as np
import pytest
import torch
from PIL import Image

from dense_lightning.data import SegmentationFolderDataModule, SegmentationFolderDataset
from dense_lightning.data.folder import load_mask


def make_dm(root, **kwargs) -> SegmentationFolderDataModule:
    return SegmentationFolderDataModule(
        str(root), **{"image_size": 32, "num_classes": 3, "batch_size": 2, **kwargs}
    )


def test_palette_masks_load_as_class_indices(voc_root):
    mask = load_mask(voc_root / "SegmentationClass" / "a.png")
    assert mask.dtype == torch.int64 and mask.shape == (30, 40)
    assert set(mask.unique().tolist()) == {0, 1, 2, 255}
    assert (mask[2:12, 3:15] == 1).all()


def test_val_samples_are_letterboxed_with_ignore_padding(voc_root):
    dm = make_dm(voc_root)
    dm.setup("validate")
    dataset = dm.datasets["val"]
    assert dataset.ids == ["c", "a"]
    sample = dataset[1]  # "a" is 40x30 (WxH): scale 0.8 -> 32x24, then 8 padding rows
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
    assert (sample["mask"][24:] == 255).all()
    assert (sample["image"][:, 24:] == 0).all()
    assert {0, 1, 2} <= set(sample["mask"][:24].unique().tolist())
    assert torch.equal(dataset[1]["image"], sample["image"])  # deterministic


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_every_stage_batches(voc_root, stage):
    dm = make_dm(voc_root)
    dm.setup(stage)
    loader = {"fit": dm.train_dataloader, "validate": dm.val_dataloader,
              "test": dm.test_dataloader, "predict": dm.predict_dataloader}[stage]()  # fmt: skip
    batch = next(iter(loader))
    assert set(batch) == {"image", "mask"}
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 32, 32) and batch["mask"].dtype == torch.int64
    labels = set(batch["mask"].unique().tolist())
    assert labels <= {0, 1, 2, 255}
    assert dm.num_classes == 3 and dm.ignore_index == 255 and dm.image_size == 32


def test_training_augmentation_keeps_image_and_mask_aligned(voc_root):
    """Make the image encode its own mask; after random scale/crop/flip they must still agree."""
    for name in ("a", "b"):
        mask = load_mask(voc_root / "SegmentationClass" / f"{name}.png").numpy()
        rgb = np.zeros((*mask.shape, 3), dtype=np.uint8)
        rgb[mask == 1] = (255, 255, 255)
        Image.fromarray(rgb).save(voc_root / "JPEGImages" / f"{name}.png")
    dataset = SegmentationFolderDataset(
        voc_root, "train", image_size=32, num_classes=3, augment=True, image_ext=".png"
    )
    torch.manual_seed(0)
    flips_seen, agreements = set(), []
    for _ in range(30):
        sample = dataset[0]
        bright = sample["image"].mean(0) > 1.0  # white after normalisation, black is < 0
        object_px = sample["mask"] == 1
        if object_px.sum() >= 10:
            agreements.append((bright == object_px).float()[sample["mask"] != 255].mean())
            cols = object_px.nonzero()[:, 1].float().mean()
            flips_seen.add(bool(cols > 16))
    assert len(agreements) > 5
    assert min(agreements) > 0.9
    assert flips_seen == {True, False}  # the object moved sides: flips happen


def test_missing_root_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"dataset root not found: .*nowhere.*JPEGImages") as err:
        make_dm(tmp_path / "nowhere", verify=False)
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("folder", ["JPEGImages", "SegmentationClass"])
def test_missing_folder_is_named(voc_root, folder):
    (voc_root / folder).rename(voc_root / "moved")
    with pytest.raises(FileNotFoundError, match=folder):
        make_dm(voc_root).setup("fit")


def test_missing_split_file_is_named(voc_root):
    with pytest.raises(FileNotFoundError, match=r"trainaug\.txt"):
        make_dm(voc_root, train_split="trainaug").setup("fit")


def test_listed_image_without_file_is_named(voc_root):
    (voc_root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nzzz\n")
    with pytest.raises(FileNotFoundError, match=r"zzz\.jpg.*train\.txt"):
        make_dm(voc_root, verify=False).setup("fit")


def test_empty_split_is_rejected(voc_root):
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"val\.txt.*no images"):
        make_dm(voc_root, verify=False).setup("validate")


def test_size_mismatch_names_both_files(voc_root):
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(
        voc_root / "SegmentationClass" / "c.png"
    )
    dm = make_dm(voc_root, verify=False)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"c\.jpg.*c\.png"):
        dm.datasets["val"][0]


def test_unreadable_image_is_named(voc_root):
    (voc_root / "JPEGImages" / "c.jpg").write_bytes(b"not a jpeg")
    dm = make_dm(voc_root, verify=False)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"c\.jpg"):
        dm.datasets["val"][0]


def test_label_out_of_range_names_file_and_label(voc_root):
    mask = np.zeros((32, 32), np.uint8)
    mask[5, 5] = 7
    Image.fromarray(mask, mode="L").save(voc_root / "SegmentationClass" / "c.png")
    dm = make_dm(voc_root, verify=False)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"c\.png: label 7"):
        dm.datasets["val"][0]
    # 255 is ignore_index, not an error; with num_classes=8 label 7 is fine.
    ok = make_dm(voc_root, num_classes=8, verify=False)
    ok.setup("validate")
    assert ok.datasets["val"][0]["mask"].max() == 7


def test_colour_masks_are_rejected(voc_root):
    Image.new("RGB", (32, 32)).save(voc_root / "SegmentationClass" / "c.png")
    dm = make_dm(voc_root, verify=False)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"c\.png.*'RGB'"):
        dm.datasets["val"][0]


def test_bad_scale_range_is_rejected(voc_root):
    with pytest.raises(ValueError, match="scale_min"):
        make_dm(voc_root, scale_min=2.0, scale_max=1.0)
